//! The scenario report: per subscriber, detection and recovery latencies across runs
//! (hdrhistogram p50/p99/max), what else went NOT_SERVING, what users suffered, and
//! what the lab itself cost in CPU. Printed as a table and written as JSON.
use std::{fmt::Write as _, time::Duration};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use super::{
    Lab,
    scenario::{Run, Scenario, Vantage},
};

/// CPU time of the lab's processes at one instant (clock ticks).
#[derive(Clone)]
pub(super) struct CpuSnapshot {
    at: std::time::Instant,
    pids: Vec<u32>,
    agents: Vec<u64>,
    delay: u64,
    xtask: u64,
    python: u64,
}

/// CPU used between two snapshots, in % of one core, and the agents' memory.
#[derive(Clone, Debug, Default)]
pub(super) struct Cpu {
    pub(super) agents_total: f64,
    pub(super) agent_max: f64,
    /// Each agent's CPU, in host order.
    pub(super) per_agent: Vec<f64>,
    /// Each agent's resident set at the end, KiB (from /proc/PID/status VmRSS).
    pub(super) rss_kib: Vec<u64>,
    pub(super) delay: f64,
    /// This process: traffic and subscribers.
    pub(super) xtask: f64,
    /// The Python grpcio subscriber process.
    pub(super) python: f64,
    pub(super) load1: f64,
}

impl CpuSnapshot {
    pub(super) fn take(agents: &[u32], delay: u32, python: Option<u32>) -> Self {
        Self {
            at: std::time::Instant::now(),
            pids: agents.to_vec(),
            agents: agents.iter().map(|&p| ticks(p)).collect(),
            delay: ticks(delay),
            xtask: ticks(std::process::id()),
            python: python.map_or(0, ticks),
        }
    }

    pub(super) fn since(&self, start: &Self) -> Cpu {
        // SAFETY: sysconf has no preconditions.
        let hz = f64::from(
            u32::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
                .unwrap_or(100)
                .max(1),
        );
        let secs = (self.at - start.at).as_secs_f64().max(1e-3);
        // CPU ticks of a few seconds fit f64 exactly.
        #[expect(clippy::cast_precision_loss)]
        let pct = |now: u64, then: u64| now.saturating_sub(then) as f64 / hz / secs * 100.0;
        let agents: Vec<f64> = self
            .agents
            .iter()
            .zip(&start.agents)
            .map(|(n, t)| pct(*n, *t))
            .collect();
        Cpu {
            agents_total: agents.iter().sum(),
            agent_max: agents.iter().copied().fold(0.0, f64::max),
            rss_kib: self.pids.iter().map(|&p| rss_kib(p)).collect(),
            per_agent: agents,
            delay: pct(self.delay, start.delay),
            xtask: pct(self.xtask, start.xtask),
            python: pct(self.python, start.python),
            load1: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|l| l.split_whitespace().next()?.parse().ok())
                .unwrap_or(0.0),
        }
    }
}

/// VmRSS of a process, KiB (0 if it is gone).
pub(super) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks (0 if it is gone).
fn ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; rest starts at field 3.
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

