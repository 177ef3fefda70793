//! The Grafana dashboard and the Prometheus alerting rules in `packaging/`: the rules
//! pass `promtool check rules` and their unit tests, every dashboard panel has a title
//! and a query, every query is valid PromQL, and every `faultline_*` name either file
//! uses is one the agent exports. The exported names are read from the agent's own
//! sources, so renaming a metric without its dashboard and alerts fails here.
//!
//! Needs `promtool` (Debian's `prometheus` package).
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

/// The sources that render `/metrics`: the agent's counters and gauges, and the gRPC
/// side's (`Feed::render_metrics`).
const METRIC_SOURCES: [&str; 2] = [
    include_str!("../src/metrics/mod.rs"),
    include_str!("../src/feed/mod.rs"),
];

/// The standard process metrics the dashboard shows the agent's CPU and memory with;
/// the only `process_*` names it may use.
const PROCESS_METRICS: [&str; 2] = ["process_cpu_seconds_total", "process_resident_memory_bytes"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ sits in the repository")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .output()
        .expect("promtool (Debian's `prometheus` package: apt-get install prometheus)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{said}");
    assert!(said.contains("SUCCESS"), "promtool {args:?}:\n{said}");
    said
}

/// The string literals of Rust source, outside its `#[cfg(test)]` part, each with
/// whether it is the first argument of a `histogram(` call.
fn literals(source: &str) -> Vec<(String, bool)> {
    let code = source.split("#[cfg(test)]").next().unwrap_or(source);
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(start) = rest.find('"') {
        let before = rest[..start].trim_end();
        let after = &rest[start + 1..];
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(end) = end else { break };
        found.push((after[..end].to_owned(), before.ends_with("histogram(")));
        rest = &after[end + 1..];
    }
    found
}

/// The `faultline_*` names the agent exports, as read from the literals of the metric
/// sources that name a metric.
struct Exported {
    /// What a query can select: a histogram stands for its `_bucket`, `_sum` and
    /// `_count` series (its bare name is no series at all).
    series: BTreeSet<String>,
    /// What prose may name: the series, and the histograms' family names.
    families: BTreeSet<String>,
}

fn exported() -> Exported {
    let mut names = BTreeSet::new();
    let mut families = BTreeSet::new();
    for source in METRIC_SOURCES {
        for (literal, histogram) in literals(source) {
            let name = metric_names(&literal, "faultline_")
                .into_iter()
                .next()
                .filter(|n| literal.starts_with(n.as_str()));
            let Some(name) = name else { continue };
            families.insert(name.clone());
            if histogram {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            } else {
                names.insert(name);
            }
        }
    }
    families.extend(names.iter().cloned());
    Exported {
        series: names,
        families,
    }
}

/// The `process_*` metrics the agent exports (`agent/src/metrics/process.rs`).
fn exported_process_metrics() -> BTreeSet<String> {
    literals(include_str!("../src/metrics/process.rs"))
        .into_iter()
        .filter(|(l, _)| l.starts_with("process_"))
        .flat_map(|(l, _)| metric_names(&l, "process_"))
        .collect()
}

/// The names starting with `prefix` in `text` (whole identifiers only; the agent's
/// names have no `:`, so one ends a name, as in prose).
fn metric_names(text: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let preceded = rest[..i].chars().next_back().is_some_and(ident);
        let tail = &rest[i..];
        let len = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
        if !preceded {
            names.insert(tail[..len].to_owned());
        }
        rest = &tail[len..];
    }
    names
}

/// Panels, rows' panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel);
        if let Some(inner) = panel["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

fn dashboard() -> Value {
    serde_json::from_str(&read("packaging/grafana-dashboard.json"))
        .expect("packaging/grafana-dashboard.json is JSON")
}

/// Every query of the dashboard, with its panel's title.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default().to_owned();
            queries.push((title.clone(), expr));
        }
    }
    queries
}

