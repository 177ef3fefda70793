//! Namespaces, cables and routes: the data center's wiring.
//!
//! One namespace per host and per router: a ToR per rack, a router per cabinet and per
//! site, and one core. Every link is a veth pair. Hosts are routed, not bridged: each
//! host has /32 and /128 addresses and a default route `onlink` through its ToR port,
//! so even traffic between two hosts of one rack crosses the ToR's forward chain, where
//! faults are injected. Router links use transit nets 10.254.L.0/30 and fd00:fe:L::/64
//! (L = link number); every router knows the rack prefixes below it and sends the rest
//! up. Nothing is configured outside the namespaces, so deleting them ([`Drop`]) removes
//! every interface, route, nft table and iptables rule the lab made.
use std::{
    io::Write as _,
    net::IpAddr,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::topology::{Prefix, Topology};
use crate::{bench::check_interrupted, run_output};

/// Every namespace the lab creates starts with this, then the creating pid.
pub(super) const NS_PREFIX: &str = "fll-";

/// The lab's namespaces; deleted on drop.
pub(super) struct Network {
    pub(super) core: String,
    pub(super) sites: Vec<String>,
    pub(super) cabinets: Vec<String>,
    pub(super) tors: Vec<String>,
    pub(super) hosts: Vec<String>,
    /// Namespaces that exist and must be deleted, in creation order.
    created: Vec<String>,
}

/// A router's interface towards one site, in the core (`s-a`): the delay stage and
/// site partitions match on it.
pub(super) fn core_port(site_tag: &str) -> String {
    format!("s-{site_tag}")
}

impl Network {
    pub(super) fn build(t: &Topology) -> Result<Self> {
        let base = format!("{NS_PREFIX}{}-", std::process::id());
        let mut net = Self {
            core: format!("{base}core"),
            sites: t
                .sites
                .iter()
                .map(|s| format!("{base}s-{}", s.tag))
                .collect(),
            cabinets: t
                .cabinets
                .iter()
                .map(|c| format!("{base}c-{}", c.tag))
                .collect(),
            tors: t
                .racks
                .iter()
                .map(|r| format!("{base}t-{}", r.tag))
                .collect(),
            hosts: t
                .hosts
                .iter()
                .map(|h| format!("{base}h-{}", h.name))
                .collect(),
            created: Vec::new(),
        };
        net.create_namespaces()?;
        net.wire_routers(t)?;
        net.wire_hosts(t)?;
        Ok(net)
    }

    fn routers(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.core)
            .chain(&self.sites)
            .chain(&self.cabinets)
            .chain(&self.tors)
    }

    fn create_namespaces(&mut self) -> Result<()> {
        let routers: Vec<String> = self.routers().cloned().collect();
        let all: Vec<(String, bool)> = routers
            .into_iter()
            .map(|r| (r, true))
            .chain(self.hosts.iter().map(|h| (h.clone(), false)))
            .collect();
        for (i, (ns, router)) in all.iter().enumerate() {
            check_interrupted()?;
            progress(&format!("creating namespaces {}/{}", i + 1, all.len()));
            ip(&["netns", "add", ns])?;
            self.created.push(ns.clone());
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            // No duplicate address detection: IPv6 addresses are usable at once.
            let mut keys = vec![
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ];
            if *router {
                keys.extend(["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
            }
            let mut args = vec!["netns", "exec", ns, "sysctl", "-qw"];
            args.extend(keys);
            ip(&args)?;
        }
        println!();
        Ok(())
    }

    /// core ← site ← cabinet ← ToR, with routes for every rack prefix below.
    fn wire_routers(&self, t: &Topology) -> Result<()> {
        let total = t.sites.len() + t.cabinets.len() + t.racks.len();
        let mut link = 0u16;
        let mut step = |what: &str| -> Result<u16> {
            check_interrupted()?;
            link += 1;
            progress(&format!("wiring routers {link}/{total} ({what})"));
            Ok(link)
        };
        for (s, site) in t.sites.iter().enumerate() {
            let l = step(&site.name)?;
            let below = t
                .racks
                .iter()
                .filter(|r| t.cabinets[r.cabinet].site == s)
                .flat_map(|r| r.prefixes.iter().copied());
            uplink(&self.core, &core_port(&site.tag), &self.sites[s], l, below)?;
        }
        for (c, cab) in t.cabinets.iter().enumerate() {
            let l = step(&cab.path)?;
            let below = cab
                .racks
                .iter()
                .flat_map(|&r| t.racks[r].prefixes.iter().copied());
            uplink(
                &self.sites[cab.site],
                &format!("c-{}", cab.tag),
                &self.cabinets[c],
                l,
                below,
            )?;
        }
        for (r, rack) in t.racks.iter().enumerate() {
            let l = step(&rack.path)?;
            let below = rack.prefixes.iter().copied();
            uplink(
                &self.cabinets[rack.cabinet],
                &format!("t-{}", rack.tag),
                &self.tors[r],
                l,
                below,
            )?;
        }
        println!();
        Ok(())
    }

    fn wire_hosts(&self, t: &Topology) -> Result<()> {
        for (h, host) in t.hosts.iter().enumerate() {
            check_interrupted()?;
            progress(&format!(
                "wiring hosts {}/{} ({})",
                h + 1,
                t.hosts.len(),
                host.name
            ));
            let rack = &t.racks[host.rack];
            let tor = &self.tors[host.rack];
            let ns = &self.hosts[h];
            let port = format!("h{h}");
            ip(&[
                "-n", tor, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                ns,
            ])?;
            // Up first: a route through a device that is down is refused.
            ip(&["-n", tor, "link", "set", &port, "up"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            for addr in &host.addresses {
                let prefix = rack
                    .prefixes
                    .iter()
                    .find(|p| p.contains(*addr))
                    .context("topology checked every host address is in its rack")?;
                let (gw, fam, host_len) = family(prefix.gateway());
                // The ToR port answers as the rack's gateway; the host is one route.
                ip(&add_addr(
                    tor,
                    &format!("{gw}/{host_len}"),
                    &port,
                    addr.is_ipv6(),
                ))?;
                ip(&[
                    "-n",
                    tor,
                    fam,
                    "route",
                    "add",
                    &format!("{addr}/{host_len}"),
                    "dev",
                    &port,
                ])?;
                ip(&add_addr(
                    ns,
                    &format!("{addr}/{host_len}"),
                    "eth0",
                    addr.is_ipv6(),
                ))?;
            }
            let mut families: Vec<(IpAddr, &str)> = Vec::new();
            for addr in &host.addresses {
                let prefix = rack
                    .prefixes
                    .iter()
                    .find(|p| p.contains(*addr))
                    .expect("checked above");
                let (gw, fam, _) = family(prefix.gateway());
                if !families.iter().any(|(_, f)| *f == fam) {
                    families.push((gw, fam));
                }
            }
            for (gw, fam) in families {
                ip(&[
                    "-n",
                    ns,
                    fam,
                    "route",
                    "add",
                    "default",
                    "via",
                    &gw.to_string(),
                    "dev",
                    "eth0",
                    "onlink",
                ])?;
            }
        }
        println!();
        Ok(())
    }

    /// Runs an nft script inside `ns`.
    pub(super) fn nft(ns: &str, script: &str) -> Result<String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start nft")?;
        child
            .stdin
            .take()
            .context("nft stdin is piped")?
            .write_all(script.as_bytes())
            .context("write the nft script")?;
        let out = child.wait_with_output().context("wait for nft")?;
        if !out.status.success() {
            bail!(
                "nft in {ns} failed: {}\nscript:\n{script}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let n = self.created.len();
        for (i, ns) in self.created.drain(..).rev().enumerate() {
            if i % 8 == 0 {
                progress(&format!("deleting namespaces {}/{n}", i + 1));
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
        if n > 0 {
            progress(&format!("deleted {n} namespaces"));
            println!();
        }
    }
}

/// Links `child` (its `uplink` interface) to `parent` (its `port`) over transit net `l`;
/// the child's default route points up, the parent routes `below` down.
fn uplink(
    parent: &str,
    port: &str,
    child: &str,
    l: u16,
    below: impl Iterator<Item = Prefix>,
) -> Result<()> {
    let (hi, lo) = (l >> 8, l & 0xff);
    ip(&[
        "-n", parent, "link", "add", port, "type", "veth", "peer", "name", "uplink", "netns", child,
    ])?;
    let v4 = |end: u8| format!("10.254.{l}.{end}");
    let v6 = |end: u8| format!("fd00:fe:{hi:x}{lo:02x}::{end}");
    if l > 255 {
        bail!("more than 255 router links: the transit nets 10.254.L.0/30 run out");
    }
    ip(&add_addr(parent, &format!("{}/30", v4(1)), port, false))?;
    ip(&add_addr(parent, &format!("{}/64", v6(1)), port, true))?;
    ip(&add_addr(child, &format!("{}/30", v4(2)), "uplink", false))?;
    ip(&add_addr(child, &format!("{}/64", v6(2)), "uplink", true))?;
    ip(&["-n", parent, "link", "set", port, "up"])?;
    ip(&["-n", child, "link", "set", "uplink", "up"])?;
    ip(&["-n", child, "route", "add", "default", "via", &v4(1)])?;
    ip(&["-n", child, "-6", "route", "add", "default", "via", &v6(1)])?;
    for p in below {
        let via = if p.addr.is_ipv6() { v6(2) } else { v4(2) };
        let fam = if p.addr.is_ipv6() { "-6" } else { "-4" };
        ip(&[
            "-n",
            parent,
            fam,
            "route",
            "add",
            &p.to_string(),
            "via",
            &via,
        ])?;
    }
    Ok(())
}

/// (address, `ip` family flag, host prefix length).
fn family(addr: IpAddr) -> (IpAddr, &'static str, u8) {
    if addr.is_ipv6() {
        (addr, "-6", 128)
    } else {
        (addr, "-4", 32)
    }
}

fn add_addr<'a>(ns: &'a str, cidr: &'a str, dev: &'a str, v6: bool) -> Vec<&'a str> {
    let mut args = vec!["-n", ns, "addr", "add", cidr, "dev", dev];
    if v6 {
        args.push("nodad");
    }
    args
}

pub(super) fn ip(args: &[&str]) -> Result<String> {
    run_output(Command::new("ip").args(args))
}

/// Rewrites the current terminal line.
pub(super) fn progress(line: &str) {
    print!("\r\x1b[2K{line}");
    let _ = std::io::stdout().flush();
}

/// Deletes `fll-<pid>-*` namespaces whose process is gone (a lab killed by SIGKILL
/// runs no guard). Their agents died with the lab (PR_SET_PDEATHSIG).
pub(super) fn remove_stale() -> Result<()> {
    let removed = crate::bench::lab::remove_stale_namespaces(NS_PREFIX);
    if removed > 0 {
        println!("lab: deleted {removed} namespaces left by a killed lab");
    }
    Ok(())
}
