//! The client network and the VIP, wired into the lab's data center.
//!
//! ```text
//! client ── edge (bird, AS 65000) ──┬── site router of dc-a ("edge" port; gobgpd AS 65001)
//! 10.80.0.10   10.80.0.1            │     └ cabinet router ─ ToR ─ VIP host of dc-a
//!                                   └── site router of dc-b ("edge" port; gobgpd AS 65002)
//!                                         └ cabinet router ─ ToR ─ VIP host of dc-b
//! ```
//!
//! The first two sites of the topology are the borders. Each serves the VIP from one
//! host (the VIP on its loopback), with static routes for it down the site's routers
//! and a route back to the client network up at the site router. The edge learns the
//! VIP only over BGP, so which site answers is decided by bird alone. Two namespaces
//! are the lab's own here (edge and client); deleting them ([`Drop`]) removes the edge
//! links too, and everything else lives in the data center's namespaces.
use std::{
    net::{IpAddr, Ipv4Addr},
    process::Command,
};

use anyhow::{Context as _, Result};

use super::super::{
    net::{NS_PREFIX, Network, ip},
    topology::Topology,
};
use crate::bench::check_interrupted;

/// The address both borders serve.
pub(in crate::lab) const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The VIP server's port.
pub(super) const VIP_PORT: u16 = 8080;
/// The client network behind the edge, and its two addresses.
const CLIENT_NET: &str = "10.80.0.0/24";
const EDGE_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 80, 0, 1);
pub(super) const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 80, 0, 10);
/// The site router's port towards the edge (cabinet ports are `c-…`, the core `uplink`).
pub(super) const SITE_EDGE_PORT: &str = "edge";
/// The edge's AS; border i is 65001 + i.
pub(super) const EDGE_AS: u32 = 65000;

/// One site serving the VIP, as wired.
pub(super) struct Border {
    /// `dc-a`.
    pub(super) name: String,
    /// `a`: names the edge's port (`to-a`) and bird's protocol (`border_a`).
    pub(super) tag: String,
    /// The site router's namespace, where gobgpd and the announcer run.
    pub(super) router_ns: String,
    /// The VIP host (topology index) and its namespace.
    pub(super) host: usize,
    pub(super) host_ns: String,
    /// The edge link: the edge's end and the site router's end (the BGP session).
    pub(super) edge_addr: Ipv4Addr,
    pub(super) site_addr: Ipv4Addr,
    pub(super) asn: u32,
}

impl Border {
    /// The edge's port towards this border.
    pub(super) fn edge_port(&self) -> String {
        format!("to-{}", self.tag)
    }
}

/// The edge and client namespaces and the borders; the namespaces are deleted on drop.
pub(super) struct Wiring {
    pub(super) edge: String,
    pub(super) client: String,
    /// The preferred border first (dc-a), then the other.
    pub(super) borders: Vec<Border>,
    created: Vec<String>,
}

impl Wiring {
    pub(super) fn build(t: &Topology, net: &Network) -> Result<Self> {
        let base = format!("{NS_PREFIX}{}-", std::process::id());
        let mut w = Self {
            edge: format!("{base}edge"),
            client: format!("{base}client"),
            borders: Vec::new(),
            created: Vec::new(),
        };
        for (s, site) in t.sites.iter().enumerate().take(2) {
            let host = vip_host(t, s)
                .with_context(|| format!("site {} has no IPv4 host to serve the VIP", site.name))?;
            let link = u8::try_from(s + 1).context("two borders")?;
            w.borders.push(Border {
                name: site.name.clone(),
                tag: site.tag.clone(),
                router_ns: net.sites[s].clone(),
                host,
                host_ns: net.hosts[host].clone(),
                edge_addr: Ipv4Addr::new(10, 81, link, 1),
                site_addr: Ipv4Addr::new(10, 81, link, 2),
                asn: EDGE_AS + u32::from(link),
            });
        }
        for (ns, router) in [(w.edge.clone(), true), (w.client.clone(), false)] {
            check_interrupted()?;
            ip(&["netns", "add", &ns])?;
            w.created.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            if router {
                ip(&[
                    "netns",
                    "exec",
                    &ns,
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_forward=1",
                ])?;
            }
        }
        w.wire_client()?;
        for b in &w.borders {
            check_interrupted()?;
            w.wire_border(t, net, b)?;
        }
        Ok(w)
    }

