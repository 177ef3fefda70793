//! `faultline run`: the daemon. [`Agent`] holds its lifecycle (start, evaluate,
//! shutdown); this module holds what the other commands share with it.
mod agent;
mod heartbeat;
mod notify;
mod observer;
mod reload;
mod tasks;

use std::{net::SocketAddr, time::Duration};

pub use agent::Agent;
pub(crate) use observer::Observer;
pub use reload::ReloadFrom;

use crate::{
    config::{Config, ConfigError},
    detector::Verdict,
    probe::{LinkSample, Probe, ProbeError},
    topology::{Topology, TopologyError},
};

/// Why the agent could not start, or stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config cannot be used on this host (`peers = "auto"` on a host the
    /// topology does not list); nothing was bound or attached.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The topology file was refused (nothing was attached).
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The kernel programs could not be loaded, attached or read at start-up.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// This namespace's addresses could not be listed.
    #[error("list local addresses")]
    LocalAddresses {
        #[source]
        source: std::io::Error,
    },
    /// A port could not be bound (in use, or not an address of this host).
    #[error("listen on {addr} ({key})")]
    Listen {
        /// The config key that names the address, e.g. `listen.metrics`.
        key: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Reading the kernel's counters failed while running; the agent shut down.
    #[error("read the kernel's link counters")]
    Sample {
        #[source]
        source: ProbeError,
    },
    /// A background task (a server, a peer follower) ended or panicked; the agent shut down.
    #[error("{task} stopped: {reason}")]
    Task { task: String, reason: String },
    /// The detector or the feed panicked during an evaluation; the agent shut down.
    #[error("evaluation panicked: {message}")]
    EvaluationPanicked { message: String },
}

/// Runs the agent until `shutdown` completes (with the name of what asked, e.g.
/// "SIGTERM") or something fails. Either way the agent goes NOT_SERVING, drains and
/// detaches before this returns.
pub async fn run(
    config: &Config,
    shutdown: impl Future<Output = &'static str>,
) -> Result<(), RunError> {
    Agent::start(config).await?.run(shutdown).await
}

/// [`run`], with SIGHUP reloading the config from `from` (the `--config` path, or the
/// default path).
pub async fn run_reloading(
    config: &Config,
    from: ReloadFrom,
    shutdown: impl Future<Output = &'static str>,
) -> Result<(), RunError> {
    Agent::start(config)
        .await?
        .reloading_from(from)
        .run(shutdown)
        .await
}

/// An error and its causes on one line, `outer: inner: root`. Messages never repeat
/// their source, so this is how an error is printed wherever it leaves the program.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Loads the topology named by the config, or an empty one.
pub(crate) fn load_topology(config: &Config) -> Result<Topology, TopologyError> {
    match &config.agent.topology {
        Some(path) => Topology::load(path),
        None => Ok(Topology::default()),
    }
}

/// One structured line per verdict change: at info, except a host outside the
/// topology coming and going HEALTHY or UNKNOWN (at debug), which on a front-end is
/// two lines per client address.
pub(crate) fn log_verdict(v: &Verdict) {
    let churn = v.entity.level == crate::topology::Level::Host
        && matches!(
            v.state,
            crate::detector::State::Healthy | crate::detector::State::Unknown
        )
        && v.entity
            .path
            .rsplit('/')
            .next()
            .is_some_and(|a| a.parse::<std::net::IpAddr>().is_ok());
    if churn {
        tracing::debug!(
            target: "faultline::verdict",
            level = %v.entity.level,
            path = %v.entity.path,
            state = v.state.as_str(),
            reason = %v.reason,
            "verdict"
        );
        return;
    }
    tracing::info!(
        target: "faultline::verdict",
        level = %v.entity.level,
        path = %v.entity.path,
        state = v.state.as_str(),
        cause = v.cause.as_ref().map_or(String::new(), crate::detector::Entity::service_name),
        confidence = format!("{:.2}", v.confidence),
        local_fault = v.local_fault,
        observers = v.observers.join(","),
        reason = %v.reason,
        "verdict"
    );
}

/// `faultline links`: attaches, waits `duration`, returns what each link did meanwhile.
pub fn observe_links(config: &Config, duration: Duration) -> Result<Vec<LinkSample>, ProbeError> {
    let mut probe = Probe::attach(&config.probe.probe_options())?;
    // Said only once attached: traffic from here on is counted (tests wait for it).
    tracing::info!(
        duration = %humantime::format_duration(duration),
        "probe attached, observing TCP links"
    );
    std::thread::sleep(duration);
    probe.sample()
}
