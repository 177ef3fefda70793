//! `cargo xtask bench lab [--runs N] [--soak-minutes M]`: the lab as a benchmark.
//!
//! 1. Every hard-failure scenario ([`Kind::HARD`]) and gray-loss, `--runs` times each,
//!    round-robin (so faults on one entity are far apart, see the flap spacing in
//!    [`super::scenario`]): detection at outside subscribers (tonic and grpcio),
//!    gray loss to DEGRADED, recovery, user impact (first failed request after
//!    injection, last one after clearing), each agent's CPU and RSS.
//!    bgp-failover too ([`super::bgp`]): with the adapter and the edge link cut every
//!    round, without the adapter in the first round only (the control: traffic never
//!    moves, and each of its runs costs another flap spacing of the site); MTTR and
//!    RIB withdrawal → edge route change against their goals.
//! 2. A soak: core-noise and cpu-contention at once for `--soak-minutes`, counting
//!    every NOT_SERVING (all false: nothing fails), every verdict above host level
//!    DEGRADED or FAILED, and every withdrawal of the announcers (running throughout).
//!
//! Prints a summary table and writes `target/lab/bench.json` (and the per-scenario
//! reports, `target/lab/bench-<scenario>.json`).
use std::{fmt::Write as _, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use faultline_proto::{
    health::health_check_response::ServingStatus,
    v1::{Level, State},
};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use super::{
    Lab, bgp, open, report,
    scenario::{HOLD, Kind, Run, Scenario, Vantage},
};
use crate::target_dir;

#[derive(clap::Args)]
pub(crate) struct Options {
    /// The topology (the agents' own format). Default: examples/lab/topology.toml.
    #[arg(long)]
    topology: Option<PathBuf>,
    /// Runs of each hard-failure scenario (and of gray-loss).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=200))]
    runs: u32,
    /// The timed scenarios to run, separated by commas (hard failures, gray-loss,
    /// bgp-failover), or `all`.
    #[arg(long, default_value = "all")]
    scenarios: String,
    /// Minutes of the soak (core-noise plus cpu-contention); 0 leaves it out.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=240))]
    soak_minutes: u32,
}

pub(crate) fn run(opts: &Options) -> Result<()> {
    let all: Vec<Kind> = Kind::HARD
        .iter()
        .copied()
        .chain([Kind::GrayLoss, Kind::BgpFailover])
        .collect();
    let timed = if opts.scenarios == "all" {
        all
    } else {
        let asked = super::parse_scenarios(&opts.scenarios)?;
        if let Some(k) = asked.iter().find(|k| !all.contains(k)) {
            anyhow::bail!(
                "`{}` is not a timed scenario (the soak runs core-noise and cpu-contention)",
                k.name()
            );
        }
        asked
    };
    let mut kinds = timed.clone();
    if opts.soak_minutes > 0 {
        kinds.extend([Kind::CoreNoise, Kind::CpuContention]);
    }
    let mut lab = open(opts.topology.as_ref(), &kinds)?;
    let scenarios = timed
        .iter()
        .map(|k| Scenario::resolve(*k, &lab.net, &lab.topology))
        .collect::<Result<Vec<_>>>()?;
    let mut runs: Vec<Vec<Run>> = scenarios.iter().map(|_| Vec::new()).collect();
    let mut bgp_rounds = Vec::new();
    for n in 1..=opts.runs {
        for (s, done) in scenarios.iter().zip(&mut runs) {
            println!(
                "bench lab: round {n}/{}, {}: {}",
                opts.runs,
                s.kind.name(),
                s.expected.as_deref().unwrap_or("(nothing should fail)")
            );
            if s.kind == Kind::BgpFailover {
                let variants: &[bgp::Variant] = if n == 1 {
                    &bgp::Variant::ALL
                } else {
                    &[bgp::Variant::Adapter, bgp::Variant::LinkDown]
                };
                let round = bgp::run_round(&mut lab, s, variants)?;
                for c in round.checks.iter().filter(|c| !c.pass) {
                    println!("  {}", c.line(&s.kind.name()));
                }
                bgp_rounds.push(round);
                continue;
            }
            let run = s.run(&mut lab, s.kind.hold())?;
            for c in run.checks.iter().filter(|c| !c.pass) {
                println!("  {}", c.line(&s.kind.name()));
            }
            done.push(run);
        }
    }
    let out = target_dir().join("lab");
    let mut summary = Vec::new();
    let mut table = String::new();
    for (s, done) in scenarios.iter().zip(&runs) {
        if s.kind == Kind::BgpFailover {
            let b = lab.bgp.as_ref().context("the BGP setup runs")?;
            let report = bgp::Report::new(&bgp_rounds, b, s);
            print!("{}", report.table());
            let path = out.join(format!("bench-{}.json", s.kind.name()));
            std::fs::write(&path, serde_json::to_string_pretty(&report.json())? + "\n")
                .with_context(|| format!("write {}", path.display()))?;
            let (line, value) = report.bench_summary();
            table += &line;
            summary.push(value);
            continue;
        }
        let report = report::Report::new(s, done, &lab);
        print!("{}", report.table());
        let path = out.join(format!("bench-{}.json", s.kind.name()));
        std::fs::write(&path, serde_json::to_string_pretty(&report.json())? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
        let (line, value) = summarize(s, done, &lab);
        table += &line;
        summary.push(value);
    }
    let soak = if opts.soak_minutes > 0 {
        Some(soak(&mut lab, opts.soak_minutes)?)
    } else {
        None
    };
    drop(lab);
    println!(
        "\n== bench lab: {} run(s) per scenario, fault held {} s\n{table}",
        opts.runs,
        HOLD.as_secs()
    );
    if let Some((line, _)) = &soak {
        println!("{line}");
    }
    let path = out.join("bench.json");
    let json = json!({
        "runs_per_scenario": opts.runs,
        "hold_ms": HOLD.as_millis(),
        "scenarios": summary,
        "soak": soak.map(|(_, v)| v),
    });
    std::fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("write {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000, 3).expect("static bounds are valid")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record(u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
}

/// One scenario's figures: a table block and its JSON.
fn summarize(s: &Scenario, runs: &[Run], lab: &Lab) -> (String, Value) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "-- {} ({}): {} run(s)",
        s.kind.name(),
        s.expected
            .as_deref()
            .or(s.expect.degraded.as_deref())
            .unwrap_or("-"),
        runs.len()
    );
    let _ = writeln!(
        out,
        "   {:<16} {:<10} {:>9} {:>20} {:>20}",
        "SUBSCRIBER", "WHERE", "DETECTED", "DETECT p50/p99/max", "RECOVER p50/p99/max"
    );
    let mut all_outside = histogram();
    let mut all_degraded = histogram();
    let mut per_sub = Vec::new();
    let layout = runs.first().map(|r| r.seen.clone()).unwrap_or_default();
    for (i, seen0) in layout.iter().enumerate() {
        let (mut det, mut rec, mut deg) = (histogram(), histogram(), histogram());
        let mut detected = 0;
        for r in runs {
            let Some(seen) = r.seen.get(i) else { continue };
            if let Some(d) = seen.detect {
                detected += 1;
                record(&mut det, d);
                if seen.vantage != Vantage::Inside {
                    record(&mut all_outside, d);
                }
            }
            if let Some(d) = seen.recover {
                record(&mut rec, d);
            }
            if let Some(d) = seen.degraded {
                record(&mut deg, d);
                if seen.vantage != Vantage::Inside {
                    record(&mut all_degraded, d);
                }
            }
        }
        let label = format!(
            "{}/{}",
            lab.topology.hosts[seen0.host].name,
            seen0.kind.label()
        );
        let _ = writeln!(
            out,
            "   {:<16} {:<10} {:>9} {:>20} {:>20}{}",
            label,
            seen0.vantage.label(),
            format!("{detected}/{}", runs.len()),
            super::report::p50_p99_max(&det),
            super::report::p50_p99_max(&rec),
            if deg.is_empty() {
                String::new()
            } else {
                format!("  DEGRADED {}", super::report::p50_p99_max(&deg))
            }
        );
        per_sub.push(json!({
            "subscriber": label,
            "vantage": seen0.vantage.label(),
            "detected_runs": detected,
            "detect_ms": super::report::p50_p99_max_json(&det),
            "recover_ms": super::report::p50_p99_max_json(&rec),
            "degraded_ms": super::report::p50_p99_max_json(&deg),
        }));
    }
    let (mut first_failed, mut last_failed) = (histogram(), histogram());
    let mut last_before_clear = 0;
    for r in runs {
        if let Some(d) = r.impact.first_failed {
            record(&mut first_failed, d);
        }
        match r.impact.last_failed_after_clear_ms {
            Some(ms) if ms >= 0 => {
                record(
                    &mut last_failed,
                    Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
                );
            }
            Some(_) => last_before_clear += 1,
            None => {}
        }
    }
    let n = runs.len().max(1);
    let mean = |f: &dyn Fn(&Run) -> f64| runs.iter().map(f).sum::<f64>() / count_f64(n);
    let agents_total = mean(&|r| r.cpu.agents_total);
    let busiest = runs.iter().map(|r| r.cpu.agent_max).fold(0.0, f64::max);
    let rss_max = runs
        .iter()
        .flat_map(|r| r.cpu.rss_kib.iter().copied())
        .max()
        .unwrap_or(0);
    let failed_checks: Vec<String> = runs
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            r.checks
                .iter()
                .filter(|c| !c.pass)
                .map(move |c| format!("run {}: {} {}", i + 1, c.name, c.detail))
        })
        .collect();
    let checks_total: usize = runs.iter().map(|r| r.checks.len()).sum();
    let _ = writeln!(
        out,
        "   outside, all subscribers: detect p50/p99/max {} ms{}",
        super::report::p50_p99_max(&all_outside),
        if all_degraded.is_empty() {
            String::new()
        } else {
            format!(
                "; DEGRADED {} ms",
                super::report::p50_p99_max(&all_degraded)
            )
        }
    );
    let _ = writeln!(
        out,
        "   impact: first failed request {} ms after injection, last {} ms after clearing (p50/p99/max; {} run(s) with none after clearing)",
        super::report::p50_p99_max(&first_failed),
        super::report::p50_p99_max(&last_failed),
        last_before_clear
    );
    let _ = writeln!(
        out,
        "   agents: {agents_total:.0}% of a core in total (mean), busiest {busiest:.1}%, RSS max {:.1} MiB; checks {}/{} passed",
        report::kib_to_mib(rss_max),
        checks_total - failed_checks.len(),
        checks_total
    );
    for f in &failed_checks {
        let _ = writeln!(out, "   FAIL {f}");
    }
    let per_agent: serde_json::Map<String, Value> = lab
        .topology
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let cpu: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.cpu.per_agent.get(i).copied())
                .collect();
            let rss = runs
                .iter()
                .filter_map(|r| r.cpu.rss_kib.get(i).copied())
                .max()
                .unwrap_or(0);
            (
                h.name.clone(),
                json!({
                    "cpu_percent_mean": cpu.iter().sum::<f64>() / count_f64(cpu.len().max(1)),
                    "cpu_percent_max": cpu.iter().copied().fold(0.0, f64::max),
                    "rss_kib_max": rss,
                }),
            )
        })
        .collect();
    let value = json!({
        "scenario": s.kind.name(),
        "expected_not_serving": s.expected,
        "expected_degraded": s.expect.degraded,
        "runs": runs.len(),
        "outside_detect_ms": super::report::p50_p99_max_json(&all_outside),
        "outside_degraded_ms": super::report::p50_p99_max_json(&all_degraded),
        "subscribers": per_sub,
        "impact": {
            "first_failed_after_injection_ms": super::report::p50_p99_max_json(&first_failed),
            "last_failed_after_clearing_ms": super::report::p50_p99_max_json(&last_failed),
            "runs_with_no_failure_after_clearing": last_before_clear,
        },
        "agents": {
            "cpu_percent_total_mean": agents_total,
            "cpu_percent_busiest_max": busiest,
            "per_agent": per_agent,
        },
        "checks": {"total": checks_total, "failed": failed_checks},
    });
    (out, value)
}

