//! `faultline announce` against a real gobgpd (Debian's 3.10, installed by `cargo xtask
//! setup`) and real verdict feeds (the agent's feed server in-process, driven by
//! scripted verdicts). What gobgpd holds is read back with its own CLI, `gobgp`: an
//! independent client of its API.
use faultline_integration::TempDir;
use std::{
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use faultline::{
    AnnounceConfig, FeedLimits,
    detector::{State, Verdict},
    topology::Level,
};
use faultline_integration::feed::FeedServer;
use tokio::sync::oneshot;

const TOPOLOGY: &str =
    "[[site]]\nname = \"dc-a\"\n[[site]]\nname = \"dc-b\"\n[[site]]\nname = \"dc-c\"\n";
const VIP: &str = "198.51.100.10/32";
const ONLY_A: &str = "203.0.113.0/24";
/// An IPv6 VIP (an IPv6-only site serves only these): gobgpd takes it with an
/// MP_REACH next hop, not the IPv4 NEXT_HOP.
const VIP6: &str = "2001:db8::10/128";
/// Every wait in these tests is bounded by this: a broken announcer fails, never hangs.
const PATIENCE: Duration = Duration::from_secs(15);

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}

/// A gobgpd on loopback, with its API on `port`; killed on drop.
struct Gobgpd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Gobgpd {
    fn start(port: u16, dir: &Path) -> Self {
        let config = dir.join("gobgpd.toml");
        std::fs::write(
            &config,
            "[global.config]\n  as = 65001\n  router-id = \"192.0.2.1\"\n  port = -1\n",
        )
        .expect("write gobgpd config");
        let child = Command::new("gobgpd")
            .arg("-f")
            .arg(&config)
            .args(["--api-hosts", &format!("127.0.0.1:{port}"), "-p"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gobgpd runs (Debian's gobgpd package: `cargo xtask setup` installs it)");
        let g = Self {
            child,
            port,
            dir: dir.to_owned(),
        };
        g.wait_for(|rib| rib.is_some(), "gobgpd's API to answer");
        g
    }

    /// gobgp's own CLI against this gobgpd: `gobgp global rib ARGS`.
    fn rib_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("gobgp");
        cmd.args([
            "-p",
            &self.port.to_string(),
            "-u",
            "127.0.0.1",
            "global",
            "rib",
        ])
        .args(args);
        cmd
    }

    /// The IPv4 prefixes in gobgpd's global table, or None when it does not answer.
    fn rib(&self) -> Option<Vec<String>> {
        self.rib_of(&["-j"])
    }

    /// The IPv6 ones.
    fn rib6(&self) -> Option<Vec<String>> {
        self.rib_of(&["-a", "ipv6", "-j"])
    }

    fn rib_of(&self, args: &[&str]) -> Option<Vec<String>> {
        let out = self.rib_command(args).output().ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() || text.trim() == "null" {
            return Some(Vec::new());
        }
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let mut prefixes: Vec<String> = v.as_object()?.keys().cloned().collect();
        prefixes.sort();
        Some(prefixes)
    }

    /// Adds a path with gobgp's own CLI.
    fn add(&self, prefix: &str) {
        let ok = self
            .rib_command(&["add", prefix])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "gobgp global rib add {prefix}");
    }

    fn wait_for(&self, ok: impl Fn(Option<Vec<String>>) -> bool, what: &str) {
        let start = Instant::now();
        loop {
            let rib = self.rib();
            if ok(rib.clone()) {
                return;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "gave up after {PATIENCE:?} waiting for {what}; gobgpd's table: {rib:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) -> (u16, PathBuf) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.port, self.dir.clone())
    }
}

impl Drop for Gobgpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn holds(rib: Option<Vec<String>>, prefixes: &[&str]) -> bool {
    rib.is_some_and(|r| r == prefixes.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>())
}

fn site(name: &str, state: State) -> Verdict {
    Verdict::scripted(Level::Site, name, state)
}

/// Feeds of agents in dc-a, dc-b and dc-c.
struct Feeds(Vec<FeedServer>);

impl Feeds {
    async fn start() -> Self {
        let mut feeds = Vec::new();
        for _ in 0..3 {
            let f = FeedServer::start(TOPOLOGY, FeedLimits::default()).await;
            f.feed
                .publish(&[site("dc-a", State::Healthy), site("dc-b", State::Healthy)]);
            feeds.push(f);
        }
        Self(feeds)
    }

    /// Agents in these sites (0 = dc-a, …) now report `verdicts`.
    fn say(&self, sites: &[usize], verdicts: &[Verdict]) {
        for &s in sites {
            self.0[s].feed.publish(verdicts);
        }
    }
}

fn config(dir: &Path, gobgp_port: u16, feeds: &Feeds, extra: &str) -> AnnounceConfig {
    let agents: String = ["dc-a", "dc-b", "dc-c"]
        .iter()
        .zip(&feeds.0)
        .map(|(site, f)| format!("[[agent]]\nendpoint = \"{}\"\nsite = \"{site}\"\n", f.url()))
        .collect();
    let text = format!(
        "startup_wait = \"2s\"\n{extra}\n[gobgp]\nendpoint = \"http://127.0.0.1:{gobgp_port}\"\nresync = \"300ms\"\n\
         {agents}\
         [[serve]]\nentity = \"dc-a\"\nprefixes = [\"{VIP}\", \"{ONLY_A}\", \"{VIP6}\"]\n\
         [[serve]]\nentity = \"dc-b\"\nprefixes = [\"{VIP}\", \"{VIP6}\"]\nlocal = false\n"
    );
    let path = dir.join("announce.toml");
    std::fs::write(&path, &text).expect("write announce config");
    AnnounceConfig::load(&path).expect("the test config is valid")
}

struct Announcer {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Announcer {
    fn start(cfg: AnnounceConfig) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(faultline::announce(cfg, async {
            let _ = stopped.await;
        }));
        Self {
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("the announcer stops when asked")
            .expect("no panic")
            .expect("no error");
    }
}

fn tempdir(name: &str) -> TempDir {
    // The announcer's log lines, shown for a failing test.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    TempDir::new(&format!("announce-{name}"))
}

/// GET /metrics on the announcer's metrics port.
async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut c = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .expect("the metrics port answers");
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let mut body = String::new();
    tokio::time::timeout(PATIENCE, c.read_to_string(&mut body))
        .await
        .expect("answered in time")
        .expect("read");
    body
}

/// Waits until gobgpd's table holds exactly `want` (bounded by [`PATIENCE`]).
async fn until_holds(g: &Arc<Gobgpd>, want: &'static [&'static str], what: &'static str) {
    let g = g.clone();
    blocking(move || g.wait_for(|r| holds(r, want), what)).await;
}

/// Runs blocking polls of gobgpd without stalling the announcer on the same runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("no panic")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_failed_by_two_other_sites_is_withdrawn_and_announced_again_after_recovery() {
    let dir = tempdir("withdraw");
    let gobgpd = Arc::new(Gobgpd::start(free_port(), &dir));
    let feeds = Feeds::start().await;
    let metrics_port = free_port();
    let metrics = format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"");
    let announcer = Announcer::start(config(&dir, gobgpd.port, &feeds, &metrics));
    until_holds(&gobgpd, &[VIP, ONLY_A], "dc-a's prefixes announced").await;
    assert!(holds(gobgpd.rib6(), &[VIP6]), "{:?}", gobgpd.rib6());

