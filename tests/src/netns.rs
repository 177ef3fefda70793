//! Namespaces and the two-hosts-and-a-router lab.
use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// Panics (keeping the backtrace) unless running as root: these tests create
/// namespaces and load eBPF programs, and CI runs them as root, so they never skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "privileged test: run as root (`cargo xtask test` does)"
    );
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Netns {
    /// Creates `fl<pid>-<n>-<role>`: unique per process and call, so a stale namespace
    /// from a killed run never collides.
    pub fn new(role: &str) -> Self {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("fl{}-{n}-{role}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        // No duplicate address detection: link-local addresses are usable at once,
        // so the first SYN of a test is not lost to neighbour discovery.
        ns.sysctl("net.ipv6.conf.all.accept_dad=0");
        ns.sysctl("net.ipv6.conf.default.accept_dad=0");
        ns
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Any command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    pub fn sysctl(&self, kv: &str) {
        self.exec(&["sysctl", "-qw", kv]);
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it opens live here.
    pub fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> std::thread::JoinHandle<R> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    use std::os::fd::AsRawFd;
    // SAFETY: a valid namespace fd; CLONE_NEWNET only affects this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes its interfaces and nft tables with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Deletes namespaces left by a test process that was killed (a killed process runs
/// no Drop): ours are named `fl<pid>-…`, so a name whose pid is gone is stale.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("fl")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// One host attached to the router.
pub struct Host {
    pub ns: Netns,
    pub v4: IpAddr,
    pub v6: IpAddr,
}

impl Host {
    pub fn addr(&self, v6: bool, port: u16) -> SocketAddr {
        SocketAddr::new(if v6 { self.v6 } else { self.v4 }, port)
    }
}

/// Three hosts, each on its own subnet behind one router:
/// a = 10.N.1.2 / fdNN:1::2, b = 10.N.2.2 / fdNN:2::2, c = 10.N.3.2 / fdNN:3::2,
/// with N different for every lab: sockets of an earlier lab outlive its namespaces
/// for a while (retransmitting their FINs into the void), and the kernel programs
/// are global, so reusing addresses would mix the two labs' counters.
/// Faults are injected in the router, on the path, as a real switch would drop.
pub struct Lab {
    // Field order is drop order: hosts first, the router last.
    pub a: Host,
    pub b: Host,
    pub c: Host,
    pub router: Netns,
}

impl Lab {
    pub fn new() -> Self {
        require_root();
        remove_stale_namespaces();
        static LABS: AtomicU32 = AtomicU32::new(0);
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let net = 100 + (std::process::id().wrapping_mul(13).wrapping_add(n) % 150);
        let router = Netns::new("r");
        router.sysctl("net.ipv4.ip_forward=1");
        router.sysctl("net.ipv6.conf.all.forwarding=1");
        let host = |role: &str, subnet: u8| {
            let ns = Netns::new(role);
            let port = format!("to-{role}");
            router.ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ]);
            router.ip(&[
                "addr",
                "add",
                &format!("10.{net}.{subnet}.1/24"),
                "dev",
                &port,
            ]);
            router.ip(&[
                "addr",
                "add",
                &format!("fd{net:02x}:{subnet}::1/64"),
                "dev",
                &port,
                "nodad",
            ]);
            router.ip(&["link", "set", &port, "up"]);
            ns.ip(&[
                "addr",
                "add",
                &format!("10.{net}.{subnet}.2/24"),
                "dev",
                "eth0",
            ]);
            ns.ip(&[
                "addr",
                "add",
                &format!("fd{net:02x}:{subnet}::2/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            ns.ip(&["link", "set", "eth0", "up"]);
            ns.ip(&[
                "route",
                "add",
                "default",
                "via",
                &format!("10.{net}.{subnet}.1"),
            ]);
            ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd{net:02x}:{subnet}::1"),
            ]);
            Host {
                ns,
                v4: format!("10.{net}.{subnet}.2").parse().unwrap(),
                v6: format!("fd{net:02x}:{subnet}::2").parse().unwrap(),
            }
        };
        let a = host("a", 1);
        let b = host("b", 2);
        let c = host("c", 3);
        router.exec(&["nft", "add", "table", "inet", "fault"]);
        router.exec(&[
            "nft",
            "add",
            "chain",
            "inet",
            "fault",
            "path",
            "{ type filter hook forward priority 0; }",
        ]);
        Self { a, b, c, router }
    }

    /// Drops `percent`% of the packets forwarded to `to` (all of them at 100).
    pub fn drop_to(&self, to: IpAddr, percent: u32) {
        let family = if to.is_ipv6() { "ip6" } else { "ip" };
        let to = to.to_string();
        let mut rule = vec![
            "nft", "add", "rule", "inet", "fault", "path", family, "daddr", &to,
        ];
        let pct = percent.to_string();
        if percent < 100 {
            rule.extend_from_slice(&["numgen", "random", "mod", "100", "<", &pct]);
        }
        rule.extend_from_slice(&["counter", "drop"]);
        self.router.exec(&rule);
    }

    /// Drops every packet forwarded into `prefix` (e.g. `10.101.2.0/24`): a dead rack.
    pub fn blackhole_prefix(&self, prefix: &str) {
        let family = if prefix.contains(':') { "ip6" } else { "ip" };
        self.router.exec(&[
            "nft", "add", "rule", "inet", "fault", "path", family, "daddr", prefix, "counter",
            "drop",
        ]);
    }

    /// Gives `host` one more address in its subnet (a second "host" behind the same port).
    pub fn add_address(&self, host: &Host, addr: IpAddr) {
        let cidr = if addr.is_ipv4() {
            format!("{addr}/24")
        } else {
            format!("{addr}/64")
        };
        let mut args = vec!["addr", "add", &cidr, "dev", "eth0"];
        if addr.is_ipv6() {
            args.push("nodad");
        }
        host.ns.ip(&args);
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.router
            .exec(&["nft", "flush", "chain", "inet", "fault", "path"]);
    }

    /// Packets dropped so far by the fault rules.
    pub fn dropped_packets(&self) -> u64 {
        let listing = self
            .router
            .exec(&["nft", "list", "chain", "inet", "fault", "path"]);
        listing
            .split("counter packets ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// Rate-limits the router's port towards `host` with tbf, so a bulk flow queues.
    pub fn shape_to(&self, host: &str, rate: &str) {
        let dev = format!("to-{host}");
        self.router.exec(&[
            "tc", "qdisc", "add", "dev", &dev, "root", "tbf", "rate", rate, "burst", "16kb",
            "latency", "500ms",
        ]);
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}
