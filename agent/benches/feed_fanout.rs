//! Feed fan-out: how long a verdict change takes to reach 1,000 Watch subscribers, and
//! what delivering it costs in CPU.
//!
//! One process, one tokio runtime (as many workers as cores, as in the agent): the feed
//! served on 127.0.0.1:0, and 1,000 `faultline.v1.Verdicts/Watch` subscribers over 10
//! HTTP/2 connections (100 streams each) with real tonic clients. Once every subscriber
//! has its snapshot, the publisher makes 50 rack verdict changes one at a time, 50 ms
//! apart. Each change's `reason` carries its counter, and the publisher records the
//! `Instant` just before `Feed::publish` per counter; each subscriber records the
//! `Instant` it decoded each change. Delivery latency = received − published, over every
//! (subscriber, change) pair.
//!
//! CPU: getrusage(RUSAGE_SELF) user + system over the publishing phase (first publish
//! until the last subscriber has the last change). The clients live in the same process,
//! so this includes decoding on the client side: it bounds the server's cost from above.
//!
//! Goal: p99 ≤ 20 ms on a 2-core machine.
//!
//! Run: `cargo bench -p faultline --bench feed_fanout [-- --connections N --streams N]`.
//! Prints a table and writes `target/bench/feed_fanout.json`. Without `--bench` (as
//! `cargo test --benches` runs it) a small smoke run checks only that it works, and
//! writes nothing.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use faultline::{
    Feed, FeedLimits,
    detector::{ChildEvidence, Entity, Evidence, State, Verdict},
    topology::{Level, Topology},
};
use faultline_proto::v1::{self as pb, verdicts_client::VerdictsClient, watch_event::Event};
use serde_json::json;
use tokio::{net::TcpListener, sync::mpsc, task::JoinSet};
use tonic::transport::Channel;

/// Racks in the topology (one cabinet); changes go round them.
const RACKS: usize = 10;
/// Hosts per rack, listed as children in each rack verdict's evidence.
const HOSTS: usize = 8;
const GOAL_P99: Duration = Duration::from_millis(20);
/// Bounds every wait: connecting, snapshots, the last delivery.
const WAIT: Duration = Duration::from_secs(60);
const REASON: &str = "bench change ";

#[derive(Clone, Copy)]
struct Shape {
    connections: usize,
    streams: usize,
    changes: usize,
    spacing: Duration,
}

