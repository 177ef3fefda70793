//! The whole agent (`faultline run`) on a namespace lab: real traffic, a real fault in
//! the router, verdicts read from its structured log.
use std::{
    net::{IpAddr, SocketAddr},
    sync::mpsc,
    time::{Duration, Instant},
};

use faultline_integration::{
    Lab,
    agent::AgentProcess as Agent,
    traffic::{Sink, paced},
};

fn start_agent(config: &std::path::Path) -> Agent {
    Agent::start_binary(env!("CARGO_BIN_EXE_faultline"), config)
}

/// Whether a verdict's observers are exactly `names`, in any order.
fn observers_are(v: &serde_json::Value, names: &[&str]) -> bool {
    let mut got: Vec<&str> = v["observers"].as_str().unwrap_or("").split(',').collect();
    let mut want = names.to_vec();
    got.sort_unstable();
    want.sort_unstable();
    got == want
}

/// Writes a topology of three racks (one per lab subnet) and an agent config.
fn write_config(
    dir: &std::path::Path,
    lab: &Lab,
    name: &str,
    local: IpAddr,
    peers: &[String],
) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let topology = format!(
        "[[site]]\nname = \"lab\"\n[[cabinet]]\nname = \"c1\"\nsite = \"lab\"\n\
         [[rack]]\nname = \"ra\"\ncabinet = \"lab/c1\"\nprefixes = [\"{a}.0/24\"]\n\
         [[rack]]\nname = \"rb\"\ncabinet = \"lab/c1\"\nprefixes = [\"{b}.0/24\"]\n\
         [[rack]]\nname = \"rc\"\ncabinet = \"lab/c1\"\nprefixes = [\"{c}.0/24\"]\n",
        a = net(lab.a.v4),
        b = net(lab.b.v4),
        c = net(lab.c.v4)
    );
    std::fs::write(dir.join("topology.toml"), topology).unwrap();
    let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[agent]\nname = \"{name}\"\ntopology = \"{}\"\nlocal_addresses = [\"{local}\"]\npeers = [{}]\n\
             [listen]\ngrpc = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\nheartbeat = \"127.0.0.1:0\"\n",
            dir.join("topology.toml").display(),
            peers.join(", ")
        ),
    )
    .unwrap();
    config
}

/// A real gRPC client on the agent's feed: every change to a rack, with the instant
/// it arrived.
fn watch_racks(grpc: &str) -> mpsc::Receiver<(Instant, String, i32)> {
    use faultline_proto::v1::{self as pb, verdicts_client::VerdictsClient, watch_event::Event};
    let (tx, rx) = mpsc::channel();
    let url = format!("http://{grpc}");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut client = VerdictsClient::connect(url)
                .await
                .expect("connect to the agent's feed");
            let request = pb::WatchRequest {
                filter: Some(pb::Filter {
                    levels: vec![pb::Level::Rack as i32],
                    path_prefix: String::new(),
                }),
                resume_after: None,
                incarnation: None,
            };
            let mut stream = client.watch(request).await.unwrap().into_inner();
            while let Ok(Some(e)) = stream.message().await {
                if let Some(Event::Change(c)) = e.event {
                    let v = c.verdict.unwrap();
                    if tx
                        .send((Instant::now(), v.entity.unwrap().path, v.state))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
    });
    rx
}

fn second(addr: IpAddr) -> IpAddr {
    let IpAddr::V4(v4) = addr else { unreachable!() };
    let o = v4.octets();
    IpAddr::from([o[0], o[1], o[2], o[3] + 1])
}

fn net(addr: IpAddr) -> String {
    let IpAddr::V4(v4) = addr else { unreachable!() };
    let o = v4.octets();
    format!("{}.{}.{}", o[0], o[1], o[2])
}

