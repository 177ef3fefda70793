//! The agent under test (`faultline run` in the background) and the kernel's
//! per-program statistics (`kernel.bpf_stats_enabled`, `bpftool prog show --json`).
use std::{
    collections::{BTreeMap, BTreeSet},
    fs::OpenOptions,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{check_interrupted, die_with_parent};
use crate::run_output;

/// What `faultline run` logs once every program is attached.
const READY: &str = "probe attached";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The agent's programs, by the start of their names (bpftool may truncate to 15 chars).
const PROGRAMS: [&str; 5] = [
    "tcp_retransmit",
    "tcp_receive_re",
    "inet_sock_set",
    "tcp_probe",
    "faultline_sock",
];

/// A running `faultline run`; Drop stops it (SIGTERM, then SIGKILL).
pub(super) struct Agent {
    child: Child,
    log: PathBuf,
    stopped: bool,
}

impl Agent {
    /// Starts the agent with `--config config`, appending its stderr to `log`, and waits
    /// until it has attached.
    pub(super) fn start(bin: &Path, log: &Path, config: &Path) -> Result<Self> {
        let mut cmd = Self::command(bin);
        cmd.arg("--config").arg(config);
        let child = die_with_parent(&mut cmd)
            .spawn()
            .with_context(|| format!("start {} run", bin.display()))?;
        Self::attached(child, bin, log)
    }

    /// [`Agent::start`] with `--config config`, inside network namespace `ns` (entered
    /// with setns before exec, so the agent keeps the host's tracefs and cgroup2 mounts).
    pub(super) fn start_in(bin: &Path, log: &Path, config: &Path, ns: &str) -> Result<Self> {
        let mut cmd = Self::command(bin);
        cmd.arg("--config").arg(config);
        let child = crate::lab::spawn_in(&mut cmd, ns)?;
        Self::attached(child, bin, log)
    }

    /// `faultline run`, logging at info to a pipe.
    fn command(bin: &Path) -> Command {
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// Copies the just-started agent's stderr to `log` and waits until it has attached.
    fn attached(mut child: Child, bin: &Path, log: &Path) -> Result<Self> {
        // The guard first, so the agent is stopped if anything below fails.
        let stderr = child.stderr.take();
        let agent = Self {
            child,
            log: log.to_owned(),
            stopped: false,
        };
        let stderr = stderr.context("agent stderr is piped")?;
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let _ = writeln!(file, "=== {} run (pid {}) ===", bin.display(), agent.pid());
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                if line.contains(READY) {
                    let _ = ready_tx.send(());
                }
            }
        });
        agent.wait_ready(&ready_rx)?;
        Ok(agent)
    }

    /// Fails, with the end of its log, once the agent has exited.
    pub(super) fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("wait for the agent")? {
            self.stopped = true;
            bail!(
                "the agent exited ({status}); its log ({}):\n{}",
                self.log.display(),
                tail(&self.log, 15)
            );
        }
        Ok(())
    }

    fn wait_ready(&self, ready: &mpsc::Receiver<()>) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match ready.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => return Ok(()),
                // stderr closed: the agent exited.
                Err(RecvTimeoutError::Disconnected) => bail!(
                    "the agent exited before logging \"{READY}\"; its log ({}):\n{}",
                    self.log.display(),
                    tail(&self.log, 15)
                ),
                Err(RecvTimeoutError::Timeout) => {
                    check_interrupted()?;
                    if Instant::now() > deadline {
                        bail!(
                            "the agent did not log \"{READY}\" within {} s; see {}",
                            READY_TIMEOUT.as_secs(),
                            self.log.display()
                        );
                    }
                }
            }
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The ids of the programs the agent holds open, from `/proc/<pid>/fdinfo`
    /// (each program and link fd there names its `prog_id`).
    pub(super) fn prog_ids(&self) -> Result<BTreeSet<u32>> {
        let dir = format!("/proc/{}/fdinfo", self.pid());
        let mut ids = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("list {dir}"))? {
            // An fd may close between listing and reading: skip it.
            let Ok(text) = std::fs::read_to_string(entry?.path()) else {
                continue;
            };
            ids.extend(
                text.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:"))
                    .filter_map(|v| v.trim().parse::<u32>().ok()),
            );
        }
        Ok(ids)
    }

    /// SIGTERM, and a clean exit expected within 10 s.
    pub(super) fn stop(mut self) -> Result<()> {
        self.stopped = true;
        let status = terminate(&mut self.child, Duration::from_secs(10))?;
        if !status.success() {
            bail!(
                "the agent exited with {status} after SIGTERM; see {}",
                self.log.display()
            );
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = terminate(&mut self.child, Duration::from_secs(5));
        }
    }
}