const FULL: Shape = Shape {
    connections: 10,
    streams: 100,
    changes: 50,
    spacing: Duration::from_millis(50),
};
const SMOKE: Shape = Shape {
    connections: 2,
    streams: 10,
    changes: 5,
    spacing: Duration::from_millis(10),
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|a| a == "--bench");
    let shape = match parse_shape(&args, if bench { FULL } else { SMOKE }) {
        Ok(shape) => shape,
        Err(e) => {
            eprintln!("feed_fanout: {e}");
            eprintln!(
                "usage: cargo bench -p faultline --bench feed_fanout [-- --connections N --streams N]"
            );
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let workers = runtime.metrics().num_workers();
    match runtime.block_on(run(shape)) {
        Ok(result) => {
            result.print(shape, workers, !bench);
            if bench {
                let path = target_dir().join("bench/feed_fanout.json");
                if let Err(e) = write_json(&path, &result.json(shape, workers)) {
                    eprintln!("feed_fanout: write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("feed_fanout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--connections N` and `--streams N` (per connection) override the default shape,
/// e.g. `--connections 1000 --streams 1`: one subscriber per connection, like a fleet of
/// load balancers. Other arguments (cargo's `--bench`) are ignored.
fn parse_shape(args: &[String], mut shape: Shape) -> Result<Shape, String> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let field = match arg.as_str() {
            "--connections" => &mut shape.connections,
            "--streams" => &mut shape.streams,
            _ => continue,
        };
        *field = args
            .next()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{arg} needs a positive number"))?;
    }
    Ok(shape)
}

fn topology() -> Topology {
    let mut text =
        String::from("[[site]]\nname = \"dc-a\"\n[[cabinet]]\nname = \"c1\"\nsite = \"dc-a\"\n");
    for r in 1..=RACKS {
        let _ = write!(text, "[[rack]]\nname = \"r{r}\"\ncabinet = \"dc-a/c1\"\n");
    }
    Topology::parse(Path::new("bench.toml"), &text).expect("bench topology")
}

/// A rack verdict the size of a real one: its hosts as evidence, the counter in `reason`.
fn rack_verdict(rack: usize, state: State, reason: String) -> Verdict {
    let path = format!("dc-a/c1/r{rack}");
    let children = (1..=HOSTS)
        .map(|h| ChildEvidence {
            entity: Entity {
                level: Level::Host,
                path: format!("{path}/web-{h}").into(),
            },
            state,
        })
        .collect();
    #[expect(clippy::cast_possible_truncation, reason = "HOSTS is small")]
    let hosts = HOSTS as u32;
    Verdict {
        entity: Entity {
            level: Level::Rack,
            path: path.into(),
        },
        state,
        since: Duration::from_secs(1),
        confidence: 0.9,
        reason,
        cause: None,
        evidence: Evidence {
            peers: Vec::new(),
            children,
            observed_children: hosts,
            failed_children: if state == State::Failed { hosts } else { 0 },
            degraded_children: 0,
            healthy_outside: 40,
            observed_hosts: hosts,
            failed_hosts: if state == State::Failed { hosts } else { 0 },
            degraded_hosts: 0,
        },
        observers: vec!["obs-1".into(), "obs-2".into()],
        local_fault: false,
    }
}

/// What one subscriber saw after its snapshot.
#[derive(Default)]
struct Received {
    /// (change counter, when it was decoded).
    changes: Vec<(usize, Instant)>,
    /// Snapshots after the first: the subscriber fell behind and changes were coalesced.
    resnapshots: usize,
}

async fn subscriber(
    channel: Channel,
    ready: mpsc::Sender<()>,
    last_sequence: u64,
) -> Result<Received, String> {
    let mut client = VerdictsClient::new(channel);
    let request = pb::WatchRequest {
        filter: None,
        resume_after: None,
        incarnation: None,
    };
    let mut stream = client
        .watch(request)
        .await
        .map_err(|e| format!("Watch: {e}"))?
        .into_inner();
    let mut received = Received::default();
    let mut snapshot = true;
    loop {
        let event = stream
            .message()
            .await
            .map_err(|e| format!("stream: {e}"))?
            .ok_or("the stream ended")?;
        let now = Instant::now();
        match event.event {
            Some(Event::Snapshot(s)) => {
                if snapshot {
                    snapshot = false;
                    ready.send(()).await.map_err(|_| "nobody waits")?;
                } else {
                    received.resnapshots += 1;
                }
                if s.sequence >= last_sequence {
                    return Ok(received);
                }
            }
            Some(Event::Change(c)) => {
                let reason = c.verdict.as_ref().map_or("", |v| v.reason.as_str());
                let counter = reason
                    .strip_prefix(REASON)
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| format!("change without a counter: {reason:?}"))?;
                received.changes.push((counter, now));
                if c.sequence >= last_sequence {
                    return Ok(received);
                }
            }
            None => {}
        }
    }
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is valid, and getrusage only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer cannot fail.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut usage) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

struct Outcome {
    subscribers: usize,
    ready_after: Duration,
    /// Every (subscriber, change) delivery latency, sorted.
    latencies: Vec<Duration>,
    /// Per change: when the last subscriber had it, sorted.
    completions: Vec<Duration>,
    /// The same, in publishing order.
    last_per_change: Vec<Duration>,
    missing: usize,
    resnapshots: usize,
    phase_wall: Duration,
    phase_cpu: Duration,
    idle_cpu: Duration,
    idle_wall: Duration,
}

async fn run(shape: Shape) -> Result<Outcome, String> {
    let feed = Feed::new(
        "obs-1".into(),
        Arc::new(topology()),
        SystemTime::now(),
        FeedLimits::default(),
    );
    // Every rack HEALTHY: what each subscriber's snapshot holds.
    let initial: Vec<_> = (1..=RACKS)
        .map(|r| rack_verdict(r, State::Healthy, "initial".into()))
        .collect();
    feed.publish(&initial);
    let last_sequence = (RACKS + shape.changes) as u64;

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let url = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = feed.clone();
    let server = tokio::spawn(async move {
        serving
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
    });

    let subscribers = shape.connections * shape.streams;
    let start = Instant::now();
    let (ready_tx, mut ready_rx) = mpsc::channel(subscribers);
    let mut tasks = JoinSet::new();
    for _ in 0..shape.connections {
        let channel =
            tokio::time::timeout(WAIT, Channel::from_shared(url.clone()).unwrap().connect())
                .await
                .map_err(|_| "connect: timed out")?
                .map_err(|e| format!("connect: {e}"))?;
        for _ in 0..shape.streams {
            tasks.spawn(subscriber(channel.clone(), ready_tx.clone(), last_sequence));
        }
    }
    drop(ready_tx);
    for n in 0..subscribers {
        match tokio::time::timeout(WAIT, ready_rx.recv()).await {
            Ok(Some(())) => {}
            Ok(None) => return Err(format!("only {n} subscribers got a snapshot")),
            Err(_) => {
                return Err(format!(
                    "only {n} subscribers got a snapshot within {WAIT:?}"
                ));
            }
        }
    }
    let ready_after = start.elapsed();

    // Idle baseline: what 1,000 open, quiet streams cost, over a few spacings.
    let idle_start = (Instant::now(), cpu_time());
    tokio::time::sleep(shape.spacing * 4).await;
    let idle_wall = idle_start.0.elapsed();
    let idle_cpu = cpu_time().saturating_sub(idle_start.1);

    // The publish instants, by counter (the publisher's side of the latency).
    let published: Arc<Mutex<Vec<Option<Instant>>>> =
        Arc::new(Mutex::new(vec![None; shape.changes]));
    let phase_start = (Instant::now(), cpu_time());
    let publisher = {
        let published = published.clone();
        let feed = feed.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(shape.spacing);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for i in 0..shape.changes {
                tick.tick().await;
                // Lap 0 fails r1, r2, … in turn, lap 1 heals them, and so on.
                let state = if (i / RACKS).is_multiple_of(2) {
                    State::Failed
                } else {
                    State::Healthy
                };
                let v = rack_verdict(i % RACKS + 1, state, format!("{REASON}{i}"));
                published.lock().unwrap()[i] = Some(Instant::now());
                feed.publish(std::slice::from_ref(&v));
            }
        })
    };
    let mut received = Vec::with_capacity(subscribers);
    let publishing = shape.spacing * u32::try_from(shape.changes).unwrap_or(u32::MAX);
    let deadline = tokio::time::Instant::now() + publishing + WAIT;
    while let Some(joined) = tokio::time::timeout_at(deadline, tasks.join_next())
        .await
        .map_err(|_| format!("{} subscribers still waiting after {WAIT:?}", tasks.len()))?
    {
        received.push(joined.map_err(|e| format!("subscriber: {e}"))??);
    }
    let phase_wall = phase_start.0.elapsed();
    let phase_cpu = cpu_time().saturating_sub(phase_start.1);
    publisher.await.map_err(|e| format!("publisher: {e}"))?;
    let _ = stop.send(());
    server
        .await
        .map_err(|e| format!("server: {e}"))?
        .map_err(|e| format!("server: {e}"))?;

    let published = published.lock().unwrap().clone();
    let mut latencies = Vec::with_capacity(subscribers * shape.changes);
    let mut last_per_change = vec![Duration::ZERO; shape.changes];
    let mut resnapshots = 0;
    for r in &received {
        resnapshots += r.resnapshots;
        for &(i, at) in &r.changes {
            let sent = published
                .get(i)
                .copied()
                .flatten()
                .ok_or_else(|| format!("change {i} received but never published"))?;
            let latency = at.saturating_duration_since(sent);
            latencies.push(latency);
            last_per_change[i] = last_per_change[i].max(latency);
        }
    }
    latencies.sort_unstable();
    let mut completions = last_per_change.clone();
    completions.sort_unstable();
    Ok(Outcome {
        subscribers,
        ready_after,
        missing: subscribers * shape.changes - latencies.len(),
        latencies,
        completions,
        last_per_change,
        resnapshots,
        phase_wall,
        phase_cpu,
        idle_cpu,
        idle_wall,
    })
}

/// Nearest-rank percentile of a sorted slice.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a rank within the slice"
    )]
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Outcome {
    fn p(&self, q: f64) -> Duration {
        percentile(&self.latencies, q)
    }

    fn cpu_per_change(&self, shape: Shape) -> Duration {
        self.phase_cpu / u32::try_from(shape.changes).unwrap_or(u32::MAX)
    }

    fn core_share(cpu: Duration, wall: Duration) -> f64 {
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9)
    }

    fn print(&self, shape: Shape, workers: usize, smoke: bool) {
        let mode = if smoke {
            " (smoke run: pass --bench, as `cargo bench` does, for the real one)"
        } else {
            ""
        };
        println!(
            "feed fan-out{mode}: {} Watch subscribers ({} connections × {} streams), \
             {} changes {} ms apart, {workers} runtime workers",
            self.subscribers,
            shape.connections,
            shape.streams,
            shape.changes,
            shape.spacing.as_millis()
        );
        println!(
            "  all subscribers had their snapshot after {:.0} ms",
            ms(self.ready_after)
        );
        println!();
        println!(
            "  {:<34} {:>9} {:>9} {:>9} {:>9}",
            "delivery latency (ms)", "p50", "p90", "p99", "max"
        );
        println!(
            "  {:<34} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            format!("every (subscriber, change): {}", self.latencies.len()),
            ms(self.p(0.50)),
            ms(self.p(0.90)),
            ms(self.p(0.99)),
            ms(self.p(1.0)),
        );
        println!(
            "  {:<34} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            "last subscriber, per change",
            ms(percentile(&self.completions, 0.50)),
            ms(percentile(&self.completions, 0.90)),
            ms(percentile(&self.completions, 0.99)),
            ms(percentile(&self.completions, 1.0)),
        );
        println!();
        println!(
            "  CPU, publishing phase ({:.2} s): {:.0} ms = {:.2} ms per change, {:.1}% of one core",
            self.phase_wall.as_secs_f64(),
            ms(self.phase_cpu),
            ms(self.cpu_per_change(shape)),
            Self::core_share(self.phase_cpu, self.phase_wall)
        );
        println!(
            "  CPU, idle baseline ({:.2} s, streams open, nothing published): {:.1}% of one core",
            self.idle_wall.as_secs_f64(),
            Self::core_share(self.idle_cpu, self.idle_wall)
        );
        if self.missing > 0 || self.resnapshots > 0 {
            println!(
                "  coalesced: {} deliveries replaced by {} snapshots (subscribers fell behind)",
                self.missing, self.resnapshots
            );
        }
        if smoke {
            return;
        }
        let p99 = self.p(0.99);
        println!(
            "  goal p99 ≤ {} ms: {}",
            GOAL_P99.as_millis(),
            if p99 <= GOAL_P99 { "met" } else { "MISSED" }
        );
    }

    fn json(&self, shape: Shape, workers: usize) -> serde_json::Value {
        let stats = |sorted: &[Duration]| {
            json!({
                "p50_ms": ms(percentile(sorted, 0.50)),
                "p90_ms": ms(percentile(sorted, 0.90)),
                "p99_ms": ms(percentile(sorted, 0.99)),
                "max_ms": ms(percentile(sorted, 1.0)),
            })
        };
        json!({
            "timestamp_unix": SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            "cores": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            "runtime_workers": workers,
            "subscribers": self.subscribers,
            "connections": shape.connections,
            "streams_per_connection": shape.streams,
            "changes": shape.changes,
            "spacing_ms": ms(shape.spacing),
            "ready_ms": ms(self.ready_after),
            "latency": stats(&self.latencies),
            "deliveries": self.latencies.len(),
            "missing_deliveries": self.missing,
            "resnapshots": self.resnapshots,
            "last_subscriber_per_change": stats(&self.completions),
            "last_subscriber_ms_in_publishing_order":
                self.last_per_change.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "phase_wall_ms": ms(self.phase_wall),
            "phase_cpu_ms": ms(self.phase_cpu),
            "cpu_ms_per_change": ms(self.cpu_per_change(shape)),
            "cpu_percent_of_one_core": Self::core_share(self.phase_cpu, self.phase_wall),
            "idle_cpu_percent_of_one_core": Self::core_share(self.idle_cpu, self.idle_wall),
            "goal_p99_ms": ms(GOAL_P99),
            "goal_met": self.p(0.99) <= GOAL_P99,
        })
    }
}

/// `target/` of the workspace (or `$CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ lives inside the workspace");
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

fn write_json(path: &Path, value: &serde_json::Value) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}
