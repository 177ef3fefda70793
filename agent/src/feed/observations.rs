//! Agent-to-agent exchange. Each agent publishes its own links' ticks
//! (`faultline.v1.Observations/Subscribe`); an agent configured with peers subscribes
//! to each of them and feeds what they saw to its detector, under their names.
//!
//! Nothing here can stall the agent: publishing is a bounded broadcast (a slow
//! subscriber skips batches, visible as sequence gaps), and each peer is read by its
//! own task that hands batches over without waiting and reconnects with backoff.
use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use faultline_proto::v1::{
    self as pb, observations_client::ObservationsClient, observations_server::Observations,
};
use tokio::sync::{broadcast, broadcast::error::RecvError, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{
    listener::{StreamKind, StreamSlots, conn_info},
    peer_gate::{NamesInUse, PeerGate},
    peer_identity::{LinkFilter, PeerIdentity, endpoint_host},
};
use crate::{
    detector::{LinkDelta, Observation},
    metrics::Metrics,
    probe::{Link, LinkCounters},
};

/// The publishing side, shared by the run loop and the gRPC service.
#[derive(Clone)]
pub struct Publisher {
    observer: Arc<str>,
    tx: broadcast::Sender<Arc<pb::ObservationBatch>>,
    sequence: Arc<std::sync::atomic::AtomicU64>,
    streams: StreamSlots,
    /// With TLS: only clients with a certificate the CA signed may subscribe. Every
    /// link of this host, with its peers' addresses, is in these batches.
    require_client_certificate: bool,
}

impl Publisher {
    /// `backlog`: batches a subscriber may fall behind before it skips.
    pub(crate) fn new(observer: Arc<str>, backlog: usize, streams: StreamSlots) -> Self {
        let (tx, _) = broadcast::channel(backlog.max(1));
        Self {
            observer,
            tx,
            sequence: Arc::default(),
            streams,
            require_client_certificate: false,
        }
    }

    pub(crate) fn require_client_certificate(&mut self) {
        self.require_client_certificate = true;
    }

    /// Publishes this agent's own observations of one tick.
    pub fn publish(&self, observations: &[Observation]) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let sequence = self
            .sequence
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let batch = pb::ObservationBatch {
            observer: self.observer.to_string(),
            sequence,
            links: observations.iter().map(to_wire).collect(),
        };
        let _ = self.tx.send(Arc::new(batch));
    }
}

fn to_wire(o: &Observation) -> pb::LinkObservation {
    let c = &o.delta.counters;
    pb::LinkObservation {
        local_address: o.link.local.to_string(),
        remote_address: o.link.remote.to_string(),
        progress_segs: c.progress_segs,
        acked_segs: c.acked_segs,
        retrans_segs: c.retrans_segs,
        rto_timeouts: c.rto_timeouts,
        syn_retrans: c.syn_retrans,
        failed_connects: c.failed_connects,
        resets_rx: c.resets_rx,
        repeat_timeouts: c.repeat_timeouts,
        control_retrans_segs: c.control_retrans_segs,
        control_progress_segs: c.control_progress_segs,
        control_timeouts: c.control_timeouts,
        rtt_p50_us: o.delta.rtt_p50_us,
        silent_ms: o.delta.silent_ms,
        acked_age_ms: o.delta.acked_age_ms,
    }
}

/// A peer's batch as detector observations of `observer` (the peer's identity, not
/// the name the batch gives); None if it carries an address that does not parse.
pub(crate) fn from_wire(
    batch: &pb::ObservationBatch,
    observer: &Arc<str>,
) -> Option<Vec<Observation>> {
    batch
        .links
        .iter()
        .map(|l| {
            Some(Observation {
                observer: observer.clone(),
                // Mapped IPv6 folded to IPv4, as the kernel's own links are.
                link: Link {
                    local: l.local_address.parse::<IpAddr>().ok()?.to_canonical(),
                    remote: l.remote_address.parse::<IpAddr>().ok()?.to_canonical(),
                },
                delta: LinkDelta {
                    counters: LinkCounters {
                        progress_segs: l.progress_segs,
                        acked_segs: l.acked_segs,
                        retrans_segs: l.retrans_segs,
                        rto_timeouts: l.rto_timeouts,
                        syn_retrans: l.syn_retrans,
                        failed_connects: l.failed_connects,
                        resets_rx: l.resets_rx,
                        repeat_timeouts: l.repeat_timeouts,
                        control_retrans_segs: l.control_retrans_segs,
                        control_progress_segs: l.control_progress_segs,
                        control_timeouts: l.control_timeouts,
                    }
                    .clamped(),
                    rtt_p50_us: l.rtt_p50_us,
                    silent_ms: l.silent_ms,
                    acked_age_ms: l.acked_age_ms,
                },
            })
        })
        .collect()
}

