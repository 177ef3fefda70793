use std::path::Path;

use super::*;

const GOOD: &str = r#"
quorum = 2
[gobgp]
endpoint = "http://127.0.0.1:50051"
[[agent]]
endpoint = "http://10.72.11.11:7431"
site = "dc-b"
[[agent]]
endpoint = "http://[fd00:73:11::11]:7431"
site = "dc-c"
[[agent]]
endpoint = "http://10.71.11.11:7431"
site = "dc-a"
[[serve]]
entity = "dc-a"
prefixes = ["198.51.100.10/32", "2001:db8::/48"]
[[serve]]
entity = "dc-b"
prefixes = ["198.51.100.10/32"]
local = false
"#;

fn parse(text: &str) -> Result<AnnounceConfig, String> {
    AnnounceConfig::parse(Path::new("announce.toml"), text).map_err(|e| e.to_string())
}

#[test]
fn a_good_config_is_read_with_defaults() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.quorum, 2);
    assert!(!c.dry_run);
    assert_eq!(c.startup_wait, Duration::from_secs(5));
    assert_eq!(c.gobgp.next_hop_v4, IpAddr::from([0u8; 4]));
    assert_eq!(c.gobgp.resync, Duration::from_secs(2));
    assert_eq!(c.served[0].prefixes[1].to_string(), "2001:db8::/48");
    assert!(c.served[0].local && !c.served[1].local);
    assert_eq!(c.served[1].site(), "dc-b");
}

#[test]
fn the_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/announce.toml");
    let c = AnnounceConfig::load(&path).unwrap();
    assert_eq!(c.agents.len(), 3);
    assert_eq!(c.metrics, Some("127.0.0.1:9479".parse().unwrap()));
}

/// `text` is GOOD with `from` replaced by `to`; the error must name the line and key.
fn refused(from: &str, to: &str, line: usize, key: &str, says: &str) {
    assert!(GOOD.contains(from), "{from}");
    let text = GOOD.replacen(from, to, 1);
    let err = parse(&text).expect_err(&text);
    let want = format!("announce.toml:{line}: {key}: ");
    assert!(err.starts_with(&want), "{err} (want {want}…)");
    assert!(err.contains(says), "{err} (want …{says}…)");
}

#[test]
fn malformed_prefixes_are_refused_naming_file_line_and_key() {
    for (bad, says) in [
        ("198.51.100.300/32", "not an IP address"),
        ("198.51.100.10/33", "0 to 32"),
        ("198.51.100.10", "not a prefix"),
        (
            "198.51.100.10/24",
            "host bits set (the prefix is 198.51.100.0/24)",
        ),
        ("0.0.0.0/0", "default route"),
    ] {
        refused(
            "\"198.51.100.10/32\", \"2001",
            &format!("\"{bad}\", \"2001"),
            16,
            "serve.prefixes",
            says,
        );
    }
    refused(
        "\"2001:db8::/48\"",
        "\"2001:db8::/129\"",
        16,
        "serve.prefixes",
        "0 to 128",
    );
    refused(
        "prefixes = [\"198.51.100.10/32\"]\nlocal",
        "prefixes = []\nlocal",
        19,
        "serve.prefixes",
        "empty",
    );
}

#[test]
fn no_gobgpd_address_is_refused() {
    refused(
        "[gobgp]\nendpoint = \"http://127.0.0.1:50051\"\n",
        "[gobgp]\n",
        3,
        "gobgp.endpoint",
        "missing",
    );
    let err = parse(&GOOD.replacen("[gobgp]\nendpoint = \"http://127.0.0.1:50051\"\n", "", 1))
        .unwrap_err();
    assert!(err.contains("gobgp.endpoint: missing"), "{err}");
    refused(
        "\"http://127.0.0.1:50051\"",
        "\"127.0.0.1:50051\"",
        4,
        "gobgp.endpoint",
        "not an endpoint",
    );
}

#[test]
fn unknown_keys_and_bad_values_name_the_line() {
    refused("quorum = 2", "quorom = 2", 2, "quorom", "unknown field");
    refused("quorum = 2", "quorum = 0", 2, "quorum", "at least 1");
    refused(
        "quorum = 2",
        "quorum = 3",
        2,
        "quorum",
        "3 sites must agree that dc-a failed, but the [[agent]] feeds are in only 2 site(s) outside it (dc-b, dc-c)",
    );
    refused(
        "endpoint = \"http://10.72.11.11:7431\"",
        "endpoint = \"10.72.11.11:7431\"",
        6,
        "agent.endpoint",
        "not an endpoint",
    );
    refused(
        "entity = \"dc-b\"",
        "entity = \"dc-a\"",
        18,
        "serve.entity",
        "listed twice",
    );
    refused(
        "local = false",
        "local = true\nnext_hop = 1",
        21,
        "serve.next_hop",
        "unknown field",
    );
}

#[test]
fn unknown_sites_are_refused_against_the_topology() {
    let dir =
        std::env::temp_dir().join(format!("faultline-announce-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let topology = dir.join("topology.toml");
    std::fs::write(
        &topology,
        "[[site]]\nname = \"dc-a\"\n[[site]]\nname = \"dc-b\"\n[[site]]\nname = \"dc-c\"\n[[cabinet]]\nname = \"c1\"\nsite = \"dc-a\"\n",
    )
    .unwrap();
    let with_topology = |text: &str| format!("topology = \"{}\"\n{text}", topology.display());
    parse(&with_topology(GOOD)).unwrap();
    let err = parse(&with_topology(&GOOD.replacen(
        "site = \"dc-c\"",
        "site = \"dc-x\"",
        1,
    )))
    .unwrap_err();
    assert!(
        err.starts_with("announce.toml:11: agent.site: unknown: the topology has no `dc-x`"),
        "{err}"
    );
    let err = parse(&with_topology(&GOOD.replacen(
        "site = \"dc-c\"",
        "site = \"dc-a/c1\"",
        1,
    )))
    .unwrap_err();
    assert!(
        err.contains("agent.site: `dc-a/c1` is a cabinet, not a site"),
        "{err}"
    );
    let err = parse(&with_topology(&GOOD.replacen(
        "entity = \"dc-a\"",
        "entity = \"dc-z\"",
        1,
    )))
    .unwrap_err();
    assert!(
        err.starts_with("announce.toml:16: serve.entity: unknown"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn https_agents_need_a_ca_that_loads() {
    refused(
        "endpoint = \"http://10.72.11.11:7431\"",
        "endpoint = \"https://10.72.11.11:7431\"",
        6,
        "agent.endpoint",
        "https needs [tls] ca",
    );
    let text = format!("{GOOD}[tls]\nca = \"/nonexistent/ca.pem\"\n");
    let err = parse(&text).unwrap_err();
    assert!(
        err.starts_with("announce.toml:22: tls.ca: /nonexistent/ca.pem"),
        "{err}"
    );
    let dir = std::env::temp_dir().join(format!("faultline-announce-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(
        &ca,
        faultline_integration::pki::TestCa::new("fleet CA").pem(),
    )
    .unwrap();
    let text = format!(
        "{}[tls]\nca = \"{}\"\n",
        GOOD.replacen("http://10.72.11.11", "https://10.72.11.11", 1),
        ca.display()
    );
    let c = parse(&text);
    std::fs::remove_dir_all(&dir).unwrap();
    let c = c.unwrap();
    assert_eq!(c.tls_ca.as_deref(), Some(ca.as_path()));
    assert!(c.agents[0].endpoint.starts_with("https://"));
}
