//! The detector engine at fleet scale: runs the criterion benchmark
//! `agent/core/benches/detector_tick.rs` (`observe` + `tick` over 10k and 100k links) and
//! reads criterion's per-tick estimates back from `target/criterion`.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::{Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::{cargo, run_status, target_dir};

/// Criterion's group name, set in the bench.
const GROUP: &str = "detector_tick";
/// The goal for one `observe` + `tick` at 100k links.
const GOAL_NS: f64 = 5e6;
/// Columns of the table, as the bench names its measurements.
const MEASURES: [(&str, &str); 3] = [
    ("observe_tick", "observe+tick"),
    ("observe", "observe"),
    ("tick", "tick"),
];

/// Criterion's estimate of one benchmark, per tick.
pub(super) struct Estimate {
    /// `detector_tick/observe_tick/100k_links_healthy`.
    pub(super) full_id: String,
    /// `observe_tick`, `observe` or `tick`.
    pub(super) measure: String,
    /// `100k_links_healthy`.
    pub(super) scenario: String,
    pub(super) mean_ns: f64,
    pub(super) mean_lower_ns: f64,
    pub(super) mean_upper_ns: f64,
    pub(super) median_ns: f64,
    pub(super) std_dev_ns: f64,
}

pub(super) struct DetectorBench {
    estimates: Vec<Estimate>,
    filter: Option<String>,
    wall_s: f64,
}

/// Runs `cargo bench -p faultline-core --bench detector_tick [-- FILTER]` and collects the
/// estimates criterion wrote during this run.
pub(super) fn run(filter: Option<&str>) -> Result<DetectorBench> {
    println!(
        "detector: cargo bench -p faultline-core --bench detector_tick{} (a few minutes)",
        filter.map(|f| format!(" -- {f}")).unwrap_or_default()
    );
    let started = SystemTime::now();
    let start = Instant::now();
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "faultline-core", "--bench", "detector_tick"]);
    if let Some(f) = filter {
        cmd.args(["--", f]);
    }
    run_status(&mut cmd)?;
    let wall_s = start.elapsed().as_secs_f64();
    let dir = target_dir().join("criterion").join(GROUP);
    let mut estimates = read_estimates(&dir, started)?;
    if estimates.is_empty() {
        bail!(
            "the detector bench wrote no estimates under {}{}",
            dir.display(),
            filter.map_or_else(String::new, |f| format!(" (does `{f}` match any?)"))
        );
    }
    estimates.sort_by(|a, b| a.full_id.cmp(&b.full_id));
    Ok(DetectorBench {
        estimates,
        filter: filter.map(str::to_owned),
        wall_s,
    })
}

/// Every `<dir>/<measure>/<scenario>/new/` written since `since`.
pub(super) fn read_estimates(dir: &Path, since: SystemTime) -> Result<Vec<Estimate>> {
    let mut out = Vec::new();
    for measure in subdirs(dir)? {
        for scenario in subdirs(&measure)? {
            let new = scenario.join("new");
            let estimates = new.join("estimates.json");
            let fresh = fs::metadata(&estimates)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since);
            if fresh {
                out.push(read_one(&new)?);
            }
        }
    }
    Ok(out)
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut dirs = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            dirs.push(path);
        }
    }
    Ok(dirs)
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

/// One benchmark's `benchmark.json` (its ids) and `estimates.json` (ns per iteration,
/// one iteration being one tick).
fn read_one(new: &Path) -> Result<Estimate> {
    let ids = read_json(&new.join("benchmark.json"))?;
    let est = read_json(&new.join("estimates.json"))?;
    let text = |key: &str| -> Result<String> {
        ids[key]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("{}: no `{key}`", new.join("benchmark.json").display()))
    };
    let number = |pointer: &str| -> Result<f64> {
        est.pointer(pointer)
            .and_then(Value::as_f64)
            .with_context(|| format!("{}: no `{pointer}`", new.join("estimates.json").display()))
    };
    Ok(Estimate {
        full_id: text("full_id")?,
        measure: text("function_id")?,
        scenario: text("value_str").unwrap_or_default(),
        mean_ns: number("/mean/point_estimate")?,
        mean_lower_ns: number("/mean/confidence_interval/lower_bound")?,
        mean_upper_ns: number("/mean/confidence_interval/upper_bound")?,
        median_ns: number("/median/point_estimate")?,
        std_dev_ns: number("/std_dev/point_estimate")?,
    })
}

