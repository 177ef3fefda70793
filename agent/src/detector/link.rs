//! Health of one link (observer's address → peer address) from its per-tick counters.
//!
//! FAILED: losing and not progressing — an RTO, SYN retry or failed connect with no
//! segment from the peer since (or plain retransmissions with no progress for
//! `stall_timeout`). DEGRADED: still delivering, but retransmitting a lot or with an
//! RTT far above the link's own slow baseline. HEALTHY: delivering. UNKNOWN: no
//! evidence for `stale_after`.
use std::time::Duration;

use serde::Serialize;

use super::DetectorConfig;
use crate::probe::LinkCounters;

/// What the counters of one link say right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LinkStatus {
    Unknown,
    Healthy,
    Degraded,
    Failed,
}

/// One tick's worth of evidence about one link.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkDelta {
    pub counters: LinkCounters,
    /// Median smoothed RTT of the segments received this tick, µs.
    pub rtt_p50_us: Option<u64>,
}

/// Exponentially decayed sum with time constant `tau`.
#[derive(Debug, Clone, Copy, Default)]
struct Decayed {
    value: f64,
    at: Duration,
}

impl Decayed {
    fn decay_to(&mut self, now: Duration, tau: Duration) {
        let dt = now.saturating_sub(self.at).as_secs_f64();
        self.value *= (-dt / tau.as_secs_f64().max(1e-9)).exp();
        self.at = now;
    }

    #[expect(clippy::cast_precision_loss)]
    fn add(&mut self, n: u64, now: Duration, tau: Duration) {
        self.decay_to(now, tau);
        self.value += n as f64;
    }

    fn at(&self, now: Duration, tau: Duration) -> f64 {
        let mut copy = *self;
        copy.decay_to(now, tau);
        copy.value
    }
}

/// The state kept per link between ticks: ~120 bytes, so 100k links fit in ~12 MB.
#[derive(Debug, Clone, Default)]
pub struct LinkHealth {
    last_evidence: Option<Duration>,
    last_progress: Option<Duration>,
    /// Since when the link has been losing with no progress.
    stall_since: Option<Duration>,
    /// RTOs + SYN retries + failed connects since `stall_since`.
    stall_hard: u64,
    /// Retransmissions since `stall_since`.
    stall_retrans: u64,
    retrans: Decayed,
    progress: Decayed,
    /// Recent and baseline RTT in µs (0 = no sample yet).
    rtt_recent_us: f64,
    rtt_baseline_us: f64,
    rtt_at: Duration,
    /// The counters of the latest tick with any evidence, for verdict evidence.
    pub last_delta: LinkCounters,
}

impl LinkHealth {
    /// Folds in one tick of counters observed at `now`.
    pub fn observe(&mut self, delta: &LinkDelta, now: Duration, cfg: &DetectorConfig) {
        let c = &delta.counters;
        if c.is_zero() && delta.rtt_p50_us.is_none() {
            return;
        }
        self.last_evidence = Some(now);
        self.last_delta = *c;
        // A reset means the peer's stack answered: it is reachable.
        let reached = c.progress_segs > 0 || c.resets_rx > 0;
        let hard = c.rto_timeouts + c.syn_retrans + c.failed_connects;
        if reached {
            self.last_progress = Some(now);
            self.stall_since = None;
            self.stall_hard = 0;
            self.stall_retrans = 0;
        } else if hard + c.retrans_segs > 0 {
            self.stall_since.get_or_insert(now);
            self.stall_hard += hard;
            self.stall_retrans += c.retrans_segs;
        }
        self.retrans
            .add(c.retrans_segs + c.rto_timeouts, now, cfg.loss_window);
        self.progress.add(c.progress_segs, now, cfg.loss_window);
        if let Some(rtt) = delta.rtt_p50_us {
            self.observe_rtt(rtt, now, cfg);
        }
    }

    #[expect(clippy::cast_precision_loss)]
    fn observe_rtt(&mut self, rtt_us: u64, now: Duration, cfg: &DetectorConfig) {
        let sample = rtt_us as f64;
        if self.rtt_baseline_us == 0.0 {
            self.rtt_recent_us = sample;
            self.rtt_baseline_us = sample;
            self.rtt_at = now;
            return;
        }
        let dt = now.saturating_sub(self.rtt_at).as_secs_f64();
        self.rtt_at = now;
        let weight = |tau: Duration| 1.0 - (-dt / tau.as_secs_f64().max(1e-9)).exp();
        self.rtt_recent_us += weight(cfg.rtt_recent_window) * (sample - self.rtt_recent_us);
        // Freeze the baseline while the RTT is inflated, so a long gray failure does
        // not become the new normal.
        if !self.rtt_inflated(cfg) {
            self.rtt_baseline_us +=
                weight(cfg.rtt_baseline_window) * (sample - self.rtt_baseline_us);
        }
    }

