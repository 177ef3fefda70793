//! The lab's reading of the agent's topology file, and what it derives from it.
//!
//! The agents read the same file (`agent.topology`); the lab only needs the tree and
//! the addresses, so it parses the four lists itself rather than linking the agent.
//! Everything else is derived deterministically (see `examples/lab/topology.toml`):
//! a rack's gateway is the first address of each prefix, a host's first address is
//! its primary one, and the delay between two sites follows their order in the file.
use std::{collections::BTreeMap, net::IpAddr, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    site: Vec<SiteDef>,
    #[serde(default)]
    cabinet: Vec<CabinetDef>,
    #[serde(default)]
    rack: Vec<RackDef>,
    #[serde(default)]
    host: Vec<HostDef>,
}

#[derive(Deserialize)]
struct SiteDef {
    name: String,
}

#[derive(Deserialize)]
struct CabinetDef {
    name: String,
    site: String,
}

#[derive(Deserialize)]
struct RackDef {
    name: String,
    cabinet: String,
    #[serde(default)]
    prefixes: Vec<String>,
}

#[derive(Deserialize)]
struct HostDef {
    name: String,
    rack: String,
    #[serde(default)]
    addresses: Vec<IpAddr>,
}

/// An address prefix (`10.71.11.0/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Prefix {
    pub(super) addr: IpAddr,
    pub(super) len: u8,
}

impl Prefix {
    fn parse(text: &str) -> Result<Self> {
        let (addr, len) = text
            .split_once('/')
            .with_context(|| format!("prefix `{text}` lacks /LEN"))?;
        Ok(Self {
            addr: addr.parse().with_context(|| format!("prefix `{text}`"))?,
            len: len.parse().with_context(|| format!("prefix `{text}`"))?,
        })
    }

    /// The router's address in this prefix: the first one after the network address.
    pub(super) fn gateway(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 1).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 1).into()),
        }
    }

    pub(super) fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }

    /// nft's family keyword for matching this prefix (`ip` or `ip6`).
    pub(super) fn nft_family(&self) -> &'static str {
        if self.addr.is_ipv6() { "ip6" } else { "ip" }
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

pub(super) struct Site {
    pub(super) name: String,
    /// Short tag used in namespace and interface names (`a` for `dc-a`).
    pub(super) tag: String,
    pub(super) cabinets: Vec<usize>,
}

pub(super) struct Cabinet {
    /// `site/cabinet`.
    pub(super) path: String,
    pub(super) tag: String,
    pub(super) site: usize,
    pub(super) racks: Vec<usize>,
}

pub(super) struct Rack {
    /// `site/cabinet/rack`.
    pub(super) path: String,
    pub(super) tag: String,
    pub(super) cabinet: usize,
    pub(super) prefixes: Vec<Prefix>,
    pub(super) hosts: Vec<usize>,
}

pub(super) struct Host {
    /// The topology name, also the agent's name.
    pub(super) name: String,
    /// `site/cabinet/rack/host`.
    pub(super) path: String,
    pub(super) rack: usize,
    pub(super) site: usize,
    pub(super) addresses: Vec<IpAddr>,
}

impl Host {
    /// Where its agent listens and its servers accept: the first address.
    pub(super) fn primary(&self) -> IpAddr {
        self.addresses[0]
    }

    /// The address to reach it from `from`: the same family as `from`'s primary
    /// when it has one, so dual-stack pairs use IPv4 and anything with an
    /// IPv6-only host uses IPv6.
    pub(super) fn address_for(&self, from: &Host) -> Option<(IpAddr, IpAddr)> {
        for mine in &from.addresses {
            if let Some(theirs) = self
                .addresses
                .iter()
                .find(|a| a.is_ipv6() == mine.is_ipv6())
            {
                return Some((*mine, *theirs));
            }
        }
        None
    }
}

/// The data center as the lab builds it.
pub(super) struct Topology {
    pub(super) sites: Vec<Site>,
    pub(super) cabinets: Vec<Cabinet>,
    pub(super) racks: Vec<Rack>,
    pub(super) hosts: Vec<Host>,
}

/// One-way delay between the i-th and j-th pair of sites, cycling: 15, 25, 50 ms
/// (RTT 30, 50, 100 ms), so three sites get three different distances.
const SITE_PAIR_ONE_WAY_MS: [u64; 3] = [15, 25, 50];

