//! The detector under simulated time: a scripted data center whose links are healthy,
//! lossy or blackholed, ticked every 100 ms.
use std::{collections::HashMap, net::IpAddr, path::Path, sync::Arc, time::Duration};

use proptest::prelude::*;

use super::*;
use crate::link::LinkCounters;

const TICK: Duration = Duration::from_millis(100);

/// Two sites × 2 cabinets × 2 racks × 4 hosts; host h of rack r of cabinet c of site s
/// is 10.s.(10c+r).h and fd00:s:c:r::h; racks have both prefixes.
fn topology_text() -> String {
    let mut t = String::new();
    for s in 1..=2 {
        t += &format!("[[site]]\nname = \"dc-{s}\"\n");
        for c in 1..=2 {
            t += &format!("[[cabinet]]\nname = \"c{c}\"\nsite = \"dc-{s}\"\n");
            for r in 1..=2 {
                t += &format!(
                    "[[rack]]\nname = \"r{r}\"\ncabinet = \"dc-{s}/c{c}\"\nprefixes = [\"10.{s}.{}.0/24\", \"fd00:{s}:{c}:{r}::/64\"]\n",
                    10 * c + r
                );
                for h in 1..=4 {
                    t += &format!(
                        "[[host]]\nname = \"h{h}\"\nrack = \"dc-{s}/c{c}/r{r}\"\naddresses = [\"10.{s}.{}.{h}\", \"fd00:{s}:{c}:{r}::{h}\"]\n",
                        10 * c + r
                    );
                }
            }
        }
    }
    t
}

fn v4(s: u8, c: u8, r: u8, h: u8) -> IpAddr {
    format!("10.{s}.{}.{h}", 10 * c + r).parse().unwrap()
}

fn v6(s: u8, c: u8, r: u8, h: u8) -> IpAddr {
    format!("fd00:{s}:{c}:{r}::{h}").parse().unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Nothing gets through from `at` on; RTOs back off from 200 ms (+ jitter).
    Blackhole { at: Duration, jitter: Duration },
    /// Random loss, percent.
    Loss(f64),
    /// RTT raised to this many µs.
    Slow(u64),
    /// The link carries no traffic.
    Idle,
    /// A blackhole from `at` on a connection with more than one segment in flight: a
    /// tail-loss probe 5 ms later, then silence (the kernel dates it: `silent_ms`)
    /// until the RTOs.
    Silent { at: Duration },
    /// A live link whose retransmissions come late in a tick, 5 ms before the sample,
    /// and are answered in the next tick: every other tick retransmits and receives
    /// nothing.
    Straggler,
    /// Nothing gets through and an RTO fires every tick: failing from its first tick,
    /// with no backoff to wait for (for the hysteresis tests).
    Dark,
}

/// Small deterministic RNG (xorshift64*), so tests need no seed plumbing; shared
/// with the detector's other test modules.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    #[expect(clippy::cast_precision_loss)]
    fn chance(&mut self, p: f64) -> bool {
        (self.next() % 1_000_000) as f64 / 1_000_000.0 < p
    }
}

struct Sim {
    det: Detector,
    now: Duration,
    rng: Rng,
    /// (observer name, local address, peers) per observer.
    observers: Vec<(Arc<str>, IpAddr, Vec<IpAddr>)>,
    faults: HashMap<(usize, IpAddr), Fault>,
    log: Vec<(Duration, Verdict)>,
}

impl Sim {
    fn new(observers: &[(&str, IpAddr, Vec<IpAddr>)]) -> Self {
        Self::with_config(observers, DetectorConfig::default())
    }

    fn with_config(observers: &[(&str, IpAddr, Vec<IpAddr>)], cfg: DetectorConfig) -> Self {
        let topo = Topology::parse(Path::new("sim.toml"), &topology_text()).unwrap();
        Self {
            det: Detector::new(topo, cfg),
            now: Duration::ZERO,
            rng: Rng(0x9E37_79B9_7F4A_7C15),
            observers: observers
                .iter()
                .map(|(n, l, p)| (Arc::from(*n), *l, p.clone()))
                .collect(),
            faults: HashMap::new(),
            log: Vec::new(),
        }
    }

    fn fault(&mut self, observer: usize, peer: IpAddr, fault: Fault) {
        self.faults.insert((observer, peer), fault);
    }

    fn heal(&mut self, observer: usize, peer: IpAddr) {
        self.faults.remove(&(observer, peer));
    }

    fn blackhole(&mut self, observer: usize, peers: &[IpAddr], jitter: Duration) {
        for &p in peers {
            self.fault(
                observer,
                p,
                Fault::Blackhole {
                    at: self.now,
                    jitter,
                },
            );
        }
    }

