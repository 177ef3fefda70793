//! `faultline links`: one row per link, the table an on-call engineer wants when a
//! peer misbehaves. Rows with loss come first, worst first.
use std::fmt::Write as _;

use serde::Serialize;

use crate::probe::{Link, LinkCounters, LinkSample};

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct LinkRow {
    pub link: Link,
    #[serde(flatten)]
    pub counters: LinkCounters,
    pub rtt_p50_us: Option<u64>,
    pub rtt_p99_us: Option<u64>,
    pub srtt_us: u64,
}

impl LinkRow {
    pub fn from_sample(s: &LinkSample) -> Self {
        Self {
            link: s.link,
            counters: s.delta,
            rtt_p50_us: s.rtt.quantile_us(0.5),
            rtt_p99_us: s.rtt.quantile_us(0.99),
            srtt_us: s.srtt_us,
        }
    }
}

/// Rows ordered worst first: most losses, then by address.
pub fn rows(samples: &[LinkSample]) -> Vec<LinkRow> {
    let mut rows: Vec<_> = samples.iter().map(LinkRow::from_sample).collect();
    rows.sort_by(|a, b| {
        b.counters
            .losses()
            .cmp(&a.counters.losses())
            .then(a.link.cmp(&b.link))
    });
    rows
}

pub fn render_table(rows: &[LinkRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<40} {:<40} {:>8} {:>6} {:>8} {:>8} {:>6} {:>10} {:>10} {:>9} {:>9} {:>9}",
        "LOCAL",
        "PEER",
        "RETRANS",
        "RTO",
        "SYN-RETX",
        "FAILCONN",
        "RST",
        "PROGRESS",
        "ACKED",
        "RTT-P50",
        "RTT-P99",
        "SRTT"
    );
    let us = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), fmt_us);
    for r in rows {
        let c = &r.counters;
        let _ = writeln!(
            s,
            "{:<40} {:<40} {:>8} {:>6} {:>8} {:>8} {:>6} {:>10} {:>10} {:>9} {:>9} {:>9}",
            r.link.local.to_string(),
            r.link.remote.to_string(),
            c.retrans_segs,
            c.rto_timeouts,
            c.syn_retrans,
            c.failed_connects,
            c.resets_rx,
            c.progress_segs,
            c.acked_segs,
            us(r.rtt_p50_us),
            us(r.rtt_p99_us),
            if r.srtt_us == 0 {
                "-".to_owned()
            } else {
                fmt_us(r.srtt_us)
            },
        );
    }
    if rows.is_empty() {
        s.push_str("(no TCP links seen)\n");
    }
    s
}

/// "<1ms" style: µs below 1 ms, ms with one decimal below 10 s.
fn fmt_us(us: u64) -> String {
    if us < 1000 {
        format!("{us}us")
    } else {
        #[expect(clippy::cast_precision_loss)]
        let ms = us as f64 / 1000.0;
        format!("{ms:.1}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_core::link::RttHistogram;

    fn sample(remote: &str, retrans: u64) -> LinkSample {
        LinkSample {
            link: Link {
                local: "10.0.0.1".parse().unwrap(),
                remote: remote.parse().unwrap(),
            },
            delta: LinkCounters {
                retrans_segs: retrans,
                progress_segs: 10,
                acked_segs: 4,
                ..LinkCounters::default()
            },
            rtt: RttHistogram::default(),
            total: LinkCounters::default(),
            srtt_us: 1500,
            since_progress: None,
            since_loss: None,
            since_acked: None,
        }
    }

    #[test]
    fn worst_link_first_and_json_has_flat_counters() {
        let rows = rows(&[sample("10.0.0.2", 0), sample("10.0.0.3", 7)]);
        assert_eq!(rows[0].link.remote.to_string(), "10.0.0.3");
        let table = render_table(&rows);
        assert!(
            table.lines().nth(1).unwrap().contains("10.0.0.3"),
            "{table}"
        );
        assert!(table.contains("1.5ms"));
        let header: Vec<_> = table.lines().next().unwrap().split_whitespace().collect();
        let row: Vec<_> = table.lines().nth(1).unwrap().split_whitespace().collect();
        let acked = header
            .iter()
            .position(|h| *h == "ACKED")
            .expect("an ACKED column");
        assert_eq!(
            (header[acked - 1], row[acked - 1], row[acked]),
            ("PROGRESS", "10", "4")
        );
        let json = serde_json::to_value(&rows[0]).unwrap();
        assert_eq!(json["retrans_segs"], 7);
        assert_eq!(json["acked_segs"], 4);
        assert_eq!(json["link"]["remote"], "10.0.0.3");
    }
}
