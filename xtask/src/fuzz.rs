//! `cargo xtask fuzz [--seconds N] [--target NAME]`: fuzzes with cargo-fuzz (libFuzzer,
//! nightly) each target in turn, N seconds each (default 60), or only NAME:
//!
//! - `topology`: the topology file parser (`faultline_core::topology::Topology::parse`);
//! - `config`: the agent's config file (`faultline::Config::parse`);
//! - `peer_batch`: what a peer agent sends (`faultline::fuzzing::peer_batches`);
//! - `grpc_request`: what a gRPC client sends (`faultline::fuzzing::grpc_requests`).
//!
//! The fuzz crate (`fuzz/`) is its own workspace. `topology` builds from the pure core
//! alone; the others need the crate's `agent` feature, which brings in the agent library,
//! built with AYA_BUILD_SKIP=1 so that no eBPF object is built under the sanitizer
//! flags. Each target is built and run on its own, so one that does not build (or
//! crashes) does not stop the others: all are reported at the end, and the command
//! fails if any failed.
//!
//! Installs what is missing first: nightly (rustup), cargo-fuzz (`cargo install`), a
//! C++ compiler for libFuzzer (apt, as root). Each corpus (`fuzz/corpus/NAME/`) is
//! seeded on every run (files named `seed-*`); libFuzzer keeps what it finds there
//! between runs. A crash leaves its input in `fuzz/artifacts/NAME/`, which this command
//! prints.
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::SystemTime,
};

use anyhow::{Context as _, Result, bail};

use crate::{describe, is_root, run_output, run_status, workspace_root};

#[derive(clap::Args)]
pub(crate) struct Options {
    /// How long to fuzz each target, in seconds (libFuzzer's -max_total_time).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    seconds: u32,
    /// Fuzz only this target (default: every target in turn, --seconds each).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(TARGETS.iter().map(|t| t.name)))]
    target: Option<String>,
}

/// One fuzz target of `fuzz/Cargo.toml`.
struct Target {
    name: &'static str,
    /// Needs the fuzz crate's `agent` feature (the agent library).
    agent: bool,
    /// libFuzzer's -max_len: the inputs are small, and long ones only slow the search.
    max_len: u32,
    /// A libFuzzer dictionary in `fuzz/`.
    dict: Option<&'static str>,
    seeds: Seeds,
}

enum Seeds {
    /// A file of the repository and small inputs written here.
    Text {
        example: &'static str,
        extra: &'static [(&'static str, &'static str)],
    },
    /// Encoded protobuf messages, written by the fuzz workspace's `seed` package (the
    /// generated message types live there, not in xtask).
    Encoded,
}

const TARGETS: [Target; 4] = [
    Target {
        name: "topology",
        agent: false,
        max_len: 4096,
        dict: Some("topology.dict"),
        seeds: Seeds::Text {
            example: "examples/topology.toml",
            extra: &TOPOLOGY_SEEDS,
        },
    },
    Target {
        name: "config",
        agent: true,
        // The example config, every key documented, is 4.2 KB.
        max_len: 8192,
        dict: Some("config.dict"),
        seeds: Seeds::Text {
            example: "examples/faultline.toml",
            extra: &CONFIG_SEEDS,
        },
    },
    Target {
        name: "peer_batch",
        agent: true,
        // Room for a few batches of dozens of links each.
        max_len: 8192,
        dict: None,
        seeds: Seeds::Encoded,
    },
    Target {
        name: "grpc_request",
        agent: true,
        // A request is a filter or a name: tens of bytes.
        max_len: 1024,
        dict: None,
        seeds: Seeds::Encoded,
    },
];

