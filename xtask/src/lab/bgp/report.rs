//! What `bgp-failover` measured: per variant, p50/p99/max across runs (hdrhistogram, as
//! the lab's other reports), a line per run, the checks, the JSON, and the bench's
//! summary against its goals.
use std::{fmt::Write as _, time::Duration};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use super::{
    Bgp,
    failover::{Measured, Round, Variant},
    wiring::VIP,
};
use crate::lab::{
    checks::Check,
    report::{p50_p99_max, p50_p99_max_json},
    scenario::Scenario,
};

/// With the adapter (and with the link cut), traffic must reach the other site within
/// this long of the fault.
const MOVE_BOUND: Duration = Duration::from_secs(5);
/// Bench goals: injection → last failed request, and RIB withdrawal → edge route change.
const GOAL_MTTR_P50: Duration = Duration::from_millis(1000);
const GOAL_MTTR_P99: Duration = Duration::from_millis(1500);
const GOAL_WITHDRAW_TO_ROUTE: Duration = Duration::from_millis(100);

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map_or("-".to_owned(), |d| ms(d).to_string())
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000, 3).expect("static bounds are valid")
}

/// A run's line for one variant: where its time went.
pub(super) fn one_line(m: &Measured, names: &[String]) -> String {
    let mut line = format!(
        "{}: detect {} ms, withdraw {} ms, edge route {} ms, first answer from {} {} ms, last failed request {} ms after the fault; {} of {} requests failed",
        m.variant.label(),
        opt_ms(m.detect),
        opt_ms(m.withdraw),
        opt_ms(m.route),
        names[1],
        opt_ms(m.moved),
        opt_ms(m.last_failed),
        m.failed,
        m.requests
    );
    let _ = write!(
        line,
        "; back: announce {} ms, RIB {} ms, edge route {} ms, first answer from {} {} ms after clearing ({} failed)",
        opt_ms(m.back_announce),
        opt_ms(m.back_rib),
        opt_ms(m.back_route),
        names[0],
        opt_ms(m.back_answer),
        m.failed_after_clear
    );
    if let Err(why) = &m.steady {
        let _ = write!(line, "; NOT steady before the fault: {why}");
    }
    line
}

fn check(name: &'static str, pass: bool, detail: String) -> Check {
    Check { name, pass, detail }
}

/// The checks of one variant of one run.
pub(super) fn judge(m: &Measured, names: &[String]) -> Vec<Check> {
    let (home, other) = (&names[0], &names[1]);
    let steady = match &m.steady {
        Ok(()) => String::new(),
        Err(why) => format!("; the setup was not steady before the fault: {why}"),
    };
    let moved_in_time = m.moved.is_some_and(|d| d <= MOVE_BOUND);
    let moved = format!(
        "traffic to {VIP} answered by {other} {} ms after the fault (bound {} ms); {} of {} requests failed, the last {} ms after the fault{steady}",
        opt_ms(m.moved),
        ms(MOVE_BOUND),
        m.failed,
        m.requests,
        opt_ms(m.last_failed)
    );
    let back = format!(
        "answered by {home} again {} ms after clearing, the edge's route via {home} at the end: {}",
        opt_ms(m.back_answer),
        m.home_at_end
    );
    let back_ok = m.back_answer.is_some() && m.home_at_end;
    match m.variant {
        Variant::Adapter => vec![
            check("adapter-moved", moved_in_time && m.steady.is_ok(), moved),
            check("adapter-moved-back", back_ok, back),
            check(
                "adapter-one-site-announced",
                m.both_withdrawn.is_zero() && m.no_route.is_zero(),
                format!(
                    "from the fault to the end, neither gobgpd had the VIP for {} ms, the edge had no route to it for {} ms",
                    ms(m.both_withdrawn),
                    ms(m.no_route)
                ),
            ),
        ],
        Variant::NoAdapter => vec![check(
            "no-adapter-stays",
            m.answers_elsewhere == 0 && m.steady.is_ok(),
            format!(
                "without the adapter, {} answers from {other} (traffic never moves); {} of {} requests failed during the fault, the last {} ms after it{steady}",
                m.answers_elsewhere,
                m.failed,
                m.requests,
                opt_ms(m.last_failed)
            ),
        )],
        Variant::LinkDown => vec![check(
            "link-down-moved",
            moved_in_time && back_ok && m.steady.is_ok(),
            format!("link cut: {moved}; {back}"),
        )],
    }
}