/// SIGTERM `child`, wait up to `grace`, then SIGKILL; reaps it either way.
pub(super) fn terminate(child: &mut Child, grace: Duration) -> std::io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    let pid = libc::pid_t::try_from(child.id()).map_err(std::io::Error::other)?;
    // SAFETY: kill(2) on our own child, which is not yet reaped, so the pid is still its.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        sleep(Duration::from_millis(20));
    }
    child.kill()?;
    child.wait()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<_> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Turns `kernel.bpf_stats_enabled` on; Drop restores the previous value.
pub(super) struct BpfStats {
    previous: String,
}

const STATS_SYSCTL: &str = "kernel.bpf_stats_enabled";

impl BpfStats {
    pub(super) fn enable() -> Result<Self> {
        let previous = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .context("read /proc/sys/kernel/bpf_stats_enabled")?
            .trim()
            .to_owned();
        run_output(Command::new("sysctl").args(["-w", &format!("{STATS_SYSCTL}=1")]))?;
        Ok(Self { previous })
    }

    pub(super) fn previous(&self) -> &str {
        &self.previous
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = Command::new("sysctl")
            .args(["-w", &format!("{STATS_SYSCTL}={}", self.previous)])
            .output();
    }
}

/// One program's counters (cumulative, or a delta after [`delta`]).
#[derive(Debug, Clone)]
pub(super) struct ProgCost {
    pub(super) id: u32,
    pub(super) name: String,
    pub(super) kind: String,
    pub(super) run_cnt: u64,
    pub(super) run_time_ns: u64,
}

impl ProgCost {
    #[expect(clippy::cast_precision_loss, reason = "ns totals are far below 2^52")]
    pub(super) fn ns_per_run(&self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }
}

/// The agent's programs in `bpftool prog show --json`, with their counters.
///
/// A program is the agent's when bpftool lists `pid` among its `pids`; bpftool builds
/// without that field (it needs BPF iterators) fall back to the ids the agent holds
/// open (`owned`). Also returns which of the two was used.
pub(super) fn prog_costs(pid: u32, owned: &BTreeSet<u32>) -> Result<(Vec<ProgCost>, &'static str)> {
    let text = run_output(Command::new("bpftool").args(["prog", "show", "--json"]))?;
    let progs: Vec<serde_json::Value> =
        serde_json::from_str(&text).context("parse `bpftool prog show --json`")?;
    let has_pids = progs.iter().any(|p| p.get("pids").is_some());
    let mut out = Vec::new();
    for p in &progs {
        let name = p["name"].as_str().unwrap_or_default();
        let Ok(id) = u32::try_from(p["id"].as_u64().unwrap_or_default()) else {
            continue;
        };
        if !PROGRAMS.iter().any(|prefix| name.starts_with(prefix)) {
            continue;
        }
        let mine = if has_pids {
            p["pids"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|x| x["pid"].as_u64() == Some(u64::from(pid))))
        } else {
            owned.contains(&id)
        };
        if mine {
            out.push(ProgCost {
                id,
                name: name.to_owned(),
                kind: p["type"].as_str().unwrap_or_default().to_owned(),
                // Absent while stats are off or the program has not run yet.
                run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
                run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
            });
        }
    }
    if out.is_empty() {
        bail!("`bpftool prog show` lists none of the agent's programs (pid {pid})");
    }
    Ok((out, if has_pids { "pids" } else { "fdinfo" }))
}

/// `after - before` per program, in the order of [`PROGRAMS`].
pub(super) fn delta(before: &[ProgCost], after: &[ProgCost]) -> Vec<ProgCost> {
    let before: BTreeMap<u32, &ProgCost> = before.iter().map(|p| (p.id, p)).collect();
    let mut out: Vec<ProgCost> = after
        .iter()
        .map(|a| {
            let (cnt, ns) = before
                .get(&a.id)
                .map_or((0, 0), |b| (b.run_cnt, b.run_time_ns));
            ProgCost {
                run_cnt: a.run_cnt.saturating_sub(cnt),
                run_time_ns: a.run_time_ns.saturating_sub(ns),
                ..a.clone()
            }
        })
        .collect();
    let rank = |p: &ProgCost| PROGRAMS.iter().position(|x| p.name.starts_with(x));
    out.sort_by_key(|p| (rank(p), p.id));
    out
}
