//! The kernel half, seen from userspace: load the programs, attach them, read the maps.
//!
//! Data enters as per-CPU counters in the `LINKS` map (read every tick in batches, see
//! [`links_map`], turned into [`LinkSample`] deltas by [`SampleTracker`]; only the
//! links of [`ProbeOptions::local_addresses`] when it is given) and as urgent events
//! in the `URGENT` ring buffer (read as soon as they arrive, see [`urgent`]). Each `Probe` owns its own
//! maps and links, so two agents on one host never share or corrupt state; dropping a
//! `Probe` detaches everything. The programs' own log records (rare kernel-side
//! failures, through aya-log) are forwarded to `tracing` under the target
//! `faultline::kernel` at every [`Probe::sample`] (see [`kernel_log`]).
pub(crate) mod kernel_log;
pub(crate) mod layout;
pub(crate) mod links_map;
pub(crate) mod sample;
pub(crate) mod urgent;

use std::{
    collections::HashMap,
    fs::File,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, Map, MapError, PerCpuArray},
    programs::{CgroupAttachMode, ProgramError, SockOps, TracePoint},
};
use aya_log::EbpfLogger;
use faultline_ebpf::{
    AF_INET, AF_INET6, DEFAULT_MAX_LINKS, LinkKey, LocalAddr, MAX_LOCAL_ADDRS, NO_CONTROL_PORT,
    URGENT_BUDGET_SLOTS, UrgentBudget,
};

pub(crate) use faultline_core::link::{Link, LinkCounters, LinkSample};
pub(crate) use kernel_log::KernelLog;
pub(crate) use layout::{LayoutError, Layouts};
use links_map::LinksReader;
pub(crate) use sample::{LinkTotals, SampleTracker};
pub use urgent::{UrgentEvents, UrgentRecord};

/// The eBPF object built by build.rs (empty when the build was skipped).
static KERNEL_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/faultline-ebpf"));

/// The tracepoints the programs attach to: (program, group, event).
pub(crate) const TRACEPOINTS: [(&str, &str, &str); 4] = [
    ("tcp_retransmit_skb", "tcp", "tcp_retransmit_skb"),
    ("tcp_receive_reset", "tcp", "tcp_receive_reset"),
    ("inet_sock_set_state", "sock", "inet_sock_set_state"),
    ("tcp_probe", "tcp", "tcp_probe"),
];
const SOCK_OPS_PROGRAM: &str = "faultline_sock_ops";

/// Why the probe could not start or read.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A tracepoint's record layout is missing or unusable.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The binary was built without the kernel programs (`AYA_BUILD_SKIP`).
    #[error(
        "this faultline binary was built without its eBPF programs (AYA_BUILD_SKIP); rebuild with `cargo xtask build`"
    )]
    NoKernelObject,
    /// The kernel refused the object or a map.
    #[error("load the eBPF object")]
    Load {
        #[source]
        source: EbpfError,
    },
    /// A program is not in the object (build mismatch).
    #[error("program `{name}` is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    /// Loading or attaching one program failed.
    #[error("{what}")]
    Program {
        what: String,
        #[source]
        source: ProgramError,
    },
    /// A map is missing or has an unexpected type.
    #[error("map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    /// Mounting tracefs failed.
    #[error("mount tracefs at {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// tracefs is not at a configured path the agent would not mount it at.
    #[error(
        "probe.tracefs: no tracefs at {path}; the agent mounts it only at {} (mount it at {path} yourself, or use that path)",
        STANDARD_TRACEFS.join(" or ")
    )]
    NoTracefs { path: PathBuf },
}

/// The addresses the kernel filters links by, as keys hold them; none (keep every
/// link) if there are more than it can hold.
fn local_addrs(addresses: &[IpAddr]) -> Vec<LocalAddr> {
    let mut out: Vec<LocalAddr> = Vec::new();
    let keys = addresses.iter().map(|ip| match ip {
        IpAddr::V4(v4) => {
            let mut addr = [0; 16];
            addr[..4].copy_from_slice(&v4.octets());
            LocalAddr {
                family: AF_INET,
                addr,
            }
        }
        IpAddr::V6(v6) => LocalAddr {
            family: AF_INET6,
            addr: v6.octets(),
        },
    });
    for key in keys {
        if !out.contains(&key) {
            out.push(key);
        }
    }
    if out.len() > MAX_LOCAL_ADDRS as usize {
        tracing::info!(
            addresses = out.len(),
            most = MAX_LOCAL_ADDRS,
            "more local addresses than the kernel filters by: it keeps every link, the agent its own"
        );
        out.clear();
    }
    out
}

