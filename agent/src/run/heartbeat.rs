//! Heartbeats: the agents' earliest sign of a dead path, on connections of their own.
//!
//! Every tick an agent writes a one-byte segment to every peer it follows, on the
//! peers' heartbeat port (`listen.heartbeat`; every agent uses the same), unless the
//! last is still unanswered. The connections time out `RTO_MIN_US` past their RTT, and
//! the listener's kernel acknowledges within `DELACK_MAX_US` whatever its agent's
//! share of the CPU, so a heartbeat's timeout is a dead path's earliest proof. The
//! kernel programs count this port's segments, retransmissions and timeouts apart
//! (`control_*`): they start and harden a stall like any other but never count as
//! loss, because an ACK a few ms late makes them spurious (under CPU contention,
//! often). The observation streams keep their one segment a tick, and their losses
//! count as before.
//!
//! Where the short timeout cannot be set (Linux before 6.15) a heartbeat is two
//! segments, 3 ms apart: with two in flight Linux sends its tail-loss probe two RTTs
//! after the path dies, where one alone waits for the 200 ms minimum RTO. With the
//! short timeout the second buys nothing (the timeout, an RTT and 20 ms, comes before
//! a probe two RTTs and 20 ms out) and was half the heartbeats' system calls.
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

/// Between the two segments of a heartbeat where it has two: long enough that the
/// first has left on its own (TCP_NODELAY), short next to a tick.
const GAP: Duration = Duration::from_millis(3);
/// Before connecting again after a refused or broken connection.
const RECONNECT: Duration = Duration::from_secs(1);
/// A connection whose heartbeats have gone unanswered this long is replaced. The
/// kernel retransmits into a dead path with a timeout that doubles each time: after a
/// few seconds' outage the next try can be seconds away (up to two minutes), and no
/// heartbeat is written meanwhile, so the path would come back with its earliest
/// sign silent. A live path answers within an RTT and a few retransmissions.
const STUCK: Duration = Duration::from_secs(1);
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
        tune_receiver(&stream);
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
/// connection is refused or breaks, and at once when it is stuck, until aborted.
pub(super) async fn send(host: String, port: u16, tick: Duration) {
    loop {
        match timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port))).await {
            Ok(Ok(mut stream)) => {
                let segments = if tune_sender(&stream) { 1 } else { 2 };
                let e = beat(&mut stream, tick, STUCK, segments).await;
                tracing::debug!(%host, error = %e, "heartbeat connection broke");
                if e.kind() == std::io::ErrorKind::TimedOut {
                    // A new connection's SYN is retried on its own clock, from 1 s.
                    continue;
                }
            }
            Ok(Err(e)) => tracing::debug!(%host, port, error = %e, "heartbeats: connect"),
            Err(_) => tracing::debug!(%host, port, "heartbeats: connect timed out"),
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// `segments` one-byte segments (`GAP` apart) every tick until a write fails, or the
/// last have been unanswered for `stuck_after` (`TimedOut`); none while they are
/// unanswered.
///
/// Every new segment re-arms the tail-loss probe to two RTTs from now: segments written
/// each tick into a dead path push the probe back a tick at a time (up to the RTO), so
/// where two RTTs are close to a tick (100 ms apart) the first retransmission came a
/// tick late. A path that has not answered the last has nothing to learn from another;
/// its probe fires on time.
async fn beat(
    stream: &mut TcpStream,
    tick: Duration,
    stuck_after: Duration,
    segments: usize,
) -> std::io::Error {
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut unanswered_since = None;
    loop {
        ticker.tick().await;
        match unanswered_bytes(stream) {
            Ok(0) => unanswered_since = None,
            Ok(_) => {
                let since = *unanswered_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= stuck_after {
                    return std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("heartbeats unanswered for {stuck_after:?}"),
                    );
                }
                continue;
            }
            Err(e) => return e,
        }
        for i in 0..segments {
            if i > 0 {
                tokio::time::sleep(GAP).await;
            }
            if let Err(e) = stream.write_all(&[0]).await {
                return e;
            }
        }
    }
}

