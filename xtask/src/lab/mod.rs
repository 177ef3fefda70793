//! `cargo xtask lab`: a data center of network namespaces on this machine, a real agent
//! on every host, application traffic, faults injected in routers, and real gRPC health
//! subscribers timing what the agents announce.
//!
//! Build order (and, reversed, teardown order, by the fields of [`Lab`]): namespaces and
//! routes ([`net`]), the inter-site delay stage in the core ([`delay`]), one agent per
//! host ([`agents`]), traffic ([`traffic`]), subscribers: tonic ones ([`subscribe`]) and
//! one independent Python grpcio process ([`python`]), and for bgp-failover a client
//! network behind a bird edge router, a gobgpd and a `faultline announce` in two site
//! routers ([`bgp`]). Then each scenario runs `--runs` times ([`scenario`]), is judged
//! against its expectations ([`checks`]) and reported ([`report`]) as a table and
//! `target/lab/<scenario>.json`. `--check` makes a failed check fail the command;
//! [`bench`] repeats the hard failures and soaks the noise. Everything lives inside namespaces named
//! `fll-<pid>-…`; guards remove it on return, error, panic and Ctrl-C/SIGTERM, and a lab
//! killed outright is cleaned by the next one.
mod agents;
mod bench;
mod bgp;
mod cgroup;
mod checks;
mod delay;
mod net;
mod python;
mod report;
mod scenario;
mod subscribe;
mod topology;
mod traffic;

use std::{
    path::PathBuf,
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use faultline_proto::health::health_check_response::ServingStatus;

use self::{
    agents::Agents, delay::DelayStage, net::Network, python::PythonSubscriber, scenario::Kind,
    subscribe::Subscribers, topology::Topology, traffic::Traffic,
};
pub(crate) use self::{
    agents::spawn_in,
    bench::{Options as BenchOptions, run as bench},
    delay::{DelayArgs, serve as serve_delay},
    traffic::enter as enter_namespace,
};
use crate::{
    bench::{check_interrupted, install_signal_handlers},
    build, is_root, run_output, setup, target_dir, workspace_root,
};

/// The first injection waits until the lab is at least this old: agents learn RTT
/// baselines and meet their peers first.
const WARMUP: Duration = Duration::from_secs(20);
/// `--keep` keeps the lab up at most this long.
const KEEP_MAX: Duration = Duration::from_secs(3600);

#[derive(clap::Args)]
pub(crate) struct Options {
    /// The topology (the agents' own format). Default: examples/lab/topology.toml.
    #[arg(long)]
    topology: Option<PathBuf>,
    /// Scenarios to run: names separated by commas, or `all`.
    #[arg(long, default_value = "rack-blackhole")]
    scenario: String,
    /// Runs of each scenario (latencies are reported as p50/p99/max across them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    runs: u32,
    /// Keep the lab running after the scenarios (until Ctrl-C, at most an hour).
    #[arg(long)]
    keep: bool,
    /// Judge every run against its scenario's expectations (one line per check, then
    /// `lab: N passed, N failed`); exit non-zero when a check fails.
    #[arg(long)]
    check: bool,
}

impl Options {}

impl Options {
    /// Every scenario once, checked: what `cargo xtask test` runs.
    pub(crate) fn check_all() -> Self {
        Self {
            topology: None,
            scenario: "all".to_owned(),
            runs: 1,
            keep: false,
            check: true,
        }
    }
}

/// Which client a subscriber is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SubscriberKind {
    /// The lab's own tonic client (health, plus faultline.v1.Verdicts).
    Tonic,
    /// The independent Python grpcio client (health only).
    Grpcio,
}

impl SubscriberKind {
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Tonic => "tonic",
            Self::Grpcio => "grpcio",
        }
    }
}

/// Checks passed and failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) passed: u64,
    pub(crate) failed: u64,
}

/// The running lab. Fields drop in order: subscribers and traffic first, the
/// namespaces last.
pub(super) struct Lab {
    /// bgp-failover's client network, bird, gobgpds and announcers (only when asked for).
    bgp: Option<bgp::Bgp>,
    python: Option<PythonSubscriber>,
    subscribers: Subscribers,
    traffic: Traffic,
    agents: Agents,
    delay: DelayStage,
    net: Network,
    topology: Topology,
    /// Every entity's health service name.
    services: Vec<String>,
    /// Every subscriber, (host index, client), at its index in the status log: the
    /// tonic ones first, then the grpcio ones.
    subscriber_at: Vec<(usize, SubscriberKind)>,
    /// Faults injected so far on an entity that should fail: (when, entity path).
    faults: Vec<(Instant, String)>,
    /// When everything was up.
    up_since: Instant,
    /// Configs and logs of this lab.
    run_dir: PathBuf,
}