#[tonic::async_trait]
impl Observations for Publisher {
    type SubscribeStream = ReceiverStream<Result<pb::ObservationBatch, Status>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let conn = conn_info(&request);
        if self.require_client_certificate && !conn.is_some_and(|c| c.client_certified) {
            self.streams.count_unauthenticated();
            return Err(Status::unauthenticated(
                "observations are only for agents: present a client certificate signed by this agent's tls.ca",
            ));
        }
        let subscriber = request.into_inner().subscriber;
        if subscriber.len() > 256 {
            return Err(Status::invalid_argument("subscriber: at most 256 bytes"));
        }
        let slot = self.streams.take(StreamKind::Observations)?;
        let mut rx = self.tx.subscribe();
        let (tx, out) = mpsc::channel(4);
        tokio::spawn(async move {
            let _slot = slot;
            tracing::info!(%subscriber, remote = ?conn.and_then(|c| c.remote), "peer subscribed to observations");
            loop {
                let next = tokio::select! {
                    () = tx.closed() => break,
                    next = rx.recv() => next,
                };
                match next {
                    Ok(batch) => {
                        if tx.send(Ok((*batch).clone())).await.is_err() {
                            break;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::debug!(%subscriber, skipped = n, "slow peer skipped batches");
                    }
                    Err(RecvError::Closed) => break,
                }
            }
            tracing::info!(%subscriber, "peer unsubscribed");
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }
}

/// What a peer follower tells the run loop.
#[derive(Debug)]
pub(crate) enum PeerMessage {
    /// One tick of the peer's observations (possibly none: the batch still says the
    /// peer is alive).
    Batch {
        observer: Arc<str>,
        observations: Vec<Observation>,
    },
    /// The peer's stream ended: forget what this observer said.
    Lost(Arc<str>),
}

/// Reads one peer forever: subscribe, hand batches over, reconnect with backoff
/// (100 ms doubling to 5 s) when the peer goes away. Batches that the run loop has no
/// room for are dropped, never waited on.
///
/// Batches come every tick; a peer silent for `silence` (three ticks) is lost: its
/// evidence is dropped at once and the stream reconnected. A stream into a blackhole
/// stays open for minutes otherwise, and its last evidence would count late.
pub(crate) async fn follow_peer(
    endpoint: String,
    gate: GateFor,
    silence: Duration,
    to_detector: mpsc::Sender<PeerMessage>,
) {
    let identity = PeerIdentity::of(&endpoint, &gate.topology);
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut followed = false;
        let filter = LinkFilter::new(identity.clone(), gate.topology.clone());
        match subscribe_once(
            &endpoint,
            &gate,
            filter,
            silence,
            &to_detector,
            &mut followed,
        )
        .await
        {
            Ok(()) => {
                tracing::warn!(peer = %endpoint, "peer closed the observation stream; reconnecting");
            }
            Err(e) => {
                tracing::warn!(peer = %endpoint, error = %e, retry_in = ?backoff, "peer unreachable");
            }
        }
        gate.metrics.peer_up(&identity.name, false);
        if followed {
            backoff = Duration::from_millis(100);
            if to_detector
                .send(PeerMessage::Lost(identity.name.clone()))
                .await
                .is_err()
            {
                return;
            }
        }
        if to_detector.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// What every follower shares: this agent's name, the topology that names peers, the
/// names live streams hold, and the counters of what was refused or dropped.
#[derive(Clone)]
pub(crate) struct GateFor {
    pub(crate) me: String,
    /// This agent's certificate and CA, for `https://` peers.
    pub(crate) tls: Option<crate::tls::TlsConfig>,
    pub(crate) topology: Arc<crate::topology::Topology>,
    pub(crate) names: NamesInUse,
    pub(crate) metrics: Arc<Metrics>,
}

async fn subscribe_once(
    endpoint: &str,
    gate_for: &GateFor,
    mut filter: LinkFilter,
    silence: Duration,
    to_detector: &mpsc::Sender<PeerMessage>,
    followed: &mut bool,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let name = filter.identity().name.clone();
    let mut gate = PeerGate::claim(&gate_for.me, &name, gate_for.names.clone(), Instant::now())
        .map_err(|refusal| format!("not followed: the endpoint {refusal:?}"))?;
    let mut channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?;
    if endpoint.starts_with("https://") {
        let files = gate_for
            .tls
            .as_ref()
            .ok_or("https:// needs [tls] in this agent's config")?;
        let tls = crate::tls::client_config(files, endpoint_host(endpoint))
            .map_err(|p| format!("{}: {}", p.key, p.reason))?;
        channel = channel.tls_config(tls)?;
    }
    let channel = channel
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(silence)
        .keep_alive_timeout(silence)
        .keep_alive_while_idle(true)
        .connect()
        .await?;
    let mut stream = ObservationsClient::new(channel)
        .subscribe(pb::SubscribeRequest {
            subscriber: gate_for.me.clone(),
        })
        .await?
        .into_inner();
    tracing::info!(peer = %endpoint, observer = %name, "following peer observations");
    gate_for.metrics.peer_up(&name, true);
    let mut last = None;
    loop {
        let Ok(next) = tokio::time::timeout(silence, stream.message()).await else {
            return Err(format!("silent for {}", humantime::format_duration(silence)).into());
        };
        let Some(batch) = next? else {
            break;
        };
        if let Some(prev) = last
            && batch.sequence > prev + 1
        {
            tracing::debug!(peer = %endpoint, skipped = batch.sequence - prev - 1, "missed peer batches");
        }
        last = Some(batch.sequence);
        if let Err(refusal) = gate.check(batch.links.len(), Instant::now()) {
            Metrics::add(&gate_for.metrics.peer_batches_refused, 1);
            tracing::debug!(peer = %endpoint, ?refusal, "peer batch refused");
            continue;
        }
        let Some(mut observations) = from_wire(&batch, &name) else {
            Metrics::add(&gate_for.metrics.peer_batches_refused, 1);
            tracing::warn!(peer = %endpoint, "malformed observation batch ignored");
            continue;
        };
        let left_out = filter.retain(&mut observations, Instant::now());
        if left_out > 0 {
            Metrics::add(&gate_for.metrics.peer_links_refused, left_out as u64);
            tracing::debug!(peer = %endpoint, left_out, "links the peer may not speak for left out");
        }
        *followed = true;
        match to_detector.try_send(PeerMessage::Batch {
            observer: name.clone(),
            observations,
        }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Metrics::add(&gate_for.metrics.peer_batches_dropped, 1);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_survives_the_wire_every_counter_included() {
        let sent = Observation {
            observer: "a".into(),
            link: Link {
                local: "10.0.0.1".parse().unwrap(),
                remote: "fd00::2".parse().unwrap(),
            },
            delta: LinkDelta {
                counters: LinkCounters {
                    progress_segs: 1,
                    acked_segs: 2,
                    retrans_segs: 3,
                    rto_timeouts: 4,
                    syn_retrans: 5,
                    failed_connects: 6,
                    resets_rx: 7,
                    repeat_timeouts: 3,
                    control_retrans_segs: 9,
                    control_progress_segs: 1,
                    control_timeouts: 2,
                },
                rtt_p50_us: Some(8),
                silent_ms: Some(95),
                acked_age_ms: Some(7),
            },
        };
        let batch = pb::ObservationBatch {
            observer: "a".into(),
            sequence: 1,
            links: vec![to_wire(&sent)],
        };
        assert_eq!(batch.links[0].acked_segs, 2);
        assert_eq!(batch.links[0].repeat_timeouts, 3);
        assert_eq!(batch.links[0].control_retrans_segs, 9);
        assert_eq!(batch.links[0].control_progress_segs, 1);
        assert_eq!(batch.links[0].control_timeouts, 2);
        assert_eq!(batch.links[0].acked_age_ms, Some(7));
        let received = from_wire(&batch, &"a".into()).expect("a well-formed batch");
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].link, sent.link);
        assert_eq!(received[0].delta, sent.delta);
    }

    #[test]
    fn mapped_addresses_from_a_peer_are_folded_to_ipv4() {
        let batch = pb::ObservationBatch {
            observer: "p".into(),
            sequence: 1,
            links: vec![pb::LinkObservation {
                local_address: "::ffff:10.72.12.11".into(),
                remote_address: "::ffff:10.71.11.11".into(),
                ..pb::LinkObservation::default()
            }],
        };
        let received = from_wire(&batch, &"p".into()).unwrap();
        assert_eq!(received[0].link.local.to_string(), "10.72.12.11");
        assert_eq!(received[0].link.remote.to_string(), "10.71.11.11");
    }

    #[test]
    fn an_older_peer_without_acks_reads_as_zero_acks() {
        let batch = pb::ObservationBatch {
            observer: "old".into(),
            sequence: 1,
            links: vec![pb::LinkObservation {
                local_address: "10.0.0.1".into(),
                remote_address: "10.0.0.2".into(),
                progress_segs: 9,
                ..pb::LinkObservation::default()
            }],
        };
        let received = from_wire(&batch, &"peer".into()).unwrap();
        assert_eq!(
            received[0].delta.silent_ms, None,
            "undated, not silent since 0 ms"
        );
        assert_eq!(
            received[0].delta.acked_age_ms, None,
            "undated, not acknowledged just now"
        );
        assert_eq!(received[0].delta.counters.acked_segs, 0);
        assert_eq!(received[0].delta.counters.progress_segs, 9);
    }

    #[test]
    fn counters_at_u64_max_from_a_peer_neither_wrap_nor_hide_a_failure() {
        // Unchecked, rto + syn retries + failed connects wrapped to no hard timeout
        // (release) or panicked (debug): the FAILED evidence became DEGRADED.
        let batch = pb::ObservationBatch {
            observer: "peer".into(),
            sequence: 1,
            links: vec![pb::LinkObservation {
                local_address: "10.0.0.1".into(),
                remote_address: "10.0.0.2".into(),
                retrans_segs: u64::MAX,
                rto_timeouts: u64::MAX,
                syn_retrans: u64::MAX,
                failed_connects: 2,
                ..pb::LinkObservation::default()
            }],
        };
        let received = from_wire(&batch, &"peer".into()).unwrap();
        assert_eq!(
            received[0].delta.counters.rto_timeouts,
            faultline_core::link::MAX_TICK_COUNT
        );
        let cfg = crate::detector::DetectorConfig::default();
        let mut health = crate::detector::LinkHealth::default();
        let delivering = LinkDelta {
            counters: LinkCounters {
                progress_segs: 100,
                ..LinkCounters::default()
            },
            rtt_p50_us: None,
            silent_ms: None,
            acked_age_ms: None,
        };
        health.observe(&delivering, Duration::ZERO, &cfg);
        health.observe(&received[0].delta, Duration::from_millis(100), &cfg);
        assert_eq!(
            health.status(Duration::from_millis(100), &cfg),
            crate::detector::LinkStatus::Failed
        );
        assert!(health.stall_hard() > 0);
        let mut sum = received[0].delta.counters;
        sum.add(&LinkCounters {
            rto_timeouts: u64::MAX,
            ..LinkCounters::default()
        });
        assert_eq!(sum.rto_timeouts, u64::MAX, "per-CPU sums saturate");
    }
}
