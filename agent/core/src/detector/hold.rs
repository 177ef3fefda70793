//! Hysteresis for one entity: enter FAILED fast, leave only after sustained health,
//! and hold longer each time it flaps.
use std::time::Duration;

use super::DetectorConfig;

#[derive(Debug, Clone, Default)]
pub(super) struct Hold {
    /// The raw condition has held continuously since.
    pub(super) failing_since: Option<Duration>,
    /// Failing, or recovering but not yet for long enough. Parents vote on this.
    pub(super) held: bool,
    recovering_since: Option<Duration>,
    /// Re-entries into FAILED within the flap window, and the last entry.
    flaps: u32,
    last_entry: Option<Duration>,
    /// DEGRADED is held too, so a gray failure does not flicker.
    degraded_until: Option<Duration>,
}

impl Hold {
    /// Feeds this tick's raw conditions. `sticky`: hold FAILED through recovery (hosts,
    /// observers). Racks and above pass false: they vote on children that are held
    /// already, and a second hold would keep them FAILED over healthy children.
    pub(super) fn update(
        &mut self,
        failing: bool,
        degraded: bool,
        sticky: bool,
        now: Duration,
        cfg: &DetectorConfig,
    ) {
        if failing {
            if self.failing_since.is_none() {
                self.failing_since = Some(now);
                if !self.held {
                    self.enter(now, cfg);
                }
            }
            self.recovering_since = None;
            self.held = true;
        } else {
            self.failing_since = None;
            if self.held && !sticky {
                self.held = false;
                self.recovering_since = None;
            }
            if self.held {
                let since = *self.recovering_since.get_or_insert(now);
                if now.saturating_sub(since) >= self.recovery_hold(cfg) {
                    self.held = false;
                    self.recovering_since = None;
                }
            }
        }
        if degraded {
            self.degraded_until = Some(now + cfg.recovery_hold);
        }
    }

    fn enter(&mut self, now: Duration, cfg: &DetectorConfig) {
        self.flaps = match self.last_entry {
            Some(last) if now.saturating_sub(last) <= cfg.flap_window => self.flaps + 1,
            _ => 0,
        };
        self.last_entry = Some(now);
    }

    /// The damped hold: doubled per recent flap, capped.
    pub(super) fn recovery_hold(&self, cfg: &DetectorConfig) -> Duration {
        let factor = 1u32 << self.flaps.min(16);
        cfg.recovery_hold
            .saturating_mul(factor)
            .min(cfg.max_recovery_hold)
    }

    /// Failing for at least `confirm`.
    pub(super) fn confirmed(&self, now: Duration, cfg: &DetectorConfig) -> bool {
        self.failing_since
            .is_some_and(|s| now.saturating_sub(s) >= cfg.confirm)
    }

    pub(super) fn degraded(&self, now: Duration) -> bool {
        self.degraded_until.is_some_and(|u| now < u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: u64) -> Duration {
        Duration::from_secs(v)
    }

    #[test]
    fn held_until_sustained_health_and_longer_after_flaps() {
        let cfg = DetectorConfig::default();
        let mut h = Hold::default();
        h.update(true, false, true, s(0), &cfg);
        assert!(h.held);
        h.update(false, false, true, s(1), &cfg);
        h.update(false, false, true, s(5), &cfg);
        assert!(h.held, "4 s of health is not enough");
        h.update(false, false, true, s(6), &cfg);
        assert!(!h.held, "5 s of health releases");
        // Flap: re-enter within the window, the hold doubles.
        h.update(true, false, true, s(7), &cfg);
        h.update(false, false, true, s(8), &cfg);
        h.update(false, false, true, s(14), &cfg);
        assert!(h.held, "a flapping entity is held 10 s");
        h.update(false, false, true, s(18), &cfg);
        assert!(!h.held);
    }
}
