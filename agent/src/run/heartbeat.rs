//! Heartbeats: the agents' earliest sign of a dead path, on connections of their own.
//!
//! Every tick an agent writes two one-byte segments, 3 ms apart, to every peer it
//! follows, on the peers' heartbeat port (`listen.heartbeat`; every agent uses the
//! same). With two segments in flight Linux sends its tail-loss probe two RTTs after
//! the path dies; one segment alone (an observation batch) waits for the 200 ms
//! minimum RTO, so the first retransmission towards a dead host comes a tick sooner
//! than the streams' would. The kernel programs count this port's segments and
//! retransmissions apart (`control_*`): they start a stall like any retransmission but
//! never count as loss, because with two segments in flight an ACK a few ms late makes
//! a spurious one (under CPU contention, often). The observation streams keep their
//! one segment a tick, and their losses count as before.
//!
//! The listener reads and drops what comes; it holds at most `MAX_CONNECTIONS` and
//! closes one idle for `IDLE`.
use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::{MissedTickBehavior, timeout},
};

/// Between the two segments of a heartbeat: long enough that the first has left on
/// its own (TCP_NODELAY), short next to a tick.
const GAP: Duration = Duration::from_millis(3);
/// Before connecting again after a refused or broken connection.
const RECONNECT: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A connection that sends nothing for this long is closed (heartbeats come every tick).
const IDLE: Duration = Duration::from_secs(10);
/// Heartbeat connections held at once; more are closed at once. Each peer following
/// this agent holds one.
const MAX_CONNECTIONS: usize = 1024;

/// Accepts heartbeat connections and drops what they send, until aborted.
pub(super) async fn serve(listener: TcpListener) -> super::tasks::Outcome {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was
                // accepted: the port stays open, the next accept may work.
                tracing::warn!(error = %e, "accept a heartbeat connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        tokio::spawn(async move {
            let _slot = slot;
            let mut buf = [0u8; 64];
            while let Ok(Ok(n)) = timeout(IDLE, stream.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
            }
        });
    }
}

/// The host of a followed endpoint (`http://10.1.1.1:7431`, `https://[fd00::1]:7431`,
/// `http://db-1:7431`), to send heartbeats to; None if it has none.
pub(super) fn host_of(endpoint: &str) -> Option<String> {
    let uri: tonic::transport::Uri = endpoint.parse().ok()?;
    let host = uri.host()?;
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
}

/// Sends heartbeats to `host`'s heartbeat `port` every `tick`, reconnecting when the
/// connection is refused or breaks, until aborted.
pub(super) async fn send(host: String, port: u16, tick: Duration) {
    loop {
        match timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port))).await {
            Ok(Ok(stream)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::warn!(%host, error = %e, "heartbeats: TCP_NODELAY");
                }
                let e = beat(stream, tick).await;
                tracing::debug!(%host, error = %e, "heartbeat connection broke");
            }
            Ok(Err(e)) => tracing::debug!(%host, port, error = %e, "heartbeats: connect"),
            Err(_) => tracing::debug!(%host, port, "heartbeats: connect timed out"),
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// Two segments every tick until a write fails.
async fn beat(mut stream: TcpStream, tick: Duration) -> std::io::Error {
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(e) = stream.write_all(&[0]).await {
            return e;
        }
        tokio::time::sleep(GAP).await;
        if let Err(e) = stream.write_all(&[0]).await {
            return e;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_an_endpoint() {
        assert_eq!(host_of("http://10.1.1.1:7431").as_deref(), Some("10.1.1.1"));
        assert_eq!(
            host_of("https://[fd00::1]:7431").as_deref(),
            Some("fd00::1")
        );
        assert_eq!(host_of("http://db-1:7431").as_deref(), Some("db-1"));
        assert_eq!(host_of("not a uri"), None);
    }

    /// A follower's heartbeats reach the listener as pairs every tick, and the sender
    /// connects again after the listener comes back.
    #[tokio::test]
    async fn heartbeats_arrive_in_pairs_and_reconnect() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sender = tokio::spawn(send("127.0.0.1".into(), port, Duration::from_millis(50)));
        let (mut conn, _) = timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the sender connects")
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        while got.len() < 6 {
            let n = timeout(Duration::from_secs(5), conn.read(&mut buf))
                .await
                .expect("heartbeats keep coming")
                .unwrap();
            assert!(n > 0, "the sender does not close");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.iter().all(|b| *b == 0), "{got:?}");
        drop(conn);
        // The broken connection is noticed at a write, then a new one is made.
        let (_again, _) = timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the sender connects again")
            .unwrap();
        sender.abort();
    }
}
