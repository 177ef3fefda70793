//! Hysteresis for one entity: enter FAILED fast, leave only after sustained health,
//! and hold longer each time it flaps.
use std::time::Duration;

use super::{DetectorConfig, link::Stamp};

#[derive(Debug, Clone, Default)]
pub(super) struct Hold {
    /// The raw condition has held continuously since.
    failing_since: Stamp,
    /// FAILED: the condition held for `confirm`, and since then either still holds or
    /// has not yet been healthy for the recovery hold. A one-tick glitch never gets here.
    pub(super) held: bool,
    recovering_since: Stamp,
    /// Re-entries into FAILED within the flap window, and the last entry.
    flaps: u32,
    last_entry: Stamp,
    /// DEGRADED must hold for `degraded_confirm` (a transient, such as RTTs rising
    /// at different moments across links, is not a gray failure), and is then held
    /// for the recovery hold, so a gray failure does not flicker.
    degraded_since: Stamp,
    degraded_until: Stamp,
}

impl Hold {
    /// Feeds this tick's raw conditions.
    pub(super) fn update(
        &mut self,
        failing: bool,
        degraded: bool,
        now: Duration,
        cfg: &DetectorConfig,
    ) {
        self.update_confirmed_after(failing, degraded, now, cfg.confirm, cfg);
    }

    /// [`Self::update`], FAILED once the condition has held for `confirm`.
    pub(super) fn update_confirmed_after(
        &mut self,
        failing: bool,
        degraded: bool,
        now: Duration,
        confirm: Duration,
        cfg: &DetectorConfig,
    ) {
        if failing {
            let since = self.failing_since.get_or_set(now);
            self.recovering_since = Stamp::NEVER;
            if !self.held && now.saturating_sub(since) >= confirm {
                self.held = true;
                self.enter(now, cfg);
            }
        } else {
            self.failing_since = Stamp::NEVER;
            if self.held {
                let since = self.recovering_since.get_or_set(now);
                if now.saturating_sub(since) >= self.recovery_hold(cfg) {
                    self.held = false;
                    self.recovering_since = Stamp::NEVER;
                }
            }
        }
        if degraded {
            let since = self.degraded_since.get_or_set(now);
            if now.saturating_sub(since) >= cfg.degraded_confirm {
                self.degraded_until = Stamp::at(now + cfg.recovery_hold);
            }
        } else {
            self.degraded_since = Stamp::NEVER;
        }
    }

    /// Failing now but not yet for `confirm`: not announced, and what lies below waits.
    pub(super) fn pending(&self) -> bool {
        !self.held && self.failing_since != Stamp::NEVER
    }

    /// Since when the raw condition has held, if it holds.
    pub(super) fn failing_since(&self) -> Option<Duration> {
        self.failing_since.get()
    }

    /// When a pending failure will have held for `confirm`: the moment to judge again.
    pub(super) fn confirm_due(&self, cfg: &DetectorConfig) -> Option<Duration> {
        self.failing_since
            .get()
            .filter(|_| !self.held)
            .map(|since| since + cfg.confirm)
    }

    fn enter(&mut self, now: Duration, cfg: &DetectorConfig) {
        self.flaps = match self.last_entry.get() {
            Some(last) if now.saturating_sub(last) <= cfg.flap_window => self.flaps + 1,
            _ => 0,
        };
        self.last_entry = Stamp::at(now);
    }

    /// The damped hold: doubled per recent flap, capped.
    pub(super) fn recovery_hold(&self, cfg: &DetectorConfig) -> Duration {
        let factor = 1u32 << self.flaps.min(16);
        cfg.recovery_hold
            .saturating_mul(factor)
            .min(cfg.max_recovery_hold)
    }

    /// Degraded now, or the condition holds and waits for `degraded_confirm`.
    pub(super) fn degrading(&self, now: Duration) -> bool {
        self.degraded_since != Stamp::NEVER || self.degraded(now)
    }

    pub(super) fn degraded(&self, now: Duration) -> bool {
        self.degraded_until.get().is_some_and(|u| now < u)
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
        h.update(true, false, s(0), &cfg);
        assert!(!h.held && h.pending(), "not before `confirm`");
        h.update(true, false, s(1), &cfg);
        assert!(h.held);
        h.update(false, false, s(2), &cfg);
        h.update(false, false, s(6), &cfg);
        assert!(h.held, "4 s of health is not enough");
        h.update(false, false, s(7), &cfg);
        assert!(!h.held, "5 s of health releases");
        // Flap: re-enter within the window, the hold doubles.
        h.update(true, false, s(8), &cfg);
        h.update(true, false, s(9), &cfg);
        h.update(false, false, s(10), &cfg);
        h.update(false, false, s(16), &cfg);
        assert!(h.held, "a flapping entity is held 10 s");
        h.update(false, false, s(20), &cfg);
        assert!(!h.held);
    }

    #[test]
    fn a_failure_shorter_than_confirm_is_never_held() {
        let cfg = DetectorConfig::default();
        let mut h = Hold::default();
        let ms = Duration::from_millis;
        h.update(true, false, ms(1000), &cfg);
        h.update(false, false, ms(1000) + cfg.confirm / 2, &cfg);
        h.update(true, false, ms(2000), &cfg);
        h.update(false, false, ms(2000) + cfg.confirm - ms(1), &cfg);
        assert!(!h.held && !h.pending());
    }

    #[test]
    fn a_confirm_is_due_only_while_pending() {
        let cfg = DetectorConfig::default();
        let mut h = Hold::default();
        let ms = Duration::from_millis;
        assert_eq!(h.confirm_due(&cfg), None);
        h.update(true, false, ms(1000), &cfg);
        assert_eq!(h.confirm_due(&cfg), Some(ms(1000) + cfg.confirm));
        h.update(true, false, ms(1000) + cfg.confirm, &cfg);
        assert!(h.held);
        assert_eq!(h.confirm_due(&cfg), None, "held: nothing left to confirm");
    }
}
