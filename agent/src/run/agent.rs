//! The agent's lifecycle, after mini-redis's `Listener`: [`Agent::start`] refuses bad
//! input before touching the kernel, then binds and attaches; [`Agent::run`] evaluates
//! every tick and at once on urgent kernel events; every way out (a signal, a sample
//! error, a task that ended or panicked, a panic in an evaluation) goes through one
//! shutdown: `""` NOT_SERVING, drain the gRPC server, detach, and a log line saying why.
use std::{
    net::SocketAddr,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
    time::MissedTickBehavior,
};

use std::sync::atomic::Ordering;

use super::{
    Observer, RunError, error_chain, heartbeat, load_topology, log_verdict,
    notify::Notifier,
    reload::ReloadFrom,
    tasks::{Tasks, panic_message},
};
use crate::{
    config::Config,
    detector::Detector,
    feed::listener::ServerCounters,
    feed::{
        Feed, FeedLimits,
        observations::{GateFor, PeerMessage, follow_peer},
        peer_gate::NamesInUse,
    },
    metrics::Metrics,
    probe::{Probe, ProbeOptions, SockOpsStatus, UrgentEvents, UrgentRecord},
    tls::{RELOAD_CHECK, Reload, ServerTls},
};

/// The least time between two evaluations woken by urgent events. 20 ms: fast next to
/// the 200 ms minimum RTO that produces them, slow next to a storm of them.
const URGENT_MIN_GAP: Duration = Duration::from_millis(20);

/// How long `""` shows NOT_SERVING before the server starts draining, so health
/// watchers see it before their connections close.
const NOT_SERVING_GRACE: Duration = Duration::from_millis(200);

/// How long in-flight calls get to finish; Watch streams never end on their own, so
/// what is still open then is closed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Urgent events that led to no verdict change within this long were noise.
const URGENT_NEWS_EXPIRY: Duration = Duration::from_secs(5);

/// A peer that sends no batch for this many ticks is lost (batches come every tick).
const PEER_SILENT_TICKS: u32 = 3;

/// Peer batches queued towards the detector, from all peers together.
const PEER_QUEUE: usize = 64;

const GRPC_SERVER: &str = "gRPC server";
const HEARTBEAT_LISTENER: &str = "heartbeat listener";

/// The name prefix of peer follower tasks (a reload replaces them).
pub(super) const PEER_FOLLOWER: &str = "peer follower ";

/// A running agent: kernel probe, detector, feed and the tasks serving them.
pub struct Agent {
    pub(super) observer: Observer,
    pub(super) detector: Detector,
    probe: Probe,
    urgent: Option<UrgentEvents>,
    pub(super) feed: Feed,
    pub(super) metrics: Arc<Metrics>,
    peers: mpsc::Receiver<PeerMessage>,
    peer_tx: mpsc::Sender<PeerMessage>,
    /// What peer followers share, and the endpoints they follow.
    pub(super) gate: GateFor,
    pub(super) endpoints: Vec<String>,
    silence: Duration,
    pub(super) tasks: Tasks,
    /// The config as running, and where SIGHUP reads it again (None: not from a file).
    pub(super) config: Config,
    pub(super) reload_from: Option<ReloadFrom>,
    pub(super) tls: Option<ServerTls>,
    notifier: Notifier,
    /// The first urgent kernel event not yet evaluated.
    urgent_since: Option<Instant>,
    stop_server: Option<oneshot::Sender<()>>,
    /// The detector's clock starts here.
    epoch: Instant,
    tick: Duration,
    /// The port heartbeats are sent to on every peer: this agent's own.
    heartbeat_port: u16,
}

