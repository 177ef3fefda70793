//! Pass/fail checks of one run against its scenario's [`Expect`], with bounds wide
//! enough that a correct detector never misses them on a loaded 2-core machine, and
//! narrow enough that a wrong one does:
//!
//! - `settled`: the lab was quiet before the injection (else the run proves nothing);
//! - `detect`: the expected entity NOT_SERVING within [`DETECT_BOUND`] at every
//!   outside subscriber (tonic and grpcio);
//! - `inside`: inside subscribers name their own enclosing entity FAILED with
//!   `local_fault` (over Verdicts) and NOT_SERVING within [`DETECT_BOUND`];
//! - `only-expected`: nothing else NOT_SERVING: only the failed entity and what lies
//!   inside it, or an inside subscriber's own enclosing entity flagged `local_fault`;
//!   nothing at all where nothing should fail;
//! - `recovery`: everything that went NOT_SERVING is SERVING again within
//!   [`RECOVERY_BOUND`] of clearing;
//! - `calm`: nothing above host level DEGRADED or FAILED (over Verdicts);
//! - `degraded` (gray failures): the entity DEGRADED at some outside Verdicts
//!   subscriber while the loss lasts and at every one by the end of the watch (on the
//!   lab's thin traffic one in about fifteen runs sees it at one subscriber only as
//!   the loss ends), and nothing else above host level DEGRADED or FAILED;
//! - `wire`: the delay stage lived through the run and still delayed inter-site
//!   requests by at least [`WIRE_MIN_SHARE`] of their nominal round trip.
use std::{fmt::Write as _, time::Duration};

use faultline_proto::{
    health::health_check_response::ServingStatus,
    v1::{Level, State},
};

use super::{
    Lab, SubscriberKind,
    scenario::{InsideNames, Record, Scenario, Vantage, Watcher, within},
};

/// Injection → NOT_SERVING at a subscriber. The detector's goal is 0.8 s at p99.
pub(super) const DETECT_BOUND: Duration = Duration::from_secs(3);
/// Clearing → SERVING again: the recovery hold (5 s) plus 5 s.
pub(super) const RECOVERY_BOUND: Duration = Duration::from_secs(10);
/// The measured inter-site request RTT must be at least this share of its nominal one.
const WIRE_MIN_SHARE: f64 = 0.9;
/// Fewest successful inter-site requests for a site pair's RTT to count.
const WIRE_MIN_SAMPLES: usize = 5;

/// One check of one run.
#[derive(Clone, Debug)]
pub(super) struct Check {
    pub(super) name: &'static str,
    pub(super) pass: bool,
    pub(super) detail: String,
}

impl Check {
    fn new(name: &'static str, pass: bool, detail: String) -> Self {
        Self { name, pass, detail }
    }

    /// `PASS rack-blackhole detect: …`
    pub(super) fn line(&self, scenario: &str) -> String {
        format!(
            "{} {scenario} {}: {}",
            if self.pass { "PASS" } else { "FAIL" },
            self.name,
            self.detail
        )
    }
}

