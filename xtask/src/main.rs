//! `cargo xtask`: the project's own commands. Each one sets up what a fresh machine
//! lacks before doing anything else, so `cargo xtask run` and `cargo xtask test`
//! work on a machine that has only Rust (stable + nightly via rustup), gcc and python3.
mod bench;
mod build;
mod fuzz;
mod lab;
mod lint;
mod package;
mod run;
mod setup;
mod test;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run, test and benchmark Faultline"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what this machine lacks (Debian packages, nightly rust-src, bpf-linker,
    /// tracefs, a Python venv with grpcio). Idempotent: a second run only checks.
    Setup,
    /// Set up, then build the agent (`faultline`, with its eBPF programs embedded).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Set up, build in release and run `faultline run ARGS...` (as root).
    Run {
        /// Arguments for `faultline run`, after `--` (e.g. `-- --config f.toml`).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Set up and run every test of the workspace, one at a time, then the namespace
    /// lab once with its checks (as root).
    Test {
        /// Leave out the lab (about 10 minutes).
        #[arg(long)]
        no_lab: bool,
        /// Arguments for the test binaries, after `--` (e.g. `-- --nocapture`).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Measure throughput with and without the agent, the kernel cost per program, and
    /// the detector engine's cost per tick at 10k and 100k links; `bench lab`: detection,
    /// recovery and cost in the namespace lab, and a soak (as root).
    Bench(bench::Options),
    /// Set up, build in release and make the Debian package (cargo-deb, installed if
    /// missing): binary, systemd unit, conffile, examples, man page, completions.
    Package,
    /// rustfmt check, clippy with warnings denied (host crates and the kernel programs
    /// for their own target), and a check that the pure core stays free of I/O crates.
    Lint,
    /// Fuzz (cargo-fuzz on nightly) the topology parser, the config file, peer batches
    /// and gRPC requests, --seconds each (default 60), or only --target NAME.
    Fuzz(fuzz::Options),
    /// Build a data center of network namespaces (agents, traffic, inter-site delay),
    /// inject faults and time what gRPC health subscribers see (as root); `--check`
    /// judges every run and fails on a failed check.
    Lab(lab::Options),
    /// The lab's inter-site delay stage (started by `lab` inside the core namespace).
    #[command(hide = true)]
    LabDelay(lab::DelayArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup::run().map(|()| ExitCode::SUCCESS),
        Cmd::Build { release } => build::run(release).map(|()| ExitCode::SUCCESS),
        Cmd::Run { args } => run::run(&args),
        Cmd::Test { args, no_lab } => test::run(&args, !no_lab),
        Cmd::Bench(options) => bench::run(&options).map(|()| ExitCode::SUCCESS),
        Cmd::Fuzz(options) => fuzz::run(&options),
        Cmd::Package => package::run().map(|()| ExitCode::SUCCESS),
        Cmd::Lint => lint::run().map(|()| ExitCode::SUCCESS),
        Cmd::Lab(options) => lab::run(&options).map(|o| {
            if o.failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }),
        Cmd::LabDelay(args) => lab::serve_delay(&args).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|e| {
        eprintln!("xtask: {e:#}");
        ExitCode::FAILURE
    })
}

/// The workspace root (the parent of xtask/).
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ lives inside the workspace")
}

/// `target/` (or `$CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The cargo that runs us (so nested builds use the same toolchain), in the workspace root.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    // `cargo xtask` runs with the variables cargo sets for the xtask itself; passed on,
    // they change build scripts' inputs (ring's among them) and rebuild the tree above
    // them on every run.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name == "CARGO_MANIFEST_DIR"
            || name == "CARGO_MANIFEST_PATH"
            || name == "CARGO_PRIMARY_PACKAGE"
            || name == "CARGO_CRATE_NAME"
            || name == "CARGO_BIN_NAME"
            || name == "OUT_DIR"
            || name.starts_with("CARGO_PKG_")
        {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd
}

/// `prog arg arg…`, for messages.
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with inherited stdio; fails unless it exits 0.
fn run_status(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; fails with its stderr unless it exits 0.
fn run_output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("start `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", describe(cmd)))
}
