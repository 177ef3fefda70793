//! `faultline check`: a preflight that says, requirement by requirement, whether this
//! host can run the agent and how to fix what is missing. It changes nothing.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use crate::probe::{Layouts, TRACEPOINTS, cgroup2_mount};

/// Whether the agent can run without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Required,
    /// Without it some counters are missing; the agent still runs.
    Optional,
}

/// One line of the preflight.
#[derive(Debug, Clone)]
pub struct Requirement {
    pub name: String,
    pub need: Need,
    pub ok: bool,
    /// What was found (when ok) or what is wrong.
    pub detail: String,
    /// How to fix it, when not ok.
    pub fix: Option<String>,
}

/// Where the preflight looks; tests point it at fixtures.
#[derive(Debug, Clone)]
pub struct CheckPaths {
    pub tracefs: PathBuf,
    pub bpffs: PathBuf,
    pub btf: PathBuf,
}

impl Default for CheckPaths {
    fn default() -> Self {
        Self {
            tracefs: PathBuf::from("/sys/kernel/tracing"),
            bpffs: PathBuf::from("/sys/fs/bpf"),
            btf: PathBuf::from("/sys/kernel/btf/vmlinux"),
        }
    }
}

/// Runs every check.
pub fn run(paths: &CheckPaths) -> Vec<Requirement> {
    let mut out = vec![privileges(), kernel_version(), btf(&paths.btf)];
    let tracefs_ok = paths.tracefs.join("events").is_dir();
    out.push(Requirement {
        name: "tracefs".into(),
        need: Need::Required,
        ok: tracefs_ok,
        detail: if tracefs_ok {
            format!("mounted at {}", paths.tracefs.display())
        } else {
            format!("not mounted at {}", paths.tracefs.display())
        },
        fix: Some(format!(
            "mount -t tracefs tracefs {} (faultline run mounts it itself, and logs that it did)",
            paths.tracefs.display()
        )),
    });
    for (_, group, event) in TRACEPOINTS {
        let format = paths
            .tracefs
            .join("events")
            .join(group)
            .join(event)
            .join("format");
        let ok = format.is_file();
        out.push(Requirement {
            name: format!("tracepoint {group}:{event}"),
            need: Need::Required,
            ok,
            detail: if ok {
                "present".into()
            } else {
                format!("{} not found", format.display())
            },
            fix: Some(if tracefs_ok {
                "a kernel with CONFIG_TRACEPOINTS and TCP tracepoints (4.16+)".into()
            } else {
                "mount tracefs first".into()
            }),
        });
    }
    if tracefs_ok {
        let layouts = Layouts::read(&paths.tracefs);
        out.push(Requirement {
            name: "tracepoint layouts".into(),
            need: Need::Required,
            ok: layouts.is_ok(),
            detail: match &layouts {
                Ok(_) => "every field the programs read is present".into(),
                Err(e) => e.to_string(),
            },
            fix: Some(
                "this kernel's tracepoint records lack a field Faultline reads; report it".into(),
            ),
        });
    }
    let bpffs_ok = is_mount_of(&paths.bpffs, "bpf");
    out.push(Requirement {
        name: "bpffs".into(),
        need: Need::Optional,
        ok: bpffs_ok,
        detail: if bpffs_ok {
            format!("mounted at {}", paths.bpffs.display())
        } else {
            "not mounted (only needed to inspect maps with bpftool)".into()
        },
        fix: Some(format!("mount -t bpf bpf {}", paths.bpffs.display())),
    });
    let cgroup = cgroup2_mount();
    out.push(Requirement {
        name: "cgroup v2 (sock_ops, RTO counts)".into(),
        need: Need::Optional,
        ok: cgroup.is_some(),
        detail: match &cgroup {
            Some(p) => format!("mounted at {}", p.display()),
            None => "no cgroup2 mount; RTOs will not be counted (retransmissions still are)".into(),
        },
        fix: Some("mount -t cgroup2 none /sys/fs/cgroup/unified".into()),
    });
    out
}

/// Renders the preflight as aligned text, one requirement a line.
pub fn render(reqs: &[Requirement]) -> String {
    let width = reqs.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let mut s = String::new();
    for r in reqs {
        let status = match (r.ok, r.need) {
            (true, _) => "ok",
            (false, Need::Required) => "MISSING",
            (false, Need::Optional) => "missing (optional)",
        };
        let _ = writeln!(s, "{:<18} {:<width$}  {}", status, r.name, r.detail);
        if !r.ok
            && let Some(fix) = &r.fix
        {
            let _ = writeln!(s, "{:<18} {:<width$}  fix: {fix}", "", "");
        }
    }
    s
}

/// True when every required check passed.
pub fn passed(reqs: &[Requirement]) -> bool {
    reqs.iter().all(|r| r.ok || r.need == Need::Optional)
}

fn privileges() -> Requirement {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let caps = effective_caps().unwrap_or(0);
    // CAP_NET_ADMIN = 12, CAP_PERFMON = 38, CAP_BPF = 39.
    let needed = (1u64 << 12) | (1u64 << 38) | (1u64 << 39);
    let ok = root || caps & needed == needed;
    Requirement {
        name: "privileges".into(),
        need: Need::Required,
        ok,
        detail: if root {
            "running as root".into()
        } else if ok {
            "CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN".into()
        } else {
            "neither root nor CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN".into()
        },
        fix: Some("run as root, or grant CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN (systemd AmbientCapabilities=)".into()),
    }
}

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Ring buffers need 5.8; bpf_link for cgroups 5.7.
const MIN_KERNEL: (u32, u32) = (5, 8);

fn kernel_version() -> Requirement {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim().to_owned();
    let parsed = parse_release(&release);
    let ok = parsed.is_some_and(|v| v >= MIN_KERNEL);
    Requirement {
        name: "kernel version".into(),
        need: Need::Required,
        ok,
        detail: format!(
            "{release} (need {}.{} or later)",
            MIN_KERNEL.0, MIN_KERNEL.1
        ),
        fix: Some("upgrade the kernel".into()),
    }
}

/// "6.18.44-fc" → (6, 18).
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn btf(path: &Path) -> Requirement {
    let ok = path.is_file();
    Requirement {
        name: "BTF".into(),
        need: Need::Optional,
        ok,
        detail: if ok {
            format!("{}", path.display())
        } else {
            "no kernel BTF (bpftool cannot show map types)".into()
        },
        fix: Some("a kernel built with CONFIG_DEBUG_INFO_BTF=y".into()),
    }
}

fn is_mount_of(path: &Path, fstype: &str) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    mounts.lines().any(|line| {
        let mut f = line.split_whitespace();
        let (_, dir, ty) = (f.next(), f.next(), f.next());
        dir == path.to_str() && ty == Some(fstype)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse() {
        assert_eq!(parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0"), Some((5, 4)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn missing_tracefs_fails_with_a_fix() {
        let paths = CheckPaths {
            tracefs: PathBuf::from("/nonexistent/tracing"),
            ..CheckPaths::default()
        };
        let reqs = run(&paths);
        assert!(!passed(&reqs));
        let text = render(&reqs);
        assert!(
            text.contains("MISSING") && text.contains("fix: mount -t tracefs"),
            "{text}"
        );
    }

    #[test]
    fn optional_failures_do_not_fail_the_check() {
        let reqs = vec![Requirement {
            name: "x".into(),
            need: Need::Optional,
            ok: false,
            detail: String::new(),
            fix: None,
        }];
        assert!(passed(&reqs));
    }
}