    fn delta(&mut self, observer: usize, peer: IpAddr) -> LinkDelta {
        let fault = self.faults.get(&(observer, peer)).copied();
        let progress = 80 + self.rng.below(40);
        // Data flows both ways on a connected link: our data is acknowledged too.
        let mut c = LinkCounters {
            progress_segs: progress,
            acked_segs: progress,
            ..LinkCounters::default()
        };
        let mut rtt = 150 + self.rng.below(100);
        match fault {
            None => {
                // Background noise: a rare retransmission.
                c.retrans_segs = u64::from(self.rng.chance(0.05));
            }
            Some(Fault::Loss(pct)) => {
                for _ in 0..progress {
                    c.retrans_segs += u64::from(self.rng.chance(pct / 100.0));
                }
                // A tail loss now and then ends in an RTO, with progress around it.
                c.rto_timeouts = u64::from(self.rng.chance(pct / 20.0));
            }
            Some(Fault::Slow(us)) => rtt = us,
            Some(Fault::Idle) => return LinkDelta::default(),
            Some(Fault::Dark) => {
                return LinkDelta {
                    counters: LinkCounters {
                        rto_timeouts: 1,
                        retrans_segs: 1,
                        ..LinkCounters::default()
                    },
                    rtt_p50_us: None,
                    silent_ms: None,
                    acked_age_ms: None,
                };
            }
            Some(Fault::Straggler) => {
                if (self.now.as_millis() / TICK.as_millis()) % 2 == 1 {
                    return LinkDelta {
                        counters: LinkCounters {
                            retrans_segs: 1,
                            ..LinkCounters::default()
                        },
                        rtt_p50_us: None,
                        silent_ms: Some(5),
                        acked_age_ms: None,
                    };
                }
            }
            Some(Fault::Silent { at }) => {
                let probe = at + Duration::from_millis(5);
                let (mut d, rto) = self.blackholed(at, Duration::ZERO);
                if probe <= self.now && probe + TICK > self.now {
                    d.counters.retrans_segs += 1;
                }
                let last_loss = rto.unwrap_or(probe);
                d.silent_ms = (probe <= self.now)
                    .then(|| u32::try_from((self.now - last_loss).as_millis()).unwrap_or(0));
                return d;
            }
            Some(Fault::Blackhole { at, jitter }) => return self.blackholed(at, jitter).0,
        }
        // The latest ACK came some time during the tick, by the kernel's clock.
        let acked_age_ms = u32::try_from(self.rng.below(100)).ok();
        LinkDelta {
            counters: c,
            rtt_p50_us: Some(rtt),
            silent_ms: None,
            acked_age_ms,
        }
    }

    /// A blackholed link's tick: RTOs at at + 0.2, 0.6, 1.4, 3.0, … s (+ up to
    /// `jitter`), with the time of the one that fell in this tick, if one did.
    fn blackholed(&mut self, at: Duration, jitter: Duration) -> (LinkDelta, Option<Duration>) {
        let offset = Duration::from_millis(
            self.rng
                .below(u64::try_from(jitter.as_millis()).unwrap_or(0) + 1),
        );
        let mut c = LinkCounters::default();
        let mut fired = None;
        let mut rto = at + Duration::from_millis(200) + offset;
        let mut backoff = Duration::from_millis(400);
        while rto <= self.now {
            if rto + TICK > self.now {
                c.rto_timeouts = 1;
                c.retrans_segs = 1;
                fired = Some(rto);
            }
            rto += backoff;
            backoff *= 2;
        }
        let d = LinkDelta {
            counters: c,
            rtt_p50_us: None,
            silent_ms: None,
            acked_age_ms: None,
        };
        (d, fired)
    }

    /// Advances one tick: every observer reports every peer, then the detector ticks.
    fn step(&mut self) -> Vec<Verdict> {
        self.now += TICK;
        let mut batch = Vec::new();
        for i in 0..self.observers.len() {
            let (name, local, peers) = self.observers[i].clone();
            for peer in peers {
                let delta = self.delta(i, peer);
                batch.push(Observation {
                    observer: name.clone(),
                    link: Link {
                        local,
                        remote: peer,
                    },
                    delta,
                });
            }
        }
        self.det.observe(&batch, self.now);
        let changes = self.det.tick(self.now);
        for v in &changes {
            assert_invariants(&self.det, v);
            self.log.push((self.now, v.clone()));
        }
        changes
    }

    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    fn state(&self, level: Level, path: &str) -> State {
        self.det
            .verdict(level, path)
            .map_or(State::Unknown, |v| v.state)
    }

    /// When the entity at `path` was first announced FAILED.
    fn first_failed(&self, path: &str) -> Option<Duration> {
        self.log
            .iter()
            .find(|(_, v)| v.entity.path.as_ref() == path && v.state == State::Failed)
            .map(|(t, _)| *t)
    }

    fn failed_changes(&self) -> Vec<&Verdict> {
        self.log
            .iter()
            .map(|(_, v)| v)
            .filter(|v| v.state == State::Failed)
            .collect()
    }
}

/// Every announced verdict has evidence; no entity above host level is FAILED from
/// outside unless at least two of its hosts, and at least half of those observed,
/// fail, as seen by at least two observers.
fn assert_invariants(det: &Detector, v: &Verdict) {
    if v.state != State::Unknown {
        assert!(!v.evidence.is_empty(), "verdict without evidence: {v:?}");
    }
    if v.state == State::Failed
        && v.entity.level != Level::Host
        && v.cause.is_none()
        && !v.local_fault
    {
        let e = &v.evidence;
        assert!(
            e.failed_hosts >= 2 && 2 * e.failed_hosts >= e.observed_hosts,
            "FAILED without a quorum of hosts: {v:?}"
        );
        assert!(
            v.observers.len() >= 2,
            "FAILED on one observer's word: {v:?}"
        );
    }
    let _ = det;
}

/// Every host of the data center except the observer itself.
fn all_peers(me: IpAddr, addr: fn(u8, u8, u8, u8) -> IpAddr) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for s in 1..=2 {
        for c in 1..=2 {
            for r in 1..=2 {
                for h in 1..=4 {
                    let a = addr(s, c, r, h);
                    if a != me {
                        out.push(a);
                    }
                }
            }
        }
    }
    out
}

fn rack_hosts(s: u8, c: u8, r: u8, addr: fn(u8, u8, u8, u8) -> IpAddr) -> Vec<IpAddr> {
    (1..=4).map(|h| addr(s, c, r, h)).collect()
}

fn one_observer(addr: fn(u8, u8, u8, u8) -> IpAddr) -> Sim {
    let me = addr(1, 1, 1, 1);
    Sim::new(&[("obs-a", me, all_peers(me, addr))])
}

