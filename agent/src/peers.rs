//! `agent.peers`: the endpoints this agent follows, as written in the config or, with
//! `"auto"`, chosen from the topology around this host by
//! [`auto_peers`](faultline_core::topology::auto_peers).
//!
//! Resolved at start-up before anything is bound or attached (and by `faultline
//! check`), so a host the topology does not list is refused naming the config's file,
//! line and key rather than running with no peers. `faultline topology peers` shows an
//! operator the same choice for any host.
use std::net::{IpAddr, SocketAddr};

use faultline_core::topology::{DEFAULT_FANOUT, EntityId, Level, PeerIndex, Placement, Topology};

use crate::config::{Config, ConfigError, Peers};

/// One chosen peer: where it sits and how its agent is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChosenPeer {
    /// Its host path, `dc-a/c1/r1/web-1`.
    pub path: String,
    /// `http://ADDR:PORT` on its first address of a family this host has.
    pub endpoint: String,
}

/// Why a host could not be found for choosing peers.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct HostNotFound {
    /// What was looked for: an address, a path, or this host's addresses.
    what: String,
    reason: String,
}

/// `http://ADDR:PORT`, IPv6 in brackets.
pub(crate) fn endpoint(addr: IpAddr, port: u16) -> String {
    format!("http://{}", SocketAddr::new(addr, port))
}

/// The peers `me` follows, with endpoints at `port` on their first address of the
/// family of `me`'s first address, or else of another family `me` has: an IPv6-only
/// host cannot follow a dual-stack peer on its IPv4 address. A peer sharing no family
/// with `me` is left out.
pub fn choose(topology: &Topology, me: EntityId, fanout: usize, port: u16) -> Vec<ChosenPeer> {
    let mine = topology.addresses(me);
    let reachable = |addrs: &[IpAddr]| {
        let same = |a: &IpAddr, b: &IpAddr| a.is_ipv4() == b.is_ipv4();
        mine.first()
            .and_then(|first| addrs.iter().find(|a| same(a, first)))
            .or_else(|| addrs.iter().find(|a| mine.iter().any(|m| same(a, m))))
            .copied()
    };
    PeerIndex::new(topology)
        .peers_of(me, fanout)
        .into_iter()
        .filter_map(|id| {
            let addr = &reachable(topology.addresses(id))?;
            Some(ChosenPeer {
                path: topology.entity(id).path.to_string(),
                endpoint: endpoint(*addr, port),
            })
        })
        .collect()
}

/// The host named by `text`: one of its addresses, or its path (`dc-a/c1/r1/web-1`).
/// It must have an address in the topology, or its agent could not find itself.
pub fn find_host(topology: &Topology, text: &str) -> Result<EntityId, HostNotFound> {
    let not_found = |reason: String| HostNotFound {
        what: format!("`{text}`"),
        reason,
    };
    let id = match text.parse::<IpAddr>() {
        Ok(ip) => match topology.locate(ip) {
            Placement::Host(id) => id,
            Placement::InRack(_) | Placement::Unplaced => {
                return Err(not_found(format!(
                    "no host lists this address (it would be {})",
                    topology.host_path(ip)
                )));
            }
        },
        Err(_) => topology
            .find(text)
            .ok_or_else(|| not_found("neither an address nor a path in the topology".into()))?,
    };
    let info = topology.entity(id);
    if info.level != Level::Host {
        return Err(not_found(format!("a {}, not a host", info.level)));
    }
    if topology.addresses(id).is_empty() {
        return Err(not_found(
            "the host has no address, so its agent cannot find itself".into(),
        ));
    }
    Ok(id)
}