/// One variant's figures across runs.
struct Row {
    variant: Variant,
    runs: usize,
    moved_runs: usize,
    detect: Histogram<u64>,
    withdraw: Histogram<u64>,
    route: Histogram<u64>,
    moved: Histogram<u64>,
    last_failed: Histogram<u64>,
    withdraw_to_route: Histogram<u64>,
    back_announce: Histogram<u64>,
    back_rib: Histogram<u64>,
    back_route: Histogram<u64>,
    back_answer: Histogram<u64>,
    failed: usize,
    requests: usize,
    failed_after_clear: usize,
}

impl Row {
    fn new(variant: Variant, all: &[&Measured]) -> Self {
        let mut r = Self {
            variant,
            runs: all.len(),
            moved_runs: all.iter().filter(|m| m.moved.is_some()).count(),
            detect: histogram(),
            withdraw: histogram(),
            route: histogram(),
            moved: histogram(),
            last_failed: histogram(),
            withdraw_to_route: histogram(),
            back_announce: histogram(),
            back_rib: histogram(),
            back_route: histogram(),
            back_answer: histogram(),
            failed: all.iter().map(|m| m.failed).sum(),
            requests: all.iter().map(|m| m.requests).sum(),
            failed_after_clear: all.iter().map(|m| m.failed_after_clear).sum(),
        };
        let rec = |h: &mut Histogram<u64>, d: Option<Duration>| {
            if let Some(d) = d {
                let _ = h.record(ms(d).max(1));
            }
        };
        for m in all {
            rec(&mut r.detect, m.detect);
            rec(&mut r.withdraw, m.withdraw);
            rec(&mut r.route, m.route);
            rec(&mut r.moved, m.moved);
            rec(&mut r.last_failed, m.last_failed);
            rec(&mut r.withdraw_to_route, m.withdraw_to_route());
            rec(&mut r.back_announce, m.back_announce);
            rec(&mut r.back_rib, m.back_rib);
            rec(&mut r.back_route, m.back_route);
            rec(&mut r.back_answer, m.back_answer);
        }
        r
    }

    fn json(&self) -> Value {
        let h = p50_p99_max_json;
        json!({
            "runs": self.runs,
            "moved_runs": self.moved_runs,
            "after_fault_ms": {
                "detect_at_adapter": h(&self.detect),
                "withdrawn_from_rib": h(&self.withdraw),
                "edge_route_changed": h(&self.route),
                "first_answer_elsewhere": h(&self.moved),
                "last_failed_request": h(&self.last_failed),
            },
            "withdraw_to_edge_route_ms": h(&self.withdraw_to_route),
            "after_clearing_ms": {
                "announced_again": h(&self.back_announce),
                "back_in_rib": h(&self.back_rib),
                "edge_route_back": h(&self.back_route),
                "first_answer_home": h(&self.back_answer),
            },
            "requests_during_fault": self.requests,
            "failed_during_fault": self.failed,
            "failed_after_clearing": self.failed_after_clear,
        })
    }
}

pub(in crate::lab) struct Report {
    names: Vec<String>,
    fault: String,
    adapter: bool,
    hold: Duration,
    rows: Vec<Row>,
    per_run: Vec<Value>,
    checks: Vec<String>,
}

impl Report {
    pub(in crate::lab) fn new(rounds: &[Round], bgp: &Bgp, s: &Scenario) -> Self {
        let rows = Variant::ALL
            .iter()
            .filter_map(|v| {
                let all: Vec<&Measured> = rounds
                    .iter()
                    .flat_map(|r| r.measured.iter().filter(|m| m.variant == *v))
                    .collect();
                (!all.is_empty()).then(|| Row::new(*v, &all))
            })
            .collect();
        let per_run = rounds
            .iter()
            .enumerate()
            .map(|(n, r)| {
                json!({
                    "run": n + 1,
                    "variants": r.measured.iter().map(measured_json).collect::<Vec<_>>(),
                    "checks": r.checks.iter().map(|c| json!({"check": c.name, "pass": c.pass, "detail": c.detail})).collect::<Vec<_>>(),
                })
            })
            .collect();
        Self {
            names: bgp.names(),
            fault: s.router_role.clone(),
            adapter: bgp.adapter(),
            hold: rounds
                .iter()
                .flat_map(|r| r.measured.first())
                .map(|m| m.hold)
                .next()
                .unwrap_or_default(),
            rows,
            per_run,
            checks: rounds
                .iter()
                .enumerate()
                .flat_map(|(n, r)| {
                    r.checks
                        .iter()
                        .map(move |c| format!("run {}: {}", n + 1, c.line("bgp-failover")))
                })
                .collect(),
        }
    }