#[test]
fn healthy_noise_and_one_percent_loss_never_fail() {
    let mut sim = one_observer(v4);
    for (i, peer) in all_peers(v4(1, 1, 1, 1), v4).into_iter().enumerate() {
        if i % 2 == 0 {
            sim.fault(0, peer, Fault::Loss(1.0));
        }
    }
    sim.run(Duration::from_secs(120));
    assert!(
        sim.failed_changes().is_empty(),
        "{:?}",
        sim.failed_changes()
    );
    assert_eq!(sim.state(Level::Site, "dc-2"), State::Healthy);
}

#[test]
fn heavy_loss_is_degraded_not_failed() {
    let mut sim = one_observer(v4);
    sim.run(Duration::from_secs(2));
    sim.fault(0, v4(2, 1, 1, 1), Fault::Loss(15.0));
    sim.run(Duration::from_secs(3));
    assert_eq!(sim.state(Level::Host, "dc-2/c1/r1/h1"), State::Degraded);
    assert!(sim.failed_changes().is_empty());
}

#[test]
fn rtt_far_above_baseline_is_degraded() {
    let mut sim = one_observer(v4);
    sim.run(Duration::from_secs(10));
    sim.fault(0, v4(2, 1, 1, 2), Fault::Slow(50_000));
    sim.run(Duration::from_secs(3));
    assert_eq!(sim.state(Level::Host, "dc-2/c1/r1/h2"), State::Degraded);
    let v = sim.det.verdict(Level::Host, "dc-2/c1/r1/h2").unwrap();
    let p = &v.evidence.peers[0];
    assert!(p.rtt_recent_us >= 4 * p.rtt_baseline_us, "{v:?}");
}

#[test]
fn one_failed_host_never_fails_its_rack() {
    let mut sim = one_observer(v4);
    sim.run(Duration::from_secs(2));
    sim.blackhole(0, &[v4(2, 1, 1, 3)], Duration::ZERO);
    sim.run(Duration::from_secs(5));
    let host = sim.det.verdict(Level::Host, "dc-2/c1/r1/h3").unwrap();
    assert_eq!(host.state, State::Failed);
    assert_eq!(host.cause, None);
    assert!(host.reason.contains("no progress"), "{}", host.reason);
    assert_eq!(host.evidence.peers[0].status, LinkStatus::Failed);
    assert_eq!(host.observers, vec![Arc::<str>::from("obs-a")]);
    assert_eq!(sim.state(Level::Rack, "dc-2/c1/r1"), State::Healthy);
}

/// Two observers in different racks of the other site: a verdict above host level
/// never rests on one.
fn two_observers(addr: fn(u8, u8, u8, u8) -> IpAddr) -> Sim {
    let a = addr(1, 1, 1, 1);
    let b = addr(1, 2, 2, 1);
    Sim::new(&[
        ("obs-a", a, all_peers(a, addr)),
        ("obs-b", b, all_peers(b, addr)),
    ])
}

fn rack_blackhole_reported_as_the_rack(addr: fn(u8, u8, u8, u8) -> IpAddr) {
    let mut sim = two_observers(addr);
    sim.run(Duration::from_secs(2));
    let start = sim.now;
    sim.blackhole(0, &rack_hosts(2, 1, 1, addr), Duration::ZERO);
    sim.blackhole(1, &rack_hosts(2, 1, 1, addr), Duration::ZERO);
    sim.run(Duration::from_secs(3));
    let first_rto = start + Duration::from_millis(200);
    let rack_failed_at = sim
        .first_failed("dc-2/c1/r1")
        .expect("rack announced FAILED");
    assert!(
        rack_failed_at <= first_rto + 2 * TICK,
        "rack FAILED at {rack_failed_at:?}, first RTO evidence at {first_rto:?}"
    );
    for v in sim.failed_changes() {
        match v.entity.level {
            Level::Rack => assert_eq!(v.entity.path.as_ref(), "dc-2/c1/r1"),
            Level::Host => assert_eq!(
                v.cause.as_ref().map(|c| c.path.as_ref()),
                Some("dc-2/c1/r1"),
                "a host was announced on its own: {v:?}"
            ),
            _ => panic!("nothing above the rack fails: {v:?}"),
        }
    }
    let rack = sim.det.verdict(Level::Rack, "dc-2/c1/r1").unwrap();
    assert_eq!(rack.evidence.failed_hosts, 4);
    assert!(rack.reason.contains("4 of 4"), "{}", rack.reason);
    assert_eq!(rack.observers.len(), 2, "{:?}", rack.observers);
    // One failed rack of two is not enough to vote its cabinet down.
    assert_eq!(sim.state(Level::Cabinet, "dc-2/c1"), State::Healthy);
}

#[test]
fn a_blackholed_rack_fails_as_the_rack_within_two_ticks() {
    rack_blackhole_reported_as_the_rack(v4);
}

#[test]
fn a_host_gone_silent_after_a_probe_fails_before_its_first_timeout() {
    let mut sim = two_observers(v4);
    sim.run(Duration::from_secs(2));
    let start = sim.now;
    let host = v4(2, 1, 1, 1);
    for observer in 0..2 {
        sim.fault(observer, host, Fault::Silent { at: start });
    }
    sim.run(Duration::from_secs(1));
    let failed = sim
        .first_failed("dc-2/c1/r1/h1")
        .expect("host announced FAILED");
    // The probe's silence is proven by the first sample 80 ms after it (start + 1
    // tick), confirmed a tick later; the first RTO (start + 200 ms) would be a tick
    // later still.
    assert!(
        failed <= start + 2 * TICK,
        "FAILED at {failed:?}, {:?} after the fault",
        failed - start
    );
    let v = sim.det.verdict(Level::Host, "dc-2/c1/r1/h1").unwrap();
    assert_eq!(v.observers.len(), 2, "{:?}", v.observers);
    assert_eq!(sim.failed_changes().len(), 1, "nothing else fails");
}

