//! The kernel programs' log records, forwarded to `tracing`.
//!
//! The programs report rare failures (a map insert or ring buffer output that fails, a
//! tracepoint record that cannot be copied) with aya-log-ebpf. aya-log reads them from
//! the `AYA_LOGS` ring and hands each to a `log::Log`; [`KernelLog`] is that logger, and
//! turns each record into a `tracing` event under the target [`KERNEL_LOG_TARGET`], so
//! they can be filtered on their own (`RUST_LOG=faultline::kernel=debug`). No global
//! `log` logger is installed: only the kernel's records take this path.
use log::{Level, Log, Metadata, Record};

/// The `tracing` target of every kernel log record.
pub(crate) const KERNEL_LOG_TARGET: &str = "faultline::kernel";

/// A `log::Log` that re-emits aya-log records as `tracing` events.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct KernelLog;

impl Log for KernelLog {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        // Where in the kernel crate the record was written, e.g. "src/main.rs:287".
        let at = format!(
            "{}:{}",
            record.file().unwrap_or("?"),
            record.line().unwrap_or(0)
        );
        let message = record.args();
        // tracing's macros need the level and target as constants.
        match record.level() {
            Level::Error => tracing::error!(target: KERNEL_LOG_TARGET, %at, "{message}"),
            Level::Warn => tracing::warn!(target: KERNEL_LOG_TARGET, %at, "{message}"),
            Level::Info => tracing::info!(target: KERNEL_LOG_TARGET, %at, "{message}"),
            Level::Debug => tracing::debug!(target: KERNEL_LOG_TARGET, %at, "{message}"),
            Level::Trace => tracing::trace!(target: KERNEL_LOG_TARGET, %at, "{message}"),
        }
    }

    fn flush(&self) {}
}