/// Why the run loop ended.
enum Stop {
    /// SIGTERM, SIGINT, or whatever the caller's shutdown future names.
    Asked(&'static str),
    Failed(RunError),
}

impl Agent {
    /// Checks everything that can be refused, then binds both ports, attaches the
    /// kernel programs and spawns the servers and peer followers.
    pub async fn start(config: &Config) -> Result<Self, RunError> {
        let topology = load_topology(config)?;
        let observer = Observer::from_config(config)?;
        if observer.local_count() == 0 {
            tracing::warn!(
                "this network namespace has no address but loopback: no link will be judged; \
                 set agent.local_addresses"
            );
        }
        let peers = crate::peers::resolve(config, &topology, &observer.addresses())?;
        let tls = match &config.tls {
            Some(files) => Some(ServerTls::load(files).map_err(|p| config.tls_refused(p))?),
            None => None,
        };
        if let Some(me) = &peers.me {
            tracing::info!(host = %me, peers = peers.endpoints.len(), "peers chosen from the topology");
        }
        let (grpc_listener, grpc_addr) = bind(config.listen.grpc, "listen.grpc").await?;
        let (metrics_listener, metrics_addr) =
            bind(config.listen.metrics, "listen.metrics").await?;
        let (heartbeat_listener, heartbeat_addr) =
            bind(config.listen.heartbeat, "listen.heartbeat").await?;
        let detector = Detector::new(topology.clone(), config.detector.clone());
        let (probe, urgent) = attach_probe(config, heartbeat_addr.port(), &observer)?;
        let mut tasks = Tasks::default();
        tasks.spawn(HEARTBEAT_LISTENER, heartbeat::serve(heartbeat_listener));
        let mut feed = Feed::new(
            observer.name.clone(),
            Arc::new(topology),
            SystemTime::now(),
            FeedLimits {
                connections: config.listen.max_connections,
                streams: config.listen.max_streams,
                ..FeedLimits::default()
            },
        );
        if let Some(tls) = &tls {
            spawn_tls_reload(&mut tasks, tls.clone(), feed.counters.clone());
            feed = feed.with_tls(tls.clone());
        }
        let metrics = Arc::new(Metrics::default());
        let stop_server =
            spawn_servers(&mut tasks, &feed, &metrics, grpc_listener, metrics_listener);
        let peer_count = peers.endpoints.len();
        let (peer_tx, peer_rx) = mpsc::channel::<PeerMessage>(PEER_QUEUE);
        let gate = GateFor {
            me: observer.name.to_string(),
            tls: config.tls.clone(),
            topology: feed.topology.get(),
            names: NamesInUse::default(),
            metrics: metrics.clone(),
        };
        tracing::info!(
            observer = %observer.name,
            local_addresses = observer.local_count(),
            entities = detector.topology().len(),
            peers = peer_count,
            grpc = %grpc_addr,
            metrics = %metrics_addr,
            heartbeat = %heartbeat_addr,
            tick = ?config.probe.tick,
            "probe attached, watching TCP links"
        );
        let mut agent = Self {
            observer,
            detector,
            probe,
            urgent,
            feed,
            metrics,
            peers: peer_rx,
            peer_tx,
            gate,
            endpoints: peers.endpoints,
            silence: PEER_SILENT_TICKS * config.probe.tick,
            tasks,
            config: config.clone(),
            reload_from: None,
            tls,
            notifier: Notifier::from_env(),
            urgent_since: None,
            stop_server: Some(stop_server),
            epoch: Instant::now(),
            tick: config.probe.tick,
            heartbeat_port: heartbeat_addr.port(),
        };
        agent.spawn_followers();
        Ok(agent)
    }

    /// SIGHUP reloads the config from `from` (see `reload`); without this, SIGHUP is
    /// ignored with a warning.
    #[must_use]
    pub fn reloading_from(mut self, from: ReloadFrom) -> Self {
        self.reload_from = Some(from);
        self
    }