#[test]
fn retransmissions_answered_a_tick_later_fail_nothing() {
    let mut sim = two_observers(v4);
    sim.run(Duration::from_secs(1));
    for observer in 0..2 {
        for peer in rack_hosts(2, 1, 1, v4) {
            sim.fault(observer, peer, Fault::Straggler);
        }
    }
    sim.run(Duration::from_secs(10));
    assert!(
        sim.failed_changes().is_empty(),
        "{:?}",
        sim.failed_changes()
    );
}

#[test]
fn silence_due_asks_for_the_sample_that_proves_a_stall() {
    let mut sim = two_observers(v4);
    sim.run(Duration::from_secs(2));
    assert_eq!(
        sim.det.silence_due("obs-a"),
        None,
        "nothing silent while healthy"
    );
    // A probe 5 ms before the sample: proven 80 ms after the probe, not before.
    sim.fault(0, v4(2, 1, 1, 1), Fault::Straggler);
    while (sim.now.as_millis() / TICK.as_millis()).is_multiple_of(2) {
        sim.step();
    }
    let due = sim
        .det
        .silence_due("obs-a")
        .expect("a silent stall is watched");
    assert_eq!(
        due,
        sim.now - Duration::from_millis(5) + Duration::from_millis(80)
    );
    assert_eq!(
        sim.det.silence_due("obs-b"),
        None,
        "another observer's is not b's"
    );
    // Answered in the next tick: no longer watched.
    sim.step();
    assert_eq!(sim.det.silence_due("obs-a"), None);
}

#[test]
fn a_pending_failure_is_confirmed_when_due_not_a_tick_later() {
    let mut sim = two_observers(v4);
    sim.run(Duration::from_secs(2));
    assert_eq!(sim.det.confirm_due(), None, "nothing pending while healthy");
    let start = sim.now;
    sim.blackhole(0, &rack_hosts(2, 1, 1, v4), Duration::ZERO);
    sim.blackhole(1, &rack_hosts(2, 1, 1, v4), Duration::ZERO);
    let due = loop {
        sim.step();
        if let Some(due) = sim.det.confirm_due() {
            break due;
        }
        assert!(
            sim.now < start + Duration::from_secs(1),
            "nothing ever pending"
        );
    };
    let confirm = DetectorConfig::default().confirm;
    assert_eq!(
        due,
        sim.now + confirm,
        "due `confirm` after the failure was first seen"
    );
    assert!(confirm < TICK);
    assert_eq!(sim.state(Level::Rack, "dc-2/c1/r1"), State::Healthy);
    // Judged again when due, with nothing new observed: confirmed then.
    let changes = sim.det.tick(due);
    assert!(
        changes
            .iter()
            .any(|v| v.entity.path.as_ref() == "dc-2/c1/r1" && v.state == State::Failed),
        "{changes:?}"
    );
    assert!(sim.det.confirm_due().is_none_or(|next| next > due));
}

/// A blackholed rack whose links time out observer by observer: obs-a's links to two
/// of its hosts time out first and obs-b's to the other two, while the rest stay idle
/// (nothing sent, nothing to time out). No host has two observers yet.
fn rack_seen_half_by_each(sim: &mut Sim, a_sees: &[IpAddr], b_sees: &[IpAddr]) {
    let rack = rack_hosts(2, 1, 1, v4);
    for (observer, sees) in [(0, a_sees), (1, b_sees)] {
        for &h in &rack {
            if sees.contains(&h) {
                sim.blackhole(observer, &[h], Duration::ZERO);
            } else {
                sim.fault(observer, h, Fault::Idle);
            }
        }
    }
}

#[test]
fn two_observers_each_losing_two_hosts_fail_the_rack_without_waiting_host_by_host() {
    let mut sim = two_observers(v4);
    sim.run(Duration::from_secs(2));
    let start = sim.now;
    let rack = rack_hosts(2, 1, 1, v4);
    rack_seen_half_by_each(&mut sim, &rack[..2], &rack[2..]);
    sim.run(Duration::from_secs(3));
    let rack_failed_at = sim
        .first_failed("dc-2/c1/r1")
        .expect("rack announced FAILED");
    let first_rto = start + Duration::from_millis(200);
    assert!(
        rack_failed_at <= first_rto + 2 * TICK,
        "rack FAILED at {:?} after the first RTO, not at once",
        rack_failed_at - first_rto
    );
    let rack = sim.det.verdict(Level::Rack, "dc-2/c1/r1").unwrap();
    assert_eq!(rack.evidence.failed_hosts, 4, "{}", rack.reason);
    assert_eq!(rack.observers.len(), 2, "{:?}", rack.observers);
}

#[test]
fn two_observers_each_losing_one_host_wait_for_a_witness() {
    // One host each is what two unrelated stalls look like: the vote waits, host by
    // host, for a witness to speak, and only then counts them.
    let mut sim = two_observers(v4);
    sim.run(Duration::from_secs(2));
    let start = sim.now;
    let rack = rack_hosts(2, 1, 1, v4);
    rack_seen_half_by_each(&mut sim, &rack[..1], &rack[1..2]);
    sim.run(Duration::from_secs(3));
    let witness_wait = 2 * DetectorConfig::default().witness_slack;
    let first_failed = sim
        .log
        .iter()
        .find(|(_, v)| v.state == State::Failed)
        .map(|(t, v)| (*t - start, v.entity.path.to_string()));
    assert!(
        first_failed
            .as_ref()
            .is_none_or(|(after, _)| *after >= witness_wait),
        "{first_failed:?}: something failed before the witness wait ({witness_wait:?})"
    );
}

