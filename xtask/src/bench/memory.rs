//! `cargo xtask bench memory`: does the agent's memory stay bounded while its host
//! talks to a million distinct remote addresses? The claim under test: 1,000,000
//! distinct remote addresses over 10 minutes keep the agent's RSS under 64 MiB.
//!
//! The bench's namespace pair ([`Pair`]) with real TCP and nothing else on it: the
//! client `flb-<pid>-a` (10.250.0.1) and the server `flb-<pid>-b` (10.250.0.2). The
//! server namespace answers on every address of 10.128.0.0/9 (AnyIP: a `local` route
//! for the whole prefix on `lo`, one listener on 0.0.0.0:80); the client routes the
//! prefix over the veth. The real agent (`faultline run`, release) runs in the client
//! namespace with no topology, so every remote is a host outside the topology: the
//! case `detector.max_unlisted_hosts` and `detector.forget_after` bound. Everything
//! else is the default, `probe.max_links` included.
//!
//! Churn, from one thread in the client namespace with at most [`IN_FLIGHT`]
//! connections open: connection `i` goes to 10.128.0.1 + `i` at `i` × (duration /
//! addresses), sends a request, reads the reply, and sees the server close first, so
//! TIME_WAIT lands on the server side and the client's links end normally (no resets,
//! no ephemeral port exhaustion). When the machine cannot keep the pace, the churn
//! falls behind and stops at the deadline; the report says how far it got.
//!
//! Measured: the agent's VmRSS every second, its `/metrics` (tracked links, unlisted
//! hosts, links in the latest tick) every 10 s. Prints a table, writes
//! `target/bench/memory.json`, and fails when the RSS reached the limit. The
//! namespaces, the server, the churn and the agent are removed by guards even on
//! error, panic or Ctrl-C.
use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::{JoinHandle, sleep},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use super::{
    agent::Agent,
    check_interrupted, install_signal_handlers,
    lab::{self, ADDR_A, ADDR_B, Pair},
    relative,
};
use crate::{build, is_root, lab::enter_namespace, setup, target_dir};

#[derive(clap::Args)]
pub(crate) struct Options {
    /// How long the churn lasts, in minutes.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=60))]
    minutes: u32,
    /// Distinct remote addresses to connect to, spread evenly over the minutes.
    #[arg(long, default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u32).range(1000..=i64::from(MAX_ADDRESSES)))]
    addresses: u32,
    /// Sets the agent's `detector.max_unlisted_hosts` (default: the agent's own,
    /// 4096), to see what the cap costs in memory.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(16..=1 << 22))]
    max_unlisted_hosts: Option<u32>,
}

/// The limit the claim names.
const RSS_LIMIT_KIB: u64 = 64 * 1024;
/// Connections open at once: enough to keep the pace over a veth, few enough that the
/// generator is not what the machine spends its time on.
const IN_FLIGHT: u32 = 64;
/// The prefix the server namespace answers on, and the first address of the churn.
const ANYIP: &str = "10.128.0.0/9";
const FIRST: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 1);
/// Addresses the churn may use from [`FIRST`] on: all of the /9 but its first address
/// and the last few, one of which is [`CHECK_ADDR`].
const MAX_ADDRESSES: u32 = (1 << 23) - 16;
/// Tried once before the agent starts, outside the churn's range, so a broken route
/// fails the bench at once and not as a million timeouts.
const CHECK_ADDR: Ipv4Addr = Ipv4Addr::new(10, 255, 255, 254);
const PORT: u16 = 80;
const REQUEST: &[u8] = b"ping\n";
const REPLY: &[u8] = b"pong\n";
/// One connection (connect, request, reply, close) must finish within this.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Where the agent serves `/metrics`, inside the client namespace. Loopback, so the
/// scrapes are not links of the agent's local address.
const METRICS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7432);
const GRPC: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7431);
/// How far past the planned duration a churn that fell behind may go on.
const PACE_SLACK: Duration = Duration::from_secs(1);
const SCRAPE_EVERY: Duration = Duration::from_secs(10);
/// The measuring loop waits at most this long past the planned duration for the churn
/// to end (it stops itself at the deadline, and its last connections time out).
const GRACE: Duration = Duration::from_secs(30);