fn fill_local_addrs(ebpf: &mut Ebpf, locals: &[LocalAddr]) -> Result<(), ProbeError> {
    let map_err = |source| ProbeError::Map {
        name: "LOCAL_ADDRS",
        source,
    };
    let mut map: Array<_, LocalAddr> =
        Array::try_from(ebpf.map_mut("LOCAL_ADDRS").ok_or(ProbeError::Map {
            name: "LOCAL_ADDRS",
            source: MapError::InvalidName {
                name: "LOCAL_ADDRS".into(),
            },
        })?)
        .map_err(map_err)?;
    for (i, addr) in (0u32..).zip(locals) {
        map.set(i, addr, 0).map_err(map_err)?;
    }
    Ok(())
}

fn links_map(ebpf: &Ebpf) -> Result<&Map, ProbeError> {
    ebpf.map("LINKS").ok_or(ProbeError::Map {
        name: "LINKS",
        source: MapError::InvalidName {
            name: "LINKS".into(),
        },
    })
}

/// Where the agent may mount tracefs itself. A mount anywhere else would hide what is
/// there (`tracefs = "/etc"` would have mounted over /etc).
const STANDARD_TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Where to find the kernel interfaces.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// tracefs mount point; mounted there if absent.
    pub tracefs: PathBuf,
    /// cgroup v2 directory for the sock_ops program; None skips it (no RTO or ACK
    /// counts).
    pub cgroup: Option<PathBuf>,
    /// Upper bound on tracked links (LRU beyond that).
    pub max_links: u32,
    /// The agents' heartbeat port (`listen.heartbeat`): segments and retransmissions
    /// of connections with either end on it are counted apart from loss (they time
    /// out 20 ms past their RTT: often spuriously). None: every
    /// connection is a user's.
    pub control_port: Option<u16>,
    /// This host's addresses: the kernel keeps only links whose local end is one of
    /// them (the agent judges no other). Empty, or more than [`MAX_LOCAL_ADDRS`]:
    /// every link is kept.
    pub local_addresses: Vec<IpAddr>,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            tracefs: PathBuf::from("/sys/kernel/tracing"),
            // The root of the cgroup v2 hierarchy sees every socket on the host.
            cgroup: cgroup2_mount(),
            max_links: DEFAULT_MAX_LINKS,
            control_port: None,
            local_addresses: Vec::new(),
        }
    }
}

/// Whether RTO and ACK counting (sock_ops) is active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SockOpsStatus {
    Attached(PathBuf),
    /// Not attached; the reason. Retransmissions are still counted, RTOs and ACKs are not.
    Unavailable(String),
}

/// The loaded, attached kernel programs and their maps.
pub struct Probe {
    ebpf: Ebpf,
    /// Reads the programs' aya-log ring; it must live as long as they do. None if it
    /// could not start (a warning said why): the probe works, kernel logs are lost.
    kernel_log: Option<EbpfLogger<KernelLog>>,
    tracker: SampleTracker,
    links: LinksReader,
    sock_ops: SockOpsStatus,
}

