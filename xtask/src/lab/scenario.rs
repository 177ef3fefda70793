//! Scenarios: which fault, where it is injected, what is expected of the agents, and
//! what one run of it measured.
//!
//! A run waits until no earlier fault on an overlapping entity is within the detector's
//! flap window (so every run sees the undamped recovery hold), waits for the lab to
//! settle (agents up, every flow answering, every subscriber connected and nothing
//! NOT_SERVING for a while), injects the fault — an nft table in one router's forward
//! chain, or a CPU quota on some hosts ([`super::cgroup`]) — holds it, removes it, and
//! keeps watching until everything is SERVING again (at least [`WATCH_AFTER_CLEAR`],
//! so late verdicts are seen too, at most [`RECOVERY_TIMEOUT`]). Then it reads what
//! each subscriber received and what the traffic suffered, and judges the run against
//! the scenario's [`Expect`] ([`super::checks`]).
use std::{
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use faultline_proto::{health::health_check_response::ServingStatus, v1::State};

use super::{
    Lab, SubscriberKind,
    cgroup::Starved,
    checks::Check,
    net::{Network, core_port, progress},
    subscribe::{Status, VerdictSeen},
};
use crate::bench::check_interrupted;

/// How long a fault stays in.
pub(super) const HOLD: Duration = Duration::from_secs(5);
/// How long noise stays in (core-noise, cpu-contention): long enough for the
/// detector's windows (loss 2 s, RTT 1 s, degraded confirm 1 s) to fill several times.
pub(super) const NOISE_HOLD: Duration = Duration::from_secs(20);
/// Watch at least this long after clearing (the detector's recovery hold is 5 s).
const WATCH_AFTER_CLEAR: Duration = Duration::from_secs(8);
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(45);
/// Settled: every flow answered within this window…
const QUIET: Duration = Duration::from_secs(3);
/// …and nothing changed to NOT_SERVING within this one (so a run does not start in the
/// tail of the previous one's recovery).
const QUIET_VERDICTS: Duration = Duration::from_secs(10);
pub(super) const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The nft table a fault lives in; flushing its chain clears the fault. The table
/// itself stays until the namespace goes: deleting it unregisters its netfilter hook,
/// and the kernel then drops every packet queued to userspace in that namespace — in
/// the core, everything the delay stage holds. Clearing a fault at the core was a
/// burst of loss on every inter-site link, and once turned a host FAILED after core
/// noise had cleared.
const TABLE: &str = "lab_fault";
/// Two faults on overlapping entities are at least this far apart: the detector doubles
/// the recovery hold of an entity that re-enters FAILED within its flap window (60 s by
/// default), and a run should measure the plain hold, not the damped one.
const FLAP_SPACING: Duration = Duration::from_secs(65);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Kind {
    /// One host loses all traffic (dropped at its ToR, both ways).
    HostUnreachable,
    /// A whole rack is blackholed at its ToR, both ways (intra-rack too).
    RackBlackhole,
    /// Packets into a rack are dropped at its ToR; its own sends still leave.
    RackOnewayIn,
    /// Packets out of a rack are dropped at its ToR; it still receives.
    RackOnewayOut,
    /// A cabinet is blackholed at its cabinet router (between its racks too).
    CabinetBlackhole,
    /// A site is cut off from the others at the core, both ways.
    SitePartition,
    /// Packets into a site are dropped at the core; it can still send.
    SiteOnewayIn,
    /// Packets out of a site are dropped at the core; it still receives. Its
    /// observers' data sent just before the cut is still acknowledged for a whole RTT.
    SiteOnewayOut,
    /// 3% of the packets into a rack are dropped at its ToR (gray failure).
    GrayLoss,
    /// 1% of every packet crossing the core is dropped (noise: nothing should fail).
    CoreNoise,
    /// An observer's own NIC fails: one host's traffic is dropped at its ToR, and its
    /// own agent must name itself cut off while the others name it.
    ObserverNic,
    /// Half the hosts' agents and their traffic get 5% of one core (a CPU quota):
    /// nothing should fail, nothing above host level should be DEGRADED.
    CpuContention,
    /// The first site blackholed behind its border (its site router drops everything
    /// on its cabinet ports) while it serves a BGP VIP with the second site: traffic
    /// moves with `faultline announce`, stays without it, and moves on an edge link
    /// cut for reference (see `lab::bgp`).
    BgpFailover,
}

impl Kind {
    pub(super) fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }

    /// Every scenario, in the order `all` runs them: faults on overlapping entities
    /// (the dc-a/c1 rack and cabinet, the dc-c site) interleaved with others, so the
    /// flap spacing between them costs little waiting. bgp-failover (two faults of all
    /// of dc-a, a flap spacing apart) comes last.
    pub(super) const ALL: [Self; 13] = [
        Self::HostUnreachable,
        Self::RackBlackhole,
        Self::SitePartition,
        Self::ObserverNic,
        Self::CoreNoise,
        Self::CabinetBlackhole,
        Self::SiteOnewayIn,
        Self::CpuContention,
        Self::RackOnewayIn,
        Self::GrayLoss,
        Self::RackOnewayOut,
        Self::SiteOnewayOut,
        Self::BgpFailover,
    ];

    /// The hard failures `cargo xtask bench lab` times, in round-robin order.
    pub(super) const HARD: [Self; 5] = [
        Self::HostUnreachable,
        Self::RackBlackhole,
        Self::SitePartition,
        Self::ObserverNic,
        Self::CabinetBlackhole,
    ];

    /// How long one run holds the fault.
    pub(super) fn hold(self) -> Duration {
        match self {
            Self::CoreNoise | Self::CpuContention => NOISE_HOLD,
            _ => HOLD,
        }
    }
}

