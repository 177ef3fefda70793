//! Fuzzes `faultline::Config::parse` with arbitrary UTF-8 (the valid prefix of the
//! input), as `faultline run` and `faultline check` read the agent's config file.
//!
//! Parsing must never panic. An error must be one that parsing makes (not a read
//! error), about the file it was given, and name it first: config.rs promises that
//! every error names the file, and the line and key where it has them, so the message
//! starts `fuzz.toml:LINE: KEY: ` (or `fuzz.toml: KEY: ` for a value the file does not
//! set), with a line of the file. When parsing succeeds, the config must pass every
//! check `Config::validate` makes, re-stated here so that a check that stopped running
//! (or a deserializer that skips it) shows:
//! - `probe.tick` between 10 ms and 10 s, `probe.max_links` between 16 and 1 << 20;
//! - `agent.name`, when set, not blank; `agent.peer_port` not 0;
//! - `agent.peers`: `"auto"` only with `agent.topology`; a list of `http://HOST:PORT`
//!   endpoints without a path (`https://` only with `[tls]`);
//! - `listen.max_connections` between 1 and 65536, `listen.max_streams` between 1 and
//!   1 << 20;
//! - `DetectorConfig::invalid` finds nothing.
#![no_main]

use std::{path::Path, time::Duration};

use faultline::{Config, ConfigError, Peers};
use libfuzzer_sys::fuzz_target;

const FILE: &str = "fuzz.toml";

/// The config's sections: every dotted key an error names is in one of them.
const SECTIONS: [&str; 5] = ["agent", "listen", "probe", "detector", "tls"];

fuzz_target!(|data: &[u8]| {
    let text = match std::str::from_utf8(data) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&data[..e.valid_up_to()]).expect("valid prefix"),
    };
    match Config::parse(Path::new(FILE), text) {
        Ok(config) => check(&config),
        Err(e) => check_error(&e, text),
    }
});

fn check_error(e: &ConfigError, text: &str) {
    let message = e.to_string();
    assert!(
        message.starts_with(FILE),
        "does not name the file first: {message}"
    );
    // `line_of` and `line_of_key` count from 1 and never past the last line.
    let lines = text.split('\n').count();
    let in_file = |line: usize| {
        assert!(
            (1..=lines).contains(&line),
            "line {line} of {lines}: {message}"
        );
    };
    match e {
        ConfigError::Syntax {
            path, line, key, ..
        } => {
            assert_eq!(path, Path::new(FILE), "{message}");
            in_file(*line);
            let prefix = match key {
                Some(key) => format!("{FILE}:{line}: {key}: "),
                None => format!("{FILE}:{line}: "),
            };
            assert!(message.starts_with(&prefix), "want {prefix:?}…: {message}");
        }
        ConfigError::Invalid {
            path, line, key, ..
        } => {
            assert_eq!(path, Path::new(FILE), "{message}");
            check_key(key, &message);
            let prefix = match line {
                Some(line) => {
                    in_file(*line);
                    format!("{FILE}:{line}: {key}: ")
                }
                None => format!("{FILE}: {key}: "),
            };
            assert!(message.starts_with(&prefix), "want {prefix:?}…: {message}");
        }
        ConfigError::Unusable {
            path, line, key, ..
        } => {
            assert_eq!(path, Path::new(FILE), "{message}");
            check_key(key, &message);
            in_file(*line);
            let prefix = format!("{FILE}:{line}: {key}: ");
            assert!(message.starts_with(&prefix), "want {prefix:?}…: {message}");
        }
        ConfigError::Read { .. } | ConfigError::TooLarge { .. } => {
            panic!("parse does not read files: {message}");
        }
    }
}

/// A key a value error names is a full dotted key (`probe.tick`), so it can be found.
fn check_key(key: &str, message: &str) {
    let section = key.split_once('.').map(|(section, _)| section);
    assert!(
        section.is_some_and(|s| SECTIONS.contains(&s)),
        "key `{key}` is not in a section: {message}"
    );
}

fn check(config: &Config) {
    check_probe(config);
    check_listen(config);
    check_agent(config);
    if let Some((key, reason)) = config.detector.invalid() {
        panic!("accepted, but {key}: {reason}: {:?}", config.detector);
    }
}

fn check_probe(config: &Config) {
    let tick = config.probe.tick;
    assert!(
        (Duration::from_millis(10)..=Duration::from_secs(10)).contains(&tick),
        "accepted probe.tick = {tick:?}"
    );
    let max_links = config.probe.max_links;
    assert!(
        (16..=1 << 20).contains(&max_links),
        "accepted probe.max_links = {max_links}"
    );
    assert_eq!(config.probe.probe_options().max_links, max_links);
}

fn check_listen(config: &Config) {
    let listen = &config.listen;
    assert!(
        (1..=65_536).contains(&listen.max_connections),
        "accepted listen.max_connections = {}",
        listen.max_connections
    );
    assert!(
        (1..=1 << 20).contains(&listen.max_streams),
        "accepted listen.max_streams = {}",
        listen.max_streams
    );
}

fn check_agent(config: &Config) {
    let agent = &config.agent;
    if let Some(name) = &agent.name {
        assert!(!name.trim().is_empty(), "accepted agent.name = {name:?}");
    }
    assert_ne!(agent.peer_port, 0, "accepted agent.peer_port = 0");
    match agent.peers.get_ref() {
        Peers::Auto => assert!(
            agent.topology.is_some(),
            "accepted peers = \"auto\" without agent.topology"
        ),
        Peers::List(list) => {
            for peer in list {
                check_peer(peer, config.tls.is_some());
            }
        }
    }
}

/// What `peer_uri_problem` lets through: `http://` (or `https://` with `[tls]`), and
/// no path after the port. (The URI syntax itself is tonic's to judge.)
fn check_peer(peer: &str, tls: bool) {
    let https = peer.strip_prefix("https://").filter(|_| tls);
    let rest = peer
        .strip_prefix("http://")
        .or(https)
        .unwrap_or_else(|| panic!("accepted peer {peer:?} (with [tls]: {tls})"));
    assert!(
        !rest.trim_end_matches('/').contains('/'),
        "accepted peer {peer:?} with a path"
    );
}