#[test]
fn one_observer_losing_a_whole_rack_fails_only_its_hosts() {
    // No verdict above host level rests on one observer, however much it sees fail.
    let mut sim = two_observers(v4);
    sim.run(Duration::from_secs(2));
    let rack = rack_hosts(2, 1, 1, v4);
    rack_seen_half_by_each(&mut sim, &rack, &[]);
    sim.run(Duration::from_secs(3));
    assert_ne!(sim.state(Level::Rack, "dc-2/c1/r1"), State::Failed);
    for v in sim.failed_changes() {
        assert_eq!(v.entity.level, Level::Host, "{v:?}");
    }
}

#[test]
fn ipv6_peers_roll_up_the_same_way() {
    rack_blackhole_reported_as_the_rack(v6);
}

#[test]
fn with_two_sites_observers_cannot_tell_the_other_site_dead_from_their_own_cut_off() {
    // Both observers sit in dc-1 and everything in dc-2 stops answering. From inside,
    // "dc-2 died" and "dc-1 is cut off" look the same: they name their own site as cut
    // off (flagged local) and blame nothing in dc-2. A third site tells them apart
    // (see dc_tests: an outside site names the failed one).
    let mut sim = two_observers(v4);
    sim.run(Duration::from_secs(2));
    let site: Vec<IpAddr> = all_peers(v4(1, 1, 1, 1), v4)
        .into_iter()
        .filter(|a| a.to_string().starts_with("10.2."))
        .collect();
    sim.blackhole(0, &site, Duration::from_millis(50));
    sim.blackhole(1, &site, Duration::from_millis(50));
    sim.run(Duration::from_secs(3));
    let own = sim
        .det
        .verdict(Level::Site, "dc-1")
        .expect("a verdict about dc-1");
    assert!(own.state == State::Failed && own.local_fault, "{own:?}");
    for v in sim.failed_changes() {
        assert!(!v.entity.path.starts_with("dc-2"), "blamed {v:?}");
    }
}

#[test]
fn the_observers_own_failure_blames_no_one_else() {
    let mut sim = one_observer(v4);
    sim.run(Duration::from_secs(2));
    let everyone = all_peers(v4(1, 1, 1, 1), v4);
    sim.blackhole(0, &everyone, Duration::from_millis(90));
    sim.run(Duration::from_secs(5));
    let me = sim
        .det
        .verdict(Level::Host, "dc-1/c1/r1/h1")
        .expect("a verdict about the observer");
    assert_eq!(me.state, State::Failed);
    assert!(me.local_fault && me.reason.starts_with("cut off"), "{me:?}");
    assert!(!me.evidence.peers.is_empty());
    for v in sim.failed_changes() {
        assert_eq!(
            v.entity.path.as_ref(),
            "dc-1/c1/r1/h1",
            "blamed someone else: {v:?}"
        );
    }
}

#[test]
fn recovery_clears_after_the_hold_and_not_before() {
    let mut sim = one_observer(v4);
    sim.run(Duration::from_secs(2));
    let peer = v4(2, 2, 2, 2);
    sim.blackhole(0, &[peer], Duration::ZERO);
    sim.run(Duration::from_secs(2));
    assert_eq!(sim.state(Level::Host, "dc-2/c2/r2/h2"), State::Failed);
    sim.heal(0, peer);
    let healed = sim.now;
    let hold = sim.det.config().recovery_hold;
    sim.run(hold - 2 * TICK);
    assert_eq!(
        sim.state(Level::Host, "dc-2/c2/r2/h2"),
        State::Failed,
        "released before the hold"
    );
    sim.run(4 * TICK);
    assert_eq!(
        sim.state(Level::Host, "dc-2/c2/r2/h2"),
        State::Healthy,
        "not released after the hold"
    );
    let back = sim
        .log
        .iter()
        .find(|(t, v)| *t > healed && v.entity.path.as_ref() == "dc-2/c2/r2/h2")
        .map(|(t, _)| *t - healed)
        .unwrap();
    assert!(back >= hold && back <= hold + 2 * TICK, "{back:?}");
}

#[test]
fn a_flapping_host_is_held_longer_each_time() {
    let mut sim = one_observer(v4);
    let peer = v4(2, 1, 2, 1);
    sim.run(Duration::from_secs(1));
    let mut recovered_after = Vec::new();
    for _ in 0..3 {
        sim.blackhole(0, &[peer], Duration::ZERO);
        sim.run(Duration::from_secs(1));
        sim.heal(0, peer);
        let healed = sim.now;
        // The damped hold never exceeds max_recovery_hold: a host still FAILED past it
        // (plus a tick to notice) is a bug, not a longer wait.
        let limit = sim.det.config().max_recovery_hold + 2 * TICK;
        while sim.state(Level::Host, "dc-2/c1/r2/h1") == State::Failed {
            assert!(
                sim.now - healed <= limit,
                "still FAILED {:?} after healing (the hold is at most {:?})",
                sim.now - healed,
                sim.det.config().max_recovery_hold
            );
            sim.step();
        }
        recovered_after.push(sim.now - healed);
    }
    assert!(
        recovered_after[1] > recovered_after[0] && recovered_after[2] > recovered_after[1],
        "{recovered_after:?}"
    );
}

/// When `path` was first announced FAILED, if it was.
fn first_failed(sim: &Sim, path: &str) -> Option<Duration> {
    sim.log
        .iter()
        .find(|(_, v)| v.entity.path.as_ref() == path && v.state == State::Failed)
        .map(|(t, _)| *t)
}