    fn wire_client(&self) -> Result<()> {
        let (edge, client) = (&self.edge, &self.client);
        ip(&[
            "-n", edge, "link", "add", "client", "type", "veth", "peer", "name", "eth0", "netns",
            client,
        ])?;
        ip(&[
            "-n",
            edge,
            "addr",
            "add",
            &format!("{EDGE_CLIENT_SIDE}/24"),
            "dev",
            "client",
        ])?;
        ip(&[
            "-n",
            client,
            "addr",
            "add",
            &format!("{CLIENT}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", edge, "link", "set", "client", "up"])?;
        ip(&["-n", client, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            client,
            "route",
            "add",
            "default",
            "via",
            &EDGE_CLIENT_SIDE.to_string(),
        ])?;
        Ok(())
    }

    /// The edge link, the route back to the client network, and the VIP down to its host.
    fn wire_border(&self, t: &Topology, net: &Network, b: &Border) -> Result<()> {
        let (edge, site) = (&self.edge, &b.router_ns);
        let port = b.edge_port();
        ip(&[
            "-n",
            edge,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            SITE_EDGE_PORT,
            "netns",
            site,
        ])?;
        ip(&[
            "-n",
            edge,
            "addr",
            "add",
            &format!("{}/30", b.edge_addr),
            "dev",
            &port,
        ])?;
        ip(&[
            "-n",
            site,
            "addr",
            "add",
            &format!("{}/30", b.site_addr),
            "dev",
            SITE_EDGE_PORT,
        ])?;
        ip(&["-n", edge, "link", "set", &port, "up"])?;
        ip(&["-n", site, "link", "set", SITE_EDGE_PORT, "up"])?;
        self.route_back(b)?;
        // Down the tree: site → cabinet → ToR → host, each towards the next one's uplink.
        let host = &t.hosts[b.host];
        let rack = host.rack;
        let cabinet = t.racks[rack].cabinet;
        let vip = format!("{VIP}/32");
        let cab_ns = &net.cabinets[cabinet];
        let tor_ns = &net.tors[rack];
        ip(&[
            "-n",
            site,
            "route",
            "add",
            &vip,
            "via",
            &uplink_addr(cab_ns)?,
        ])?;
        ip(&[
            "-n",
            cab_ns,
            "route",
            "add",
            &vip,
            "via",
            &uplink_addr(tor_ns)?,
        ])?;
        let host_v4 = host
            .addresses
            .iter()
            .find(|a| a.is_ipv4())
            .context("the VIP host has an IPv4 address")?;
        ip(&[
            "-n",
            tor_ns,
            "route",
            "add",
            &vip,
            "via",
            &host_v4.to_string(),
            "dev",
            &format!("h{}", b.host),
        ])?;
        ip(&["-n", &b.host_ns, "addr", "add", &vip, "dev", "lo"])?;
        Ok(())
    }

    /// The site router's route to the client network. Setting its edge port down drops
    /// it with every other route through the port, so the link-down fault re-adds it.
    pub(super) fn route_back(&self, b: &Border) -> Result<()> {
        let via = b.edge_addr.to_string();
        ip(&[
            "-n",
            &b.router_ns,
            "route",
            "replace",
            CLIENT_NET,
            "via",
            &via,
        ])
        .map(drop)
    }

    /// The border whose edge link has this edge-side address as next hop.
    pub(super) fn border_by_next_hop(&self, via: &str) -> Option<usize> {
        self.borders
            .iter()
            .position(|b| b.site_addr.to_string() == via)
    }
}

impl Drop for Wiring {
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

/// The VIP host of site `s`: its last host with an IPv4 address. The other scenarios
/// fail the first rack, cabinet and hosts of a site, so the VIP keeps answering
/// through them.
fn vip_host(t: &Topology, s: usize) -> Option<usize> {
    (0..t.hosts.len())
        .rev()
        .find(|&h| t.hosts[h].site == s && t.hosts[h].addresses.iter().any(IpAddr::is_ipv4))
}

/// The IPv4 address of a router namespace's `uplink` port (its parent routes via it).
fn uplink_addr(ns: &str) -> Result<String> {
    let out = ip(&["-n", ns, "-4", "-o", "addr", "show", "dev", "uplink"])?;
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_owned)
        .with_context(|| format!("no IPv4 address on uplink in {ns}"))
}
