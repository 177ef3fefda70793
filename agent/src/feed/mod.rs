//! The gRPC side of the agent: the verdict feed (faultline.v1.Verdicts), the standard
//! health protocol (grpc.health.v1), the agent-to-agent exchange
//! (faultline.v1.Observations) and server reflection, all on one port (7431).
//!
//! Verdict changes enter through [`Feed::publish`] from the run loop; observations of
//! this agent through [`Feed::publish_observations`]. Subscribers read from bounded
//! buffers, so no client can slow detection down.
pub(crate) mod convert;
pub(crate) mod filter;
pub(crate) mod health;
pub(crate) mod hub;
pub(crate) mod listener;
pub(crate) mod observations;
pub(crate) mod peer_gate;
pub(crate) mod peer_identity;
pub(crate) mod verdicts;

use std::{future::Future, sync::Arc, time::SystemTime};

use faultline_proto::{health::health_server::HealthServer, v1};
use tokio::{net::TcpListener, sync::watch};

use crate::{
    detector::{Observation, Verdict},
    tls::ServerTls,
    topology::Topology,
};
use hub::Hub;
use listener::{ServerCounters, StreamSlots};
use observations::Publisher;

/// Largest request the services decode (bytes). Real requests are tiny; a larger
/// one is refused by the transport.
pub(crate) const MAX_REQUEST: usize = 64 * 1024;

/// HTTP/2 streams one connection may open at once: a router watching every entity it
/// cares about on one connection needs a few dozen.
const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// Buffer sizes of the feed; the defaults suit thousands of subscribers.
#[derive(Debug, Clone, Copy)]
pub struct FeedLimits {
    /// Changes kept so a reconnecting client can resume without a snapshot …
    pub history: usize,
    /// … and at most this many bytes of them on the wire (a client resuming past
    /// them gets a snapshot, which loses nothing).
    pub history_bytes: usize,
    /// Changes a subscriber may fall behind before it gets a snapshot instead.
    pub backlog: usize,
    /// Messages queued towards one client.
    pub queue: usize,
    /// Connections open at once on the gRPC port (`listen.max_connections`).
    pub connections: usize,
    /// Watch and Subscribe streams open at once (`listen.max_streams`).
    pub streams: usize,
}

impl Default for FeedLimits {
    fn default() -> Self {
        Self {
            history: 4096,
            history_bytes: 1 << 20,
            backlog: 1024,
            queue: 64,
            connections: 1024,
            streams: 4096,
        }
    }
}

/// The topology the services name entities by; replaced when SIGHUP reloads it.
#[derive(Clone)]
pub(crate) struct SharedTopology(Arc<std::sync::RwLock<Arc<Topology>>>);

impl SharedTopology {
    pub(crate) fn new(topology: Arc<Topology>) -> Self {
        Self(Arc::new(std::sync::RwLock::new(topology)))
    }

    pub(crate) fn get(&self) -> Arc<Topology> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set(&self, topology: Arc<Topology>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = topology;
    }
}

/// Handles shared between the run loop and the gRPC services.
#[derive(Clone)]
pub struct Feed {
    pub hub: Arc<Hub>,
    pub observations: Publisher,
    pub(crate) topology: SharedTopology,
    limits: FeedLimits,
    agent_serving: Arc<watch::Sender<bool>>,
    tls: Option<ServerTls>,
    pub(crate) counters: Arc<ServerCounters>,
    pub(crate) streams: StreamSlots,
}

impl Feed {
    /// `epoch`: the wall-clock time of the detector's zero.
    pub fn new(
        observer: Arc<str>,
        topology: Arc<Topology>,
        epoch: SystemTime,
        limits: FeedLimits,
    ) -> Self {
        let counters = Arc::new(ServerCounters::default());
        let streams = StreamSlots::new(limits.streams.max(1), counters.clone());
        Self {
            hub: Arc::new(Hub::new(&limits, epoch)),
            observations: Publisher::new(observer, 64, streams.clone()),
            topology: SharedTopology::new(topology),
            limits,
            agent_serving: Arc::new(watch::channel(true).0),
            tls: None,
            counters,
            streams,
        }
    }