impl Topology {
    pub(super) fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let file: File =
            toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        let mut t = Self {
            sites: Vec::new(),
            cabinets: Vec::new(),
            racks: Vec::new(),
            hosts: Vec::new(),
        };
        let mut site_ix = BTreeMap::new();
        for s in file.site {
            site_ix.insert(s.name.clone(), t.sites.len());
            t.sites.push(Site {
                tag: tag(&s.name),
                name: s.name,
                cabinets: Vec::new(),
            });
        }
        let mut cab_ix = BTreeMap::new();
        for c in file.cabinet {
            let &site = site_ix
                .get(&c.site)
                .with_context(|| format!("cabinet {}: unknown site {}", c.name, c.site))?;
            let path = format!("{}/{}", c.site, c.name);
            cab_ix.insert(path.clone(), t.cabinets.len());
            t.sites[site].cabinets.push(t.cabinets.len());
            t.cabinets.push(Cabinet {
                tag: format!("{}{}", t.sites[site].tag, tag(&c.name)),
                path,
                site,
                racks: Vec::new(),
            });
        }
        let mut rack_ix = BTreeMap::new();
        for r in file.rack {
            let &cabinet = cab_ix
                .get(&r.cabinet)
                .with_context(|| format!("rack {}: unknown cabinet {}", r.name, r.cabinet))?;
            let path = format!("{}/{}", r.cabinet, r.name);
            let prefixes = r
                .prefixes
                .iter()
                .map(|p| Prefix::parse(p))
                .collect::<Result<Vec<_>>>()?;
            if prefixes.is_empty() {
                bail!("rack {path}: the lab needs at least one prefix to address its hosts");
            }
            rack_ix.insert(path.clone(), t.racks.len());
            t.cabinets[cabinet].racks.push(t.racks.len());
            t.racks.push(Rack {
                tag: format!("{}{}", t.cabinets[cabinet].tag, tag(&r.name)),
                path,
                cabinet,
                prefixes,
                hosts: Vec::new(),
            });
        }
        for h in file.host {
            let &rack = rack_ix
                .get(&h.rack)
                .with_context(|| format!("host {}: unknown rack {}", h.name, h.rack))?;
            if h.addresses.is_empty() {
                bail!("host {}: the lab needs at least one address", h.name);
            }
            if let Some(a) = h
                .addresses
                .iter()
                .find(|a| !t.racks[rack].prefixes.iter().any(|p| p.contains(**a)))
            {
                bail!(
                    "host {}: address {a} is in none of its rack's prefixes",
                    h.name
                );
            }
            if t.hosts.iter().any(|o| o.name == h.name) {
                bail!(
                    "host {}: the lab names agents by host, so names must be unique",
                    h.name
                );
            }
            t.racks[rack].hosts.push(t.hosts.len());
            let site = t.cabinets[t.racks[rack].cabinet].site;
            t.hosts.push(Host {
                path: format!("{}/{}", h.rack, h.name),
                name: h.name,
                rack,
                site,
                addresses: h.addresses,
            });
        }
        if t.sites.len() < 2 || t.hosts.len() < 4 {
            bail!("the lab needs at least two sites and four hosts");
        }
        Ok(t)
    }

    /// One-way delay between two sites (zero within a site).
    pub(super) fn delay(&self, a: usize, b: usize) -> Duration {
        if a == b {
            return Duration::ZERO;
        }
        let (lo, hi) = (a.min(b), a.max(b));
        // Index of the pair (lo, hi) in the order (0,1), (0,2), …, (1,2), …
        let n = self.sites.len();
        let pair = lo * n - lo * (lo + 1) / 2 + (hi - lo - 1);
        Duration::from_millis(SITE_PAIR_ONE_WAY_MS[pair % SITE_PAIR_ONE_WAY_MS.len()])
    }

    /// Every entity's grpc.health.v1 service name, sites first.
    pub(super) fn service_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .sites
            .iter()
            .map(|s| format!("site/{}", s.name))
            .collect();
        names.extend(self.cabinets.iter().map(|c| format!("cabinet/{}", c.path)));
        names.extend(self.racks.iter().map(|r| format!("rack/{}", r.path)));
        names.extend(self.hosts.iter().map(|h| format!("host/{}", h.path)));
        names
    }
}

/// A short name for namespaces and interfaces: the part after the last `-`
/// (`dc-a` → `a`, `c1` → `1`, `r2` → `2`), at most 3 characters.
fn tag(name: &str) -> String {
    let last = name.rsplit('-').next().unwrap_or(name);
    let digits: String = last.chars().filter(char::is_ascii_digit).collect();
    let t = if digits.is_empty() {
        last.to_owned()
    } else {
        digits
    };
    t.chars().take(3).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_topology_has_the_promised_shape() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lab/topology.toml");
        let t = Topology::load(&path).unwrap();
        assert_eq!(t.sites.len(), 3);
        assert!((14..=18).contains(&t.hosts.len()));
        let v6_only = t
            .sites
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                t.hosts
                    .iter()
                    .filter(|h| h.site == *i)
                    .all(|h| h.primary().is_ipv6())
            })
            .count();
        assert_eq!(v6_only, 1);
        assert_eq!(t.delay(0, 1), Duration::from_millis(15));
        assert_eq!(t.delay(2, 0), Duration::from_millis(25));
        assert_eq!(t.delay(1, 2), Duration::from_millis(50));
        let mut tags: Vec<_> = t.racks.iter().map(|r| r.tag.clone()).collect();
        tags.dedup();
        assert_eq!(tags.len(), t.racks.len());
    }
}
