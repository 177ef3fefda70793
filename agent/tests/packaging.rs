//! The systemd unit in `packaging/`: it verifies, and the capabilities it grants are
//! exactly enough for the agent to attach everything.
use faultline_integration::TempDir;
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use faultline_integration::require_root;

const UNIT: &str = include_str!("../../packaging/faultline.service");

#[test]
fn the_unit_verifies_without_a_warning() {
    let dir = TempDir::new("unit");
    // The unit names the installed binary; here, the one just built.
    let unit = dir.join("faultline.service");
    std::fs::write(
        &unit,
        UNIT.replace("/usr/bin/faultline", env!("CARGO_BIN_EXE_faultline")),
    )
    .unwrap();
    // The man page comes with the package (checked where it is installed).
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (cargo xtask setup installs systemd)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.trim().is_empty(), "warnings: {said}");
}

/// The unit's `CapabilityBoundingSet`, as setpriv's `+cap` list.
fn unit_capabilities() -> String {
    let line = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds capabilities");
    line.split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn the_units_capabilities_are_enough_to_attach_everything() {
    require_root();
    let dir = TempDir::new("caps");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        "[agent]\nlocal_addresses = [\"192.0.2.1\"]\n\
         [listen]\ngrpc = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\nheartbeat = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let caps = unit_capabilities();
    assert_eq!(caps, "+bpf,+perfmon,+net_admin");
    let mut child = Command::new("setpriv")
        .arg(format!("--inh-caps=-all,{caps}"))
        .arg(format!("--ambient-caps=-all,{caps}"))
        .arg(format!("--bounding-set=-all,{caps}"))
        .arg(env!("CARGO_BIN_EXE_faultline"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux)");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let (mut sock_ops, mut attached) = (false, false);
    while !(sock_ops && attached) {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) else {
            break;
        };
        sock_ops |= line.contains("sock_ops attached");
        attached |= line.contains("probe attached, watching TCP links");
        seen.push(line);
    }
    // Reading the kernel's table (in batches) happens at every tick, after attach: a
    // call the capabilities do not allow ends the agent there.
    let mut running = sock_ops && attached;
    for _ in 0..5 {
        if !running {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        running = matches!(child.try_wait(), Ok(None));
    }
    let _ = child.kill();
    let _ = child.wait();
    seen.extend(rx.try_iter());
    assert!(sock_ops && attached, "with {caps} only: {seen:#?}");
    assert!(
        running,
        "stopped after attaching, with {caps} only: {seen:#?}"
    );
}

#[test]
fn the_agents_metrics_pass_promtool() {
    require_root();
    let dir = TempDir::new("promtool");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        "[agent]\nlocal_addresses = [\"192.0.2.1\"]\n\
         [listen]\ngrpc = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\nheartbeat = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let agent = faultline_integration::agent::AgentProcess::start_binary(
        env!("CARGO_BIN_EXE_faultline"),
        &config,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while agent.metric("faultline_ticks_total").unwrap_or(0.0) < 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never ticked"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = agent.metrics_text().unwrap();
    for family in [
        "faultline_build_info{version=",
        "faultline_kernel_links ",
        "faultline_kernel_evictions_total ",
        "faultline_urgent_to_verdict_seconds_bucket{le=\"0.3\"}",
        "faultline_verdict_to_subscriber_seconds_count ",
        "faultline_grpc_streams{service=\"faultline.v1.Verdicts\"}",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
    ] {
        assert!(body.contains(family), "{family} missing:\n{body}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs Debian's prometheus)");
    use std::io::Write as _;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
    assert!(agent.terminate().success());
}