pub(super) fn run(opts: &Options) -> Result<()> {
    if !is_root() {
        bail!(
            "the memory benchmark creates network namespaces and loads eBPF programs; run as root"
        );
    }
    setup::ensure()?;
    let bin = build::faultline(true)?;
    let out_dir = target_dir().join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let log = out_dir.join("memory-agent.log");
    std::fs::write(&log, "").with_context(|| format!("create {}", log.display()))?;
    install_signal_handlers();
    lab::remove_stale();

    // Declared in this order so they drop in reverse: agent, server, namespaces.
    let pair = Pair::new()?;
    route_anyip(&pair)?;
    let server = Server::start(&pair.ns_b)?;
    exchange_in(&pair.ns_a, CHECK_ADDR).with_context(|| {
        format!(
            "a test connection from {} to {CHECK_ADDR}:{PORT} (the AnyIP server)",
            pair.ns_a
        )
    })?;
    let config = write_config(&out_dir, opts.max_unlisted_hosts)?;
    println!(
        "bench memory: {} distinct addresses over {} min ({:.0}/s), agent in {} ({}), \
         server in {} answering on {ANYIP}; agent log in {}",
        thousands(u64::from(opts.addresses)),
        opts.minutes,
        target_rate(opts),
        pair.ns_a,
        ADDR_A,
        pair.ns_b,
        relative(&log)
    );
    let mut agent = Agent::start_in(&bin, &log, &config, &pair.ns_a)?;
    let report = measure(opts, &pair.ns_a, &mut agent)?;
    agent.stop()?;
    let accepted = server.accepted();
    drop(server);
    drop(pair);

    print!("{}", report.table(accepted));
    let path = out_dir.join("memory.json");
    let text = serde_json::to_string_pretty(&report.json(&config))?;
    std::fs::write(&path, text + "\n").with_context(|| format!("write {}", path.display()))?;
    println!("wrote {}", relative(&path));
    if !report.pass() {
        bail!(
            "the agent's RSS reached {:.1} MiB, not under {} MiB",
            mib(report.rss_max.1.total),
            RSS_LIMIT_KIB / 1024
        );
    }
    Ok(())
}

/// The server namespace owns all of [`ANYIP`] (a `local` route: every address in it
/// is this host's, no address needs adding); the client sends the prefix over the veth.
fn route_anyip(pair: &Pair) -> Result<()> {
    lab::ip(&[
        "-n", &pair.ns_b, "route", "add", "local", ANYIP, "dev", "lo",
    ])
    .with_context(|| format!("make {} answer on {ANYIP}", pair.ns_b))?;
    lab::ip(&["-n", &pair.ns_a, "route", "add", ANYIP, "via", host(ADDR_B)])
        .with_context(|| format!("route {ANYIP} from {} to the server", pair.ns_a))
}

/// `10.250.0.1/24` → `10.250.0.1`.
fn host(cidr: &str) -> &str {
    cidr.split_once('/').map_or(cidr, |(addr, _)| addr)
}

