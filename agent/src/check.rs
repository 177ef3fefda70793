//! `faultline check`: a preflight that says, requirement by requirement, whether this
//! host can run the agent and how to fix what is missing. It changes nothing.
//!
//! It checks what `faultline run` with the same config would use: the config file
//! itself, its tracefs and cgroup paths, and its topology file.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use crate::{
    config::{Config, DEFAULT_PATH, Peers},
    mounts,
    probe::{Layouts, TRACEPOINTS},
    run::{Observer, error_chain, load_topology},
    topology::Topology,
};

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

/// Where the preflight looks: the paths the agent will use; tests point it at fixtures.
#[derive(Debug, Clone)]
pub(crate) struct CheckPaths {
    pub tracefs: PathBuf,
    pub bpffs: PathBuf,
    pub btf: PathBuf,
    /// The sock_ops cgroup as configured (`probe.cgroup`): by default the first cgroup2
    /// mount, None when there is none, an empty path when turned off.
    pub cgroup: Option<PathBuf>,
    /// The topology file (`agent.topology`), if one is configured.
    pub topology: Option<PathBuf>,
}

impl CheckPaths {
    /// The paths `faultline run` with `config` would use.
    pub(crate) fn from_config(config: &Config) -> Self {
        Self {
            tracefs: config.probe.tracefs.clone(),
            bpffs: PathBuf::from("/sys/fs/bpf"),
            btf: PathBuf::from("/sys/kernel/btf/vmlinux"),
            cgroup: config.probe.cgroup.clone(),
            topology: config.agent.topology.clone(),
        }
    }
}

impl Default for CheckPaths {
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

/// Loads the config as `faultline run --config` would (`path`, else the default file
/// if present, else the built-in defaults) and checks everything it names. A config
/// that is refused fails the check; the rest is then checked with the defaults.
pub fn run_with_config(path: Option<&Path>) -> Vec<Requirement> {
    let (config, line) = match Config::load_with_source(path) {
        Ok((config, from)) => {
            let detail = match from {
                Some(file) => format!("{}", file.display()),
                None => format!("built-in defaults (no {DEFAULT_PATH})"),
            };
            (
                config,
                requirement("config", Need::Required, true, detail, None),
            )
        }
        Err(e) => (
            Config::default(),
            requirement(
                "config",
                Need::Required,
                false,
                format!("{e} (the checks below use the built-in defaults)"),
                Some("fix the file: `faultline run` refuses it too".into()),
            ),
        ),
    };
    let mut out = vec![line];
    out.extend(run(&CheckPaths::from_config(&config)));
    out.push(peers(&config));
    if config.tls.is_some() {
        out.push(tls(&config));
    }
    out
}

/// The TLS files: readable, parsed, the key fitting the certificate.
fn tls(config: &Config) -> Requirement {
    match config.check_tls() {
        Ok(()) => requirement(
            "tls",
            Need::Required,
            true,
            "certificate, key and CA load".into(),
            None,
        ),
        Err(e) => requirement(
            "tls",
            Need::Required,
            false,
            e.to_string(),
            Some("fix the file the key names: `faultline run` refuses it too".into()),
        ),
    }
}

/// The peers the agent would follow: as listed, or chosen from the topology for this
/// host (`"auto"`), refused as `faultline run` would refuse them.
fn peers(config: &Config) -> Requirement {
    let detail = match config.agent.peers.get_ref() {
        Peers::List(list) => Ok(format!("{} configured", list.len())),
        Peers::Auto => auto_peers(config),
    };
    match detail {
        Ok(detail) => requirement("peers", Need::Required, true, detail, None),
        Err(why) => requirement(
            "peers",
            Need::Required,
            false,
            why,
            Some("correct agent.peers, agent.topology or agent.local_addresses: `faultline run` refuses this config too".into()),
        ),
    }
}

/// `auto: 15 chosen from the topology for dc-a/c1/r1/a11-1`, or why none can be.
fn auto_peers(config: &Config) -> Result<String, String> {
    let topology = load_topology(config).map_err(|e| e.to_string())?;
    let observer = Observer::from_config(config).map_err(|e| error_chain(&e))?;
    let resolved = crate::peers::resolve(config, &topology, &observer.addresses())
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "auto: {} chosen from the topology for {}",
        resolved.endpoints.len(),
        resolved.me.unwrap_or_default()
    ))
}

fn requirement(
    name: &str,
    need: Need,
    ok: bool,
    detail: String,
    fix: Option<String>,
) -> Requirement {
    Requirement {
        name: name.into(),
        need,
        ok,
        detail,
        fix,
    }
}

/// Runs every check.
pub(crate) fn run(paths: &CheckPaths) -> Vec<Requirement> {
    let mounts = mounts::read();
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
    let bpffs_ok = mounts::is_mount_of(&mounts, &paths.bpffs, "bpf");
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
    out.push(cgroup(paths.cgroup.as_deref(), &mounts));
    out.push(topology(paths.topology.as_deref()));
    out
}

