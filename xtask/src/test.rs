//! `cargo xtask test [-- ARGS]`: the whole suite, unit and privileged integration
//! tests, one test at a time: they share one kernel (tracepoints are global).
use std::{
    ffi::OsString,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, describe, is_root, setup};

pub(crate) fn run(args: &[OsString]) -> Result<ExitCode> {
    if !is_root() {
        bail!(
            "the integration tests create network namespaces and load eBPF programs; run as root"
        );
    }
    let start = Instant::now();
    setup::ensure()?;
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--workspace",
        "--no-fail-fast",
        "--",
        "--test-threads=1",
    ])
    .args(args);
    let status = cmd
        .status()
        .with_context(|| format!("start `{}`", describe(&cmd)))?;
    let verdict = if status.success() { "passed" } else { "FAILED" };
    println!(
        "xtask test: {verdict}; total wall time {} (setup, build and tests)",
        format_duration(start.elapsed())
    );
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        // cargo test exits 101 on failures; a code that does not fit u8 cannot happen.
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE, // killed by a signal
    })
}

/// "3m 07.2s" / "12.4s".
fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let minutes = d.as_secs() / 60;
        #[expect(clippy::cast_precision_loss, reason = "minutes fit an f64 exactly")]
        let rest = secs - (minutes * 60) as f64;
        format!("{minutes}m {rest:04.1}s")
    }
}