/// What inside subscribers must name (besides what they must not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum InsideNames {
    /// Nothing is required (one-way faults: the inside may or may not find itself cut off).
    Nothing,
    /// Exactly its own host, FAILED with `local_fault` (a host that lost its network).
    OwnHost,
    /// An entity that encloses its own host and lies within the failed one (its host,
    /// rack, … up to the failed entity itself), FAILED with `local_fault`: the smallest
    /// one it can still tell apart, e.g. its host when the rack's own links are cut too.
    OwnEnclosing,
}

/// What the agents are expected to say, per scenario (see [`Scenario::resolve`]).
#[derive(Clone, Debug)]
pub(super) struct Expect {
    /// The entity's path whose health service (`Scenario::expected`) must go NOT_SERVING
    /// within [`super::checks::DETECT_BOUND`] at every outside subscriber. It and the
    /// entities inside it may go NOT_SERVING anywhere; nothing else may, except an
    /// inside subscriber's own enclosing entity flagged `local_fault`.
    pub(super) failed_path: Option<String>,
    pub(super) inside_names: InsideNames,
    /// A gray failure: this entity should turn DEGRADED (seen over Verdicts; measured and
    /// reported against the 3 s goal, not a pass/fail check).
    pub(super) degraded: Option<String>,
    /// Nothing at all may go NOT_SERVING.
    pub(super) no_not_serving: bool,
    /// Nothing above host level may turn DEGRADED or FAILED (over Verdicts).
    pub(super) calm_above_host: bool,
}

/// Where a subscriber sits relative to the fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Vantage {
    Inside,
    SameSite,
    OtherSite,
}

impl Vantage {
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Inside => "inside",
            Self::SameSite => "same site",
            Self::OtherSite => "other site",
        }
    }
}

/// One scenario, resolved against the lab's topology.
#[derive(Clone)]
pub(super) struct Scenario {
    pub(super) kind: Kind,
    /// The entity the fault takes out, as a health service name (`rack/dc-a/c1/r1`);
    /// None when nothing should fail.
    pub(super) expected: Option<String>,
    pub(super) expect: Expect,
    /// Hosts whose agents (and traffic threads) the fault starves of CPU.
    pub(super) starve: Vec<usize>,
    /// Router namespace the nft table goes into, and a description of it.
    pub(super) router: String,
    pub(super) router_role: String,
    pub(super) rules: Vec<String>,
    /// Hosts inside the faulty entity.
    pub(super) inside: Vec<usize>,
    /// The scenario's subscribers (host indices) and where each sits.
    pub(super) subscribers: Vec<(usize, Vantage)>,
}

