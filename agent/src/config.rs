//! The agent's config file (TOML). Unknown keys are errors, and every error names the
//! file, line and key, so a typo is caught before anything is attached.
use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use faultline_core::capped_read::{self, CappedReadError};
use serde::{Deserialize, de};

use crate::{
    detector::DetectorConfig,
    probe::ProbeOptions,
    tls::{TlsConfig, TlsProblem},
};

/// Where `faultline run` looks when `--config` is not given.
pub(crate) const DEFAULT_PATH: &str = "/etc/faultline/faultline.toml";

/// The largest config file read. The config is a few dozen keys and a list of peer
/// agents: the example is under 4 KiB, and 1 MiB holds ten thousand peers. Enforced
/// while reading, so a wrong `--config /dev/zero` is refused instead of filling memory.
pub(crate) const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("read {path}: larger than the {} limit for config files", capped_read::human_bytes(*cap))]
    TooLarge { path: PathBuf, cap: u64 },
    /// The TOML is malformed or has an unknown, missing or mistyped key.
    #[error("{path}:{line}: {key}{message}", key = key.as_ref().map_or(String::new(), |k| format!("{k}: ")))]
    Syntax {
        path: PathBuf,
        line: usize,
        /// The dotted key on that line (`detector.recovery_hold`), when there is one.
        key: Option<String>,
        message: String,
    },
    /// A value is well-formed but out of range (the line of its key, when the file
    /// sets it).
    #[error("{path}{}: {key}: {reason}", line.map_or_else(String::new, |l| format!(":{l}")))]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        key: &'static str,
        reason: String,
    },
    /// A value that is valid alone but cannot be used with the rest of the config or on
    /// this host: `peers = "auto"` without a topology, or on a host the topology lacks.
    #[error("{path}:{line}: {key}: {reason}")]
    Unusable {
        path: PathBuf,
        line: usize,
        key: &'static str,
        reason: String,
    },
}

/// The default `agent.peer_port`: the default gRPC port (`listen.grpc`).
pub const DEFAULT_PEER_PORT: u16 = 7431;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub agent: AgentConfig,
    pub listen: ListenConfig,
    pub probe: ProbeConfig,
    pub detector: DetectorConfig,
    /// TLS on the gRPC port and towards peers. Default: none (cleartext).
    pub tls: Option<TlsConfig>,
    /// Where the config came from, for errors found after parsing (None: defaults).
    #[serde(skip)]
    pub(crate) origin: Option<Origin>,
}

/// The file a config was read from, and the line of `agent.peers` in it, so that
/// `peers = "auto"` refused at start-up is refused naming the file, line and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) path: PathBuf,
    pub(crate) peers_line: usize,
    /// The lines of `tls.cert`, `tls.key` and `tls.ca`, for files refused at start-up.
    pub(crate) tls_lines: [Option<usize>; 3],
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// This agent's name as an observer in verdicts. Default: the host name.
    pub name: Option<String>,
    /// The topology file. Default: none, and every peer is an unplaced host of its
    /// own (verdicts per host only, no racks to vote on).
    pub topology: Option<PathBuf>,
    /// The addresses whose links this agent judges. Default: the addresses of this
    /// network namespace. The kernel sees every namespace's sockets; this keeps
    /// containers' traffic from being mistaken for the host's.
    pub local_addresses: Option<Vec<IpAddr>>,
    /// Other agents to exchange observations with: a list of gRPC endpoints
    /// (`http://10.1.2.11:7431`), or `"auto"` to choose them from the topology. Their
    /// observations join this agent's verdicts under their names. Default: none.
    /// Spanned: `"auto"` can be refused at start-up naming its line.
    pub peers: toml::Spanned<Peers>,
    /// The gRPC port of the agents `peers = "auto"` chooses. Default 7431, the default
    /// `listen.grpc` port: a fleet that moves it sets both.
    pub peer_port: u16,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            name: None,
            topology: None,
            local_addresses: None,
            peers: toml::Spanned::new(0..0, Peers::default()),
            peer_port: DEFAULT_PEER_PORT,
        }
    }
}

