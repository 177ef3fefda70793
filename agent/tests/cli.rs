//! The `faultline` binary as an operator runs it (as root: it loads eBPF programs).
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

fn faultline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_faultline"))
}

use faultline_integration::require_root;

#[test]
fn check_passes_on_this_host_and_lists_every_requirement() {
    require_root();
    let out = faultline().arg("check").output().unwrap();
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
    let child = faultline()
        .args(["links", "--duration", "2s", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Start the flow after the probe attached (it attaches well within 1 s).
    std::thread::sleep(Duration::from_millis(1000));
    let mut client = TcpStream::connect(addr).unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(500) {
        client.write_all(&[7u8; 16384]).unwrap();
    }
    drop(client);
    server.join().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
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
    let out = faultline()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
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
        detector::{State, Verdict},
        feed::FeedLimits,
        topology::Level,
    };
    use faultline_integration::feed::FeedServer;
    use std::io::BufRead as _;

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
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next =
        || -> serde_json::Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
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
    let out = faultline()
        .args(["watch", "--level", "aisle"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`aisle` is not a level"), "{err}");
}
