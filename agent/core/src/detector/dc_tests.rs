//! The detector where every host runs an agent: an uneven three-site data center (one
//! site IPv6-only, a one-cabinet site, a one-rack cabinet, racks of one to three
//! hosts) in simulated time. Every host observes its links to every other host and
//! every agent runs a detector fed with its own links at once and its peers' a tick
//! later, over streams that die when the network between them does. Faults are cuts
//! in the network, and each test checks the verdicts at agents outside the fault and
//! inside it.
use std::{net::IpAddr, path::Path, sync::Arc, time::Duration};

use super::*;
use crate::link::LinkCounters;

const TICK: Duration = Duration::from_millis(100);

/// (site, cabinet, rack, hosts): east and west are IPv4, north IPv6-only.
const SHAPE: [(&str, &str, &str, u8); 6] = [
    ("east", "e1", "r1", 3),
    ("east", "e1", "r2", 2),
    ("east", "e2", "r1", 3), // a one-rack cabinet
    ("west", "w1", "r1", 2),
    ("west", "w1", "r2", 1),  // a one-host rack
    ("north", "n1", "r1", 3), // a one-cabinet, one-rack site
];

struct HostInfo {
    path: String,
    addr: IpAddr,
}

fn build() -> (String, Vec<HostInfo>) {
    let mut text = String::new();
    let mut hosts = Vec::new();
    let (mut sites, mut cabinets) = (Vec::new(), Vec::new());
    for (i, &(site, cab, rack, n)) in SHAPE.iter().enumerate() {
        if !sites.contains(&site) {
            sites.push(site);
            text += &format!("[[site]]\nname = \"{site}\"\n");
        }
        let cabinet = format!("{site}/{cab}");
        if !cabinets.contains(&cabinet) {
            text += &format!("[[cabinet]]\nname = \"{cab}\"\nsite = \"{site}\"\n");
            cabinets.push(cabinet.clone());
        }
        text += &format!("[[rack]]\nname = \"{rack}\"\ncabinet = \"{cabinet}\"\n");
        for h in 1..=n {
            let addr: IpAddr = if site == "north" {
                format!("fd00:3:1:{i}::{h}").parse().unwrap()
            } else {
                format!("10.{}.{i}.{h}", sites.len()).parse().unwrap()
            };
            let path = format!("{cabinet}/{rack}/h{h}");
            text += &format!(
                "[[host]]\nname = \"h{h}\"\nrack = \"{cabinet}/{rack}\"\naddresses = [\"{addr}\"]\n"
            );
            hosts.push(HostInfo { path, addr });
        }
    }
    (text, hosts)
}