/// A subscriber's name in check details: `a11-1/tonic`.
fn who(lab: &Lab, w: &Watcher) -> String {
    format!("{}/{}", lab.topology.hosts[w.host].name, w.kind.label())
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Service name → entity path (`rack/dc-a/c1/r1` → `dc-a/c1/r1`).
fn path_of(service: &str) -> &str {
    service.split_once('/').map_or(service, |(_, p)| p)
}

/// The transitions into NOT_SERVING of one subscriber between injection and end:
/// (service index, time after injection).
fn went_not_serving(lab: &Lab, r: &Record, w: &Watcher) -> Vec<(usize, Duration)> {
    let mut state = vec![ServingStatus::Unknown; lab.services.len()];
    let mut out = Vec::new();
    for s in r.statuses.iter().filter(|s| s.subscriber == w.ix) {
        let was = state[s.service];
        state[s.service] = s.status;
        if s.at >= r.injected
            && s.at <= r.end
            && s.status == ServingStatus::NotServing
            && was != ServingStatus::NotServing
        {
            out.push((s.service, s.at - r.injected));
        }
    }
    out
}

/// Whether the subscriber's agent said `path` is FAILED with `local_fault` during the run.
fn named_local(r: &Record, w: &Watcher, path: &str) -> bool {
    r.verdicts.iter().any(|v| {
        v.subscriber == w.ix
            && v.at >= r.injected
            && v.at <= r.end
            && v.path == path
            && v.state == State::Failed
            && v.local_fault
    })
}

/// Whether `path` encloses (or is) the host `host`.
fn encloses(lab: &Lab, path: &str, host: usize) -> bool {
    within(&lab.topology.hosts[host].path, path)
}

pub(super) fn judge(s: &Scenario, lab: &Lab, r: &Record) -> Vec<Check> {
    let mut checks = vec![Check::new(
        "settled",
        r.settled.is_ok(),
        match r.settled {
            Ok(d) => format!("quiet before injection (after {:.1} s)", d.as_secs_f64()),
            Err(why) => format!("injected before the lab was quiet: {why}"),
        },
    )];
    if let Some(expected) = &s.expected {
        checks.push(detect(lab, r, expected));
    }
    if s.expect.inside_names != InsideNames::Nothing {
        checks.push(inside(s, lab, r));
    }
    checks.push(only_expected(s, lab, r));
    if s.expect.failed_path.is_some() {
        checks.push(recovery(lab, r));
    }
    if s.expect.calm_above_host {
        checks.push(calm(lab, r));
    }
    if let Some(entity) = &s.expect.degraded {
        checks.push(degraded(lab, r, entity));
    }
    checks.push(wire(lab, r));
    checks
}

fn detect(lab: &Lab, r: &Record, expected: &str) -> Check {
    let Some(svc) = lab.services.iter().position(|n| n == expected) else {
        return Check::new("detect", false, format!("{expected} is no service"));
    };
    let outside: Vec<&Watcher> = r
        .watchers
        .iter()
        .filter(|w| w.vantage != Vantage::Inside)
        .collect();
    let mut slowest: Option<(Duration, String)> = None;
    let mut missed = Vec::new();
    for w in &outside {
        let first = went_not_serving(lab, r, w)
            .into_iter()
            .find(|(i, _)| *i == svc)
            .map(|(_, d)| d);
        match first {
            Some(d) if d <= DETECT_BOUND => {
                if slowest.as_ref().is_none_or(|(m, _)| d > *m) {
                    slowest = Some((d, who(lab, w)));
                }
            }
            Some(d) => missed.push(format!("{} after {} ms", who(lab, w), ms(d))),
            None => missed.push(format!("{} never", who(lab, w))),
        }
    }
    let pass = missed.is_empty() && !outside.is_empty();
    let mut detail = format!(
        "{expected} NOT_SERVING within {} s at {}/{} outside subscribers",
        DETECT_BOUND.as_secs(),
        outside.len() - missed.len(),
        outside.len()
    );
    if let Some((d, w)) = slowest {
        let _ = write!(detail, " (slowest {w} {} ms)", ms(d));
    }
    if !missed.is_empty() {
        let _ = write!(detail, "; missed: {}", missed.join(", "));
    }
    Check::new("detect", pass, detail)
}

fn inside(s: &Scenario, lab: &Lab, r: &Record) -> Check {
    let failed = s.expect.failed_path.as_deref().unwrap_or_default();
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let inside: Vec<&Watcher> = r
        .watchers
        .iter()
        .filter(|w| w.vantage == Vantage::Inside)
        .collect();
    for w in &inside {
        let host_path = &lab.topology.hosts[w.host].path;
        let allowed = |path: &str| match s.expect.inside_names {
            InsideNames::OwnHost => path == host_path,
            _ => encloses(lab, path, w.host) && within(path, failed),
        };
        let named = went_not_serving(lab, r, w)
            .into_iter()
            .find(|(i, d)| allowed(path_of(&lab.services[*i])) && *d <= DETECT_BOUND);
        match named {
            Some((i, d)) => {
                let name = &lab.services[i];
                // Health cannot carry local_fault: the tonic subscriber reads it from
                // Verdicts; the grpcio one checks health only.
                if w.kind == SubscriberKind::Tonic && !named_local(r, w, path_of(name)) {
                    bad.push(format!(
                        "{} named {name} after {} ms but not as local_fault",
                        who(lab, w),
                        ms(d)
                    ));
                } else {
                    good.push(format!("{} named {name} +{} ms", who(lab, w), ms(d)));
                }
            }
            None => bad.push(format!(
                "{} named no {} within {} s",
                who(lab, w),
                match s.expect.inside_names {
                    InsideNames::OwnHost => format!("host/{host_path}"),
                    _ => format!("entity enclosing it within {failed}"),
                },
                DETECT_BOUND.as_secs()
            )),
        }
    }
    let pass = bad.is_empty() && !inside.is_empty();
    let mut detail = good.join(", ");
    if inside.is_empty() {
        detail = "no inside subscriber".to_owned();
    }
    if !bad.is_empty() {
        if !detail.is_empty() {
            detail += "; ";
        }
        detail += &bad.join("; ");
    }
    Check::new("inside", pass, detail)
}

fn only_expected(s: &Scenario, lab: &Lab, r: &Record) -> Check {
    let mut wrong = Vec::new();
    let mut why: Vec<String> = Vec::new();
    let mut allowed_n = 0;
    for w in r.watchers {
        for (i, d) in went_not_serving(lab, r, w) {
            let name = &lab.services[i];
            let path = path_of(name);
            let ok = if s.expect.no_not_serving {
                false
            } else if s
                .expect
                .failed_path
                .as_deref()
                .is_some_and(|f| within(path, f))
            {
                true
            } else {
                // An inside subscriber's own enclosing entity, named from inside.
                w.vantage == Vantage::Inside
                    && encloses(lab, path, w.host)
                    && (w.kind == SubscriberKind::Grpcio || named_local(r, w, path))
            };
            if ok {
                allowed_n += 1;
            } else {
                wrong.push(format!("{name}@{} +{} ms", who(lab, w), ms(d)));
                if let Some(line) = agent_said(lab, w.host, name)
                    && !why.contains(&line)
                {
                    why.push(line);
                }
            }
        }
    }
    let what = if s.expect.no_not_serving {
        "nothing NOT_SERVING".to_owned()
    } else {
        format!(
            "NOT_SERVING only within {}",
            s.expect.failed_path.as_deref().unwrap_or("-")
        )
    };
    let detail = if wrong.is_empty() {
        format!(
            "{what} at {} subscribers ({allowed_n} expected transitions)",
            r.watchers.len()
        )
    } else {
        format!("{what}, but: {}{}", wrong.join(", "), why.concat())
    };
    Check::new("only-expected", wrong.is_empty(), detail)
}

/// The agent's own log line for the FAILED verdict a subscriber of its saw, so a
/// failed check says who voted and why: the latest such line (runs share one log,
/// and the check runs as its run ends).
fn agent_said(lab: &Lab, host: usize, service: &str) -> Option<String> {
    let (level, path) = service.split_once('/')?;
    let name = &lab.topology.hosts[host].name;
    let log = std::fs::read_to_string(lab.run_dir.join(format!("{name}.log"))).ok()?;
    let needle = format!("verdict level={level} path={path} state=\"FAILED\"");
    let line = log.lines().rev().find(|l| l.contains(&needle))?;
    let (at, _) = line.split_once(' ')?;
    let (_, said) = line.split_once("verdict ")?;
    Some(format!("\n    {name} logged at {at}: {said}"))
}

fn recovery(lab: &Lab, r: &Record) -> Check {
    let mut late = Vec::new();
    let mut slowest: Option<(Duration, String)> = None;
    for w in r.watchers {
        let mut state = vec![ServingStatus::Unknown; lab.services.len()];
        let mut touched = vec![false; lab.services.len()];
        let mut back_at = vec![None; lab.services.len()];
        for st in r
            .statuses
            .iter()
            .filter(|x| x.subscriber == w.ix && x.at <= r.end)
        {
            state[st.service] = st.status;
            if st.at >= r.injected {
                if st.status == ServingStatus::NotServing {
                    touched[st.service] = true;
                    back_at[st.service] = None;
                } else if st.status == ServingStatus::Serving && touched[st.service] {
                    back_at[st.service] = Some(st.at);
                }
            }
        }
        for i in (0..lab.services.len()).filter(|&i| touched[i]) {
            let name = &lab.services[i];
            if state[i] != ServingStatus::Serving {
                late.push(format!(
                    "{name}@{} still {}",
                    who(lab, w),
                    state[i].as_str_name()
                ));
                continue;
            }
            let after =
                back_at[i].map_or(Duration::ZERO, |at| at.saturating_duration_since(r.cleared));
            if after > RECOVERY_BOUND {
                late.push(format!("{name}@{} after {} ms", who(lab, w), ms(after)));
            } else if slowest.as_ref().is_none_or(|(m, _)| after > *m) {
                slowest = Some((after, format!("{name}@{}", who(lab, w))));
            }
        }
    }
    let mut detail = format!(
        "everything SERVING again within {} s of clearing",
        RECOVERY_BOUND.as_secs()
    );
    if let Some((d, what)) = &slowest {
        let _ = write!(detail, " (slowest {what} {} ms)", ms(*d));
    }
    if !late.is_empty() {
        let _ = write!(detail, "; late: {}", late.join(", "));
    }
    Check::new("recovery", late.is_empty(), detail)
}

fn calm(lab: &Lab, r: &Record) -> Check {
    let mut bad: Vec<String> = Vec::new();
    let mut verdicts = 0;
    for v in r
        .verdicts
        .iter()
        .filter(|v| v.at >= r.injected && v.at <= r.end)
    {
        let Some(w) = r.watchers.iter().find(|w| w.ix == v.subscriber) else {
            continue;
        };
        verdicts += 1;
        if v.level > Level::Host && matches!(v.state, State::Degraded | State::Failed) {
            let line = format!(
                "{} {}@{} +{} ms",
                v.path,
                v.state.as_str_name(),
                who(lab, w),
                ms(v.at - r.injected)
            );
            if !bad.contains(&line) {
                bad.push(line);
            }
        }
    }
    let detail = if bad.is_empty() {
        format!("nothing above host level DEGRADED or FAILED ({verdicts} verdict changes seen)")
    } else {
        format!("above host level: {}", bad.join(", "))
    };
    Check::new("calm", bad.is_empty(), detail)
}

/// A gray failure of `entity` ("rack/dc-a/c1/r1"): DEGRADED (or worse) at some
/// outside Verdicts subscriber before the loss was cleared and at every one by the
/// end of the watch; nothing else above host level DEGRADED or FAILED from injection
/// to the end of the watch.
fn degraded(lab: &Lab, r: &Record, entity: &str) -> Check {
    let path = entity.split_once('/').map_or(entity, |(_, p)| p);
    let in_run = |at| at >= r.injected && at <= r.end;
    let (mut in_time, mut late, mut never) = (Vec::new(), Vec::new(), Vec::new());
    let outside = r
        .watchers
        .iter()
        .filter(|w| w.vantage != Vantage::Inside && w.kind == SubscriberKind::Tonic);
    for w in outside {
        let first = r
            .verdicts
            .iter()
            .filter(|v| v.subscriber == w.ix && in_run(v.at))
            .find(|v| v.path == path && matches!(v.state, State::Degraded | State::Failed))
            .map(|v| v.at);
        match first {
            Some(at) if at <= r.cleared => in_time.push((at - r.injected, who(lab, w))),
            Some(at) => late.push(format!("{} {} ms after", who(lab, w), ms(at - r.cleared))),
            None => never.push(who(lab, w)),
        }
    }
    let mut elsewhere: Vec<String> = Vec::new();
    for v in r.verdicts.iter().filter(|v| in_run(v.at)) {
        if v.level > Level::Host
            && v.path != path
            && matches!(v.state, State::Degraded | State::Failed)
        {
            let line = format!("{} {}", v.path, v.state.as_str_name());
            if !elsewhere.contains(&line) {
                elsewhere.push(line);
            }
        }
    }
    let watched = in_time.len() + late.len() + never.len();
    let mut detail = format!(
        "{entity} DEGRADED while the loss lasted at {}/{watched} outside Verdicts subscribers",
        in_time.len()
    );
    if let Some((d, w)) = in_time.iter().max() {
        let _ = write!(detail, " (slowest {w} {} ms)", ms(*d));
    }
    if !late.is_empty() {
        let _ = write!(detail, "; after it cleared: {}", late.join(", "));
    }
    if !never.is_empty() {
        let _ = write!(detail, "; never: {}", never.join(", "));
    }
    if !elsewhere.is_empty() {
        let _ = write!(detail, "; also above host level: {}", elsewhere.join(", "));
    }
    let pass = !in_time.is_empty() && never.is_empty() && elsewhere.is_empty();
    Check::new("degraded", pass, detail)
}

fn wire(lab: &Lab, r: &Record) -> Check {
    if let Some(why) = &r.delay_dead {
        return Check::new("wire", false, format!("the delay stage died: {why}"));
    }
    let mut short = Vec::new();
    let mut pairs = Vec::new();
    for ((a, b), rtt, n) in lab.rtt_pairs(r.injected, r.cleared) {
        if a == b || n < WIRE_MIN_SAMPLES {
            continue;
        }
        let nominal = lab.topology.delay(a, b) * 2;
        let name = format!(
            "{}>{}",
            lab.topology.sites[a].name, lab.topology.sites[b].name
        );
        pairs.push(format!("{name} {:.1}", rtt.as_secs_f64() * 1000.0));
        if rtt.as_secs_f64() < WIRE_MIN_SHARE * nominal.as_secs_f64() {
            short.push(format!(
                "{name} {:.1} ms < {:.0}% of {} ms",
                rtt.as_secs_f64() * 1000.0,
                WIRE_MIN_SHARE * 100.0,
                nominal.as_millis()
            ));
        }
    }
    let pass = short.is_empty() && !pairs.is_empty();
    let detail = if pass {
        format!(
            "delay stage alive; inter-site request RTT p50 ms during the fault: {}",
            pairs.join(", ")
        )
    } else if pairs.is_empty() {
        "no inter-site request succeeded during the fault".to_owned()
    } else {
        format!("inter-site RTT too short: {}", short.join(", "))
    };
    Check::new("wire", pass, detail)
}
