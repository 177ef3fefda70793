//! `faultline run`: the daemon loop. Every tick (and at once on an urgent kernel event)
//! it reads the link counters, feeds this host's links to the detector, and logs each
//! verdict change as one structured line.
use std::{
    collections::HashSet,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::{sync::mpsc, time::MissedTickBehavior};

use crate::{
    config::Config,
    detector::{Detector, Observation, Verdict},
    feed::{
        Feed, FeedLimits,
        observations::{PeerMessage, follow_peer},
    },
    metrics::Metrics,
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
    /// The gRPC port could not be bound (in use, or not an address of this host).
    #[error("listen on {addr} (listen.grpc): {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {source}")]
    Serve {
        #[source]
        source: tonic::transport::Error,
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

/// The least time between two evaluations woken by urgent events. 20 ms: fast next to
/// the 200 ms minimum RTO that produces them, slow next to a storm of them.
const URGENT_MIN_GAP: Duration = Duration::from_millis(20);

/// Runs until `shutdown` completes. On the way out the agent's own health goes
/// NOT_SERVING first, then the server drains, then the probe is dropped (detaching
/// every program).
pub async fn run(config: &Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    // Everything that can be refused is checked before the kernel is touched.
    let topology = load_topology(config)?;
    let observer = Observer::from_config(config)?;
    if observer.locals.is_empty() {
        tracing::warn!(
            "this network namespace has no address but loopback: no link will be judged; \
             set agent.local_addresses"
        );
    }
    let listener = tokio::net::TcpListener::bind(config.listen.grpc)
        .await
        .map_err(|source| RunError::Listen {
            addr: config.listen.grpc,
            source,
        })?;
    let grpc_addr = listener.local_addr().map_err(|source| RunError::Listen {
        addr: config.listen.grpc,
        source,
    })?;
    let metrics_listener = tokio::net::TcpListener::bind(config.listen.metrics)
        .await
        .map_err(|source| RunError::Listen {
            addr: config.listen.metrics,
            source,
        })?;
    let metrics_addr = metrics_listener
        .local_addr()
        .map_err(|source| RunError::Listen {
            addr: config.listen.metrics,
            source,
        })?;
    let mut detector = Detector::new(topology.clone(), config.detector.clone());
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

    let start = Instant::now();
    let feed = Feed::new(
        observer.name.clone(),
        Arc::new(topology),
        SystemTime::now(),
        FeedLimits::default(),
    );
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let feed = feed.clone();
        tokio::spawn(async move {
            feed.serve(listener, async {
                let _ = server_stopped.await;
            })
            .await
        })
    };
    let metrics = Arc::new(Metrics::default());
    tokio::spawn(crate::metrics::serve(
        metrics_listener,
        metrics.clone(),
        feed.hub.clone(),
    ));
    let (peer_tx, mut peer_rx) = mpsc::channel::<PeerMessage>(64);
    for endpoint in &config.agent.peers {
        tokio::spawn(follow_peer(
            endpoint.clone(),
            observer.name.to_string(),
            peer_tx.clone(),
        ));
    }
    drop(peer_tx);
    tracing::info!(
        observer = %observer.name,
        local_addresses = observer.locals.len(),
        entities = detector.topology().len(),
        peers = config.agent.peers.len(),
        grpc = %grpc_addr,
        metrics = %metrics_addr,
        tick = ?config.probe.tick,
        "probe attached, watching TCP links"
    );

    let mut ticker = tokio::time::interval(config.probe.tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut last_eval = tokio::time::Instant::now();
    // An urgent event right after an evaluation waits for this one instead.
    let mut deferred: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => {}
            () = tokio::time::sleep_until(deferred.unwrap_or(last_eval)), if deferred.is_some() => {}
            Some(message) = peer_rx.recv() => {
                match message {
                    // Peers' ticks are folded in now and judged at the next evaluation.
                    PeerMessage::Batch(batch) => {
                        Metrics::add(&metrics.peer_batches, 1);
                        detector.observe(&batch, start.elapsed());
                    }
                    PeerMessage::Lost(name) => {
                        tracing::warn!(peer = %name, "peer observer gone; its evidence is dropped");
                        detector.forget_observer(&name);
                    }
                }
                continue;
            }
            batch = next_urgent(urgent.as_mut()) => match batch {
                Ok(events) => {
                    Metrics::add(&metrics.urgent_events, events.len() as u64);
                    for e in events {
                        tracing::debug!(kind = ?e.kind, local = %e.link.local, peer = %e.link.remote, "urgent");
                    }
                    // A storm of urgent events (a whole rack timing out at once) must not
                    // turn into a map walk per event: at most one evaluation per gap.
                    if last_eval.elapsed() < URGENT_MIN_GAP {
                        deferred.get_or_insert(last_eval + URGENT_MIN_GAP);
                        continue;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "urgent event ring unreadable; relying on ticks");
                    urgent = None;
                }
            },
        }
        // A tick or an urgent event: evaluate now either way.
        last_eval = tokio::time::Instant::now();
        deferred = None;
        let began = Instant::now();
        let samples = probe.sample()?;
        let own = observer.observations(&samples);
        detector.observe(&own, start.elapsed());
        feed.publish_observations(&own);
        let changes = detector.tick(start.elapsed());
        for v in &changes {
            log_verdict(v);
        }
        if !changes.is_empty() {
            feed.publish(&changes);
        }
        Metrics::add(&metrics.ticks, 1);
        Metrics::add(&metrics.verdict_changes, changes.len() as u64);
        Metrics::set(&metrics.links_in_tick, own.len() as u64);
        Metrics::set(
            &metrics.last_tick_ns,
            u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX),
        );
        if let Ok(dropped) = probe.urgent_dropped() {
            Metrics::set(&metrics.urgent_dropped, dropped);
        }
    }
    tracing::info!("shutting down: agent NOT_SERVING, draining gRPC, detaching programs");
    feed.stop_serving();
    // Give health watchers a moment to see NOT_SERVING before connections close.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop_server.send(());
    // Graceful shutdown waits for open streams, and watchers never end theirs: give
    // in-flight calls a moment, then close the rest.
    let abort = server.abort_handle();
    match tokio::time::timeout(Duration::from_secs(2), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(source))) => return Err(RunError::Serve { source }),
        Ok(Err(e)) => tracing::error!(error = %e, "gRPC server task failed"),
        Err(_) => {
            tracing::info!("closing the remaining gRPC streams");
            abort.abort();
        }
    }
    drop(probe);
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
    // Said only once attached: traffic from here on is counted (tests wait for it).
    tracing::info!(
        duration = %humantime::format_duration(duration),
        "probe attached, observing TCP links"
    );
    std::thread::sleep(duration);
    probe.sample()
}