#[test]
fn a_failure_shorter_than_confirm_is_never_announced() {
    // confirm = 3 ticks, so a failure of one tick and one of two ticks both fall short.
    let cfg = DetectorConfig {
        confirm: 3 * TICK,
        ..DetectorConfig::default()
    };
    // Two observers, which agree at once: only confirm stands between them and FAILED.
    let (a, b) = (v4(1, 1, 1, 1), v4(1, 2, 2, 1));
    let mut sim = Sim::with_config(
        &[
            ("obs-a", a, all_peers(a, v4)),
            ("obs-b", b, all_peers(b, v4)),
        ],
        cfg.clone(),
    );
    let peer = v4(2, 1, 1, 2);
    let path = "dc-2/c1/r1/h2";
    sim.run(Duration::from_secs(2));
    for ticks in [1, 2] {
        sim.fault(0, peer, Fault::Dark);
        sim.fault(1, peer, Fault::Dark);
        for _ in 0..ticks {
            sim.step();
        }
        sim.heal(0, peer);
        sim.heal(1, peer);
        // Long enough for anything pending to be announced or released.
        sim.run(cfg.max_recovery_hold + Duration::from_secs(1));
        assert_eq!(
            first_failed(&sim, path),
            None,
            "a {ticks}-tick failure was announced: {:?}",
            sim.failed_changes()
        );
        assert_eq!(sim.state(Level::Host, path), State::Healthy);
    }
    assert!(
        sim.failed_changes().is_empty(),
        "{:?}",
        sim.failed_changes()
    );
}

#[test]
fn the_same_failure_held_past_confirm_is_announced_once_confirmed() {
    let cfg = DetectorConfig {
        confirm: 3 * TICK,
        ..DetectorConfig::default()
    };
    // Two observers agree at once (one alone waits for witnesses first).
    let (a, b) = (v4(1, 1, 1, 1), v4(1, 2, 2, 1));
    let mut sim = Sim::with_config(
        &[
            ("obs-a", a, all_peers(a, v4)),
            ("obs-b", b, all_peers(b, v4)),
        ],
        cfg.clone(),
    );
    let peer = v4(2, 1, 1, 2);
    let path = "dc-2/c1/r1/h2";
    sim.run(Duration::from_secs(2));
    sim.fault(0, peer, Fault::Dark);
    sim.fault(1, peer, Fault::Dark);
    // The first tick that sees the failure (undated: `Dark` says nothing of when in
    // the tick it began) cannot hold an answer from elsewhere that came after it; the
    // next one does, and starts the confirm period.
    let onset = sim.now + 2 * TICK;
    sim.run(cfg.confirm + 3 * TICK);
    let announced = first_failed(&sim, path).expect("a failure held past confirm is announced");
    assert_eq!(
        announced,
        onset + cfg.confirm,
        "announced as soon as confirm elapsed, not before or later"
    );
    assert_eq!(sim.state(Level::Host, path), State::Failed);
}

#[test]
fn silence_turns_a_host_unknown() {
    let mut sim = one_observer(v4);
    sim.run(Duration::from_secs(1));
    sim.fault(0, v4(2, 1, 1, 4), Fault::Idle);
    sim.run(sim.det.config().stale_after + Duration::from_secs(1));
    assert_eq!(sim.state(Level::Host, "dc-2/c1/r1/h4"), State::Unknown);
}

#[test]
fn independent_observers_raise_confidence_and_an_impaired_one_is_discounted() {
    let a = v4(1, 1, 1, 1);
    let b = v4(1, 2, 2, 1);
    let rack = rack_hosts(2, 1, 1, v4);
    // One observer alone never fails a rack: above host level no verdict rests on one.
    let mut alone = Sim::new(&[("obs-a", a, all_peers(a, v4))]);
    alone.run(Duration::from_secs(2));
    alone.blackhole(0, &rack, Duration::ZERO);
    alone.run(Duration::from_secs(2));
    assert_ne!(alone.state(Level::Rack, "dc-2/c1/r1"), State::Failed);
    let one = alone
        .det
        .verdict(Level::Host, "dc-2/c1/r1/h1")
        .unwrap()
        .clone();
    assert_eq!(one.state, State::Failed, "a host may rest on one observer");

    // Observer c talks to everyone but that rack, and all of its links die.
    let c = v4(1, 1, 2, 3);
    let c_peers: Vec<IpAddr> = all_peers(c, v4)
        .into_iter()
        .filter(|p| !rack.contains(p))
        .collect();
    let mut sim = Sim::new(&[
        ("obs-a", a, all_peers(a, v4)),
        ("obs-b", b, all_peers(b, v4)),
        ("obs-c", c, c_peers.clone()),
    ]);
    sim.run(Duration::from_secs(2));
    sim.blackhole(0, &rack, Duration::ZERO);
    sim.blackhole(1, &rack, Duration::ZERO);
    sim.blackhole(2, &c_peers, Duration::from_millis(50));
    sim.run(Duration::from_secs(2));
    let both = sim.det.verdict(Level::Rack, "dc-2/c1/r1").unwrap();
    assert_eq!(both.state, State::Failed);
    assert_eq!(both.observers.len(), 2, "{:?}", both.observers);
    assert!(
        both.confidence > one.confidence,
        "{} vs {}",
        both.confidence,
        one.confidence
    );
    // Observer c is cut off: a verdict about itself, and nothing it alone saw is blamed.
    let me = sim.det.verdict(Level::Host, "dc-1/c1/r2/h3").unwrap();
    assert!(me.local_fault, "{me:?}");
    for v in sim.failed_changes() {
        let p = v.entity.path.as_ref();
        assert!(
            p.starts_with("dc-2/c1/r1") || p == "dc-1/c1/r2/h3",
            "blamed on obs-c's word alone: {v:?}"
        );
    }
}