    /// One follower per endpoint, and its heartbeats; their batches arrive on `peers`.
    pub(super) fn spawn_followers(&mut self) {
        self.metrics.clear_peers();
        for endpoint in &self.endpoints {
            let identity =
                crate::feed::peer_identity::PeerIdentity::of(endpoint, &self.gate.topology);
            self.metrics.peer_up(&identity.name, false);
            let heartbeat_host = heartbeat::host_of(endpoint);
            let (endpoint, gate, tx) = (endpoint.clone(), self.gate.clone(), self.peer_tx.clone());
            let silence = self.silence;
            self.tasks
                .spawn(format!("{PEER_FOLLOWER}{endpoint}"), async move {
                    follow_peer(endpoint, gate, silence, tx).await;
                    Ok(())
                });
            if let Some(host) = heartbeat_host {
                let (port, tick) = (self.heartbeat_port, self.tick);
                // Named as a follower, so that a reload replaces it with them.
                self.tasks
                    .spawn(format!("{PEER_FOLLOWER}{host} heartbeats"), async move {
                        heartbeat::send(host, port, tick).await;
                        Ok(())
                    });
            }
        }
    }

    /// Evaluates until `shutdown` completes or something fails, then shuts down.
    /// Returns the error that stopped it, if one did.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = &'static str>,
    ) -> Result<(), RunError> {
        let stop = self.evaluate_until(shutdown).await;
        self.shutdown(stop).await
    }

    async fn evaluate_until(&mut self, shutdown: impl Future<Output = &'static str>) -> Stop {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let mut pacing = UrgentPacing::new();
        let mut hangup = hangups();
        let mut ready = false;
        loop {
            tokio::select! {
                asked = &mut shutdown => return Stop::Asked(asked),
                Some(()) = next_hangup(hangup.as_mut()) => {
                    self.reload();
                    continue;
                }
                Some((task, outcome)) = self.tasks.next_end() => {
                    let reason = outcome.err().unwrap_or_else(|| "ended".to_owned());
                    return Stop::Failed(RunError::Task { task, reason });
                }
                _ = ticker.tick() => {}
                () = pacing.deferred(), if pacing.is_deferred() => {}
                Some(message) = self.peers.recv() => {
                    if !self.take_peer_message(message) || !pacing.may_evaluate_now() {
                        continue;
                    }
                }
                batch = next_urgent(self.urgent.as_mut()) => {
                    if !self.take_urgent(batch) || !pacing.may_evaluate_now() {
                        continue;
                    }
                }
            }
            pacing.evaluated();
            if let Err(e) = self.evaluate_catching_panics() {
                return Stop::Failed(e);
            }
            if !ready {
                // Attached, and the first evaluation ran: serving for real.
                self.notifier.ready();
                ready = true;
            }
            self.notifier.evaluated();
            let now = self.epoch.elapsed();
            if let Some(due) = self.detector.silence_due(&self.observer.name)
                && due > now
            {
                tracing::debug!(in_ms = ?due.saturating_sub(now).as_millis(), "a link went silent after a retransmission; sampling again when its silence would prove it dead");
                pacing.defer_until(tokio::time::Instant::from_std(self.epoch + due));
            }
            if let Some(due) = self.detector.confirm_due() {
                tracing::debug!(in_ms = ?due.saturating_sub(now).as_millis(), "a failure is pending; judging again when its confirm is due");
                pacing.defer_until(tokio::time::Instant::from_std(self.epoch + due));
            }
        }
    }

    /// Folds in a peer's tick; true if it is news to judge now rather than at the next
    /// tick: a timeout or failed connect (a peer's first sight of an outage, which
    /// corroborates ours), or a peer lost.
    fn take_peer_message(&mut self, message: PeerMessage) -> bool {
        match message {
            PeerMessage::Batch {
                observer,
                observations,
            } => {
                Metrics::add(&self.metrics.peer_batches, 1);
                let now = self.epoch.elapsed();
                self.detector.observe(&observations, now);
                Metrics::set(
                    &self.metrics.observations_refused,
                    self.detector.refused_observations(),
                );
                self.detector.heard_from(&observer, now);
                let timeout = observations.iter().any(|o| {
                    let c = &o.delta.counters;
                    c.rto_timeouts + c.syn_retrans + c.failed_connects > 0
                });
                // This batch proves a link silent since a retransmission.
                let silence = self
                    .detector
                    .silence_due(&observer)
                    .is_some_and(|due| due <= now);
                let news = timeout || silence;
                if news {
                    tracing::debug!(%observer, timeout, silence, "a peer reports a timeout or a silent link; judging now");
                }
                news
            }
            PeerMessage::Lost(name) => {
                tracing::warn!(peer = %name, "peer observer gone; its evidence is dropped");
                self.detector.forget_observer(&name);
                true
            }
        }
    }

