//! `cargo xtask setup`: installs what a fresh machine lacks, and only that.
//!
//! Everything is checked first (one dpkg-query, one rustup call, `bpf-linker --version`,
//! a stat of tracefs, one import in the Python venv: well under a second), so every
//! other subcommand calls [`ensure`] before it starts and a machine that has it all
//! pays almost nothing.
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, describe, is_root, run_output, run_status, workspace_root};

/// Debian packages: LLVM 22 for bpf-linker, and the tools the tests and bench drive.
const APT_PACKAGES: [&str; 17] = [
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "bpftool",
    "nftables",
    "iproute2",
    "iperf3",
    "python3-venv",
    // sysctl, which the namespace lab uses to turn its router on.
    "procps",
    // iptables-legacy's NFQUEUE target: the lab's inter-site delay stage (the kernel
    // has neither netem nor nft's queue statement).
    "iptables",
    // The lab's bgp-failover: a gobgpd per border site (driven by `faultline announce`)
    // and bird as the client network's edge router.
    "gobgpd",
    "bird2",
    // The packaging tests: `systemd-analyze verify` of the unit, and setpriv to run
    // the agent with only the unit's capabilities.
    "systemd",
    "util-linux",
    // `lintian` on the Debian package (`cargo xtask package`) in its test.
    "lintian",
    // promtool, which checks the agent's /metrics and the alert rules.
    "prometheus",
];
/// bpf-linker must be built against this LLVM's `llvm-config`, first on PATH.
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const BPF_LINKER_SERIES: &str = "0.13.";
const TRACEFS: &str = "/sys/kernel/tracing";
/// The virtualenv (in the workspace root) of the independent gRPC client the tests run
/// against the feed (tests/python/), and the PyPI packages it needs.
const VENV: &str = ".venv";
const PYPI_PACKAGES: [&str; 3] = ["grpcio", "grpcio-health-checking", "grpcio-reflection"];
/// Imports every module the client uses, then prints the packages' versions.
const VENV_CHECK: &str = "import grpc, grpc_health.v1.health_pb2_grpc, \
    grpc_reflection.v1alpha.reflection_pb2_grpc\n\
    from importlib.metadata import version\n\
    print(', '.join(f'{p} {version(p)}' for p in \
    ('grpcio', 'grpcio-health-checking', 'grpcio-reflection')))";

/// `cargo xtask setup`: one line per prerequisite.
pub(crate) fn run() -> Result<()> {
    prepare(true)
}

/// Installs whatever is missing, printing only what it installs. Fast when nothing is.
pub(crate) fn ensure() -> Result<()> {
    prepare(false)
}

fn prepare(verbose: bool) -> Result<()> {
    let packages = apt_status()?;
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, version)| version.is_none())
        .map(|(name, _)| *name)
        .collect();
    let tracefs_ok = Path::new(TRACEFS).join("events").is_dir();
    if !is_root() && (!missing.is_empty() || !tracefs_ok) {
        let mut lacks = Vec::new();
        if !missing.is_empty() {
            lacks.push(format!("Debian packages {}", missing.join(" ")));
        }
        if !tracefs_ok {
            lacks.push(format!("tracefs mounted at {TRACEFS}"));
        }
        bail!(
            "this machine lacks {}, and installing it needs root: run `cargo xtask setup` as root",
            lacks.join(" and ")
        );
    }
    apt(&packages, &missing, verbose)?;
    rust_src(verbose)?;
    bpf_linker(verbose)?;
    tracefs(tracefs_ok, verbose)?;
    python_venv(verbose)
}

/// Each package with its installed version, None when not (fully) installed.
fn apt_status() -> Result<Vec<(&'static str, Option<String>)>> {
    // Exits 1 when a package is unknown to dpkg, but still prints the others.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package}\t${Status}\t${Version}\n"])
        .args(APT_PACKAGES)
        .output()
        .context("run dpkg-query (setup supports Debian 12 and its derivatives)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(APT_PACKAGES
        .iter()
        .map(|&name| {
            let version = stdout.lines().find_map(|line| {
                let mut f = line.split('\t');
                let (pkg, status, version) = (f.next()?, f.next()?, f.next()?);
                (pkg == name && status == "install ok installed").then(|| version.to_owned())
            });
            (name, version)
        })
        .collect())
}

fn apt(packages: &[(&str, Option<String>)], missing: &[&str], verbose: bool) -> Result<()> {
    if verbose {
        for (name, version) in packages {
            if let Some(v) = version {
                println!("ok: {name} {v}");
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    println!("installing: {} (apt-get)", missing.join(" "));
    run_status(Command::new("apt-get").arg("update"))?;
    run_status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(missing),
    )?;
    let still: Vec<_> = apt_status()?
        .into_iter()
        .filter(|(_, v)| v.is_none())
        .map(|(name, _)| name)
        .collect();
    if !still.is_empty() {
        bail!(
            "apt-get install succeeded but {} still not installed",
            still.join(" ")
        );
    }
    Ok(())
}

/// rustup's nightly toolchain, minimal profile (the eBPF build and cargo-fuzz use it).
pub(crate) fn install_nightly() -> Result<()> {
    println!("installing: Rust nightly toolchain (rustup, minimal profile)");
    run_status(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
    ]))
}