impl Scenario {
    /// Picks the target deterministically from the topology: the first rack with two or
    /// more hosts, the first cabinet with two or more racks in a site with another
    /// cabinet, the last site, the first host of the second site.
    pub(super) fn resolve(
        kind: Kind,
        lab_net: &Network,
        t: &super::topology::Topology,
    ) -> Result<Self> {
        let rack = t.racks.iter().position(|r| r.hosts.len() >= 2);
        let cabinet = t
            .cabinets
            .iter()
            .position(|c| c.racks.len() >= 2 && t.sites[c.site].cabinets.len() >= 2);
        let site = t.sites.len() - 1;
        let drop_both = |prefixes: &[super::topology::Prefix]| -> Vec<String> {
            prefixes
                .iter()
                .flat_map(|p| {
                    let f = p.nft_family();
                    [
                        format!("{f} daddr {p} counter drop"),
                        format!("{f} saddr {p} counter drop"),
                    ]
                })
                .collect()
        };
        let unreachable_host = t
            .hosts
            .iter()
            .position(|h| h.site == 1.min(t.sites.len() - 1))
            .unwrap_or(0);
        let mut starve = Vec::new();
        let (expected, router, role, rules, inside): (
            Option<String>,
            String,
            String,
            Vec<String>,
            Vec<usize>,
        ) = match kind {
            Kind::HostUnreachable | Kind::ObserverNic => {
                let h = if kind == Kind::HostUnreachable {
                    unreachable_host
                } else {
                    // A host in a rack of two or more, away from every other scenario's
                    // target (so runs need not wait out each other's flap window).
                    (0..t.hosts.len())
                        .find(|&h| {
                            let r = t.hosts[h].rack;
                            t.racks[r].hosts.len() >= 2
                                && t.hosts[h].site != site
                                && Some(r) != rack
                                && Some(t.racks[r].cabinet) != cabinet
                                && h != unreachable_host
                        })
                        .unwrap_or((unreachable_host + 1) % t.hosts.len())
                };
                let host = &t.hosts[h];
                let rules = host
                    .addresses
                    .iter()
                    .flat_map(|a| {
                        let f = if a.is_ipv6() { "ip6" } else { "ip" };
                        [
                            format!("{f} daddr {a} counter drop"),
                            format!("{f} saddr {a} counter drop"),
                        ]
                    })
                    .collect();
                (
                    Some(format!("host/{}", host.path)),
                    lab_net.tors[host.rack].clone(),
                    format!("ToR of {}", t.racks[host.rack].path),
                    rules,
                    vec![h],
                )
            }
            Kind::RackBlackhole | Kind::RackOnewayIn | Kind::RackOnewayOut | Kind::GrayLoss => {
                let Some(r) = rack else {
                    bail!("no rack with two hosts to fail")
                };
                let rk = &t.racks[r];
                let rules = match kind {
                    Kind::RackBlackhole => drop_both(&rk.prefixes),
                    Kind::RackOnewayIn => rk
                        .prefixes
                        .iter()
                        .map(|p| format!("{} daddr {p} counter drop", p.nft_family()))
                        .collect(),
                    Kind::RackOnewayOut => rk
                        .prefixes
                        .iter()
                        .map(|p| format!("{} saddr {p} counter drop", p.nft_family()))
                        .collect(),
                    _ => rk
                        .prefixes
                        .iter()
                        .map(|p| {
                            format!(
                                "{} daddr {p} numgen random mod 100 < 3 counter drop",
                                p.nft_family()
                            )
                        })
                        .collect(),
                };
                (
                    Some(format!("rack/{}", rk.path)),
                    lab_net.tors[r].clone(),
                    format!("ToR of {}", rk.path),
                    rules,
                    rk.hosts.clone(),
                )
            }
            Kind::CabinetBlackhole => {
                let Some(c) = cabinet else {
                    bail!("no cabinet with two racks in a site with two cabinets")
                };
                let cab = &t.cabinets[c];
                let prefixes: Vec<_> = cab
                    .racks
                    .iter()
                    .flat_map(|&r| t.racks[r].prefixes.clone())
                    .collect();
                let inside = cab
                    .racks
                    .iter()
                    .flat_map(|&r| t.racks[r].hosts.clone())
                    .collect();
                (
                    Some(format!("cabinet/{}", cab.path)),
                    lab_net.cabinets[c].clone(),
                    format!("router of {}", cab.path),
                    drop_both(&prefixes),
                    inside,
                )
            }
            Kind::SitePartition | Kind::SiteOnewayIn | Kind::SiteOnewayOut => {
                let port = core_port(&t.sites[site].tag);
                let into = format!("oifname \"{port}\" counter drop");
                let out_of = format!("iifname \"{port}\" counter drop");
                let rules = match kind {
                    Kind::SiteOnewayIn => vec![into],
                    Kind::SiteOnewayOut => vec![out_of],
                    _ => vec![into, out_of],
                };
                let inside = (0..t.hosts.len())
                    .filter(|&h| t.hosts[h].site == site)
                    .collect();
                (
                    Some(format!("site/{}", t.sites[site].name)),
                    lab_net.core.clone(),
                    "core".to_owned(),
                    rules,
                    inside,
                )
            }
            Kind::BgpFailover => {
                let site = &t.sites[0];
                let rules = site
                    .cabinets
                    .iter()
                    .flat_map(|&c| {
                        let port = format!("c-{}", t.cabinets[c].tag);
                        [
                            format!("oifname \"{port}\" counter drop"),
                            format!("iifname \"{port}\" counter drop"),
                        ]
                    })
                    .collect();
                let inside = (0..t.hosts.len())
                    .filter(|&h| t.hosts[h].site == 0)
                    .collect();
                (
                    Some(format!("site/{}", site.name)),
                    lab_net.sites[0].clone(),
                    format!("site router of {} (its cabinet ports)", site.name),
                    rules,
                    inside,
                )
            }
            Kind::CoreNoise => (
                None,
                lab_net.core.clone(),
                "core".to_owned(),
                vec!["numgen random mod 100 < 1 counter drop".to_owned()],
                Vec::new(),
            ),
            Kind::CpuContention => {
                // Every other host, so every rack with two hosts and every site has
                // starved and unstarved agents side by side.
                starve = (0..t.hosts.len()).filter(|h| h % 2 == 1).collect();
                (
                    None,
                    String::new(),
                    format!("CPU quota of {} hosts", starve.len()),
                    Vec::new(),
                    starve.clone(),
                )
            }
        };
        let failed_path = expected
            .as_ref()
            .filter(|_| kind != Kind::GrayLoss)
            .and_then(|e: &String| e.split_once('/'))
            .map(|(_, p)| p.to_owned());
        let expect = Expect {
            failed_path,
            inside_names: match kind {
                Kind::HostUnreachable | Kind::ObserverNic => InsideNames::OwnHost,
                Kind::RackBlackhole
                | Kind::CabinetBlackhole
                | Kind::SitePartition
                | Kind::BgpFailover => InsideNames::OwnEnclosing,
                _ => InsideNames::Nothing,
            },
            degraded: (kind == Kind::GrayLoss)
                .then(|| rack.map(|r| format!("rack/{}", t.racks[r].path)))
                .flatten(),
            no_not_serving: matches!(kind, Kind::GrayLoss | Kind::CoreNoise | Kind::CpuContention),
            calm_above_host: matches!(kind, Kind::CoreNoise | Kind::CpuContention),
        };
        // Gray loss: nothing should fail; the rack should turn DEGRADED.
        let expected = if kind == Kind::GrayLoss {
            None
        } else {
            expected
        };
        // Subscribers: the first host inside the fault, then in every site the first
        // host outside it.
        let mut subscribers = Vec::new();
        if let Some(&h) = inside.first() {
            subscribers.push((h, Vantage::Inside));
        }
        let target_site = inside.first().map(|&h| t.hosts[h].site);
        for s in 0..t.sites.len() {
            if let Some(h) =
                (0..t.hosts.len()).find(|&h| t.hosts[h].site == s && !inside.contains(&h))
            {
                let v = if Some(s) == target_site {
                    Vantage::SameSite
                } else {
                    Vantage::OtherSite
                };
                subscribers.push((h, v));
            }
        }
        Ok(Self {
            kind,
            expected,
            expect,
            starve,
            router,
            router_role: role,
            rules,
            inside,
            subscribers,
        })
    }

