//! `faultline run`: the daemon loop. Every tick (and at once on an urgent kernel event)
//! it reads the link counters, feeds this host's links to the detector, and logs each
//! verdict change as one structured line.
use std::{
    collections::HashSet,
    future::Future,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::time::MissedTickBehavior;

use crate::{
    config::Config,
    detector::{Detector, Observation, Verdict},
    netif,
    probe::{LinkSample, Probe, ProbeError, SockOpsStatus, UrgentEvents, UrgentRecord},
    topology::{Topology, TopologyError},
};

/// Why the agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The topology file was refused (nothing was attached).
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The kernel programs could not be loaded, attached or read.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// This namespace's addresses could not be listed.
    #[error("list local addresses: {source}")]
    LocalAddresses {
        #[source]
        source: std::io::Error,
    },
}

/// The agent's identity and the links it judges, fixed at start-up.
pub struct Observer {
    pub name: Arc<str>,
    locals: HashSet<IpAddr>,
}

impl Observer {
    pub fn from_config(config: &Config) -> Result<Self, RunError> {
        let name = config.agent.name.clone().unwrap_or_else(hostname);
        let locals = match &config.agent.local_addresses {
            Some(list) => list.iter().copied().collect(),
            None => netif::local_addresses()
                .map_err(|source| RunError::LocalAddresses { source })?
                .into_iter()
                .collect(),
        };
        Ok(Self {
            name: name.into(),
            locals,
        })
    }

    /// This host's links among the samples, as observations. Loopback and other
    /// namespaces' traffic are not this host's network.
    pub fn observations(&self, samples: &[LinkSample]) -> Vec<Observation> {
        samples
            .iter()
            .filter(|s| self.locals.contains(&s.link.local) && !s.link.remote.is_loopback())
            .map(|s| Observation::from_sample(&self.name, s))
            .collect()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "faultline".to_owned())
}

/// Loads the topology named by the config, or an empty one.
pub fn load_topology(config: &Config) -> Result<Topology, TopologyError> {
    match &config.agent.topology {
        Some(path) => Topology::load(path),
        None => Ok(Topology::default()),
    }
}

/// Runs until `shutdown` completes; dropping the probe on the way out detaches every
/// program. `on_change` receives every verdict change (the feed subscribes here).
pub async fn run(
    config: &Config,
    shutdown: impl Future<Output = ()>,
    mut on_change: impl FnMut(&[Verdict]),
) -> Result<(), RunError> {
    // Everything that can be refused is checked before the kernel is touched.
    let topology = load_topology(config)?;
    let observer = Observer::from_config(config)?;
    let mut detector = Detector::new(topology, config.detector.clone());
    let mut probe = Probe::attach(&config.probe.probe_options())?;
    match probe.sock_ops_status() {
        SockOpsStatus::Attached(cgroup) => {
            tracing::info!(cgroup = %cgroup.display(), "sock_ops attached: RTOs are counted");
        }
        SockOpsStatus::Unavailable(why) => {
            tracing::warn!(reason = %why, "sock_ops not attached: RTOs are not counted, retransmissions are");
        }
    }
    let mut urgent = probe.take_urgent_events().transpose()?;
    tracing::info!(
        observer = %observer.name,
        local_addresses = observer.locals.len(),
        entities = detector.topology().len(),
        tick = ?config.probe.tick,
        "probe attached, watching TCP links"
    );
    let start = Instant::now();
    let mut ticker = tokio::time::interval(config.probe.tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => {}
            batch = next_urgent(urgent.as_mut()) => match batch {
                Ok(events) => for e in events {
                    tracing::debug!(kind = ?e.kind, local = %e.link.local, peer = %e.link.remote, "urgent");
                },
                Err(e) => {
                    tracing::error!(error = %e, "urgent event ring unreadable; relying on ticks");
                    urgent = None;
                }
            },
        }
        // A tick or an urgent event: evaluate now either way.
        let samples = probe.sample()?;
        detector.observe(&observer.observations(&samples), start.elapsed());
        let changes = detector.tick(start.elapsed());
        for v in &changes {
            log_verdict(v);
        }
        if !changes.is_empty() {
            on_change(&changes);
        }
    }
    tracing::info!("shutting down, detaching programs");
    Ok(())
}

async fn next_urgent(urgent: Option<&mut UrgentEvents>) -> std::io::Result<Vec<UrgentRecord>> {
    match urgent {
        Some(u) => u.next_batch().await,
        None => std::future::pending().await,
    }
}

/// One structured line per verdict change.
pub fn log_verdict(v: &Verdict) {
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
    std::thread::sleep(duration);
    probe.sample()
}