/// The agent's config: its local address, loopback listeners, no topology (so every
/// remote is an unlisted host), and every limit at its default unless
/// `--max-unlisted-hosts` sets that one.
fn write_config(dir: &Path, max_unlisted_hosts: Option<u32>) -> Result<PathBuf> {
    let mut text = format!(
        "# Written by `cargo xtask bench memory`. No topology: every remote address is a\n\
         # host outside it. probe.max_links and detector.forget_after are the defaults\n\
         # (16384, 60s); so is detector.max_unlisted_hosts (4096) unless set below.\n\
         [agent]\nname = \"memory-bench\"\nlocal_addresses = [\"{local}\"]\n\n\
         [listen]\ngrpc = \"{GRPC}\"\nmetrics = \"{METRICS}\"\n",
        local = host(ADDR_A),
    );
    if let Some(n) = max_unlisted_hosts {
        let _ = write!(text, "\n[detector]\nmax_unlisted_hosts = {n}\n");
    }
    let path = dir.join("memory-agent.toml");
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// Requests and replies on every address of [`ANYIP`]: one listener on 0.0.0.0:80
/// in the server namespace, on a thread of this process. Drop stops it.
struct Server {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &str) -> Result<Self> {
        let mut server = Self {
            stop: Arc::default(),
            accepted: Arc::default(),
            thread: None,
        };
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (ns_owned, stop, accepted) =
            (ns.to_owned(), server.stop.clone(), server.accepted.clone());
        server.thread = Some(std::thread::spawn(move || {
            let listener = enter_namespace(&ns_owned)
                .with_context(|| format!("enter {ns_owned}"))
                .and_then(|()| runtime())
                .and_then(|rt| {
                    let l = rt.block_on(TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)));
                    Ok((rt, l.with_context(|| format!("listen on 0.0.0.0:{PORT}"))?))
                });
            match listener {
                Ok((rt, listener)) => {
                    let _ = ready_tx.send(Ok(()));
                    rt.block_on(serve(&listener, &stop, &accepted));
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        }));
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("the server thread neither listened nor failed within 5 s")?
            .with_context(|| format!("start the AnyIP server in {ns}"))?;
        Ok(server)
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A current-thread runtime: its sockets are made on the calling thread, and so in
/// the namespace that thread entered.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("build a tokio runtime")
}

/// Accepts until `stop`; each connection is answered on a task of its own.
async fn serve(listener: &TcpListener, stop: &AtomicBool, accepted: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        // Wake up now and then to see `stop`.
        match tokio::time::timeout(Duration::from_millis(100), listener.accept()).await {
            Ok(Ok((conn, _))) => {
                accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(answer(conn));
            }
            // Out of file descriptors, say: back off rather than spin.
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(_) => {}
        }
    }
}

/// Reads the request, replies and closes first: the FIN comes from the server, so
/// TIME_WAIT is the server's and the client socket closes cleanly.
async fn answer(mut conn: TcpStream) {
    let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let mut buf = [0u8; 16];
        let mut len = 0;
        // Bounded: each read adds a byte or more, up to the buffer.
        while len < buf.len() && !buf[..len].contains(&b'\n') {
            match conn.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => len += n,
            }
        }
        let _ = conn.write_all(REPLY).await;
    })
    .await;
}

/// One connection: connect, request, read the reply up to the server's close.
async fn exchange(to: Ipv4Addr) -> Result<()> {
    tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let mut s = TcpStream::connect((to, PORT)).await.context("connect")?;
        s.write_all(REQUEST).await.context("send the request")?;
        let mut buf = [0u8; 16];
        let mut len = 0;
        // Bounded: each read adds a byte or more, up to the buffer.
        loop {
            let n = s.read(&mut buf[len..]).await.context("read the reply")?;
            if n == 0 {
                break;
            }
            len += n;
            if len == buf.len() {
                bail!("the reply is longer than {} bytes", buf.len());
            }
        }
        if &buf[..len] != REPLY {
            bail!(
                "unexpected reply {:?}",
                String::from_utf8_lossy(&buf[..len])
            );
        }
        Ok(())
    })
    .await
    .with_context(|| format!("no reply within {} s", EXCHANGE_TIMEOUT.as_secs()))?
    .with_context(|| format!("{to}:{PORT}"))
}

/// [`exchange`] once, from a short-lived thread inside `ns`.
fn exchange_in(ns: &str, to: Ipv4Addr) -> Result<()> {
    in_namespace(ns, move || runtime()?.block_on(exchange(to)))
}