/// The one host of `topology` (read from `file`) whose addresses include this
/// host's `locals`, or why there is none.
fn find_self(topology: &Topology, file: &str, locals: &[IpAddr]) -> Result<EntityId, String> {
    let mut hosts: Vec<(EntityId, IpAddr)> = locals
        .iter()
        .filter_map(|&ip| match topology.locate(ip) {
            Placement::Host(id) => Some((id, ip)),
            _ => None,
        })
        .collect();
    hosts.sort_unstable();
    hosts.dedup_by_key(|h| h.0);
    match hosts[..] {
        [(id, _)] => Ok(id),
        [] => {
            let mut sorted = locals.to_vec();
            sorted.sort_unstable();
            let listed: Vec<String> = sorted.iter().map(IpAddr::to_string).collect();
            Err(format!(
                "none of this host's addresses ({}) is a host address in {file}; list this \
                 host there, or set agent.local_addresses to its addresses",
                listed.join(", ")
            ))
        }
        _ => {
            let owners: Vec<String> = hosts
                .iter()
                .map(|(id, ip)| format!("{} by {ip}", topology.entity(*id).path))
                .collect();
            Err(format!(
                "this host's addresses belong to several hosts in {file} ({}); set \
                 agent.local_addresses to one host's",
                owners.join(", ")
            ))
        }
    }
}

/// The endpoints the agent with this config follows on a host with `locals`.
/// With `"auto"`, also the host it found itself to be.
pub(crate) fn resolve(
    config: &Config,
    topology: &Topology,
    locals: &[IpAddr],
) -> Result<Resolved, ConfigError> {
    match config.agent.peers.get_ref() {
        Peers::List(list) => Ok(Resolved {
            me: None,
            endpoints: list.clone(),
        }),
        Peers::Auto => {
            let file = config
                .agent
                .topology
                .as_ref()
                .map_or_else(|| "the topology".to_owned(), |p| p.display().to_string());
            let me = find_self(topology, &file, locals)
                .map_err(|why| config.unusable_peers(format!("\"auto\": {why}")))?;
            // With TLS, peers are followed over it.
            let scheme = if config.tls.is_some() {
                "https://"
            } else {
                "http://"
            };
            let endpoints = choose(topology, me, DEFAULT_FANOUT, config.agent.peer_port)
                .into_iter()
                .map(|p| p.endpoint.replacen("http://", scheme, 1))
                .collect();
            Ok(Resolved {
                me: Some(topology.entity(me).path.to_string()),
                endpoints,
            })
        }
    }
}

