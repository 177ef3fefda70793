//! `announce.toml`: which prefixes each site (or cabinet) serves, which agents' verdict
//! feeds to follow, and which gobgpd to drive. Every refusal names the file, the line
//! and the key, and comes before anything is started.
use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use faultline_core::topology::{Level, Topology};
use serde::Deserialize;
use toml::Spanned;

use crate::config::line_of;

/// A prefix a site serves, e.g. 198.51.100.10/32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, len) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not a prefix like 198.51.100.0/24"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}`: `{addr}` is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = len
            .parse()
            .ok()
            .filter(|&l| l <= max)
            .ok_or_else(|| format!("`{text}`: the length must be 0 to {max}"))?;
        let masked = mask(addr, len);
        if masked != addr {
            return Err(format!(
                "`{text}` has host bits set (the prefix is {masked}/{len})"
            ));
        }
        if len == 0 {
            return Err(format!(
                "`{text}` is a default route: a site announces what it serves, not everything"
            ));
        }
        Ok(Self { addr, len })
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a) & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(bits.into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a) & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(bits.into())
        }
    }
}

/// Why an announce config was refused.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceConfigError {
    /// The file could not be read, or is over the size limit of config files.
    #[error(transparent)]
    File(#[from] crate::config::ConfigError),
    /// Malformed TOML, or a value that is not allowed: the file, line and key.
    #[error("{path}:{line}: {key}: {message}")]
    At {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    dry_run: bool,
    #[serde(default = "default_quorum")]
    quorum: Spanned<u32>,
    #[serde(default = "default_startup_wait", with = "faultline_core::duration")]
    startup_wait: Duration,
    topology: Option<Spanned<PathBuf>>,
    gobgp: Option<Spanned<RawGobgp>>,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    agent: Vec<Spanned<RawAgent>>,
    #[serde(default)]
    serve: Vec<Spanned<RawServe>>,
    tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Spanned<PathBuf>,
}

fn default_quorum() -> Spanned<u32> {
    Spanned::new(0..0, 2)
}

fn default_startup_wait() -> Duration {
    Duration::from_secs(5)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGobgp {
    endpoint: Option<Spanned<String>>,
    next_hop_v4: Option<Spanned<String>>,
    next_hop_v6: Option<Spanned<String>>,
    #[serde(default = "default_resync", with = "faultline_core::duration")]
    resync: Duration,
}

fn default_resync() -> Duration {
    Duration::from_secs(2)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    endpoint: Spanned<String>,
    site: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServe {
    entity: Spanned<String>,
    prefixes: Spanned<Vec<Spanned<String>>>,
    #[serde(default = "yes")]
    local: bool,
}

fn yes() -> bool {
    true
}

/// One agent whose verdict feed is followed, and the site it sits in: its word about
/// its own site does not count (a site is judged from outside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedAgent {
    pub endpoint: String,
    pub site: String,
}

/// An entity and the prefixes it serves. `local`: announced through this announcer's
/// gobgpd; otherwise only watched, so that the last healthy site serving a prefix is
/// never withdrawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub entity: String,
    pub prefixes: Vec<Prefix>,
    pub local: bool,
}

impl Served {
    /// The site the entity lies in: the first component of its path.
    pub fn site(&self) -> &str {
        self.entity.split('/').next().unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GobgpTarget {
    pub endpoint: String,
    pub next_hop_v4: IpAddr,
    pub next_hop_v6: IpAddr,
    /// How often gobgpd's table is compared with what should be announced.
    pub resync: Duration,
}

/// A checked announce config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceConfig {
    pub dry_run: bool,
    /// Distinct sites, other than the entity's own, whose agents must report it FAILED.
    pub quorum: u32,
    /// How long to wait for every feed's first snapshot before acting.
    pub startup_wait: Duration,
    pub gobgp: GobgpTarget,
    pub metrics: Option<SocketAddr>,
    pub agents: Vec<FeedAgent>,
    pub served: Vec<Served>,
    /// `[tls] ca`: the CA that signed the agents' certificates, for `https://` agents.
    pub tls_ca: Option<PathBuf>,
}

impl AnnounceConfig {
    pub fn load(path: &Path) -> Result<Self, AnnounceConfigError> {
        let text = crate::config::read_config_file(path)?;
        Self::parse(path, &text)
    }

    /// Parses and checks `text`; `path` names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, AnnounceConfigError> {
        let at =
            |span: std::ops::Range<usize>, key: &str, message: String| AnnounceConfigError::At {
                path: path.to_owned(),
                line: line_of(text, span.start),
                key: key.to_owned(),
                message,
            };
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let key = crate::config::key_at(text, span.start).unwrap_or_else(|| "(file)".into());
            at(span, &key, e.message().trim().replace('\n', "; "))
        })?;
        let gobgp = raw.gobgp.ok_or_else(|| {
            at(
                0..0,
                "gobgp.endpoint",
                "missing: the gobgpd to drive, e.g. [gobgp] endpoint = \"http://127.0.0.1:50051\""
                    .into(),
            )
        })?;
        let gobgp_span = gobgp.span();
        let gobgp = gobgp.into_inner();
        let endpoint = gobgp.endpoint.ok_or_else(|| {
            at(
                gobgp_span.clone(),
                "gobgp.endpoint",
                "missing: the gobgpd to drive, e.g. \"http://127.0.0.1:50051\"".into(),
            )
        })?;
        check_endpoint(&endpoint, "gobgp.endpoint", false, &at)?;
        let next_hop = |value: Option<Spanned<String>>, key: &str, default: IpAddr, v4: bool| {
            let Some(v) = value else {
                return Ok(default);
            };
            match v.get_ref().parse::<IpAddr>() {
                Ok(ip) if ip.is_ipv4() == v4 => Ok(ip),
                _ => Err(at(
                    v.span(),
                    key,
                    format!(
                        "`{}` is not an IPv{} address",
                        v.get_ref(),
                        if v4 { 4 } else { 6 }
                    ),
                )),
            }
        };
        let gobgp = GobgpTarget {
            endpoint: endpoint.into_inner(),
            next_hop_v4: next_hop(
                gobgp.next_hop_v4,
                "gobgp.next_hop_v4",
                [0u8; 4].into(),
                true,
            )?,
            next_hop_v6: next_hop(
                gobgp.next_hop_v6,
                "gobgp.next_hop_v6",
                [0u8; 16].into(),
                false,
            )?,
            resync: gobgp.resync.max(Duration::from_millis(100)),
        };
        let metrics = raw
            .metrics
            .listen
            .map(|l| {
                l.get_ref().parse::<SocketAddr>().map_err(|_| {
                    at(
                        l.span(),
                        "metrics.listen",
                        format!("`{}` is not an address like 127.0.0.1:9479", l.get_ref()),
                    )
                })
            })
            .transpose()?;
        let topology = raw
            .topology
            .map(|t| {
                Topology::load(t.get_ref())
                    .map_err(|e| at(t.span(), "topology", format!("{:#}", anyhow::Error::new(e))))
            })
            .transpose()?;
        let tls_ca = raw
            .tls
            .map(|t| {
                crate::tls::trusting(t.ca.get_ref(), "https://localhost")
                    .map(|_| t.ca.get_ref().clone())
                    .map_err(|why| at(t.ca.span(), "tls.ca", why))
            })
            .transpose()?;
        let mut agents = Vec::new();
        for a in raw.agent {
            let a = a.into_inner();
            check_endpoint(&a.endpoint, "agent.endpoint", tls_ca.is_some(), &at)?;
            if let Some(t) = &topology {
                check_entity(t, &a.site, Some(Level::Site), "agent.site", &at)?;
            }
            agents.push(FeedAgent {
                endpoint: a.endpoint.into_inner(),
                site: a.site.into_inner(),
            });
        }
        let mut served: Vec<Served> = Vec::new();
        for s in raw.serve {
            let s = s.into_inner();
            let entity = s.entity.get_ref().trim_matches('/').to_owned();
            if entity.is_empty() {
                return Err(at(s.entity.span(), "serve.entity", "empty".into()));
            }
            if let Some(t) = &topology {
                check_entity(t, &s.entity, None, "serve.entity", &at)?;
            }
            if served.iter().any(|o| o.entity == entity) {
                return Err(at(
                    s.entity.span(),
                    "serve.entity",
                    format!("`{entity}` is listed twice"),
                ));
            }
            if s.prefixes.get_ref().is_empty() {
                return Err(at(
                    s.prefixes.span(),
                    "serve.prefixes",
                    "empty: list what it serves".into(),
                ));
            }
            let mut prefixes = Vec::new();
            for p in s.prefixes.into_inner() {
                prefixes.push(
                    p.get_ref()
                        .parse::<Prefix>()
                        .map_err(|m| at(p.span(), "serve.prefixes", m))?,
                );
            }
            served.push(Served {
                entity,
                prefixes,
                local: s.local,
            });
        }
        if !served.iter().any(|s| s.local) {
            return Err(at(
                0..0,
                "serve",
                "no [[serve]] entry is local: nothing for this gobgpd to announce".into(),
            ));
        }
        let quorum = *raw.quorum.get_ref();
        if quorum == 0 {
            return Err(at(
                raw.quorum.span(),
                "quorum",
                "must be at least 1: one site's agents must see the failure".into(),
            ));
        }
        for s in &served {
            let outside: std::collections::BTreeSet<&str> = agents
                .iter()
                .filter(|a| a.site != s.site())
                .map(|a| a.site.as_str())
                .collect();
            if outside.len() < quorum as usize {
                return Err(at(
                    raw.quorum.span(),
                    "quorum",
                    format!(
                        "{quorum} sites must agree that {} failed, but the [[agent]] feeds are in only {} site(s) outside it ({})",
                        s.entity,
                        outside.len(),
                        outside.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        Ok(Self {
            dry_run: raw.dry_run,
            quorum,
            startup_wait: raw.startup_wait,
            gobgp,
            metrics,
            agents,
            served,
            tls_ca,
        })
    }
}

/// `http://HOST:PORT`, or `https://` when `https` is allowed (`[tls] ca` is set).
fn check_endpoint(
    endpoint: &Spanned<String>,
    key: &str,
    https: bool,
    at: &impl Fn(std::ops::Range<usize>, &str, String) -> AnnounceConfigError,
) -> Result<(), AnnounceConfigError> {
    let e = endpoint.get_ref();
    if e.starts_with("https://") && !https {
        return Err(at(
            endpoint.span(),
            key,
            format!("`{e}`: https needs [tls] ca (the CA that signed the agents' certificates)"),
        ));
    }
    let rest = e
        .strip_prefix("http://")
        .or_else(|| e.strip_prefix("https://"));
    let ok = rest.is_some_and(|rest| !rest.is_empty())
        && tonic::transport::Endpoint::from_shared(e.clone()).is_ok();
    if ok {
        Ok(())
    } else {
        Err(at(
            endpoint.span(),
            key,
            format!("`{e}` is not an endpoint like http://10.1.2.11:7431"),
        ))
    }
}

fn check_entity(
    topology: &Topology,
    path: &Spanned<String>,
    level: Option<Level>,
    key: &str,
    at: &impl Fn(std::ops::Range<usize>, &str, String) -> AnnounceConfigError,
) -> Result<(), AnnounceConfigError> {
    let name = path.get_ref().trim_matches('/');
    let found = topology.find(name).map(|id| topology.entity(id).level);
    match (found, level) {
        (None, _) => Err(at(
            path.span(),
            key,
            format!("unknown: the topology has no `{name}`"),
        )),
        (Some(l), Some(want)) if l != want => Err(at(
            path.span(),
            key,
            format!("`{name}` is a {}, not a {}", l.as_str(), want.as_str()),
        )),
        (Some(Level::Host), None) => Err(at(
            path.span(),
            key,
            format!("`{name}` is a host: announce for a site, cabinet or rack"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
