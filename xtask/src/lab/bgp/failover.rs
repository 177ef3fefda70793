//! One run of `bgp-failover`: the same site fault with and without the announcers, and
//! the edge link cut for reference, each measured from the streams [`super::Bgp`]
//! records.
//!
//! The two blackholes go through the lab's own [`Scenario::run`] (flap spacing, settle,
//! nft table in the first site's router, hold, clear, agents' recovery), so the agents
//! are judged as in every other scenario; the link cut needs no agent and is done
//! here. Between them the lab waits, bounded, for the setup to be steady again. The
//! link cut comes second: it is no entity fault, so it fills the flap spacing the two
//! blackholes of one site need anyway.
use std::{
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{Bgp, Mode, STEADY_TIMEOUT, report, vip, wiring::SITE_EDGE_PORT};
use crate::{
    bench::check_interrupted,
    lab::{
        Lab, Outcome,
        checks::Check,
        net::ip,
        scenario::{HOLD, Scenario},
    },
};

/// After clearing, how long traffic has to come back to the first site.
const BACK_TIMEOUT: Duration = Duration::from_secs(45);

/// The three faults of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::lab) enum Variant {
    /// The first site blackholed behind its border; the announcers running.
    Adapter,
    /// The same, the VIP added to both gobgpds by hand.
    NoAdapter,
    /// The edge's link to the first site set down (at the site router's end).
    LinkDown,
}

impl Variant {
    pub(in crate::lab) const ALL: [Self; 3] = [Self::Adapter, Self::LinkDown, Self::NoAdapter];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Adapter => "adapter",
            Self::NoAdapter => "no adapter",
            Self::LinkDown => "link down",
        }
    }
}

/// What one variant of one run measured, as times after injection (or after clearing,
/// for the way back).
#[derive(Clone, Debug)]
pub(super) struct Measured {
    pub(super) variant: Variant,
    /// Whether the setup was steady as the fault began ([`Bgp::steady_at`]), if not why.
    pub(super) steady: Result<(), String>,
    /// Injection → the first announcer's withdraw log line for the first site.
    pub(super) detect: Option<Duration>,
    /// Injection → the VIP gone from the first site's gobgpd RIB.
    pub(super) withdraw: Option<Duration>,
    /// Injection → the edge's route to the VIP no longer via the first site.
    pub(super) route: Option<Duration>,
    /// Injection → the first answer from the second site.
    pub(super) moved: Option<Duration>,
    /// Injection → the end of the last failed request that began before clearing.
    pub(super) last_failed: Option<Duration>,
    /// Requests that ended after injection and began before clearing, and how many failed.
    pub(super) requests: usize,
    pub(super) failed: usize,
    /// Answers from the second site between injection and the end.
    pub(super) answers_elsewhere: usize,
    /// Clearing → the announcer's announce line, the VIP back in the first RIB, the
    /// edge's route back via the first site, the first answer from it.
    pub(super) back_announce: Option<Duration>,
    pub(super) back_rib: Option<Duration>,
    pub(super) back_route: Option<Duration>,
    pub(super) back_answer: Option<Duration>,
    /// Failed requests that began after clearing (the way back).
    pub(super) failed_after_clear: usize,
    /// Time between injection and the end when neither RIB had the VIP, and when the
    /// edge had no route to it.
    pub(super) both_withdrawn: Duration,
    pub(super) no_route: Duration,
    /// Whether, at the end, the edge routes the VIP to the first site.
    pub(super) home_at_end: bool,
    pub(super) hold: Duration,
}

impl Measured {
    /// Withdrawn from the RIB → the edge's route changed.
    pub(super) fn withdraw_to_route(&self) -> Option<Duration> {
        Some(self.route?.checked_sub(self.withdraw?).unwrap_or_default())
    }
}

/// One run of the scenario: each variant measured, and the run's checks.
pub(in crate::lab) struct Round {
    pub(super) measured: Vec<Measured>,
    pub(in crate::lab) checks: Vec<Check>,
}