struct Row {
    subscriber: String,
    vantage: Vantage,
    detected: usize,
    detect: Histogram<u64>,
    degraded: Histogram<u64>,
    recover: Histogram<u64>,
    not_recovered: usize,
    flaps: u32,
    first: Vec<String>,
    others: Vec<(String, &'static str, usize)>,
}

pub(super) struct Report {
    scenario: String,
    hold: Duration,
    expected: Option<String>,
    router: String,
    runs: usize,
    rows: Vec<Row>,
    json_runs: Vec<Value>,
    impact_lines: Vec<String>,
    cpu: Vec<super::report::Cpu>,
    rtt: Vec<Vec<(String, Duration)>>,
    unsettled: usize,
    checks: Vec<String>,
    agent_names: Vec<String>,
}

/// KiB → MiB for display (RSS sizes fit an f64 exactly).
pub(super) fn kib_to_mib(kib: u64) -> f64 {
    f64::from(u32::try_from(kib).unwrap_or(u32::MAX)) / 1024.0
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000, 3).expect("static bounds are valid")
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Report {
    pub(super) fn new(s: &Scenario, runs: &[Run], lab: &Lab) -> Self {
        let name = |h: usize| lab.topology.hosts[h].name.clone();
        let layout = runs.first().map(|r| r.seen.clone()).unwrap_or_default();
        let mut rows: Vec<Row> = layout
            .iter()
            .map(|seen| Row {
                subscriber: format!("{}/{}", name(seen.host), seen.kind.label()),
                vantage: seen.vantage,
                detected: 0,
                detect: histogram(),
                degraded: histogram(),
                recover: histogram(),
                not_recovered: 0,
                flaps: 0,
                first: Vec::new(),
                others: Vec::new(),
            })
            .collect();
        let mut json_runs = Vec::new();
        let mut impact_lines = Vec::new();
        for (n, run) in runs.iter().enumerate() {
            for (row, seen) in rows.iter_mut().zip(&run.seen) {
                if let Some(d) = seen.detect {
                    row.detected += 1;
                    let _ = row.detect.record(ms(d));
                }
                if let Some(d) = seen.degraded {
                    let _ = row.degraded.record(ms(d));
                }
                if let Some(r) = seen.recover {
                    let _ = row.recover.record(ms(r));
                }
                if !seen.recovered {
                    row.not_recovered += 1;
                }
                row.flaps += seen.flaps;
                if let Some((d, svc)) = &seen.first {
                    row.first.push(format!("{svc} +{}ms", d.as_millis()));
                }
                for (svc, rel, _) in &seen.others {
                    match row.others.iter_mut().find(|(s2, _, _)| s2 == svc) {
                        Some(o) => o.2 += 1,
                        None => row.others.push((svc.clone(), rel, 1)),
                    }
                }
            }
            let i = &run.impact;
            impact_lines.push(format!(
                "run {}: {} of {} requests failed on {} flow(s) ({} with neither end inside the fault); first {} after injection, last {} after clearing; {} failed in the {}s before; {} packets dropped by the fault",
                n + 1,
                i.failed,
                i.requests,
                i.flows_failed,
                i.flows_failed_outside,
                i.first_failed.map_or("-".into(), |d| format!("{}ms", d.as_millis())),
                i.last_failed_after_clear_ms.map_or("-".into(), |d| format!("{d}ms")),
                i.failed_before,
                3,
                run.dropped_packets,
            ));
            json_runs.push(json!({
                "run": n + 1,
                "settled": match &run.settled { Ok(d) => json!({"after_ms": d.as_millis()}), Err(why) => json!({"not_settled": why}) },
                "dropped_packets": run.dropped_packets,
                "checks": run.checks.iter().map(|c| json!({"check": c.name, "pass": c.pass, "detail": c.detail})).collect::<Vec<_>>(),
                "subscribers": run.seen.iter().map(|seen| json!({
                    "host": name(seen.host),
                    "client": seen.kind.label(),
                    "vantage": seen.vantage.label(),
                    "detect_ms": seen.detect.map(|d| d.as_millis()),
                    "degraded_ms": seen.degraded.map(|d| d.as_millis()),
                    "first_not_serving": seen.first.as_ref().map(|(d, svc)| json!({"service": svc, "after_ms": d.as_millis()})),
                    "recover_ms": seen.recover.map(|d| d.as_millis()),
                    "recovered": seen.recovered,
                    "flaps_during_fault": seen.flaps,
                    "other_not_serving": seen.others.iter().map(|(svc, rel, d)| json!({"service": svc, "relation": rel, "after_ms": d.as_millis()})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "traffic": {
                    "requests": i.requests,
                    "failed": i.failed,
                    "flows_failed": i.flows_failed,
                    "flows_failed_outside_the_fault": i.flows_failed_outside,
                    "first_failed_after_injection_ms": i.first_failed.map(|d| d.as_millis()),
                    "last_failed_after_clearing_ms": i.last_failed_after_clear_ms,
                    "failed_in_3s_before": i.failed_before,
                },
                "request_rtt_p50_ms_by_site_pair": run.rtt.iter().map(|(pair, d)| (pair.clone(), json!(d.as_secs_f64() * 1000.0))).collect::<serde_json::Map<_, _>>(),
                "cpu_percent_of_one_core": {
                    "agents_total": run.cpu.agents_total,
                    "busiest_agent": run.cpu.agent_max,
                    "per_agent": run.cpu.per_agent.iter().zip(lab.topology.hosts.iter()).map(|(c, h)| (h.name.clone(), json!(c))).collect::<serde_json::Map<_, _>>(),
                    "delay_stage": run.cpu.delay,
                    "xtask_traffic_and_subscribers": run.cpu.xtask,
                    "python_subscriber": run.cpu.python,
                    "load_average_1m": run.cpu.load1,
                },
                "agent_rss_kib": run.cpu.rss_kib.iter().zip(lab.topology.hosts.iter()).map(|(r, h)| (h.name.clone(), json!(r))).collect::<serde_json::Map<_, _>>(),
            }));
        }
        Self {
            scenario: s.kind.name(),
            hold: s.kind.hold(),
            expected: s.expected.clone(),
            router: s.router_role.clone(),
            runs: runs.len(),
            rows,
            json_runs,
            impact_lines,
            cpu: runs.iter().map(|r| r.cpu.clone()).collect(),
            rtt: runs.iter().map(|r| r.rtt.clone()).collect(),
            unsettled: runs.iter().filter(|r| r.settled.is_err()).count(),
            checks: runs
                .iter()
                .enumerate()
                .flat_map(|(n, r)| {
                    r.checks
                        .iter()
                        .map(move |c| format!("run {}: {}", n + 1, c.line(&s.kind.name())))
                })
                .collect(),
            agent_names: lab.topology.hosts.iter().map(|h| h.name.clone()).collect(),
        }
    }

    pub(super) fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n== {}: {} (fault at the {}, held {}s), {} run(s){}",
            self.scenario,
            self.expected.as_deref().unwrap_or("nothing should fail"),
            self.router,
            self.hold.as_secs(),
            self.runs,
            if self.unsettled > 0 {
                format!(
                    ", {} run(s) injected before the lab settled",
                    self.unsettled
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "{:<14} {:<10} {:>8} {:>22} {:>22} {:>6}  FIRST NOT_SERVING / OTHERS NOT_SERVING (runs)",
            "SUBSCRIBER",
            "WHERE",
            "DETECTED",
            "DETECT p50/p99/max ms",
            "RECOVER p50/p99/max ms",
            "FLAPS"
        );
        for r in &self.rows {
            let recover = if r.not_recovered > 0 {
                format!("{} ({} stuck)", p50_p99_max(&r.recover), r.not_recovered)
            } else {
                p50_p99_max(&r.recover)
            };
            let _ = writeln!(
                out,
                "{:<14} {:<10} {:>8} {:>22} {:>22} {:>6}  first: {}",
                r.subscriber,
                r.vantage.label(),
                format!("{}/{}", r.detected, self.runs),
                p50_p99_max(&r.detect),
                recover,
                r.flaps,
                if r.first.is_empty() {
                    "-".to_owned()
                } else {
                    r.first.join("; ")
                },
            );
            if !r.others.is_empty() {
                let others: Vec<String> = r
                    .others
                    .iter()
                    .map(|(s, rel, n)| format!("{s} [{rel}] ({n})"))
                    .collect();
                let _ = writeln!(out, "{:>88}  others: {}", "", others.join(", "));
            }
            if !r.degraded.is_empty() {
                let _ = writeln!(
                    out,
                    "{:>88}  DEGRADED (Verdicts) p50/p99/max ms: {}",
                    "",
                    p50_p99_max(&r.degraded)
                );
            }
        }
        for l in &self.impact_lines {
            let _ = writeln!(out, "traffic {l}");
        }
        if let Some(rtt) = self.rtt.first() {
            let pairs: Vec<String> = rtt
                .iter()
                .map(|(p, d)| format!("{p} {:.1}", d.as_secs_f64() * 1000.0))
                .collect();
            let _ = writeln!(out, "request RTT p50 ms before run 1: {}", pairs.join(", "));
        }
        for (n, c) in self.cpu.iter().enumerate() {
            let _ = writeln!(
                out,
                "cpu run {}: agents {:.0}% of a core in total (busiest {:.1}%), delay stage {:.1}%, xtask (traffic + subscribers) {:.1}%, python subscriber {:.1}%, load {:.1}",
                n + 1,
                c.agents_total,
                c.agent_max,
                c.delay,
                c.xtask,
                c.python,
                c.load1
            );
            let rss_max = c.rss_kib.iter().copied().max().unwrap_or(0);
            let busiest = c
                .per_agent
                .iter()
                .zip(&self.agent_names)
                .max_by(|a, b| a.0.total_cmp(b.0))
                .map_or("-".to_owned(), |(c, n)| format!("{n} {c:.1}%"));
            let _ = writeln!(
                out,
                "agents run {}: busiest {busiest}; RSS max {:.1} MiB, total {:.1} MiB",
                n + 1,
                kib_to_mib(rss_max),
                kib_to_mib(c.rss_kib.iter().sum())
            );
        }
        out
    }

    pub(super) fn json(&self) -> Value {
        let pct = p50_p99_max_json;
        json!({
            "scenario": self.scenario,
            "expected_not_serving": self.expected,
            "fault_at": self.router,
            "hold_ms": self.hold.as_millis(),
            "runs": self.runs,
            "summary": self.rows.iter().map(|r| json!({
                "subscriber": r.subscriber,
                "vantage": r.vantage.label(),
                "detected_runs": r.detected,
                "detect_ms": pct(&r.detect),
                "recover_ms": pct(&r.recover),
                "not_recovered_runs": r.not_recovered,
                "flaps_during_fault": r.flaps,
                "other_not_serving": r.others.iter().map(|(s, rel, n)| json!({"service": s, "relation": rel, "runs": n})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "checks": self.checks,
            "per_run": self.json_runs,
        })
    }
}

/// `p50/p99/max` of a histogram, or `-` when it is empty.
pub(super) fn p50_p99_max(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        "-".to_owned()
    } else {
        format!(
            "{}/{}/{}",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max()
        )
    }
}

/// The same as JSON (`null` when empty), with the sample count.
pub(super) fn p50_p99_max_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        Value::Null
    } else {
        json!({"p50": h.value_at_quantile(0.5), "p99": h.value_at_quantile(0.99), "max": h.max(), "count": h.len()})
    }
}
