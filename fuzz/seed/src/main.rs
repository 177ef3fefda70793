//! `faultline-fuzz-seed TARGET DIR`: writes the seed inputs of a protobuf fuzz target
//! into its corpus directory (files named `seed-*`, rewritten each run).
//!
//! - `peer_batch`: a sequence of length-delimited `faultline.v1.ObservationBatch`
//!   messages, as `faultline::fuzzing::peer_batches` reads them, with the addresses of
//!   the topology it uses (see `peer_batch_seeds`).
//! - `grpc_request`: one encoded request message per file, the whole input being the
//!   message (`faultline::fuzzing::grpc_requests` decodes the same bytes as each request
//!   type, so a seed of one type is a mutated start for the others too).
//!
//! Built from the generated types rather than hand-written bytes, so a field renumbered
//! in the .proto files changes the seeds with it.
use std::{fs, path::Path, process::ExitCode};

use faultline_proto::{
    health::HealthCheckRequest,
    v1::{
        Filter, Level, LinkObservation, ObservationBatch, SnapshotRequest, SubscribeRequest,
        WatchRequest,
    },
};
use prost::Message;

type Seeds = Vec<(&'static str, Vec<u8>)>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [target, dir] = args.as_slice() else {
        eprintln!("usage: faultline-fuzz-seed peer_batch|grpc_request DIR");
        return ExitCode::from(2);
    };
    let seeds = match target.as_str() {
        "peer_batch" => peer_batch_seeds(),
        "grpc_request" => grpc_request_seeds(),
        other => {
            eprintln!(
                "faultline-fuzz-seed: no seeds for target `{other}` (peer_batch, grpc_request)"
            );
            return ExitCode::from(2);
        }
    };
    match write_all(Path::new(dir), &seeds) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faultline-fuzz-seed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_all(dir: &Path, seeds: &Seeds) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    for (name, bytes) in seeds {
        let path = dir.join(name);
        fs::write(&path, bytes).map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// A link that delivers: segments in, data acknowledged, an RTT sample.
fn healthy(local: &str, remote: &str, segs: u64) -> LinkObservation {
    LinkObservation {
        local_address: local.to_owned(),
        remote_address: remote.to_owned(),
        progress_segs: segs,
        acked_segs: segs / 2,
        rtt_p50_us: Some(250),
        ..LinkObservation::default()
    }
}

/// A link that stopped delivering: retransmissions and timeouts, nothing back since.
fn stalled(local: &str, remote: &str, tick: u64) -> LinkObservation {
    LinkObservation {
        local_address: local.to_owned(),
        remote_address: remote.to_owned(),
        retrans_segs: 3 * tick,
        rto_timeouts: tick,
        syn_retrans: 1,
        repeat_timeouts: tick.saturating_sub(1),
        silent_ms: Some(u32::try_from(100 * tick).unwrap_or(u32::MAX)),
        acked_age_ms: None,
        ..LinkObservation::default()
    }
}

fn batch(observer: &str, sequence: u64, links: Vec<LinkObservation>) -> ObservationBatch {
    ObservationBatch {
        observer: observer.to_owned(),
        sequence,
        links,
    }
}

/// Batches one after another, each with its length first.
fn stream(batches: &[ObservationBatch]) -> Vec<u8> {
    batches
        .iter()
        .flat_map(Message::encode_length_delimited_to_vec)
        .collect()
}

// `faultline::fuzzing::peer_batches` plays two followed peers over the lab topology
// (examples/lab/topology.toml), batches alternating between them: even batches come
// from b12-1 (10.72.12.11, a listed host, whose links count only from its own
// addresses), odd ones from an agent the topology does not list (192.0.2.9). The seeds
// use those addresses so that their links get past the peer filter into the detector.
const B12_1: &str = "10.72.12.11";
const B12_1_V6: &str = "fd00:72:12::11";
const UNLISTED: &str = "192.0.2.9";
/// Hosts of other racks and sites (a11-1 in dc-a, c11-1 in the IPv6-only dc-c).
const A11_1: &str = "10.71.11.11";
const A11_2: &str = "10.71.11.12";
const C11_1: &str = "fd00:73:11::11";

fn peer_batch_seeds() -> Seeds {
    let one = [batch("b12-1", 1, vec![healthy(B12_1, A11_1, 40)])];
    // Healthy ticks, then dc-a's rack r1 goes quiet to both peers while dc-c answers.
    let stall: Vec<ObservationBatch> = (1..=10)
        .map(|seq| {
            let local = if seq % 2 == 1 { B12_1 } else { UNLISTED };
            let far = if seq <= 4 {
                vec![healthy(local, A11_1, 20), healthy(local, A11_2, 20)]
            } else {
                vec![
                    stalled(local, A11_1, seq - 4),
                    stalled(local, A11_2, seq - 4),
                ]
            };
            let mut links = far;
            links.push(healthy(B12_1_V6, C11_1, 30));
            batch("b12-1", seq, links)
        })
        .collect();
    // IPv6 and in-rack (unlisted) peers, a sequence gap, connects that fail and resets,
    // and a link from an address that is not the peer's own (left out by the filter).
    let failing = LinkObservation {
        local_address: UNLISTED.to_owned(),
        remote_address: "10.71.11.77".to_owned(),
        failed_connects: 2,
        syn_retrans: 4,
        resets_rx: 1,
        ..LinkObservation::default()
    };
    let two = [
        batch("b12-1", 1, vec![healthy(B12_1_V6, C11_1, 12)]),
        batch("x", 7, vec![failing.clone(), healthy(A11_1, B12_1, 9)]),
        batch("b12-1", 2, vec![stalled(B12_1_V6, C11_1, 1)]),
        batch("x", 9, vec![failing]),
    ];
    // What a broken or hostile peer could send: no name, addresses that are not
    // addresses, counters at their maximum, a sequence going backwards, a repeated link.
    let extreme = LinkObservation {
        local_address: B12_1.to_owned(),
        remote_address: "::ffff:10.71.11.11".to_owned(),
        progress_segs: u64::MAX,
        retrans_segs: u64::MAX,
        rto_timeouts: u64::MAX,
        syn_retrans: u64::MAX,
        failed_connects: u64::MAX,
        resets_rx: u64::MAX,
        rtt_p50_us: Some(u64::MAX),
        acked_segs: u64::MAX,
        repeat_timeouts: u64::MAX,
        silent_ms: Some(u32::MAX),
        acked_age_ms: None,
        control_retrans_segs: u64::MAX,
        control_progress_segs: u64::MAX,
        control_timeouts: u64::MAX,
    };
    let junk_addresses = LinkObservation {
        local_address: "not-an-address".to_owned(),
        remote_address: String::new(),
        progress_segs: 1,
        ..LinkObservation::default()
    };
    let odd = [
        batch("b12-1", u64::MAX, vec![extreme.clone(), extreme]),
        batch("", 5, vec![junk_addresses]),
        batch("b12-1", 0, Vec::new()),
    ];
    vec![
        ("seed-one-batch.bin", stream(&one)),
        ("seed-rack-stall.bin", stream(&stall)),
        ("seed-mixed.bin", stream(&two)),
        ("seed-odd-values.bin", stream(&odd)),
    ]
}

fn filter(levels: &[Level], path_prefix: &str) -> Filter {
    Filter {
        levels: levels.iter().map(|&l| l as i32).collect(),
        path_prefix: path_prefix.to_owned(),
    }
}

fn grpc_request_seeds() -> Seeds {
    let watch_resume = WatchRequest {
        filter: Some(filter(&[Level::Rack, Level::Host], "dc-a/c1")),
        resume_after: Some(42),
        incarnation: Some(1_700_000_000_000_000_000),
    };
    // Refused by validation: LEVEL_UNSPECIFIED, and a prefix with slashes at its ends.
    let watch_invalid = WatchRequest {
        filter: Some(filter(&[Level::Unspecified, Level::Site], "/dc-a/")),
        resume_after: Some(u64::MAX),
        incarnation: None,
    };
    let snapshot = SnapshotRequest {
        filter: Some(filter(&[Level::Site, Level::Cabinet], "dc-b")),
    };
    let subscribe = SubscribeRequest {
        subscriber: "web-2".to_owned(),
    };
    let health = |service: &str| {
        HealthCheckRequest {
            service: service.to_owned(),
        }
        .encode_to_vec()
    };
    vec![
        ("seed-watch-resume.bin", watch_resume.encode_to_vec()),
        ("seed-watch-invalid.bin", watch_invalid.encode_to_vec()),
        ("seed-snapshot.bin", snapshot.encode_to_vec()),
        ("seed-subscribe.bin", subscribe.encode_to_vec()),
        ("seed-health-site.bin", health("site/dc-b")),
        ("seed-health-rack.bin", health("rack/dc-a/c1/r1")),
        ("seed-health-unplaced.bin", health("host/unplaced/10.9.9.9")),
    ]
}
