//! `cargo xtask lint`: the gate `.ci/run` passes before the tests.
//!
//! 1. `cargo fmt --all --check`;
//! 2. clippy with every warning denied, on the host crates (all targets: tests,
//!    benches, examples) and on the kernel crate for its own target (bpfel, nightly,
//!    build-std), where its programs really build;
//! 3. the pure core stays pure: no aya, tonic or tokio in `faultline-core`'s
//!    dependency tree, so the detector and topology build, test and fuzz without them.
use std::{path::Path, process::Command, time::Instant};

use anyhow::{Result, bail};

use crate::{cargo, run_output, run_status, setup, target_dir, workspace_root};

/// Crates the pure core must never depend on, directly or not.
const IMPURE: [&str; 4] = ["aya", "aya-ebpf", "tonic", "tokio"];

pub(crate) fn run() -> Result<()> {
    let start = Instant::now();
    setup::ensure()?;
    step("rustfmt", || {
        run_status(cargo().args(["fmt", "--all", "--check"]))
    })?;
    step("clippy (host crates, all targets)", || {
        run_status(cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "faultline-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    step(
        "clippy (kernel programs, bpfel-unknown-none)",
        clippy_kernel,
    )?;
    step("faultline-core has no aya, tonic or tokio", core_is_pure)?;
    println!("xtask lint: clean in {:.0?}", start.elapsed());
    Ok(())
}

fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    println!("lint: {name}");
    f().map_err(|e| e.context(format!("lint step `{name}`")))
}

/// The kernel crate as agent/build.rs builds it, checked rather than linked (so no
/// bpf-linker is needed), in a target dir of its own.
fn clippy_kernel() -> Result<()> {
    let arch = std::env::consts::ARCH;
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "clippy",
        "--package",
        "faultline-ebpf",
        "--bins",
    ])
    .args([
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--target-dir",
    ])
    .arg(target_dir().join("ebpf-lint"))
    .args(["--", "-D", "warnings"])
    .current_dir(workspace_root().join("agent-ebpf"))
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!("--cfg=bpf_target_arch=\"{arch}\""),
    )
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    .env_remove("RUSTFLAGS");
    run_status(&mut cmd)
}

fn core_is_pure() -> Result<()> {
    let tree = run_output(cargo().args([
        "tree",
        "--package",
        "faultline-core",
        "--edges",
        "normal",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ]))?;
    let impure: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| IMPURE.contains(name))
        .collect();
    if !impure.is_empty() {
        bail!(
            "faultline-core ({}) depends on {}: the detector and topology must build without I/O crates",
            Path::new("agent/core").display(),
            impure.join(", ")
        );
    }
    Ok(())
}
