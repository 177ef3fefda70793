//! Application traffic for every host, from threads of this one process.
//!
//! Each host runs an echo server and a sink (one listener each, on `[::]`, in its own
//! namespace) and keeps request/response flows to [`FLOWS_PER_HOST`] other hosts (one in
//! its rack, one in another rack of its site, the others in other sites, chosen by
//! rotation so every host is called from several racks). A flow sends 64-byte requests
//! every [`REQUEST_GAP`], goes idle now and then, and gives up on a request after
//! [`TIMEOUT`], reconnecting. A few bulk flows stream at a bounded rate. Every request's
//! outcome is logged with its time ([`RequestLog`]), so a scenario can tell when users
//! first and last failed. A socket belongs to the namespace of the thread that creates
//! it, so each thread enters its host's namespace first and stays there.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{JoinHandle, sleep},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::topology::Topology;

const ECHO_PORT: u16 = 7500;
const SINK_PORT: u16 = 7501;
/// Request/response flows each host starts.
const FLOWS_PER_HOST: usize = 4;
/// Bulk flows in the whole lab, and the rate of each.
const BULK_FLOWS: usize = 3;
const BULK_BYTES_PER_SEC: u64 = 256 * 1024;
const MESSAGE: usize = 64;
/// A request (or connect) that takes longer than this failed.
pub(super) const TIMEOUT: Duration = Duration::from_millis(500);
const REQUEST_GAP: Duration = Duration::from_millis(100);
/// After this many requests a flow pauses for [`IDLE_GAP`]: links go idle, as real ones do.
const BURST: u32 = 40;
const IDLE_GAP: Duration = Duration::from_secs(1);
/// Connections one server keeps at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 64;
/// A server connection silent this long is closed (its client is gone).
const SERVER_IDLE: Duration = Duration::from_secs(10);
/// Registered traffic threads kept before the ended ones are pruned.
const MAX_REGISTERED_THREADS: usize = 4096;
/// Traffic stops by itself after this long, whatever the lab does.
const MAX_DURATION: Duration = Duration::from_secs(4 * 3600);

/// One request/response flow.
pub(super) struct Flow {
    pub(super) from: usize,
    pub(super) to: usize,
    pub(super) remote: IpAddr,
}

/// The outcome of one request.
#[derive(Clone, Copy)]
pub(super) struct Request {
    pub(super) at: Instant,
    pub(super) flow: u32,
    /// Round trip of a successful request; None when it failed.
    pub(super) rtt: Option<Duration>,
}

/// Every request of the run, in the order they finished.
#[derive(Default)]
pub(super) struct RequestLog {
    requests: Mutex<Vec<Request>>,
}

impl RequestLog {
    /// Logs a request that began at `begin` and ends now; the time is taken under the
    /// lock, so the log stays sorted by time.
    fn finish(&self, flow: u32, begin: Instant, ok: bool) {
        let mut all = self.requests.lock().expect("no panics under the lock");
        let at = Instant::now();
        all.push(Request {
            at,
            flow,
            rtt: ok.then(|| at - begin),
        });
    }

    /// The requests that finished in `[from, to)`.
    pub(super) fn between(&self, from: Instant, to: Instant) -> Vec<Request> {
        let all = self.requests.lock().expect("no panics under the lock");
        let start = all.partition_point(|r| r.at < from);
        all[start..]
            .iter()
            .take_while(|r| r.at < to)
            .copied()
            .collect()
    }
}

/// Which threads work for which host: (host index, thread id), registered by each
/// thread as it starts, so `cpu-contention` can starve a host's traffic with its agent.
#[derive(Default)]
pub(super) struct HostThreads {
    tids: Mutex<Vec<(usize, i32)>>,
}

impl HostThreads {
    fn register(&self, host: usize) {
        let tid = super::cgroup::gettid();
        let mut tids = self.tids.lock().expect("no panics under the lock");
        // Connection threads come and go: forget the ended ones now and then.
        if tids.len() >= MAX_REGISTERED_THREADS {
            tids.retain(|(_, t)| std::path::Path::new(&format!("/proc/self/task/{t}")).exists());
        }
        tids.push((host, tid));
    }

    /// The threads registered for these hosts (some may have ended since).
    pub(super) fn of(&self, hosts: &[usize]) -> Vec<i32> {
        self.tids
            .lock()
            .expect("no panics under the lock")
            .iter()
            .filter(|(h, _)| hosts.contains(h))
            .map(|(_, t)| *t)
            .collect()
    }
}