/// Linux 6.15's per-socket `TCP_RTO_MIN_US` and `TCP_DELACK_MAX_US` (not yet in libc).
const TCP_RTO_MIN_US: libc::c_int = 45;
const TCP_DELACK_MAX_US: libc::c_int = 46;
/// A heartbeat's retransmission timeout: its smoothed RTT plus the larger of four
/// deviations and this. 20 ms instead of the 200 ms default: the peer acknowledges
/// heartbeats within `DELACK_MAX_US` of their arrival whatever its load, so an ACK 20 ms
/// later than the RTT foretold is a dead path, not a slow peer. A peer on an older
/// agent or kernel may delay its ACK by up to 40 ms when its agent is slow to read:
/// such a timeout is spurious, hardens a stall until the ACK comes, and, counted
/// apart, is never loss; a verdict still needs a second observer and the confirm.
const RTO_MIN_US: libc::c_int = 20_000;
/// The longest the heartbeat listener's kernel delays an ACK: 8 ms (two jiffies at
/// 250 Hz, the least it takes) instead of up to 40 ms or more while a starved agent has
/// not read what came. The answer to a heartbeat depends on the peer's kernel, not on
/// its agent's share of the CPU.
const DELACK_MAX_US: libc::c_int = 8_000;

/// A heartbeat sender's connection: each segment leaves at once, and times out soon.
/// False if the kernel cannot shorten the timeout.
fn tune_sender(stream: &TcpStream) -> bool {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::warn!(error = %e, "heartbeats: TCP_NODELAY");
    }
    set_tcp_option(stream, TCP_RTO_MIN_US, RTO_MIN_US, "TCP_RTO_MIN_US")
}

/// A heartbeat listener's connection: its ACKs wait for no one.
fn tune_receiver(stream: &TcpStream) {
    set_tcp_option(
        stream,
        TCP_DELACK_MAX_US,
        DELACK_MAX_US,
        "TCP_DELACK_MAX_US",
    );
}

/// Sets an integer TCP option, false if it could not; a kernel without it (before
/// 6.15) keeps its defaults, and heartbeats still work, only slower to show a dead path.
fn set_tcp_option(stream: &TcpStream, option: libc::c_int, value: libc::c_int, name: &str) -> bool {
    use std::os::fd::AsRawFd as _;
    // SAFETY: the fd is the stream's own and open; the option takes one int.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            option,
            (&raw const value).cast(),
            libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4),
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        tracing::debug!(option = name, error = %e, "heartbeats: TCP option not set");
    }
    rc == 0
}