/// Small inputs that reach the parser's rules (prefix lengths, IPv6, host bits,
/// duplicates, unplaced hosts); the example file is added too.
const TOPOLOGY_SEEDS: [(&str, &str); 4] = [
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

/// Small configs at the edges of what validation accepts, and just past them, in the
/// forms TOML allows for the same table (dotted keys, inline tables); the example
/// file (every key, the defaults) is added too.
const CONFIG_SEEDS: [(&str, &str); 6] = [
    (
        "seed-tls.toml",
        "[tls]\ncert = \"/etc/faultline/agent.pem\"\nkey = \"/etc/faultline/agent.key\"\nca = \"ca.pem\"\n\
         [agent]\npeers = [\"https://10.1.2.11:7431\", \"http://10.1.2.12:7431\"]\n\
         [listen]\nmax_connections = 65536\nmax_streams = 1\n",
    ),
    (
        "seed-edges.toml",
        "[agent]\nname = \"web-1\"\ntopology = \"t.toml\"\npeers = \"auto\"\npeer_port = 65535\n\
         local_addresses = [\"10.1.1.10\", \"fd00:a:1:1::10\"]\n\
         [probe]\ntick = \"10ms\"\nmax_links = 16\ncgroup = \"\"\n\
         [detector]\nstale_after = \"1h\"\nconfirm = \"0s\"\nmax_recovery_hold = \"1d\"\nsilent_stall_rtts = 100.0\n",
    ),
    (
        "seed-peers.toml",
        "[agent]\npeers = [\"http://10.1.2.11:7431\", \"http://[fd00::1]:7431/\", \"http://web-2:1\"]\n\
         [listen]\ngrpc = \"0.0.0.0:7431\"\nmetrics = \"[::1]:9000\"\n",
    ),
    (
        "seed-past-edges.toml",
        "[probe]\ntick = \"10s 1ns\"\nmax_links = 1048577\n\
         [detector]\nrtt_factor = inf\nmin_failed_fraction = -0.0\nrecovery_hold = \"2h\"\n",
    ),
    (
        "seed-dotted-and-inline.toml",
        "agent.name = \" \"\nprobe = { tick = \"1s\", max_links = 1048576 }\n\
         detector.max_evidence = 1024\ndetector.pooled_loss_ratio = 1e-300\n",
    ),
    (
        "seed-errors.toml",
        "[agent]\npeers = [\"https://10.0.0.1:7431\", \"http://10.0.0.1:7431/x\"]\n\
         [probe]\ntik = 3\n[detector]\nrecovery_hold = \"soon\"\n",
    ),
];

/// What one target's run came to.
enum Outcome {
    Passed {
        executions: Option<u64>,
        corpus: usize,
    },
    Crashed {
        executions: Option<u64>,
        artifacts: Vec<PathBuf>,
    },
    Failed(String),
}

pub(crate) fn run(opts: &Options) -> Result<ExitCode> {
    ensure_nightly()?;
    ensure_cxx()?;
    ensure_cargo_fuzz()?;
    let targets: Vec<&Target> = TARGETS
        .iter()
        .filter(|t| opts.target.as_deref().is_none_or(|name| name == t.name))
        .collect();
    let mut outcomes = Vec::new();
    for target in targets {
        let outcome = fuzz_target(target, opts.seconds);
        if let Outcome::Crashed { artifacts, .. } = &outcome {
            print_crashes(target, artifacts);
        }
        outcomes.push((target, outcome));
    }
    print_summary(&outcomes, opts.seconds);
    let all_passed = outcomes
        .iter()
        .all(|(_, o)| matches!(o, Outcome::Passed { .. }));
    Ok(if all_passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Seeds, builds and runs one target; whatever goes wrong is its outcome, so the next
/// target still runs.
fn fuzz_target(target: &Target, seconds: u32) -> Outcome {
    let fuzz_dir = workspace_root().join("fuzz");
    let corpus = fuzz_dir.join("corpus").join(target.name);
    if let Err(e) = seed_corpus(target, &corpus) {
        return Outcome::Failed(format!("seeding {}: {e:#}", relative(&corpus)));
    }
    // Built apart from the run so that a build failure is told from a crash.
    let mut build = cargo_fuzz("build", target);
    println!("fuzz: building `{}`: {}", target.name, describe(&build));
    if let Err(e) = run_status(&mut build) {
        return Outcome::Failed(format!("build: {e:#}"));
    }
    let artifacts_dir = fuzz_dir.join("artifacts").join(target.name);
    let started = SystemTime::now();
    let mut cmd = cargo_fuzz("run", target);
    cmd.arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={}", target.max_len))
        .arg("-print_final_stats=1");
    if let Some(dict) = target.dict {
        cmd.arg(format!("-dict={}", fuzz_dir.join(dict).display()));
    }
    println!(
        "fuzz: {seconds} s on `{}` (corpus {}): {}",
        target.name,
        relative(&corpus),
        describe(&cmd)
    );
    let (status, executions) = match run_counting(&mut cmd) {
        Ok(done) => done,
        Err(e) => return Outcome::Failed(format!("{e:#}")),
    };
    let artifacts = new_artifacts(&artifacts_dir, started);
    if !artifacts.is_empty() {
        return Outcome::Crashed {
            executions,
            artifacts,
        };
    }
    if !status.success() {
        return Outcome::Failed(format!(
            "`{}` failed ({status}) and left no artifact in {}",
            describe(&cmd),
            relative(&artifacts_dir)
        ));
    }
    Outcome::Passed {
        executions,
        corpus: fs::read_dir(&corpus).map(Iterator::count).unwrap_or(0),
    }
}

/// `cargo +nightly fuzz SUBCOMMAND [--features agent] NAME`, from the repository root.
fn cargo_fuzz(subcommand: &str, target: &Target) -> Command {
    // `cargo +nightly` needs rustup's proxy, not the toolchain's cargo in $CARGO.
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .env_remove("RUSTUP_TOOLCHAIN")
        // The agent's build script writes a stub instead of building the eBPF programs:
        // they are never loaded here, and would not build under the sanitizer flags.
        .env("AYA_BUILD_SKIP", "1")
        .args(["+nightly", "fuzz", subcommand, "--fuzz-dir", "fuzz"]);
    if target.agent {
        cmd.args(["--features", "agent"]);
    }
    cmd.arg(target.name);
    cmd
}

/// Runs `cmd` with its stderr passed through line by line, and returns its status and
/// the executions libFuzzer counted (its final stats, on stderr).
fn run_counting(cmd: &mut Command) -> Result<(std::process::ExitStatus, Option<u64>)> {
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start `{}`", describe(cmd)))?;
    let stderr = child.stderr.take().context("child stderr was not piped")?;
    let mut reader = BufReader::new(stderr);
    let mut out = std::io::stderr().lock();
    let mut executions = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("read the output of `{}`", describe(cmd)))?;
        if read == 0 {
            break;
        }
        // Passing the output on is best effort: a closed terminal must not hide the result.
        let _ = out.write_all(&line);
        if let Some(n) = executed_units(&line) {
            executions = Some(n);
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("wait for `{}`", describe(cmd)))?;
    Ok((status, executions))
}

/// N of libFuzzer's `stat::number_of_executed_units: N`.
fn executed_units(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    text.trim()
        .strip_prefix("stat::number_of_executed_units:")?
        .trim()
        .parse()
        .ok()
}

fn print_crashes(target: &Target, artifacts: &[PathBuf]) {
    for path in artifacts {
        let bytes = fs::read(path).unwrap_or_default();
        println!(
            "fuzz: `{}` crash input {} ({} bytes):\n{}\n--- reproduce: AYA_BUILD_SKIP=1 cargo +nightly fuzz run --fuzz-dir fuzz{} {} {}",
            target.name,
            relative(path),
            bytes.len(),
            printable(&bytes),
            if target.agent {
                " --features agent"
            } else {
                ""
            },
            target.name,
            relative(path)
        );
    }
}

/// The input as text when it is UTF-8 (the file targets), with control characters
/// other than newlines and tabs escaped so the terminal shows them; escaped bytes
/// otherwise. Cut at 4 KiB (the file holds all of it).
fn printable(bytes: &[u8]) -> String {
    const SHOWN: usize = 4096;
    let mut text = match std::str::from_utf8(bytes) {
        Ok(text) => text
            .char_indices()
            .take_while(|(at, _)| *at < SHOWN)
            .map(|(_, c)| match c {
                '\n' | '\t' => c.to_string(),
                c if c.is_control() => c.escape_default().to_string(),
                c => c.to_string(),
            })
            .collect(),
        Err(_) => bytes[..bytes.len().min(SHOWN)].escape_ascii().to_string(),
    };
    if bytes.len() > SHOWN {
        text.push_str("\n[… cut; the file holds the rest]");
    }
    text
}

fn print_summary(outcomes: &[(&Target, Outcome)], seconds: u32) {
    println!("fuzz: {seconds} s per target:");
    for (target, outcome) in outcomes {
        let line = match outcome {
            Outcome::Passed { executions, corpus } => format!(
                "ok      {} executions, no crash; corpus {corpus} inputs in fuzz/corpus/{}",
                count(*executions),
                target.name
            ),
            Outcome::Crashed {
                executions,
                artifacts,
            } => format!(
                "CRASH   {} executions; {}",
                count(*executions),
                artifacts
                    .iter()
                    .map(|p| relative(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Outcome::Failed(why) => format!("FAILED  {why}"),
        };
        println!("  {:<13} {line}", target.name);
    }
}

fn count(executions: Option<u64>) -> String {
    executions.map_or_else(|| "? (no final stats)".to_owned(), |n| n.to_string())
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

/// Writes the target's seeds into `corpus` (rewritten each run; whatever libFuzzer
/// added stays).
fn seed_corpus(target: &Target, corpus: &Path) -> Result<()> {
    fs::create_dir_all(corpus).with_context(|| format!("create {}", corpus.display()))?;
    match &target.seeds {
        Seeds::Text { example, extra } => write_text_seeds(example, extra, corpus),
        Seeds::Encoded => write_encoded_seeds(target, corpus),
    }
}

fn write_text_seeds(example: &str, extra: &[(&str, &str)], corpus: &Path) -> Result<()> {
    let example_path = workspace_root().join(example);
    let text = fs::read_to_string(&example_path)
        .with_context(|| format!("read {}", example_path.display()))?;
    let example_name = format!(
        "seed-example-{}",
        Path::new(example)
            .file_name()
            .map_or_else(|| "file".into(), |n| n.to_string_lossy())
    );
    let mut seeds = vec![(example_name.as_str(), text.as_str())];
    seeds.extend_from_slice(extra);
    for (name, text) in seeds {
        let path = corpus.join(name);
        fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

/// Runs `faultline-fuzz-seed NAME CORPUS` (built without the sanitizer, the first time
/// in about a minute: it needs the generated protobuf types).
fn write_encoded_seeds(target: &Target, corpus: &Path) -> Result<()> {
    println!("fuzz: seeding {} (fuzz/seed)", relative(corpus));
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .env_remove("RUSTUP_TOOLCHAIN")
        .args([
            "+nightly",
            "run",
            "--quiet",
            "--manifest-path",
            "fuzz/Cargo.toml",
            "-p",
            "faultline-fuzz-seed",
            "--",
            target.name,
        ])
        .arg(corpus);
    run_status(&mut cmd)
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
