//! `cargo xtask run [-- ARGS]`: set up, build in release, and become
//! `faultline run ARGS...` (exec), so signals and the exit code are the agent's own.
use std::{ffi::OsString, os::unix::process::CommandExt as _, process::Command};

use anyhow::{Result, bail};

use crate::{build, is_root, setup};

pub(crate) fn run(args: &[OsString]) -> Result<std::process::ExitCode> {
    if !is_root() {
        bail!("the agent loads eBPF programs and attaches them to kernel tracepoints; run as root");
    }
    setup::ensure()?;
    let bin = build::faultline(true)?;
    // exec only returns on failure.
    let err = Command::new(&bin).arg("run").args(args).exec();
    bail!("exec {}: {err}", bin.display())
}