/// The traffic threads; stopped and joined on drop.
pub(super) struct Traffic {
    pub(super) flows: Arc<Vec<Flow>>,
    pub(super) log: Arc<RequestLog>,
    pub(super) threads_of: Arc<HostThreads>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Traffic {
    pub(super) fn start(t: &Topology, namespaces: &[String]) -> Result<Self> {
        let flows = Arc::new(choose_flows(t));
        let mut traffic = Self {
            flows: flows.clone(),
            log: Arc::default(),
            threads_of: Arc::default(),
            stop: Arc::default(),
            threads: Vec::new(),
        };
        for (host, ns) in namespaces.iter().enumerate() {
            for (port, echo) in [(ECHO_PORT, true), (SINK_PORT, false)] {
                let (ns, stop, reg) =
                    (ns.clone(), traffic.stop.clone(), traffic.threads_of.clone());
                let listener = in_namespace(&ns, move || {
                    TcpListener::bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))
                })?
                .with_context(|| format!("listen on [::]:{port} in {ns}"))?;
                traffic.threads.push(std::thread::spawn(move || {
                    reg.register(host);
                    serve(&listener, echo, &stop, host, &reg);
                }));
            }
        }
        for (i, f) in flows.iter().enumerate() {
            let (ns, stop, log, reg, from) = (
                namespaces[f.from].clone(),
                traffic.stop.clone(),
                traffic.log.clone(),
                traffic.threads_of.clone(),
                f.from,
            );
            let to = SocketAddr::new(f.remote, ECHO_PORT);
            let flow = u32::try_from(i).unwrap_or(u32::MAX);
            // Stagger the flows so they do not all fire together.
            let offset = REQUEST_GAP / 10 * u32::try_from(i % 10).unwrap_or(0);
            traffic.threads.push(std::thread::spawn(move || {
                reg.register(from);
                if enter(&ns).is_ok() {
                    sleep(offset);
                    request_flow(flow, to, &log, &stop);
                }
            }));
        }
        for (from, to) in choose_bulk(t) {
            let (ns, stop, reg) = (
                namespaces[from].clone(),
                traffic.stop.clone(),
                traffic.threads_of.clone(),
            );
            let Some((_, remote)) = t.hosts[to].address_for(&t.hosts[from]) else {
                continue;
            };
            traffic.threads.push(std::thread::spawn(move || {
                reg.register(from);
                if enter(&ns).is_ok() {
                    bulk_flow(SocketAddr::new(remote, SINK_PORT), &stop);
                }
            }));
        }
        Ok(traffic)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Request/response flows: per host, one to the next host of its rack, one to a host of
/// another rack in its site, and the rest to other sites, rotating with the host index.
fn choose_flows(t: &Topology) -> Vec<Flow> {
    let mut flows = Vec::new();
    for (i, h) in t.hosts.iter().enumerate() {
        let mut targets = Vec::new();
        let rack = &t.racks[h.rack].hosts;
        if rack.len() > 1 {
            let me = rack.iter().position(|&x| x == i).unwrap_or(0);
            targets.push(rack[(me + 1) % rack.len()]);
        }
        let same_site: Vec<usize> = (0..t.hosts.len())
            .filter(|&o| t.hosts[o].site == h.site && t.hosts[o].rack != h.rack)
            .collect();
        if !same_site.is_empty() {
            targets.push(same_site[i % same_site.len()]);
        }
        let mut k = 0;
        while targets.len() < FLOWS_PER_HOST && k < t.sites.len() * 2 {
            let site = (h.site + 1 + k % (t.sites.len() - 1)) % t.sites.len();
            let there: Vec<usize> = (0..t.hosts.len())
                .filter(|&o| t.hosts[o].site == site)
                .collect();
            if !there.is_empty() {
                let pick = there[(i + k / (t.sites.len() - 1)) % there.len()];
                if !targets.contains(&pick) {
                    targets.push(pick);
                }
            }
            k += 1;
        }
        for to in targets {
            if let Some((_, remote)) = t.hosts[to].address_for(h) {
                flows.push(Flow {
                    from: i,
                    to,
                    remote,
                });
            }
        }
    }
    flows
}

/// A few bulk flows: host i to a host in the next site, for evenly spread i.
fn choose_bulk(t: &Topology) -> Vec<(usize, usize)> {
    let n = t.hosts.len();
    (0..BULK_FLOWS)
        .map(|k| {
            let from = k * n / BULK_FLOWS;
            let site = (t.hosts[from].site + 1) % t.sites.len();
            let to = (0..n)
                .find(|&o| t.hosts[o].site == site)
                .unwrap_or((from + 1) % n);
            (from, to)
        })
        .collect()
}

fn request_flow(flow: u32, to: SocketAddr, log: &RequestLog, stop: &AtomicBool) {
    let started = Instant::now();
    let mut conn: Option<TcpStream> = None;
    let mut sent = 0u32;
    let request = [0x42u8; MESSAGE];
    let mut reply = [0u8; MESSAGE];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_DURATION {
        let begin = Instant::now();
        let result = (|| -> std::io::Result<()> {
            if conn.is_none() {
                let s = TcpStream::connect_timeout(&to, TIMEOUT)?;
                s.set_nodelay(true)?;
                s.set_write_timeout(Some(TIMEOUT))?;
                conn = Some(s);
            }
            let s = conn.as_mut().expect("connected above");
            s.write_all(&request)?;
            let left = TIMEOUT
                .saturating_sub(begin.elapsed())
                .max(Duration::from_millis(1));
            s.set_read_timeout(Some(left))?;
            s.read_exact(&mut reply)
        })();
        log.finish(flow, begin, result.is_ok());
        if result.is_err() {
            // A timed-out connection may carry a late reply: start afresh.
            conn = None;
        }
        sent += 1;
        let gap = if sent.is_multiple_of(BURST) {
            IDLE_GAP
        } else {
            REQUEST_GAP
        };
        let wait = gap.saturating_sub(begin.elapsed());
        // After a failure, never retry in a tight loop.
        sleep(if conn.is_none() {
            wait.max(Duration::from_millis(100))
        } else {
            wait
        });
    }
}

fn bulk_flow(to: SocketAddr, stop: &AtomicBool) {
    let started = Instant::now();
    let buf = vec![0x5au8; 16 * 1024];
    let mut conn: Option<(TcpStream, Instant, u64)> = None;
    while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_DURATION {
        let Some((s, since, sent)) = conn.as_mut() else {
            match TcpStream::connect_timeout(&to, TIMEOUT) {
                Ok(s) => {
                    let _ = s.set_write_timeout(Some(TIMEOUT));
                    conn = Some((s, Instant::now(), 0));
                }
                Err(_) => sleep(Duration::from_millis(200)),
            }
            continue;
        };
        let allowed =
            u64::try_from(u128::from(BULK_BYTES_PER_SEC) * since.elapsed().as_micros() / 1_000_000)
                .unwrap_or(u64::MAX);
        if *sent > allowed {
            sleep(Duration::from_millis(20));
            continue;
        }
        match s.write(&buf) {
            Ok(n) => *sent += n as u64,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => conn = None,
        }
    }
}

/// Accepts until stopped; each connection echoes (or discards) on its own thread.
fn serve(
    listener: &TcpListener,
    echo: bool,
    stop: &Arc<AtomicBool>,
    host: usize,
    reg: &Arc<HostThreads>,
) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        conns.retain(|c| !c.is_finished());
        match listener.accept() {
            Ok((s, _)) if conns.len() < MAX_CONNECTIONS => {
                let (stop, reg) = (stop.clone(), reg.clone());
                conns.push(std::thread::spawn(move || {
                    reg.register(host);
                    handle(s, echo, &stop);
                }));
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => sleep(Duration::from_millis(20)),
            Err(_) => sleep(Duration::from_millis(20)),
        }
    }
    for c in conns {
        let _ = c.join();
    }
}

fn handle(mut s: TcpStream, echo: bool, stop: &AtomicBool) {
    if s.set_nonblocking(false).is_err()
        || s.set_read_timeout(Some(Duration::from_millis(200)))
            .is_err()
        || s.set_write_timeout(Some(TIMEOUT)).is_err()
    {
        return;
    }
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; if echo { MESSAGE } else { 64 * 1024 }];
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) && last.elapsed() < SERVER_IDLE {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                last = Instant::now();
                if echo && s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// Moves the calling thread into namespace `ns` for good.
pub(crate) fn enter(ns: &str) -> std::io::Result<()> {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: a valid namespace fd; CLONE_NEWNET changes only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a short-lived thread inside `ns` (a socket made there stays there).
pub(super) fn in_namespace<R: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R> {
    let ns = ns.to_owned();
    std::thread::spawn(move || enter(&ns).map(|()| f()))
        .join()
        .map_err(|_| anyhow::anyhow!("thread in a namespace panicked"))?
        .context("enter namespace")
}
