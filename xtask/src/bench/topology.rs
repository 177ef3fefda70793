//! Topology parse time at fleet scale: runs the criterion benchmark
//! `agent/core/benches/topology_parse.rs` (`Topology::parse` of a generated file with
//! 10k and 100k hosts) and reads criterion's estimates back from `target/criterion`.
use std::{
    fmt::Write as _,
    time::{Instant, SystemTime},
};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::detector::{Estimate, duration, read_estimates};
use crate::{cargo, run_status, target_dir};

/// Criterion's group name, set in the bench.
const GROUP: &str = "topology_parse";
/// The goal for a 100,000-host file, release build.
const GOAL_NS: f64 = 2e9;

pub(super) struct TopologyBench {
    estimates: Vec<Estimate>,
    wall_s: f64,
}

/// Runs `cargo bench -p faultline-core --bench topology_parse` and collects the
/// estimates criterion wrote during this run.
pub(super) fn run() -> Result<TopologyBench> {
    println!("topology: cargo bench -p faultline-core --bench topology_parse (about a minute)");
    let started = SystemTime::now();
    let start = Instant::now();
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "faultline-core", "--bench", "topology_parse"]);
    run_status(&mut cmd)?;
    let wall_s = start.elapsed().as_secs_f64();
    let dir = target_dir().join("criterion").join(GROUP);
    let mut estimates = read_estimates(&dir, started)?;
    if estimates.is_empty() {
        bail!(
            "the topology bench wrote no estimates under {}",
            dir.display()
        );
    }
    // 10k before 100k.
    estimates.sort_by_key(|e| e.scenario.len());
    Ok(TopologyBench { estimates, wall_s })
}

impl TopologyBench {
    fn at_100k(&self) -> Option<f64> {
        self.estimates
            .iter()
            .find(|e| e.scenario.starts_with("100k"))
            .map(|e| e.mean_ns)
    }

    pub(super) fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\ntopology parse: criterion `{GROUP}`, generated file (40 hosts per rack, one \
             address each); mean ± half its 95 % CI; took {:.0} s",
            self.wall_s
        );
        for e in &self.estimates {
            let half = (e.mean_upper_ns - e.mean_lower_ns) / 2.0;
            let _ = writeln!(
                s,
                "  {:<24} {:>12} ±{:.1} %",
                e.scenario.replace('_', " "),
                duration(e.mean_ns),
                half / e.mean_ns * 100.0
            );
        }
        if let Some(t) = self.at_100k() {
            let verdict = if t <= GOAL_NS { "met" } else { "MISSED" };
            let _ = writeln!(
                s,
                "  goal: 100k hosts in under {}: {} ({verdict})",
                duration(GOAL_NS),
                duration(t)
            );
        }
        s
    }

    pub(super) fn json(&self) -> Value {
        json!({
            "bench": "cargo bench -p faultline-core --bench topology_parse",
            "unit": "ns per Topology::parse of the whole file",
            "goal_ns_at_100k_hosts": GOAL_NS,
            "goal_met": self.at_100k().map(|t| t <= GOAL_NS),
            "wall_s": self.wall_s,
            "results": self.estimates.iter().map(|e| json!({
                "id": e.full_id,
                "scenario": e.scenario,
                "mean_ns": e.mean_ns,
                "mean_ci95_ns": [e.mean_lower_ns, e.mean_upper_ns],
                "median_ns": e.median_ns,
                "std_dev_ns": e.std_dev_ns,
            })).collect::<Vec<_>>(),
        })
    }
}
