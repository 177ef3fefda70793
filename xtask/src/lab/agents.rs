//! A real `faultline run` in every host namespace, each with its own config file.
//!
//! Processes enter their namespace with `setns` between fork and exec, so they keep
//! the host's mounts (cgroup2 for sock_ops, tracefs), which `ip netns exec` would hide.
//! Each agent chooses its peers from the topology (`peers = "auto"`), as a fleet
//! deploys it: deterministic, every rack and site watched from several other racks,
//! bounded fan-out.
use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{net::progress, topology::Topology};
use crate::bench::{check_interrupted, die_with_parent};

/// gRPC port of every agent (the default). Agents listen on the default `[::]`, so
/// peers of either family reach them: an IPv6-only site's agents follow the others
/// over IPv6.
pub(super) const GRPC_PORT: u16 = 7431;
/// What `faultline run` logs once its programs are attached and it serves.
const READY: &str = "probe attached, watching TCP links";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// SIGTERM grace before SIGKILL when the lab stops.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The running agents, stopped on drop (SIGTERM to all, then SIGKILL to stragglers).
pub(super) struct Agents {
    children: Vec<Child>,
    pub(super) logs: Vec<PathBuf>,
}

/// `http://ADDR:PORT` with IPv6 bracketed.
pub(super) fn endpoint(addr: std::net::IpAddr, port: u16) -> String {
    format!("http://{}", std::net::SocketAddr::new(addr, port))
}

/// Writes `<dir>/<host>.toml` for every host; returns their paths.
pub(super) fn write_configs(t: &Topology, topology: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let cgroup = cgroup2_mount();
    let mut paths = Vec::new();
    for h in &t.hosts {
        let quote = |v: String| format!("\"{v}\"");
        let locals: Vec<String> = h.addresses.iter().map(|a| quote(a.to_string())).collect();
        let mut text = format!(
            "# Written by `cargo xtask lab` for host {path}.\n\
             [agent]\nname = \"{name}\"\ntopology = \"{topology}\"\n\
             local_addresses = [{locals}]\npeers = \"auto\"\n",
            path = h.path,
            name = h.name,
            topology = topology.display(),
            locals = locals.join(", "),
        );
        if let Some(cg) = &cgroup {
            text += &format!("\n[probe]\ncgroup = \"{}\"\n", cg.display());
        }
        let path = dir.join(format!("{}.toml", h.name));
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        paths.push(path);
    }
    Ok(paths)
}

impl Agents {
    /// Starts one agent per host namespace and waits until every one has attached.
    pub(super) fn start(
        bin: &Path,
        namespaces: &[String],
        configs: &[PathBuf],
        log_dir: &Path,
    ) -> Result<Self> {
        let mut agents = Self {
            children: Vec::new(),
            logs: Vec::new(),
        };
        // The agents' log filter; `FAULTLINE_LAB_LOG` overrides it when a run needs the
        // detail (`info,faultline::run=debug` logs every urgent kernel event).
        let filter = std::env::var("FAULTLINE_LAB_LOG").unwrap_or_else(|_| "info".to_owned());
        for (i, (ns, config)) in namespaces.iter().zip(configs).enumerate() {
            check_interrupted()?;
            progress(&format!("starting agents {}/{}", i + 1, namespaces.len()));
            let name = config.file_stem().unwrap_or_default().to_string_lossy();
            let log = log_dir.join(format!("{name}.log"));
            let file = File::create(&log).with_context(|| format!("create {}", log.display()))?;
            let mut cmd = Command::new(bin);
            cmd.args(["run", "--config"])
                .arg(config)
                .env("RUST_LOG", &filter)
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(file);
            let child = spawn_in(&mut cmd, ns)?;
            agents.children.push(child);
            agents.logs.push(log);
        }
        println!();
        agents.wait_ready()?;
        Ok(agents)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            check_interrupted()?;
            let mut ready = 0;
            for (child, log) in self.children.iter_mut().zip(&self.logs) {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "agent exited ({status}) before it was ready; its log {}:\n{}",
                        log.display(),
                        tail(log, 15)
                    );
                }
                if std::fs::read_to_string(log).is_ok_and(|t| t.contains(READY)) {
                    ready += 1;
                }
            }
            progress(&format!(
                "waiting for agents ready {ready}/{}",
                self.children.len()
            ));
            if ready == self.children.len() {
                println!();
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "only {ready} of {} agents ready after {READY_TIMEOUT:?}",
                    self.children.len()
                );
            }
            sleep(Duration::from_millis(200));
        }
    }

    pub(super) fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// The agents that have exited, with their logs, for the report.
    pub(super) fn dead(&mut self) -> Vec<String> {
        self.children
            .iter_mut()
            .zip(&self.logs)
            .filter_map(|(c, log)| {
                c.try_wait()
                    .ok()
                    .flatten()
                    .map(|s| format!("{} ({s})", log.display()))
            })
            .collect()
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for c in &self.children {
            if let Ok(pid) = libc::pid_t::try_from(c.id()) {
                // SAFETY: kill(2) on our own child, not yet reaped, so the pid is still its.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        let n = self.children.len();
        for (i, c) in self.children.iter_mut().enumerate() {
            progress(&format!("stopping agents {}/{n}", i + 1));
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if n > 0 {
            println!();
        }
    }
}

/// Spawns `cmd` inside the network namespace `ns` (setns before exec, so the mount
/// namespace stays the host's), dying with us.
pub(crate) fn spawn_in(cmd: &mut Command, ns: &str) -> Result<Child> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("open {path}"))?;
    let fd = file.as_raw_fd();
    // SAFETY: the closure runs between fork and exec; setns is async-signal-safe, and
    // `fd` stays open in the parent (and so in the child) until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = die_with_parent(cmd)
        .spawn()
        .with_context(|| format!("start {:?} in {ns}", cmd.get_program()))?;
    drop(file);
    Ok(child)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<_> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The first cgroup v2 mount (the agent attaches sock_ops to its root).
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}
