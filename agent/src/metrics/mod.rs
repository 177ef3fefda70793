//! Prometheus `/metrics` on port 7432: what the agent itself is doing, for dashboards
//! and alerts, named the Prometheus way (base units, `_total` on counters).
//!
//! The run loop and the servers bump atomic counters and record latencies; a scrape
//! renders them with the current verdicts, the peers' states and the kernel table's
//! occupancy. The HTTP side is tiny (`http`): a scraper is the only client.
mod exposition;
mod http;
pub(crate) mod latency;
mod process;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

pub(crate) use http::serve;

use crate::{detector::State, feed::Feed, topology::Level};
pub(crate) use exposition::Exposition;
use latency::Latency;

/// Counters the run loop updates.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub ticks: AtomicU64,
    /// Duration of the latest evaluation (read maps + detector tick), ns.
    pub last_tick_ns: AtomicU64,
    /// Links with evidence in the latest tick.
    pub links_in_tick: AtomicU64,
    /// The kernel's link table: entries at the last sample, LRU evictions since start.
    pub kernel_links: AtomicU64,
    pub kernel_evictions: AtomicU64,
    /// SIGHUP reloads applied, and refused (nothing changed).
    pub reloads: AtomicU64,
    pub reloads_refused: AtomicU64,
    /// Links the detector tracks (all observers), and hosts outside the topology.
    pub tracked_links: AtomicU64,
    pub unlisted_hosts: AtomicU64,
    pub urgent_events: AtomicU64,
    /// Urgent events the kernel suppressed (rate limit or full ring), as last read.
    pub urgent_dropped: AtomicU64,
    pub verdict_changes: AtomicU64,
    pub peer_batches: AtomicU64,
    /// Peer batches refused by the gate (too large, too fast, malformed), and
    /// dropped because the run loop had no room.
    pub peer_batches_refused: AtomicU64,
    pub peer_batches_dropped: AtomicU64,
    /// Links in peer batches left out: a local address not the peer's host's, or past
    /// the cap on addresses outside the topology (see `feed::peer_identity`).
    pub peer_links_refused: AtomicU64,
    /// Peer observations dropped: every observer id taken by observers still heard.
    pub observations_refused: AtomicU64,
    /// Each followed peer (by identity): following now or not.
    pub peers_up: Mutex<BTreeMap<Arc<str>, bool>>,
    /// From the first urgent kernel event of an evaluation to its verdicts published.
    pub urgent_to_verdict: Latency,
}

impl Metrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }

    /// Notes whether the peer `name` is followed now.
    pub(crate) fn peer_up(&self, name: &Arc<str>, up: bool) {
        self.peers_up
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.clone(), up);
    }

    /// Forgets every peer's state (a reload replaces the followers).
    pub(crate) fn clear_peers(&self) {
        self.peers_up
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// The Prometheus text exposition of everything.
    pub(crate) fn render(&self, feed: &Feed) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut e = Exposition::default();
        e.family(
            "faultline_build_info",
            "gauge",
            "The agent's version; always 1.",
        )
        .sample(
            "faultline_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
        e.counter(
            "faultline_ticks_total",
            "Evaluations of the kernel counters.",
            get(&self.ticks),
        );
        #[expect(clippy::cast_precision_loss)]
        let tick = get(&self.last_tick_ns) as f64 / 1e9;
        e.gauge(
            "faultline_tick_seconds",
            "Duration of the latest evaluation.",
            format!("{tick:.9}"),
        );
        for (name, help, value) in [
            (
                "faultline_links_in_tick",
                "Links with evidence in the latest tick.",
                &self.links_in_tick,
            ),
            (
                "faultline_kernel_links",
                "Links in the kernel's table (probe.max_links) at the latest sample.",
                &self.kernel_links,
            ),
            (
                "faultline_detector_links",
                "Links the detector tracks, from every observer; forgotten after detector.forget_after without evidence.",
                &self.tracked_links,
            ),
            (
                "faultline_detector_unlisted_hosts",
                "Hosts outside the topology the detector tracks; at most detector.max_unlisted_hosts.",
                &self.unlisted_hosts,
            ),
        ] {
            e.gauge(name, help, get(value));
        }
        for (name, help, value) in [
            (
                "faultline_kernel_evictions_total",
                "Links the kernel's table evicted to make room (LRU): a steady rise means probe.max_links is too small for this host.",
                &self.kernel_evictions,
            ),
            (
                "faultline_urgent_events_total",
                "Urgent kernel events received.",
                &self.urgent_events,
            ),
            (
                "faultline_urgent_dropped_total",
                "Urgent kernel events suppressed by the in-kernel rate limit or a full ring.",
                &self.urgent_dropped,
            ),
            (
                "faultline_verdict_changes_total",
                "Verdict changes published.",
                &self.verdict_changes,
            ),
            (
                "faultline_config_reloads_total",
                "SIGHUP reloads of the config, topology and TLS files that were applied.",
                &self.reloads,
            ),
            (
                "faultline_config_reloads_refused_total",
                "SIGHUP reloads refused because a file was bad (nothing changed; the log names file, line and key).",
                &self.reloads_refused,
            ),
            (
                "faultline_peer_batches_total",
                "Observation batches received from peer agents.",
                &self.peer_batches,
            ),
            (
                "faultline_peer_batches_refused_total",
                "Peer batches refused: too many links, too many batches a second, or malformed.",
                &self.peer_batches_refused,
            ),
            (
                "faultline_peer_batches_dropped_total",
                "Peer batches dropped because the run loop had no room for them.",
                &self.peer_batches_dropped,
            ),
            (
                "faultline_peer_links_refused_total",
                "Links in peer batches left out: the local address is not the peer's own host's, or past the cap on addresses outside the topology.",
                &self.peer_links_refused,
            ),
            (
                "faultline_observations_refused_total",
                "Peer observations dropped because all 65,536 observer ids were taken by observers still heard from.",
                &self.observations_refused,
            ),
        ] {
            e.counter(name, help, get(value));
        }
        self.render_peers(&mut e);
        e.histogram(
            "faultline_urgent_to_verdict_seconds",
            "From the first urgent kernel event (a timeout, a failed connect) of an evaluation to the verdict changes it published.",
            &self.urgent_to_verdict,
        );
        feed.render_metrics(&mut e);
        render_verdicts(&mut e, feed);
        process::render(&mut e);
        e.into_text()
    }

    fn render_peers(&self, e: &mut Exposition) {
        let peers = self
            .peers_up
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        e.family(
            "faultline_peer_up",
            "gauge",
            "1 while the peer agent's observations are followed, 0 while it is being reconnected.",
        );
        for (name, up) in peers.iter() {
            e.sample("faultline_peer_up", &[("peer", name)], u8::from(*up));
        }
    }
}