/// Runs `f` on a short-lived thread inside `ns` (its sockets are made there).
fn in_namespace<R: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<R> + Send + 'static,
) -> Result<R> {
    let owned = ns.to_owned();
    std::thread::spawn(move || {
        enter_namespace(&owned).with_context(|| format!("enter {owned}"))?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a thread in {ns} panicked"))?
}

/// What the churn has done so far, shared with the measuring loop.
#[derive(Default)]
struct Counters {
    started: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Counters {
    fn record(&self, result: Result<()>) {
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
    }
}

/// What the churn did, once it ended.
struct Churn {
    started: u64,
    ok: u64,
    failed: u64,
    first_error: Option<String>,
    /// From the first connection to the moment the last one was started.
    paced_for: Duration,
}

impl Churn {
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    fn rate(&self) -> f64 {
        self.started as f64 / self.paced_for.as_secs_f64().max(1e-3)
    }
}

/// The churn, on a thread of its own inside the client namespace. Drop stops it.
struct Generator {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<Result<Duration>>>,
}

impl Generator {
    fn start(ns: &str, addresses: u32, duration: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (ns, s, c) = (ns.to_owned(), stop.clone(), counters.clone());
        let thread = std::thread::spawn(move || {
            enter_namespace(&ns).with_context(|| format!("enter {ns}"))?;
            runtime()?.block_on(churn(addresses, duration, &s, &c))
        });
        Self {
            stop,
            counters,
            thread: Some(thread),
        }
    }

    fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the churn (if still running) and waits for it.
    fn finish(mut self) -> Result<Churn> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().context("the churn was already joined")?;
        let paced_for = thread
            .join()
            .map_err(|_| anyhow::anyhow!("the churn thread panicked"))?
            .context("the churn")?;
        let c = &self.counters;
        Ok(Churn {
            started: c.started.load(Ordering::Relaxed),
            ok: c.ok.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            first_error: c.first_error.lock().ok().and_then(|e| e.clone()),
            paced_for,
        })
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connection `i` to `FIRST + i` at `i × duration / addresses`, at most [`IN_FLIGHT`]
/// open; ends at `stop`, after the last address, or at the deadline, whichever comes
/// first. Returns how long it paced connections.
async fn churn(
    addresses: u32,
    duration: Duration,
    stop: &AtomicBool,
    counters: &Arc<Counters>,
) -> Result<Duration> {
    let interval = duration / addresses;
    let slots = Arc::new(Semaphore::new(IN_FLIGHT as usize));
    let start = tokio::time::Instant::now();
    // Every connection is due before `duration`; the slack keeps the timer's
    // millisecond rounding from costing the last one.
    let deadline = start + duration + PACE_SLACK;
    for i in 0..addresses {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep_until(start + interval * i).await;
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .context("slots closed")?;
        // Behind the pace: the deadline still holds.
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        counters.started.fetch_add(1, Ordering::Relaxed);
        let to = Ipv4Addr::from(u32::from(FIRST) + i);
        let counters = counters.clone();
        tokio::spawn(async move {
            counters.record(exchange(to).await);
            drop(permit);
        });
    }
    let paced_for = start.elapsed();
    // The last connections: each ends within EXCHANGE_TIMEOUT.
    let _ = tokio::time::timeout(
        EXCHANGE_TIMEOUT + Duration::from_secs(1),
        slots.acquire_many(IN_FLIGHT),
    )
    .await;
    Ok(paced_for)
}

/// The agent's own view of what it holds, from `/metrics`.
#[derive(Clone, Copy)]
struct Scrape {
    /// Seconds since the churn started.
    at_s: f64,
    links: u64,
    unlisted_hosts: u64,
    links_in_tick: u64,
}

/// GETs the agent's `/metrics` from inside `ns`, bounded in time and size.
fn scrape(ns: &str, at_s: f64) -> Result<Scrape> {
    let body = in_namespace(ns, || {
        let timeout = Duration::from_secs(3);
        let addr = SocketAddr::V4(METRICS);
        let mut conn = std::net::TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connect to {METRICS}"))?;
        conn.set_read_timeout(Some(timeout))?;
        conn.set_write_timeout(Some(timeout))?;
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .context("send GET /metrics")?;
        let mut body = String::new();
        conn.take(4 << 20)
            .read_to_string(&mut body)
            .with_context(|| format!("read /metrics (no complete answer within {timeout:?})"))?;
        Ok(body)
    })
    .with_context(|| format!("scrape the agent's /metrics at {METRICS}"))?;
    Ok(Scrape {
        at_s,
        links: gauge(&body, "faultline_detector_links")?,
        unlisted_hosts: gauge(&body, "faultline_detector_unlisted_hosts")?,
        links_in_tick: gauge(&body, "faultline_links_in_tick")?,
    })
}

/// The value of the unlabelled metric `name` in a Prometheus text exposition.
fn gauge(body: &str, name: &str) -> Result<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .with_context(|| format!("/metrics has no {name}"))?
        .trim()
        .parse()
        .with_context(|| format!("/metrics: {name} is not a count"))
}

/// A process's resident memory, KiB: all of it (VmRSS, what the claim is about) and
/// its anonymous part (RssAnon: heap and stacks, where the agent's own state lives;
/// the rest is the binary's pages and shared mappings such as the ring buffers).
#[derive(Clone, Copy, Default)]
struct Rss {
    total: u64,
    anon: u64,
}

fn rss(pid: u32) -> Result<Rss> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("{path} has no {name} (has the agent exited?)"))
    };
    Ok(Rss {
        total: field("VmRSS:")?,
        anon: field("RssAnon:")?,
    })
}