    /// Where `host` sits relative to this fault.
    pub(super) fn vantage(&self, host: usize, t: &super::topology::Topology) -> Vantage {
        if self.inside.contains(&host) {
            Vantage::Inside
        } else if self
            .inside
            .first()
            .is_some_and(|&h| t.hosts[h].site == t.hosts[host].site)
        {
            Vantage::SameSite
        } else {
            Vantage::OtherSite
        }
    }

    /// Whether this fault and `other` (an entity path) overlap: one contains the other.
    /// Whether this scenario's entity (the one it fails, or a gray failure's) and
    /// `other` overlap: a gray failure injected while its rack still recovers from
    /// an earlier fault (its stuck connections re-sending on their backoff timers)
    /// would measure that fault's tail.
    fn overlaps(&self, other: &str) -> bool {
        let gray = self
            .expect
            .degraded
            .as_deref()
            .and_then(|e| e.split_once('/'))
            .map(|(_, p)| p);
        self.expect
            .failed_path
            .as_deref()
            .or(gray)
            .is_some_and(|p| within(p, other) || within(other, p))
    }

    fn inject(&self, lab: &Lab) -> Result<Option<Starved>> {
        let starved = if self.starve.is_empty() {
            None
        } else {
            let pids = lab.agents.pids();
            let hosts: Vec<(String, Vec<u32>, Vec<i32>)> = self
                .starve
                .iter()
                .map(|&h| {
                    (
                        lab.topology.hosts[h].name.clone(),
                        pids.get(h).copied().into_iter().collect(),
                        lab.traffic.threads_of.of(&[h]),
                    )
                })
                .collect();
            let s = Starved::start(&hosts)?;
            println!(
                "  starved {} hosts' agents{}, each in its own cgroup ({} / {} µs of CPU); {} tasks moved",
                hosts.len(),
                match s.reach {
                    super::cgroup::Reach::AgentsAndTraffic => " and traffic threads",
                    super::cgroup::Reach::AgentsOnly => {
                        " (not their traffic: cgroup v2 moves whole processes)"
                    }
                },
                super::cgroup::QUOTA_US,
                super::cgroup::PERIOD_US,
                s.moved
            );
            Some(s)
        };
        if self.rules.is_empty() {
            return Ok(starved);
        }
        let rules: String = self
            .rules
            .iter()
            .map(|r| format!("add rule inet {TABLE} path {r}\n"))
            .collect();
        // One transaction: the table and chain (kept from an earlier fault, if any),
        // emptied, then this fault's rules.
        Network::nft(
            &self.router,
            &format!(
                "table inet {TABLE} {{\n  chain path {{\n    type filter hook forward priority 0; policy accept;\n  }}\n}}\nflush chain inet {TABLE} path\n{rules}"
            ),
        )?;
        Ok(starved)
    }