/// Bytes written to `stream` and not yet acknowledged by the peer (`SIOCOUTQ`).
fn unanswered_bytes(stream: &TcpStream) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd as _;
    let mut queued: libc::c_int = 0;
    // SAFETY: the fd is the stream's own, open for as long as `stream` is borrowed;
    // SIOCOUTQ (TIOCOUTQ) writes one int.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &raw mut queued) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(usize::try_from(queued).unwrap_or(0))
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

    /// A follower's heartbeats reach the listener every tick, and the sender connects
    /// again after the listener comes back.
    #[tokio::test]
    async fn heartbeats_arrive_and_reconnect() {
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

    fn tcp_option(stream: &TcpStream, option: libc::c_int) -> std::io::Result<libc::c_int> {
        use std::os::fd::AsRawFd as _;
        let mut value: libc::c_int = 0;
        let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap();
        // SAFETY: the fd is open; the kernel writes at most `len` bytes into `value`.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                option,
                (&raw mut value).cast(),
                &raw mut len,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(value)
    }

    /// The sender's connection times out 20 ms past its RTT, the receiver's ACKs wait
    /// at most 8 ms (both exact multiples of a jiffy at 250 and 1000 Hz).
    #[tokio::test]
    async fn heartbeat_connections_time_out_soon_and_ack_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sender = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (receiver, _) = listener.accept().await.unwrap();
        match tcp_option(&sender, TCP_RTO_MIN_US) {
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
                eprintln!("skipped: this kernel (before Linux 6.15) has no TCP_RTO_MIN_US");
                return;
            }
            other => assert_ne!(other.unwrap(), RTO_MIN_US, "not the default already"),
        }
        assert!(tune_sender(&sender), "the timeout is set");
        tune_receiver(&receiver);
        assert_eq!(tcp_option(&sender, TCP_RTO_MIN_US).unwrap(), RTO_MIN_US);
        assert!(sender.nodelay().unwrap());
        assert_eq!(
            tcp_option(&receiver, TCP_DELACK_MAX_US).unwrap(),
            DELACK_MAX_US
        );
    }

    const HELD: usize = 12 << 10;

    /// A connection with `HELD` bytes written, some of them held behind a full
    /// receive window (the peer does not read): unanswered, as on a dead path, without
    /// a namespace. Returns the sender's end and the peer's.
    async fn held_back() -> (TcpStream, TcpStream) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let mut stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (peer, _) = listener.accept().await.unwrap();
        timeout(Duration::from_secs(5), stream.write_all(&[7; HELD]))
            .await
            .expect("12 KiB fit the send buffer")
            .unwrap();
        (stream, peer)
    }

    /// Bytes the peer has not acknowledged hold the next heartbeats back. Here they
    /// sit behind a full receive window (the peer does not read), which holds them as
    /// a dead path would, without a namespace; then the peer reads everything.
    #[tokio::test]
    async fn nothing_is_written_while_bytes_are_unanswered() {
        let (mut stream, mut peer) = held_back().await;
        assert!(
            unanswered_bytes(&stream).unwrap() > 0,
            "the full window holds bytes back"
        );
        let beats = timeout(
            Duration::from_millis(300),
            beat(
                &mut stream,
                Duration::from_millis(20),
                Duration::from_secs(60),
                2,
            ),
        )
        .await;
        assert!(
            beats.is_err(),
            "beat ends only on a failed write: {beats:?}"
        );
        drop(stream);
        let mut got = Vec::new();
        timeout(Duration::from_secs(5), peer.read_to_end(&mut got))
            .await
            .expect("the peer reads to the end")
            .unwrap();
        assert_eq!(
            got.len(),
            HELD,
            "15 ticks with bytes unanswered: not one heartbeat written"
        );
    }

    /// Bytes unanswered for `stuck_after` end the connection (the sender then
    /// connects again at once), having written nothing more.
    #[tokio::test]
    async fn a_connection_unanswered_too_long_is_given_up() {
        let (mut stream, mut peer) = held_back().await;
        let e = timeout(
            Duration::from_secs(10),
            beat(
                &mut stream,
                Duration::from_millis(20),
                Duration::from_millis(200),
                2,
            ),
        )
        .await
        .expect("beat gives the connection up");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        drop(stream);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), HELD, "nothing written while it waited");
    }

    /// A heartbeat is one segment a tick, or two where the timeout could not be
    /// shortened. Time is paused: six ticks are exactly six ticks.
    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_is_one_segment_or_a_pair() {
        for segments in [1, 2] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut stream = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (mut peer, _) = listener.accept().await.unwrap();
            let tick = Duration::from_millis(100);
            let beats = timeout(
                tick * 5 + tick / 2,
                beat(&mut stream, tick, Duration::from_secs(60), segments),
            )
            .await;
            assert!(beats.is_err(), "beat runs until stopped: {beats:?}");
            drop(stream);
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            assert_eq!(
                got.len(),
                6 * segments,
                "six ticks of {segments} segment(s)"
            );
        }
    }
}
