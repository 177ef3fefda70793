//! The processes of the BGP setup: bird in the edge, one gobgpd per border, and the
//! watchers that time what they do.
//!
//! Every process is a [`Daemon`]: a child started inside its namespace (`setns`, dying
//! with us), stopped on drop (SIGTERM, then SIGKILL), its output in a log file under
//! `target/lab/run/bgp/`. Watchers are push-based, never polled: `gobgp monitor global
//! rib` streams each gobgpd's RIB changes and `ip monitor route` the edge's kernel
//! table; a thread reads each line as it arrives and stamps it with the lab's clock
//! ([`Lines`]), so the withdraw and route-change times share one time base with the
//! fault and the client's requests.
use std::{
    fs::OpenOptions,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::{JoinHandle, sleep},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::wiring::{Border, EDGE_AS, VIP, Wiring};
use crate::{bench::check_interrupted, lab::agents::spawn_in, run_output};

/// gobgpd's gRPC API, on loopback in its site router's namespace (the announcer runs
/// there too).
pub(super) const GOBGP_API_PORT: u16 = 50051;
/// BGP timers: a session outlives a 5 s blackhole behind the border (it does not cross
/// the edge link anyway), and a link that comes back is used again within seconds.
const HOLD_TIME_S: u32 = 9;
const KEEPALIVE_S: u32 = 3;
const CONNECT_RETRY_S: u32 = 1;
/// bird prefers the first border with this local preference (the other keeps 100).
const PREFERRED_LOCAL_PREF: u32 = 200;
/// How long a daemon gets to come up, and to stop after SIGTERM.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Lines kept per watcher; beyond, the older half is dropped (a watcher prints a few
/// lines per route change, so this is hours of a lab).
const MAX_LINES: usize = 100_000;

/// Lines of a process's output, each stamped when it arrived.
#[derive(Default)]
pub(super) struct Lines {
    lines: Mutex<Vec<(Instant, String)>>,
}

impl Lines {
    fn push(&self, line: String) {
        let mut all = self.lines.lock().expect("no panics under the lock");
        if all.len() >= MAX_LINES {
            all.drain(..MAX_LINES / 2);
        }
        all.push((Instant::now(), line));
    }

    pub(super) fn all(&self) -> Vec<(Instant, String)> {
        self.lines.lock().expect("no panics under the lock").clone()
    }
}

/// Which output of a daemon is read line by line (the rest goes to its log file).
pub(super) enum Capture {
    Nothing,
    Stdout(Arc<Lines>),
    Stderr(Arc<Lines>),
}

/// A process of the BGP setup; stopped on drop.
pub(super) struct Daemon {
    pub(super) what: String,
    child: Child,
    log: PathBuf,
    reader: Option<JoinHandle<()>>,
}

impl Daemon {
    /// Starts `cmd` in `ns`, its output appended to `log` (and the captured stream's
    /// lines also to `capture`).
    pub(super) fn spawn(
        what: &str,
        cmd: &mut Command,
        ns: &str,
        log: &Path,
        capture: Capture,
    ) -> Result<Self> {
        let open = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("open {}", log.display()))
        };
        cmd.stdin(Stdio::null());
        let lines = match capture {
            Capture::Nothing => {
                cmd.stdout(open()?).stderr(open()?);
                None
            }
            Capture::Stdout(l) => {
                cmd.stdout(Stdio::piped()).stderr(open()?);
                Some(l)
            }
            Capture::Stderr(l) => {
                cmd.stdout(open()?).stderr(Stdio::piped());
                Some(l)
            }
        };
        let mut child = spawn_in(cmd, ns)?;
        let reader = match lines {
            None => None,
            Some(lines) => {
                let pipe: Box<dyn std::io::Read + Send> =
                    match (child.stdout.take(), child.stderr.take()) {
                        (Some(out), _) => Box::new(out),
                        (None, Some(err)) => Box::new(err),
                        (None, None) => bail!("{what}: no pipe to read"),
                    };
                let mut file = open()?;
                let started = Instant::now();
                Some(std::thread::spawn(move || {
                    // Ends at EOF: when the process exits or is stopped.
                    for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                        let _ = writeln!(file, "+{:.3}s {line}", started.elapsed().as_secs_f64());
                        lines.push(line);
                    }
                }))
            }
        };
        Ok(Self {
            what: what.to_owned(),
            child,
            log: log.to_owned(),
            reader,
        })
    }

    /// Fails, with the end of its log, when the process has exited.
    pub(super) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            bail!(
                "{} exited ({status}); the end of {}:\n{}",
                self.what,
                self.log.display(),
                lines[lines.len().saturating_sub(10)..].join("\n")
            );
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id())
            && matches!(self.child.try_wait(), Ok(None))
        {
            // SAFETY: kill(2) on our own child, not yet reaped, so the pid is still its.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// bird's control socket (its path must fit a Unix socket's 108 bytes).
pub(super) fn bird_socket(dir: &Path) -> PathBuf {
    dir.join("bird.ctl")
}

/// bird's config: one eBGP session per border, the VIP imported from both (the first
/// border preferred), nothing exported to them, the best route into the kernel table.
fn bird_config(w: &Wiring) -> String {
    let mut text = format!(
        "# Written by `cargo xtask lab` (bgp-failover): the client network's edge router.\n\
         log stderr all;\n\
         router id {edge_id};\n\
         # Interface and link state, from netlink as it changes (check link below).\n\
         protocol device {{ scan time 10; }}\n\
         # The best route to the kernel table of the edge; nothing learnt from it, nothing\n\
         # left behind when bird stops; a short scan to repair what the kernel dropped.\n\
         protocol kernel {{\n  ipv4 {{ import none; export all; }};\n  learn off;\n  persist off;\n  scan time 2;\n}}\n",
        edge_id = w.borders[0].edge_addr,
    );
    for (i, b) in w.borders.iter().enumerate() {
        let pref = if i == 0 { PREFERRED_LOCAL_PREF } else { 100 };
        text += &format!(
            "\nfilter from_{tag} {{\n  if net = {VIP}/32 then {{ bgp_local_pref = {pref}; accept; }}\n  reject;\n}}\n\
             protocol bgp border_{tag} {{\n  description \"{name}\";\n  local {local} as {EDGE_AS};\n  neighbor {peer} as {asn};\n\
             \x20 # The session ends the moment the link goes down (the link-down reference).\n  check link yes;\n\
             \x20 hold time {HOLD_TIME_S};\n  keepalive time {KEEPALIVE_S};\n\
             \x20 connect delay time 1;\n  connect retry time 2;\n  error wait time 1, 4;\n\
             \x20 ipv4 {{ import filter from_{tag}; export none; }};\n}}\n",
            tag = b.tag,
            name = b.name,
            local = b.edge_addr,
            peer = b.site_addr,
            asn = b.asn,
        );
    }
    text
}

fn gobgpd_config(b: &Border) -> String {
    format!(
        "# Written by `cargo xtask lab` (bgp-failover): the border of {name}.\n\
         [global.config]\n  as = {asn}\n  router-id = \"{me}\"\n  local-address-list = [\"{me}\"]\n\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{peer}\"\n    peer-as = {EDGE_AS}\n\
         \x20 [neighbors.timers.config]\n    connect-retry = {CONNECT_RETRY_S}\n    hold-time = {HOLD_TIME_S}\n    keepalive-interval = {KEEPALIVE_S}\n\
         \x20 [neighbors.transport.config]\n    local-address = \"{me}\"\n\
         \x20 [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n",
        name = b.name,
        asn = b.asn,
        me = b.site_addr,
        peer = b.edge_addr,
    )
}

/// Starts bird in the edge.
pub(super) fn start_bird(w: &Wiring, dir: &Path) -> Result<Daemon> {
    let conf = dir.join("bird.conf");
    std::fs::write(&conf, bird_config(w)).with_context(|| format!("write {}", conf.display()))?;
    let socket = bird_socket(dir);
    let mut cmd = Command::new("bird");
    cmd.arg("-f")
        .arg("-c")
        .arg(&conf)
        .arg("-s")
        .arg(&socket)
        .arg("-P")
        .arg(dir.join("bird.pid"));
    let mut bird = Daemon::spawn(
        "bird (edge)",
        &mut cmd,
        &w.edge,
        &dir.join("bird.log"),
        Capture::Nothing,
    )?;
    wait_for(&mut bird, "its control socket", || {
        run_output(
            Command::new("birdc")
                .arg("-s")
                .arg(&socket)
                .arg("show status"),
        )
        .is_ok()
    })?;
    Ok(bird)
}

/// Starts gobgpd in a border's site router, its API on loopback.
pub(super) fn start_gobgpd(b: &Border, dir: &Path) -> Result<Daemon> {
    let conf = dir.join(format!("gobgpd-{}.toml", b.name));
    std::fs::write(&conf, gobgpd_config(b)).with_context(|| format!("write {}", conf.display()))?;
    let mut cmd = Command::new("gobgpd");
    cmd.arg("-f")
        .arg(&conf)
        .arg("--log-plain")
        .arg("--pprof-disable")
        .arg(format!("--api-hosts=127.0.0.1:{GOBGP_API_PORT}"));
    let log = dir.join(format!("gobgpd-{}.log", b.name));
    let mut d = Daemon::spawn(
        &format!("gobgpd ({})", b.name),
        &mut cmd,
        &b.router_ns,
        &log,
        Capture::Nothing,
    )?;
    wait_for(&mut d, "its API", || {
        gobgp(&b.router_ns, &["global"]).is_ok()
    })?;
    Ok(d)
}

/// Waits until bird has every session established.
pub(super) fn wait_established(bird: &mut Daemon, w: &Wiring, dir: &Path) -> Result<()> {
    let socket = bird_socket(dir);
    wait_for(bird, "its BGP sessions established", || {
        run_output(
            Command::new("birdc")
                .arg("-s")
                .arg(&socket)
                .arg("show protocols"),
        )
        .is_ok_and(|out| {
            w.borders.iter().all(|b| {
                out.lines().any(|l| {
                    l.starts_with(&format!("border_{} ", b.tag)) && l.contains("Established")
                })
            })
        })
    })
}

fn wait_for(d: &mut Daemon, what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let started = Instant::now();
    while started.elapsed() < READY_TIMEOUT {
        check_interrupted()?;
        d.check_alive()?;
        if ready() {
            return Ok(());
        }
        sleep(Duration::from_millis(100));
    }
    bail!("{} not ready ({what}) after {READY_TIMEOUT:?}", d.what)
}

/// Runs the gobgp CLI against the gobgpd of namespace `ns`.
pub(super) fn gobgp(ns: &str, args: &[&str]) -> Result<String> {
    run_output(
        Command::new("ip")
            .args(["netns", "exec", ns, "gobgp", "-p"])
            .arg(GOBGP_API_PORT.to_string())
            .args(args),
    )
}

/// Adds the VIP to gobgpd's RIB by hand (no announcer; adding it again is harmless).
pub(super) fn add_static_path(b: &Border) -> Result<()> {
    gobgp(
        &b.router_ns,
        &["global", "rib", "add", &format!("{VIP}/32"), "-a", "ipv4"],
    )
    .map(drop)
}

/// Deletes the VIP from gobgpd's RIB by hand.
pub(super) fn delete_path(b: &Border) -> Result<()> {
    gobgp(
        &b.router_ns,
        &["global", "rib", "del", &format!("{VIP}/32"), "-a", "ipv4"],
    )
    .map(drop)
}

/// `gobgp monitor global rib`: a line per change of the border's RIB
/// (`[ROUTE] 198.51.100.10/32 …`, `[DELROUTE] 198.51.100.10/32 …`).
pub(super) fn watch_rib(b: &Border, dir: &Path, lines: Arc<Lines>) -> Result<Daemon> {
    let mut cmd = Command::new("gobgp");
    cmd.args([
        "-p",
        &GOBGP_API_PORT.to_string(),
        "monitor",
        "global",
        "rib",
        "-a",
        "ipv4",
        "--current",
    ]);
    Daemon::spawn(
        &format!("gobgp monitor ({})", b.name),
        &mut cmd,
        &b.router_ns,
        &dir.join(format!("rib-{}.log", b.name)),
        Capture::Stdout(lines),
    )
}

/// `ip monitor route` in the edge: a line per change of its kernel table.
pub(super) fn watch_edge_routes(w: &Wiring, dir: &Path, lines: Arc<Lines>) -> Result<Daemon> {
    let mut cmd = Command::new("ip");
    cmd.args(["-4", "monitor", "route"]);
    Daemon::spawn(
        "ip monitor route (edge)",
        &mut cmd,
        &w.edge,
        &dir.join("edge-routes.log"),
        Capture::Stdout(lines),
    )
}

/// Whether a `gobgp monitor` line adds (`Some(true)`) or withdraws (`Some(false)`) the VIP.
pub(super) fn rib_event(line: &str) -> Option<bool> {
    let vip = format!("{VIP}/32");
    let rest = line
        .split_once("] ")
        .map(|(tag, rest)| (tag.rsplit('[').next().unwrap_or(""), rest))?;
    if !rest.1.starts_with(&vip) {
        return None;
    }
    match rest.0 {
        "ROUTE" => Some(true),
        "DELROUTE" => Some(false),
        _ => None,
    }
}

/// The VIP's route in an `ip monitor route` line: `Some(Some(next hop))` when it is
/// (re)placed, `Some(None)` when it is deleted, None when the line is about another.
pub(super) fn edge_route_event(line: &str) -> Option<Option<String>> {
    let (deleted, rest) = match line.strip_prefix("Deleted ") {
        Some(r) => (true, r),
        None => (false, line),
    };
    let mut words = rest.split_whitespace();
    let dst = words.next()?;
    if dst != VIP.to_string() && dst != format!("{VIP}/32") {
        return None;
    }
    if deleted {
        return Some(None);
    }
    let via = rest
        .split_whitespace()
        .skip_while(|w| *w != "via")
        .nth(1)
        .map(str::to_owned);
    Some(via)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_lines_are_read() {
        assert_eq!(
            rib_event(
                "2026-11-27T01:22:38Z [ROUTE] 198.51.100.10/32 via 0.0.0.0 aspath [] attrs [{Origin: ?}]"
            ),
            Some(true)
        );
        assert_eq!(
            rib_event("2026-11-27T01:22:39Z [DELROUTE] 198.51.100.10/32 via 0.0.0.0 aspath []"),
            Some(false)
        );
        assert_eq!(
            rib_event("2026-11-27T01:22:39Z [ROUTE] 10.0.0.0/8 via 0.0.0.0"),
            None
        );
        assert_eq!(
            edge_route_event("198.51.100.10 via 10.81.2.2 dev to-b proto bird metric 32 "),
            Some(Some("10.81.2.2".to_owned()))
        );
        assert_eq!(
            edge_route_event("Deleted 198.51.100.10 via 10.81.1.2 dev to-a proto bird metric 32"),
            Some(None)
        );
        assert_eq!(edge_route_event("10.81.1.0/30 dev to-a proto kernel"), None);
    }
}
