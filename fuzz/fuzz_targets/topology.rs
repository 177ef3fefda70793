//! Fuzzes `Topology::parse` with arbitrary UTF-8 (the valid prefix of the input).
//!
//! Parsing must never panic. An error must name a line of the file. When parsing
//! succeeds, the topology must hold together:
//! - every entity is found by its path; a site has no parent, and every other
//!   entity's parent is exactly one level up (host → rack → cabinet → site), was
//!   listed before it, and its path is the parent's path plus one name;
//! - every address listed for a host is located as that host, and `host_path` of it
//!   returns that host's path;
//! - the first and last address of every rack prefix are placed in a rack (never
//!   unplaced), in one whose prefix contains them at least as specifically;
//! - `locate` and `host_path` of addresses taken from the input (anything that
//!   parses as an address, its neighbours, the raw bytes) never panic and agree.
#![no_main]

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use faultline_core::topology::{EntityId, Level, Placement, Topology, TopologyError, UNPLACED};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = match std::str::from_utf8(data) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&data[..e.valid_up_to()]).expect("valid prefix"),
    };
    match Topology::parse(Path::new("fuzz.toml"), text) {
        Ok(topology) => check(&topology, text, data),
        Err(e) => check_error(&e, text),
    }
});

/// An error names a line that exists (or the one just past the end).
fn check_error(e: &TopologyError, text: &str) {
    let message = e.to_string();
    assert!(message.starts_with("fuzz.toml"), "{message}");
    let lines = text.split('\n').count();
    match e {
        TopologyError::Syntax { line, .. } | TopologyError::Invalid { line, .. } => {
            assert!(
                (1..=lines + 1).contains(line),
                "line {line} of {lines}: {message}"
            );
        }
        TopologyError::Read { .. } | TopologyError::TooLarge { .. } => {
            panic!("parse does not read files: {message}")
        }
    }
}

fn check(topology: &Topology, text: &str, data: &[u8]) {
    check_entities(topology);
    let file: toml::Table = toml::from_str(text).expect("a topology that parsed is TOML");
    check_hosts(topology, &file);
    check_prefixes(topology, &file);
    for ip in addresses_in(text, data) {
        check_lookup(topology, ip);
    }
}

fn check_entities(topology: &Topology) {
    let counted: usize = topology.counts().iter().map(|(_, n)| n).sum();
    assert_eq!(counted, topology.len());
    for (i, e) in topology.entities().iter().enumerate() {
        let id = EntityId(u32::try_from(i).unwrap());
        assert_eq!(
            topology.find(&e.path),
            Some(id),
            "{e:?} is not found by its path"
        );
        let Some(parent) = e.parent else {
            assert_eq!(e.level, Level::Site, "only sites have no parent: {e:?}");
            assert!(!e.path.is_empty() && !e.path.contains('/'), "{e:?}");
            continue;
        };
        assert!(parent.index() < i, "{e:?}: parent listed after it");
        let p = topology.entity(parent);
        assert!(p.level > e.level, "{e:?}: parent {p:?} is not above it");
        let expected = match e.level {
            Level::Host => Level::Rack,
            Level::Rack => Level::Cabinet,
            Level::Cabinet => Level::Site,
            Level::Site => panic!("a site with a parent: {e:?}"),
        };
        assert_eq!(p.level, expected, "{e:?}: parent {p:?}");
        let name = e
            .path
            .strip_prefix(&*p.path)
            .and_then(|rest| rest.strip_prefix('/'))
            .unwrap_or_else(|| panic!("{e:?}: path is not under its parent {p:?}"));
        assert!(
            !name.is_empty() && !name.contains('/') && !name.chars().any(char::is_whitespace),
            "{e:?}: bad name `{name}`"
        );
    }
}

fn str_of<'a>(table: &'a toml::Table, key: &str) -> &'a str {
    table
        .get(key)
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("parsed, but `{key}` is not a string: {table:?}"))
}

/// The tables of `[[key]]` (or `key = [{…}]`).
fn tables<'a>(file: &'a toml::Table, key: &str) -> impl Iterator<Item = &'a toml::Table> {
    file.get(key)
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(toml::Value::as_table)
}

fn strings<'a>(table: &'a toml::Table, key: &str) -> impl Iterator<Item = &'a str> {
    table
        .get(key)
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(toml::Value::as_str)
}

/// Every address listed for a host locates as that host.
fn check_hosts(topology: &Topology, file: &toml::Table) {
    for host in tables(file, "host") {
        let path = format!("{}/{}", str_of(host, "rack"), str_of(host, "name"));
        let id = topology
            .find(&path)
            .unwrap_or_else(|| panic!("host {path} was accepted but is not in the topology"));
        assert_eq!(topology.entity(id).level, Level::Host);
        for text in strings(host, "addresses") {
            let ip: IpAddr = text.parse().expect("an accepted address parses");
            assert_eq!(topology.locate(ip), Placement::Host(id), "{ip} of {path}");
            assert_eq!(topology.host_path(ip), path, "host_path({ip})");
        }
    }
}