#[test]
fn a_blackholed_rack_is_announced_as_the_rack_and_nothing_else_fails() {
    let lab = Lab::new();
    let (b1, c1) = (lab.b.v4, lab.c.v4);
    let (b2, c2) = (second(b1), second(c1));
    lab.add_address(&lab.b, b2);
    lab.add_address(&lab.c, c2);
    let dir = std::env::temp_dir().join(format!("faultline-lab-{}", std::process::id()));
    let _sink_b = Sink::start(&lab.b.ns, SocketAddr::new([0, 0, 0, 0].into(), 5001));
    let _sink_c = Sink::start(&lab.c.ns, SocketAddr::new([0, 0, 0, 0].into(), 5001));
    // Above host level no verdict rests on one observer: agent A follows agent C, and
    // both send to rack rb.
    let agent_c = Agent::start_binary(
        env!("CARGO_BIN_EXE_faultline"),
        &write_config(&dir, &lab, "lab-c", c1, &[]),
    );
    let config = write_config(
        &dir,
        &lab,
        "lab-a",
        lab.a.v4,
        &[format!("http://{}", agent_c.grpc)],
    );
    let agent = start_agent(&config);
    let agent_c_name = agent_c.grpc.clone();
    let feed = watch_racks(&agent.grpc);
    let flows: Vec<_> = [
        (&lab.a, b1),
        (&lab.a, b2),
        (&lab.a, c1),
        (&lab.a, c2),
        (&lab.c, b1),
        (&lab.c, b2),
    ]
    .into_iter()
    .map(|(from, to)| {
        paced(
            &from.ns,
            SocketAddr::new(to, 5001),
            Duration::from_secs(7),
            2 << 20,
        )
    })
    .collect();

    let mut seen = Vec::new();
    let rack_b = "lab/c1/rb";
    let healthy = agent.wait_for(&mut seen, Duration::from_secs(5), |v| {
        v["path"] == rack_b && v["state"] == "HEALTHY"
    });
    assert!(healthy.is_some(), "rack rb seen healthy first: {seen:#?}");

    let injected = Instant::now();
    lab.blackhole_prefix(&format!("{}.0/24", net(b1)));
    let failed = agent.wait_for(&mut seen, Duration::from_secs(10), |v| {
        v["path"] == rack_b && v["state"] == "FAILED"
    });
    let failed = failed.unwrap_or_else(|| panic!("rack rb never FAILED: {seen:#?}"));
    // Other changes arrive meanwhile: bound the whole wait, not each message.
    let feed_deadline = Instant::now() + Duration::from_secs(10);
    let over_grpc = loop {
        let left = feed_deadline.saturating_duration_since(Instant::now());
        let (at, path, state) = feed
            .recv_timeout(left)
            .expect("the gRPC feed announces it too, within 10 s");
        if path == rack_b && state == faultline_proto::v1::State::Failed as i32 {
            break at;
        }
    };
    eprintln!(
        "rack FAILED {:?} after the blackhole in the log, {:?} at a gRPC subscriber",
        failed - injected,
        over_grpc - injected
    );
    // Let the hosts' own verdicts and any wrong blame arrive.
    agent.wait_for(&mut seen, Duration::from_secs(2), |_| false);
    for f in flows {
        f.join().unwrap();
    }
    let status = agent.terminate();
    std::fs::remove_dir_all(&dir).unwrap();

    assert!(
        status.success(),
        "agent exits cleanly on SIGTERM: {status:?}"
    );
    let failures: Vec<_> = seen.iter().filter(|v| v["state"] == "FAILED").collect();
    for v in &failures {
        let path = v["path"].as_str().unwrap();
        assert!(path.starts_with("lab/c1/rb"), "only rack rb fails: {v:#}");
    }
    // A host whose links went silent after a retransmission may be announced a tick
    // before its sibling's first RTO lets the rack fail: it is down. Once the rack
    // fails, every host's verdict says so.
    let hosts: std::collections::BTreeSet<&str> = failures
        .iter()
        .filter_map(|v| v["path"].as_str())
        .filter(|&p| p != rack_b)
        .collect();
    for host in hosts {
        let last = failures.iter().rev().find(|v| v["path"] == host).unwrap();
        assert_eq!(
            last["cause"], "rack/lab/c1/rb",
            "its hosts fail because of the rack, in the end: {last:#}"
        );
    }
    let rack = failures.iter().find(|v| v["path"] == rack_b).unwrap();
    // A peer is named by this agent's config (its endpoint), not by what it says.
    assert!(observers_are(rack, &["lab-a", &agent_c_name]), "{rack:#}");
    assert!(
        rack["reason"]
            .as_str()
            .unwrap()
            .contains("2 of 2 observed hosts fail"),
        "{rack:#}"
    );
}

#[test]
fn two_agents_merge_observations_and_survive_a_peer_dying() {
    let lab = Lab::new();
    let (b1, c1) = (lab.b.v4, lab.c.v4);
    let b2 = second(b1);
    lab.add_address(&lab.b, b2);
    let dir = std::env::temp_dir().join(format!("faultline-pair-{}", std::process::id()));
    let _sink_a = Sink::start(&lab.a.ns, SocketAddr::new([0, 0, 0, 0].into(), 5001));
    let _sink_b = Sink::start(&lab.b.ns, SocketAddr::new([0, 0, 0, 0].into(), 5001));
    let _sink_c = Sink::start(&lab.c.ns, SocketAddr::new([0, 0, 0, 0].into(), 5001));
    // Agent C observes from host c; agent A from host a and follows C.
    let agent_c = Agent::start_binary(
        env!("CARGO_BIN_EXE_faultline"),
        &write_config(&dir, &lab, "lab-c", c1, &[]),
    );
    let agent_c_name = agent_c.grpc.clone();
    let agent_a = Agent::start_binary(
        env!("CARGO_BIN_EXE_faultline"),
        &write_config(
            &dir,
            &lab,
            "lab-a",
            lab.a.v4,
            &[format!("http://{}", agent_c.grpc)],
        ),
    );
    let mut flows = Vec::new();
    for (from, to) in [
        (&lab.a, b1),
        (&lab.a, b2),
        (&lab.a, c1),
        (&lab.c, b1),
        (&lab.c, b2),
        (&lab.c, lab.a.v4),
    ] {
        flows.push(paced(
            &from.ns,
            SocketAddr::new(to, 5001),
            Duration::from_secs(9),
            1 << 20,
        ));
    }
    let mut seen = Vec::new();
    let rack_b = "lab/c1/rb";
    assert!(
        agent_a
            .wait_for(&mut seen, Duration::from_secs(5), |v| v["path"] == rack_b
                && v["state"] == "HEALTHY")
            .is_some(),
        "{seen:#?}"
    );
    lab.blackhole_prefix(&format!("{}.0/24", net(b1)));
    let both = agent_a.wait_for(&mut seen, Duration::from_secs(10), |v| {
        v["path"] == rack_b && v["state"] == "FAILED" && observers_are(v, &["lab-a", &agent_c_name])
    });
    assert!(
        both.is_some(),
        "agent A's verdict rests on both observers: {seen:#?}"
    );

    // Agent C dies mid-stream; A keeps judging on its own and announces the recovery.
    drop(agent_c);
    lab.heal();
    let recovered = agent_a.wait_for(&mut seen, Duration::from_secs(20), |v| {
        v["path"] == rack_b && v["state"] == "HEALTHY"
    });
    assert!(
        recovered.is_some(),
        "A announces recovery without its peer: {seen:#?}"
    );
    for f in flows {
        f.join().unwrap();
    }
    let status = agent_a.terminate();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(status.success(), "{status:?}");
}