    /// Connections closed at once because `connections` were open (also in `/metrics`).
    pub fn connections_refused(&self) -> u64 {
        self.counters
            .connections_refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The gRPC side's metrics: refusals, TLS, streams open by service, and the
    /// verdict → subscriber latency.
    pub(crate) fn render_metrics(&self, e: &mut crate::metrics::Exposition) {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.counters;
        for (name, help, counter) in [
            (
                "faultline_grpc_connections_refused_total",
                "gRPC connections closed at once: listen.max_connections were open.",
                &c.connections_refused,
            ),
            (
                "faultline_grpc_streams_refused_total",
                "Watch and Subscribe streams refused with RESOURCE_EXHAUSTED: listen.max_streams were open.",
                &c.streams_refused,
            ),
            (
                "faultline_tls_handshakes_failed_total",
                "TLS handshakes on the gRPC port that failed or timed out (a client certificate the CA did not sign, a client that said nothing).",
                &c.handshakes_failed,
            ),
            (
                "faultline_observations_unauthenticated_total",
                "Subscriptions to observations refused: with TLS, the client had no certificate the CA signed.",
                &c.observations_unauthenticated,
            ),
            (
                "faultline_tls_reloads_total",
                "Times changed TLS files were loaded and served.",
                &c.tls_reloads,
            ),
            (
                "faultline_tls_reloads_refused_total",
                "Times changed TLS files were refused (the previous certificate kept).",
                &c.tls_reloads_refused,
            ),
        ] {
            e.counter(name, help, counter.load(Relaxed));
        }
        e.family(
            "faultline_grpc_streams",
            "gauge",
            "Streams open now (subscribers), by service.",
        );
        for kind in listener::StreamKind::ALL {
            e.sample(
                "faultline_grpc_streams",
                &[("service", kind.as_str())],
                c.open_streams[kind as usize].load(Relaxed),
            );
        }
        e.histogram(
            "faultline_verdict_to_subscriber_seconds",
            "From a verdict change's publication to its being queued towards each live Watch subscriber.",
            &c.verdict_to_subscriber,
        );
    }

    /// Serves over TLS: only clients with a certificate the CA signed may subscribe
    /// to observations.
    #[must_use]
    pub(crate) fn with_tls(mut self, tls: ServerTls) -> Self {
        self.observations.require_client_certificate();
        self.tls = Some(tls);
        self
    }

    pub fn publish(&self, changes: &[Verdict]) {
        self.hub.publish(changes);
    }

    pub fn publish_observations(&self, observations: &[Observation]) {
        self.observations.publish(observations);
    }

    /// Marks the agent itself (health name `""`) NOT_SERVING: the first step of a
    /// shutdown, so load balancers stop sending before the server goes away.
    pub fn stop_serving(&self) {
        self.agent_serving.send_replace(false);
    }

    /// Serves every service on `listener` until `shutdown` completes.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let verdicts = v1::verdicts_server::VerdictsServer::new(verdicts::VerdictService::new(
            self.hub.clone(),
            self.limits.queue,
            self.streams.clone(),
        ))
        .max_decoding_message_size(MAX_REQUEST);
        let health = HealthServer::new(health::HealthService::new(
            self.hub.clone(),
            self.topology.clone(),
            self.agent_serving.subscribe(),
            self.streams.clone(),
        ))
        .max_decoding_message_size(MAX_REQUEST);
        let observations =
            v1::observations_server::ObservationsServer::new(self.observations.clone())
                .max_decoding_message_size(MAX_REQUEST);
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(faultline_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("the generated descriptor set is valid");
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(faultline_proto::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .expect("the generated descriptor set is valid");
        tonic::transport::Server::builder()
            // Per connection; `listen.max_streams` bounds them all together.
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .add_service(verdicts)
            .add_service(health)
            .add_service(observations)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(
                listener::incoming(
                    listener,
                    self.tls.clone(),
                    self.limits.connections.max(1),
                    self.counters.clone(),
                ),
                shutdown,
            )
            .await
    }
}
