//! What reading the operator's topology costs at fleet scale: `Topology::parse` of a
//! generated file with 10,000 and 100,000 hosts (goal: 100k hosts in under 2 s).
//!
//! The file is generated in memory, shaped like a real one: 40 hosts per rack, each
//! with one address, 10 racks per cabinet, each with a /24 prefix, 10 cabinets per
//! site (100k hosts: 2,500 racks, 250 cabinets, 25 sites, ~7.5 MiB of TOML). Only
//! the parse and validation are timed, not the generation.
//!
//! Run: `cargo bench -p faultline-core --bench topology_parse` (or `cargo xtask bench
//! --detector-only`, which runs it with the detector bench and tabulates both).
use std::{fmt::Write as _, hint::black_box, path::Path, time::Duration};

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use faultline_core::topology::Topology;

const HOSTS_PER_RACK: usize = 40;
const RACKS_PER_CABINET: usize = 10;
const CABINETS_PER_SITE: usize = 10;

/// A valid topology file with `hosts` hosts.
fn topology_text(hosts: usize) -> String {
    let racks = hosts.div_ceil(HOSTS_PER_RACK);
    let cabinets = racks.div_ceil(RACKS_PER_CABINET);
    let sites = cabinets.div_ceil(CABINETS_PER_SITE);
    let site_of_cabinet = |c: usize| c / CABINETS_PER_SITE;
    let cabinet_of_rack = |r: usize| r / RACKS_PER_CABINET;
    let mut t = String::new();
    for s in 0..sites {
        let _ = write!(t, "[[site]]\nname = \"dc-{s}\"\n");
    }
    for c in 0..cabinets {
        let _ = write!(
            t,
            "[[cabinet]]\nname = \"c{c}\"\nsite = \"dc-{}\"\n",
            site_of_cabinet(c)
        );
    }
    // Rack r has 10.(r / 256).(r % 256).0/24; its hosts are .1 to .40.
    for r in 0..racks {
        let c = cabinet_of_rack(r);
        let _ = write!(
            t,
            "[[rack]]\nname = \"r{r}\"\ncabinet = \"dc-{}/c{c}\"\nprefixes = [\"10.{}.{}.0/24\"]\n",
            site_of_cabinet(c),
            r / 256,
            r % 256
        );
    }
    for h in 0..hosts {
        let r = h / HOSTS_PER_RACK;
        let c = cabinet_of_rack(r);
        let _ = write!(
            t,
            "[[host]]\nname = \"web-{h}\"\nrack = \"dc-{}/c{c}/r{r}\"\naddresses = [\"10.{}.{}.{}\"]\n",
            site_of_cabinet(c),
            r / 256,
            r % 256,
            h % HOSTS_PER_RACK + 1
        );
    }
    t
}

fn topology_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("topology_parse");
    // One 100k-host parse takes about a second: the fewest samples criterion allows,
    // each one iteration (flat sampling), rather than its default of 100 growing ones.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(15));
    for (hosts, label) in [(10_000, "10k_hosts"), (100_000, "100k_hosts")] {
        let text = topology_text(hosts);
        let topology = Topology::parse(Path::new("bench-topology.toml"), &text)
            .expect("the generated topology is valid");
        assert_eq!(
            topology.counts()[0].1,
            hosts,
            "the generated file has every host"
        );
        eprintln!(
            "topology_parse: {label}: {} entities, {} KiB of TOML",
            topology.len(),
            text.len() / 1024
        );
        group.bench_function(BenchmarkId::new("parse", label), |b| {
            b.iter(|| Topology::parse(Path::new("bench-topology.toml"), black_box(&text)));
        });
    }
    group.finish();
}

criterion_group!(benches, topology_parse);
criterion_main!(benches);
