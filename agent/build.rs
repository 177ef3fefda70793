//! Builds the kernel programs (agent-ebpf, for bpfel-unknown-none with nightly and
//! bpf-linker) and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//!
//! With `AYA_BUILD_SKIP=1` (clippy, docs, machines without the BPF toolchain) an empty
//! stub object is written instead, so the crate still compiles; loading it then fails
//! with a clear error at run time.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

// Referenced only so the build-dependency is not flagged as unused.
use faultline_ebpf as _;

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR unset"))?);
    let object = out_dir.join("faultline-ebpf");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        if !object.exists() {
            fs::write(&object, b"").context("write stub eBPF object")?;
        }
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .parent()
        .context("agent/ has a parent")?
        .join("agent-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("agent-ebpf path is UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "faultline-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("build the eBPF programs (run `cargo xtask setup` if the toolchain is missing)")
}
