//! The service behind the VIP and the client that uses it.
//!
//! Each border's VIP host runs a tiny TCP server (one thread, one connection at a
//! time: a request is a line, the answer its site's name). The client, in the client
//! namespace, opens a new connection for every request, so each request goes wherever
//! the edge's route points at that moment and says which site answered. It starts a
//! request every [`REQUEST_GAP`] from [`CLIENT_THREADS`] threads taking turns, so one
//! that waits out its [`TIMEOUT`] does not delay the others, and logs (start, end,
//! answer) for each ([`ProbeLog`]).
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{JoinHandle, sleep},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::wiring::{VIP, VIP_PORT};
use crate::lab::traffic::{enter, in_namespace};

/// One request starts this often (across the client's threads).
pub(super) const REQUEST_GAP: Duration = Duration::from_millis(10);
/// Threads of the client; each starts a request every `REQUEST_GAP * CLIENT_THREADS`
/// (200 ms), twice the [`TIMEOUT`], so a request that times out never makes its
/// thread skip a turn and the rate stays the same through a fault.
const CLIENT_THREADS: u32 = 20;
/// A request (connect, send, answer) that takes longer failed.
pub(super) const TIMEOUT: Duration = Duration::from_millis(100);
/// The server gives a connection this long to send its request.
const SERVER_READ_TIMEOUT: Duration = Duration::from_millis(50);
/// How long the server sleeps when nobody is waiting to be accepted.
const ACCEPT_POLL: Duration = Duration::from_millis(1);
/// The client and servers stop by themselves after this long, whatever the lab does;
/// the client also after this many requests per thread (4 h at its rate).
const MAX_DURATION: Duration = Duration::from_secs(4 * 3600);
const MAX_REQUESTS_PER_THREAD: u64 = 150_000;
const MAX_ANSWER: usize = 64;

/// The outcome of one request.
#[derive(Clone, Copy, Debug)]
pub(super) struct Probe {
    pub(super) begin: Instant,
    pub(super) end: Instant,
    /// The border (index) that answered; None when the request failed.
    pub(super) answer: Option<usize>,
}

/// Every request of the lab, in the order they ended.
#[derive(Default)]
pub(super) struct ProbeLog {
    probes: Mutex<Vec<Probe>>,
}

impl ProbeLog {
    fn finish(&self, begin: Instant, answer: Option<usize>) {
        let mut all = self.probes.lock().expect("no panics under the lock");
        all.push(Probe {
            begin,
            end: Instant::now(),
            answer,
        });
    }

    /// The requests that ended in `[from, to)`.
    pub(super) fn between(&self, from: Instant, to: Instant) -> Vec<Probe> {
        let all = self.probes.lock().expect("no panics under the lock");
        let start = all.partition_point(|p| p.end < from);
        all[start..]
            .iter()
            .take_while(|p| p.end < to)
            .copied()
            .collect()
    }
}

/// The VIP servers and the client; stopped and joined on drop.
pub(super) struct VipTraffic {
    pub(super) log: Arc<ProbeLog>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl VipTraffic {
    /// `servers`: (namespace of the VIP host, site name) per border, in border order.
    pub(super) fn start(servers: &[(String, String)], client_ns: &str) -> Result<Self> {
        let mut t = Self {
            log: Arc::default(),
            stop: Arc::default(),
            threads: Vec::new(),
        };
        let vip = SocketAddr::new(VIP.into(), VIP_PORT);
        for (ns, site) in servers {
            let listener = in_namespace(ns, move || TcpListener::bind(vip))?
                .with_context(|| format!("listen on {vip} in {ns}"))?;
            let (stop, answer) = (t.stop.clone(), format!("{site}\n"));
            t.threads
                .push(std::thread::spawn(move || serve(&listener, &answer, &stop)));
        }
        let sites: Arc<Vec<String>> = Arc::new(servers.iter().map(|(_, s)| s.clone()).collect());
        let started = Instant::now();
        for k in 0..CLIENT_THREADS {
            let (ns, stop, log, sites) = (
                client_ns.to_owned(),
                t.stop.clone(),
                t.log.clone(),
                sites.clone(),
            );
            let first = started + REQUEST_GAP * k;
            t.threads.push(std::thread::spawn(move || {
                if enter(&ns).is_ok() {
                    request_loop(vip, first, &sites, &log, &stop);
                }
            }));
        }
        Ok(t)
    }
}

impl Drop for VipTraffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One client thread: a request at `first`, then every `REQUEST_GAP * CLIENT_THREADS`
/// (slots missed while a request timed out are skipped, not made up).
fn request_loop(
    vip: SocketAddr,
    first: Instant,
    sites: &[String],
    log: &ProbeLog,
    stop: &AtomicBool,
) {
    let period = REQUEST_GAP * CLIENT_THREADS;
    let mut next = first;
    for _ in 0..MAX_REQUESTS_PER_THREAD {
        if stop.load(Ordering::Relaxed) || first.elapsed() > MAX_DURATION {
            return;
        }
        let now = Instant::now();
        if next > now {
            sleep(next - now);
        }
        let begin = Instant::now();
        let answer = request(vip)
            .ok()
            .and_then(|text| sites.iter().position(|s| *s == text));
        log.finish(begin, answer);
        while next <= Instant::now() {
            next += period;
        }
    }
}

/// One request on a new connection: the answering site's name.
fn request(vip: SocketAddr) -> std::io::Result<String> {
    let begin = Instant::now();
    let mut s = TcpStream::connect_timeout(&vip, TIMEOUT)?;
    s.set_nodelay(true)?;
    let left = || {
        TIMEOUT
            .saturating_sub(begin.elapsed())
            .max(Duration::from_millis(1))
    };
    s.set_write_timeout(Some(left()))?;
    s.write_all(b"site?\n")?;
    let mut buf = [0u8; MAX_ANSWER];
    let mut got = 0;
    // Until the server closes (it answers one line, then closes), or time is up.
    while got < buf.len() {
        s.set_read_timeout(Some(left()))?;
        match s.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
        if begin.elapsed() >= TIMEOUT {
            return Err(ErrorKind::TimedOut.into());
        }
    }
    Ok(String::from_utf8_lossy(&buf[..got]).trim().to_owned())
}

/// Answers every connection with `answer`, one at a time, until stopped.
fn serve(listener: &TcpListener, answer: &str, stop: &AtomicBool) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_DURATION {
        match listener.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(SERVER_READ_TIMEOUT));
                let _ = s.set_write_timeout(Some(SERVER_READ_TIMEOUT));
                let mut req = [0u8; MAX_ANSWER];
                if s.read(&mut req).is_ok_and(|n| n > 0) {
                    let _ = s.write_all(answer.as_bytes());
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => sleep(ACCEPT_POLL),
            Err(_) => sleep(ACCEPT_POLL),
        }
    }
}