    pub(in crate::lab) fn table(&self) -> String {
        let (home, other) = (&self.names[0], &self.names[1]);
        let mut out = format!(
            "\n== bgp-failover: VIP {VIP} served by {home} (preferred) and {other}; {home} blackholed at the {}, or its edge link cut; held ~{} s; {} run(s){}\n",
            self.fault,
            self.hold.as_secs(),
            self.per_run.len(),
            if self.adapter {
                ""
            } else {
                "; NO adapter runs: this build has no `faultline announce`"
            }
        );
        let _ = writeln!(
            out,
            "{:<11} {:>5}  {:>14} {:>14} {:>14} {:>14} {:>14} {:>11}",
            "after fault",
            "MOVED",
            "DETECT",
            "WITHDRAW",
            "EDGE ROUTE",
            format!("FIRST {other}"),
            "LAST FAILED",
            "FAILED"
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{:<11} {:>5}  {:>14} {:>14} {:>14} {:>14} {:>14} {:>11}",
                r.variant.label(),
                format!("{}/{}", r.moved_runs, r.runs),
                p50_p99_max(&r.detect),
                p50_p99_max(&r.withdraw),
                p50_p99_max(&r.route),
                p50_p99_max(&r.moved),
                p50_p99_max(&r.last_failed),
                format!("{}/{}", r.failed, r.requests),
            );
        }
        let _ = writeln!(
            out,
            "{:<11} {:>5}  {:>14} {:>14} {:>14} {:>14} {:>14} {:>11}",
            "after clear",
            "",
            "ANNOUNCE",
            "RIB",
            "EDGE ROUTE",
            format!("FIRST {home}"),
            "",
            "FAILED"
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{:<11} {:>5}  {:>14} {:>14} {:>14} {:>14} {:>14} {:>11}",
                r.variant.label(),
                "",
                p50_p99_max(&r.back_announce),
                p50_p99_max(&r.back_rib),
                p50_p99_max(&r.back_route),
                p50_p99_max(&r.back_answer),
                "",
                r.failed_after_clear,
            );
        }
        let _ = writeln!(
            out,
            "(p50/p99/max ms; DETECT: the announcer's withdraw line, WITHDRAW: gone from {home}'s gobgpd RIB, EDGE ROUTE: the edge's kernel route changed)"
        );
        if let Some(r) = self.rows.iter().find(|r| r.variant == Variant::Adapter) {
            let _ = writeln!(
                out,
                "adapter: RIB withdrawal → edge route change p50/p99/max {} ms",
                p50_p99_max(&r.withdraw_to_route)
            );
        }
        for c in &self.checks {
            let _ = writeln!(out, "{c}");
        }
        out
    }

    pub(in crate::lab) fn json(&self) -> Value {
        json!({
            "scenario": "bgp-failover",
            "vip": VIP.to_string(),
            "preferred_site": self.names[0],
            "other_site": self.names[1],
            "fault_at": self.fault,
            "hold_ms": self.hold.as_millis(),
            "adapter_available": self.adapter,
            "runs": self.per_run.len(),
            "summary": self.rows.iter().map(|r| (r.variant.label().to_owned(), r.json())).collect::<serde_json::Map<_, _>>(),
            "checks": self.checks,
            "per_run": self.per_run,
        })
    }

    /// The bench's block: MTTR and withdraw → route change against their goals.
    pub(in crate::lab) fn bench_summary(&self) -> (String, Value) {
        let mut out = format!("-- bgp-failover: {} run(s)\n", self.per_run.len());
        let mut goals = Vec::new();
        for r in &self.rows {
            let _ = writeln!(
                out,
                "   {:<11} moved {}/{}; MTTR p50/p99/max: first answer from {} {} ms, last failed request {} ms; detect {} ms, RIB withdrawal {} ms, edge route {} ms",
                r.variant.label(),
                r.moved_runs,
                r.runs,
                self.names[1],
                p50_p99_max(&r.moved),
                p50_p99_max(&r.last_failed),
                p50_p99_max(&r.detect),
                p50_p99_max(&r.withdraw),
                p50_p99_max(&r.route),
            );
        }
        if let Some(r) = self.rows.iter().find(|r| r.variant == Variant::Adapter) {
            let q = |h: &Histogram<u64>, q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q));
            let all_moved = r.moved_runs == r.runs;
            for (goal, value, bound) in [
                (
                    "MTTR p50 (last failed request)",
                    q(&r.last_failed, 0.5),
                    GOAL_MTTR_P50,
                ),
                (
                    "MTTR p99 (last failed request)",
                    q(&r.last_failed, 0.99),
                    GOAL_MTTR_P99,
                ),
                (
                    "RIB withdrawal → edge route change p99",
                    q(&r.withdraw_to_route, 0.99),
                    GOAL_WITHDRAW_TO_ROUTE,
                ),
            ] {
                let met = all_moved && value.is_some_and(|v| v <= ms(bound));
                let _ = writeln!(
                    out,
                    "   goal {goal} ≤ {} ms: {} ms, {}",
                    ms(bound),
                    value.map_or("-".to_owned(), |v| v.to_string()),
                    if met { "met" } else { "MISSED" }
                );
                goals.push(
                    json!({"goal": goal, "bound_ms": ms(bound), "value_ms": value, "met": met}),
                );
            }
        } else {
            let _ = writeln!(
                out,
                "   no adapter runs: this build has no `faultline announce`"
            );
        }
        let value = json!({
            "scenario": "bgp-failover",
            "runs": self.per_run.len(),
            "summary": self.rows.iter().map(|r| (r.variant.label().to_owned(), r.json())).collect::<serde_json::Map<_, _>>(),
            "goals": goals,
        });
        (out, value)
    }
}