/// Small counts as f64 (exact).
fn count_f64(n: usize) -> f64 {
    f64::from(u32::try_from(n).unwrap_or(u32::MAX))
}

/// Core noise and CPU contention at once for `minutes`: every NOT_SERVING is false,
/// every verdict above host level DEGRADED or FAILED is false, and so is every
/// withdrawal of the announcers (when bgp-failover's setup runs).
fn soak(lab: &mut Lab, minutes: u32) -> Result<(String, Value)> {
    let mut s = Scenario::resolve(Kind::CoreNoise, &lab.net, &lab.topology)?;
    let contention = Scenario::resolve(Kind::CpuContention, &lab.net, &lab.topology)?;
    s.starve.clone_from(&contention.starve);
    s.inside.clone_from(&contention.inside);
    s.subscribers.clone_from(&contention.subscribers);
    s.router_role = format!("core (1% loss) and {}", contention.router_role);
    println!("bench lab: soak of core-noise plus cpu-contention for {minutes} min");
    let withdrawals_before = lab.bgp.as_ref().and_then(bgp::Bgp::withdrawals_metric);
    let run = s.run(lab, Duration::from_secs(u64::from(minutes) * 60))?;
    let withdrawals = lab
        .bgp
        .as_ref()
        .map(|b| bgp::soak_withdrawals(b, run.injected, run.end, withdrawals_before));
    let statuses = lab.subscribers.log.all();
    let verdicts = lab.subscribers.verdicts.all();
    let watchers = s.watchers(lab);
    let mut false_not_serving = Vec::new();
    for w in &watchers {
        let mut state = vec![ServingStatus::Unknown; lab.services.len()];
        for st in statuses.iter().filter(|x| x.subscriber == w.ix) {
            let was = state[st.service];
            state[st.service] = st.status;
            if st.at >= run.injected
                && st.at <= run.end
                && st.status == ServingStatus::NotServing
                && was != ServingStatus::NotServing
            {
                false_not_serving.push(format!(
                    "{}@{} +{:.1}s",
                    lab.services[st.service],
                    lab.subscriber_label(w.ix),
                    (st.at - run.injected).as_secs_f64()
                ));
            }
        }
    }
    let mut above_host = Vec::new();
    let mut last: std::collections::BTreeMap<(usize, String), State> =
        std::collections::BTreeMap::new();
    for v in verdicts.iter().filter(|v| v.at <= run.end) {
        let was = last
            .insert((v.subscriber, v.path.clone()), v.state)
            .unwrap_or(State::Unspecified);
        if v.at >= run.injected
            && v.level > Level::Host
            && matches!(v.state, State::Degraded | State::Failed)
            && was != v.state
        {
            above_host.push(format!(
                "{} {}@{} +{:.1}s",
                v.path,
                v.state.as_str_name(),
                lab.subscriber_label(v.subscriber),
                (v.at - run.injected).as_secs_f64()
            ));
        }
    }
    let requests = run.impact.requests;
    let failed = run.impact.failed;
    let mut line = format!(
        "-- soak: core-noise + cpu-contention for {minutes} min at {} subscribers: {} false NOT_SERVING, {} above-host DEGRADED/FAILED verdicts; {failed} of {requests} requests failed; agents {:.0}% of a core in total, busiest {:.1}%",
        watchers.len(),
        false_not_serving.len(),
        above_host.len(),
        run.cpu.agents_total,
        run.cpu.agent_max
    );
    for f in false_not_serving.iter().chain(&above_host).take(40) {
        let _ = write!(line, "\n   {f}");
    }
    if let Some((text, _)) = &withdrawals {
        let _ = write!(line, "\n{text}");
    }
    let value = json!({
        "minutes": minutes,
        "subscribers": watchers.len(),
        "false_not_serving": false_not_serving,
        "above_host_degraded_or_failed": above_host,
        "requests": requests,
        "failed_requests": failed,
        "agents_cpu_percent_total": run.cpu.agents_total,
        "agents_cpu_percent_busiest": run.cpu.agent_max,
        "agents_rss_kib_max": run.cpu.rss_kib.iter().copied().max().unwrap_or(0),
        "checks": run.checks.iter().map(|c| json!({"check": c.name, "pass": c.pass, "detail": c.detail})).collect::<Vec<_>>(),
        "announcer_withdrawals": withdrawals.map(|(_, v)| v),
    });
    Ok((line, value))
}