    /// Counts a batch of urgent events; false if the ring became unreadable.
    fn take_urgent(&mut self, batch: std::io::Result<Vec<UrgentRecord>>) -> bool {
        match batch {
            Ok(events) => {
                Metrics::add(&self.metrics.urgent_events, events.len() as u64);
                if !events.is_empty() {
                    self.urgent_since.get_or_insert_with(Instant::now);
                }
                for e in events {
                    tracing::debug!(kind = ?e.kind, local = %e.link.local, peer = %e.link.remote, "urgent");
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "urgent event ring unreadable; relying on ticks");
                self.urgent = None;
                false
            }
        }
    }

    /// A panic in the detector or the feed must still end in the shutdown sequence,
    /// not in an agent that vanishes while routers believe it serving.
    fn evaluate_catching_panics(&mut self) -> Result<(), RunError> {
        std::panic::catch_unwind(AssertUnwindSafe(|| self.evaluate())).unwrap_or_else(|panic| {
            Err(RunError::EvaluationPanicked {
                message: panic_message(panic.as_ref()),
            })
        })
    }

    /// Reads the kernel, judges, publishes: one evaluation at one instant.
    fn evaluate(&mut self) -> Result<(), RunError> {
        let began = Instant::now();
        let now = began.duration_since(self.epoch);
        let samples = self
            .probe
            .sample()
            .map_err(|source| RunError::Sample { source })?;
        let own = self.observer.observations(&samples);
        self.detector.observe(&own, now);
        // Sampled just now: a link not in `own` had nothing to report.
        self.detector.heard_from(&self.observer.name, now);
        self.feed.publish_observations(&own);
        let changes = self.detector.tick(now);
        for v in &changes {
            log_verdict(v);
        }
        if !changes.is_empty() {
            self.feed.publish(&changes);
        }
        // Urgent events that led to verdicts within a few seconds (a confirm, the
        // peers' corroboration): how long that took. Events that led to none expire.
        if let Some(since) = self.urgent_since {
            if !changes.is_empty() {
                self.metrics.urgent_to_verdict.record(since.elapsed());
                self.urgent_since = None;
            } else if since.elapsed() > URGENT_NEWS_EXPIRY {
                self.urgent_since = None;
            }
        }
        self.feed.hub.forget(&self.detector.take_forgotten());
        let m = &self.metrics;
        Metrics::add(&m.ticks, 1);
        Metrics::add(&m.verdict_changes, changes.len() as u64);
        Metrics::set(&m.links_in_tick, own.len() as u64);
        let tracked = self.detector.tracked();
        Metrics::set(&m.tracked_links, tracked.links as u64);
        Metrics::set(&m.unlisted_hosts, tracked.unlisted_hosts as u64);
        Metrics::set(
            &m.last_tick_ns,
            u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX),
        );
        let (kernel_links, evicted) = self.probe.occupancy();
        Metrics::set(&m.kernel_links, kernel_links as u64);
        Metrics::set(&m.kernel_evictions, evicted);
        if let Ok(dropped) = self.probe.urgent_dropped() {
            Metrics::set(&m.urgent_dropped, dropped);
        }
        Ok(())
    }

    /// The one way out: `""` NOT_SERVING, drain, close what is left, detach.
    async fn shutdown(mut self, stop: Stop) -> Result<(), RunError> {
        match &stop {
            Stop::Asked(by) => tracing::info!(
                reason = by,
                "shutting down: agent NOT_SERVING, draining gRPC, detaching programs"
            ),
            Stop::Failed(e) => {
                tracing::error!(reason = %error_chain(e), "shutting down on an error: agent NOT_SERVING, draining gRPC, detaching programs");
            }
        }
        self.notifier.stopping();
        self.feed.stop_serving();
        tokio::time::sleep(NOT_SERVING_GRACE).await;
        if let Some(stop_server) = self.stop_server.take() {
            let _ = stop_server.send(());
        }
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while let Some((task, outcome)) = self.tasks.next_end().await {
                if task == GRPC_SERVER {
                    return outcome;
                }
            }
            Ok(())
        })
        .await;
        match drained {
            Ok(Ok(())) => {}
            Ok(Err(why)) => tracing::error!(error = %why, "gRPC server failed while draining"),
            Err(_) => tracing::info!("closing the remaining gRPC streams"),
        }
        self.tasks.abort_all().await;
        drop(self.probe);
        tracing::info!("stopped: programs detached");
        match stop {
            Stop::Asked(_) => Ok(()),
            Stop::Failed(e) => Err(e),
        }
    }
}