fn measured_json(m: &Measured) -> Value {
    let d = |d: Option<Duration>| d.map(ms);
    json!({
        "variant": m.variant.label(),
        "steady_before": match &m.steady { Ok(()) => Value::Bool(true), Err(why) => json!({"not_steady": why}) },
        "after_fault_ms": {
            "detect_at_adapter": d(m.detect),
            "withdrawn_from_rib": d(m.withdraw),
            "edge_route_changed": d(m.route),
            "first_answer_elsewhere": d(m.moved),
            "last_failed_request": d(m.last_failed),
        },
        "withdraw_to_edge_route_ms": d(m.withdraw_to_route()),
        "after_clearing_ms": {
            "announced_again": d(m.back_announce),
            "back_in_rib": d(m.back_rib),
            "edge_route_back": d(m.back_route),
            "first_answer_home": d(m.back_answer),
        },
        "hold_ms": ms(m.hold),
        "requests_during_fault": m.requests,
        "failed_during_fault": m.failed,
        "answers_elsewhere": m.answers_elsewhere,
        "failed_after_clearing": m.failed_after_clear,
        "ms_with_neither_rib_announcing": ms(m.both_withdrawn),
        "ms_without_edge_route": ms(m.no_route),
        "edge_route_home_at_end": m.home_at_end,
    })
}

/// The soak's withdrawals (every one is false: nothing fails), from the announcers'
/// log lines and their `faultline_announce_withdrawals_total`.
pub(in crate::lab) fn soak_withdrawals(
    bgp: &Bgp,
    from: std::time::Instant,
    to: std::time::Instant,
    metric_before: Option<f64>,
) -> (String, Value) {
    if !bgp.adapter() {
        return (
            "-- soak: no announcers (this build has no `faultline announce`)".to_owned(),
            Value::Null,
        );
    }
    let lines = bgp.withdrawals(from, to);
    let metric = bgp
        .withdrawals_metric()
        .zip(metric_before)
        .map(|(after, before)| after - before);
    let mut text = format!(
        "-- soak: announcers withdrew {} time(s) (log lines; faultline_announce_withdrawals_total rose by {}) [goal 0]: {}",
        lines.len(),
        metric.map_or("-".to_owned(), |m| format!("{m}")),
        if lines.is_empty() && metric.is_none_or(|m| m == 0.0) {
            "met"
        } else {
            "MISSED"
        }
    );
    for (b, l) in lines.iter().take(20) {
        let _ = write!(text, "\n   {}: {l}", bgp.names()[*b]);
    }
    let value = json!({
        "withdrawals_logged": lines.len(),
        "withdrawals_metric_delta": metric,
        "lines": lines.iter().map(|(b, l)| json!({"announcer": bgp.names()[*b], "line": l})).collect::<Vec<_>>(),
    });
    (text, value)
}
