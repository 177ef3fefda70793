//! Builds the kernel programs (agent-ebpf, for bpfel-unknown-none with nightly,
//! `-Z build-std=core` and bpf-linker) and leaves the object in OUT_DIR for
//! `include_bytes_aligned!`.
//!
//! This does what aya-build does, quietly: aya-build replays every line of the nested
//! cargo as a `cargo:warning`, so each build of the agent printed ~35 "warnings" that
//! were only progress. Here the nested output is shown only when it fails.
//!
//! With `AYA_BUILD_SKIP=1` (clippy, docs, fuzzing, machines without the BPF toolchain)
//! an empty stub object is written instead, so the crate still compiles; loading it
//! then fails with a clear error at run time.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

// Referenced only so the build-dependency (which makes cargo rebuild us when the
// kernel crate's library changes) is not flagged as unused.
use faultline_ebpf as _;

const PACKAGE: &str = "faultline-ebpf";
const TARGET: &str = "bpfel-unknown-none";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR unset"))?);
    let object = out_dir.join(PACKAGE);
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        if !object.exists() {
            fs::write(&object, b"").context("write stub eBPF object")?;
        }
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .parent()
        .context("agent/ has a parent")?
        .join("agent-ebpf");
    // The kernel crate's sources and manifest: its bin is not a dependency of ours, so
    // cargo would not rebuild us for them otherwise.
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    let built = build(&ebpf_dir, &out_dir)?;
    fs::copy(&built, &object)
        .with_context(|| format!("copy {} to {}", built.display(), object.display()))?;
    Ok(())
}

/// Runs the nested `cargo build` of the kernel programs; returns the object's path.
fn build(ebpf_dir: &Path, out_dir: &Path) -> anyhow::Result<PathBuf> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH unset")?;
    // A target dir of its own: sharing ours would deadlock on cargo's lock.
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--package",
        PACKAGE,
        "--bins",
        "--release",
    ])
    .args(["--target", TARGET, "-Z", "build-std=core", "--target-dir"])
    .arg(&target_dir)
    .current_dir(ebpf_dir)
    // bpf_target_arch selects aya-ebpf's per-arch bindings; --btf keeps the BTF
    // the loader needs for maps and globals.
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
    )
    // The outer build's compiler and wrappers are not the nightly we ask for.
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    .env_remove("RUSTFLAGS");
    let output = cmd.output().context(
        "run `rustup run nightly cargo build` for the eBPF programs (is rustup installed?)",
    )?;
    if !output.status.success() {
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            println!("cargo:warning={line}");
        }
        bail!(
            "building the eBPF programs failed ({}); the lines above are its output. \
             Run `cargo xtask setup` if nightly rust-src or bpf-linker is missing",
            output.status
        );
    }
    Ok(target_dir.join(TARGET).join("release").join(PACKAGE))
}