#[test]
fn a_peer_unreachable_from_one_observer_only_is_degraded_not_failed() {
    let a = v4(1, 1, 1, 1);
    let b = v4(1, 2, 2, 1);
    let mut sim = Sim::new(&[
        ("obs-a", a, all_peers(a, v4)),
        ("obs-b", b, all_peers(b, v4)),
    ]);
    sim.run(Duration::from_secs(2));
    sim.blackhole(0, &[v4(2, 2, 1, 1)], Duration::ZERO);
    sim.run(Duration::from_secs(2));
    assert_eq!(sim.state(Level::Host, "dc-2/c2/r1/h1"), State::Degraded);
    assert!(
        sim.failed_changes().is_empty(),
        "{:?}",
        sim.failed_changes()
    );
}

#[test]
fn an_unplaced_peer_is_tracked_on_its_own() {
    let me = v4(1, 1, 1, 1);
    let stranger: IpAddr = "192.0.2.7".parse().unwrap();
    let mut peers = all_peers(me, v4);
    peers.push(stranger);
    let mut sim = Sim::new(&[("obs-a", me, peers)]);
    sim.run(Duration::from_secs(1));
    sim.blackhole(0, &[stranger], Duration::ZERO);
    sim.run(Duration::from_secs(2));
    assert_eq!(sim.state(Level::Host, "unplaced/192.0.2.7"), State::Failed);
}

#[derive(Debug, Clone)]
enum Script {
    Blackhole(u8, u8, u8, u8),
    BlackholeRack(u8, u8, u8),
    Loss(u8, u8, u8, u8),
    Heal,
    Wait(u8),
}

fn script() -> impl Strategy<Value = Vec<Script>> {
    let idx = || 1u8..=2;
    let host = || 1u8..=4;
    prop::collection::vec(
        prop_oneof![
            (idx(), idx(), idx(), host()).prop_map(|(s, c, r, h)| Script::Blackhole(s, c, r, h)),
            (idx(), idx(), idx()).prop_map(|(s, c, r)| Script::BlackholeRack(s, c, r)),
            (idx(), idx(), idx(), host()).prop_map(|(s, c, r, h)| Script::Loss(s, c, r, h)),
            Just(Script::Heal),
            (1u8..40).prop_map(Script::Wait),
        ],
        1..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Under any script of faults, every verdict carries evidence and no entity is
    /// FAILED over a healthy majority of its observed children (checked on every
    /// change by `Sim::step`), and the snapshot agrees with the changes.
    #[test]
    fn invariants_hold_under_random_faults(steps in script()) {
        let mut sim = one_observer(v4);
        sim.run(Duration::from_secs(1));
        for step in steps {
            match step {
                Script::Blackhole(s, c, r, h) => sim.blackhole(0, &[v4(s, c, r, h)], Duration::from_millis(50)),
                Script::BlackholeRack(s, c, r) => sim.blackhole(0, &rack_hosts(s, c, r, v4), Duration::from_millis(50)),
                Script::Loss(s, c, r, h) => sim.fault(0, v4(s, c, r, h), Fault::Loss(1.0)),
                Script::Heal => sim.faults.clear(),
                Script::Wait(t) => sim.run(TICK * u32::from(t)),
            }
            sim.step();
        }
        let mut last: HashMap<String, State> = HashMap::new();
        for (_, v) in &sim.log {
            last.insert(v.entity.service_name(), v.state);
        }
        for v in sim.det.verdicts() {
            prop_assert_eq!(last.get(&v.entity.service_name()).copied(), Some(v.state));
            // Majority-healthy check against the live snapshot too (not for an entity
            // named cut off from inside: what is inside it is fine by definition).
            if v.state == State::Failed && v.entity.level != Level::Host && !v.local_fault {
                let children: Vec<_> = sim.det.verdicts().into_iter()
                    .filter(|c| c.entity.path.starts_with(&format!("{}/", v.entity.path))
                        && c.entity.path.matches('/').count() == v.entity.path.matches('/').count() + 1
                        && c.state != State::Unknown)
                    .collect();
                let healthy = children.iter().filter(|c| c.state == State::Healthy).count();
                prop_assert!(2 * healthy <= children.len(), "{:?} over {:?}", v, children);
            }
        }
    }
}

#[test]
fn a_forgotten_observer_says_nothing_and_reuses_its_links_when_it_returns() {
    let a = v4(1, 1, 1, 1);
    let b = v4(1, 2, 2, 1);
    let mut sim = Sim::new(&[
        ("obs-a", a, all_peers(a, v4)),
        ("obs-b", b, all_peers(b, v4)),
    ]);
    sim.run(Duration::from_secs(1));
    // Only obs-b sees this host fail; while it speaks, the host is DEGRADED (obs-a still reaches it).
    sim.blackhole(1, &[v4(2, 1, 1, 1)], Duration::ZERO);
    sim.run(Duration::from_secs(2));
    assert_eq!(sim.state(Level::Host, "dc-2/c1/r1/h1"), State::Degraded);
    let slots = sim.det.slots.len();
    sim.det.forget_observer("obs-b");
    sim.observers.truncate(1);
    sim.run(sim.det.config().recovery_hold + Duration::from_secs(1));
    assert_eq!(
        sim.state(Level::Host, "dc-2/c1/r1/h1"),
        State::Healthy,
        "obs-b's last word is gone"
    );
    // It comes back: same links, no new slots.
    sim.observers.push(("obs-b".into(), b, all_peers(b, v4)));
    sim.heal(1, v4(2, 1, 1, 1));
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.det.slots.len(), slots);
}