/// `agent.peers`: the agents this agent follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peers {
    /// These endpoints, as written.
    List(Vec<String>),
    /// Chosen from the topology around this host
    /// ([`auto_peers`](faultline_core::topology::auto_peers)).
    Auto,
}

impl Default for Peers {
    fn default() -> Self {
        Self::List(Vec::new())
    }
}

/// `"auto"` or a list of strings; any other string is refused with what is expected.
impl<'de> Deserialize<'de> for Peers {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PeersVisitor;
        impl<'de> de::Visitor<'de> for PeersVisitor {
            type Value = Peers;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(r#""auto" or a list of endpoints like ["http://10.1.2.11:7431"]"#)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Peers, E> {
                if text == "auto" {
                    Ok(Peers::Auto)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(text), &self))
                }
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Peers, A::Error> {
                let mut list = Vec::new();
                while let Some(endpoint) = seq.next_element::<String>()? {
                    list.push(endpoint);
                }
                Ok(Peers::List(list))
            }
        }
        deserializer.deserialize_any(PeersVisitor)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// gRPC: faultline.v1, grpc.health.v1 and reflection. Default `[::]:7431`.
    pub grpc: SocketAddr,
    /// Prometheus `/metrics`. Default `[::]:7432`.
    pub metrics: SocketAddr,
    /// Heartbeats from the agents that follow this one (`run::heartbeat`): two bytes a
    /// tick each, read and dropped. Every agent uses the same port: this agent sends
    /// its own heartbeats to the peers it follows on this one's. Default `[::]:7433`.
    pub heartbeat: SocketAddr,
    /// Connections open at once on the gRPC port; more are closed at once. Default
    /// 1024: a few dozen peers and routers, with room for a fleet's subscribers.
    pub max_connections: usize,
    /// Watch and Subscribe streams open at once, all connections together; more get
    /// RESOURCE_EXHAUSTED. Default 4096.
    pub max_streams: usize,
}