/// Runs the churn against the running agent, sampling its RSS every second and its
/// `/metrics` every [`SCRAPE_EVERY`], with a progress line at each scrape.
fn measure(opts: &Options, ns: &str, agent: &mut Agent) -> Result<Report> {
    let duration = Duration::from_secs(u64::from(opts.minutes) * 60);
    let rss_start = rss(agent.pid())?;
    let mut report = Report {
        addresses: opts.addresses,
        minutes: opts.minutes,
        target_rate: target_rate(opts),
        max_unlisted_hosts: opts.max_unlisted_hosts,
        churn: None,
        rss_start,
        rss_max: (0.0, rss_start),
        rss_final: rss_start,
        samples: vec![(0.0, rss_start)],
        scrapes: Vec::new(),
        scrape_errors: 0,
    };
    let generator = Generator::start(ns, opts.addresses, duration);
    let start = Instant::now();
    let mut next_scrape = start + SCRAPE_EVERY;
    let mut next_sample = start;
    // Bounded: the churn stops itself at the deadline; GRACE covers its tail.
    while !generator.finished() && start.elapsed() < duration + GRACE {
        check_interrupted()?;
        agent.check_running()?;
        next_sample += Duration::from_secs(1);
        sleep(next_sample.saturating_duration_since(Instant::now()));
        let at_s = start.elapsed().as_secs_f64();
        report.sample(at_s, rss(agent.pid())?);
        if Instant::now() >= next_scrape {
            next_scrape += SCRAPE_EVERY;
            report.scrape(ns, at_s);
            println!("{}", report.progress(at_s, &generator.counters));
        }
    }
    report.churn = Some(generator.finish()?);
    agent.check_running()?;
    let at_s = start.elapsed().as_secs_f64();
    report.sample(at_s, rss(agent.pid())?);
    report.scrape(ns, at_s);
    Ok(report)
}

fn target_rate(opts: &Options) -> f64 {
    f64::from(opts.addresses) / (f64::from(opts.minutes) * 60.0)
}