    /// Empties the fault's chain (see [`TABLE`]); returns the packets its rules dropped.
    fn clear(&self) -> Result<u64> {
        if self.rules.is_empty() {
            return Ok(0);
        }
        let listing = Network::nft(&self.router, &format!("list table inet {TABLE}\n"))?;
        let dropped = listing
            .split("counter packets ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        Network::nft(&self.router, &format!("flush chain inet {TABLE} path\n"))?;
        Ok(dropped)
    }
}

/// One subscriber as a scenario sees it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Watcher {
    /// Its index in the lab's status log.
    pub(super) ix: usize,
    pub(super) host: usize,
    pub(super) vantage: Vantage,
    pub(super) kind: SubscriberKind,
}

/// What one subscriber saw in one run.
#[derive(Clone, Debug)]
pub(super) struct Seen {
    pub(super) host: usize,
    pub(super) vantage: Vantage,
    pub(super) kind: SubscriberKind,
    /// Injection → first NOT_SERVING of the expected entity.
    pub(super) detect: Option<Duration>,
    /// Injection → first DEGRADED (or worse) verdict of the gray failure's entity
    /// (tonic subscribers only: health has no DEGRADED).
    pub(super) degraded: Option<Duration>,
    /// The first NOT_SERVING of anything after injection: (delay, service).
    pub(super) first: Option<(Duration, String)>,
    /// Clearing → the expected entity SERVING again for good (None: not recovered, or
    /// never NOT_SERVING). Negative values are not possible: recovery before the
    /// clearing counts as a flap.
    pub(super) recover: Option<Duration>,
    pub(super) recovered: bool,
    /// Times the expected entity went back to SERVING while the fault was still in.
    pub(super) flaps: u32,
    /// Every other service that went NOT_SERVING: (service, relation, delay after injection).
    pub(super) others: Vec<(String, &'static str, Duration)>,
}

/// What the traffic suffered in one run.
#[derive(Clone, Debug, Default)]
pub(super) struct Impact {
    pub(super) requests: usize,
    pub(super) failed: usize,
    pub(super) flows_failed: usize,
    /// Of those, flows with neither end inside the faulty entity (collateral damage).
    pub(super) flows_failed_outside: usize,
    /// Injection → first failed request.
    pub(super) first_failed: Option<Duration>,
    /// Clearing → last failed request (negative: before clearing), in ms.
    pub(super) last_failed_after_clear_ms: Option<i64>,
    /// Failed requests in the settle window before injection (the lab's own noise).
    pub(super) failed_before: usize,
}

/// One run of one scenario.
pub(super) struct Run {
    pub(super) settled: Result<Duration, String>,
    pub(super) seen: Vec<Seen>,
    pub(super) impact: Impact,
    pub(super) dropped_packets: u64,
    /// CPU used during the run, in % of one core: (agents total, busiest agent, delay stage, xtask).
    pub(super) cpu: super::report::Cpu,
    /// Median request RTT per site pair just before injection.
    pub(super) rtt: Vec<(String, Duration)>,
    /// The run judged against [`Expect`].
    pub(super) checks: Vec<Check>,
    pub(super) injected: Instant,
    pub(super) cleared: Instant,
    pub(super) end: Instant,
}

/// Everything a run recorded, for [`super::checks::judge`].
pub(super) struct Record<'a> {
    pub(super) watchers: &'a [Watcher],
    pub(super) statuses: &'a [Status],
    pub(super) verdicts: &'a [VerdictSeen],
    pub(super) injected: Instant,
    pub(super) cleared: Instant,
    pub(super) end: Instant,
    pub(super) settled: &'a Result<Duration, String>,
    /// None when the delay stage lived through the run; else how it ended.
    pub(super) delay_dead: Option<String>,
}

