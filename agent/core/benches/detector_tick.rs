//! What one detector tick costs at fleet scale: `observe` + `tick` over 10k and 100k
//! links, in a 10,000-host topology (2 sites × 5 cabinets × 20 racks × 50 hosts).
//!
//! - 10k links: one observer talks to every host.
//! - 100k links: ten observers (`obs-0` … `obs-9`, in ten different racks) each talk
//!   to every host.
//!
//! Every measured iteration is one steady-state tick: simulated time advances 100 ms
//! and every link reports one observation with plausible counters (50–150 segments of
//! progress, a retransmission now and then, an RTT median). The detector is warmed up
//! first (3 s of simulated ticks), so every link and host already exists.
//!
//! Two traffic variants:
//! - `healthy`: every link delivers; no verdict changes after the warm-up.
//! - `blackhole`: one whole rack is blackholed (its links report RTOs with backoff and
//!   no progress), and every 2 s the blackhole moves to another rack while the
//!   previous one heals. So the measured ticks include racks and their hosts entering
//!   FAILED and, after the recovery hold, leaving it: verdict changes and their
//!   evidence are part of the cost.
//!
//! Three measurements per scenario (building the observations is never timed):
//! `observe_tick` (the whole cycle: the figure that matters, goal ≤ 5 ms at 100k
//! links), `observe` alone and `tick` alone.
//!
//! Run: `cargo bench -p faultline-core --bench detector_tick` (or `cargo xtask bench
//! --detector-only`, which also tabulates the results).
use std::{
    fmt::Write as _,
    hint::black_box,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use faultline_core::{
    detector::{Detector, DetectorConfig, LinkDelta, Observation},
    link::{Link, LinkCounters},
    topology::Topology,
};

const SITES: usize = 2;
const CABINETS: usize = 5;
const RACKS: usize = 20;
const HOSTS: usize = 50;
const TOTAL_RACKS: usize = SITES * CABINETS * RACKS;
const TOTAL_HOSTS: usize = TOTAL_RACKS * HOSTS;

const TICK: Duration = Duration::from_millis(100);
/// Simulated time before anything is measured.
const WARM_UP: Duration = Duration::from_secs(3);
/// How long the blackhole stays on one rack before it moves on.
const BLACKHOLE_DWELL: Duration = Duration::from_secs(2);

/// Rack `g` (0-based over the whole topology) as (site, cabinet, rack), 1-based.
fn rack_coords(g: usize) -> (usize, usize, usize) {
    let s = g / (CABINETS * RACKS) + 1;
    let c = g / RACKS % CABINETS + 1;
    let r = g % RACKS + 1;
    (s, c, r)
}

/// Rack `g` has prefix 10.s.x.0/24 with x = 20 (c - 1) + r (1..=100).
fn rack_octets(g: usize) -> (u8, u8) {
    let (s, c, r) = rack_coords(g);
    let x = (c - 1) * RACKS + r;
    (
        u8::try_from(s).expect("site fits"),
        u8::try_from(x).expect("rack fits"),
    )
}

/// Host `h` (1..=50) of rack `g` is 10.s.x.h.
fn host_addr(g: usize, h: usize) -> IpAddr {
    let (s, x) = rack_octets(g);
    IpAddr::V4(Ipv4Addr::new(10, s, x, u8::try_from(h).expect("host fits")))
}

/// The topology file of the benchmark fleet: every rack has its /24, every host an
/// explicit address.
fn topology_text() -> String {
    let mut t = String::with_capacity(1 << 20);
    for s in 1..=SITES {
        let _ = writeln!(t, "[[site]]\nname = \"dc-{s}\"\n");
        for c in 1..=CABINETS {
            let _ = writeln!(t, "[[cabinet]]\nname = \"c{c}\"\nsite = \"dc-{s}\"\n");
        }
    }
    for g in 0..TOTAL_RACKS {
        let (s, c, r) = rack_coords(g);
        let (_, x) = rack_octets(g);
        let _ = writeln!(
            t,
            "[[rack]]\nname = \"r{r}\"\ncabinet = \"dc-{s}/c{c}\"\nprefixes = [\"10.{s}.{x}.0/24\"]\n"
        );
    }
    for g in 0..TOTAL_RACKS {
        let (s, c, r) = rack_coords(g);
        for h in 1..=HOSTS {
            let _ = writeln!(
                t,
                "[[host]]\nname = \"h{h}\"\nrack = \"dc-{s}/c{c}/r{r}\"\naddresses = [\"{}\"]\n",
                host_addr(g, h)
            );
        }
    }
    t
}

/// Small deterministic RNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Traffic {
    Healthy,
    Blackhole,
}

