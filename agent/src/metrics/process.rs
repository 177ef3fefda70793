//! The standard `process_*` metrics (what the Prometheus client libraries export),
//! read from `/proc/self`: the agent's own CPU and memory, for dashboards and the
//! unit's `MemoryMax`/`CPUQuota`.
use super::Exposition;

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), for `/proc/self/stat`'s times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u32::try_from(ticks)
        .ok()
        .filter(|&t| t > 0)
        .map_or(100.0, f64::from)
}

pub(super) fn render(e: &mut Exposition) {
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        // Fields after the command name, which is in parentheses and may hold spaces.
        && let Some((_, rest)) = stat.rsplit_once(") ")
    {
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
            e.family(
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time the agent has used.",
            )
            .sample(
                "process_cpu_seconds_total",
                &[],
                format!("{:.2}", (user + system) / clock_ticks()),
            );
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    {
        e.gauge(
            "process_resident_memory_bytes",
            "Resident memory of the agent.",
            kib * 1024,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        e.gauge(
            "process_open_fds",
            "File descriptors the agent holds open.",
            fds.count(),
        );
    }
}