/// Loads and attaches the kernel programs; says whether RTOs and ACKs will be counted.
fn attach_probe(
    config: &Config,
    heartbeat_port: u16,
    observer: &Observer,
) -> Result<(Probe, Option<UrgentEvents>), RunError> {
    let options = ProbeOptions {
        control_port: Some(heartbeat_port),
        // The kernel then keeps only the links this agent judges.
        local_addresses: observer.addresses(),
        ..config.probe.probe_options()
    };
    let mut probe = Probe::attach(&options)?;
    match probe.sock_ops_status() {
        SockOpsStatus::Attached(cgroup) => {
            tracing::info!(cgroup = %cgroup.display(), "sock_ops attached: RTOs and ACKs are counted");
        }
        SockOpsStatus::Unavailable(why) => {
            tracing::warn!(reason = %why, "sock_ops not attached: RTOs and ACKs are not counted (one-way faults go unseen), retransmissions are");
        }
    }
    let urgent = probe.take_urgent_events().transpose()?;
    Ok((probe, urgent))
}

/// The gRPC and metrics servers; returns what stops the gRPC server gracefully.
fn spawn_servers(
    tasks: &mut Tasks,
    feed: &Feed,
    metrics: &Arc<Metrics>,
    grpc: TcpListener,
    metrics_listener: TcpListener,
) -> oneshot::Sender<()> {
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let server = feed.clone();
    tasks.spawn(GRPC_SERVER, async move {
        server
            .serve(grpc, async {
                let _ = server_stopped.await;
            })
            .await
            .map_err(|e| format!("{e:#}"))
    });
    let (serve_metrics, served) = (metrics.clone(), feed.clone());
    tasks.spawn("metrics server", async move {
        crate::metrics::serve(metrics_listener, move || serve_metrics.render(&served)).await;
        Ok(())
    });
    stop_server
}

/// Serves rotated certificates without a restart: the files are checked every
/// [`RELOAD_CHECK`]; new ones that fail to load are refused and the current kept.
fn spawn_tls_reload(tasks: &mut Tasks, tls: ServerTls, counters: Arc<ServerCounters>) {
    tasks.spawn("TLS reload", async move {
        let mut every = tokio::time::interval(RELOAD_CHECK);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            note_tls_reload(&tls.reload(false), &counters);
        }
    });
}

/// Logs and counts what a reload of the TLS files did.
pub(super) fn note_tls_reload(outcome: &Reload, counters: &ServerCounters) {
    match outcome {
        Reload::Unchanged => {}
        Reload::Reloaded => {
            counters.tls_reloads.fetch_add(1, Ordering::Relaxed);
            tracing::info!("TLS files changed: serving the new certificate to new connections");
        }
        Reload::Refused(p) => {
            counters.tls_reloads_refused.fetch_add(1, Ordering::Relaxed);
            tracing::error!(key = p.key, reason = %p.reason, "TLS files changed but were refused; still serving the previous certificate");
        }
    }
}

