use std::path::Path;

use super::*;

const EXAMPLE: &str = include_str!("../../../../examples/topology.toml");

fn parse(text: &str) -> Result<Topology, String> {
    Topology::parse(Path::new("topo.toml"), text).map_err(|e| e.to_string())
}

fn refused(text: &str) -> String {
    parse(text).expect_err("must be refused")
}

const BASE: &str = "[[site]]\nname = \"dc-a\"\n[[cabinet]]\nname = \"c1\"\nsite = \"dc-a\"\n";

#[test]
fn the_example_parses_and_places_peers() {
    let t = parse(EXAMPLE).unwrap();
    assert_eq!(
        t.host_path("10.1.1.10".parse().unwrap()),
        "dc-a/c1/r1/web-1"
    );
    assert_eq!(
        t.host_path("fd00:a:1:1::10".parse().unwrap()),
        "dc-a/c1/r1/web-1"
    );
    assert_eq!(
        t.host_path("10.1.2.77".parse().unwrap()),
        "dc-a/c1/r2/10.1.2.77"
    );
    assert_eq!(
        t.host_path("fd00:b:1:1::5".parse().unwrap()),
        "dc-b/c1/r1/fd00:b:1:1::5"
    );
    assert_eq!(
        t.host_path("192.0.2.1".parse().unwrap()),
        "unplaced/192.0.2.1"
    );
    let rack = t.find("dc-a/c1/r1").unwrap();
    assert_eq!(t.entity(rack).level, Level::Rack);
    assert_eq!(
        t.entity(t.entity(rack).parent.unwrap()).path.as_ref(),
        "dc-a/c1"
    );
}

#[test]
fn longest_prefix_wins_and_explicit_host_beats_prefix() {
    let text = format!(
        "{BASE}[[rack]]\nname = \"wide\"\ncabinet = \"dc-a/c1\"\nprefixes = [\"10.0.0.0/8\"]\n\
         [[rack]]\nname = \"narrow\"\ncabinet = \"dc-a/c1\"\nprefixes = [\"10.5.0.0/16\"]\n\
         [[host]]\nname = \"odd\"\nrack = \"dc-a/c1/wide\"\naddresses = [\"10.5.0.9\"]\n"
    );
    let t = parse(&text).unwrap();
    assert_eq!(
        t.host_path("10.5.1.1".parse().unwrap()),
        "dc-a/c1/narrow/10.5.1.1"
    );
    assert_eq!(
        t.host_path("10.6.1.1".parse().unwrap()),
        "dc-a/c1/wide/10.6.1.1"
    );
    assert_eq!(t.host_path("10.5.0.9".parse().unwrap()), "dc-a/c1/wide/odd");
}

#[test]
fn unknown_parent_is_named_with_its_line() {
    let err = refused(&format!(
        "{BASE}[[rack]]\nname = \"r1\"\ncabinet = \"dc-a/c9\"\n"
    ));
    assert_eq!(
        err,
        "topo.toml:8: rack[0].cabinet: unknown cabinet `dc-a/c9`"
    );
}

#[test]
fn a_parent_of_the_wrong_level_is_refused() {
    let err = refused(&format!(
        "{BASE}[[rack]]\nname = \"r1\"\ncabinet = \"dc-a\"\n"
    ));
    assert!(err.contains("`dc-a` is a site, not a cabinet"), "{err}");
}

#[test]
fn duplicate_names_are_refused() {
    let err = refused(&format!(
        "{BASE}[[cabinet]]\nname = \"c1\"\nsite = \"dc-a\"\n"
    ));
    assert_eq!(
        err,
        "topo.toml:7: cabinet[1].name: duplicate cabinet `dc-a/c1`"
    );
}

#[test]
fn the_same_prefix_twice_is_refused_naming_both_lines() {
    let err = refused(&format!(
        "{BASE}[[rack]]\nname = \"r1\"\ncabinet = \"dc-a/c1\"\nprefixes = [\"10.1.0.0/24\"]\n\
         [[rack]]\nname = \"r2\"\ncabinet = \"dc-a/c1\"\nprefixes = [\"10.1.0.0/24\"]\n"
    ));
    assert_eq!(
        err,
        "topo.toml:13: rack[1].prefixes[0]: prefix 10.1.0.0/24 also given on line 9"
    );
}

#[test]
fn names_are_a_safe_set_of_characters_and_not_reserved() {
    for (bad, says) in [
        ("dc\\u0007a", "must be 1 to 64 characters"),
        ("dc\\\"a", "must be 1 to 64 characters"),
        ("dc a", "must be 1 to 64 characters"),
        ("", "must be 1 to 64 characters"),
        ("unplaced", "`unplaced` is reserved"),
    ] {
        let err = refused(&format!("[[site]]\nname = \"{bad}\"\n"));
        assert!(err.starts_with("topo.toml:2: site[0].name: "), "{err}");
        assert!(err.contains(says), "{bad:?}: {err}");
    }
    let long = "a".repeat(65);
    assert!(refused(&format!("[[site]]\nname = \"{long}\"\n")).contains("1 to 64"));
    parse(&format!("[[site]]\nname = \"{}\"\n", "a".repeat(64))).unwrap();
    parse("[[site]]\nname = \"dc-1.east_2\"\n").unwrap();
}

