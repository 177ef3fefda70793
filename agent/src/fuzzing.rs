//! Entry points for the fuzz targets (`fuzz/`, `cargo xtask fuzz`): what comes from
//! the network, driven through the code the agent runs on it. Neither may panic,
//! whatever the bytes.
use std::{
    path::Path,
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant, SystemTime},
};

use faultline_proto::{health, health::health_server::Health, v1 as pb};
use prost::Message as _;
use tonic::Request;

use crate::{
    detector::{Detector, DetectorConfig, Entity, Evidence, State, Verdict},
    feed::{
        Feed, FeedLimits,
        health::HealthService,
        observations::from_wire,
        peer_gate::{NamesInUse, PeerGate},
        peer_identity::{LinkFilter, PeerIdentity},
        verdicts::VerdictService,
    },
    topology::{Level, Topology},
};
use faultline_proto::v1::{observations_server::Observations, verdicts_server::Verdicts};

const TOPOLOGY: &str = include_str!("../../examples/lab/topology.toml");

fn topology() -> Arc<Topology> {
    static TOPOLOGY_PARSED: LazyLock<Arc<Topology>> = LazyLock::new(|| {
        Arc::new(Topology::parse(Path::new("lab.toml"), TOPOLOGY).expect("the lab topology"))
    });
    TOPOLOGY_PARSED.clone()
}

/// Decodes `data` as length-delimited `ObservationBatch` messages, as two peers
/// (one a host of the topology, one outside it) would send them, 100 ms apart, and
/// takes each through what a peer's batch meets: the gate, the wire conversion, the
/// identity filter, then the detector's observe and tick.
pub fn peer_batches(mut data: &[u8]) {
    let topology = topology();
    let mut detector = Detector::new((*topology).clone(), DetectorConfig::default());
    let names = NamesInUse::default();
    let start = Instant::now();
    let peers = ["http://10.72.12.11:7431", "http://192.0.2.9:7431"];
    let mut streams: Vec<(PeerGate, LinkFilter)> = peers
        .iter()
        .map(|endpoint| {
            let identity = PeerIdentity::of(endpoint, &topology);
            let gate = PeerGate::claim("me", &identity.name, names.clone(), start)
                .expect("distinct identities");
            (gate, LinkFilter::new(identity, topology.clone()))
        })
        .collect();
    let mut n: u32 = 0;
    while !data.is_empty() && n < 64 {
        let Ok(batch) = pb::ObservationBatch::decode_length_delimited(&mut data) else {
            return;
        };
        let now = Duration::from_millis(100) * n;
        let (gate, filter) = &mut streams[n as usize % 2];
        n += 1;
        if gate.check(batch.links.len(), start + now).is_err() {
            continue;
        }
        let name = filter.identity().name.clone();
        let Some(mut observations) = from_wire(&batch, &name) else {
            continue;
        };
        filter.retain(&mut observations, start + now);
        detector.observe(&observations, now);
        detector.heard_from(&name, now);
        let _ = detector.silence_due(&name);
        for v in detector.tick(now) {
            assert!(v.confidence.is_finite(), "{v:?}");
        }
    }
}

/// A feed over the lab topology with a few verdicts, and a runtime to serve it on.
struct Served {
    runtime: tokio::runtime::Runtime,
    feed: Feed,
}

fn served() -> &'static Mutex<Served> {
    static SERVED: LazyLock<Mutex<Served>> = LazyLock::new(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        let feed = Feed::new(
            "me".into(),
            topology(),
            SystemTime::UNIX_EPOCH,
            FeedLimits::default(),
        );
        feed.publish(&[
            verdict(Level::Rack, "dc-a/c1/r1", State::Failed),
            verdict(Level::Site, "dc-b", State::Healthy),
        ]);
        Mutex::new(Served { runtime, feed })
    });
    &SERVED
}

fn verdict(level: Level, path: &str, state: State) -> Verdict {
    Verdict {
        entity: Entity {
            level,
            path: path.into(),
        },
        state,
        since: Duration::from_secs(1),
        confidence: 1.0,
        reason: "fuzzing".into(),
        cause: None,
        evidence: Evidence::default(),
        observers: vec!["me".into()],
        local_fault: false,
    }
}

/// Decodes `data` as each request message of the agent's gRPC services and hands
/// what decodes to the service, as tonic would after decoding: Verdicts Watch and
/// Snapshot, Observations Subscribe, Health Check and Watch.
pub fn grpc_requests(data: &[u8]) {
    let served = served()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let feed = &served.feed;
    served.runtime.block_on(async {
        let verdicts = VerdictService::new(feed.hub.clone(), 4, feed.streams.clone());
        if let Ok(r) = pb::WatchRequest::decode(data) {
            drop(verdicts.watch(Request::new(r)).await);
        }
        if let Ok(r) = pb::SnapshotRequest::decode(data) {
            drop(verdicts.snapshot(Request::new(r)).await);
        }
        if let Ok(r) = pb::SubscribeRequest::decode(data) {
            drop(feed.observations.subscribe(Request::new(r)).await);
        }
        let health = HealthService::new(
            feed.hub.clone(),
            feed.topology.clone(),
            tokio::sync::watch::channel(true).1,
            feed.streams.clone(),
        );
        if let Ok(r) = health::HealthCheckRequest::decode(data) {
            drop(health.check(Request::new(r.clone())).await);
            drop(health.watch(Request::new(r)).await);
        }
        if let Ok(r) = health::HealthListRequest::decode(data) {
            drop(health.list(Request::new(r)).await);
        }
        // Let the streams' tasks see their clients gone and end, freeing their slots.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_and_malformed_inputs_pass_through_without_panicking() {
        let batch = pb::ObservationBatch {
            observer: "anyone".into(),
            sequence: 1,
            links: vec![pb::LinkObservation {
                local_address: "10.72.12.11".into(),
                remote_address: "10.71.11.11".into(),
                progress_segs: 5,
                rto_timeouts: u64::MAX,
                ..pb::LinkObservation::default()
            }],
        };
        let mut bytes = Vec::new();
        for _ in 0..5 {
            bytes.extend(batch.encode_length_delimited_to_vec());
        }
        peer_batches(&bytes);
        peer_batches(&[0xff; 64]);
        let watch = pb::WatchRequest {
            filter: Some(pb::Filter {
                levels: vec![99],
                path_prefix: "//".into(),
            }),
            resume_after: Some(u64::MAX),
            incarnation: Some(7),
        };
        grpc_requests(&watch.encode_to_vec());
        grpc_requests(&[0x0a, 0xff, 0xff]);
        // Every stream the requests opened was freed.
        assert_eq!(served().lock().unwrap().feed.streams.open(), 0);
    }
}