#[derive(Clone, Copy)]
enum Measure {
    /// `observe` + `tick`, timed together.
    Cycle,
    Observe,
    Tick,
}

impl Measure {
    fn id(self) -> &'static str {
        match self {
            Self::Cycle => "observe_tick",
            Self::Observe => "observe",
            Self::Tick => "tick",
        }
    }
}

/// A detector fed by a simulated fleet, one tick at a time.
struct Sim {
    det: Detector,
    now: Duration,
    rng: Rng,
    traffic: Traffic,
    /// This tick's observations, one per link; the deltas are rewritten every tick.
    batch: Vec<Observation>,
    /// For each observation, the rack of its remote host, and an RTO jitter (ms).
    rack_of: Vec<u16>,
    jitter_ms: Vec<u8>,
    /// The blackholed rack and since when (Blackhole traffic only).
    blackhole: Option<(usize, Duration)>,
    blackholes: usize,
    ticks: u64,
    changes: u64,
}

impl Sim {
    fn new(topology: Topology, observers: usize, traffic: Traffic) -> Self {
        let mut batch = Vec::with_capacity(observers * TOTAL_HOSTS);
        let mut rack_of = Vec::with_capacity(observers * TOTAL_HOSTS);
        let mut jitter_ms = Vec::with_capacity(observers * TOTAL_HOSTS);
        for k in 0..observers {
            let name: Arc<str> = Arc::from(format!("obs-{k}"));
            // Each observer sits in a different rack (spread over both sites), at an
            // address its rack's prefix places but the file does not list.
            let local = host_addr(k * TOTAL_RACKS / observers.max(1) + 3, 200);
            for g in 0..TOTAL_RACKS {
                for h in 1..=HOSTS {
                    batch.push(Observation {
                        observer: name.clone(),
                        link: Link {
                            local,
                            remote: host_addr(g, h),
                        },
                        delta: LinkDelta::default(),
                    });
                    rack_of.push(u16::try_from(g).expect("rack fits"));
                    jitter_ms.push(u8::try_from((batch.len() * 37) % 100).expect("< 100"));
                }
            }
        }
        let mut sim = Self {
            det: Detector::new(topology, DetectorConfig::default()),
            now: Duration::ZERO,
            rng: Rng(0x9E37_79B9_7F4A_7C15),
            traffic: Traffic::Healthy,
            batch,
            rack_of,
            jitter_ms,
            blackhole: None,
            blackholes: 0,
            ticks: 0,
            changes: 0,
        };
        while sim.now < WARM_UP {
            sim.prepare();
            sim.det.observe(&sim.batch, sim.now);
            let changes = sim.det.tick(sim.now);
            sim.record(&changes);
        }
        sim.traffic = traffic;
        (sim.ticks, sim.changes) = (0, 0);
        sim
    }

    /// Advances the clock one tick and writes every link's counters for it (untimed).
    fn prepare(&mut self) {
        self.now += TICK;
        if self.traffic == Traffic::Blackhole {
            let moved = self
                .blackhole
                .is_none_or(|(_, since)| self.now.saturating_sub(since) >= BLACKHOLE_DWELL);
            if moved {
                // Hop around the fleet (37 is coprime with 200): other cabinets and sites.
                let rack = (self.blackholes * 37 + 11) % TOTAL_RACKS;
                self.blackholes += 1;
                self.blackhole = Some((rack, self.now));
            }
        }
        let now = self.now;
        for i in 0..self.batch.len() {
            let delta = match self.blackhole {
                Some((rack, since)) if usize::from(self.rack_of[i]) == rack => {
                    blackholed(since, now, self.jitter_ms[i])
                }
                _ => healthy(&mut self.rng),
            };
            self.batch[i].delta = delta;
        }
    }

    fn record(&mut self, changes: &[faultline_core::detector::Verdict]) {
        self.ticks += 1;
        self.changes += u64::try_from(changes.len()).expect("fits");
    }