impl Scenario {
    /// Runs the scenario once, holding the fault for `hold`.
    pub(super) fn run(&self, lab: &mut Lab, hold: Duration) -> Result<Run> {
        self.wait_flap_spacing(lab)?;
        let settled = lab.settle(SETTLE_TIMEOUT)?;
        match &settled {
            Ok(d) => println!("  settled after {:.1} s", d.as_secs_f64()),
            Err(why) => {
                println!("  NOT settled after {SETTLE_TIMEOUT:?} ({why}); injecting anyway");
            }
        }
        let rtt = lab.rtt_by_site_pair(QUIET);
        let cpu_start = lab.cpu_snapshot();
        let injected = Instant::now();
        let wall = utc_time_of_day();
        let starved = self.inject(lab)?;
        if let Some(p) = &self.expect.failed_path {
            lab.faults.push((injected, p.clone()));
        }
        println!(
            "  injected at {wall} UTC at the {} ({} rule(s)); holding {hold:?}",
            self.router_role,
            self.rules.len()
        );
        let hold_end = injected + hold;
        let mut shown = Instant::now();
        while Instant::now() < hold_end {
            check_interrupted()?;
            sleep(Duration::from_millis(50));
            if hold > QUIET_VERDICTS && shown.elapsed() >= Duration::from_secs(10) {
                shown = Instant::now();
                progress(&format!(
                    "  holding: {:.0} of {:.0} s",
                    injected.elapsed().as_secs_f64(),
                    hold.as_secs_f64()
                ));
            }
        }
        let cleared = Instant::now();
        let dropped_packets = self.clear()?;
        drop(starved);
        println!("  cleared ({dropped_packets} packets dropped); watching recovery");
        let watchers = self.watchers(lab);
        let ixs: Vec<usize> = watchers.iter().map(|w| w.ix).collect();
        loop {
            check_interrupted()?;
            sleep(Duration::from_millis(200));
            let waited = cleared.elapsed();
            if waited >= RECOVERY_TIMEOUT {
                println!("  not everything SERVING {RECOVERY_TIMEOUT:?} after clearing");
                break;
            }
            if waited >= WATCH_AFTER_CLEAR && lab.not_serving_now(&ixs).is_empty() {
                break;
            }
        }
        let end = Instant::now();
        let cpu = lab.cpu_since(&cpu_start);
        let delay_dead = lab.delay_dead();
        let statuses = lab.subscribers.log.all();
        let verdicts = lab.subscribers.verdicts.all();
        let seen = watchers
            .iter()
            .map(|w| self.seen(lab, &statuses, &verdicts, *w, injected, cleared, end))
            .collect();
        let record = Record {
            watchers: &watchers,
            statuses: &statuses,
            verdicts: &verdicts,
            injected,
            cleared,
            end,
            settled: &settled,
            delay_dead,
        };
        let checks = super::checks::judge(self, lab, &record);
        let impact = impact(lab, &self.inside, injected, cleared, end);
        Ok(Run {
            settled,
            seen,
            impact,
            dropped_packets,
            cpu,
            rtt,
            checks,
            injected,
            cleared,
            end,
        })
    }