    fn rtt_inflated(&self, cfg: &DetectorConfig) -> bool {
        self.rtt_baseline_us > 0.0
            && self.rtt_recent_us >= self.rtt_baseline_us * cfg.rtt_factor
            && self.rtt_recent_us - self.rtt_baseline_us >= cfg.rtt_min_increase.as_secs_f64() * 1e6
    }

    /// The link's status at `now`.
    pub fn status(&self, now: Duration, cfg: &DetectorConfig) -> LinkStatus {
        let Some(last) = self.last_evidence else {
            return LinkStatus::Unknown;
        };
        if now.saturating_sub(last) > cfg.stale_after {
            return LinkStatus::Unknown;
        }
        if let Some(since) = self.stall_since
            && (self.stall_hard > 0 || now.saturating_sub(since) >= cfg.stall_timeout)
        {
            return LinkStatus::Failed;
        }
        let retrans = self.retrans.at(now, cfg.loss_window);
        let progress = self.progress.at(now, cfg.loss_window);
        if retrans >= cfg.degraded_min_retrans
            && retrans >= cfg.degraded_loss_ratio * progress.max(1.0)
        {
            return LinkStatus::Degraded;
        }
        if self.rtt_inflated(cfg) {
            return LinkStatus::Degraded;
        }
        match self.last_progress {
            Some(p) if now.saturating_sub(p) <= cfg.stale_after => LinkStatus::Healthy,
            // Losing a little with no progress yet: not enough to call.
            _ => LinkStatus::Unknown,
        }
    }

    /// How long since the peer last delivered anything, if ever.
    pub fn since_progress(&self, now: Duration) -> Option<Duration> {
        self.last_progress.map(|p| now.saturating_sub(p))
    }

    /// RTOs, SYN retries and failed connects since the stall began.
    pub fn stall_hard(&self) -> u64 {
        self.stall_hard
    }

    pub fn stall_retrans(&self) -> u64 {
        self.stall_retrans
    }

    /// Recent and baseline RTT, µs.
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    pub fn rtt_us(&self) -> (u64, u64) {
        (self.rtt_recent_us as u64, self.rtt_baseline_us as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(progress: u64, retrans: u64, rto: u64) -> LinkDelta {
        LinkDelta {
            counters: LinkCounters {
                progress_segs: progress,
                retrans_segs: retrans,
                rto_timeouts: rto,
                ..LinkCounters::default()
            },
            rtt_p50_us: None,
        }
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn rto_without_progress_fails_and_progress_heals() {
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        l.observe(&delta(100, 0, 0), ms(0), &cfg);
        assert_eq!(l.status(ms(0), &cfg), LinkStatus::Healthy);
        l.observe(&delta(0, 1, 1), ms(300), &cfg);
        assert_eq!(l.status(ms(300), &cfg), LinkStatus::Failed);
        l.observe(&delta(5, 0, 0), ms(400), &cfg);
        assert_eq!(l.status(ms(400), &cfg), LinkStatus::Healthy);
    }

    #[test]
    fn retransmissions_alone_fail_only_after_the_stall_timeout() {
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        l.observe(&delta(100, 0, 0), ms(0), &cfg);
        l.observe(&delta(0, 2, 0), ms(100), &cfg);
        assert_ne!(l.status(ms(500), &cfg), LinkStatus::Failed);
        assert_eq!(l.status(ms(1100), &cfg), LinkStatus::Failed);
    }

    #[test]
    fn heavy_loss_with_progress_is_degraded_not_failed() {
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        for t in 0..20 {
            l.observe(&delta(100, 10, u64::from(t % 5 == 0)), ms(t * 100), &cfg);
        }
        assert_eq!(l.status(ms(1900), &cfg), LinkStatus::Degraded);
    }

    #[test]
    fn rtt_far_above_baseline_is_degraded() {
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        let with_rtt = |us| LinkDelta {
            rtt_p50_us: Some(us),
            ..delta(50, 0, 0)
        };
        for t in 0..100 {
            l.observe(&with_rtt(200), ms(t * 100), &cfg);
        }
        assert_eq!(l.status(ms(9900), &cfg), LinkStatus::Healthy);
        for t in 100..130 {
            l.observe(&with_rtt(40_000), ms(t * 100), &cfg);
        }
        assert_eq!(l.status(ms(12_900), &cfg), LinkStatus::Degraded);
        let (recent, baseline) = l.rtt_us();
        assert!(baseline < 1000 && recent > 20_000, "{recent} {baseline}");
    }

    #[test]
    fn silence_becomes_unknown() {
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        assert_eq!(l.status(ms(0), &cfg), LinkStatus::Unknown);
        l.observe(&delta(10, 0, 0), ms(0), &cfg);
        assert_eq!(l.status(cfg.stale_after + ms(1), &cfg), LinkStatus::Unknown);
    }
}
