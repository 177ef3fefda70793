//! `cargo xtask bench`: what the agent costs, measured side by side in one run.
//!
//! 1. Throughput: iperf3 between two network namespaces joined by a veth pair,
//!    `--runs` interleaved pairs of `--seconds` runs without and with the agent
//!    (the order alternates within pairs, so a drift does not favour one side), after
//!    a discarded 1 s warm-up run.
//! 2. Kernel cost per program: one more agent-attached run with
//!    `kernel.bpf_stats_enabled=1` (restored afterwards), taking the delta of each
//!    program's run_cnt / run_time_ns over the iperf3 run. Stats are off during the
//!    throughput runs, as in production.
//!
//! 3. Detector engine: the criterion benchmark `agent/benches/detector_tick.rs`, one
//!    `observe` + `tick` at 10k and 100k links in a 10,000-host topology, healthy and
//!    with a blackholed rack; criterion's per-tick means are read back from
//!    `target/criterion` ([`detector`]).
//! 4. Topology parse: the criterion benchmark `agent/core/benches/topology_parse.rs`,
//!    `Topology::parse` of a 10k- and a 100k-host file ([`topology`]).
//!
//! Parts 3 and 4 are pure CPU: `--detector-only` runs just them (no root, no
//! namespaces); `--skip-detector` leaves them out.
//!
//! `cargo xtask bench memory` is separate: the agent's RSS under a churn of a million
//! distinct remote addresses ([`memory`]); `cargo xtask bench lab` the namespace lab.
//!
//! Prints a table and writes `target/bench/latest.json`. Namespaces, the iperf3 server
//! and agents are removed by guards even on error, panic or Ctrl-C.
mod agent;
mod detector;
pub(crate) mod lab;
mod memory;
mod topology;

