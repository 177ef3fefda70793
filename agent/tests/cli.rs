//! The `faultline` binary as an operator runs it (as root: it loads eBPF programs).
//!
//! Every wait on the child is bounded: its output is read by a thread into a channel
//! and waited on with a deadline, so a hung binary fails the test instead of hanging it.
use std::{
    io::{BufRead as _, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Output, Stdio},
    sync::mpsc::{self, Receiver},
    time::{Duration, Instant},
};

/// Upper bound on any one wait: generous, so only a hang trips it.
const DEADLINE: Duration = Duration::from_secs(30);

fn faultline() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_faultline"));
    // The tests wait for info-level log lines.
    cmd.env("RUST_LOG", "info");
    cmd
}

/// The lines of a child's stdout or stderr, as they come, read by a thread.
fn lines_of(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line, or a panic naming what was awaited after [`DEADLINE`].
fn next_line(lines: &Receiver<String>, waiting_for: &str) -> String {
    lines
        .recv_timeout(DEADLINE)
        .unwrap_or_else(|e| panic!("no {waiting_for} within {DEADLINE:?}: {e}"))
}

/// Waits (bounded) for a line containing `needle`; returns the lines before it.
fn wait_for_line(lines: &Receiver<String>, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return seen,
            Ok(line) => seen.push(line),
            Err(e) => panic!("no line with `{needle}` within {DEADLINE:?} ({e}); got: {seen:#?}"),
        }
    }
}

/// Runs a command to completion within [`DEADLINE`], killing it if it overruns.
fn output_within(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let status = wait_within(&mut child);
    Output {
        status,
        stdout: stdout.recv_timeout(DEADLINE).unwrap_or_default(),
        stderr: stderr.recv_timeout(DEADLINE).unwrap_or_default(),
    }
}

fn collect(mut stream: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        let _ = tx.send(bytes);
    });
    rx
}

