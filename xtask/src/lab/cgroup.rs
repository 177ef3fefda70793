//! CPU starvation for the `cpu-contention` scenario: one child cgroup per starved host
//! with a CPU quota (a host with a slow or busy CPU), into which the host's agent and
//! its traffic threads are moved.
//!
//! This machine's cgroup v2 (`/sys/fs/cgroup/unified`, a hybrid hierarchy) has no `cpu`
//! controller: it is bound to the v1 hierarchy at `/sys/fs/cgroup/cpu`. So the lab
//! prefers v1 there (`cpu.cfs_quota_us` / `cpu.cfs_period_us`, the same bandwidth
//! control as v2's `cpu.max`), which also moves single threads (`tasks`): the traffic of
//! a host is threads of this process, and they are starved with its agent. Where the v2
//! hierarchy has `cpu` and v1 has not, it uses `cpu.max`, moving only the agents (v2
//! moves whole processes) and says so. Groups are named `fll-<pid>-starved-<host>`; the
//! guard moves everything back and removes them on drop, and [`remove_stale`] removes
//! groups whose lab was killed outright.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::net::NS_PREFIX;

const V1_CPU: &str = "/sys/fs/cgroup/cpu";
const V2: &str = "/sys/fs/cgroup/unified";
/// Quota per period: 5 ms of CPU every 100 ms for each starved host (5 % of one core).
pub(super) const QUOTA_US: u32 = 5_000;
pub(super) const PERIOD_US: u32 = 100_000;

/// What the starved group holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reach {
    /// Agents and the traffic threads of their hosts (v1: threads can be moved).
    AgentsAndTraffic,
    /// Agents only (v2: only whole processes move, and the traffic is threads of ours).
    AgentsOnly,
}

/// The starved cgroups; move their members back to the root and are removed on drop.
pub(super) struct Starved {
    dirs: Vec<PathBuf>,
    root: PathBuf,
    /// `tasks` (v1, per thread) or `cgroup.procs` (v2).
    members: &'static str,
    pub(super) reach: Reach,
    pub(super) moved: usize,
}

impl Starved {
    /// Creates one group per host with its quota and moves into it the host's `pids`
    /// (whole processes) and, where the hierarchy allows it, its `tids` (threads).
    pub(super) fn start(hosts: &[(String, Vec<u32>, Vec<i32>)]) -> Result<Self> {
        let (root, members, reach) = if has_v1_cpu() {
            (PathBuf::from(V1_CPU), "tasks", Reach::AgentsAndTraffic)
        } else if has_v2_cpu() {
            (PathBuf::from(V2), "cgroup.procs", Reach::AgentsOnly)
        } else {
            bail!("no cgroup with a cpu controller (neither {V1_CPU} nor cpu in {V2})");
        };
        let mut starved = Self {
            dirs: Vec::new(),
            root,
            members,
            reach,
            moved: 0,
        };
        for (host, pids, tids) in hosts {
            let dir = starved
                .root
                .join(format!("{NS_PREFIX}{}-starved-{host}", std::process::id()));
            std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
            starved.dirs.push(dir.clone());
            match reach {
                Reach::AgentsAndTraffic => {
                    write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                    write(&dir.join("cpu.cfs_quota_us"), &QUOTA_US.to_string())?;
                }
                Reach::AgentsOnly => {
                    write(&dir.join("cpu.max"), &format!("{QUOTA_US} {PERIOD_US}"))?;
                }
            }
            // v1 `cgroup.procs` moves every thread of a process; v2 has only that file.
            for pid in pids {
                if write(&dir.join("cgroup.procs"), &pid.to_string()).is_ok() {
                    starved.moved += 1;
                }
            }
            if reach == Reach::AgentsAndTraffic {
                for tid in tids {
                    // A thread that has ended since it registered is simply gone.
                    if write(&dir.join("tasks"), &tid.to_string()).is_ok() {
                        starved.moved += 1;
                    }
                }
            }
        }
        Ok(starved)
    }
}

impl Drop for Starved {
    fn drop(&mut self) {
        // Bounded: members are moved one by one, and a group only empties once all are.
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in &self.dirs {
            while Instant::now() < deadline {
                let members = std::fs::read_to_string(dir.join(self.members)).unwrap_or_default();
                let ids: Vec<&str> = members.split_whitespace().collect();
                if ids.is_empty() {
                    break;
                }
                for id in ids {
                    let _ = write(&self.root.join(self.members), id);
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("write {value} to {}", path.display()))
}

fn has_v1_cpu() -> bool {
    Path::new(V1_CPU).join("cpu.cfs_quota_us").exists()
}

fn has_v2_cpu() -> bool {
    std::fs::read_to_string(Path::new(V2).join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|w| w == "cpu"))
}

/// Removes `fll-<pid>-starved-<host>` groups whose lab is gone (their members died with it).
pub(super) fn remove_stale() {
    for root in [V1_CPU, V2] {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(NS_PREFIX)
                .and_then(|rest| rest.split_once("-starved-"))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
}

/// The calling thread's id, for [`Starved::start`].
pub(super) fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}