/// Binds `addr`; errors name the config key that set it.
async fn bind(addr: SocketAddr, key: &'static str) -> Result<(TcpListener, SocketAddr), RunError> {
    let listen = |source| RunError::Listen { key, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(listen)?;
    let bound = listener.local_addr().map_err(listen)?;
    Ok((listener, bound))
}

/// SIGHUP, if a handler can be installed.
fn hangups() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot handle SIGHUP: no reload");
            None
        }
    }
}

async fn next_hangup(hangup: Option<&mut tokio::signal::unix::Signal>) -> Option<()> {
    match hangup {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_urgent(urgent: Option<&mut UrgentEvents>) -> std::io::Result<Vec<UrgentRecord>> {
    match urgent {
        Some(u) => u.next_batch().await,
        None => std::future::pending().await,
    }
}

/// At most one evaluation per [`URGENT_MIN_GAP`] for urgent events, peers' news and
/// confirms falling due: a storm (a whole rack timing out at once) must not turn into
/// a map walk per event. An event inside the gap is not lost: it defers an evaluation
/// to the end of the gap.
struct UrgentPacing {
    last: tokio::time::Instant,
    deferred: Option<tokio::time::Instant>,
}

impl UrgentPacing {
    fn new() -> Self {
        Self {
            last: tokio::time::Instant::now(),
            deferred: None,
        }
    }

    fn is_deferred(&self) -> bool {
        self.deferred.is_some()
    }

    async fn deferred(&self) {
        tokio::time::sleep_until(self.deferred.unwrap_or(self.last)).await;
    }

    /// True if an urgent event may evaluate now; otherwise one is deferred.
    fn may_evaluate_now(&mut self) -> bool {
        if self.last.elapsed() >= URGENT_MIN_GAP {
            return true;
        }
        self.deferred.get_or_insert(self.last + URGENT_MIN_GAP);
        false
    }

    /// Asks for an evaluation at `at` (a pending failure's confirm), or sooner if one
    /// is already deferred; never sooner than the gap allows.
    fn defer_until(&mut self, at: tokio::time::Instant) {
        let at = at.max(self.last + URGENT_MIN_GAP);
        self.deferred = Some(self.deferred.map_or(at, |d| d.min(at)));
    }

    fn evaluated(&mut self) {
        self.last = tokio::time::Instant::now();
        self.deferred = None;
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::{Instant, advance};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_confirm_falling_due_is_judged_then_not_a_tick_later() {
        let mut pacing = UrgentPacing::new();
        pacing.evaluated();
        let start = Instant::now();
        pacing.defer_until(start + Duration::from_millis(50));
        assert!(pacing.is_deferred());
        pacing.deferred().await;
        assert_eq!(Instant::now() - start, Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn deferring_keeps_the_sooner_time_and_the_gap() {
        let mut pacing = UrgentPacing::new();
        pacing.evaluated();
        let start = Instant::now();
        pacing.defer_until(start + Duration::from_millis(80));
        pacing.defer_until(start + Duration::from_millis(60));
        pacing.defer_until(start + Duration::from_millis(90));
        pacing.deferred().await;
        assert_eq!(Instant::now() - start, Duration::from_millis(60));

        // Due at once, right after an evaluation: still one gap later.
        pacing.evaluated();
        let evaluated = Instant::now();
        pacing.defer_until(evaluated);
        pacing.deferred().await;
        assert_eq!(Instant::now() - evaluated, URGENT_MIN_GAP);
    }

    #[tokio::test(start_paused = true)]
    async fn urgent_events_inside_the_gap_defer_to_its_end() {
        let mut pacing = UrgentPacing::new();
        pacing.evaluated();
        let evaluated = Instant::now();
        advance(Duration::from_millis(5)).await;
        assert!(!pacing.may_evaluate_now());
        pacing.deferred().await;
        assert_eq!(Instant::now() - evaluated, URGENT_MIN_GAP);
        assert!(pacing.may_evaluate_now());
    }
}