impl Probe {
    /// Reads tracepoint layouts, loads and attaches every program.
    ///
    /// A layout problem is reported before anything is loaded. sock_ops is optional:
    /// when it cannot attach, the reason is kept in [`Probe::sock_ops_status`].
    pub fn attach(options: &ProbeOptions) -> Result<Self, ProbeError> {
        ensure_tracefs(&options.tracefs)?;
        let layouts = Layouts::read(&options.tracefs)?;
        if KERNEL_OBJECT.is_empty() {
            return Err(ProbeError::NoKernelObject);
        }
        let locals = local_addrs(&options.local_addresses);
        let local_count = u32::try_from(locals.len()).unwrap_or(0);
        let mut ebpf = EbpfLoader::new()
            .override_global("RETRANSMIT_LAYOUT", &layouts.retransmit, true)
            .override_global("RESET_LAYOUT", &layouts.reset, true)
            .override_global("STATE_LAYOUT", &layouts.state_change, true)
            .override_global("PROBE_LAYOUT", &layouts.probe, true)
            .override_global(
                "CONTROL_PORT",
                &options.control_port.unwrap_or(NO_CONTROL_PORT),
                true,
            )
            .override_global("LOCAL_ADDR_COUNT", &local_count, true)
            .map_max_entries("LINKS", options.max_links)
            .load(KERNEL_OBJECT)
            .map_err(|source| ProbeError::Load { source })?;
        // Before any program runs: with a count set, an empty slot would match nothing.
        fill_local_addrs(&mut ebpf, &locals)?;
        for (program, group, event) in TRACEPOINTS {
            let tp: &mut TracePoint = ebpf
                .program_mut(program)
                .ok_or(ProbeError::MissingProgram { name: program })?
                .try_into()
                .map_err(|source| ProbeError::Program {
                    what: format!("program {program} is not a tracepoint"),
                    source,
                })?;
            tp.load().map_err(|source| ProbeError::Program {
                what: format!("load {group}:{event}"),
                source,
            })?;
            tp.attach(group, event)
                .map_err(|source| ProbeError::Program {
                    what: format!("attach {group}:{event}"),
                    source,
                })?;
        }
        let kernel_log = match EbpfLogger::init_with_logger(&mut ebpf, KernelLog) {
            Ok(logger) => Some(logger),
            Err(e) => {
                tracing::warn!(
                    error = %error_chain(&e),
                    "kernel log not available: the programs' failure reports will not be shown"
                );
                None
            }
        };
        let sock_ops = match &options.cgroup {
            None => SockOpsStatus::Unavailable("no cgroup v2 hierarchy configured".into()),
            Some(cgroup) => match attach_sock_ops(&mut ebpf, cgroup) {
                Ok(()) => SockOpsStatus::Attached(cgroup.clone()),
                Err(e) => SockOpsStatus::Unavailable(e),
            },
        };
        let links = LinksReader::new(links_map(&ebpf)?)?;
        Ok(Self {
            ebpf,
            kernel_log,
            tracker: SampleTracker::default(),
            links,
            sock_ops,
        })
    }

    pub fn sock_ops_status(&self) -> &SockOpsStatus {
        &self.sock_ops
    }

    /// Every link's totals since the kernel first saw it, summed over CPUs.
    pub fn totals(&mut self) -> Result<HashMap<LinkKey, LinkTotals>, ProbeError> {
        let mut out = HashMap::new();
        self.links.read_into(links_map(&self.ebpf)?, &mut out)?;
        Ok(out)
    }

    /// [`Self::totals`], asking the kernel for `links` links per call (tests: several
    /// calls over a few links).
    #[doc(hidden)]
    pub fn totals_in_calls_of(
        &mut self,
        links: usize,
    ) -> Result<HashMap<LinkKey, LinkTotals>, ProbeError> {
        self.links.set_links_per_call(links);
        self.totals()
    }

    /// [`Self::totals`] read the old way, two calls per link (tests compare the two).
    #[doc(hidden)]
    pub fn totals_one_by_one(&self) -> Result<HashMap<LinkKey, LinkTotals>, ProbeError> {
        let mut out = HashMap::new();
        links_map::read_one_by_one(links_map(&self.ebpf)?, &mut out)?;
        Ok(out)
    }

    /// What changed on each link since the previous call (every link on the first).
    /// Kernel log records waiting since the last call are forwarded first.
    pub fn sample(&mut self) -> Result<Vec<LinkSample>, ProbeError> {
        self.flush_kernel_log();
        let mut totals = self.tracker.take_spare();
        // A tick reuses the table it had, so reading 16,384 links does not grow a new
        // one from empty ten times a second.
        self.links.read_into(links_map(&self.ebpf)?, &mut totals)?;
        Ok(self.tracker.update(totals, sample::monotonic_now_ns()))
    }

    /// Links in the kernel's table at the last sample, and how many the LRU evicted
    /// since start (a table too small for the host's peers shows as a steady rise).
    pub fn occupancy(&self) -> (usize, u64) {
        self.tracker.occupancy()
    }

