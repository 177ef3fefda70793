//! The announcer's state and action latencies, in Prometheus text on `/metrics`.
use std::{fmt::Write as _, sync::Mutex, time::Duration};

use std::collections::BTreeSet;

use super::{
    config::{AnnounceConfig, Prefix},
    decide::Plan,
    state::Feeds,
};

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Upper bounds of the action latency histogram, seconds: from the verdict that
/// decided an action to gobgpd's answer.
const BUCKETS: [f64; 9] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

pub(super) struct AnnounceMetrics {
    inner: Mutex<Inner>,
}

struct Inner {
    dry_run: bool,
    entities: Vec<(String, bool)>,
    announced: Vec<bool>,
    agents: Vec<(String, String)>,
    feeds_up: Vec<bool>,
    gobgp_up: bool,
    withdrawals: u64,
    announcements: u64,
    resyncs: u64,
    latency_counts: [u64; BUCKETS.len()],
    latency_count: u64,
    latency_sum: f64,
}

impl AnnounceMetrics {
    pub(super) fn new(cfg: &AnnounceConfig) -> Self {
        Self {
            inner: Mutex::new(Inner {
                dry_run: cfg.dry_run,
                entities: cfg
                    .served
                    .iter()
                    .map(|s| (s.entity.clone(), s.local))
                    .collect(),
                announced: cfg.served.iter().map(|_| true).collect(),
                agents: cfg
                    .agents
                    .iter()
                    .map(|a| (a.endpoint.clone(), a.site.clone()))
                    .collect(),
                feeds_up: cfg.agents.iter().map(|_| false).collect(),
                gobgp_up: false,
                withdrawals: 0,
                announcements: 0,
                resyncs: 0,
                latency_counts: [0; BUCKETS.len()],
                latency_count: 0,
                latency_sum: 0.0,
            }),
        }
    }

    fn with(&self, f: impl FnOnce(&mut Inner)) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut inner);
    }

    pub(super) fn feeds(&self, feeds: &Feeds) {
        self.with(|i| i.feeds_up = feeds.up_flags());
    }

    /// A new plan, after `before` was announced.
    pub(super) fn plan(&self, cfg: &AnnounceConfig, plan: &Plan, before: &BTreeSet<Prefix>) {
        self.with(|i| {
            i.withdrawals += count(before.difference(&plan.wanted).count());
            i.announcements += count(plan.wanted.difference(before).count());
            for (e, s) in cfg.served.iter().enumerate() {
                i.announced[e] = s.prefixes.iter().any(|p| plan.wanted.contains(p));
            }
        });
    }

    pub(super) fn applied(&self, took: Option<Duration>) {
        let Some(took) = took else { return };
        self.with(|i| {
            let s = took.as_secs_f64();
            for (b, count) in BUCKETS.iter().zip(&mut i.latency_counts) {
                if s <= *b {
                    *count += 1;
                }
            }
            i.latency_count += 1;
            i.latency_sum += s;
        });
    }

    pub(super) fn gobgp_up(&self, up: bool) {
        self.with(|i| i.gobgp_up = up);
    }

    pub(super) fn resynced(&self) {
        self.with(|i| i.resyncs += 1);
    }

    pub(super) fn render(&self) -> String {
        let mut s = String::new();
        self.with(|i| {
            let flag = |b: bool| u8::from(b);
            let _ = writeln!(s, "# HELP faultline_announce_announced Whether any of the local entity's prefixes is announced.");
            let _ = writeln!(s, "# TYPE faultline_announce_announced gauge");
            for ((entity, _), on) in i.entities.iter().zip(&i.announced).filter(|((_, local), _)| *local) {
                let _ = writeln!(s, "faultline_announce_announced{{entity=\"{entity}\"}} {}", flag(*on));
            }
            let _ = writeln!(s, "# HELP faultline_announce_feed_up Whether the agent's verdict feed is connected.");
            let _ = writeln!(s, "# TYPE faultline_announce_feed_up gauge");
            for ((endpoint, site), up) in i.agents.iter().zip(&i.feeds_up) {
                let _ = writeln!(s, "faultline_announce_feed_up{{agent=\"{endpoint}\",site=\"{site}\"}} {}", flag(*up));
            }
            let _ = writeln!(s, "# HELP faultline_announce_gobgp_up Whether the last call to gobgpd succeeded.");
            let _ = writeln!(s, "# TYPE faultline_announce_gobgp_up gauge");
            let _ = writeln!(s, "faultline_announce_gobgp_up {}", flag(i.gobgp_up));
            let _ = writeln!(s, "# TYPE faultline_announce_dry_run gauge");
            let _ = writeln!(s, "faultline_announce_dry_run {}", flag(i.dry_run));
            let _ = writeln!(s, "# HELP faultline_announce_withdrawals_total Prefixes withdrawn.");
            let _ = writeln!(s, "# TYPE faultline_announce_withdrawals_total counter");
            let _ = writeln!(s, "faultline_announce_withdrawals_total {}", i.withdrawals);
            let _ = writeln!(s, "# HELP faultline_announce_announcements_total Prefixes announced again.");
            let _ = writeln!(s, "# TYPE faultline_announce_announcements_total counter");
            let _ = writeln!(s, "faultline_announce_announcements_total {}", i.announcements);
            let _ = writeln!(s, "# HELP faultline_announce_resyncs_total Times gobgpd's table was found different and fixed.");
            let _ = writeln!(s, "# TYPE faultline_announce_resyncs_total counter");
            let _ = writeln!(s, "faultline_announce_resyncs_total {}", i.resyncs);
            let _ = writeln!(s, "# HELP faultline_announce_action_seconds From the verdict that decided an action to gobgpd's answer.");
            let _ = writeln!(s, "# TYPE faultline_announce_action_seconds histogram");
            for (b, count) in BUCKETS.iter().zip(&i.latency_counts) {
                let _ = writeln!(s, "faultline_announce_action_seconds_bucket{{le=\"{b}\"}} {count}");
            }
            let _ = writeln!(s, "faultline_announce_action_seconds_bucket{{le=\"+Inf\"}} {}", i.latency_count);
            let _ = writeln!(s, "faultline_announce_action_seconds_sum {}", i.latency_sum);
            let _ = writeln!(s, "faultline_announce_action_seconds_count {}", i.latency_count);
        });
        s
    }
}