impl Default for ListenConfig {
    fn default() -> Self {
        let limits = crate::feed::FeedLimits::default();
        Self {
            grpc: SocketAddr::from(([0u16; 8], 7431)),
            metrics: SocketAddr::from(([0u16; 8], 7432)),
            heartbeat: SocketAddr::from(([0u16; 8], 7433)),
            max_connections: limits.connections,
            max_streams: limits.streams,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// How often the kernel counters are read. 100 ms: an outage becomes visible within
    /// a tenth of a second even without urgent events, at a cost of ten map walks a second.
    #[serde(with = "faultline_core::duration")]
    pub tick: Duration,
    /// Links tracked in the kernel before the LRU evicts the least recently active.
    /// 16384: a busy front-end talks to a few thousand peers; each link costs ~300 bytes per CPU.
    pub max_links: u32,
    /// tracefs mount point (mounted there if missing).
    pub tracefs: PathBuf,
    /// cgroup v2 directory for the RTO (sock_ops) program. Default: the root of the
    /// first cgroup2 mount, which sees every socket on the host. Empty string: off.
    pub cgroup: Option<PathBuf>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        let probe = ProbeOptions::default();
        Self {
            tick: Duration::from_millis(100),
            max_links: probe.max_links,
            tracefs: probe.tracefs,
            cgroup: probe.cgroup,
        }
    }
}

impl ProbeConfig {
    pub fn probe_options(&self) -> ProbeOptions {
        ProbeOptions {
            tracefs: self.tracefs.clone(),
            cgroup: self.cgroup.clone().filter(|p| !p.as_os_str().is_empty()),
            max_links: self.max_links,
            control_port: None,
            local_addresses: Vec::new(),
        }
    }
}

impl Config {
    /// Parses `text`; `path` names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut config: Self = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |span| span.start);
            ConfigError::Syntax {
                path: path.to_owned(),
                line: line_of(text, offset),
                key: key_at(text, offset),
                message: e.message().trim().replace('\n', "; "),
            }
        })?;
        config.origin = Some(Origin {
            path: path.to_owned(),
            peers_line: line_of(text, config.agent.peers.span().start),
            tls_lines: TLS_KEYS.map(|k| line_of_key(text, k)),
        });
        config.validate(path, text)?;
        Ok(config)
    }

    /// Reads and checks the TLS files, if `[tls]` is set; a refusal names the config
    /// file, the line and the key whose file is at fault.
    pub(crate) fn check_tls(&self) -> Result<(), ConfigError> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        crate::tls::check(tls).map_err(|p| self.tls_refused(p))
    }

    /// A [`ConfigError::Invalid`] for a TLS file, naming the config file, line and key.
    pub(crate) fn tls_refused(&self, problem: TlsProblem) -> ConfigError {
        let (path, line) = self.origin.as_ref().map_or_else(
            || (PathBuf::from("(built-in defaults)"), None),
            |o| {
                let at = TLS_KEYS.iter().position(|k| *k == problem.key);
                (o.path.clone(), at.and_then(|i| o.tls_lines[i]))
            },
        );
        ConfigError::Invalid {
            path,
            line,
            key: problem.key,
            reason: problem.reason,
        }
    }

    /// An [`ConfigError::Unusable`] about `agent.peers`, naming its file and line.
    pub(crate) fn unusable_peers(&self, reason: String) -> ConfigError {
        let (path, line) = self.origin.as_ref().map_or_else(
            || (PathBuf::from("(built-in defaults)"), 0),
            |o| (o.path.clone(), o.peers_line),
        );
        ConfigError::Unusable {
            path,
            line,
            key: "agent.peers",
            reason,
        }
    }

    /// Loads `path`. When `path` is None, the default path is used if it exists and
    /// the built-in defaults otherwise, so a fresh host runs with no file at all.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_source(path).map(|(config, _)| config)
    }

    /// [`Config::load`], also saying which file was read (None: the built-in defaults).
    pub fn load_with_source(path: Option<&Path>) -> Result<(Self, Option<PathBuf>), ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_owned(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        match read_config_file(&path) {
            Ok(text) => Self::parse(&path, &text).map(|config| (config, Some(path))),
            Err(ConfigError::Read { source, .. })
                if !required && source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok((Self::default(), None))
            }
            Err(e) => Err(e),
        }
    }

    fn validate(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            line: line_of_key(text, key),
            key,
            reason,
        };
        if self.probe.tick < Duration::from_millis(10) || self.probe.tick > Duration::from_secs(10)
        {
            return Err(invalid("probe.tick", "must be between 10ms and 10s".into()));
        }
        if !(16..=MAX_LINKS).contains(&self.probe.max_links) {
            return Err(invalid(
                "probe.max_links",
                format!(
                    "must be between 16 and {MAX_LINKS} (each link costs ~300 bytes of kernel memory per CPU)"
                ),
            ));
        }
        if self
            .agent
            .name
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            return Err(invalid(
                "agent.name",
                "must not be empty (leave it out to use the host name)".into(),
            ));
        }
        match self.agent.peers.get_ref() {
            Peers::List(list) => {
                let tls = self.tls.is_some();
                if let Some((bad, why)) = list
                    .iter()
                    .find_map(|p| peer_uri_problem(p, tls).map(|w| (p, w)))
                {
                    return Err(ConfigError::Invalid {
                        path: path.to_owned(),
                        line: Some(line_of(text, self.agent.peers.span().start)),
                        key: "agent.peers",
                        reason: format!("`{bad}`: {why}"),
                    });
                }
            }
            Peers::Auto if self.agent.topology.is_none() => {
                return Err(self.unusable_peers(
                    "\"auto\" chooses peers from the topology: set agent.topology".to_owned(),
                ));
            }
            Peers::Auto => {}
        }
        if !(1..=65_536).contains(&self.listen.max_connections) {
            return Err(invalid(
                "listen.max_connections",
                "must be between 1 and 65536".into(),
            ));
        }
        if !(1..=1 << 20).contains(&self.listen.max_streams) {
            return Err(invalid(
                "listen.max_streams",
                "must be between 1 and 1048576".into(),
            ));
        }
        if self.agent.peer_port == 0 {
            return Err(invalid(
                "agent.peer_port",
                "must be a port, 1 to 65535".into(),
            ));
        }
        if let Some((key, reason)) = self.detector.invalid() {
            return Err(invalid(key, reason));
        }
        Ok(())
    }
}