/// A cut in the network, active from `at` until cleared.
#[derive(Clone)]
enum Cut {
    /// Nothing crosses the entity's boundary, either way; inside still works.
    Blackhole(&'static str),
    /// Nothing enters the entity from outside.
    Into(&'static str),
    /// Nothing leaves the entity.
    OutOf(&'static str),
    /// Random loss (percent) on everything crossing the entity's boundary.
    Loss(&'static str, f64),
    /// Nothing between this host and any other site, either way.
    LongHaul(&'static str),
}

/// Hosts whose CPU is starved: their RTTs, seen by them or by others, rise tenfold.
struct Dc {
    hosts: Vec<HostInfo>,
    now: Duration,
    rng: u64,
    cuts: Vec<(Cut, Duration)>,
    starved: Vec<usize>,
    agents: Vec<Detector>,
    /// Each agent's observations of the last tick, delivered to peers one tick late.
    in_flight: Vec<Vec<Observation>>,
    names: Vec<Arc<str>>,
    /// Verdict changes per agent, with the time they were announced.
    log: Vec<Vec<(Duration, Verdict)>>,
    /// When each host's links to each other host last lost connectivity.
    cut_since: Vec<Vec<Option<Duration>>>,
    /// Segments a link delivers a tick: at least the first, up to the first plus the
    /// second less one.
    segments: (u64, u64),
    /// When within a tick each link's heartbeat leaves, ms.
    beat_phase_ms: Vec<Vec<u64>>,
    /// When each agent last sampled its own links.
    sampled: Vec<Duration>,
}

fn within(path: &str, entity: &str) -> bool {
    path == entity || path.starts_with(&format!("{entity}/"))
}

impl Dc {
    fn new() -> Self {
        Self::with_config(&DetectorConfig::default())
    }

    fn with_config(cfg: &DetectorConfig) -> Self {
        Self::with_stream(cfg, 0)
    }

    /// A data center whose random stream (traffic, losses, heartbeat phases) is
    /// `seed`'s own; seed 0 is [`Self::with_config`]'s.
    fn with_stream(cfg: &DetectorConfig, seed: u64) -> Self {
        let (text, hosts) = build();
        let topology = Topology::parse(Path::new("dc.toml"), &text).unwrap();
        let n = hosts.len();
        Self {
            names: hosts.iter().map(|h| Arc::from(h.path.as_str())).collect(),
            agents: (0..n)
                .map(|_| Detector::new(topology.clone(), cfg.clone()))
                .collect(),
            in_flight: vec![Vec::new(); n],
            log: vec![Vec::new(); n],
            cut_since: vec![vec![None; n]; n],
            hosts,
            now: Duration::ZERO,
            rng: 0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xA24B_AED4_963E_E407),
            cuts: Vec::new(),
            starved: Vec::new(),
            segments: (80, 40),
            beat_phase_ms: vec![vec![0; n]; n],
            sampled: vec![Duration::ZERO; n],
        }
        .with_beat_phases()
    }

    fn with_beat_phases(mut self) -> Self {
        let n = self.hosts.len();
        for a in 0..n {
            for b in 0..n {
                self.beat_phase_ms[a][b] = self.random() % 100;
            }
        }
        self
    }

    /// [`Self::new`] with a random stream of its own.
    fn seeded(seed: u64) -> Self {
        Self::with_stream(&DetectorConfig::default(), seed)
    }

    /// Links that carry about twenty segments a second, as in the lab (heartbeats,
    /// which never count as loss, aside), with a random stream of its own.
    fn thin(seed: u64) -> Self {
        let mut dc = Self::seeded(seed);
        dc.segments = (1, 3);
        dc
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    #[expect(clippy::cast_precision_loss)]
    fn chance(&mut self, p: f64) -> bool {
        (self.random() % 1_000_000) as f64 / 1e6 < p
    }

    fn host(&self, path: &str) -> usize {
        self.hosts.iter().position(|h| h.path == path).unwrap()
    }

    fn cut(&mut self, cut: Cut) {
        self.cut_within_tick(cut, Duration::ZERO);
    }

    /// A cut `phase` into the next tick: the samples that follow see its effects in
    /// the order their delays give, not all at once.
    fn cut_within_tick(&mut self, cut: Cut, phase: Duration) {
        self.cuts.push((cut, self.now + phase));
    }

    fn clear(&mut self) {
        self.cuts.clear();
    }

    /// Whether a packet from host `a` reaches host `b` now (loss aside).
    fn passes(&self, a: usize, b: usize) -> bool {
        let (pa, pb) = (&self.hosts[a].path, &self.hosts[b].path);
        self.cuts.iter().all(|(cut, _)| match cut {
            Cut::Blackhole(e) => within(pa, e) == within(pb, e),
            Cut::Into(e) => within(pa, e) || !within(pb, e),
            Cut::OutOf(e) => !within(pa, e) || within(pb, e),
            Cut::Loss(..) => true,
            Cut::LongHaul(h) => {
                let site = |p: &str| p.split('/').next().unwrap_or_default().to_owned();
                !((pa == h || pb == h) && site(pa) != site(pb))
            }
        })
    }

    fn loss(&self, a: usize, b: usize) -> f64 {
        let (pa, pb) = (&self.hosts[a].path, &self.hosts[b].path);
        self.cuts
            .iter()
            .map(|(cut, _)| match cut {
                Cut::Loss(e, pct) if within(pa, e) != within(pb, e) => pct / 100.0,
                _ => 0.0,
            })
            .sum()
    }

    /// Round-trip time between two hosts, µs: 0.2 ms in a site, 40 ms between east
    /// and west, 150 ms to and from north.
    fn base_rtt_us(&self, a: usize, b: usize) -> u64 {
        match (self.site(a), self.site(b)) {
            (x, y) if x == y => 200,
            ("north", _) | (_, "north") => 150_000,
            _ => 40_000,
        }
    }

    fn site(&self, i: usize) -> &str {
        self.hosts[i].path.split('/').next().unwrap_or_default()
    }

    /// TCP needs both directions: a link delivers when both pass.
    fn connected(&self, a: usize, b: usize) -> bool {
        self.passes(a, b) && self.passes(b, a)
    }

    /// Link `a` → `b` over (`from`, `to`]: a tick, or part of one where an agent judges
    /// again between its ticks.
    fn delta_over(&mut self, a: usize, b: usize, from: Duration, to: Duration) -> LinkDelta {
        if !self.connected(a, b) {
            return self.cut_delta(a, b, from, to);
        }
        // The connections that sat in a cut time out once more, all at once, and
        // re-send what they held as it clears.
        let recovering = self.cut_since[a][b].take().is_some();
        let mut rtt = self.base_rtt_us(a, b) + self.random() % 100;
        if self.starved.contains(&a) || self.starved.contains(&b) {
            rtt = rtt * 10 + 20_000;
        }
        let per_tick = self.segments.0 + self.random() % self.segments.1;
        let span = u64::try_from((to - from).as_millis()).unwrap_or(100);
        let progress = (per_tick * span / 100).max(1);
        let loss = self.loss(a, b).max(0.001);
        let mut retrans = 0;
        for _ in 0..progress {
            retrans += u64::from(self.chance(loss));
        }
        let repeat = if recovering { 3 } else { 0 };
        // The latest ACK came some time during the span, by the kernel's clock.
        let acked_age_ms = u32::try_from(self.random() % span.max(1)).ok();
        LinkDelta {
            counters: LinkCounters {
                progress_segs: progress,
                // Connected both ways: our data is acknowledged as the peer's arrives.
                acked_segs: progress,
                retrans_segs: retrans + repeat,
                rto_timeouts: repeat,
                repeat_timeouts: repeat,
                ..LinkCounters::default()
            },
            rtt_p50_us: Some(rtt),
            silent_ms: None,
            acked_age_ms,
        }
    }

    /// A tick of a link the network cuts, since the latest cut (the first tick that
    /// sees it is the one it falls in). ACKs already past the cut keep coming for up
    /// to a one-way delay (the cut at the far end). The heartbeat (one a tick, at a
    /// phase of its own) sent first after the cut times out 20 ms past its RTT and is
    /// retransmitted, then again after twice as long, and so on; the users' data,
    /// 200 ms plus an RTT after the cut, then +0.4, +0.8 s …
    fn cut_delta(&mut self, a: usize, b: usize, from: Duration, to: Duration) -> LinkDelta {
        let latest = self.cuts.last().map_or(from, |c| c.1);
        let since = *self.cut_since[a][b].get_or_insert(latest);
        let rtt = Duration::from_micros(self.base_rtt_us(a, b));
        let within_tick = |t: Duration| t > from && t <= to;
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let mut c = LinkCounters::default();
        let mut last_loss = None;
        // Heartbeats leave every tick at the link's own phase; the first whose segment
        // reaches the far end after the cut is lost, and times out 20 ms past its RTT.
        let phase = Duration::from_millis(self.beat_phase_ms[a][b]);
        let mut sent = phase;
        while sent + rtt / 2 <= since {
            sent += TICK;
        }
        let first_beat = sent + rtt + Duration::from_millis(20);
        let (mut beat_rto, mut backoff) = (first_beat, rtt + Duration::from_millis(20));
        while beat_rto <= to {
            if within_tick(beat_rto) {
                c.control_retrans_segs += 1;
                c.control_timeouts += u64::from(beat_rto == first_beat);
                last_loss = Some(beat_rto);
            }
            backoff *= 2;
            beat_rto += backoff;
        }
        let (mut rto, mut backoff) = (
            since + Duration::from_millis(200) + rtt,
            Duration::from_millis(400),
        );
        while rto <= to {
            if within_tick(rto) {
                c.rto_timeouts = 1;
                c.retrans_segs = 1;
                last_loss = last_loss.max(Some(rto));
            }
            rto += backoff;
            backoff *= 2;
        }
        // The cut at the far end: ACKs past it arrive within half an RTT. At the
        // observer's own end, and only what it sends: the data it sent just before
        // the cut is still acknowledged a whole RTT later.
        let own_end = self.cuts.iter().any(|(cut, _)| {
            matches!(cut, Cut::OutOf(e) if within(&self.hosts[a].path, e)
                && !within(&self.hosts[b].path, e))
        });
        let last_ack = since + if own_end { rtt } else { rtt / 2 };
        let in_flight = last_ack > from;
        if in_flight {
            c.progress_segs = 2;
            c.acked_segs = 2;
        }
        LinkDelta {
            counters: c,
            rtt_p50_us: in_flight.then_some(self.base_rtt_us(a, b)),
            silent_ms: last_loss.filter(|_| !in_flight).map(|t| ms(to - t)),
            acked_age_ms: in_flight.then(|| ms(to.saturating_sub(last_ack.min(to)))),
        }
    }

    /// Agent `a`'s observations of its links over (`from`, `to`].
    fn batch(&mut self, a: usize, from: Duration, to: Duration) -> Vec<Observation> {
        (0..self.hosts.len())
            .filter(|&b| b != a)
            .map(|b| Observation {
                observer: self.names[a].clone(),
                link: Link {
                    local: self.hosts[a].addr,
                    remote: self.hosts[b].addr,
                },
                delta: self.delta_over(a, b, from, to),
            })
            .collect()
    }

    fn step(&mut self) {
        self.now += TICK;
        let n = self.hosts.len();
        let mut fresh = Vec::with_capacity(n);
        for a in 0..n {
            fresh.push(self.batch(a, self.now - TICK, self.now));
        }
        for v in 0..n {
            // Its own links at once (since it last sampled them, if it judged again
            // within the tick); each peer's last tick, if their stream still flows.
            let own = if self.sampled[v] + TICK == self.now {
                fresh[v].clone()
            } else {
                self.batch(v, self.sampled[v], self.now)
            };
            self.sampled[v] = self.now;
            self.agents[v].observe(&own, self.now);
            // A peer's batch crosses its site in well under a millisecond, as its
            // own do; from another site it comes a tick late.
            let peers: Vec<usize> = (0..n).filter(|&p| p != v && self.connected(p, v)).collect();
            for p in peers {
                let batch = if self.site(p) == self.site(v) {
                    &fresh[p]
                } else {
                    &self.in_flight[p]
                };
                self.agents[v].observe(batch, self.now);
                self.agents[v].heard_from(&self.names[p], self.now);
            }
            for change in self.agents[v].tick(self.now) {
                self.log[v].push((self.now, change));
            }
            // As the agent does: judge again, with a fresh sample of its own links,
            // when a confirm falls due before the next tick.
            while let Some(due) = self.agents[v].confirm_due() {
                if due <= self.sampled[v] || due >= self.now + TICK {
                    break;
                }
                let own = self.batch(v, self.sampled[v], due);
                self.sampled[v] = due;
                self.agents[v].observe(&own, due);
                for change in self.agents[v].tick(due) {
                    self.log[v].push((due, change));
                }
            }
        }
        self.in_flight = fresh;
    }

    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    /// FAILED announcements at agent `v` from `after` on: (time, level, path, local).
    fn failed_at(&self, v: usize, after: Duration) -> Vec<(Duration, Level, String, bool, bool)> {
        self.log[v]
            .iter()
            .filter(|(t, c)| *t >= after && c.state == State::Failed)
            .map(|(t, c)| {
                (
                    *t,
                    c.entity.level,
                    c.entity.path.to_string(),
                    c.local_fault,
                    c.cause.is_some(),
                )
            })
            .collect()
    }

    fn state_at(&self, v: usize, level: Level, path: &str) -> State {
        self.agents[v]
            .verdict(level, path)
            .map_or(State::Unknown, |x| x.state)
    }

    fn agents_inside(&self, entity: &str) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&i| within(&self.hosts[i].path, entity))
            .collect()
    }

    fn agents_outside(&self, entity: &str) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&i| !within(&self.hosts[i].path, entity))
            .collect()
    }
}

/// Warm up, cut, hold the cut, clear it, and check both sides and the recovery; with
/// the cut at several moments within a tick, since which links' news comes in which
/// sample decides the races between them.
fn partition_is_named_from_both_sides(level: Level, entity: &'static str, cut: &Cut) {
    for seed in 0..12 {
        partition_is_named_from_both_sides_at(level, entity, cut.clone(), seed);
    }
}

fn partition_is_named_from_both_sides_at(level: Level, entity: &'static str, cut: Cut, seed: u64) {
    let mut dc = Dc::seeded(seed);
    let phase = Duration::from_millis(dc.random() % 100);
    // Shown with the failure, if one follows.
    eprintln!(
        "{level} {entity}: seed {seed}, cut {} ms into a tick",
        phase.as_millis()
    );
    dc.run(Duration::from_secs(5));
    for v in 0..dc.hosts.len() {
        assert!(
            dc.failed_at(v, Duration::ZERO).is_empty(),
            "FAILED before any fault: {:?}",
            dc.failed_at(v, Duration::ZERO)
        );
    }
    let injected = dc.now;
    dc.cut_within_tick(cut, phase);
    dc.run(Duration::from_secs(5));
    for v in dc.agents_outside(entity) {
        let failed = dc.failed_at(v, injected);
        let named = failed
            .iter()
            .find(|(_, l, p, local, _)| *l == level && p == entity && !local)
            .unwrap_or_else(|| {
                panic!(
                    "{} never named {level} {entity}: {failed:?}",
                    dc.hosts[v].path
                )
            });
        assert!(
            named.0 - injected <= Duration::from_secs(1),
            "{} named it after {:?}",
            dc.hosts[v].path,
            named.0 - injected
        );
        for (_, l, p, _, _) in &failed {
            // Entities inside the failed one may be named (usually "because of" it;
            // one whose own vote settles a tick before its parent's, on its own).
            assert!(
                within(p, entity),
                "{} blamed {l} {p} too: {failed:?}",
                dc.hosts[v].path
            );
        }
    }
    for v in dc.agents_inside(entity) {
        let failed = dc.failed_at(v, injected);
        let me = &dc.hosts[v].path;
        if level == Level::Host {
            assert!(
                failed
                    .iter()
                    .any(|(_, l, p, local, _)| *l == Level::Host && p == me && *local),
                "{me} did not name itself cut off: {failed:?}"
            );
        } else {
            assert!(
                failed
                    .iter()
                    .any(|(_, l, p, local, _)| *l == level && p == entity && *local),
                "{me} did not name its own {level} cut off: {failed:?}\n{}",
                dc.log[v]
                    .iter()
                    .filter(|(t, _)| *t >= injected)
                    .map(|(t, c)| format!(
                        "{t:?} {} {} {:?} local={} {}",
                        c.entity.level, c.entity.path, c.state, c.local_fault, c.reason
                    ))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        for (_, l, p, _, _) in &failed {
            assert!(
                within(p, entity) || within(me, p),
                "{me}, inside, blamed {l} {p} outside: {failed:?}"
            );
        }
    }
    let cleared = dc.now;
    dc.clear();
    let hold = DetectorConfig::default().recovery_hold;
    dc.run(hold + Duration::from_secs(2));
    for v in 0..dc.hosts.len() {
        assert_ne!(
            dc.state_at(v, level, entity),
            State::Failed,
            "{} still FAILED after recovery",
            dc.hosts[v].path
        );
    }
    let recovered = dc.now;
    dc.run(Duration::from_secs(15));
    for v in 0..dc.hosts.len() {
        let late: Vec<_> = dc.failed_at(v, cleared + Duration::from_millis(200));
        assert!(
            late.is_empty(),
            "{} announced FAILED after the fault cleared: {late:?} (recovered by {recovered:?})",
            dc.hosts[v].path
        );
    }
}

#[test]
fn a_blackholed_rack_is_named_outside_and_inside() {
    partition_is_named_from_both_sides(Level::Rack, "east/e1/r1", &Cut::Blackhole("east/e1/r1"));
}

#[test]
fn a_rack_that_receives_nothing_is_named_from_both_sides() {
    partition_is_named_from_both_sides(Level::Rack, "east/e1/r1", &Cut::Into("east/e1/r1"));
}

#[test]
fn a_blackholed_one_rack_cabinet_fails_as_the_cabinet() {
    partition_is_named_from_both_sides(Level::Cabinet, "east/e2", &Cut::Blackhole("east/e2"));
}

#[test]
fn a_partitioned_site_is_named_from_both_sides() {
    partition_is_named_from_both_sides(Level::Site, "west", &Cut::Blackhole("west"));
}

#[test]
fn a_site_cut_one_way_is_named_from_both_sides() {
    partition_is_named_from_both_sides(Level::Site, "west", &Cut::Into("west"));
}

/// West sends nothing out, cut at 12 moments of a tick: outside names it, inside
/// names itself and blames nothing outside. Its observers' data to north is still
/// acknowledged up to 150 ms after the cut; here the peers' evidence outlives those
/// ACKs, so the race they can cause is shown sample by sample in
/// `acks_of_data_sent_before_an_outbound_cut_do_not_blame_the_nearest_site`.
#[test]
fn a_site_that_sends_nothing_is_named_from_both_sides() {
    partition_is_named_from_both_sides(Level::Site, "west", &Cut::OutOf("west"));
}

#[test]
fn an_ipv6_only_one_cabinet_site_can_fail() {
    partition_is_named_from_both_sides(Level::Site, "north", &Cut::Blackhole("north"));
}

#[test]
fn an_unreachable_host_is_named_by_all_and_names_itself() {
    partition_is_named_from_both_sides(
        Level::Host,
        "east/e1/r1/h2",
        &Cut::Blackhole("east/e1/r1/h2"),
    );
}

#[test]
fn one_bad_host_never_fails_its_two_host_rack() {
    let mut dc = Dc::new();
    dc.run(Duration::from_secs(3));
    dc.cut(Cut::Blackhole("east/e1/r2/h1"));
    dc.run(Duration::from_secs(5));
    for v in 0..dc.hosts.len() {
        for (_, l, p, _, _) in dc.failed_at(v, Duration::ZERO) {
            assert!(
                l == Level::Host && p == "east/e1/r2/h1",
                "{} failed {l} {p}",
                dc.hosts[v].path
            );
        }
    }
    let outside = dc.host("west/w1/r1/h1");
    assert_eq!(
        dc.state_at(outside, Level::Host, "east/e1/r2/h1"),
        State::Failed
    );
}

#[test]
fn noise_and_cpu_contention_fail_nothing_and_degrade_nothing_above_hosts() {
    let mut dc = Dc::new();
    dc.run(Duration::from_secs(30));
    // 1 % loss between sites, and every other host starved of CPU.
    for site in ["east", "west", "north"] {
        dc.cut(Cut::Loss(site, 1.0));
    }
    dc.starved = (0..dc.hosts.len()).step_by(2).collect();
    dc.run(Duration::from_secs(60));
    assert_only_degraded(&dc, Duration::ZERO, None);
}

#[test]
fn a_silent_peer_is_set_aside_at_once() {
    let mut dc = Dc::new();
    dc.run(Duration::from_secs(3));
    let v = dc.host("east/e1/r1/h1");
    let peer = dc.host("west/w1/r1/h1");
    let before = dc.agents[v].observers[usize::from(dc.agents[v].observer_ids[&dc.names[peer]])]
        .alive(dc.now, &DetectorConfig::default());
    assert!(before);
    // The peer's stream to v dies (v cannot reach it any more).
    dc.cut(Cut::Blackhole("west/w1/r1/h1"));
    dc.run(DetectorConfig::default().observer_timeout + TICK);
    let o = &dc.agents[v].observers[usize::from(dc.agents[v].observer_ids[&dc.names[peer]])];
    assert!(
        !o.alive(dc.now, &DetectorConfig::default()),
        "still counted after going silent"
    );
    assert!(
        dc.agents[v]
            .views_of(dc.agents[v].topology.find("east/e2/r1/h1").unwrap())
            .iter()
            .all(|view| usize::from(view.observer)
                != usize::from(dc.agents[v].observer_ids[&dc.names[peer]])),
        "its views still count"
    );
}

#[test]
fn three_percent_loss_into_a_rack_degrades_the_rack_within_three_seconds() {
    let mut dc = Dc::new();
    dc.run(Duration::from_secs(30));
    let injected = dc.now;
    dc.cut(Cut::Loss("east/e1/r1", 3.0));
    dc.run(Duration::from_secs(3));
    assert_degraded_outside(&dc, Level::Rack, "east/e1/r1");
    assert_only_degraded(&dc, injected, Some("east/e1/r1"));
}

/// Every agent outside the entity at `path` shows it DEGRADED now.
fn assert_degraded_outside(dc: &Dc, level: Level, path: &str) {
    for v in dc.agents_outside(path) {
        assert_eq!(
            dc.state_at(v, level, path),
            State::Degraded,
            "at {}: {:?}",
            dc.hosts[v].path,
            dc.agents[v].verdict(level, path)
        );
    }
}

/// When every agent outside `rack` first showed it DEGRADED, after `injected`.
fn degraded_everywhere_after(dc: &Dc, rack: &str, injected: Duration) -> Option<Duration> {
    let mut latest = Duration::ZERO;
    for v in dc.agents_outside(rack) {
        let first = dc.log[v].iter().find(|(t, c)| {
            *t >= injected && c.entity.path.as_ref() == rack && c.state == State::Degraded
        })?;
        latest = latest.max(first.0 - injected);
    }
    Some(latest)
}

#[test]
fn a_host_with_heavy_traffic_shows_its_loss_in_the_short_window() {
    // The racks' hosts carry about a thousand segments a second from their outside
    // observers: 3 % loss crosses in the short window in well under a second, then
    // `degraded_confirm` (1 s). The 2 s window alone takes over 2.5 s more.
    let run = |cfg: &DetectorConfig| {
        let mut dc = Dc::with_config(cfg);
        dc.run(Duration::from_secs(30));
        let injected = dc.now;
        dc.cut(Cut::Loss("east/e1/r1", 3.0));
        dc.run(Duration::from_secs(5));
        degraded_everywhere_after(&dc, "east/e1/r1", injected)
    };
    let both = run(&DetectorConfig::default()).expect("DEGRADED within 5 s");
    let long_only = run(&DetectorConfig {
        pooled_loss_fast_window: DetectorConfig::default().loss_window,
        ..DetectorConfig::default()
    });
    assert!(
        both <= Duration::from_millis(2000),
        "DEGRADED everywhere only after {both:?}"
    );
    assert!(
        long_only.is_none_or(|t| t > both),
        "the long window alone was as quick: {long_only:?} vs {both:?}"
    );
}

#[test]
fn loss_at_one_hosts_nic_degrades_that_host_and_nothing_it_observes() {
    // 3 % of everything in and out of one host: its observers see loss to it alone;
    // it sees loss to everyone, so it expects it everywhere and blames no one.
    let mut dc = Dc::new();
    dc.run(Duration::from_secs(30));
    let injected = dc.now;
    let nic = "east/e1/r1/h1";
    dc.cut(Cut::Loss(nic, 3.0));
    dc.run(Duration::from_secs(5));
    assert_degraded_outside(&dc, Level::Host, nic);
    for v in 0..dc.hosts.len() {
        for (at, change) in dc.log[v].iter().filter(|(t, _)| *t >= injected) {
            assert!(
                change.state < State::Degraded || change.entity.path.as_ref() == nic,
                "at {} after {:?}: {} {} {:?}: {}",
                dc.hosts[v].path,
                *at - injected,
                change.entity.level,
                change.entity.path,
                change.state,
                change.reason
            );
        }
    }
}

#[test]
fn one_observer_cut_from_the_other_sites_does_not_speak_for_its_site() {
    let mut dc = Dc::new();
    dc.run(Duration::from_secs(5));
    let injected = dc.now;
    dc.cut(Cut::LongHaul("east/e1/r1/h1"));
    dc.run(Duration::from_secs(3));
    for v in 0..dc.hosts.len() {
        for (_, l, p, local, _) in dc.failed_at(v, injected) {
            assert!(
                l == Level::Host,
                "at {}: {l} {p} FAILED (local {local}): its neighbours still reach the other sites",
                dc.hosts[v].path
            );
        }
    }
}

/// Nothing FAILED, and nothing above host level DEGRADED but `allowed`, at any agent
/// from `after` on.
fn assert_only_degraded(dc: &Dc, after: Duration, allowed: Option<&str>) {
    for v in 0..dc.hosts.len() {
        for (at, change) in dc.log[v].iter().filter(|(t, _)| *t >= after) {
            assert_ne!(
                change.state,
                State::Failed,
                "at {}: {change:?}",
                dc.hosts[v].path
            );
            assert!(
                change.state != State::Degraded
                    || change.entity.level == Level::Host
                    || Some(change.entity.path.as_ref()) == allowed,
                "at {} after {:?}: {} {} DEGRADED: {}",
                dc.hosts[v].path,
                *at - after,
                change.entity.level,
                change.entity.path,
                change.reason
            );
        }
    }
}

#[test]
fn gray_loss_into_a_rack_on_thin_traffic_degrades_it_within_three_seconds() {
    // What the lab shows: about twenty segments a second per link, and 3 % of the
    // packets into a rack lost, which shows as about 1.6 % of the segments its
    // outside observers receive (they lose what they send, counted per segment
    // received both ways). Each host alone gathers three or four retransmissions a
    // second from all its observers together: too few to judge it alone in time.
    // Chance decides when the counts cross the bars, so the bound is on the median
    // over twelve random streams (30 streams: 2.3 s; slowest 3.9 s), and each must
    // get there within 5 s.
    let rack = "east/e1/r1";
    let mut times = Vec::new();
    for seed in 0..12 {
        let mut dc = Dc::thin(seed);
        dc.run(Duration::from_secs(30));
        let injected = dc.now;
        dc.cut(Cut::Loss(rack, 1.6));
        dc.run(Duration::from_secs(5));
        assert_degraded_outside(&dc, Level::Rack, rack);
        let v = dc.agents_outside(rack)[0];
        let why = &dc.agents[v]
            .verdict(Level::Rack, rack)
            .expect("judged")
            .reason;
        assert!(
            why.contains("pooled over every observer outside it"),
            "{why}"
        );
        times.push(degraded_everywhere_after(&dc, rack, injected).expect("logged"));
        assert_only_degraded(&dc, injected, Some(rack));
    }
    times.sort();
    assert!(
        times[times.len() / 2] <= Duration::from_secs(3),
        "{times:?}"
    );
}

#[test]
fn one_lossy_host_on_thin_traffic_never_degrades_its_rack() {
    // Its rack mates are clean: the rack's loss without its worst host is nothing.
    for seed in 0..4 {
        let mut dc = Dc::thin(seed);
        dc.run(Duration::from_secs(30));
        let injected = dc.now;
        dc.cut(Cut::Loss("east/e1/r1/h1", 5.0));
        dc.run(Duration::from_secs(10));
        assert_only_degraded(&dc, injected, None);
    }
}

#[test]
fn one_gray_rack_never_degrades_its_cabinet_or_site() {
    // Heavy loss into one rack: its cabinet and site lose as much as the rack does,
    // pooled over all their hosts, but not without it.
    for seed in 0..4 {
        let mut dc = Dc::thin(seed);
        dc.run(Duration::from_secs(30));
        let injected = dc.now;
        dc.cut(Cut::Loss("east/e1/r1", 8.0));
        dc.run(Duration::from_secs(10));
        assert_degraded_outside(&dc, Level::Rack, "east/e1/r1");
        assert_only_degraded(&dc, injected, Some("east/e1/r1"));
    }
}

#[test]
fn noise_on_thin_traffic_degrades_nothing_above_hosts() {
    // 1 % loss between sites on links that carry a few segments a second: an
    // observer has little to compare with, and a site's pooled loss is all long-haul.
    for seed in 0..6 {
        let mut dc = Dc::thin(seed);
        dc.run(Duration::from_secs(30));
        let injected = dc.now;
        for site in ["east", "west", "north"] {
            dc.cut(Cut::Loss(site, 1.0));
        }
        dc.starved = (0..dc.hosts.len()).step_by(2).collect();
        dc.run(Duration::from_secs(60));
        assert_only_degraded(&dc, injected, None);
    }
}

#[test]
fn a_gray_loss_that_has_ended_is_not_announced_after() {
    // Losses about as long as it takes to confirm one: whatever is announced, it is
    // announced while the loss lasts or soon after. On thin traffic the end of a
    // loss is itself slow to tell: at seven retransmissions a second, half a second
    // without one happens by chance once in thirty. Twice the short window.
    let rack = "east/e1/r1";
    for (seed, lasting_ms) in (0..10).zip((1000..).step_by(200)) {
        let mut dc = Dc::thin(seed);
        dc.run(Duration::from_secs(30));
        dc.cut(Cut::Loss(rack, 3.0));
        dc.run(Duration::from_millis(lasting_ms));
        dc.clear();
        let cleared = dc.now;
        dc.run(Duration::from_secs(8));
        let late = 2 * DetectorConfig::default().pooled_loss_fast_window;
        for v in 0..dc.hosts.len() {
            for (at, change) in dc.log[v].iter().filter(|(t, _)| *t > cleared + late) {
                assert!(
                    change.state != State::Degraded || change.entity.level == Level::Host,
                    "seed {seed}, at {}, {:?} after a {lasting_ms} ms loss ended: {} {} DEGRADED",
                    dc.hosts[v].path,
                    *at - cleared,
                    change.entity.level,
                    change.entity.path
                );
            }
        }
    }
}

#[test]
fn gray_loss_into_a_cabinet_degrades_the_cabinet_not_its_site() {
    // Both racks of east/e1 lose into them: the cabinet stands out without its worse
    // rack; the site does not without the cabinet. Its racks may show as well (each
    // loses as seen from outside it), nothing else above host level.
    for seed in 0..4 {
        let mut dc = Dc::thin(seed);
        dc.run(Duration::from_secs(30));
        let injected = dc.now;
        dc.cut(Cut::Loss("east/e1", 3.0));
        dc.run(Duration::from_secs(6));
        assert_degraded_outside(&dc, Level::Cabinet, "east/e1");
        for v in 0..dc.hosts.len() {
            for (at, change) in dc.log[v].iter().filter(|(t, _)| *t >= injected) {
                assert!(
                    change.state != State::Degraded
                        || change.entity.level == Level::Host
                        || within(&change.entity.path, "east/e1"),
                    "seed {seed}, at {} after {:?}: {} {} DEGRADED: {}",
                    dc.hosts[v].path,
                    *at - injected,
                    change.entity.level,
                    change.entity.path,
                    change.reason
                );
            }
        }
    }
}

#[test]
fn gray_loss_into_a_one_rack_site_degrades_the_site_as_a_whole() {
    // north is one cabinet of one rack: the rack is all of the cabinet and of the
    // site, so the loss into it is theirs too, as a blackhole there fails the site.
    for seed in 0..3 {
        let mut dc = Dc::thin(seed);
        dc.run(Duration::from_secs(30));
        let injected = dc.now;
        dc.cut(Cut::Loss("north", 3.0));
        dc.run(Duration::from_secs(6));
        for (level, path) in [
            (Level::Rack, "north/n1/r1"),
            (Level::Cabinet, "north/n1"),
            (Level::Site, "north"),
        ] {
            assert_degraded_outside(&dc, level, path);
        }
        for v in 0..dc.hosts.len() {
            for (_, change) in dc.log[v].iter().filter(|(t, _)| *t >= injected) {
                assert!(
                    change.state != State::Degraded || within(&change.entity.path, "north"),
                    "seed {seed}, at {}: {} {} DEGRADED: {}",
                    dc.hosts[v].path,
                    change.entity.level,
                    change.entity.path,
                    change.reason
                );
            }
        }
    }
}

#[test]
fn a_recovered_rack_is_not_degraded_by_its_failures_retransmissions() {
    // Its links retransmitted while it was cut off; once they deliver again, those
    // retransmissions are the failure's, not a gray failure after it.
    let rack = "east/e1/r1";
    for seed in 0..4 {
        let mut dc = Dc::thin(seed);
        dc.run(Duration::from_secs(30));
        dc.cut(Cut::Into(rack));
        dc.run(Duration::from_secs(5));
        dc.clear();
        let cleared = dc.now;
        dc.run(Duration::from_secs(15));
        for v in 0..dc.hosts.len() {
            for (at, change) in dc.log[v].iter().filter(|(t, _)| *t > cleared) {
                assert!(
                    change.state != State::Degraded || !within(&change.entity.path, rack),
                    "seed {seed}, at {}, {:?} after clearing: {} {} DEGRADED: {}",
                    dc.hosts[v].path,
                    *at - cleared,
                    change.entity.level,
                    change.entity.path,
                    change.reason
                );
            }
        }
    }
}

/// One link's sample in the scripted race below.
fn sample(
    dc: &Dc,
    a: usize,
    b: usize,
    counters: LinkCounters,
    rtt_us: Option<u64>,
    silent_ms: Option<u32>,
    acked_age_ms: Option<u32>,
) -> Observation {
    Observation {
        observer: dc.names[a].clone(),
        link: Link {
            local: dc.hosts[a].addr,
            remote: dc.hosts[b].addr,
        },
        delta: LinkDelta {
            counters,
            rtt_p50_us: rtt_us,
            silent_ms,
            acked_age_ms,
        },
    }
}

/// The lab's inside-cut race, scripted sample by sample at an agent inside a site cut
/// off both ways at T. Its observers' heartbeats to the near site (40 ms away) time out
/// at T + 55 and come in an urgent sample at T + 60; the far site's last ACKs (150 ms
/// away, a one-way delay of 75 ms) crossed the cut before it closed and come in at
/// T + 70, so the next sample (T + 100) shows the far site delivering after the near
/// one failed. Its own neighbours answer all along. Sampled, the far site looked
/// reached after the failure: the near site was named FAILED from inside (the lab's
/// site-partition check caught it in CI). Dated by the kernel, those ACKs crossed
/// before the near site's first loss: nothing outside is blamed, and once the far
/// site's heartbeats time out too the agent names its own site cut off.
#[test]
fn acks_that_crossed_the_cut_before_it_closed_do_not_blame_the_nearest_site() {
    // (sample, ACK age by the kernel's clock, ms)
    inside_cut_names_nothing_outside(&[(100, 30)], 180);
}

/// The same site cut only in what it sends, at its own edge: the data its observers
/// sent to the far site just before T is acknowledged up to a whole RTT later (150
/// ms), long after the near site's heartbeats timed out. Those ACKs answer data that
/// left before the cut: they prove nothing about the path out after it.
///
/// Known limitation, kept to show it: an answer is dated by half its RTT, so an ACK
/// 150 ms away arriving at T + 149 passes for one at T + 74, after the near site's
/// first loss (T + 55), and the agent inside names the near site FAILED at T + 200.
/// Dating by the whole RTT passes this test and cost outside observers half an RTT
/// to the nearest other site before they may raise a failure (lab, in turn: BGP
/// failover detection p50 282 -> 347 ms, a site 282 -> 295 ms; docs/benchmarks.md),
/// so it was not kept. The fix that costs nothing is to date both moments by when
/// the data left: the first lost segment's send time, which only the kernel knows.
#[test]
#[ignore = "known limitation: half-RTT dating lets a far site's late ACKs through an outbound-only cut (see the doc comment)"]
fn acks_of_data_sent_before_an_outbound_cut_do_not_blame_the_nearest_site() {
    inside_cut_names_nothing_outside(&[(100, 30), (150, 1)], 260);
}

/// An agent inside west cut at T, its observers sampled every 10 ms: neighbours
/// answer, east's heartbeats time out at T + 55 (sampled at T + 60), north's last
/// ACKs come in the samples `north_acks` (sample ms after T, their age), and north's
/// heartbeats time out in the sample at `north_timeout`.
fn inside_cut_names_nothing_outside(north_acks: &[(u64, u32)], north_timeout: u64) {
    let mut dc = Dc::new();
    dc.run(Duration::from_secs(3));
    let inside = dc.agents_inside("west");
    let me = inside[0];
    let t = dc.now;
    let n = dc.hosts.len();
    let ms = Duration::from_millis;
    let delivering = |segs: u64| LinkCounters {
        progress_segs: segs,
        acked_segs: segs,
        ..LinkCounters::default()
    };
    let beat_timeout = LinkCounters {
        control_retrans_segs: 1,
        control_timeouts: 1,
        ..LinkCounters::default()
    };
    let mut judged = Vec::new();
    // (moment after T, the sample of each inside observer at that moment)
    for at in (60..=1000).step_by(10) {
        let now = t + ms(at);
        let mut observations = Vec::new();
        for &a in &inside {
            for b in (0..n).filter(|&b| b != a) {
                let site = dc.site(b).to_owned();
                let o = match (site.as_str(), at) {
                    // Neighbours answer every 10 ms.
                    ("west", _) => sample(&dc, a, b, delivering(2), Some(200), None, Some(3)),
                    ("east", 60) => sample(&dc, a, b, beat_timeout, None, Some(5), None),
                    ("north", at) if at == north_timeout => {
                        sample(&dc, a, b, beat_timeout, None, Some(5), None)
                    }
                    ("north", at) => match north_acks.iter().find(|(s, _)| *s == at) {
                        Some(&(_, age)) => {
                            sample(&dc, a, b, delivering(2), Some(150_000), None, Some(age))
                        }
                        None => continue,
                    },
                    _ => continue,
                };
                observations.push(o);
            }
        }
        let agent = &mut dc.agents[me];
        agent.observe(&observations, now);
        for &p in &inside {
            agent.heard_from(&dc.names[p], now);
        }
        for change in agent.tick(now) {
            judged.push((now - t, change));
        }
    }
    let failed: Vec<_> = judged
        .iter()
        .filter(|(_, v)| v.state == State::Failed)
        .map(|(at, v)| {
            (
                *at,
                v.entity.level,
                v.entity.path.to_string(),
                v.local_fault,
            )
        })
        .collect();
    for (at, level, path, _) in &failed {
        assert!(
            within(path, "west"),
            "{level} {path} outside the cut named FAILED from inside, {at:?} after it: {failed:?}"
        );
    }
    assert!(
        failed
            .iter()
            .any(|(_, l, p, local)| *l == Level::Site && p == "west" && *local),
        "its own site not named cut off: {failed:?}"
    );
}