/// The sock_ops cgroup: it must be a directory on a cgroup v2 mount.
fn cgroup(configured: Option<&Path>, mounts: &[mounts::Mount]) -> Requirement {
    let name = "cgroup v2 (sock_ops: RTOs, ACKs)";
    let fix = Some("mount -t cgroup2 none /sys/fs/cgroup/unified, or set probe.cgroup".into());
    let (ok, detail) = match configured {
        None => (
            false,
            "no cgroup2 mount; RTOs and ACKs will not be counted (retransmissions still are)"
                .into(),
        ),
        Some(p) if p.as_os_str().is_empty() => (
            true,
            "turned off (probe.cgroup = \"\"): RTOs and ACKs will not be counted".into(),
        ),
        Some(p) => match p.canonicalize() {
            Err(e) => (false, format!("{}: {e}", p.display())),
            Ok(real) => match mounts::containing(mounts, &real) {
                Some(m) if m.fstype == "cgroup2" && real.is_dir() => {
                    (true, format!("{} (cgroup2)", p.display()))
                }
                Some(m) => (
                    false,
                    format!(
                        "{} is not a cgroup v2 directory (it is on {} at {})",
                        p.display(),
                        m.fstype,
                        m.mount_point.display()
                    ),
                ),
                None => (false, format!("{} is on no mount", p.display())),
            },
        },
    };
    requirement(name, Need::Optional, ok, detail, fix)
}

/// The topology file, parsed and validated as the agent would at start-up.
fn topology(path: Option<&Path>) -> Requirement {
    let Some(path) = path else {
        return requirement(
            "topology",
            Need::Required,
            true,
            "none configured: every peer is a host of its own, no racks to vote on".into(),
            None,
        );
    };
    match Topology::load(path) {
        Ok(t) => requirement(
            "topology",
            Need::Required,
            true,
            topology_summary(path, &t),
            None,
        ),
        Err(e) => requirement(
            "topology",
            Need::Required,
            false,
            e.to_string(),
            Some("fix the file (`faultline topology check FILE`): the agent refuses to start with it".into()),
        ),
    }
}

/// `topo.toml: ok: 1 hosts, 2 racks, 1 cabinets, 1 sites, 2 prefixes`.
pub fn topology_summary(path: &Path, topology: &Topology) -> String {
    let counts: Vec<String> = topology
        .counts()
        .iter()
        .map(|(l, n)| format!("{n} {l}s"))
        .collect();
    format!(
        "{}: ok: {}, {} prefixes",
        path.display(),
        counts.join(", "),
        topology.prefix_count()
    )
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
pub(crate) fn parse_release(release: &str) -> Option<(u32, u32)> {
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

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("faultline-check-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn line<'a>(reqs: &'a [Requirement], name: &str) -> &'a Requirement {
        reqs.iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no `{name}` line in {reqs:?}"))
    }

    #[test]
    fn the_configured_paths_are_the_ones_checked() {
        let dir = temp_dir("config");
        let config = dir.join("faultline.toml");
        let topology = dir.join("topology.toml");
        std::fs::write(&topology, "[[site]]\nname = \"dc-a\"\n").unwrap();
        std::fs::write(
            &config,
            format!(
                "[agent]\ntopology = \"{}\"\n[probe]\ntracefs = \"/nonexistent/tracing\"\ncgroup = \"{}\"\n",
                topology.display(),
                dir.display()
            ),
        )
        .unwrap();
        let reqs = run_with_config(Some(&config));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(line(&reqs, "config").ok);
        assert!(line(&reqs, "config").detail.contains("faultline.toml"));
        let tracefs = line(&reqs, "tracefs");
        assert!(
            !tracefs.ok && tracefs.detail.contains("/nonexistent/tracing"),
            "{tracefs:?}"
        );
        // A temporary directory is not a cgroup v2 directory.
        let cgroup = line(&reqs, "cgroup v2 (sock_ops: RTOs, ACKs)");
        assert!(
            !cgroup.ok && cgroup.detail.contains("not a cgroup v2 directory"),
            "{cgroup:?}"
        );
        let topo = line(&reqs, "topology");
        assert!(
            topo.ok
                && topo
                    .detail
                    .contains("0 hosts, 0 racks, 0 cabinets, 1 sites"),
            "{topo:?}"
        );
        assert!(!passed(&reqs));
    }

    #[test]
    fn a_broken_topology_or_config_fails_the_check_with_its_error() {
        let dir = temp_dir("broken");
        let topology = dir.join("topology.toml");
        std::fs::write(
            &topology,
            "[[rack]]\nname = \"r1\"\ncabinet = \"nowhere\"\n",
        )
        .unwrap();
        let config = dir.join("bad.toml");
        std::fs::write(&config, "[probe]\ntik = 1\n").unwrap();
        let paths = CheckPaths {
            topology: Some(topology),
            ..CheckPaths::default()
        };
        let topo = topology_line(&run(&paths));
        let bad_config = run_with_config(Some(&config));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!topo.ok && topo.need == Need::Required, "{topo:?}");
        assert!(
            topo.detail.contains("topology.toml:3") && topo.detail.contains("unknown cabinet"),
            "{topo:?}"
        );
        let c = line(&bad_config, "config");
        assert!(
            !c.ok && c.detail.contains("bad.toml") && c.detail.contains("tik"),
            "{c:?}"
        );
        assert!(!passed(&bad_config));
    }

    fn topology_line(reqs: &[Requirement]) -> Requirement {
        line(reqs, "topology").clone()
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
