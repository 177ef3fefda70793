//! `cargo xtask lab`: a data center of network namespaces on this machine, a real agent
//! on every host, application traffic, faults injected in routers, and real gRPC health
//! subscribers timing what the agents announce.
//!
//! Build order (and, reversed, teardown order, by the fields of [`Lab`]): namespaces and
//! routes ([`net`]), the inter-site delay stage in the core ([`delay`]), one agent per
//! host ([`agents`]), traffic ([`traffic`]), subscribers ([`subscribe`]). Then each
//! scenario runs `--runs` times ([`scenario`]) and is reported ([`report`]) as a table
//! and `target/lab/<scenario>.json`. Everything lives inside namespaces named
//! `fll-<pid>-…`; guards remove it on return, error, panic and Ctrl-C/SIGTERM, and a lab
//! killed outright is cleaned by the next one.
mod agents;
mod delay;
mod net;
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

pub(crate) use self::delay::{DelayArgs, serve as serve_delay};
use self::{
    agents::Agents, delay::DelayStage, net::Network, scenario::Kind, subscribe::Subscribers,
    topology::Topology, traffic::Traffic,
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
}

/// The running lab. Fields drop in order: subscribers and traffic first, the
/// namespaces last.
pub(super) struct Lab {
    subscribers: Subscribers,
    traffic: Traffic,
    agents: Agents,
    delay: DelayStage,
    net: Network,
    topology: Topology,
    /// Every entity's health service name.
    services: Vec<String>,
    /// Host index of each subscriber.
    subscriber_hosts: Vec<usize>,
    /// When everything was up.
    up_since: Instant,
    /// Configs and logs of this lab.
    run_dir: PathBuf,
}

pub(crate) fn run(opts: &Options) -> Result<()> {
    if !is_root() {
        bail!("the lab creates network namespaces and loads eBPF programs; run as root");
    }
    let kinds = parse_scenarios(&opts.scenario)?;
    let topology_path = opts
        .topology
        .clone()
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

    let scenarios: Vec<_> = {
        // Resolve against the names the network will get, before building anything.
        let mut lab = Lab::build(topology, &bin, &topology_path, &run_dir, &kinds)?;
        let scenarios = kinds
            .iter()
            .map(|k| scenario::Scenario::resolve(*k, &lab.net, &lab.topology))
            .collect::<Result<Vec<_>>>()?;
        let mut reports = Vec::new();
        for s in &scenarios {
            let mut runs = Vec::new();
            for n in 1..=opts.runs {
                println!(
                    "scenario {} run {n}/{}: {}",
                    s.kind.name(),
                    opts.runs,
                    s.expected.as_deref().unwrap_or("(nothing should fail)")
                );
                runs.push(s.run(&mut lab)?);
            }
            let report = report::Report::new(s, &runs, &lab);
            print!("{}", report.table());
            let path = out.join(format!("{}.json", s.kind.name()));
            std::fs::write(&path, serde_json::to_string_pretty(&report.json())? + "\n")
                .with_context(|| format!("write {}", path.display()))?;
            println!("wrote {}", path.display());
            reports.push(report);
        }
        if opts.keep {
            lab.keep()?;
        }
        let dead = lab.agents.dead();
        if !dead.is_empty() {
            println!("agents that exited during the lab: {}", dead.join(", "));
        }
        reports
    };
    println!(
        "lab removed; {} scenario report(s) in {}",
        scenarios.len(),
        out.display()
    );
    Ok(())
}

fn parse_scenarios(text: &str) -> Result<Vec<Kind>> {
    use clap::ValueEnum as _;
    if text == "all" {
        return Ok(Kind::value_variants().to_vec());
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
        for k in kinds {
            let s = scenario::Scenario::resolve(*k, &net, &topology)?;
            for (h, _) in s.subscribers {
                if !subscriber_hosts.contains(&h) {
                    subscriber_hosts.push(h);
                }
            }
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
        println!(
            "lab up in {:.1} s: {} flows",
            started.elapsed().as_secs_f64(),
            traffic.flows.len()
        );
        Ok(Self {
            subscribers,
            traffic,
            agents,
            delay,
            net,
            topology,
            services,
            subscriber_hosts,
            up_since: Instant::now(),
            run_dir: run_dir.to_owned(),
        })
    }

    fn subscriber_index(&self, host: usize) -> Option<usize> {
        self.subscriber_hosts.iter().position(|&h| h == host)
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
            .map(|((sub, svc), _)| {
                format!(
                    "{}@{}",
                    self.services[svc], self.topology.hosts[self.subscriber_hosts[sub]].name
                )
            })
            .collect()
    }

    /// Median request round trip per (from site, to site) over the last `window`: shows
    /// the delay stage at work (intra-site pairs should be well under a millisecond).
    fn rtt_by_site_pair(&self, window: Duration) -> Vec<(String, Duration)> {
        let now = Instant::now();
        let mut by_pair: std::collections::BTreeMap<(usize, usize), Vec<Duration>> =
            std::collections::BTreeMap::new();
        for r in self.traffic.log.between(now - window, now) {
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
            .map(|((a, b), mut v)| {
                v.sort_unstable();
                let name = format!(
                    "{}>{}",
                    self.topology.sites[a].name, self.topology.sites[b].name
                );
                (name, v[v.len() / 2])
            })
            .collect()
    }

    fn cpu_snapshot(&self) -> report::CpuSnapshot {
        report::CpuSnapshot::take(&self.agents.pids(), self.delay.pid())
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