#[test]
fn observers_just_back_from_lost_raise_nothing_until_their_recovery_hold_passes() {
    let a = v4(1, 1, 1, 1);
    let b = v4(1, 2, 2, 1);
    let c = v4(1, 2, 1, 1);
    let host = v4(2, 1, 1, 1);
    let mut sim = Sim::new(&[
        ("obs-a", a, all_peers(a, v4)),
        ("obs-b", b, all_peers(b, v4)),
        ("obs-c", c, all_peers(c, v4)),
    ]);
    // obs-a carries no traffic to the host: no witness either way.
    sim.fault(0, host, Fault::Idle);
    sim.run(Duration::from_secs(2));
    sim.det.forget_observer("obs-b");
    sim.det.forget_observer("obs-c");
    let back = sim.observers.split_off(1);
    sim.run(Duration::from_secs(1));
    sim.observers.extend(back);
    sim.run(Duration::from_secs(1));
    // A second after they are back, their connections to the host stall: the
    // timeouts of connects and connections from while they were away.
    sim.blackhole(1, &[host], Duration::ZERO);
    sim.blackhole(2, &[host], Duration::ZERO);
    sim.run(Duration::from_secs(2));
    assert_ne!(
        sim.state(Level::Host, "dc-2/c1/r1/h1"),
        State::Failed,
        "{:?}",
        sim.det.verdict(Level::Host, "dc-2/c1/r1/h1")
    );
    // Past the recovery hold, they speak again.
    sim.heal(1, host);
    sim.heal(2, host);
    sim.run(sim.det.config().recovery_hold);
    sim.blackhole(1, &[host], Duration::ZERO);
    sim.blackhole(2, &[host], Duration::ZERO);
    sim.run(Duration::from_secs(2));
    assert_eq!(sim.state(Level::Host, "dc-2/c1/r1/h1"), State::Failed);
}

#[test]
fn new_failures_beside_progress_in_one_batch_name_no_one_cut_off() {
    let a = v4(1, 1, 1, 1);
    let mut sim = Sim::new(&[("obs-a", a, all_peers(a, v4))]);
    sim.run(Duration::from_secs(2));
    // Three hosts in three racks time out in the same tick in which every other link
    // progressed (which came first, the batch cannot say); the next tick they answer.
    let hosts = [v4(2, 1, 1, 1), v4(2, 1, 2, 1), v4(2, 2, 1, 1)];
    for &h in &hosts {
        sim.fault(0, h, Fault::Dark);
    }
    sim.step();
    for &h in &hosts {
        sim.heal(0, h);
    }
    // The agent judges again when a confirm falls due, before the next batch.
    while let Some(due) = sim.det.confirm_due().filter(|&d| d < sim.now + TICK) {
        let now = due.max(sim.now);
        for v in sim.det.tick(now) {
            sim.log.push((now, v));
        }
        if due <= sim.now {
            break;
        }
    }
    sim.run(Duration::from_secs(1));
    let named: Vec<_> = sim.log.iter().filter(|(_, v)| v.local_fault).collect();
    assert!(named.is_empty(), "{named:?}");
}

#[test]
fn a_sample_dates_its_silence_only_when_nothing_came_since_the_loss() {
    use crate::link::{LinkSample, RttHistogram};
    let ms = Duration::from_millis;
    let sample = |since_progress: Option<Duration>, since_loss: Option<Duration>| LinkSample {
        link: Link {
            local: v4(1, 1, 1, 1),
            remote: v4(2, 1, 1, 1),
        },
        delta: LinkCounters::default(),
        rtt: RttHistogram::default(),
        total: LinkCounters::default(),
        srtt_us: 0,
        since_progress,
        since_loss,
        since_acked: None,
    };
    let silent = |s: &LinkSample| Observation::from_sample(&Arc::from("a"), s).delta.silent_ms;
    assert_eq!(silent(&sample(Some(ms(400)), Some(ms(30)))), Some(30));
    assert_eq!(
        silent(&sample(None, Some(ms(30)))),
        Some(30),
        "never heard from"
    );
    assert_eq!(
        silent(&sample(Some(ms(10)), Some(ms(30)))),
        None,
        "answered since"
    );
    assert_eq!(silent(&sample(Some(ms(10)), None)), None, "nothing lost");
}

#[test]
fn a_peer_renaming_itself_on_every_reconnect_never_exhausts_observer_ids() {
    let topology = Topology::parse(std::path::Path::new("t.toml"), &topology_text()).unwrap();
    let mut det = Detector::new(topology, DetectorConfig::default());
    let link = Link {
        local: v4(1, 1, 1, 1),
        remote: v4(2, 1, 1, 1),
    };
    let observe = |det: &mut Detector, name: &str, t: u64| {
        let o = Observation {
            observer: Arc::from(name),
            link,
            delta: LinkDelta::default(),
        };
        det.observe([&o], Duration::from_millis(t));
    };
    // Every id handed out, each name seen once and then gone (a renaming loop).
    let ids = usize::from(u16::MAX) + 1;
    for i in 0..ids {
        observe(&mut det, &format!("o{i}"), 0);
    }
    assert_eq!(det.observers.len(), ids);
    observe(&mut det, "one-too-many", 0);
    assert_eq!(det.refused_observations(), 1, "refused, not a panic");
    det.forget_observer("o7");
    observe(&mut det, "renamed", 1);
    assert_eq!(det.refused_observations(), 1);
    assert_eq!(
        det.observer_ids.get("renamed"),
        Some(&7),
        "the forgotten id reused"
    );
    assert!(!det.observer_ids.contains_key("o7"));
    assert_eq!(det.observers.len(), ids);
    det.tick(Duration::from_millis(100));
}