/// `--scenario bgp-failover --runs N`: N runs, each check printed as it is judged,
/// then the table and `target/lab/bgp-failover.json`.
pub(in crate::lab) fn run_scenario(
    lab: &mut Lab,
    s: &Scenario,
    runs: u32,
    out: &std::path::Path,
) -> Result<(Outcome, Vec<String>)> {
    let mut outcome = Outcome::default();
    let mut lines = Vec::new();
    let mut rounds = Vec::new();
    for n in 1..=runs {
        println!(
            "scenario {} run {n}/{runs}: {} (with and without the adapter) and the edge link to it cut",
            s.kind.name(),
            s.expected.as_deref().unwrap_or("-"),
        );
        let round = run_round(lab, s, &Variant::ALL)?;
        crate::lab::tally(&round.checks, &s.kind.name(), &mut outcome, &mut lines);
        rounds.push(round);
    }
    let bgp = lab.bgp.as_ref().context("the BGP setup runs")?;
    let report = report::Report::new(&rounds, bgp, s);
    print!("{}", report.table());
    let path = out.join(format!("{}.json", s.kind.name()));
    std::fs::write(&path, serde_json::to_string_pretty(&report.json())? + "\n")
        .with_context(|| format!("write {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok((outcome, lines))
}

/// One run: the `variants` asked for (the adapter's only when it exists), in the order
/// of [`Variant::ALL`].
pub(in crate::lab) fn run_round(
    lab: &mut Lab,
    s: &Scenario,
    variants: &[Variant],
) -> Result<Round> {
    let mut round = Round {
        measured: Vec::new(),
        checks: Vec::new(),
    };
    let adapter = bgp(lab)?.adapter();
    for v in Variant::ALL
        .into_iter()
        .filter(|v| variants.contains(v) && (*v != Variant::Adapter || adapter))
    {
        println!("  {}:", v.label());
        let m = match v {
            Variant::Adapter | Variant::NoAdapter => {
                let mode = if v == Variant::Adapter {
                    Mode::Announcers
                } else {
                    Mode::Static
                };
                set_mode(lab, mode)?;
                if let Err(why) = bgp(lab)?.wait_steady(Instant::now() + STEADY_TIMEOUT)? {
                    println!("  not steady after {STEADY_TIMEOUT:?}: {why}");
                }
                let run = s.run(lab, HOLD)?;
                let end = wait_back(bgp(lab)?, run.cleared)?;
                // The agents are judged once per run: with the adapter when it runs.
                if v == Variant::Adapter || !adapter {
                    round.checks.extend(run.checks.iter().cloned());
                }
                measure(bgp(lab)?, v, run.injected, run.cleared, end)
            }
            Variant::LinkDown => link_down(bgp(lab)?)?,
        };
        println!("    {}", report::one_line(&m, &bgp(lab)?.names()));
        round.checks.extend(report::judge(&m, &bgp(lab)?.names()));
        round.measured.push(m);
    }
    if adapter {
        set_mode(lab, Mode::Announcers)?;
    }
    Ok(round)
}

fn bgp(lab: &mut Lab) -> Result<&mut Bgp> {
    lab.bgp
        .as_mut()
        .context("the BGP setup was not started with the lab")
}

fn set_mode(lab: &mut Lab, mode: Mode) -> Result<()> {
    lab.bgp
        .as_mut()
        .context("the BGP setup was not started with the lab")?
        .set_mode(mode, &lab.topology)
}

/// The reference: the first site's end of its edge link set down for [`HOLD`], then
/// up (and its route back to the client network, which went with it, put back).
fn link_down(bgp: &mut Bgp) -> Result<Measured> {
    if let Err(why) = bgp.wait_steady(Instant::now() + STEADY_TIMEOUT)? {
        println!("  not steady after {STEADY_TIMEOUT:?}: {why}");
    }
    let border = &bgp.wiring.borders[0];
    let ns = border.router_ns.clone();
    let injected = Instant::now();
    ip(&["-n", &ns, "link", "set", SITE_EDGE_PORT, "down"])?;
    println!(
        "  link {} of {} set down; holding {HOLD:?}",
        SITE_EDGE_PORT, border.name
    );
    let result = hold(bgp, injected + HOLD);
    let cleared = Instant::now();
    // Up again even when the hold was interrupted: the lab may be kept.
    ip(&["-n", &ns, "link", "set", SITE_EDGE_PORT, "up"])?;
    bgp.wiring.route_back(&bgp.wiring.borders[0])?;
    result?;
    println!("  link up; watching traffic come back");
    let end = wait_back(bgp, cleared)?;
    Ok(measure(bgp, Variant::LinkDown, injected, cleared, end))
}

fn hold(bgp: &mut Bgp, until: Instant) -> Result<()> {
    while Instant::now() < until {
        check_interrupted()?;
        bgp.check_alive()?;
        sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Waits (bounded) until traffic is back at the first site; returns the end of the
/// measurement.
fn wait_back(bgp: &mut Bgp, cleared: Instant) -> Result<Instant> {
    if let Err(why) = bgp.wait_steady(cleared + BACK_TIMEOUT)? {
        println!("  traffic not back {BACK_TIMEOUT:?} after clearing: {why}");
    }
    Ok(Instant::now())
}

/// Reads one variant's timings off the recorded streams.
fn measure(
    bgp: &Bgp,
    variant: Variant,
    injected: Instant,
    cleared: Instant,
    end: Instant,
) -> Measured {
    let home = &bgp.wiring.borders[0].name;
    let after = |t: Instant| t.saturating_duration_since(injected);
    let after_clear = |t: Instant| t.saturating_duration_since(cleared);
    let probes = bgp.vip.log.between(injected, end + vip::TIMEOUT);
    let during: Vec<_> = probes.iter().filter(|p| p.begin < cleared).collect();
    let actions: Vec<(Instant, bool)> = bgp.announcer_actions(0, home);
    let rib_home = bgp.rib_changes(0);
    let edge = bgp.edge_changes();
    let first = |events: &[(Instant, bool)], from: Instant, on: bool| {
        events
            .iter()
            .find(|(at, e)| *at >= from && *at <= end && *e == on)
            .map(|(at, _)| *at)
    };
    let (both_withdrawn, no_route) = gaps(bgp, injected, end);
    Measured {
        variant,
        steady: bgp.steady_at(injected),
        detect: first(&actions, injected, false).map(after),
        withdraw: first(&rib_home, injected, false).map(after),
        route: edge
            .iter()
            .find(|(at, b)| *at >= injected && *at <= end && *b != Some(0))
            .map(|(at, _)| after(*at)),
        moved: probes
            .iter()
            .find(|p| p.begin >= injected && p.answer == Some(1))
            .map(|p| after(p.end)),
        last_failed: during
            .iter()
            .filter(|p| p.answer.is_none())
            .map(|p| after(p.end))
            .max(),
        requests: during.len(),
        failed: during.iter().filter(|p| p.answer.is_none()).count(),
        answers_elsewhere: probes.iter().filter(|p| p.answer == Some(1)).count(),
        back_announce: first(&actions, cleared, true).map(after_clear),
        back_rib: first(&rib_home, cleared, true).map(after_clear),
        back_route: edge
            .iter()
            .find(|(at, b)| *at >= cleared && *at <= end && *b == Some(0))
            .map(|(at, _)| after_clear(*at)),
        back_answer: probes
            .iter()
            .find(|p| p.begin >= cleared && p.answer == Some(0))
            .map(|p| after_clear(p.end)),
        failed_after_clear: probes
            .iter()
            .filter(|p| p.begin >= cleared && p.answer.is_none())
            .count(),
        both_withdrawn,
        no_route,
        home_at_end: edge
            .iter()
            .rev()
            .find(|(at, _)| *at <= end)
            .is_some_and(|(_, b)| *b == Some(0)),
        hold: cleared.saturating_duration_since(injected),
    }
}

/// Between `from` and `to`: how long neither gobgpd had the VIP, and how long the edge
/// had no route to it.
fn gaps(bgp: &Bgp, from: Instant, to: Instant) -> (Duration, Duration) {
    // Every change of any of the three, in time order, as (when, which, value).
    let mut events: Vec<(Instant, usize, bool)> = Vec::new();
    for b in 0..bgp.wiring.borders.len() {
        events.extend(bgp.rib_changes(b).into_iter().map(|(at, on)| (at, b, on)));
    }
    let edge_ix = bgp.wiring.borders.len();
    events.extend(
        bgp.edge_changes()
            .into_iter()
            .map(|(at, via)| (at, edge_ix, via.is_some())),
    );
    events.sort_by_key(|e| e.0);
    let mut on = vec![false; edge_ix + 1];
    let (mut both, mut none) = (Duration::ZERO, Duration::ZERO);
    let mut last = from;
    let mut account = |on: &[bool], until: Instant, last: &mut Instant| {
        if until > *last {
            let span = until - *last;
            if !on[..edge_ix].iter().any(|x| *x) {
                both += span;
            }
            if !on[edge_ix] {
                none += span;
            }
            *last = until;
        }
    };
    for (at, which, value) in events {
        if at > to {
            break;
        }
        if at > from {
            account(&on, at, &mut last);
        }
        on[which] = value;
    }
    account(&on, to, &mut last);
    (both, none)
}
