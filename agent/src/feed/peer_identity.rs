//! Who a followed peer is, and which of its links may count.
//!
//! A peer's identity comes from this agent's own config, never from what the peer
//! says: the endpoint it was told to follow, placed in the topology by its address.
//! With TLS the peer also proves it is that endpoint (a certificate the fleet's CA
//! signed for that address or name). The name a batch carries is ignored.
//!
//! A peer speaks only for its own host: a link counts when its local address is one
//! of that host's addresses in the topology. A peer the topology does not list may
//! not use a listed host's address, and what it can invent is capped: a few local
//! addresses, and a bounded number of remote addresses that belong to no listed host
//! (each becomes a host the detector tracks).
use std::{collections::HashSet, net::IpAddr, sync::Arc, time::Instant};

use faultline_core::topology::{Placement, Topology};

use crate::detector::Observation;

/// The most local addresses a peer the topology does not list may report links from.
pub(crate) const MAX_UNLISTED_LOCALS: usize = 16;
/// The most distinct remote addresses outside the topology's hosts one peer may
/// report per [`CAP_WINDOW`]: a front-end's few thousand clients fit, a peer inventing
/// hosts does not.
pub(crate) const MAX_UNLISTED_REMOTES: usize = 4096;
/// The caps count afresh every minute (the detector forgets a host without evidence
/// after `forget_after`, 60 s): a peer whose clients churn keeps reporting new ones,
/// instead of being cut off for good once it has met 4,096.
const CAP_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// A followed peer, as this agent's config and topology name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerIdentity {
    /// Its observer name in verdicts: its host's path, or the endpoint's authority
    /// (`10.0.0.5:7431`) when the topology does not list it.
    pub(crate) name: Arc<str>,
    /// Its host's addresses; None when the topology does not list it.
    own: Option<Vec<IpAddr>>,
}

impl PeerIdentity {
    /// The identity of the agent at `endpoint` (`http://10.0.0.5:7431`).
    pub(crate) fn of(endpoint: &str, topology: &Topology) -> Self {
        let authority = authority(endpoint);
        let ip = endpoint_host(endpoint).parse::<IpAddr>().ok();
        match ip.map(|ip| topology.locate(ip)) {
            Some(Placement::Host(id)) => Self {
                name: topology.entity(id).path.clone(),
                own: Some(topology.addresses(id).to_vec()),
            },
            _ => Self {
                name: authority.into(),
                own: None,
            },
        }
    }
}

/// `HOST:PORT` of `http://HOST:PORT/`.
fn authority(endpoint: &str) -> &str {
    endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default()
}

/// The host of an endpoint, an address without brackets or a name: what the peer's
/// certificate must be valid for.
pub(crate) fn endpoint_host(endpoint: &str) -> &str {
    let authority = authority(endpoint);
    authority
        .rsplit_once(':')
        .filter(|(_, port)| port.parse::<u16>().is_ok())
        .map_or(authority, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']')
}

/// Why a link of a peer's batch was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkRefusal {
    /// Its local address is not the peer's: another host's, or not its own host's.
    ForeignLocal,
    /// Past the cap on addresses outside the topology's hosts.
    OverCap,
}

/// One peer stream's filter: what it admitted so far, for the caps.
pub(crate) struct LinkFilter {
    identity: PeerIdentity,
    topology: Arc<Topology>,
    unlisted_locals: HashSet<IpAddr>,
    unlisted_remotes: HashSet<IpAddr>,
    window_start: Instant,
}

impl LinkFilter {
    pub(crate) fn new(identity: PeerIdentity, topology: Arc<Topology>) -> Self {
        Self {
            identity,
            topology,
            unlisted_locals: HashSet::new(),
            unlisted_remotes: HashSet::new(),
            window_start: Instant::now(),
        }
    }

    pub(crate) fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// Whether `o` may count as this peer's observation.
    pub(crate) fn admit(&mut self, o: &Observation) -> Result<(), LinkRefusal> {
        let (local, remote) = (o.link.local, o.link.remote);
        match &self.identity.own {
            Some(own) if !own.contains(&local) => return Err(LinkRefusal::ForeignLocal),
            Some(_) => {}
            None => {
                if matches!(self.topology.locate(local), Placement::Host(_)) {
                    return Err(LinkRefusal::ForeignLocal);
                }
                admit_capped(&mut self.unlisted_locals, local, MAX_UNLISTED_LOCALS)?;
            }
        }
        if !matches!(self.topology.locate(remote), Placement::Host(_)) {
            admit_capped(&mut self.unlisted_remotes, remote, MAX_UNLISTED_REMOTES)?;
        }
        Ok(())
    }