#[test]
fn malformed_addresses_and_prefixes_are_refused() {
    let rack = |p: &str| {
        format!("{BASE}[[rack]]\nname = \"r1\"\ncabinet = \"dc-a/c1\"\nprefixes = [\"{p}\"]\n")
    };
    assert!(refused(&rack("10.1.0.0")).contains("not a prefix"));
    assert!(refused(&rack("10.1.0.0/33")).contains("0..=32"));
    assert!(refused(&rack("10.1.0.1/24")).contains("host bits set (did you mean 10.1.0.0/24?)"));
    assert!(refused(&rack("10.1.x.0/24")).contains("not an IPv4 or IPv6 address"));
    assert!(refused(&rack("0.0.0.0/0")).contains("`0.0.0.0/0` holds every address"));
    assert!(refused(&rack("::/0")).contains("holds every address"));
    assert!(refused(&rack("::ffff:10.1.0.0/120")).contains(
        "`::ffff:10.1.0.0` is an IPv4-mapped address, which never matches: write 10.1.0.0"
    ));
    let host = format!(
        "{}[[host]]\nname = \"h\"\nrack = \"dc-a/c1/r1\"\naddresses = [\"10.1.0.300\"]\n",
        rack("10.1.0.0/24")
    );
    let err = refused(&host);
    assert!(
        err.starts_with("topo.toml:13: host[0].addresses[0]:"),
        "{err}"
    );
}

#[test]
fn duplicate_addresses_are_refused() {
    let text = format!(
        "{BASE}[[rack]]\nname = \"r1\"\ncabinet = \"dc-a/c1\"\n\
         [[host]]\nname = \"h1\"\nrack = \"dc-a/c1/r1\"\naddresses = [\"10.1.0.1\"]\n\
         [[host]]\nname = \"h2\"\nrack = \"dc-a/c1/r1\"\naddresses = [\"10.1.0.1\"]\n"
    );
    assert!(refused(&text).contains("address 10.1.0.1 also given on line 12"));
}

#[test]
fn unknown_keys_and_bad_names_are_refused() {
    let err = refused("[[site]]\nname = \"dc-a\"\nregion = \"eu\"\n");
    assert!(
        err.starts_with("topo.toml:3:") && err.contains("region"),
        "{err}"
    );
    let err = refused("[[site]]\nname = \"dc/a\"\n");
    assert!(
        err.contains("site[0].name") && err.contains("letters, digits, `-`, `_` and `.`"),
        "{err}"
    );
    let err = refused("[[site]]\nnam = \"x\"\n");
    assert!(err.contains("nam"), "{err}");
    let err = refused("[[cabinet]]\nname = \"c1\"\n");
    assert!(err.contains("missing field `site`"), "{err}");
}

#[test]
fn ipv6_prefixes_use_longest_match_too() {
    let text = format!(
        "{BASE}[[rack]]\nname = \"r1\"\ncabinet = \"dc-a/c1\"\nprefixes = [\"fd00::/16\"]\n\
         [[rack]]\nname = \"r2\"\ncabinet = \"dc-a/c1\"\nprefixes = [\"fd00:1::/32\"]\n"
    );
    let t = parse(&text).unwrap();
    assert_eq!(
        t.host_path("fd00:1::5".parse().unwrap()),
        "dc-a/c1/r2/fd00:1::5"
    );
    assert_eq!(
        t.host_path("fd00:2::5".parse().unwrap()),
        "dc-a/c1/r1/fd00:2::5"
    );
}

#[test]
fn a_file_over_the_cap_is_refused_naming_the_file_and_the_cap() {
    let dir = std::env::temp_dir().join(format!("faultline-topo-cap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.toml");
    std::fs::write(&path, BASE).unwrap();
    let cap = u64::try_from(BASE.len()).unwrap();
    assert!(
        Topology::load_capped(&path, cap).is_ok(),
        "a file at the cap is read"
    );
    let err = Topology::load_capped(&path, cap - 1)
        .unwrap_err()
        .to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        err.contains(&*path.to_string_lossy()) && err.contains(&format!("{} bytes limit", cap - 1)),
        "{err}"
    );
}

#[test]
fn an_endless_file_is_refused_at_the_cap() {
    let err = Topology::load(Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/dev/zero") && err.contains("16 MiB limit for topology files"),
        "{err}"
    );
}

#[test]
fn errors_name_the_right_line_deep_into_a_large_file() {
    // Line numbers come from an index of line starts; check it far from the start and
    // for both lines of a duplicate.
    let mut text = format!("{BASE}[[rack]]\nname = \"r1\"\ncabinet = \"dc-a/c1\"\n");
    for h in 0..1000 {
        text += &format!(
            "[[host]]\nname = \"h{h}\"\nrack = \"dc-a/c1/r1\"\naddresses = [\"10.0.{}.{}\"]\n",
            h / 250,
            h % 250 + 1
        );
    }
    let first_line = text.lines().position(|l| l.contains("10.0.1.8\"")).unwrap() + 1;
    text += "[[host]]\nname = \"dup\"\nrack = \"dc-a/c1/r1\"\naddresses = [\"10.0.1.8\"]\n";
    let dup_line = text.lines().count();
    let err = refused(&text);
    assert!(
        err.starts_with(&format!("topo.toml:{dup_line}: host[1000].addresses[0]: "))
            && err.ends_with(&format!("also given on line {first_line}")),
        "{err}"
    );
}

#[test]
fn a_hosts_addresses_keep_their_file_order() {
    let t = parse(EXAMPLE).unwrap();
    let web1 = t.find("dc-a/c1/r1/web-1").unwrap();
    let want: Vec<IpAddr> = vec![
        "10.1.1.10".parse().unwrap(),
        "fd00:a:1:1::10".parse().unwrap(),
    ];
    assert_eq!(t.addresses(web1), want.as_slice());
    let rack = t.entity(web1).parent.unwrap();
    assert!(t.addresses(rack).is_empty());
}