    /// Waits until every earlier fault on an overlapping entity, and every NOT_SERVING
    /// of an overlapping entity at any subscriber (a wrong verdict also starts the
    /// detector's flap window), is [`FLAP_SPACING`] old.
    fn wait_flap_spacing(&self, lab: &Lab) -> Result<()> {
        let faults = lab
            .faults
            .iter()
            .filter(|(_, p)| self.overlaps(p))
            .map(|(at, _)| *at);
        let statuses = lab.subscribers.log.all();
        let verdicts = statuses
            .iter()
            .filter(|st| {
                st.status == ServingStatus::NotServing
                    && lab.services[st.service]
                        .split_once('/')
                        .is_some_and(|(_, p)| self.overlaps(p))
            })
            .map(|st| st.at);
        let Some(last) = faults.chain(verdicts).max() else {
            return Ok(());
        };
        let until = last + FLAP_SPACING;
        let mut waited = false;
        while Instant::now() < until {
            check_interrupted()?;
            waited = true;
            progress(&format!(
                "  waiting {:.0} s more: an overlapping fault or verdict was {:.0} s ago (flap window)",
                until
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64(),
                last.elapsed().as_secs_f64()
            ));
            sleep(Duration::from_millis(500));
        }
        if waited {
            println!();
        }
        Ok(())
    }

