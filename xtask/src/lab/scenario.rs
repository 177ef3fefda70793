//! Scenarios: which fault, where it is injected, and what one run of it measured.
//!
//! A run waits for the lab to settle (agents up, every flow answering, every
//! subscriber connected and nothing NOT_SERVING for a while), injects the fault as an
//! nft table in one router's forward chain, holds it [`HOLD`], deletes the table, and
//! keeps watching until everything is SERVING again (at least [`WATCH_AFTER_CLEAR`],
//! so late verdicts are seen too, at most [`RECOVERY_TIMEOUT`]). Then it reads what
//! each subscriber received and what the traffic suffered. It measures; it never
//! decides whether the detector was right.
use std::{
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use faultline_proto::health::health_check_response::ServingStatus;

use super::{Lab, net::Network, net::core_port, subscribe::Status};
use crate::bench::check_interrupted;

/// How long a fault stays in.
pub(super) const HOLD: Duration = Duration::from_secs(5);
/// Watch at least this long after clearing (the detector's recovery hold is 5 s).
const WATCH_AFTER_CLEAR: Duration = Duration::from_secs(8);
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(45);
/// Settled: every flow answered within this window…
const QUIET: Duration = Duration::from_secs(3);
/// …and nothing changed to NOT_SERVING within this one (so a run does not start in the
/// tail of the previous one's recovery).
const QUIET_VERDICTS: Duration = Duration::from_secs(10);
pub(super) const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The nft table a fault lives in; deleting it clears the fault.
const TABLE: &str = "lab_fault";

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
    /// 3% of the packets into a rack are dropped at its ToR (gray failure).
    GrayLoss,
    /// 1% of every packet crossing the core is dropped (noise: nothing should fail).
    CoreNoise,
}

impl Kind {
    pub(super) fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }
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
pub(super) struct Scenario {
    pub(super) kind: Kind,
    /// The entity the fault takes out, as a health service name (`rack/dc-a/c1/r1`);
    /// None when nothing should fail.
    pub(super) expected: Option<String>,
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
        let (expected, router, role, rules, inside): (
            Option<String>,
            String,
            String,
            Vec<String>,
            Vec<usize>,
        ) = match kind {
            Kind::HostUnreachable => {
                let h = t
                    .hosts
                    .iter()
                    .position(|h| h.site == 1.min(t.sites.len() - 1))
                    .unwrap_or(0);
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
            Kind::SitePartition | Kind::SiteOnewayIn => {
                let port = core_port(&t.sites[site].tag);
                let mut rules = vec![format!("oifname \"{port}\" counter drop")];
                if kind == Kind::SitePartition {
                    rules.push(format!("iifname \"{port}\" counter drop"));
                }
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
            Kind::CoreNoise => (
                None,
                lab_net.core.clone(),
                "core".to_owned(),
                vec!["numgen random mod 100 < 1 counter drop".to_owned()],
                Vec::new(),
            ),
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
            router,
            router_role: role,
            rules,
            inside,
            subscribers,
        })
    }

    fn inject(&self) -> Result<()> {
        let body: String = self.rules.iter().map(|r| format!("    {r}\n")).collect();
        Network::nft(
            &self.router,
            &format!(
                "table inet {TABLE} {{\n  chain path {{\n    type filter hook forward priority 0; policy accept;\n{body}  }}\n}}\n"
            ),
        )?;
        Ok(())
    }

    /// Deletes the fault's table; returns the packets its rules dropped.
    fn clear(&self) -> Result<u64> {
        let listing = Network::nft(&self.router, &format!("list table inet {TABLE}\n"))?;
        let dropped = listing
            .split("counter packets ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        Network::nft(&self.router, &format!("delete table inet {TABLE}\n"))?;
        Ok(dropped)
    }
}

/// What one subscriber saw in one run.
#[derive(Clone, Debug)]
pub(super) struct Seen {
    pub(super) host: usize,
    pub(super) vantage: Vantage,
    /// Injection → first NOT_SERVING of the expected entity.
    pub(super) detect: Option<Duration>,
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
}

impl Scenario {
    pub(super) fn run(&self, lab: &mut Lab) -> Result<Run> {
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
        self.inject()?;
        println!(
            "  injected at the {} ({} rule(s)); holding {HOLD:?}",
            self.router_role,
            self.rules.len()
        );
        let hold_end = injected + HOLD;
        while Instant::now() < hold_end {
            check_interrupted()?;
            sleep(Duration::from_millis(50));
        }
        let cleared = Instant::now();
        let dropped_packets = self.clear()?;
        println!("  cleared ({dropped_packets} packets dropped); watching recovery");
        loop {
            check_interrupted()?;
            sleep(Duration::from_millis(200));
            let waited = cleared.elapsed();
            if waited >= RECOVERY_TIMEOUT {
                println!("  not everything SERVING {RECOVERY_TIMEOUT:?} after clearing");
                break;
            }
            if waited >= WATCH_AFTER_CLEAR
                && lab.not_serving_now(&self.subscriber_ixs(lab)).is_empty()
            {
                break;
            }
        }
        let end = Instant::now();
        let cpu = lab.cpu_since(&cpu_start);
        let statuses = lab.subscribers.log.all();
        let seen = self
            .subscribers
            .iter()
            .map(|&(host, vantage)| {
                self.seen(lab, &statuses, host, vantage, injected, cleared, end)
            })
            .collect();
        let impact = impact(lab, &self.inside, injected, cleared, end);
        Ok(Run {
            settled,
            seen,
            impact,
            dropped_packets,
            cpu,
            rtt,
        })
    }

    fn subscriber_ixs(&self, lab: &Lab) -> Vec<usize> {
        self.subscribers
            .iter()
            .filter_map(|(h, _)| lab.subscriber_index(*h))
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn seen(
        &self,
        lab: &Lab,
        statuses: &[Status],
        host: usize,
        vantage: Vantage,
        injected: Instant,
        cleared: Instant,
        end: Instant,
    ) -> Seen {
        let mut seen = Seen {
            host,
            vantage,
            detect: None,
            first: None,
            recover: None,
            recovered: true,
            flaps: 0,
            others: Vec::new(),
        };
        let Some(sub) = lab.subscriber_index(host) else {
            return seen;
        };
        let mine: Vec<&Status> = statuses.iter().filter(|s| s.subscriber == sub).collect();
        let expected = self
            .expected
            .as_ref()
            .and_then(|e| lab.services.iter().position(|s| s == e));
        let target_path = self
            .expected
            .as_ref()
            .and_then(|e| e.split_once('/'))
            .map(|(_, p)| p.to_owned());
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

/// How a service that went NOT_SERVING relates to the fault's entity.
fn relation(service: &str, target: Option<&str>) -> &'static str {
    let path = service.split_once('/').map_or(service, |(_, p)| p);
    match target {
        Some(t) if path.starts_with(&format!("{t}/")) => "inside",
        Some(t) if t.starts_with(&format!("{path}/")) => "enclosing",
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
    let all: Vec<usize> = (0..lab.subscriber_hosts.len()).collect();
    let statuses = lab.subscribers.log.all();
    for sub in &all {
        let known = statuses
            .iter()
            .filter(|s| s.subscriber == *sub)
            .map(|s| s.service)
            .collect::<std::collections::BTreeSet<_>>();
        if known.len() < lab.services.len() {
            return Err(format!(
                "subscriber at {} has {} of {} services",
                lab.topology.hosts[lab.subscriber_hosts[*sub]].name,
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