/// What one run measured.
struct Report {
    addresses: u32,
    minutes: u32,
    target_rate: f64,
    /// `--max-unlisted-hosts`, if set (else the agent's default).
    max_unlisted_hosts: Option<u32>,
    churn: Option<Churn>,
    rss_start: Rss,
    /// (seconds since the churn started, the largest VmRSS seen)
    rss_max: (f64, Rss),
    rss_final: Rss,
    /// Every second, from the churn's start.
    samples: Vec<(f64, Rss)>,
    scrapes: Vec<Scrape>,
    scrape_errors: u32,
}

impl Report {
    fn sample(&mut self, at_s: f64, rss: Rss) {
        self.samples.push((at_s, rss));
        self.rss_final = rss;
        if rss.total > self.rss_max.1.total {
            self.rss_max = (at_s, rss);
        }
    }

    /// A failed scrape is counted and shown, not fatal: RSS is what is judged.
    fn scrape(&mut self, ns: &str, at_s: f64) {
        match scrape(ns, at_s) {
            Ok(s) => self.scrapes.push(s),
            Err(e) => {
                self.scrape_errors += 1;
                println!("  {at_s:>4.0} s: {e:#}");
            }
        }
    }

    fn pass(&self) -> bool {
        self.rss_max.1.total < RSS_LIMIT_KIB
    }

    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    fn progress(&self, at_s: f64, c: &Counters) -> String {
        let ok = c.ok.load(Ordering::Relaxed);
        let failed = c.failed.load(Ordering::Relaxed);
        let detector = self.scrapes.last().filter(|s| s.at_s == at_s).map_or_else(
            || "detector: no scrape".to_owned(),
            |s| {
                format!(
                    "detector {} links, {} unlisted hosts, {} links in tick",
                    thousands(s.links),
                    thousands(s.unlisted_hosts),
                    thousands(s.links_in_tick)
                )
            },
        );
        format!(
            "  {at_s:>4.0} s: {} connections ({} failed), {} distinct addresses, {:.0}/s, \
             RSS {:.1} MiB (max {:.1}), {detector}",
            thousands(ok + failed),
            thousands(failed),
            thousands(ok),
            (ok + failed) as f64 / at_s.max(1e-3),
            mib(self.rss_final.total),
            mib(self.rss_max.1.total),
        )
    }

    fn max_scrape(&self, f: impl Fn(&Scrape) -> u64) -> u64 {
        self.scrapes.iter().map(f).max().unwrap_or(0)
    }

    fn table(&self, accepted: u64) -> String {
        let mut s = String::new();
        let Some(c) = &self.churn else {
            return s;
        };
        let mut row = |label: &str, value: String| {
            let _ = writeln!(s, "  {label:<20} {value}");
        };
        let reached = if c.started >= u64::from(self.addresses) {
            String::new()
        } else {
            format!(
                " (only {} tried: the churn did not keep the pace)",
                thousands(c.started)
            )
        };
        row(
            "addresses",
            format!(
                "{} of {} distinct addresses answered{reached}; {} failed, {} accepted by the server",
                thousands(c.ok),
                thousands(u64::from(self.addresses)),
                thousands(c.failed),
                thousands(accepted)
            ),
        );
        row(
            "duration",
            format!(
                "{:.1} s of churn (planned {} min)",
                c.paced_for.as_secs_f64(),
                self.minutes
            ),
        );
        row(
            "rate",
            format!(
                "{:.0} connections/s (target {:.0}/s)",
                c.rate(),
                self.target_rate
            ),
        );
        row(
            "agent config",
            self.max_unlisted_hosts.map_or_else(
                || "defaults (max_unlisted_hosts 4096, forget_after 60s)".to_owned(),
                |n| format!("max_unlisted_hosts {n}, otherwise defaults"),
            ),
        );
        let (max_at, max) = self.rss_max;
        for (label, r, at) in [
            ("RSS start", self.rss_start, String::new()),
            ("RSS max", max, format!(" at {max_at:.0} s")),
            ("RSS final", self.rss_final, String::new()),
        ] {
            row(
                label,
                format!(
                    "{:.1} MiB{at} (anonymous {:.1} MiB)",
                    mib(r.total),
                    mib(r.anon)
                ),
            );
        }
        row(
            "detector (max)",
            format!(
                "{} links, {} unlisted hosts, {} links in a tick ({} scrapes, {} failed)",
                thousands(self.max_scrape(|s| s.links)),
                thousands(self.max_scrape(|s| s.unlisted_hosts)),
                thousands(self.max_scrape(|s| s.links_in_tick)),
                self.scrapes.len(),
                self.scrape_errors
            ),
        );
        if let Some(e) = &c.first_error {
            row("first failure", e.clone());
        }
        let verdict = if self.pass() { "PASS" } else { "FAIL" };
        let op = if self.pass() { "<" } else { ">=" };
        row(
            "result",
            format!(
                "{verdict}: max RSS {:.1} MiB {op} {} MiB",
                mib(self.rss_max.1.total),
                RSS_LIMIT_KIB / 1024
            ),
        );
        format!(
            "\nmemory: distinct remote addresses against the agent's RSS (limit {} MiB)\n{s}",
            RSS_LIMIT_KIB / 1024
        )
    }