/// `1.23 s` / `1.23 ms` / `456.7 µs`.
pub(super) fn duration(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

impl DetectorBench {
    /// Scenarios in the bench's order: 10k before 100k, healthy before blackhole.
    fn scenarios(&self) -> Vec<&str> {
        let mut s: Vec<&str> = self.estimates.iter().map(|e| e.scenario.as_str()).collect();
        s.sort_by_key(|name| {
            let links: u32 = name
                .split('k')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(u32::MAX);
            (links, !name.ends_with("healthy"), name.to_string())
        });
        s.dedup();
        s
    }

    fn get(&self, measure: &str, scenario: &str) -> Option<&Estimate> {
        self.estimates
            .iter()
            .find(|e| e.measure == measure && e.scenario == scenario)
    }

    /// The worst observe+tick mean at 100k links, if measured.
    fn worst_at_100k(&self) -> Option<f64> {
        self.estimates
            .iter()
            .filter(|e| e.measure == "observe_tick" && e.scenario.starts_with("100k"))
            .map(|e| e.mean_ns)
            .reduce(f64::max)
    }

    pub(super) fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\ndetector engine: criterion `{GROUP}`, 10,000-host topology, one tick = 100 ms of \
             observations; mean per tick ± half its 95 % CI; took {:.0} s",
            self.wall_s
        );
        let _ = write!(s, "  {:<24}", "scenario");
        for (_, label) in MEASURES {
            let _ = write!(s, " {label:>19}");
        }
        let _ = writeln!(s);
        for scenario in self.scenarios() {
            let _ = write!(s, "  {:<24}", scenario.replace('_', " "));
            for (measure, _) in MEASURES {
                let cell = self.get(measure, scenario).map_or_else(
                    || "-".to_owned(),
                    |e| {
                        let half = (e.mean_upper_ns - e.mean_lower_ns) / 2.0;
                        format!("{} ±{:.1} %", duration(e.mean_ns), half / e.mean_ns * 100.0)
                    },
                );
                let _ = write!(s, " {cell:>19}");
            }
            let _ = writeln!(s);
        }
        if let Some(worst) = self.worst_at_100k() {
            let verdict = if worst <= GOAL_NS {
                "met".to_owned()
            } else {
                format!("MISSED, {:.1}× over", worst / GOAL_NS)
            };
            let _ = writeln!(
                s,
                "  goal: observe+tick ≤ {} at 100k links: worst {} ({verdict})",
                duration(GOAL_NS),
                duration(worst)
            );
        }
        s
    }

    pub(super) fn json(&self) -> Value {
        json!({
            "bench": "cargo bench -p faultline-core --bench detector_tick",
            "filter": self.filter,
            "topology": "2 sites × 5 cabinets × 20 racks × 50 hosts (10,000 hosts)",
            "unit": "ns per tick (one observe + tick cycle = 100 ms of simulated time)",
            "goal_observe_tick_ns_at_100k_links": GOAL_NS,
            "goal_met": self.worst_at_100k().map(|w| w <= GOAL_NS),
            "wall_s": self.wall_s,
            "results": self.estimates.iter().map(|e| json!({
                "id": e.full_id,
                "measure": e.measure,
                "scenario": e.scenario,
                "mean_ns": e.mean_ns,
                "mean_ci95_ns": [e.mean_lower_ns, e.mean_upper_ns],
                "median_ns": e.median_ns,
                "std_dev_ns": e.std_dev_ns,
            })).collect::<Vec<_>>(),
        })
    }
}
