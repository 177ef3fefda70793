//! `cargo xtask test [-- ARGS]`: the whole suite, unit and privileged integration
//! tests, one test at a time: they share one kernel (tracepoints are global). Then the
//! namespace lab, every scenario once with its checks (`cargo xtask lab --scenario all
//! --check`), whose checks count in the suite's total (`--no-lab` leaves it out).
use std::{
    ffi::OsString,
    io::{BufRead as _, BufReader},
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, describe, is_root, setup};

pub(crate) fn run(args: &[OsString], lab: bool) -> Result<ExitCode> {
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
    // Pass the output through while adding up every binary's "test result:" line, so
    // the run ends with one total rather than the last binary's (often empty) doc tests.
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("start `{}`", describe(&cmd)))?;
    let mut total = Totals::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("read cargo test output")?;
            println!("{line}");
            total.add(&line);
        }
    }
    let status = child.wait().context("wait for cargo test")?;
    let tests_took = start.elapsed();
    let mut lab_failed = false;
    if lab {
        let lab_start = Instant::now();
        println!("xtask test: the namespace lab, every scenario once, checked");
        match crate::lab::run(&crate::lab::Options::check_all()) {
            Ok(o) => {
                total.passed += o.passed;
                total.failed += o.failed;
                lab_failed = o.failed > 0;
            }
            Err(e) => {
                // The lab could not run at all: one failure, with the reason.
                println!("lab: could not run: {e:#}");
                total.failed += 1;
                lab_failed = true;
            }
        }
        println!(
            "xtask test: the lab took {}",
            format_duration(lab_start.elapsed())
        );
    }
    let verdict = if status.success() && !lab_failed {
        "passed"
    } else {
        "FAILED"
    };
    println!(
        "xtask test: {verdict}; total wall time {} (setup, build and tests {}{})",
        format_duration(start.elapsed()),
        format_duration(tests_took),
        if lab { ", then the lab" } else { "" }
    );
    println!(
        "total: {} passed, {} failed, {} skipped",
        total.passed, total.failed, total.ignored
    );
    Ok(match status.code() {
        Some(0) if lab_failed => ExitCode::FAILURE,
        Some(0) => ExitCode::SUCCESS,
        // cargo test exits 101 on failures; a code that does not fit u8 cannot happen.
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE, // killed by a signal
    })
}

/// Sums of cargo test's per-binary result lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Adds "test result: ok. 59 passed; 0 failed; 1 ignored; …" if `line` is one.
    fn add(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match kind {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_add_up() {
        let mut t = Totals::default();
        t.add("test result: ok. 59 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.40s");
        t.add("test result: FAILED. 6 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out");
        t.add("running 3 tests");
        assert_eq!(
            t,
            Totals {
                passed: 65,
                failed: 2,
                ignored: 1
            }
        );
    }
}
