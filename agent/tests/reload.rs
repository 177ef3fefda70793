//! SIGHUP reloads `faultline run`'s config and topology: what is valid is applied,
//! a bad file is refused and changes nothing, and the agent keeps serving.
use faultline_integration::TempDir;
use std::{
    path::Path,
    time::{Duration, Instant},
};

use faultline_integration::{agent::AgentProcess, require_root};
use faultline_proto::health::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn topology(racks: &[&str]) -> String {
    let mut t = "[[site]]\nname = \"s\"\n[[cabinet]]\nname = \"c\"\nsite = \"s\"\n".to_owned();
    for r in racks {
        t += &format!("[[rack]]\nname = \"{r}\"\ncabinet = \"s/c\"\n");
    }
    t
}

fn config(dir: &Path, extra: &str) -> String {
    format!(
        "[agent]\nname = \"reload\"\ntopology = \"{}\"\nlocal_addresses = [\"192.0.2.1\"]\n\
         [listen]\ngrpc = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\nheartbeat = \"127.0.0.1:0\"\n{extra}",
        dir.join("topology.toml").display()
    )
}

/// The health status of `name`, or the gRPC code it was refused with.
fn health(grpc: &str, name: &str) -> Result<ServingStatus, tonic::Code> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = HealthClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        client
            .check(HealthCheckRequest {
                service: name.into(),
            })
            .await
            .map(|r| r.into_inner().status())
            .map_err(|s| s.code())
    })
}

/// Waits until the metric reaches `value`.
fn wait_metric(agent: &AgentProcess, name: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.metric(name) != Some(value) {
        assert!(
            Instant::now() < deadline,
            "{name} never reached {value}: {:?}",
            agent.metric(name)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_applies_a_good_config_and_refuses_a_bad_one_changing_nothing() {
    require_root();
    let dir = TempDir::new("reload");
    let path = dir.join("agent.toml");
    std::fs::write(dir.join("topology.toml"), topology(&["r1"])).unwrap();
    std::fs::write(&path, config(&dir, "")).unwrap();
    let agent = AgentProcess::start_binary(env!("CARGO_BIN_EXE_faultline"), &path);
    assert_eq!(
        health(&agent.grpc, "rack/s/c/r1"),
        Ok(ServingStatus::Serving)
    );
    assert_eq!(
        health(&agent.grpc, "rack/s/c/r2"),
        Err(tonic::Code::NotFound)
    );

    // A new rack and new thresholds: applied.
    std::fs::write(dir.join("topology.toml"), topology(&["r1", "r2"])).unwrap();
    std::fs::write(&path, config(&dir, "[detector]\nrecovery_hold = \"7s\"\n")).unwrap();
    agent.signal(libc::SIGHUP);
    wait_metric(&agent, "faultline_config_reloads_total", 1.0);
    assert_eq!(
        health(&agent.grpc, "rack/s/c/r2"),
        Ok(ServingStatus::Serving)
    );

    // A bad value, then a broken topology: refused, nothing changes, still serving.
    std::fs::write(&path, config(&dir, "[detector]\nrtt_factor = nan\n")).unwrap();
    agent.signal(libc::SIGHUP);
    wait_metric(&agent, "faultline_config_reloads_refused_total", 1.0);
    std::fs::write(&path, config(&dir, "")).unwrap();
    std::fs::write(
        dir.join("topology.toml"),
        "[[rack]]\nname = \"r3\"\ncabinet = \"nowhere\"\n",
    )
    .unwrap();
    agent.signal(libc::SIGHUP);
    wait_metric(&agent, "faultline_config_reloads_refused_total", 2.0);
    assert_eq!(
        health(&agent.grpc, "rack/s/c/r2"),
        Ok(ServingStatus::Serving)
    );
    assert_eq!(agent.metric("faultline_config_reloads_total"), Some(1.0));

    // A key that needs a restart is kept as it runs: the agent stays on its port.
    std::fs::write(dir.join("topology.toml"), topology(&["r1", "r2"])).unwrap();
    std::fs::write(
        &path,
        config(&dir, "").replace("grpc = \"127.0.0.1:0\"", "grpc = \"127.0.0.1:1\""),
    )
    .unwrap();
    agent.signal(libc::SIGHUP);
    wait_metric(&agent, "faultline_config_reloads_total", 2.0);
    assert_eq!(health(&agent.grpc, ""), Ok(ServingStatus::Serving));
    assert!(
        agent.terminate().success(),
        "SIGTERM still stops it cleanly"
    );
}