/// Entities by level and state, and each entity of the topology that is not HEALTHY
/// (bounded by the topology: hosts outside it are counted, not named).
fn render_verdicts(e: &mut Exposition, feed: &Feed) {
    let (sequence, verdicts) = feed.hub.snapshot();
    e.gauge(
        "faultline_verdict_sequence",
        "Sequence number of the latest verdict change.",
        sequence,
    );
    e.family(
        "faultline_entities",
        "gauge",
        "Entities by level and current state.",
    );
    for level in Level::ALL {
        for state in [
            State::Unknown,
            State::Healthy,
            State::Degraded,
            State::Failed,
        ] {
            let n = verdicts
                .iter()
                .filter(|n| n.verdict.entity.level == level && n.verdict.state == state)
                .count();
            let level = level.to_string();
            e.sample(
                "faultline_entities",
                &[("level", &level), ("state", state.as_str())],
                n,
            );
        }
    }
    let topology = feed.topology.get();
    e.family(
        "faultline_entity_state",
        "gauge",
        "1 for each entity of the topology that is not HEALTHY, with its state.",
    );
    for n in &verdicts {
        let v = &n.verdict;
        if v.state == State::Healthy || topology.find(&v.entity.path).is_none() {
            continue;
        }
        let level = v.entity.level.to_string();
        e.sample(
            "faultline_entity_state",
            &[
                ("level", &level),
                ("path", &v.entity.path),
                ("state", v.state.as_str()),
            ],
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::{http::MAX_SCRAPES, *};
    use crate::detector::Verdict;

    #[tokio::test]
    async fn scrape_shows_counters_and_entities() {
        let feed = Feed::new(
            "me".into(),
            Arc::default(),
            std::time::SystemTime::UNIX_EPOCH,
            crate::feed::FeedLimits::default(),
        );
        feed.publish(&[Verdict::scripted(Level::Rack, "dc-a/c1/r1", State::Failed)]);
        let metrics = Arc::new(Metrics::default());
        Metrics::add(&metrics.ticks, 3);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, move || metrics.render(&feed)));
        let get = |path: &'static str| async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).await.unwrap();
            out
        };
        let body = get("/metrics").await;
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        assert!(body.contains("\nfaultline_ticks_total 3\n"), "{body}");
        assert!(
            body.contains("faultline_entities{level=\"rack\",state=\"FAILED\"} 1"),
            "{body}"
        );
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_bound_are_closed_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, || "up 1\n".to_owned()));
        // Connections that never send a request hold every slot…
        let mut idle = Vec::new();
        for _ in 0..MAX_SCRAPES {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // …so one more is closed without an answer, not given a task.
        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), extra.read_to_end(&mut out))
            .await
            .expect("closed at once, not left waiting");
        assert!(read.is_ok() && out.is_empty(), "{read:?} {out:?}");
        // Once they go, scrapes are served again.
        drop(idle);
        let mut served = false;
        for _ in 0..100 {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
            let mut body = String::new();
            let _ = c.read_to_string(&mut body).await;
            if body.contains("up 1") {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(served);
    }
}