pub(crate) fn run(opts: &Options) -> Result<Outcome> {
    let kinds = parse_scenarios(&opts.scenario)?;
    let mut lab = open(opts.topology.as_ref(), &kinds)?;
    let scenarios = kinds
        .iter()
        .map(|k| scenario::Scenario::resolve(*k, &lab.net, &lab.topology))
        .collect::<Result<Vec<_>>>()?;
    let out = target_dir().join("lab");
    let mut outcome = Outcome::default();
    let mut lines = Vec::new();
    for s in &scenarios {
        if s.kind == Kind::BgpFailover {
            let (o, l) = bgp::run_scenario(&mut lab, s, opts.runs, &out)?;
            outcome.passed += o.passed;
            outcome.failed += o.failed;
            lines.extend(l);
            continue;
        }
        let mut runs = Vec::new();
        for n in 1..=opts.runs {
            println!(
                "scenario {} run {n}/{}: {}",
                s.kind.name(),
                opts.runs,
                s.expected.as_deref().unwrap_or("(nothing should fail)")
            );
            let run = s.run(&mut lab, s.kind.hold())?;
            tally(&run.checks, &s.kind.name(), &mut outcome, &mut lines);
            runs.push(run);
        }
        let report = report::Report::new(s, &runs, &lab);
        print!("{}", report.table());
        let path = out.join(format!("{}.json", s.kind.name()));
        std::fs::write(&path, serde_json::to_string_pretty(&report.json())? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if opts.keep {
        lab.keep()?;
    }
    let dead = lab.agents.dead();
    if !dead.is_empty() {
        println!("agents that exited during the lab: {}", dead.join(", "));
    }
    drop(lab);
    println!(
        "lab removed; {} scenario report(s) in {}",
        scenarios.len(),
        out.display()
    );
    if opts.check {
        println!("\nlab checks:");
        for l in &lines {
            println!("{l}");
        }
        println!("lab: {} passed, {} failed", outcome.passed, outcome.failed);
    }
    Ok(outcome)
}

/// Checks the machine, builds the agent and brings the lab up for these scenarios.
fn open(topology: Option<&PathBuf>, kinds: &[Kind]) -> Result<Lab> {
    if !is_root() {
        bail!("the lab creates network namespaces and loads eBPF programs; run as root");
    }
    let topology_path = topology
        .cloned()
        .unwrap_or_else(|| workspace_root().join("examples/lab/topology.toml"));
    let topology_path = std::fs::canonicalize(&topology_path)
        .with_context(|| format!("find {}", topology_path.display()))?;
    setup::ensure()?;
    let bin = build::faultline(true)?;
    // The agents must accept the file; the lab reads it its own way.
    run_output(
        Command::new(&bin)
            .args(["topology", "check"])
            .arg(&topology_path),
    )
    .context("the agent refuses the lab topology")?;
    let topology = Topology::load(&topology_path)?;
    install_signal_handlers();
    net::remove_stale()?;
    cgroup::remove_stale();
    let out = target_dir().join("lab");
    let run_dir = out.join("run");
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir).with_context(|| format!("create {}", run_dir.display()))?;
    println!(
        "lab: {} sites, {} cabinets, {} racks, {} hosts from {}; agent logs and configs in {}",
        topology.sites.len(),
        topology.cabinets.len(),
        topology.racks.len(),
        topology.hosts.len(),
        topology_path.display(),
        run_dir.display()
    );

    Lab::build(topology, &bin, &topology_path, &run_dir, kinds)
}

/// Prints each check of a run as it is judged, and counts it.
fn tally(checks: &[checks::Check], scenario: &str, outcome: &mut Outcome, lines: &mut Vec<String>) {
    for c in checks {
        let line = c.line(scenario);
        println!("  {line}");
        if c.pass {
            outcome.passed += 1;
        } else {
            outcome.failed += 1;
        }
        lines.push(line);
    }
}

fn parse_scenarios(text: &str) -> Result<Vec<Kind>> {
    use clap::ValueEnum as _;
    if text == "all" {
        return Ok(Kind::ALL.to_vec());
    }
    text.split(',')
        .map(|name| {
            Kind::from_str(name.trim(), false).map_err(|_| {
                let names: Vec<String> = Kind::value_variants().iter().map(|k| k.name()).collect();
                anyhow::anyhow!(
                    "unknown scenario `{name}`; known: {}, or all",
                    names.join(", ")
                )
            })
        })
        .collect()
}

impl Lab {
    fn build(
        topology: Topology,
        bin: &std::path::Path,
        topology_path: &std::path::Path,
        run_dir: &std::path::Path,
        kinds: &[Kind],
    ) -> Result<Self> {
        let started = Instant::now();
        let net = Network::build(&topology)?;
        println!("starting the delay stage in the core (chrt -f 50)");
        let delay = DelayStage::start(&topology, &net.core, &run_dir.join("delay.log"))?;
        let configs = agents::write_configs(&topology, topology_path, run_dir)?;
        let agents = Agents::start(bin, &net.hosts, &configs, run_dir)?;
        println!("starting traffic");
        let traffic = Traffic::start(&topology, &net.hosts)?;
        let services = topology.service_names();
        // Every scenario's subscribers, once each.
        let mut subscriber_hosts = Vec::new();
        let mut resolved = Vec::new();
        for k in kinds {
            let s = scenario::Scenario::resolve(*k, &net, &topology)?;
            for (h, _) in &s.subscribers {
                if !subscriber_hosts.contains(h) {
                    subscriber_hosts.push(*h);
                }
            }
            resolved.push(s);
        }
        let endpoints: Vec<(String, String)> = subscriber_hosts
            .iter()
            .map(|&h| {
                (
                    net.hosts[h].clone(),
                    agents::endpoint(topology.hosts[h].primary(), agents::GRPC_PORT),
                )
            })
            .collect();
        println!(
            "subscribing: {} subscriber(s) × {} services (grpc.health.v1 Watch)",
            endpoints.len(),
            services.len()
        );
        let subscribers = Subscribers::start(&endpoints, &services);
        let mut subscriber_at: Vec<(usize, SubscriberKind)> = subscriber_hosts
            .iter()
            .map(|&h| (h, SubscriberKind::Tonic))
            .collect();
        let python_hosts = python_hosts(&topology, &resolved);
        let targets: Vec<(String, String, std::net::SocketAddr)> = python_hosts
            .iter()
            .map(|&h| {
                (
                    topology.hosts[h].name.clone(),
                    net.hosts[h].clone(),
                    std::net::SocketAddr::new(topology.hosts[h].primary(), agents::GRPC_PORT),
                )
            })
            .collect();
        println!(
            "subscribing: one Python grpcio process at {} × {} services (log {})",
            python_hosts
                .iter()
                .map(|&h| topology.hosts[h].name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            services.len(),
            run_dir.join("python-subscriber.log").display()
        );
        let python = PythonSubscriber::start(
            &targets,
            &services,
            run_dir,
            subscribers.log.clone(),
            subscriber_at.len(),
        )?;
        subscriber_at.extend(python_hosts.iter().map(|&h| (h, SubscriberKind::Grpcio)));
        let bgp = if kinds.contains(&Kind::BgpFailover) {
            Some(bgp::Bgp::start(&topology, &net, bin, run_dir)?)
        } else {
            None
        };
        println!(
            "lab up in {:.1} s: {} flows",
            started.elapsed().as_secs_f64(),
            traffic.flows.len()
        );
        Ok(Self {
            bgp,
            python: Some(python),
            subscribers,
            traffic,
            agents,
            delay,
            net,
            topology,
            services,
            subscriber_at,
            faults: Vec::new(),
            up_since: Instant::now(),
            run_dir: run_dir.to_owned(),
        })
    }

    /// The log index of the subscriber of this kind at `host`.
    fn subscriber_ix(&self, host: usize, kind: SubscriberKind) -> Option<usize> {
        self.subscriber_at
            .iter()
            .position(|&(h, k)| h == host && k == kind)
    }

    /// `a11-1/tonic`.
    fn subscriber_label(&self, ix: usize) -> String {
        let (h, k) = self.subscriber_at[ix];
        format!("{}/{}", self.topology.hosts[h].name, k.label())
    }

    /// None while the delay stage runs; else how it ended.
    fn delay_dead(&mut self) -> Option<String> {
        self.delay
            .check_alive(&self.run_dir.join("delay.log"))
            .err()
            .map(|e| format!("{e:#}"))
    }

    /// Waits until [`scenario::settled_now`]; Ok(Err(why)) when it did not within `timeout`.
    fn settle(&mut self, timeout: Duration) -> Result<Result<Duration, String>> {
        let started = Instant::now();
        let mut why = String::new();
        while started.elapsed() < timeout {
            check_interrupted()?;
            let dead = self.agents.dead();
            if !dead.is_empty() {
                bail!("agents exited: {}", dead.join(", "));
            }
            self.delay.check_alive(&self.run_dir.join("delay.log"))?;
            let settled = if self.up_since.elapsed() < WARMUP {
                Err(format!("warming up ({WARMUP:?})"))
            } else {
                scenario::settled_now(self)
            };
            match settled {
                Ok(()) => {
                    println!();
                    return Ok(Ok(started.elapsed()));
                }
                Err(w) => why = w,
            }
            net::progress(&format!(
                "  settling {:.0} s: {why}",
                started.elapsed().as_secs_f64()
            ));
            sleep(Duration::from_millis(500));
        }
        println!();
        Ok(Err(why))
    }

    /// `service@subscriber` for everything currently NOT_SERVING at these subscribers.
    fn not_serving_now(&self, subs: &[usize]) -> Vec<String> {
        let mut state = std::collections::BTreeMap::new();
        for s in self.subscribers.log.all() {
            if subs.contains(&s.subscriber) {
                state.insert((s.subscriber, s.service), s.status);
            }
        }
        state
            .into_iter()
            .filter(|(_, st)| *st == ServingStatus::NotServing)
            .map(|((sub, svc), _)| format!("{}@{}", self.services[svc], self.subscriber_label(sub)))
            .collect()
    }

    /// Median request round trip per (from site, to site) over the last `window`: shows
    /// the delay stage at work (intra-site pairs should be well under a millisecond).
    fn rtt_by_site_pair(&self, window: Duration) -> Vec<(String, Duration)> {
        let now = Instant::now();
        self.rtt_pairs(now - window, now)
            .into_iter()
            .map(|((a, b), rtt, _)| {
                let name = format!(
                    "{}>{}",
                    self.topology.sites[a].name, self.topology.sites[b].name
                );
                (name, rtt)
            })
            .collect()
    }

    /// Median request round trip and number of answered requests per (from site, to
    /// site) in `[from, to)`.
    fn rtt_pairs(&self, from: Instant, to: Instant) -> Vec<((usize, usize), Duration, usize)> {
        let mut by_pair: std::collections::BTreeMap<(usize, usize), Vec<Duration>> =
            std::collections::BTreeMap::new();
        for r in self.traffic.log.between(from, to) {
            if let Some(rtt) = r.rtt {
                let f = &self.traffic.flows[r.flow as usize];
                let key = (
                    self.topology.hosts[f.from].site,
                    self.topology.hosts[f.to].site,
                );
                by_pair.entry(key).or_default().push(rtt);
            }
        }
        by_pair
            .into_iter()
            .map(|(pair, mut v)| {
                v.sort_unstable();
                (pair, v[v.len() / 2], v.len())
            })
            .collect()
    }

    fn cpu_snapshot(&self) -> report::CpuSnapshot {
        report::CpuSnapshot::take(
            &self.agents.pids(),
            self.delay.pid(),
            self.python.as_ref().map(PythonSubscriber::pid),
        )
    }

    fn cpu_since(&self, start: &report::CpuSnapshot) -> report::Cpu {
        self.cpu_snapshot().since(start)
    }

    /// `--keep`: stays up for manual poking until Ctrl-C (bounded by [`KEEP_MAX`]).
    fn keep(&self) -> Result<()> {
        println!("lab kept up; Ctrl-C to remove it. Agents (gRPC, inside their namespaces):");
        for (h, ns) in self.topology.hosts.iter().zip(&self.net.hosts) {
            println!(
                "  {:<8} {:<30} ip netns exec {ns} …",
                h.name,
                agents::endpoint(h.primary(), agents::GRPC_PORT)
            );
        }
        if let Some(b) = &self.bgp {
            for line in b.how_to_look() {
                println!("  {line}");
            }
        }
        let started = Instant::now();
        while started.elapsed() < KEEP_MAX {
            if check_interrupted().is_err() {
                return Ok(());
            }
            sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}

/// Hosts of the Python subscriber: in every site, the first host inside no scenario's
/// fault smaller than the site (or the site's first host when every one is inside
/// some fault). A fault of a whole site leaves no host of it outside.
fn python_hosts(t: &Topology, scenarios: &[scenario::Scenario]) -> Vec<usize> {
    (0..t.sites.len())
        .filter_map(|s| {
            let in_site = || (0..t.hosts.len()).filter(move |&h| t.hosts[h].site == s);
            in_site()
                .find(|h| {
                    !scenarios.iter().any(|sc| {
                        sc.expected
                            .as_ref()
                            .is_some_and(|e| !e.starts_with("site/"))
                            && sc.inside.contains(h)
                    })
                })
                .or_else(|| in_site().next())
        })
        .collect()
}
