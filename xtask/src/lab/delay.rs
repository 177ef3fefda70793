//! The wire between sites: every packet the core forwards from one site to another is
//! held for that pair's one-way delay.
//!
//! This kernel has no netem, no fq and no nft `queue` statement, so the core queues
//! inter-site packets to userspace with iptables-legacy's NFQUEUE target (one queue per
//! ordered site pair, matched on the core's in and out ports), and a small process —
//! this same xtask binary, `xtask lab-delay` — holds each packet until its delay has
//! passed, then accepts it. It runs at real-time priority (`chrt -f 50`), so the
//! emulated wire keeps its timing while agents and traffic load the two cores.
//! Packets of one queue share one delay, so a FIFO per queue keeps them in order.
use std::{
    collections::VecDeque,
    path::Path,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{agents::spawn_in, net::core_port, topology::Topology};
use crate::{bench::check_interrupted, run_output};

/// Packets one queue holds in the kernel before it drops (a full wire drops).
const QUEUE_MAX_LEN: u32 = 4096;
/// How often the stage looks for new packets when it has nothing due sooner. The nfq
/// crate exposes no fd to poll, so it polls without blocking; at this period that is
/// ~1000 cheap syscalls a second and at most 1 ms added to a delay.
const POLL: Duration = Duration::from_millis(1);
/// The stage exits on its own after this long, whatever happens to the lab.
const MAX_LIFETIME: Duration = Duration::from_secs(4 * 3600);

/// One NFQUEUE per ordered site pair: (queue number, one-way delay).
pub(super) fn queues(t: &Topology) -> Vec<(u16, usize, usize, Duration)> {
    let mut out = Vec::new();
    for from in 0..t.sites.len() {
        for to in 0..t.sites.len() {
            if from != to {
                let q = u16::try_from(out.len() + 1).unwrap_or(u16::MAX);
                out.push((q, from, to, t.delay(from, to)));
            }
        }
    }
    out
}

/// The delay stage process; killed on drop.
pub(super) struct DelayStage {
    child: Child,
}

impl DelayStage {
    /// Inserts the NFQUEUE rules in `core` and starts the stage there.
    pub(super) fn start(t: &Topology, core: &str, log: &Path) -> Result<Self> {
        let queues = queues(t);
        let exe = std::env::current_exe().context("find the xtask binary")?;
        let mut cmd = Command::new("chrt");
        cmd.args(["-f", "50"]).arg(&exe).arg("lab-delay");
        for (q, _, _, d) in &queues {
            cmd.arg("--queue").arg(format!("{q}:{}", d.as_millis()));
        }
        let file =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(file);
        // Bound first, rules second: with --queue-bypass a packet never waits for a
        // stage that is not there, but then it would cross without delay.
        let mut stage = Self {
            child: spawn_in(&mut cmd, core)?,
        };
        sleep(Duration::from_millis(300));
        if let Some(status) = stage.child.try_wait()? {
            bail!(
                "the delay stage exited at once ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default().trim()
            );
        }
        for (q, from, to, _) in &queues {
            check_interrupted()?;
            let (i, o) = (core_port(&t.sites[*from].tag), core_port(&t.sites[*to].tag));
            for tool in ["iptables-legacy", "ip6tables-legacy"] {
                run_output(Command::new("ip").args([
                    "netns",
                    "exec",
                    core,
                    tool,
                    "-A",
                    "FORWARD",
                    "-i",
                    &i,
                    "-o",
                    &o,
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    &q.to_string(),
                    "--queue-bypass",
                ]))
                .with_context(|| {
                    format!("{tool} in the core (is iptables installed? `cargo xtask setup`)")
                })?;
            }
        }
        Ok(stage)
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the stage has exited (inter-site traffic would then cross undelayed).
    pub(super) fn check_alive(&mut self, log: &Path) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the delay stage exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default().trim()
            );
        }
        Ok(())
    }
}

impl Drop for DelayStage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `xtask lab-delay --queue NUM:MS…`: the stage itself (started by the lab inside the
/// core namespace, at real-time priority).
#[derive(clap::Args)]
pub(crate) struct DelayArgs {
    /// A queue to serve and its one-way delay in milliseconds, `NUM:MS`.
    #[arg(long = "queue", value_name = "NUM:MS", required = true)]
    queues: Vec<String>,
}

pub(crate) fn serve(args: &DelayArgs) -> Result<()> {
    let mut delays = Vec::new();
    for spec in &args.queues {
        let (q, ms) = spec
            .split_once(':')
            .with_context(|| format!("`{spec}` is not NUM:MS"))?;
        delays.push((q.parse::<u16>()?, Duration::from_millis(ms.parse()?)));
    }
    let mut queue = nfq::Queue::open().context("open the netfilter queue socket")?;
    for (q, _) in &delays {
        queue
            .bind(*q)
            .with_context(|| format!("bind NFQUEUE {q}"))?;
        // Metadata only: the verdict needs no payload.
        queue.set_copy_range(*q, 0)?;
        queue.set_queue_max_len(*q, QUEUE_MAX_LEN)?;
    }
    queue.set_nonblocking(true);
    let delay_of = |q: u16| {
        delays
            .iter()
            .find(|(n, _)| *n == q)
            .map_or(Duration::ZERO, |(_, d)| *d)
    };
    let mut held: Vec<VecDeque<(Instant, nfq::Message)>> =
        delays.iter().map(|_| VecDeque::new()).collect();
    let slot = |q: u16| delays.iter().position(|(n, _)| *n == q);
    let started = Instant::now();
    eprintln!("lab-delay: serving {} queues", delays.len());
    let mut errors = 0u64;
    while started.elapsed() < MAX_LIFETIME {
        loop {
            match queue.recv() {
                Ok(msg) => {
                    let q = msg.get_queue_num();
                    let due = Instant::now() + delay_of(q);
                    match slot(q) {
                        Some(s) => held[s].push_back((due, msg)),
                        None => queue.verdict(msg)?,
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // The kernel reports a verdict it could not apply (ENOENT: the packet
                // was already gone) on this socket too; that packet is lost, the wire
                // goes on.
                Err(e) => {
                    errors += 1;
                    if errors.is_power_of_two() {
                        eprintln!("lab-delay: {e} ({errors} error(s) so far; continuing)");
                    }
                    break;
                }
            }
        }
        let now = Instant::now();
        let mut next = now + POLL;
        for fifo in &mut held {
            while fifo.front().is_some_and(|(due, _)| *due <= now) {
                let (_, mut msg) = fifo.pop_front().expect("front checked");
                msg.set_verdict(nfq::Verdict::Accept);
                if let Err(e) = queue.verdict(msg) {
                    errors += 1;
                    if errors.is_power_of_two() {
                        eprintln!("lab-delay: verdict: {e} ({errors} error(s) so far)");
                    }
                }
            }
            if let Some((due, _)) = fifo.front() {
                next = next.min(*due);
            }
        }
        sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(())
}