/// `rust-src` for nightly (`-Z build-std=core` for the eBPF target).
fn rust_src(verbose: bool) -> Result<()> {
    let mut installed = nightly_components()?;
    if installed.is_none() {
        install_nightly()?;
        installed = nightly_components()?;
    }
    let has_src = |list: &Option<String>| {
        list.as_deref()
            .is_some_and(|l| l.lines().any(|c| c.starts_with("rust-src")))
    };
    if !has_src(&installed) {
        println!("installing: rust-src for nightly (rustup)");
        run_status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
        if !has_src(&nightly_components()?) {
            bail!("rustup added rust-src but it is still not listed for nightly");
        }
    }
    if verbose {
        let version =
            run_output(Command::new("rustc").arg("+nightly").arg("--version")).unwrap_or_default();
        println!("ok: rust-src for nightly ({})", version.trim());
    }
    Ok(())
}

/// Installed components of the nightly toolchain; None when nightly is not installed.
fn nightly_components() -> Result<Option<String>> {
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("run rustup (install Rust with rustup: https://rustup.rs)")?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn bpf_linker(verbose: bool) -> Result<()> {
    let found = bpf_linker_version();
    if let Some(v) = found
        .as_deref()
        .filter(|v| v.starts_with(BPF_LINKER_SERIES))
    {
        if verbose {
            println!("ok: bpf-linker {v}");
        }
        return Ok(());
    }
    let was = found.map_or_else(|| "not found".to_owned(), |v| format!("found {v}"));
    println!("installing: bpf-linker 0.13 against LLVM 22 ({was}; cargo install, about a minute)");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![LLVM_BIN.into()];
    dirs.extend(std::env::split_paths(&path));
    let mut cmd = cargo();
    cmd.env("PATH", std::env::join_paths(dirs)?).args([
        "install",
        "bpf-linker",
        "--version",
        "^0.13",
        "--no-default-features",
        "--features",
        "llvm-22",
    ]);
    run_status(&mut cmd)?;
    match bpf_linker_version() {
        Some(v) if v.starts_with(BPF_LINKER_SERIES) => Ok(()),
        other => bail!(
            "`{}` succeeded but `bpf-linker --version` gives {}; is $CARGO_HOME/bin (~/.cargo/bin) on PATH?",
            describe(&cmd),
            other.as_deref().unwrap_or("nothing")
        ),
    }
}

/// "bpf-linker 0.13.0" → "0.13.0"; None when it is not on PATH or does not run.
fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(1)?;
    out.status.success().then(|| version.to_owned())
}

fn tracefs(mounted: bool, verbose: bool) -> Result<()> {
    if mounted {
        if verbose {
            println!("ok: tracefs at {TRACEFS}");
        }
        return Ok(());
    }
    println!("mounting: tracefs at {TRACEFS} (it was not mounted)");
    std::fs::create_dir_all(TRACEFS).with_context(|| format!("create {TRACEFS}"))?;
    run_status(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS]))
}

/// `.venv` with grpcio, grpcio-health-checking and grpcio-reflection.
fn python_venv(verbose: bool) -> Result<()> {
    let venv = workspace_root().join(VENV);
    let python = venv.join("bin/python");
    if let Some(versions) = venv_versions(&python) {
        if verbose {
            println!("ok: python venv ({versions})");
        }
        return Ok(());
    }
    println!(
        "installing: python venv {} with {} (python3 -m venv, pip)",
        venv.display(),
        PYPI_PACKAGES.join(" ")
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "venv"]);
    // A venv whose interpreter no longer runs (its base Python moved) is made anew.
    if venv.exists() && !runs(Command::new(&python).args(["-c", "pass"])) {
        cmd.arg("--clear");
    }
    run_status(cmd.arg(&venv))?;
    run_status(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--root-user-action=ignore",
            ])
            .args(PYPI_PACKAGES),
    )?;
    if venv_versions(&python).is_none() {
        // Run the check once more, for its error message.
        run_output(Command::new(&python).args(["-c", VENV_CHECK]))
            .with_context(|| format!("pip installed {}", PYPI_PACKAGES.join(" ")))?;
    }
    Ok(())
}

/// "grpcio 1.x, grpcio-health-checking 1.x, grpcio-reflection 1.x"; None when the venv
/// is missing or lacks one of them.
fn venv_versions(python: &Path) -> Option<String> {
    let out = Command::new(python)
        .args(["-c", VENV_CHECK])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Whether `cmd` starts and exits 0 (its output discarded).
fn runs(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|out| out.status.success())
}