/// The most links `probe.max_links` may ask the kernel to track: about 300 MB of
/// kernel memory per CPU. A larger value passed validation and failed only in the
/// kernel, after the ports were bound.
const MAX_LINKS: u32 = 1 << 20;

/// The keys of `[tls]`, in `Origin::tls_lines` order.
const TLS_KEYS: [&str; 3] = ["tls.cert", "tls.key", "tls.ca"];

/// Why a peer endpoint cannot be used, if it cannot: it must be `http://HOST:PORT`,
/// or `https://HOST:PORT` when `[tls]` gives this agent a certificate and a CA.
fn peer_uri_problem(peer: &str, tls: bool) -> Option<&'static str> {
    let rest = match (peer.strip_prefix("http://"), peer.strip_prefix("https://")) {
        (Some(rest), _) => rest,
        (None, Some(_)) if !tls => {
            return Some(
                "https needs [tls] (cert, key, ca) in this config: set it, or use http://",
            );
        }
        (None, Some(rest)) => rest,
        (None, None) => return Some("not an endpoint like http://10.1.2.11:7431"),
    };
    let Ok(uri) = peer.parse::<tonic::transport::Uri>() else {
        return Some("not a valid URI; an endpoint is like http://10.1.2.11:7431");
    };
    let host = uri.host().unwrap_or_default();
    if host.is_empty() || uri.port_u16().is_none() {
        return Some("needs a host and a port, like http://10.1.2.11:7431");
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))
        && inner.parse::<std::net::Ipv6Addr>().is_err()
    {
        return Some("not a valid URI: the bracketed host is not an IPv6 address");
    }
    rest.trim_end_matches('/')
        .contains('/')
        .then_some("a peer endpoint has no path: http://HOST:PORT")
}

/// The 1-based line where `dotted` (`detector.recovery_hold`) is set: its key inside
/// its `[table]`. None when the file does not set it.
fn line_of_key(text: &str, dotted: &str) -> Option<usize> {
    let (table, key) = dotted.rsplit_once('.').unwrap_or(("", dotted));
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.starts_with('[') && l.ends_with(']') {
            current = l.trim_matches(['[', ']']).trim().to_owned();
        } else if current == table && l.split_once('=').is_some_and(|(k, _)| k.trim() == key) {
            return Some(i + 1);
        }
    }
    None
}

/// Durations written as `"100ms"`, `"5s"` in TOML.
/// A config file's text, read up to [`MAX_CONFIG_BYTES`].
pub(crate) fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    capped_read::read_to_string(path, MAX_CONFIG_BYTES).map_err(|e| match e {
        CappedReadError::Io(source) => ConfigError::Read {
            path: path.to_owned(),
            source,
        },
        CappedReadError::TooLarge { cap } => ConfigError::TooLarge {
            path: path.to_owned(),
            cap,
        },
    })
}