    /// This scenario's subscribers: its own tonic ones, then every grpcio one.
    pub(super) fn watchers(&self, lab: &Lab) -> Vec<Watcher> {
        let mut out: Vec<Watcher> = self
            .subscribers
            .iter()
            .filter_map(|&(host, vantage)| {
                Some(Watcher {
                    ix: lab.subscriber_ix(host, SubscriberKind::Tonic)?,
                    host,
                    vantage,
                    kind: SubscriberKind::Tonic,
                })
            })
            .collect();
        for (ix, &(host, kind)) in lab.subscriber_at.iter().enumerate() {
            if kind == SubscriberKind::Grpcio {
                out.push(Watcher {
                    ix,
                    host,
                    vantage: self.vantage(host, &lab.topology),
                    kind,
                });
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn seen(
        &self,
        lab: &Lab,
        statuses: &[Status],
        verdicts: &[VerdictSeen],
        w: Watcher,
        injected: Instant,
        cleared: Instant,
        end: Instant,
    ) -> Seen {
        let mut seen = Seen {
            host: w.host,
            vantage: w.vantage,
            kind: w.kind,
            detect: None,
            degraded: None,
            first: None,
            recover: None,
            recovered: true,
            flaps: 0,
            others: Vec::new(),
        };
        if let Some(entity) = &self.expect.degraded {
            let path = entity.split_once('/').map_or(entity.as_str(), |(_, p)| p);
            seen.degraded = verdicts
                .iter()
                .filter(|v| v.subscriber == w.ix && v.at >= injected && v.at <= end)
                .find(|v| v.path == path && matches!(v.state, State::Degraded | State::Failed))
                .map(|v| v.at - injected);
        }
        let mine: Vec<&Status> = statuses.iter().filter(|s| s.subscriber == w.ix).collect();
        let expected = self
            .expected
            .as_ref()
            .and_then(|e| lab.services.iter().position(|s| s == e));
        let target_path = self.expect.failed_path.clone().or_else(|| {
            self.expect
                .degraded
                .as_ref()
                .and_then(|e| e.split_once('/'))
                .map(|(_, p)| p.to_owned())
        });
        // Status of each service just before injection.
        let mut state: Vec<ServingStatus> = vec![ServingStatus::Unknown; lab.services.len()];
        for s in mine.iter().filter(|s| s.at < injected) {
            state[s.service] = s.status;
        }
        let mut last_serving_of_expected: Option<Instant> = None;
        for s in mine.iter().filter(|s| s.at >= injected && s.at <= end) {
            let was = state[s.service];
            state[s.service] = s.status;
            let after = s.at - injected;
            let name = &lab.services[s.service];
            if s.status == ServingStatus::NotServing && was != ServingStatus::NotServing {
                if seen.first.is_none() {
                    seen.first = Some((after, name.clone()));
                }
                if Some(s.service) == expected {
                    if seen.detect.is_none() {
                        seen.detect = Some(after);
                    }
                } else if !seen.others.iter().any(|(n, _, _)| n == name) {
                    seen.others
                        .push((name.clone(), relation(name, target_path.as_deref()), after));
                }
            }
            if Some(s.service) == expected
                && s.status == ServingStatus::Serving
                && was == ServingStatus::NotServing
            {
                if s.at < cleared {
                    seen.flaps += 1;
                }
                last_serving_of_expected = Some(s.at);
            }
        }
        if let Some(e) = expected {
            seen.recovered = state[e] != ServingStatus::NotServing;
            if seen.detect.is_some() && seen.recovered {
                seen.recover =
                    last_serving_of_expected.map(|at| at.saturating_duration_since(cleared));
            }
        }
        seen
    }
}

/// `path` is `outer` or lies below it (`dc-a/c1/r1` within `dc-a/c1`, not `dc-a/c10`).
pub(super) fn within(path: &str, outer: &str) -> bool {
    path == outer
        || path
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// How a service that went NOT_SERVING relates to the fault's entity.
fn relation(service: &str, target: Option<&str>) -> &'static str {
    let path = service.split_once('/').map_or(service, |(_, p)| p);
    match target {
        Some(t) if path != t && within(path, t) => "inside",
        Some(t) if path != t && within(t, path) => "enclosing",
        _ => "elsewhere",
    }
}

fn impact(
    lab: &Lab,
    inside: &[usize],
    injected: Instant,
    cleared: Instant,
    end: Instant,
) -> Impact {
    let before = lab.traffic.log.between(injected - QUIET, injected);
    let during = lab.traffic.log.between(injected, end);
    let failed: Vec<_> = during.iter().filter(|r| r.rtt.is_none()).collect();
    let mut flows: Vec<u32> = failed.iter().map(|r| r.flow).collect();
    flows.sort_unstable();
    flows.dedup();
    Impact {
        requests: during.len(),
        failed: failed.len(),
        flows_failed: flows.len(),
        flows_failed_outside: flows
            .iter()
            .filter(|&&f| {
                let f = &lab.traffic.flows[f as usize];
                !inside.contains(&f.from) && !inside.contains(&f.to)
            })
            .count(),
        first_failed: failed.first().map(|r| r.at - injected),
        last_failed_after_clear_ms: failed.last().map(|r| {
            if r.at >= cleared {
                i64::try_from((r.at - cleared).as_millis()).unwrap_or(i64::MAX)
            } else {
                -i64::try_from((cleared - r.at).as_millis()).unwrap_or(i64::MAX)
            }
        }),
        failed_before: before.iter().filter(|r| r.rtt.is_none()).count(),
    }
}

/// Settled: every flow answered within [`QUIET`], every subscriber has every service,
/// and nothing is NOT_SERVING or changed to it within [`QUIET_VERDICTS`].
pub(super) fn settled_now(lab: &Lab) -> Result<(), String> {
    let now = Instant::now();
    let recent = lab.traffic.log.between(now - QUIET, now);
    let mut answered = vec![false; lab.traffic.flows.len()];
    for r in recent.iter().filter(|r| r.rtt.is_some()) {
        answered[r.flow as usize] = true;
    }
    let silent = answered.iter().filter(|a| !**a).count();
    if silent > 0 {
        return Err(format!("{silent} flow(s) without an answer in {QUIET:?}"));
    }
    let all: Vec<usize> = (0..lab.subscriber_at.len()).collect();
    let statuses = lab.subscribers.log.all();
    for sub in &all {
        let known = statuses
            .iter()
            .filter(|s| s.subscriber == *sub)
            .map(|s| s.service)
            .collect::<std::collections::BTreeSet<_>>();
        if known.len() < lab.services.len() {
            return Err(format!(
                "subscriber {} has {} of {} services",
                lab.subscriber_label(*sub),
                known.len(),
                lab.services.len()
            ));
        }
    }
    let bad = lab.not_serving_now(&all);
    if !bad.is_empty() {
        return Err(format!("NOT_SERVING: {}", bad.join(", ")));
    }
    if let Some(s) = statuses
        .iter()
        .rev()
        .find(|s| s.status == ServingStatus::NotServing)
        && now - s.at < QUIET_VERDICTS
    {
        return Err(format!(
            "{} was NOT_SERVING {:?} ago",
            lab.services[s.service],
            now - s.at
        ));
    }
    Ok(())
}

/// Now as `HH:MM:SS.mmm` UTC, the agents' log timestamps' time of day: to find an
/// injection in their logs.
fn utc_time_of_day() -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ms = since_epoch.as_millis() % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_runs_every_scenario_once() {
        use clap::ValueEnum as _;
        let mut all = Kind::ALL.to_vec();
        all.dedup();
        assert_eq!(all.len(), Kind::value_variants().len());
        for k in Kind::value_variants() {
            assert!(Kind::ALL.contains(k), "{k:?} missing from Kind::ALL");
        }
    }

    #[test]
    fn within_respects_path_boundaries() {
        assert!(within("dc-a/c1/r1", "dc-a/c1"));
        assert!(within("dc-a/c1", "dc-a/c1"));
        assert!(!within("dc-a/c10", "dc-a/c1"));
        assert!(!within("dc-a", "dc-a/c1"));
    }
}