/// What [`resolve`] found.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// With `"auto"`: this host's path in the topology.
    pub(crate) me: Option<String>,
    pub(crate) endpoints: Vec<String>,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const LAB: &str = include_str!("../../examples/lab/topology.toml");

    fn lab() -> Topology {
        Topology::parse(Path::new("lab.toml"), LAB).unwrap()
    }

    fn auto_config(extra: &str) -> Config {
        Config::parse(
            Path::new("/etc/f.toml"),
            &format!("[agent]\ntopology = \"lab.toml\"\n{extra}peers = \"auto\"\n"),
        )
        .unwrap()
    }

    #[test]
    fn auto_finds_this_host_and_builds_endpoints_on_the_peer_port() {
        let config = auto_config("peer_port = 9000\n");
        let locals = [
            "fe80::1".parse().unwrap(),
            "fd00:73:22::11".parse().unwrap(),
        ];
        let resolved = resolve(&config, &lab(), &locals).unwrap();
        assert_eq!(resolved.me.as_deref(), Some("dc-c/c2/r2/c22-1"));
        assert_eq!(
            resolved.endpoints.len(),
            15,
            "16 hosts, fan-out 16: all others"
        );
        // An IPv6-only host follows dual-stack peers on their IPv6 address.
        assert!(
            resolved
                .endpoints
                .contains(&"http://[fd00:71:11::11]:9000".to_owned()),
            "{:?}",
            resolved.endpoints
        );
        assert!(
            resolved
                .endpoints
                .contains(&"http://[fd00:73:11::11]:9000".to_owned()),
            "IPv6 in brackets: {:?}",
            resolved.endpoints
        );
    }

    #[test]
    fn auto_on_a_host_the_topology_lacks_names_file_line_key_and_addresses() {
        let config = auto_config("");
        let locals = ["192.0.2.7".parse().unwrap(), "10.71.11.99".parse().unwrap()];
        let err = resolve(&config, &lab(), &locals).unwrap_err().to_string();
        assert!(err.starts_with("/etc/f.toml:3: agent.peers: "), "{err}");
        assert!(
            err.contains("(10.71.11.99, 192.0.2.7)") && err.contains("lab.toml"),
            "{err}"
        );
    }

    #[test]
    fn auto_refuses_addresses_of_two_hosts() {
        let config = auto_config("");
        let locals = [
            "10.71.11.11".parse().unwrap(),
            "10.71.11.12".parse().unwrap(),
        ];
        let err = resolve(&config, &lab(), &locals).unwrap_err().to_string();
        assert!(err.contains("several hosts"), "{err}");
        assert!(err.contains("dc-a/c1/r1/a11-1 by 10.71.11.11"), "{err}");
    }

    #[test]
    fn a_list_is_used_as_written() {
        let config = Config::parse(
            Path::new("f.toml"),
            "[agent]\npeers = [\"http://10.0.0.1:7431\"]\n",
        )
        .unwrap();
        let resolved = resolve(&config, &Topology::default(), &[]).unwrap();
        assert_eq!(resolved.endpoints, ["http://10.0.0.1:7431"]);
        assert!(resolved.me.is_none());
    }

    #[test]
    fn hosts_are_found_by_address_or_path_and_nothing_else() {
        let t = lab();
        let by_ip = find_host(&t, "10.72.12.11").unwrap();
        assert_eq!(t.entity(by_ip).path.as_ref(), "dc-b/c1/r2/b12-1");
        assert_eq!(find_host(&t, "dc-b/c1/r2/b12-1").unwrap(), by_ip);
        let err = find_host(&t, "dc-b/c1/r2").unwrap_err().to_string();
        assert!(err.contains("a rack, not a host"), "{err}");
        let err = find_host(&t, "10.72.12.99").unwrap_err().to_string();
        assert!(err.contains("no host lists this address"), "{err}");
        let err = find_host(&t, "web-9").unwrap_err().to_string();
        assert!(err.contains("neither an address nor a path"), "{err}");
    }
}

#[cfg(test)]
mod family_tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn an_ipv6_only_host_follows_dual_stack_peers_on_ipv6() {
        let text = "[[site]]\nname = \"s\"\n[[cabinet]]\nname = \"c\"\nsite = \"s\"\n\
                    [[rack]]\nname = \"r1\"\ncabinet = \"s/c\"\n[[rack]]\nname = \"r2\"\ncabinet = \"s/c\"\n\
                    [[host]]\nname = \"v6\"\nrack = \"s/c/r1\"\naddresses = [\"fd00::1\"]\n\
                    [[host]]\nname = \"dual\"\nrack = \"s/c/r2\"\naddresses = [\"10.0.0.2\", \"fd00::2\"]\n\
                    [[host]]\nname = \"v4\"\nrack = \"s/c/r2\"\naddresses = [\"10.0.0.3\"]\n";
        let t = Topology::parse(Path::new("t.toml"), text).unwrap();
        let me = t.find("s/c/r1/v6").unwrap();
        let chosen = choose(&t, me, 16, 7431);
        let endpoints: Vec<&str> = chosen.iter().map(|p| p.endpoint.as_str()).collect();
        assert_eq!(
            endpoints,
            ["http://[fd00::2]:7431"],
            "the IPv4-only host is left out"
        );
        let dual = t.find("s/c/r2/dual").unwrap();
        let from_dual: Vec<String> = choose(&t, dual, 16, 7431)
            .into_iter()
            .map(|p| p.endpoint)
            .collect();
        assert!(
            from_dual.contains(&"http://10.0.0.3:7431".to_owned()),
            "{from_dual:?}"
        );
        assert!(
            from_dual.contains(&"http://[fd00::1]:7431".to_owned()),
            "{from_dual:?}"
        );
    }
}