/// The 1-based line holding byte `offset` of `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted key assigned on the line holding byte `offset` (its table's name, a dot,
/// the key), the table's name on its header line, or None when that line assigns
/// nothing (a malformed header, say).
pub(crate) fn key_at(text: &str, offset: usize) -> Option<String> {
    let upto = &text[..offset.min(text.len())];
    let line_start = upto.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or_default();
    // A table's header: a missing key of the table is reported there.
    let header = line.trim();
    if header.starts_with('[') && header.ends_with(']') && !header.starts_with("[[") {
        return Some(header.trim_matches(['[', ']']).trim().to_owned());
    }
    let key = line.split_once('=')?.0.trim();
    let table = upto[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|h| h.trim_matches(['[', ']']).trim());
    Some(match table {
        Some(t) if !key.is_empty() => format!("{t}.{key}"),
        _ => key.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = Config::parse(Path::new("f.toml"), "").unwrap();
        assert_eq!(c.probe.tick, Duration::from_millis(100));
        assert_eq!(c.probe.max_links, 16_384);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = Config::parse(
            Path::new("/etc/f.toml"),
            "[probe]\ntick = \"50ms\"\ntik = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("/etc/f.toml:"), "{err}");
        assert!(
            err.starts_with("/etc/f.toml:3: probe.tik: unknown field"),
            "{err}"
        );
    }

    #[test]
    fn bad_duration_is_refused() {
        let err = Config::parse(Path::new("f.toml"), "[probe]\ntick = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("f.toml:2: ") && err.contains("100ms"),
            "{err}"
        );
        let err = Config::parse(Path::new("f.toml"), "[probe]\ntick = \"1ms\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("probe.tick"), "{err}");
    }

    #[test]
    fn the_example_config_is_valid_and_matches_the_defaults() {
        let text = include_str!("../../examples/faultline.toml");
        let c = Config::parse(Path::new("faultline.toml"), text).unwrap();
        let defaults = Config::default();
        assert_eq!(
            c.detector, defaults.detector,
            "the example documents the defaults"
        );
        assert_eq!(c.probe.tick, defaults.probe.tick);
        assert_eq!(c.listen, defaults.listen);
        assert_eq!(c.agent, defaults.agent);
        assert_eq!(c.agent.peer_port, DEFAULT_PEER_PORT);
        assert!(
            text.contains(r#"# peers = "auto""#),
            "the example documents \"auto\""
        );
    }

    #[test]
    fn peers_are_a_list_or_auto() {
        let c = Config::parse(
            Path::new("f.toml"),
            "[agent]
peers = [\"http://10.0.0.1:7431\"]\npeer_port = 9000\n",
        )
        .unwrap();
        assert_eq!(
            c.agent.peers.get_ref(),
            &Peers::List(vec!["http://10.0.0.1:7431".into()])
        );
        assert_eq!(c.agent.peer_port, 9000);
        let c = Config::parse(
            Path::new("f.toml"),
            "[agent]\ntopology = \"t.toml\"\npeers = \"auto\"\n",
        )
        .unwrap();
        assert_eq!(c.agent.peers.get_ref(), &Peers::Auto);
        assert_eq!(
            Config::default().agent.peers.get_ref(),
            &Peers::List(vec![])
        );
    }

    #[test]
    fn peers_refusals_name_file_line_and_key() {
        let refused = |text: &str| {
            Config::parse(Path::new("/etc/f.toml"), text)
                .unwrap_err()
                .to_string()
        };
        let err = refused("[agent]\nname = \"a\"\npeers = \"auto\"\n");
        assert!(
            err.starts_with("/etc/f.toml:3: agent.peers: ") && err.contains("agent.topology"),
            "{err}"
        );
        let err = refused("[agent]\npeers = \"everyone\"\n");
        assert!(
            err.starts_with("/etc/f.toml:2: agent.peers: ")
                && err.contains("everyone")
                && err.contains(r#""auto""#),
            "{err}"
        );
        let err = refused("[agent]\npeers = [\"10.0.0.1:7431\"]\n");
        assert!(
            err.contains("agent.peers") && err.contains("not an endpoint"),
            "{err}"
        );
        let err = refused("[agent]\npeer_port = 0\n");
        assert!(err.contains("agent.peer_port"), "{err}");
        let err = refused("[agent]\npeer_port = 70000\n");
        assert!(err.starts_with("/etc/f.toml:2: agent.peer_port: "), "{err}");
    }

    #[test]
    fn detector_values_are_checked() {
        let err = Config::parse(
            Path::new("f.toml"),
            "[detector]\nmin_failed_fraction = 2.0\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("detector.min_failed_fraction"), "{err}");
        let err = Config::parse(
            Path::new("f.toml"),
            "[detector]\nrecovery_hold = \"soon\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("f.toml:2: detector.recovery_hold: "),
            "{err}"
        );
    }

    #[test]
    fn absurd_values_are_refused_naming_file_line_and_key() {
        for (text, want) in [
            (
                "[detector]\nrecovery_hold = \"100000000000s\"\n",
                "f.toml:2: detector.recovery_hold: must be between",
            ),
            (
                "[detector]\nstale_after = \"0s\"\n",
                "f.toml:2: detector.stale_after: must be between 100ms",
            ),
            (
                "\n[detector]\nrtt_factor = nan\n",
                "f.toml:3: detector.rtt_factor: must be between 1 and 1000 (got NaN)",
            ),
            (
                "[detector]\ndegraded_min_retrans = -5.0\n",
                "f.toml:2: detector.degraded_min_retrans: must be between 0",
            ),
            (
                "[detector]\nmax_evidence = 0\n",
                "f.toml:2: detector.max_evidence: must be between 1 and 1024",
            ),
            (
                "[detector]\npooled_loss_ratio = 0.0\n",
                "f.toml:2: detector.pooled_loss_ratio: must be above 0 and at most 1",
            ),
            (
                "[detector]\nwitness_slack = \"0s\"\n",
                "f.toml:2: detector.witness_slack: must be between 1ms",
            ),
            (
                "[probe]\nmax_links = 4294967295\n",
                "f.toml:2: probe.max_links: must be between 16 and 1048576",
            ),
            (
                "[agent]\nname = \"\"\n",
                "f.toml:2: agent.name: must not be empty",
            ),
            (
                "[agent]\npeers = [\"https://10.0.0.1:7431\"]\n",
                "f.toml:2: agent.peers: `https://10.0.0.1:7431`: https needs [tls]",
            ),
            (
                "[listen]\nmax_connections = 0\n",
                "f.toml:2: listen.max_connections: must be between 1 and 65536",
            ),
            (
                "[listen]\nmax_streams = 2000000\n",
                "f.toml:2: listen.max_streams: must be between 1 and 1048576",
            ),
            (
                "[tls]\ncert = \"a.pem\"\nkey = \"a.key\"\n",
                "f.toml:1: tls: missing field `ca`",
            ),
            (
                "[agent]\npeers = [\"http://10.0.0.1\"]\n",
                "f.toml:2: agent.peers: `http://10.0.0.1`: needs a host and a port",
            ),
            (
                "[agent]\npeers = [\"http://10.0.0.1:7431/x\"]\n",
                "f.toml:2: agent.peers: `http://10.0.0.1:7431/x`: a peer endpoint has no path",
            ),
            (
                "[agent]\npeers = [\"http://[zz::1]:7431\"]\n",
                "f.toml:2: agent.peers: `http://[zz::1]:7431`: not a valid URI",
            ),
            // Each value fine alone: named without a line when the file does not set it.
            (
                "[detector]\nmax_recovery_hold = \"1s\"\n",
                "f.toml:2: detector.max_recovery_hold: must be at least recovery_hold",
            ),
        ] {
            let err = Config::parse(Path::new("f.toml"), text)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(want), "{text:?}: {err}\n  want {want}");
        }
        // The defaults and the example pass.
        Config::parse(Path::new("f.toml"), "").unwrap();
    }

    #[test]
    fn missing_default_file_is_fine_but_missing_explicit_file_is_not() {
        assert!(Config::load(Some(Path::new("/nonexistent/faultline.toml"))).is_err());
    }

    #[test]
    fn a_file_over_the_cap_is_refused_naming_the_file_and_the_cap() {
        let dir = std::env::temp_dir().join(format!("faultline-config-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("huge.toml");
        // Valid TOML (a comment) one byte over the cap: refused for its size alone.
        let text = format!(
            "#{}",
            "x".repeat(usize::try_from(MAX_CONFIG_BYTES).unwrap())
        );
        std::fs::write(&path, text).unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            err.contains(&*path.to_string_lossy())
                && err.contains("larger than the 1 MiB limit for config files"),
            "{err}"
        );
    }
}
