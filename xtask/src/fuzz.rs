//! `cargo xtask fuzz [--seconds N]`: fuzzes the topology parser with cargo-fuzz
//! (libFuzzer, nightly) for N seconds (default 60).
//!
//! The fuzz crate (`fuzz/`) is its own workspace and depends only on the pure core
//! (`faultline-core`), so no eBPF object is built under the sanitizer flags. Installs what is missing first: nightly (rustup),
//! cargo-fuzz (`cargo install`), a C++ compiler for libFuzzer (apt, as root). The
//! corpus (`fuzz/corpus/topology/`) is seeded from examples/topology.toml and a few
//! small files; libFuzzer keeps what it finds there between runs. A crash leaves its
//! input in `fuzz/artifacts/topology/`, which this command prints.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::SystemTime,
};

use anyhow::{Context as _, Result, bail};

use crate::{describe, is_root, run_output, run_status, workspace_root};

const TARGET: &str = "topology";

#[derive(clap::Args)]
pub(crate) struct Options {
    /// How long to fuzz, in seconds (libFuzzer's -max_total_time).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    seconds: u32,
}

/// Small inputs that reach the parser's rules (prefix lengths, IPv6, host bits,
/// duplicates, unplaced hosts); the example file is added too.
const SEEDS: [(&str, &str); 4] = [
    (
        "seed-nested-prefixes.toml",
        "[[site]]\nname = \"s\"\n[[cabinet]]\nname = \"c\"\nsite = \"s\"\n\
         [[rack]]\nname = \"wide\"\ncabinet = \"s/c\"\nprefixes = [\"10.0.0.0/8\", \"::/0\"]\n\
         [[rack]]\nname = \"narrow\"\ncabinet = \"s/c\"\nprefixes = [\"10.1.2.0/24\", \"fd00::/64\", \"10.1.2.3/32\"]\n\
         [[host]]\nname = \"h\"\nrack = \"s/c/narrow\"\naddresses = [\"10.1.2.4\", \"fd00::4\", \"::ffff:10.1.2.4\"]\n",
    ),
    (
        "seed-ipv6-only.toml",
        "[[site]]\nname = \"dc-v6\"\n[[cabinet]]\nname = \"c9\"\nsite = \"dc-v6\"\n\
         [[rack]]\nname = \"r9\"\ncabinet = \"dc-v6/c9\"\nprefixes = [\"2001:db8:9::/48\", \"2001:db8:9:1::/64\", \"2001:db8:9:1::1/128\"]\n\
         [[host]]\nname = \"h1\"\nrack = \"dc-v6/c9/r9\"\naddresses = [\"2001:db8:9:1::1\", \"2001:db8:9:1::2\"]\n",
    ),
    (
        "seed-errors.toml",
        "[[site]]\nname = \"a\"\n[[site]]\nname = \"a\"\n[[cabinet]]\nname = \"c\"\nsite = \"b\"\n\
         [[rack]]\nname = \"r\"\ncabinet = \"a\"\nprefixes = [\"10.0.0.1/24\", \"10.0.0.0/33\"]\n",
    ),
    (
        "seed-inline-tables.toml",
        "site = [{ name = \"x\" }]\ncabinet = [{ name = \"y\", site = \"x\" }]\n\
         rack = [{ name = \"z\", cabinet = \"x/y\", prefixes = [\"0.0.0.0/0\"] }]\n\
         host = [{ name = \"w\", rack = \"x/y/z\" }, { name = \"v\", rack = \"x/y/z\", addresses = [\"255.255.255.255\"] }]\n",
    ),
];

pub(crate) fn run(opts: &Options) -> Result<ExitCode> {
    let root = workspace_root();
    let fuzz_dir = root.join("fuzz");
    ensure_nightly()?;
    ensure_cxx()?;
    ensure_cargo_fuzz()?;
    let corpus = seed_corpus(root, &fuzz_dir)?;
    let artifacts = fuzz_dir.join("artifacts").join(TARGET);
    let started = SystemTime::now();
    // `cargo +nightly` needs rustup's proxy, not the toolchain's cargo in $CARGO.
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["+nightly", "fuzz", "run", "--fuzz-dir", "fuzz", TARGET])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={}", opts.seconds))
        .arg(format!(
            "-dict={}",
            fuzz_dir.join("topology.dict").display()
        ))
        // A topology file is small; long inputs only slow the search down.
        .arg("-max_len=4096")
        .arg("-print_final_stats=1");
    println!(
        "fuzz: {} s on `{TARGET}` (corpus {}): {}",
        opts.seconds,
        relative(&corpus),
        describe(&cmd)
    );
    let status = cmd
        .status()
        .with_context(|| format!("start `{}`", describe(&cmd)))?;
    let crashes = new_artifacts(&artifacts, started);
    if status.success() && crashes.is_empty() {
        println!(
            "fuzz: no crash in {} s; corpus: {} inputs in {}",
            opts.seconds,
            fs::read_dir(&corpus).map(Iterator::count).unwrap_or(0),
            relative(&corpus)
        );
        return Ok(ExitCode::SUCCESS);
    }
    for path in &crashes {
        let bytes = fs::read(path).unwrap_or_default();
        println!(
            "fuzz: crash input {} ({} bytes):\n{}\n--- reproduce: cargo +nightly fuzz run --fuzz-dir fuzz {TARGET} {}",
            relative(path),
            bytes.len(),
            String::from_utf8_lossy(&bytes),
            relative(path)
        );
    }
    if crashes.is_empty() {
        bail!("`{}` failed ({status})", describe(&cmd));
    }
    Ok(ExitCode::FAILURE)
}

/// rustup's nightly toolchain (setup installs it too, with rust-src for the eBPF build).
fn ensure_nightly() -> Result<()> {
    let list = run_output(Command::new("rustup").args(["toolchain", "list"]))
        .context("cargo-fuzz needs rustup's nightly toolchain")?;
    if list.lines().any(|l| l.starts_with("nightly")) {
        return Ok(());
    }
    crate::setup::install_nightly()
}

/// libfuzzer-sys compiles libFuzzer's C++ sources.
fn ensure_cxx() -> Result<()> {
    if Command::new("c++")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    if !is_root() {
        bail!("libFuzzer needs a C++ compiler: install g++ (apt-get install g++)");
    }
    println!("installing: g++ (apt), for libFuzzer");
    run_status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends", "g++"]),
    )
}

fn ensure_cargo_fuzz() -> Result<()> {
    let found = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Ok(());
    }
    println!("installing: cargo-fuzz (cargo install, about a minute)");
    run_status(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    let works = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        bail!(
            "`cargo install cargo-fuzz` succeeded but `cargo fuzz` does not run; is $CARGO_HOME/bin (~/.cargo/bin) on PATH?"
        );
    }
    Ok(())
}

/// `fuzz/corpus/topology/` with the example topology and the built-in seeds (rewritten
/// each run; whatever libFuzzer added stays).
fn seed_corpus(root: &Path, fuzz_dir: &Path) -> Result<PathBuf> {
    let corpus = fuzz_dir.join("corpus").join(TARGET);
    fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
    let example = root.join("examples").join("topology.toml");
    let text =
        fs::read_to_string(&example).with_context(|| format!("read {}", example.display()))?;
    let mut seeds = vec![("seed-example-topology.toml", text.as_str())];
    seeds.extend(SEEDS);
    for (name, text) in seeds {
        let path = corpus.join(name);
        fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(corpus)
}

/// Crash, timeout and out-of-memory inputs libFuzzer wrote since `since`.
fn new_artifacts(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since)
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}
