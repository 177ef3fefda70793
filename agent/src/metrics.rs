//! Prometheus `/metrics` on port 7432: what the agent itself is doing, for dashboards.
//!
//! The run loop bumps atomic counters; a scrape renders them together with the
//! current verdicts per level and state. The HTTP side is deliberately tiny (GET
//! /metrics, connection: close): a scraper is the only client.
use std::{
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::{detector::State, feed::Feed, topology::Level};

/// Counters the run loop updates.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub ticks: AtomicU64,
    /// Duration of the latest evaluation (read maps + detector tick), ns.
    pub last_tick_ns: AtomicU64,
    /// Links with evidence in the latest tick.
    pub links_in_tick: AtomicU64,
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
    /// Peer batches refused by the gate (impostor names, too large, too fast,
    /// malformed), and dropped because the run loop had no room.
    pub peer_batches_refused: AtomicU64,
    pub peer_batches_dropped: AtomicU64,
    /// Links in peer batches left out: a local address not the peer's host's, or past
    /// the cap on addresses outside the topology (see `feed::peer_identity`).
    pub peer_links_refused: AtomicU64,
    /// Peer observations dropped: every observer id taken by observers still heard.
    pub observations_refused: AtomicU64,
}

impl Metrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of these counters and the hub's verdicts.
    pub(crate) fn render(&self, feed: &Feed) -> String {
        let hub = &feed.hub;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "faultline_ticks_total",
            "counter",
            "Evaluations of the kernel counters.",
            get(&self.ticks).to_string(),
        );
        #[expect(clippy::cast_precision_loss)]
        let tick = get(&self.last_tick_ns) as f64 / 1e9;
        metric(
            "faultline_tick_seconds",
            "gauge",
            "Duration of the latest evaluation.",
            format!("{tick:.9}"),
        );
        metric(
            "faultline_links_in_tick",
            "gauge",
            "Links with evidence in the latest tick.",
            get(&self.links_in_tick).to_string(),
        );
        metric(
            "faultline_config_reloads_total",
            "counter",
            "SIGHUP reloads of the config, topology and TLS files that were applied.",
            get(&self.reloads).to_string(),
        );
        metric(
            "faultline_config_reloads_refused_total",
            "counter",
            "SIGHUP reloads refused because a file was bad (nothing changed; the log names file, line and key).",
            get(&self.reloads_refused).to_string(),
        );
        metric(
            "faultline_detector_links",
            "gauge",
            "Links the detector tracks, from every observer; forgotten after detector.forget_after without evidence.",
            get(&self.tracked_links).to_string(),
        );
        metric(
            "faultline_detector_unlisted_hosts",
            "gauge",
            "Hosts outside the topology the detector tracks; at most detector.max_unlisted_hosts.",
            get(&self.unlisted_hosts).to_string(),
        );
        metric(
            "faultline_urgent_events_total",
            "counter",
            "Urgent kernel events received.",
            get(&self.urgent_events).to_string(),
        );
        metric(
            "faultline_urgent_dropped_total",
            "counter",
            "Urgent kernel events suppressed by the in-kernel rate limit or a full ring.",
            get(&self.urgent_dropped).to_string(),
        );
        metric(
            "faultline_verdict_changes_total",
            "counter",
            "Verdict changes published.",
            get(&self.verdict_changes).to_string(),
        );
        metric(
            "faultline_peer_batches_total",
            "counter",
            "Observation batches received from peer agents.",
            get(&self.peer_batches).to_string(),
        );
        metric(
            "faultline_peer_batches_refused_total",
            "counter",
            "Peer batches refused: too many links, too many batches a second, or malformed.",
            get(&self.peer_batches_refused).to_string(),
        );
        metric(
            "faultline_peer_batches_dropped_total",
            "counter",
            "Peer batches dropped because the run loop had no room for them.",
            get(&self.peer_batches_dropped).to_string(),
        );
        metric(
            "faultline_peer_links_refused_total",
            "counter",
            "Links in peer batches left out: the local address is not the peer's own host's, or past the cap on addresses outside the topology.",
            get(&self.peer_links_refused).to_string(),
        );
        metric(
            "faultline_observations_refused_total",
            "counter",
            "Peer observations dropped because all 65,536 observer ids were taken by observers still heard from.",
            get(&self.observations_refused).to_string(),
        );
        let server = &feed.counters;
        for (name, help, counter) in [
            (
                "faultline_grpc_connections_refused_total",
                "gRPC connections closed at once: listen.max_connections were open.",
                &server.connections_refused,
            ),
            (
                "faultline_grpc_streams_refused_total",
                "Watch and Subscribe streams refused with RESOURCE_EXHAUSTED: listen.max_streams were open.",
                &server.streams_refused,
            ),
            (
                "faultline_tls_handshakes_failed_total",
                "TLS handshakes on the gRPC port that failed or timed out (a client certificate the CA did not sign, a client that said nothing).",
                &server.handshakes_failed,
            ),
            (
                "faultline_observations_unauthenticated_total",
                "Subscriptions to observations refused: with TLS, the client had no certificate the CA signed.",
                &server.observations_unauthenticated,
            ),
            (
                "faultline_tls_reloads_total",
                "Times changed TLS files were loaded and served.",
                &server.tls_reloads,
            ),
            (
                "faultline_tls_reloads_refused_total",
                "Times changed TLS files were refused (the previous certificate kept).",
                &server.tls_reloads_refused,
            ),
        ] {
            metric(name, "counter", help, get(counter).to_string());
        }
        metric(
            "faultline_grpc_streams",
            "gauge",
            "Watch and Subscribe streams open now.",
            feed.streams.open().to_string(),
        );
        let (sequence, verdicts) = hub.snapshot();
        metric(
            "faultline_feed_sequence",
            "counter",
            "Sequence number of the latest verdict change.",
            sequence.to_string(),
        );
        let _ = writeln!(
            s,
            "# HELP faultline_entities Entities by level and current state.\n# TYPE faultline_entities gauge"
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
                let _ = writeln!(
                    s,
                    "faultline_entities{{level=\"{level}\",state=\"{}\"}} {n}",
                    state.as_str()
                );
            }
        }
        s
    }
}

/// Scrapes served at once; more connections are closed at once.
const MAX_SCRAPES: usize = 16;

/// Serves `/metrics` on `listener` forever, rendered by `render` at each scrape.
pub(crate) async fn serve(
    listener: TcpListener,
    render: impl Fn() -> String + Send + Sync + 'static,
) {
    let render = Arc::new(render);
    // Scrapers are few; a flood of connections must not become a flood of tasks.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            // Out of file descriptors, say: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Busy: refuse at once rather than queue.
            drop(conn);
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // Read the request head, bounded in size and time.
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while len < buf.len() {
                    let n = conn.read(&mut buf[len..]).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        return Some(());
                    }
                }
                None
            })
            .await;
            let head = String::from_utf8_lossy(&buf[..len]);
            let response = match read {
                Ok(Some(()))
                    if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?") =>
                {
                    let body = render();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                }
                Ok(Some(())) => {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_owned()
                }
                _ => "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned(),
            };
            let _ = conn.write_all(response.as_bytes()).await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