    /// Runs `iters` ticks and returns the time spent in what `measure` names.
    fn run(&mut self, iters: u64, measure: Measure) -> Duration {
        let mut timed = Duration::ZERO;
        for _ in 0..iters {
            self.prepare();
            let changes = match measure {
                Measure::Cycle => {
                    let start = Instant::now();
                    self.det.observe(black_box(&self.batch), self.now);
                    let changes = self.det.tick(self.now);
                    timed += start.elapsed();
                    changes
                }
                Measure::Observe => {
                    let start = Instant::now();
                    self.det.observe(black_box(&self.batch), self.now);
                    timed += start.elapsed();
                    self.det.tick(self.now)
                }
                Measure::Tick => {
                    self.det.observe(&self.batch, self.now);
                    let start = Instant::now();
                    let changes = self.det.tick(self.now);
                    timed += start.elapsed();
                    changes
                }
            };
            self.record(black_box(&changes));
        }
        timed
    }
}

/// A delivering link: 50–150 segments of progress, a retransmission in about one tick
/// out of twenty, an RTT median of 150–300 µs.
fn healthy(rng: &mut Rng) -> LinkDelta {
    let progress = 50 + rng.below(101);
    let retrans = match rng.below(100) {
        0 => 2,
        1..=4 => 1,
        _ => 0,
    };
    LinkDelta {
        counters: LinkCounters {
            progress_segs: progress,
            retrans_segs: retrans,
            ..LinkCounters::default()
        },
        rtt_p50_us: Some(150 + rng.below(150)),
        silent_ms: None,
        acked_age_ms: None,
    }
}

/// A blackholed link since `since`: no progress; an RTO (with its retransmission) at
/// since + 200 ms + jitter, then backing off 400 ms, 800 ms, … — when one falls in
/// this tick.
fn blackholed(since: Duration, now: Duration, jitter_ms: u8) -> LinkDelta {
    let mut counters = LinkCounters::default();
    let mut rto = since + Duration::from_millis(200 + u64::from(jitter_ms));
    let mut backoff = Duration::from_millis(400);
    while rto <= now {
        if rto + TICK > now {
            counters.rto_timeouts = 1;
            counters.retrans_segs = 1;
        }
        rto += backoff;
        backoff *= 2;
    }
    LinkDelta {
        counters,
        rtt_p50_us: None,
        silent_ms: None,
        acked_age_ms: None,
    }
}

fn detector_tick(c: &mut Criterion) {
    let text = topology_text();
    let start = Instant::now();
    let topology = Topology::parse(Path::new("bench-topology.toml"), &text)
        .expect("the generated topology is valid");
    eprintln!(
        "detector_tick: topology of {} entities ({TOTAL_HOSTS} hosts, {TOTAL_RACKS} racks), {} KiB of TOML, parsed in {:.1} ms",
        topology.len(),
        text.len() / 1024,
        start.elapsed().as_secs_f64() * 1e3
    );
    let mut group = c.benchmark_group("detector_tick");
    for (observers, size) in [(1, "10k"), (10, "100k")] {
        for (traffic, variant) in [
            (Traffic::Healthy, "healthy"),
            (Traffic::Blackhole, "blackhole"),
        ] {
            for measure in [Measure::Cycle, Measure::Observe, Measure::Tick] {
                // Built on first use, so benchmarks left out by a filter cost nothing.
                let mut sim: Option<Sim> = None;
                let id = BenchmarkId::new(measure.id(), format!("{size}_links_{variant}"));
                group.bench_function(id, |b| {
                    let sim =
                        sim.get_or_insert_with(|| Sim::new(topology.clone(), observers, traffic));
                    b.iter_custom(|iters| sim.run(iters, measure));
                });
                if let Some(sim) = sim {
                    eprintln!(
                        "  {} links, {variant}: {} verdict changes over {} ticks ({:.2} per tick)",
                        sim.batch.len(),
                        sim.changes,
                        sim.ticks,
                        lossy(sim.changes) / lossy(sim.ticks.max(1)),
                    );
                }
            }
        }
    }
    group.finish();
}

#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
fn lossy(n: u64) -> f64 {
    n as f64
}

criterion_group! {
    name = benches;
    // 100k-link ticks take milliseconds each: fewer, longer samples than the default.
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    targets = detector_tick
}
criterion_main!(benches);
