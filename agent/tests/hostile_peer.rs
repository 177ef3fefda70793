//! Hostile peers against a real agent (`faultline run`, probe attached): two fake
//! agents it was told to follow stream made-up observations. They name themselves as
//! the agent and as listed hosts, rename on every reconnect, claim listed hosts'
//! addresses as their own, invent hosts that all fail, flood, and send an oversized
//! batch. None of it may change a verdict above host level or about a listed host,
//! and all of it must show in the metrics.
use faultline_integration::TempDir;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use faultline_integration::agent::AgentProcess;
use faultline_proto::v1::{
    LinkObservation, ObservationBatch, SubscribeRequest,
    observations_server::{Observations, ObservationsServer},
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Racks r1, r2, r3 (10.9.{1,2,3}.0/24) in one site; three listed hosts; the agent
/// under test is `me` (10.9.3.11), which has no real links here.
const TOPOLOGY: &str = r#"
[[site]]
name = "s"
[[cabinet]]
name = "c1"
site = "s"
[[cabinet]]
name = "c2"
site = "s"
[[rack]]
name = "r1"
cabinet = "s/c1"
prefixes = ["10.9.1.0/24"]
[[rack]]
name = "r2"
cabinet = "s/c2"
prefixes = ["10.9.2.0/24"]
[[rack]]
name = "r3"
cabinet = "s/c2"
prefixes = ["10.9.3.0/24"]
[[host]]
name = "h1"
rack = "s/c1/r1"
addresses = ["10.9.1.11"]
[[host]]
name = "h2"
rack = "s/c2/r2"
addresses = ["10.9.2.11"]
[[host]]
name = "me"
rack = "s/c2/r3"
addresses = ["10.9.3.11"]
"#;

/// A fake agent: every 100 ms a batch under a name it makes up.
#[derive(Clone)]
struct FakePeer {
    /// Its own (made-up) local address, outside the topology.
    local: &'static str,
    connections: Arc<AtomicU32>,
}

fn link(local: &str, remote: &str, failing: bool) -> LinkObservation {
    LinkObservation {
        local_address: local.into(),
        remote_address: remote.into(),
        progress_segs: if failing { 0 } else { 40 },
        acked_segs: if failing { 0 } else { 40 },
        retrans_segs: if failing { 4 } else { 0 },
        rto_timeouts: u64::from(failing),
        rtt_p50_us: Some(500),
        ..LinkObservation::default()
    }
}

impl FakePeer {
    /// Tick `n` of connection `conn`: healthy for a second, then the invented hosts
    /// of rack r2 fail while invented hosts of r1 stay healthy (so "the observers
    /// still reach elsewhere" holds), and the links from listed hosts' addresses say
    /// listed hosts fail.
    fn batch(&self, conn: u32, n: u64) -> ObservationBatch {
        let failing = n >= 10 || conn > 0;
        let mut links: Vec<LinkObservation> = (100..108)
            .map(|i| link(self.local, &format!("10.9.2.{i}"), failing))
            .collect();
        links.extend((100..104).map(|i| link(self.local, &format!("10.9.1.{i}"), false)));
        // Speaking for listed hosts: h1 and the agent's own address.
        links.push(link("10.9.1.11", "10.9.2.11", failing));
        links.push(link("10.9.3.11", "10.9.2.11", failing));
        let names = ["victim", "s/c1/r1/h1", "s/c2/r2/h2"];
        ObservationBatch {
            observer: format!(
                "{}-{conn}",
                names[usize::try_from((u64::from(conn) + n) % 3).unwrap()]
            ),
            sequence: n + 1,
            links,
        }
    }
}

type BatchStream = Pin<Box<dyn Stream<Item = Result<ObservationBatch, Status>> + Send>>;

#[tonic::async_trait]
impl Observations for FakePeer {
    type SubscribeStream = BatchStream;

    async fn subscribe(
        &self,
        _request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let conn = self.connections.fetch_add(1, Ordering::Relaxed);
        let me = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            // A stream lasts 2 s, then the peer reconnects under new names.
            for n in 0..20_u64 {
                if tx.send(Ok(me.batch(conn, n))).await.is_err() {
                    return;
                }
                if n == 12 {
                    // A flood: far past the 64 batches a second a peer may send.
                    for _ in 0..150 {
                        let _ = tx.send(Ok(me.batch(conn, n))).await;
                    }
                }
                if n == 14 && conn == 0 {
                    // Past the 65,536 links a batch may carry (~2.5 MB, under the
                    // decode limit).
                    let mut big = me.batch(conn, n);
                    big.links = (0..70_000_u32)
                        .map(|i| {
                            let ip = std::net::Ipv4Addr::from(0xC633_0000 + i);
                            link(me.local, &ip.to_string(), true)
                        })
                        .collect();
                    let _ = tx.send(Ok(big)).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

async fn serve_fake(peer: FakePeer) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ObservationsServer::new(peer).max_decoding_message_size(1 << 20))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

fn write_config(dir: &Path, peers: &[SocketAddr]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("topology.toml"), TOPOLOGY).unwrap();
    let peers: Vec<String> = peers.iter().map(|p| format!("\"http://{p}\"")).collect();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nname = \"victim\"\ntopology = \"{}\"\nlocal_addresses = [\"10.9.3.11\"]\n\
             peers = [{}]\n[listen]\ngrpc = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\nheartbeat = \"127.0.0.1:0\"\n",
            dir.join("topology.toml").display(),
            peers.join(", ")
        ),
    )
    .unwrap();
    config
}

#[test]
fn hostile_peers_change_no_verdict_above_host_level_and_show_in_metrics() {
    faultline_integration::require_root();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let connections = Arc::new(AtomicU32::new(0));
    let fakes: Vec<SocketAddr> = ["192.0.2.1", "192.0.2.2"]
        .into_iter()
        .map(|local| {
            runtime.block_on(serve_fake(FakePeer {
                local,
                connections: connections.clone(),
            }))
        })
        .collect();
    let dir = TempDir::new("hostile");
    let agent =
        AgentProcess::start_binary(env!("CARGO_BIN_EXE_faultline"), &write_config(&dir, &fakes));
    let mut seen = Vec::new();
    agent.wait_for(&mut seen, Duration::from_secs(6), |_| false);
    let metric = |name: &str| {
        agent
            .metric(name)
            .unwrap_or_else(|| panic!("{name} exported"))
    };
    let (links_refused, batches_refused, batches) = (
        metric("faultline_peer_links_refused_total"),
        metric("faultline_peer_batches_refused_total"),
        metric("faultline_peer_batches_total"),
    );
    let observations_refused = metric("faultline_observations_refused_total");
    let status = agent.terminate();
    assert!(status.success(), "{status:?}");

    assert!(
        connections.load(Ordering::Relaxed) >= 4,
        "the fakes were followed and reconnected under new names"
    );
    assert!(batches > 50.0, "their batches reached the agent: {batches}");
    for v in &seen {
        let (level, path, state) = (&v["level"], &v["path"], &v["state"]);
        let bad = state == "FAILED" || state == "DEGRADED";
        assert!(
            level == "host" || !bad,
            "no verdict above host level from peers outside the topology: {v:#}"
        );
        let path = path.as_str().unwrap();
        assert!(
            !(bad && ["s/c1/r1/h1", "s/c2/r2/h2", "s/c2/r3/me"].contains(&path)),
            "no verdict about a listed host from links the peers may not speak for: {v:#}"
        );
        // Every verdict names its observers by this agent's config, never as the
        // peers named themselves.
        for observer in v["observers"].as_str().unwrap_or("").split(',') {
            assert!(
                observer.is_empty() || fakes.iter().any(|f| f.to_string() == observer),
                "observer `{observer}` is one of the configured endpoints: {v:#}"
            );
        }
    }
    let invented_failed = seen
        .iter()
        .filter(|v| v["level"] == "host" && v["state"] == "FAILED")
        .count();
    eprintln!(
        "{} verdicts ({invented_failed} FAILED invented hosts); refused {links_refused} links and {batches_refused} batches of {batches} taken",
        seen.len()
    );
    // Two foreign-address links per batch; the oversized batch's 70,000 links are
    // refused as a whole batch.
    assert!(
        links_refused >= 100.0,
        "links from listed hosts' addresses refused: {links_refused}"
    );
    assert!(
        batches_refused >= 80.0,
        "the flood and the oversized batch refused: {batches_refused}"
    );
    assert_eq!(
        observations_refused, 0.0,
        "renaming never exhausts observer ids"
    );
}