    /// Forwards the kernel log records waiting in the programs' log ring to `tracing`.
    pub fn flush_kernel_log(&mut self) {
        if let Some(logger) = &mut self.kernel_log {
            logger.flush();
        }
    }

    /// Urgent events dropped by the in-kernel rate limit or a full ring, since load
    /// (summed over CPUs and over the budget's slots, one per kind of program).
    pub fn urgent_dropped(&self) -> Result<u64, ProbeError> {
        let map_err = |source| ProbeError::Map {
            name: "URGENT_BUDGET",
            source,
        };
        let budget: PerCpuArray<_, UrgentBudget> =
            PerCpuArray::try_from(self.ebpf.map("URGENT_BUDGET").ok_or(ProbeError::Map {
                name: "URGENT_BUDGET",
                source: MapError::InvalidName {
                    name: "URGENT_BUDGET".into(),
                },
            })?)
            .map_err(map_err)?;
        let mut dropped = 0;
        for slot in 0..URGENT_BUDGET_SLOTS {
            let per_cpu = budget.get(&slot, 0).map_err(map_err)?;
            dropped += per_cpu.iter().map(|b| b.dropped + b.ring_full).sum::<u64>();
        }
        Ok(dropped)
    }

    /// The urgent-event stream. Can be taken once; later calls return None.
    pub fn take_urgent_events(&mut self) -> Option<Result<UrgentEvents, ProbeError>> {
        let map = self.ebpf.take_map("URGENT")?;
        Some(UrgentEvents::new(map))
    }
}

fn attach_sock_ops(ebpf: &mut Ebpf, cgroup: &Path) -> Result<(), String> {
    let program: &mut SockOps = ebpf
        .program_mut(SOCK_OPS_PROGRAM)
        .ok_or_else(|| format!("program {SOCK_OPS_PROGRAM} missing from the object"))?
        .try_into()
        .map_err(|e| format!("{SOCK_OPS_PROGRAM} is not sock_ops: {e}"))?;
    program
        .load()
        .map_err(|e| format!("load sock_ops: {}", error_chain(&e)))?;
    let dir = File::open(cgroup).map_err(|e| format!("open {}: {e}", cgroup.display()))?;
    // aya attaches through a bpf_link, which the kernel always stacks with other
    // programs; it refuses any attach flag there (EINVAL), so "Single" is the only mode
    // that works, and a second agent still attaches beside this one.
    program.attach(dir, CgroupAttachMode::Single).map_err(|e| {
        format!(
            "attach sock_ops to {}: {}",
            cgroup.display(),
            error_chain(&e)
        )
    })?;
    Ok(())
}

/// The first cgroup v2 mount point: the root of the hierarchy, which sees every socket.
pub(crate) fn cgroup2_mount() -> Option<PathBuf> {
    crate::mounts::first_of_type(&crate::mounts::read(), "cgroup2").map(|m| m.mount_point.clone())
}

/// Mounts tracefs at `path` if nothing is there yet and `path` is a standard place
/// for it, and says so.
fn ensure_tracefs(path: &Path) -> Result<(), ProbeError> {
    if path.join("events").is_dir() {
        return Ok(());
    }
    if !STANDARD_TRACEFS.iter().any(|s| Path::new(s) == path) {
        return Err(ProbeError::NoTracefs {
            path: path.to_owned(),
        });
    }
    let err = |source| ProbeError::Mount {
        path: path.to_owned(),
        source,
    };
    let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| err(std::io::Error::other(e)))?;
    // SAFETY: all pointers are valid NUL-terminated strings; data is null as allowed.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    tracing::info!(path = %path.display(), "mounted tracefs (it was not mounted)");
    Ok(())
}

/// "outer: inner: innermost", so a syscall's errno is not lost behind aya's wrapper.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracefs_is_never_mounted_outside_its_standard_places() {
        let dir = std::env::temp_dir().join(format!("faultline-tracefs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = ensure_tracefs(&dir).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("probe.tracefs: no tracefs at {}", dir.display()))
                && err.contains("/sys/kernel/tracing"),
            "{err}"
        );
        assert!(!dir.join("events").exists(), "nothing mounted there");
        let _ = std::fs::remove_dir(&dir);
    }
}
