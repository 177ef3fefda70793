//! The `faultline` command line. Only argument handling lives here.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{CommandFactory as _, Parser, Subcommand};
use faultline::{
    Config, links, peer_choice, preflight,
    topology::{DEFAULT_FANOUT, Level, Topology},
};

#[derive(Parser)]
#[command(
    name = "faultline",
    version,
    about = "Detects which host, rack, cabinet or site stopped carrying TCP traffic"
)]
struct Cli {
    /// Log as JSON lines instead of text (filter with RUST_LOG, default `info`).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent.
    Run {
        /// Config file; without it /etc/faultline/faultline.toml is used if present,
        /// the built-in defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check that this host can run the agent with this config; exits non-zero if it cannot.
    Check {
        /// Config file, found as `run` finds it: without it /etc/faultline/faultline.toml
        /// if present, the built-in defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Follow an agent's verdict feed: a table, then one line per change.
    Watch {
        /// The agent's gRPC endpoint (`https://…` when the agent has `[tls]`).
        #[arg(long, default_value = "http://127.0.0.1:7431")]
        endpoint: String,
        /// For an https endpoint: the CA (PEM) that signed the agent's certificate.
        #[arg(long, value_name = "PEM")]
        tls_ca: Option<PathBuf>,
        /// Only this level (repeatable): host, rack, cabinet, site.
        #[arg(long, value_parser = parse_level)]
        level: Vec<Level>,
        /// Only entities at or below this path, e.g. dc-a/c1.
        #[arg(long, default_value = "")]
        prefix: String,
        /// One JSON object per verdict instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One line and an exit code for ENTITY's verdict, or the agent's own status:
    /// 0 healthy, 1 degraded, 2 failed, 3 unknown, 4 agent unreachable. For
    /// script checks (node-problem-detector, Consul, Nomad, keepalived MISC_CHECK).
    Status {
        /// `rack/dc-a/c1/r1` or `dc-a/c1/r1`; without it, the agent itself.
        entity: Option<String>,
        /// The agent's gRPC endpoint (`https://…` when the agent has `[tls]`).
        #[arg(long, default_value = "http://127.0.0.1:7431")]
        endpoint: String,
        /// For an https endpoint: the CA (PEM) that signed the agent's certificate.
        #[arg(long, value_name = "PEM")]
        tls_ca: Option<PathBuf>,
        /// How long to wait for the agent before exit code 4.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Withdraw and announce a site's prefixes through the local gobgpd as the
    /// agents' verdicts say (see `announce.toml` in examples/).
    Announce {
        #[arg(long)]
        config: PathBuf,
        /// Log what it would do; never call gobgpd (overrides `dry_run` in the file).
        #[arg(long)]
        dry_run: bool,
    },
    /// Check or query a topology file.
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
    /// Attach, observe for a while, and print what each TCP link experienced.
    Links {
        /// How long to observe.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the man page or shell completions (the Debian package is built with them).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
}

#[derive(Subcommand)]
enum Generate {
    /// The man page (roff), faultline.1.
    Man,
    /// Completions for SHELL.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum TopologyCommand {
    /// Validate a topology file and summarize it; exits non-zero with the first error.
    Check { file: PathBuf },
    /// Print where an address sits, e.g. `dc-a/c1/r3/web-7`.
    Lookup { file: PathBuf, ip: std::net::IpAddr },
    /// Print the peers `peers = "auto"` chooses for a host: path and endpoint, one a line.
    Peers {
        file: PathBuf,
        /// The host: one of its addresses, or its path (`dc-a/c1/r1/web-1`).
        host: String,
        /// Peers chosen at most (the agent uses the default).
        #[arg(long, default_value_t = DEFAULT_FANOUT)]
        fanout: usize,
        /// The peers' gRPC port (`agent.peer_port`).
        #[arg(long, default_value_t = peer_choice::DEFAULT_PEER_PORT)]
        port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    log_panics();
    match execute(cli.command) {
        Ok(code) => code,
        Err(e) => {
            // The whole chain, once: no message repeats its source.
            eprintln!("faultline: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => {
            let loaded = Config::load(config.as_deref())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(faultline::run_reloading(
                &loaded,
                faultline::ReloadFrom(config),
                stop_signal(),
            ))?;
        }
        Command::Status {
            entity,
            endpoint,
            tls_ca,
            timeout,
        } => {
            let options = faultline::StatusOptions {
                endpoint,
                tls_ca,
                entity,
                timeout,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let status = rt.block_on(faultline::status(&options));
            println!("{}", status.line);
            return Ok(ExitCode::from(status.code));
        }
        Command::Announce { config, dry_run } => {
            let mut config = faultline::AnnounceConfig::load(&config)?;
            config.dry_run |= dry_run;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(faultline::announce(config, async {
                let _ = shutdown_signal().await;
            }))?;
        }
        Command::Watch {
            endpoint,
            tls_ca,
            level,
            prefix,
            json,
        } => {
            let options = faultline::WatchOptions {
                endpoint,
                tls_ca,
                levels: level,
                path_prefix: prefix,
                json,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                tokio::select! {
                    r = faultline::watch(&options, std::io::stdout()) => r.map_err(|s| anyhow::anyhow!("{}", s.message())),
                    _ = shutdown_signal() => Ok(()),
                }
            })?;
        }
        Command::Topology { command } => match command {
            TopologyCommand::Check { file } => {
                let topology = Topology::load(&file)?;
                println!("{}", preflight::topology_summary(&file, &topology));
            }
            TopologyCommand::Lookup { file, ip } => {
                let topology = Topology::load(&file)?;
                println!("{}", topology.host_path(ip));
            }
            TopologyCommand::Peers {
                file,
                host,
                fanout,
                port,
            } => {
                let topology = Topology::load(&file)?;
                let me = peer_choice::find_host(&topology, &host)?;
                for peer in peer_choice::choose(&topology, me, fanout, port) {
                    println!("{} {}", peer.path, peer.endpoint);
                }
            }
        },
        Command::Check { config } => {
            let reqs = preflight::run_with_config(config.as_deref());
            print!("{}", preflight::render(&reqs));
            if !preflight::passed(&reqs) {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Links {
            duration,
            json,
            config,
        } => {
            let config = Config::load(config.as_deref())?;
            let samples = faultline::observe_links(&config, duration)?;
            let rows = links::rows(&samples);
            if json {
                for row in &rows {
                    println!("{}", serde_json::to_string(row)?);
                }
            } else {
                print!("{}", links::render_table(&rows));
            }
        }
        Command::Generate { what } => {
            let mut out = std::io::stdout().lock();
            match what {
                Generate::Man => man_page(&mut out)?,
                Generate::Completions { shell } => {
                    clap_complete::generate(shell, &mut shown_cli(), "faultline", &mut out);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `faultline.1`: clap_mangen's page, with every command's synopsis, description and
/// options in it (rather than pointers to `faultline-run(1)` pages that do not exist).
fn man_page(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let mut cli = shown_cli().disable_help_subcommand(true);
    cli.build();
    let man = clap_mangen::Man::new(cli.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    writeln!(out, ".SH COMMANDS")?;
    for command in leaf_commands(&cli) {
        let name = command.get_bin_name().unwrap_or(command.get_name());
        writeln!(out, ".SS \"{name}\"")?;
        // The global --log-json and -h are listed once, at the top.
        let page = clap_mangen::Man::new(
            command
                .clone()
                .mut_arg("log_json", |a| a.hide(true))
                .mut_arg("help", |a| a.hide(true)),
        );
        let mut text = Vec::new();
        page.render_synopsis_section(&mut text)?;
        page.render_description_section(&mut text)?;
        page.render_options_section(&mut text)?;
        // In the command's subsection: paragraphs instead of section headings, and
        // without the preamble each render repeats.
        for line in String::from_utf8_lossy(&text).lines() {
            match line {
                _ if line.starts_with(".SH ") => writeln!(out, ".PP")?,
                _ if line.starts_with(".ie ") || line.starts_with(".el ") => {}
                _ => writeln!(out, "{line}")?,
            }
        }
    }
    man.render_version_section(out)
}

/// `topology check`, not `topology`: the commands that do something, in order.
fn leaf_commands(command: &clap::Command) -> Vec<&clap::Command> {
    command
        .get_subcommands()
        .flat_map(|c| {
            if c.has_subcommands() {
                leaf_commands(c)
            } else {
                vec![c]
            }
        })
        .collect()
}

/// `Cli` without its hidden commands, which clap_complete would offer otherwise.
fn shown_cli() -> clap::Command {
    let cli = Cli::command();
    let shown: Vec<_> = cli
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .cloned()
        .collect();
    clap::Command::new("faultline")
        .version(env!("CARGO_PKG_VERSION"))
        .about(cli.get_about().cloned().unwrap_or_default())
        .args(cli.get_arguments().cloned())
        .subcommands(shown)
}

fn parse_level(text: &str) -> Result<Level, String> {
    Level::parse(text).ok_or_else(|| format!("`{text}` is not a level (host, rack, cabinet, site)"))
}

/// Completes on SIGINT or SIGTERM with the signal's name: `faultline run` reloads on
/// SIGHUP instead of stopping.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Completes on SIGINT, SIGTERM or SIGHUP with the signal's name. SIGHUP stops the
/// agent the same orderly way (it does not reload yet); without a handler it would
/// kill the process before `""` goes NOT_SERVING.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = hup.recv() => "SIGHUP",
    }
}

/// Every panic goes to the log too, with where it happened: one in the evaluation
/// is caught and drained by the run loop, but one elsewhere (a thread, start-up)
/// ends the process without a drain, and the log is where an operator looks.
fn log_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let at = info
            .location()
            .map_or_else(String::new, |l| format!("{}:{}", l.file(), l.line()));
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(%at, %message, "panic");
        default(info);
    }));
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
