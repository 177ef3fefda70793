//! Two network namespaces joined by a veth pair ([`Pair`]), an iperf3 server in the
//! second ([`Lab`]). Traffic never leaves them. Drop removes everything they created.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{agent::terminate, check_interrupted, die_with_parent};
use crate::{describe, run_output};

pub(super) const ADDR_A: &str = "10.250.0.1/24";
pub(super) const ADDR_B: &str = "10.250.0.2/24";
const SERVER_IP: &str = "10.250.0.2";
const NS_PREFIX: &str = "flb-";

/// Two namespaces, `flb-<pid>-a` (`va`, [`ADDR_A`]) and `flb-<pid>-b` (`vb`,
/// [`ADDR_B`]), joined by a veth pair. Drop deletes them (and so the pair), even
/// when building them failed halfway.
pub(super) struct Pair {
    pub(super) ns_a: String,
    pub(super) ns_b: String,
    /// Namespaces that exist and must be deleted.
    created: Vec<String>,
}

impl Pair {
    pub(super) fn new() -> Result<Self> {
        let pid = std::process::id();
        let mut pair = Self {
            ns_a: format!("{NS_PREFIX}{pid}-a"),
            ns_b: format!("{NS_PREFIX}{pid}-b"),
            created: Vec::new(),
        };
        for ns in [pair.ns_a.clone(), pair.ns_b.clone()] {
            ip(&["netns", "add", &ns])?;
            pair.created.push(ns);
        }
        let (a, b) = (pair.ns_a.as_str(), pair.ns_b.as_str());
        ip(&[
            "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b,
        ])?;
        for (ns, dev, addr) in [(a, "va", ADDR_A), (b, "vb", ADDR_B)] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(pair)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and so the pair.
        for ns in self.created.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

/// A [`Pair`] with an iperf3 server in `b`. Drop stops the server, then the pair goes.
pub(super) struct Lab {
    pub(super) pair: Pair,
    server: Option<Child>,
}

impl Lab {
    pub(super) fn new() -> Result<Self> {
        let mut lab = Self {
            pair: Pair::new()?,
            server: None,
        };
        let server = die_with_parent(&mut Command::new("ip"))
            .args([
                "netns",
                "exec",
                &lab.pair.ns_b,
                "iperf3",
                "-s",
                "-B",
                SERVER_IP,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 -s (is iperf3 installed? `cargo xtask setup`)")?;
        lab.server = Some(server);
        lab.wait_listening()?;
        Ok(lab)
    }

    fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let listening = run_output(Command::new("ip").args([
                "netns",
                "exec",
                &self.pair.ns_b,
                "ss",
                "-Hltn",
                "sport = :5201",
            ]))?;
            if !listening.trim().is_empty() {
                return Ok(());
            }
            if let Some(server) = self.server.as_mut()
                && let Some(status) = server.try_wait()?
            {
                bail!("iperf3 -s exited at once ({status})");
            }
            if Instant::now() > deadline {
                bail!("iperf3 -s in {} is not listening after 5 s", self.pair.ns_b);
            }
            check_interrupted()?;
            sleep(Duration::from_millis(50));
        }
    }

    /// One `iperf3 -c` run from a to b; the receiver's throughput in Gbit/s.
    pub(super) fn iperf(&self, seconds: u32) -> Result<f64> {
        let secs = seconds.to_string();
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.pair.ns_a,
            "iperf3",
            "-c",
            SERVER_IP,
            "-t",
            &secs,
            "-J",
        ]);
        for attempt in 1..=3 {
            let out = cmd
                .output()
                .with_context(|| format!("start `{}`", describe(&cmd)))?;
            check_interrupted()?;
            let report: serde_json::Value =
                serde_json::from_slice(&out.stdout).with_context(|| {
                    format!(
                        "`{}` printed no JSON ({}): {}",
                        describe(&cmd),
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                })?;
            if let Some(err) = report.get("error").and_then(serde_json::Value::as_str) {
                // The server may still be tearing down the previous test.
                if err.contains("busy") && attempt < 3 {
                    sleep(Duration::from_millis(500));
                    continue;
                }
                bail!("iperf3: {err}");
            }
            let bps = report
                .pointer("/end/sum_received/bits_per_second")
                .and_then(serde_json::Value::as_f64)
                .context("iperf3 -J output lacks end.sum_received.bits_per_second")?;
            return Ok(bps / 1e9);
        }
        unreachable!("the last attempt returns")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = terminate(&mut server, Duration::from_secs(2));
        }
        // `pair` is dropped after this, with the server gone.
    }
}

/// Deletes `flb-<pid>-*` namespaces left by a bench that was killed (SIGKILL skips
/// the guards) whose process no longer exists.
pub(super) fn remove_stale() {
    let removed = remove_stale_namespaces(NS_PREFIX);
    if removed > 0 {
        println!("removed {removed} namespace(s) left by an interrupted bench");
    }
}

/// Deletes the namespaces named `<prefix><pid>-…` whose process is gone; returns how
/// many. The bench (`flb-`) and the lab (`fll-`) both name theirs this way.
pub(crate) fn remove_stale_namespaces(prefix: &str) -> usize {
    let Ok(list) = run_output(Command::new("ip").args(["netns", "list"])) else {
        return 0;
    };
    let mut removed = 0;
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists()
            && Command::new("ip")
                .args(["netns", "del", name])
                .output()
                .is_ok_and(|o| o.status.success())
        {
            removed += 1;
        }
    }
    removed
}

/// `ip ARGS…`, failing with its stderr.
pub(super) fn ip(args: &[&str]) -> Result<()> {
    run_output(Command::new("ip").args(args)).map(drop)
}