use std::{
    fmt::Write as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use self::{
    agent::{Agent, BpfStats, ProgCost},
    detector::DetectorBench,
    lab::Lab,
    topology::TopologyBench,
};
use crate::{build, is_root, setup, target_dir, workspace_root};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Options {
    #[command(subcommand)]
    what: Option<What>,
    /// Interleaved pairs of iperf3 runs (one without, one with the agent).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    runs: u32,
    /// Length of each iperf3 run, in seconds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=60))]
    seconds: u32,
    /// Only the pure-CPU benchmarks, the detector engine and the topology parse (needs
    /// neither root nor namespaces).
    #[arg(long, conflicts_with = "skip_detector")]
    detector_only: bool,
    /// Leave out the detector engine and topology parse benchmarks (throughput and
    /// kernel cost only).
    #[arg(long)]
    skip_detector: bool,
    /// Run only the detector benchmarks whose id matches this regex (criterion's
    /// filter), e.g. `100k` or `observe_tick/100k_links_healthy`.
    #[arg(long, value_name = "REGEX", conflicts_with = "skip_detector")]
    detector_filter: Option<String>,
}

/// Benchmarks with their own options.
#[derive(clap::Subcommand)]
enum What {
    /// The namespace lab: per hard-failure scenario p50/p99/max detection at outside
    /// subscribers, recovery, user impact, each agent's CPU and RSS; then a soak of
    /// core-noise plus cpu-contention counting false verdicts (as root).
    Lab(crate::lab::BenchOptions),
    /// The agent's RSS while its host connects to 1,000,000 distinct remote addresses
    /// over 10 minutes (real TCP between two namespaces); passes under 64 MiB (as root).
    Memory(memory::Options),
}

pub(crate) fn run(opts: &Options) -> Result<()> {
    match &opts.what {
        Some(What::Lab(lab)) => return crate::lab::bench(lab),
        Some(What::Memory(memory)) => return memory::run(memory),
        None => {}
    }
    if !opts.detector_only && !is_root() {
        bail!(
            "the benchmark creates network namespaces and loads eBPF programs; run as root \
             (or `--detector-only` for the detector engine alone)"
        );
    }
    setup::ensure()?;
    let out_dir = target_dir().join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    // First: pure CPU, and nothing else is running yet to disturb it.
    let (detector, topology) = if opts.skip_detector {
        (None, None)
    } else {
        (
            Some(detector::run(opts.detector_filter.as_deref())?),
            Some(topology::run()?),
        )
    };
    let network = if opts.detector_only {
        None
    } else {
        Some(network(opts, &out_dir)?)
    };
    let report = Report {
        network,
        detector,
        topology,
    };
    print!("{}", report.table());
    let path = out_dir.join("latest.json");
    let text = serde_json::to_string_pretty(&report.json())?;
    std::fs::write(&path, text + "\n").with_context(|| format!("write {}", path.display()))?;
    println!("wrote {}", relative(&path));
    Ok(())
}

/// Parts 1 and 2: throughput with and without the agent, and the kernel cost.
fn network(opts: &Options, out_dir: &Path) -> Result<NetworkReport> {
    let bin = build::faultline(true)?;
    let log = out_dir.join("agent.log");
    let config = agent_config(out_dir)?;
    std::fs::write(&log, "").with_context(|| format!("create {}", log.display()))?;
    install_signal_handlers();
    lab::remove_stale();

    let lab = Lab::new()?;
    println!(
        "bench: {} × {} s iperf3 pairs, {} ({}) → {} ({}); agent log in {}",
        opts.runs,
        opts.seconds,
        lab.pair.ns_a,
        lab::ADDR_A,
        lab.pair.ns_b,
        lab::ADDR_B,
        relative(&log)
    );
    // The first transfer after the namespaces appear is often slow: warm up, discard.
    let warm = lab.iperf(1)?;
    println!("warm-up: {warm:.2} Gbit/s (discarded)");
    let mut without = Vec::new();
    let mut with = Vec::new();
    for pair in 0..opts.runs {
        let agent_first = pair % 2 == 1;
        for with_agent in [agent_first, !agent_first] {
            if with_agent {
                let agent = Agent::start(&bin, &log, &config)?;
                with.push(lab.iperf(opts.seconds)?);
                agent.stop()?;
            } else {
                without.push(lab.iperf(opts.seconds)?);
            }
        }
        println!(
            "pair {}/{}: without agent {:.2} Gbit/s, with agent {:.2} Gbit/s",
            pair + 1,
            opts.runs,
            without.last().copied().unwrap_or_default(),
            with.last().copied().unwrap_or_default()
        );
    }
    let cost = kernel_cost(&lab, &bin, &log, &config, opts.seconds)?;
    drop(lab);
    Ok(NetworkReport {
        runs: opts.runs,
        seconds: opts.seconds,
        without,
        with,
        cost,
    })
}

/// The agent's config: the iperf3 pair's addresses as its own. The agent runs in this
/// namespace, and its kernel programs keep only links whose local end is one of its
/// addresses; given the pair's, they count the transfer as a host's own traffic, as
/// they would on the host it runs on (both ends, as before that filter).
fn agent_config(out_dir: &Path) -> Result<PathBuf> {
    let addr = |cidr: &str| cidr.split('/').next().unwrap_or(cidr).to_owned();
    let path = out_dir.join("agent.toml");
    let text = format!(
        "[agent]\nlocal_addresses = [\"{}\", \"{}\"]\n",
        addr(lab::ADDR_A),
        addr(lab::ADDR_B)
    );
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// What the agent's programs did during one agent-attached iperf3 run.
struct KernelCost {
    gbps: f64,
    /// Wall time between the two reads of the counters.
    window_s: f64,
    programs: Vec<ProgCost>,
    /// `kernel.bpf_stats_enabled` before the bench (restored).
    stats_previous: String,
    /// How the agent's programs were told from others: "pids" (bpftool) or "fdinfo".
    matched_by: &'static str,
}

fn kernel_cost(
    lab: &Lab,
    bin: &Path,
    log: &Path,
    config: &Path,
    seconds: u32,
) -> Result<KernelCost> {
    let stats = BpfStats::enable()?;
    let agent = Agent::start(bin, log, config)?;
    let owned = agent.prog_ids()?;
    let (before, matched_by) = agent::prog_costs(agent.pid(), &owned)?;
    let start = Instant::now();
    let gbps = lab.iperf(seconds)?;
    let (after, _) = agent::prog_costs(agent.pid(), &owned)?;
    let window_s = start.elapsed().as_secs_f64();
    agent.stop()?;
    let stats_previous = stats.previous().to_owned();
    drop(stats);
    Ok(KernelCost {
        gbps,
        window_s,
        programs: agent::delta(&before, &after),
        stats_previous,
        matched_by,
    })
}

/// What this run measured: the network parts, the pure-CPU parts, or both.
struct Report {
    network: Option<NetworkReport>,
    detector: Option<DetectorBench>,
    topology: Option<TopologyBench>,
}

impl Report {
    fn table(&self) -> String {
        let mut s = String::new();
        if let Some(n) = &self.network {
            s += &n.table();
        }
        if let Some(d) = &self.detector {
            s += &d.table();
        }
        if let Some(t) = &self.topology {
            s += &t.table();
        }
        s
    }

    fn json(&self) -> serde_json::Value {
        let mut v = match &self.network {
            Some(n) => n.json(),
            None => json!({}),
        };
        v["timestamp_unix"] = json!(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default()
        );
        v["kernel"] = json!(
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
        );
        if let Some(d) = &self.detector {
            v["detector"] = d.json();
        }
        if let Some(t) = &self.topology {
            v["topology"] = t.json();
        }
        v
    }
}

struct NetworkReport {
    runs: u32,
    seconds: u32,
    without: Vec<f64>,
    with: Vec<f64>,
    cost: KernelCost,
}

impl NetworkReport {
    fn ratio(&self) -> f64 {
        mean(&self.with) / mean(&self.without)
    }

    fn total_run_time_ns(&self) -> u64 {
        self.cost.programs.iter().map(|p| p.run_time_ns).sum()
    }

    /// Share of one CPU the programs used during the cost run, in percent.
    #[expect(clippy::cast_precision_loss, reason = "ns totals are far below 2^52")]
    fn cpu_percent(&self) -> f64 {
        self.total_run_time_ns() as f64 / (self.cost.window_s * 1e9) * 100.0
    }

    fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nthroughput: iperf3 over veth between two namespaces, {} pairs × {} s",
            self.runs, self.seconds
        );
        let _ = writeln!(
            s,
            "  {:<18} {:>12} {:>9} {:>9}",
            "", "mean Gbit/s", "min", "max"
        );
        for (label, v) in [("without agent", &self.without), ("with agent", &self.with)] {
            let _ = writeln!(
                s,
                "  {label:<18} {:>12.2} {:>9.2} {:>9.2}",
                mean(v),
                min(v),
                max(v)
            );
        }
        let _ = writeln!(
            s,
            "  {:<18} {:>12.3}   ({:+.1} %)",
            "with / without",
            self.ratio(),
            (self.ratio() - 1.0) * 100.0
        );
        let c = &self.cost;
        let _ = writeln!(
            s,
            "\nkernel cost per program: bpf_stats_enabled=1, one agent-attached {:.1} s run at {:.2} Gbit/s",
            c.window_s, c.gbps
        );
        let _ = writeln!(
            s,
            "  {:<22} {:>12} {:>14} {:>9}",
            "program", "run_cnt", "run_time_ns", "ns/run"
        );
        for p in &c.programs {
            let per_run = p
                .ns_per_run()
                .map_or_else(|| "-".into(), |v| format!("{v:.1}"));
            let _ = writeln!(
                s,
                "  {:<22} {:>12} {:>14} {:>9}",
                p.name, p.run_cnt, p.run_time_ns, per_run
            );
        }
        let _ = writeln!(
            s,
            "  {:<22} {:>12} {:>14}   = {:.3} % of one CPU",
            "all programs",
            c.programs.iter().map(|p| p.run_cnt).sum::<u64>(),
            self.total_run_time_ns(),
            self.cpu_percent()
        );
        s
    }

    fn json(&self) -> serde_json::Value {
        let c = &self.cost;
        json!({
            "runs": self.runs,
            "seconds": self.seconds,
            "throughput": {
                "tool": "iperf3 -c 10.250.0.2 -J, veth between two network namespaces",
                "without_agent_gbps": self.without,
                "with_agent_gbps": self.with,
                "without_agent_mean_gbps": mean(&self.without),
                "with_agent_mean_gbps": mean(&self.with),
                "ratio_with_over_without": self.ratio(),
            },
            "kernel_cost": {
                "gbps": c.gbps,
                "window_s": c.window_s,
                "bpf_stats_enabled_before": c.stats_previous,
                "programs_matched_by": c.matched_by,
                "programs": c.programs.iter().map(|p| json!({
                    "id": p.id,
                    "name": p.name,
                    "type": p.kind,
                    "run_cnt": p.run_cnt,
                    "run_time_ns": p.run_time_ns,
                    "ns_per_run": p.ns_per_run(),
                })).collect::<Vec<_>>(),
                "total_run_time_ns": self.total_run_time_ns(),
                "cpu_percent_of_one_core": self.cpu_percent(),
            },
        })
    }
}

#[expect(clippy::cast_precision_loss, reason = "a handful of runs")]
fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// `path` relative to the workspace root when it is inside it.
fn relative(path: &Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C / SIGTERM set a flag instead of killing us, so the guards get to clean up.
pub(crate) fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, handler) };
    }
}

/// Has `cmd`'s process get SIGTERM if xtask dies first (even by SIGKILL, which skips
/// the guards), so no agent or iperf3 outlives a killed bench.
pub(crate) fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure runs between fork and exec; prctl is async-signal-safe and
    // nothing in it allocates or takes locks.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Fails once Ctrl-C or SIGTERM arrived; called between steps.
pub(crate) fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}