fn wait_within(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {DEADLINE:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

use faultline_integration::require_root;

#[test]
fn check_passes_on_this_host_and_lists_every_requirement() {
    require_root();
    let out = output_within(faultline().arg("check"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for needle in [
        "privileges",
        "kernel version",
        "tracefs",
        "tcp:tcp_probe",
        "cgroup v2",
    ] {
        assert!(text.contains(needle), "missing {needle}: {text}");
    }
}

#[test]
fn links_reports_loopback_traffic_as_json() {
    require_root();
    // An address of its own in 127/8, so other loopback traffic on the host does not
    // land on the same link.
    let ip = format!("127.{}.7.1", 20 + std::process::id() % 200);
    let listener = TcpListener::bind((ip.as_str(), 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 65536];
        while s.read(&mut buf).is_ok_and(|n| n > 0) {}
    });
    let mut child = faultline()
        .args(["links", "--duration", "2s", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = lines_of(child.stderr.take().unwrap());
    // Start the flow once the probe is attached, as the binary says.
    wait_for_line(&stderr, "probe attached");
    let mut client = TcpStream::connect(addr).unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(500) {
        client.write_all(&[7u8; 16384]).unwrap();
    }
    drop(client);
    server.join().unwrap();
    let status = wait_within(&mut child);
    assert!(status.success(), "{status}");
    let stdout = stdout
        .recv_timeout(DEADLINE)
        .expect("stdout closes on exit");
    let text = String::from_utf8_lossy(&stdout);
    let row = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["link"]["remote"] == ip.as_str() && v["progress_segs"].as_u64() > Some(0))
        .unwrap_or_else(|| panic!("no loopback row with progress in: {text}"));
    // Loss on loopback is possible on a busy machine; the fields must be there.
    for field in [
        "retrans_segs",
        "rto_timeouts",
        "syn_retrans",
        "failed_connects",
        "resets_rx",
        "srtt_us",
    ] {
        assert!(row[field].is_u64(), "{field} missing: {row}");
    }
    assert!(row["rtt_p50_us"].as_u64().is_some(), "{row}");
}

#[test]
fn a_malformed_config_is_refused_before_anything_is_attached() {
    let dir = std::env::temp_dir().join(format!("faultline-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[probe]\ntick = \"100ms\"\nmax_linkz = 5\n").unwrap();
    let out = output_within(faultline().args(["run", "--config"]).arg(&path));
    std::fs::remove_dir_all(&dir).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.toml:3: probe.max_linkz: unknown field"),
        "{err}"
    );
    assert!(!err.contains("probe attached"), "{err}");
}

#[test]
fn watch_prints_the_snapshot_then_each_change_as_json() {
    use faultline::{
        FeedLimits,
        detector::{State, Verdict},
        topology::Level,
    };
    use faultline_integration::feed::FeedServer;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let topology = "[[site]]\nname = \"dc-a\"\n[[cabinet]]\nname = \"c1\"\nsite = \"dc-a\"\n\
                    [[rack]]\nname = \"r1\"\ncabinet = \"dc-a/c1\"\n";
    let server = rt.block_on(FeedServer::start(topology, FeedLimits::default()));
    server.feed.publish(&[
        Verdict::scripted(Level::Rack, "dc-a/c1/r1", State::Healthy),
        Verdict::scripted(Level::Host, "dc-a/c1/r1/h1", State::Healthy),
    ]);
    let mut child = faultline()
        .args([
            "watch",
            "--json",
            "--level",
            "rack",
            "--endpoint",
            &server.url(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stdout.take().unwrap());
    let next = || -> serde_json::Value {
        serde_json::from_str(&next_line(&lines, "verdict line from watch")).unwrap()
    };
    let first = next();
    assert_eq!(
        (first["path"].as_str(), first["state"].as_str()),
        (Some("dc-a/c1/r1"), Some("HEALTHY"))
    );
    server.feed.publish(&[
        Verdict::scripted(Level::Host, "dc-a/c1/r1/h1", State::Failed),
        Verdict::scripted(Level::Rack, "dc-a/c1/r1", State::Failed),
    ]);
    let change = next();
    assert_eq!(
        change["state"], "FAILED",
        "the host change is filtered out: {change}"
    );
    assert_eq!(change["level"], "rack");
    assert_eq!(change["sequence"], 4);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn watch_refuses_an_unknown_level_with_a_clear_error() {
    let out = output_within(faultline().args(["watch", "--level", "aisle"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`aisle` is not a level"), "{err}");
}

#[test]
fn check_tests_the_tracefs_path_of_the_given_config() {
    let dir = std::env::temp_dir().join(format!("faultline-cli-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("faultline.toml");
    let bogus = "/nonexistent/faultline-tracefs";
    std::fs::write(&path, format!("[probe]\ntracefs = \"{bogus}\"\n")).unwrap();
    let out = output_within(faultline().args(["check", "--config"]).arg(&path));
    std::fs::remove_dir_all(&dir).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    let tracefs = text
        .lines()
        .find(|l| l.contains(" tracefs "))
        .unwrap_or_else(|| panic!("no tracefs line: {text}"));
    assert!(
        tracefs.starts_with("MISSING") && tracefs.contains(bogus),
        "{tracefs}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("ok") && l.contains("faultline.toml")),
        "the config line names the file: {text}"
    );
}

#[test]
fn an_endless_topology_or_config_is_refused_at_its_cap() {
    let out = output_within(faultline().args(["topology", "check", "/dev/zero"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("/dev/zero") && err.contains("16 MiB limit for topology files"),
        "{err}"
    );
    let out = output_within(faultline().args(["run", "--config", "/dev/zero"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("/dev/zero") && err.contains("1 MiB limit for config files"),
        "{err}"
    );
}

const LAB_TOPOLOGY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/lab/topology.toml");

/// A config file in a directory of its own; the directory is removed by the caller.
fn config_file(name: &str, text: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("faultline-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("faultline.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn topology_peers_prints_each_chosen_peer_with_its_endpoint() {
    let out = output_within(faultline().args([
        "topology",
        "peers",
        LAB_TOPOLOGY,
        "dc-a/c1/r1/a11-1",
        "--fanout",
        "6",
    ]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    let mut paths = std::collections::HashSet::new();
    for line in &lines {
        let (path, endpoint) = line.split_once(' ').unwrap();
        assert!(
            path.starts_with("dc-") && path != "dc-a/c1/r1/a11-1",
            "{line}"
        );
        assert!(
            endpoint.starts_with("http://") && endpoint.ends_with(":7431"),
            "{line}"
        );
        assert!(paths.insert(path), "twice: {line}");
    }
    // Every site is among them, and an IPv6-only host is reached in brackets.
    for site in ["dc-a/", "dc-b/", "dc-c/"] {
        assert!(
            paths.iter().any(|p| p.starts_with(site)),
            "no {site}: {text}"
        );
    }
    assert!(text.contains("http://[fd00:73:"), "{text}");
    // The same host named by its address, the same choice; another port on request.
    let by_ip = output_within(faultline().args([
        "topology",
        "peers",
        LAB_TOPOLOGY,
        "10.71.11.11",
        "--fanout",
        "6",
        "--port",
        "9000",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&by_ip.stdout),
        text.replace(":7431", ":9000")
    );
}

#[test]
fn topology_peers_refuses_what_is_not_a_host() {
    let out = output_within(faultline().args(["topology", "peers", LAB_TOPOLOGY, "dc-a/c1"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`dc-a/c1`: a cabinet, not a host"), "{err}");
}

#[test]
fn auto_peers_are_refused_before_anything_is_bound_or_attached() {
    for (name, text, want) in [
        (
            "no-topology",
            "[agent]\npeers = \"auto\"\n".to_owned(),
            "faultline.toml:2: agent.peers: \"auto\" chooses peers from the topology".to_owned(),
        ),
        (
            "unknown-string",
            "[agent]\n\npeers = \"everyone\"\n".to_owned(),
            "faultline.toml:3: agent.peers: invalid value: string \"everyone\", expected \"auto\""
                .to_owned(),
        ),
        (
            "not-in-topology",
            format!(
                "[agent]\ntopology = \"{LAB_TOPOLOGY}\"\nlocal_addresses = [\"192.0.2.7\"]\n\
                 peers = \"auto\"\n"
            ),
            format!(
                "faultline.toml:4: agent.peers: \"auto\": none of this host's addresses \
                 (192.0.2.7) is a host address in {LAB_TOPOLOGY}"
            ),
        ),
    ] {
        let (dir, path) = config_file(name, &text);
        let out = output_within(faultline().args(["run", "--config"]).arg(&path));
        std::fs::remove_dir_all(&dir).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {err}");
        assert!(err.contains(&want), "{name}: {err}");
        assert!(!err.contains("probe attached"), "{name}: {err}");
    }
}

#[test]
fn check_prints_how_many_peers_auto_chooses() {
    let (dir, path) = config_file(
        "check-auto",
        &format!(
            "[agent]\ntopology = \"{LAB_TOPOLOGY}\"\n\
             local_addresses = [\"fd00:73:21::11\"]\npeers = \"auto\"\n"
        ),
    );
    let out = output_within(faultline().args(["check", "--config"]).arg(&path));
    std::fs::remove_dir_all(&dir).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(" peers "))
        .unwrap_or_else(|| panic!("no peers line: {text}"));
    assert!(
        line.starts_with("ok")
            && line.contains("auto: 15 chosen from the topology for dc-c/c2/r1/c21-1"),
        "{line}"
    );
}

#[test]
fn status_prints_one_line_and_exits_with_the_state() {
    use faultline::{
        FeedLimits,
        detector::{State, Verdict},
        topology::Level,
    };
    use faultline_integration::feed::FeedServer;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let topology = "[[site]]\nname = \"dc-a\"\n[[cabinet]]\nname = \"c1\"\nsite = \"dc-a\"\n\
                    [[rack]]\nname = \"r1\"\ncabinet = \"dc-a/c1\"\n[[rack]]\nname = \"r2\"\ncabinet = \"dc-a/c1\"\n";
    let server = rt.block_on(FeedServer::start(topology, FeedLimits::default()));
    server.feed.publish(&[
        Verdict::scripted(Level::Rack, "dc-a/c1/r1", State::Failed),
        Verdict::scripted(Level::Rack, "dc-a/c1/r2", State::Degraded),
        Verdict::scripted(Level::Cabinet, "dc-a/c1", State::Healthy),
    ]);
    let status = |args: &[&str]| {
        let out = output_within(
            faultline()
                .arg("status")
                .args(args)
                .args(["--endpoint", &server.url()]),
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    let (code, line) = status(&["rack/dc-a/c1/r1"]);
    assert_eq!(code, Some(2), "{line}");
    assert!(
        line.starts_with("rack/dc-a/c1/r1 FAILED 0.60 scripted"),
        "{line}"
    );
    assert_eq!(status(&["dc-a/c1/r2"]).0, Some(1), "a bare path");
    assert_eq!(status(&["cabinet/dc-a/c1"]).0, Some(0));
    let (code, line) = status(&["dc-a/c1/r9"]);
    assert_eq!(code, Some(3), "{line}");
    assert_eq!(status(&[]), (Some(0), "agent SERVING".to_owned()));
    // Nobody listening: 4, saying where it looked.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out =
        output_within(faultline().args(["status", "--endpoint", &format!("http://{closed}")]));
    assert_eq!(out.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("agent unreachable at http://127.0.0.1:"),
        "{out:?}"
    );
}
