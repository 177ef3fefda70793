//! The adapter under test: `faultline announce --config FILE`, one per border, in the
//! border's site router namespace, driving the gobgpd there.
//!
//! Announcer of border X: X's site local (announced through its gobgpd), the other
//! border's site watched only (so it never withdraws the last healthy site), following
//! one agent in every site: each entity is judged by agents outside its site, a quorum
//! of two, so the watched site needs X's own agents too (the announcer refuses a
//! config where it could not see the other site fail). Its stderr is read line by
//! line as it comes ([`super::daemons::Lines`]): the `withdraw dc-a …` and
//! `announce dc-a …` lines time detection and re-announcement at the adapter.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::{
    daemons::{Capture, Daemon, GOBGP_API_PORT, Lines},
    wiring::{VIP, Wiring},
};
use crate::lab::{agents, topology::Topology, traffic::in_namespace};

/// Distinct sites, other than the entity's own, whose agents must report it FAILED.
const QUORUM: usize = 2;
/// The announcer's Prometheus endpoint, on loopback in its namespace.
const METRICS_PORT: u16 = 9479;
const METRICS_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether this build of the agent has the `announce` subcommand.
pub(super) fn available(bin: &Path) -> bool {
    Command::new(bin)
        .args(["announce", "--help"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The agent an announcer follows in site `s`: the site's last host (the other
/// scenarios fail first racks, cabinets and hosts), as `http://ADDR:7431`.
fn followed_agent(t: &Topology, s: usize) -> Option<String> {
    let h = (0..t.hosts.len()).rev().find(|&h| t.hosts[h].site == s)?;
    Some(agents::endpoint(t.hosts[h].primary(), agents::GRPC_PORT))
}

/// The config of the announcer of border `me` (in the format of `faultline announce`).
fn config(t: &Topology, w: &Wiring, me: usize) -> String {
    let quote = |s: &str| format!("\"{s}\"");
    let mut text = format!(
        "# Written by `cargo xtask lab` (bgp-failover): the announcer of {name}.\n\
         dry_run = false\nquorum = {QUORUM}\n\n\
         [gobgp]\nendpoint = \"http://127.0.0.1:{GOBGP_API_PORT}\"\nnext_hop_v4 = \"0.0.0.0\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:{METRICS_PORT}\"\n",
        name = w.borders[me].name
    );
    for (s, site) in t.sites.iter().enumerate() {
        if let Some(endpoint) = followed_agent(t, s) {
            text += &format!(
                "\n[[agent]]\nendpoint = {}\nsite = {}\n",
                quote(&endpoint),
                quote(&site.name)
            );
        }
    }
    // Its own site first, then the other border, watched only.
    let order = [me, 1 - me];
    for &b in &order {
        text += &format!(
            "\n[[serve]]\nentity = {}\nprefixes = [\"{VIP}/32\"]\nlocal = {}\n",
            quote(&w.borders[b].name),
            b == me
        );
    }
    text
}

/// The running announcers, one per border (in border order).
pub(super) struct Announcers {
    daemons: Vec<Daemon>,
}

impl Announcers {
    /// Starts one announcer per border. `lines` keeps each one's stderr across restarts.
    pub(super) fn start(
        bin: &Path,
        t: &Topology,
        w: &Wiring,
        dir: &Path,
        lines: &[Arc<Lines>],
    ) -> Result<Self> {
        let mut daemons = Vec::new();
        for (i, b) in w.borders.iter().enumerate() {
            let conf = dir.join(format!("announce-{}.toml", b.name));
            std::fs::write(&conf, config(t, w, i))
                .with_context(|| format!("write {}", conf.display()))?;
            let mut cmd = Command::new(bin);
            cmd.args(["announce", "--config"])
                .arg(&conf)
                .env(
                    "RUST_LOG",
                    std::env::var("FAULTLINE_LAB_LOG").unwrap_or_else(|_| "info".to_owned()),
                )
                .env("NO_COLOR", "1");
            daemons.push(Daemon::spawn(
                &format!("faultline announce ({})", b.name),
                &mut cmd,
                &b.router_ns,
                &dir.join(format!("announce-{}.log", b.name)),
                Capture::Stderr(lines[i].clone()),
            )?);
        }
        Ok(Self { daemons })
    }

    pub(super) fn check_alive(&mut self) -> Result<()> {
        self.daemons.iter_mut().try_for_each(Daemon::check_alive)
    }
}

/// What an announcer's log line says about its local `entity` (serving the VIP):
/// `Some(true)` announced, `Some(false)` withdrawn. It may name the entity
/// (`withdraw dc-a 198.51.100.10/32: …`) or the prefix (`withdraw 198.51.100.10/32: …`):
/// an announcer withdraws only its local entity's prefixes, so either means it.
pub(super) fn action(line: &str, entity: &str) -> Option<bool> {
    let prefix = format!("{VIP}/32");
    let says = |verb: &str| {
        [entity, prefix.as_str()].iter().any(|what| {
            line.split(&format!("{verb} {what}"))
                .skip(1)
                .any(|rest| rest.is_empty() || rest.starts_with([' ', ':']))
        })
    };
    if line.contains("dry run") {
        None
    } else if says("withdraw") {
        Some(false)
    } else if says("announce") {
        Some(true)
    } else {
        None
    }
}

/// `faultline_announce_withdrawals_total` of the announcer in `ns` (None when its
/// /metrics cannot be read).
pub(super) fn withdrawals_total(ns: &str) -> Option<f64> {
    let addr = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), METRICS_PORT);
    let body = in_namespace(ns, move || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, METRICS_TIMEOUT)?;
        s.set_read_timeout(Some(METRICS_TIMEOUT))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut text = String::new();
        s.take(4 << 20).read_to_string(&mut text)?;
        Ok(text)
    })
    .ok()?
    .ok()?;
    body.lines()
        .filter(|l| l.starts_with("faultline_announce_withdrawals_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_read_from_log_lines() {
        let w = "2026-01-01T00:00:00Z INFO faultline::announce: withdraw dc-a 198.51.100.10/32: FAILED per dc-b (…), dc-c (…)";
        assert_eq!(action(w, "dc-a"), Some(false));
        assert_eq!(action(w, "dc-b"), None);
        let a = "INFO faultline::announce: announce dc-a 198.51.100.10/32";
        assert_eq!(action(a, "dc-a"), Some(true));
        assert_eq!(
            action("INFO faultline::announce: announce dc-ab x", "dc-a"),
            None
        );
    }
}