#[test]
fn exported_names_are_found_in_the_sources() {
    let names = exported().series;
    // A gauge, a counter, labelled families, and the histograms' series.
    for name in [
        "faultline_tick_seconds",
        "faultline_kernel_evictions_total",
        "faultline_entity_state",
        "faultline_grpc_streams",
        "faultline_urgent_to_verdict_seconds_bucket",
        "faultline_verdict_to_subscriber_seconds_count",
    ] {
        assert!(names.contains(name), "{name} not found in {names:?}");
    }
    assert!(!names.contains("faultline_urgent_to_verdict_seconds"));
}

#[test]
fn the_alerting_rules_check() {
    let said = promtool(&["check", "rules", "packaging/alerts.yml"]);
    eprintln!("{said}");
}

#[test]
fn the_alerting_rules_pass_their_unit_tests() {
    let said = promtool(&["test", "rules", "packaging/alerts.test.yml"]);
    eprintln!("{said}");
}

#[test]
fn every_alert_says_what_it_means_and_is_documented() {
    let rules = read("packaging/alerts.yml");
    let guide = read("docs/operating.md");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 12, "{alerts:?}");
    // Each rule's own block: from its `- alert:` line to the next.
    for block in rules.split("- alert:").skip(1) {
        let name = block.split_whitespace().next().unwrap_or_default();
        assert!(block.contains("summary:"), "{name}: no summary");
        assert!(block.contains("description:"), "{name}: no description");
        assert!(
            guide.contains(name),
            "{name} is not explained in docs/operating.md"
        );
    }
}

#[test]
fn every_panel_has_a_title_and_a_query() {
    let dashboard = dashboard();
    assert_eq!(
        dashboard["schemaVersion"].as_u64().map(|v| v >= 36),
        Some(true)
    );
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(variables.contains(&"datasource"), "{variables:?}");
    assert!(variables.contains(&"instance"), "{variables:?}");
    let panels = panels(&dashboard);
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.trim().is_empty(), "a panel without a title: {panel}");
        assert!(ids.insert(panel["id"].as_u64()), "{title}: duplicate id");
        let targets = panel["targets"].as_array().map_or(&[][..], Vec::as_slice);
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "{title}: an empty query");
            assert_eq!(
                target["datasource"]["uid"].as_str(),
                Some("${datasource}"),
                "{title}: not on the datasource variable"
            );
        }
    }
}

/// promtool parses each dashboard query (as a recording rule, Grafana's own
/// variables replaced by what they stand for).
#[test]
fn every_dashboard_query_is_valid_promql() {
    let dashboard = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard_queries(&dashboard).iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "1h")
            .replace("$job", "faultline")
            .replace("$instance", ".*");
        let quoted = serde_json::to_string(&expr).expect("a string");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {quoted}\n"
        ));
    }
    let file = std::env::temp_dir().join(format!("faultline-dashboard-{}.yml", std::process::id()));
    std::fs::write(&file, rules).expect("a temporary file");
    let result = std::panic::catch_unwind(|| {
        promtool(&["check", "rules", file.to_str().expect("a UTF-8 path")])
    });
    let _ = std::fs::remove_file(&file);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    let Exported { series, families } = exported();
    let process = exported_process_metrics();
    for name in PROCESS_METRICS {
        assert!(
            process.contains(name),
            "{name} is not exported: {process:?}"
        );
    }
    let mut unknown = Vec::new();
    let dashboard = dashboard();
    for (title, expr) in dashboard_queries(&dashboard) {
        for name in metric_names(&expr, "faultline_") {
            if !series.contains(&name) {
                unknown.push(format!("dashboard panel {title:?}: {name}"));
            }
        }
        for name in metric_names(&expr, "process_") {
            if !PROCESS_METRICS.contains(&name.as_str()) {
                unknown.push(format!("dashboard panel {title:?}: {name}"));
            }
        }
    }
    // The rules file's every mention, expressions and annotations alike, and the
    // dashboard's descriptions.
    for (file, text) in [
        ("packaging/alerts.yml", read("packaging/alerts.yml")),
        (
            "packaging/grafana-dashboard.json",
            read("packaging/grafana-dashboard.json"),
        ),
    ] {
        for name in metric_names(&text, "faultline_") {
            if !families.contains(&name) {
                unknown.push(format!("{file}: {name}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "not exported by the agent: {unknown:#?}\nexported: {series:#?}"
    );
}
