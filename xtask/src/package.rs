//! `cargo xtask package`: the agent as a Debian package, built by cargo-deb (installed
//! if missing) from `[package.metadata.deb]` in agent/Cargo.toml: the release binary
//! (stripped), the systemd unit (enabled on install, never started by dpkg), the
//! example config as the conffile /etc/faultline/faultline.toml, the other examples,
//! and a man page and bash, zsh and fish completions that `faultline generate` prints.
use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{build, cargo, run_output, run_status, setup, target_dir};

/// What `faultline generate ARGS` prints, and the file (in `<target>/release/package/`,
/// where the metadata's assets expect it) it goes to.
const GENERATED: [(&str, &[&str]); 4] = [
    ("faultline.1", &["man"]),
    ("faultline.bash", &["completions", "bash"]),
    ("_faultline", &["completions", "zsh"]),
    ("faultline.fish", &["completions", "fish"]),
];

pub(crate) fn run() -> Result<()> {
    setup::ensure()?;
    let deb = package()?;
    println!("packaged {}", deb.display());
    Ok(())
}

/// Builds the release binary as `cargo xtask build --release` does, then the .deb;
/// returns the .deb's path. Assumes setup is done.
pub(crate) fn package() -> Result<PathBuf> {
    ensure_cargo_deb()?;
    let bin = build::faultline(true)?;
    let dir = target_dir().join("release/package");
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    for (file, args) in GENERATED {
        let text = run_output(Command::new(&bin).arg("generate").args(args))?;
        let path = dir.join(file);
        fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    }
    // cargo-deb compresses man pages, but not the ones it finds under target/release/.
    run_status(
        Command::new("gzip")
            .args(["-9nf"])
            .arg(dir.join("faultline.1")),
    )?;
    // --no-build: the binary above is the one packaged (cargo-deb strips it).
    let mut deb = cargo();
    deb.args(["deb", "--package", "faultline", "--no-build"])
        .stderr(Stdio::inherit());
    let out = run_output(&mut deb)?;
    // cargo-deb prints the path of the package it wrote, last.
    let path = out
        .lines()
        .last()
        .map(|line| PathBuf::from(line.trim()))
        .filter(|path| path.extension().is_some_and(|e| e == "deb") && path.is_file())
        .with_context(|| format!("cargo deb printed no .deb path: {out:?}"))?;
    Ok(path)
}

/// cargo-deb 3: its metadata keys and where it puts the unit (/usr/lib/systemd/system)
/// are what agent/Cargo.toml is written for.
const CARGO_DEB_SERIES: &str = "3.";

fn ensure_cargo_deb() -> Result<()> {
    let found = cargo_deb_version();
    if found
        .as_deref()
        .is_some_and(|v| v.starts_with(CARGO_DEB_SERIES))
    {
        return Ok(());
    }
    let was = found.map_or_else(|| "not found".to_owned(), |v| format!("found {v}"));
    println!("installing: cargo-deb 3 ({was}; cargo install, a few minutes)");
    run_status(cargo().args(["install", "cargo-deb", "--locked", "--version", "^3"]))?;
    match cargo_deb_version() {
        Some(v) if v.starts_with(CARGO_DEB_SERIES) => Ok(()),
        other => bail!(
            "`cargo install cargo-deb` succeeded but `cargo deb --version` gives {}; is $CARGO_HOME/bin (~/.cargo/bin) on PATH?",
            other.as_deref().unwrap_or("nothing")
        ),
    }
}

/// "cargo-deb 3.8.0" → "3.8.0"; None when it is not installed or does not run.
fn cargo_deb_version() -> Option<String> {
    let out = cargo().args(["deb", "--version"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(1)?;
    out.status.success().then(|| version.to_owned())
}