    fn json(&self, config: &Path) -> serde_json::Value {
        let churn = self.churn.as_ref().map(|c| {
            json!({
                "started": c.started,
                "answered": c.ok,
                "failed": c.failed,
                "first_error": c.first_error,
                "paced_for_s": c.paced_for.as_secs_f64(),
                "rate_per_s": c.rate(),
            })
        });
        json!({
            "claim": "1,000,000 distinct remote addresses over 10 minutes keep the agent's RSS under 64 MiB",
            "addresses_requested": self.addresses,
            "minutes": self.minutes,
            "target_rate_per_s": self.target_rate,
            "in_flight": IN_FLIGHT,
            "max_unlisted_hosts": self.max_unlisted_hosts,
            "agent_config": std::fs::read_to_string(config).unwrap_or_default(),
            "churn": churn,
            "rss_limit_kib": RSS_LIMIT_KIB,
            "rss_start_kib": self.rss_start.total,
            "rss_max_kib": self.rss_max.1.total,
            "rss_max_at_s": self.rss_max.0,
            "rss_final_kib": self.rss_final.total,
            "rss_anon_start_kib": self.rss_start.anon,
            "rss_anon_max_kib": self.rss_max.1.anon,
            "rss_anon_final_kib": self.rss_final.anon,
            "pass": self.pass(),
            "rss": self.samples.iter().map(|&(t, r)| json!({"t_s": t, "kib": r.total, "anon_kib": r.anon})).collect::<Vec<_>>(),
            "metrics": self.scrapes.iter().map(|s| json!({
                "t_s": s.at_s,
                "faultline_detector_links": s.links,
                "faultline_detector_unlisted_hosts": s.unlisted_hosts,
                "faultline_links_in_tick": s.links_in_tick,
            })).collect::<Vec<_>>(),
            "scrape_errors": self.scrape_errors,
        })
    }
}

/// KiB → MiB for display (RSS sizes fit an f64 exactly).
#[expect(clippy::cast_precision_loss, reason = "RSS sizes far below 2^52")]
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// 1234567 → "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn gauge_reads_unlabelled_metrics_only() {
        let body = "# HELP faultline_detector_links x\nfaultline_detector_links 42\n\
                    faultline_detector_links_total 7\n";
        assert_eq!(gauge(body, "faultline_detector_links").unwrap(), 42);
        assert!(gauge(body, "faultline_links_in_tick").is_err());
    }

    #[test]
    fn the_churn_stays_inside_the_prefix_and_off_the_check_address() {
        let last = u32::from(FIRST) + MAX_ADDRESSES - 1;
        assert!(last < u32::from(CHECK_ADDR));
        assert_eq!(u32::from(CHECK_ADDR) >> 23, u32::from(FIRST) >> 23);
    }
}
