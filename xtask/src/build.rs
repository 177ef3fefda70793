//! `cargo xtask build [--release]`: the agent, with its eBPF object embedded by
//! agent/build.rs (nightly + bpf-linker, both installed by setup).
use std::path::PathBuf;

use anyhow::Result;

use crate::{cargo, run_status, setup, target_dir};

pub(crate) fn run(release: bool) -> Result<()> {
    setup::ensure()?;
    let bin = faultline(release)?;
    println!("built {}", bin.display());
    Ok(())
}

/// Builds `faultline` and returns the path of the binary. Assumes setup is done.
pub(crate) fn faultline(release: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "faultline"]);
    if release {
        cmd.arg("--release");
    }
    run_status(&mut cmd)?;
    let profile = if release { "release" } else { "debug" };
    Ok(target_dir().join(profile).join("faultline"))
}