    /// Keeps the admissible observations of a batch arriving at `now`; returns how
    /// many were left out.
    pub(crate) fn retain(&mut self, observations: &mut Vec<Observation>, now: Instant) -> usize {
        if now.saturating_duration_since(self.window_start) >= CAP_WINDOW {
            self.unlisted_locals.clear();
            self.unlisted_remotes.clear();
            self.window_start = now;
        }
        let before = observations.len();
        observations.retain(|o| self.admit(o).is_ok());
        before - observations.len()
    }
}

fn admit_capped(seen: &mut HashSet<IpAddr>, ip: IpAddr, cap: usize) -> Result<(), LinkRefusal> {
    if seen.contains(&ip) {
        return Ok(());
    }
    if seen.len() >= cap {
        return Err(LinkRefusal::OverCap);
    }
    seen.insert(ip);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        detector::LinkDelta,
        probe::{Link, LinkCounters},
    };

    const LAB: &str = include_str!("../../../examples/lab/topology.toml");

    fn lab() -> Arc<Topology> {
        Arc::new(Topology::parse(Path::new("lab.toml"), LAB).unwrap())
    }

    fn link(local: &str, remote: &str) -> Observation {
        Observation {
            observer: "whatever the batch said".into(),
            link: Link {
                local: local.parse().unwrap(),
                remote: remote.parse().unwrap(),
            },
            delta: LinkDelta {
                counters: LinkCounters::default(),
                rtt_p50_us: None,
                silent_ms: None,
                acked_age_ms: None,
            },
        }
    }

    #[test]
    fn a_listed_peer_is_named_by_its_host_on_either_of_its_addresses() {
        let t = lab();
        let v4 = PeerIdentity::of("http://10.72.12.11:7431", &t);
        assert_eq!(&*v4.name, "dc-b/c1/r2/b12-1");
        let v6 = PeerIdentity::of("https://[fd00:72:12::11]:7431/", &t);
        assert_eq!(v6, v4, "one host, one identity, whichever address");
        let unlisted = PeerIdentity::of("http://192.0.2.9:7431", &t);
        assert_eq!(&*unlisted.name, "192.0.2.9:7431");
        assert_eq!(unlisted.own, None);
        let by_name = PeerIdentity::of("http://agent.example:7431", &t);
        assert_eq!(&*by_name.name, "agent.example:7431");
    }

    #[test]
    fn a_listed_peer_speaks_only_for_links_from_its_own_host() {
        let t = lab();
        let mut f = LinkFilter::new(PeerIdentity::of("http://10.72.12.11:7431", &t), t);
        assert_eq!(f.admit(&link("10.72.12.11", "10.71.11.11")), Ok(()));
        assert_eq!(f.admit(&link("fd00:72:12::11", "fd00:73:11::11")), Ok(()));
        // Another host's address, or one its host does not have.
        assert_eq!(
            f.admit(&link("10.71.11.11", "10.73.11.11")),
            Err(LinkRefusal::ForeignLocal)
        );
        assert_eq!(
            f.admit(&link("10.72.12.99", "10.73.11.11")),
            Err(LinkRefusal::ForeignLocal)
        );
    }

    #[test]
    fn an_unlisted_peer_may_not_use_a_listed_hosts_address_and_invents_little() {
        let t = lab();
        let mut f = LinkFilter::new(PeerIdentity::of("http://192.0.2.9:7431", &t), t);
        assert_eq!(
            f.admit(&link("10.71.11.11", "10.72.12.11")),
            Err(LinkRefusal::ForeignLocal)
        );
        for i in 0..MAX_UNLISTED_LOCALS {
            assert_eq!(
                f.admit(&link(&format!("192.0.2.{i}"), "10.72.12.11")),
                Ok(())
            );
        }
        assert_eq!(
            f.admit(&link("192.0.2.200", "10.72.12.11")),
            Err(LinkRefusal::OverCap)
        );
        // Listed remote hosts are not capped; invented ones are.
        let mut batch: Vec<Observation> = (0..MAX_UNLISTED_REMOTES + 100)
            .map(|i| {
                let remote = std::net::Ipv4Addr::from(0xC633_0000_u32 + u32::try_from(i).unwrap());
                link("192.0.2.1", &remote.to_string())
            })
            .collect();
        batch.push(link("192.0.2.1", "10.72.12.11"));
        let t = Instant::now();
        assert_eq!(f.retain(&mut batch, t), 100);
        assert_eq!(batch.len(), MAX_UNLISTED_REMOTES + 1);
        // What was admitted once stays admitted.
        assert_eq!(f.admit(&link("192.0.2.1", "198.51.0.0")), Ok(()));
        // A minute later the cap counts afresh: churning clients are not cut off for good.
        let mut later = vec![link("192.0.2.1", "203.0.113.9")];
        assert_eq!(f.retain(&mut later, t + CAP_WINDOW), 0);
    }
}