    // Only one other site sees dc-a fail: not a quorum; its own agents do not count.
    feeds.say(&[0, 1], &[site("dc-a", State::Failed)]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(holds(gobgpd.rib(), &[VIP, ONLY_A]), "{:?}", gobgpd.rib());

    // dc-c agrees: the VIP, which dc-b also serves, is withdrawn; 203.0.113.0/24,
    // served by dc-a alone, stays (nothing else could take its users).
    feeds.say(&[2], &[site("dc-a", State::Failed)]);
    until_holds(&gobgpd, &[ONLY_A], "the VIP withdrawn").await;
    assert!(holds(gobgpd.rib6(), &[]), "{:?}", gobgpd.rib6());
    let scraped = scrape(metrics_port).await;
    for line in [
        // Counted per prefix: the IPv4 and the IPv6 VIP.
        "faultline_announce_withdrawals_total 2",
        "faultline_announce_announced{entity=\"dc-a\"} 1",
        "faultline_announce_gobgp_up 1",
        "faultline_announce_action_seconds_count 1",
        "site=\"dc-b\"} 1",
    ] {
        assert!(scraped.contains(line), "{line} not in\n{scraped}");
    }

    // dc-b fails too, per dc-a's and dc-c's agents: dc-a is the last standing and is
    // announced again, failed or not.
    feeds.say(&[0, 2], &[site("dc-b", State::Failed)]);
    until_holds(&gobgpd, &[VIP, ONLY_A], "the last site announced").await;

    feeds.say(&[0, 2], &[site("dc-b", State::Healthy)]);
    until_holds(&gobgpd, &[ONLY_A], "withdrawn again").await;

    // dc-a recovers.
    feeds.say(&[1, 2], &[site("dc-a", State::Healthy)]);
    until_holds(&gobgpd, &[VIP, ONLY_A], "dc-a announced after recovery").await;
    assert!(holds(gobgpd.rib6(), &[VIP6]), "{:?}", gobgpd.rib6());
    announcer.stop().await;
    assert!(
        holds(gobgpd.rib(), &[VIP, ONLY_A]),
        "stopping leaves gobgpd as it is"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_starts_in_the_state_the_feeds_report_and_keeps_it_when_they_are_lost() {
    let dir = tempdir("start");
    let gobgpd = Arc::new(Gobgpd::start(free_port(), &dir));
    let feeds = Feeds::start().await;
    feeds.say(&[1, 2], &[site("dc-a", State::Failed)]);
    // A path left from an earlier run (or added by hand) that should not be there.
    gobgpd.add(VIP);
    assert!(holds(gobgpd.rib(), &[VIP]));
    let announcer = Announcer::start(config(&dir, gobgpd.port, &feeds, ""));
    until_holds(&gobgpd, &[ONLY_A], "dc-a's VIP withdrawn at start").await;

    // Every feed lost: what is announced stays.
    drop(feeds);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(holds(gobgpd.rib(), &[ONLY_A]), "{:?}", gobgpd.rib());
    announcer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gobgpd_that_is_down_or_restarts_gets_its_paths_back() {
    let dir = tempdir("restart");
    let port = free_port();
    let feeds = Feeds::start().await;
    // gobgpd is not up yet when the announcer starts.
    let announcer = Announcer::start(config(&dir, port, &feeds, ""));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let gobgpd = Arc::new(Gobgpd::start(port, &dir));
    until_holds(&gobgpd, &[VIP, ONLY_A], "paths applied once gobgpd is up").await;

    // A restart empties gobgpd's table; the announcer puts its paths back.
    let gobgpd = Arc::try_unwrap(gobgpd).ok().expect("one owner");
    let (port, dir) = gobgpd.stop();
    let gobgpd = Arc::new(Gobgpd::start(port, &dir));
    until_holds(
        &gobgpd,
        &[VIP, ONLY_A],
        "paths re-applied after the restart",
    )
    .await;

    // And a decision taken while it is down is applied when it returns.
    let gobgpd = Arc::try_unwrap(gobgpd).ok().expect("one owner");
    let (port, dir) = gobgpd.stop();
    feeds.say(&[1, 2], &[site("dc-a", State::Failed)]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let gobgpd = Arc::new(Gobgpd::start(port, &dir));
    until_holds(&gobgpd, &[ONLY_A], "the withdrawal applied on return").await;
    announcer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_never_touches_gobgpd() {
    let dir = tempdir("dry");
    let gobgpd = Arc::new(Gobgpd::start(free_port(), &dir));
    let feeds = Feeds::start().await;
    feeds.say(&[1, 2], &[site("dc-a", State::Failed)]);
    let announcer = Announcer::start(config(&dir, gobgpd.port, &feeds, "dry_run = true"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    feeds.say(&[1, 2], &[site("dc-a", State::Healthy)]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(holds(gobgpd.rib(), &[]), "{:?}", gobgpd.rib());
    announcer.stop().await;
}