/// (network, length) of `10.1.1.0/24`.
fn prefix(text: &str) -> (IpAddr, u8) {
    let (addr, len) = text.split_once('/').expect("an accepted prefix has a `/`");
    (
        addr.parse().expect("an accepted prefix's address parses"),
        len.parse().expect("an accepted prefix's length parses"),
    )
}

fn bits(ip: IpAddr) -> (u128, u32) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

fn contains((net, len): (IpAddr, u8), ip: IpAddr) -> bool {
    if net.is_ipv4() != ip.is_ipv4() {
        return false;
    }
    let (n, width) = bits(net);
    let (a, _) = bits(ip);
    let shift = width - u32::from(len);
    shift >= 128 || (n >> shift) == (a >> shift)
}

/// The last address of a prefix.
fn last((net, len): (IpAddr, u8)) -> IpAddr {
    let (n, width) = bits(net);
    let host_bits = width - u32::from(len);
    let ones = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    match net {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(n | ones).unwrap())),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n | ones)),
    }
}

/// The first and last address of each rack prefix are placed in a rack that has the
/// most specific prefix containing them (or are a listed host).
fn check_prefixes(topology: &Topology, file: &toml::Table) {
    let mut racks: HashMap<String, Vec<(IpAddr, u8)>> = HashMap::new();
    for rack in tables(file, "rack") {
        let path = format!("{}/{}", str_of(rack, "cabinet"), str_of(rack, "name"));
        racks
            .entry(path)
            .or_default()
            .extend(strings(rack, "prefixes").map(prefix));
    }
    let all: Vec<(IpAddr, u8)> = racks.values().flatten().copied().collect();
    for &p in &all {
        for ip in [p.0, last(p)] {
            let longest = all
                .iter()
                .filter(|q| contains(**q, ip))
                .map(|q| q.1)
                .max()
                .expect("its own prefix contains it");
            match topology.locate(ip) {
                Placement::Host(id) => assert_eq!(topology.entity(id).level, Level::Host),
                Placement::InRack(rack) => {
                    let info = topology.entity(rack);
                    assert_eq!(info.level, Level::Rack);
                    let prefixes = &racks[&*info.path];
                    assert!(
                        prefixes.iter().any(|q| q.1 == longest && contains(*q, ip)),
                        "{ip} placed in {} but the longest prefix containing it is /{longest}",
                        info.path
                    );
                }
                Placement::Unplaced => panic!("{ip} is in prefix {p:?} but unplaced"),
            }
        }
    }
}

/// `locate` and `host_path` agree, whatever the address.
fn check_lookup(topology: &Topology, ip: IpAddr) {
    let path = topology.host_path(ip);
    match topology.locate(ip) {
        Placement::Host(id) => {
            let e = topology.entity(id);
            assert_eq!(e.level, Level::Host);
            assert_eq!(path, &*e.path);
        }
        Placement::InRack(rack) => {
            let e = topology.entity(rack);
            assert_eq!(e.level, Level::Rack);
            assert_eq!(path, format!("{}/{ip}", e.path));
        }
        Placement::Unplaced => assert_eq!(path, format!("{UNPLACED}/{ip}")),
    }
}

/// Addresses derived from the input: every token that parses as an address (or the
/// address of a prefix), its neighbours, the raw bytes as addresses, and the extremes.
fn addresses_in(text: &str, data: &[u8]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = vec![
        Ipv4Addr::UNSPECIFIED.into(),
        Ipv4Addr::BROADCAST.into(),
        Ipv6Addr::UNSPECIFIED.into(),
        Ipv6Addr::LOCALHOST.into(),
        Ipv6Addr::from(u128::MAX).into(),
    ];
    if let Some(b) = data.get(..4) {
        out.push(Ipv4Addr::new(b[0], b[1], b[2], b[3]).into());
    }
    if let Some(b) = data.get(..16) {
        out.push(Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap()).into());
    }
    let tokens = text.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':' || c == '/'));
    for token in tokens.filter(|t| t.len() >= 2).take(32) {
        let addr = token.split('/').next().unwrap_or(token);
        if let Ok(ip) = addr.parse::<IpAddr>() {
            let (n, width) = bits(ip);
            let max = if width == 32 {
                u128::from(u32::MAX)
            } else {
                u128::MAX
            };
            for v in [
                n,
                n.wrapping_sub(1) & max,
                n.wrapping_add(1) & max,
                n ^ 0xff,
            ] {
                out.push(match ip {
                    IpAddr::V4(_) => Ipv4Addr::from(u32::try_from(v & max).unwrap()).into(),
                    IpAddr::V6(_) => Ipv6Addr::from(v).into(),
                });
            }
        }
    }
    out
}
