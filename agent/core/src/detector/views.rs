//! What observers outside an entity see of each of its hosts.
//!
//! Every host runs an agent, so some observers always sit inside a failed entity and
//! still reach their neighbours. A host is therefore judged once per level, each time
//! only from the observers outside its enclosing entity at that level: for its rack's
//! vote, from outside the rack; for its site's vote, from outside the site. Observers
//! inside neither veto nor count.
//!
//! At each level a view is *failing* (the observer's links to the host lose and do not
//! progress) or a *witness* (its links saw the host progress after the failure began,
//! plus `witness_slack`, the delay a peer's batch may have). Progress from before the
//! failure is no evidence against it, so the slowest or stalest observer cannot hold a
//! verdict back. A host is failing at a level when some views fail it, no witness
//! contradicts them, and two distinct observers agree or one has for `witness_slack`.
use std::time::Duration;

use super::{DetectorConfig, link::LinkStatus};

/// One observer's view of one host this tick, from all its links to that host.
#[derive(Debug, Clone, Copy)]
pub(super) struct View {
    pub(super) observer: u16,
    pub(super) status: LinkStatus,
    /// Failing: when the earliest of its failing links stopped progressing.
    pub(super) onset: Option<Duration>,
    /// The latest progress seen on any of its links to the host.
    pub(super) last_progress: Option<Duration>,
    /// Failing with loss evidence no older than `fresh_evidence`: only such a view
    /// may raise a new FAILED.
    pub(super) fresh: bool,
}

/// Folds one observer's links to a host (status, onset, last progress, last evidence)
/// into its view.
pub(super) fn view_of(
    observer: u16,
    links: impl Iterator<
        Item = (
            LinkStatus,
            Option<Duration>,
            Option<Duration>,
            Option<Duration>,
        ),
    >,
    now: Duration,
    cfg: &DetectorConfig,
) -> View {
    let (mut failed, mut healthy, mut degraded) = (false, false, false);
    let mut view = View {
        observer,
        status: LinkStatus::Unknown,
        onset: None,
        last_progress: None,
        fresh: false,
    };
    for (status, onset, progress, evidence) in links {
        view.last_progress = view.last_progress.max(progress);
        match status {
            LinkStatus::Failed => {
                failed = true;
                view.onset = Some(
                    view.onset
                        .map_or(onset.unwrap_or(now), |o| o.min(onset.unwrap_or(now))),
                );
                view.fresh |= evidence.is_some_and(|e| now.saturating_sub(e) <= cfg.fresh_evidence);
            }
            LinkStatus::Healthy => healthy = true,
            LinkStatus::Degraded => degraded = true,
            LinkStatus::Unknown => {}
        }
    }
    view.status = if failed && !healthy && !degraded {
        LinkStatus::Failed
    } else if degraded || failed {
        // Some links to the host fail and others deliver: the host answers, one path
        // (or one connection) is bad.
        LinkStatus::Degraded
    } else if healthy {
        LinkStatus::Healthy
    } else {
        LinkStatus::Unknown
    };
    if view.status != LinkStatus::Failed {
        view.onset = None;
        view.fresh = false;
    }
    view
}

/// Up to two distinct observers: enough to tell "one observer says so" from "several do".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct TwoObservers([Option<u16>; 2]);

impl TwoObservers {
    pub(super) fn add(&mut self, o: u16) {
        match self.0 {
            [None, _] => self.0[0] = Some(o),
            [Some(a), None] if a != o => self.0[1] = Some(o),
            _ => {}
        }
    }

    pub(super) fn merge(&mut self, other: Self) {
        for o in other.0.into_iter().flatten() {
            self.add(o);
        }
    }

    /// 0, 1, or 2 meaning "two or more".
    pub(super) fn count(self) -> u32 {
        u32::from(self.0[0].is_some()) + u32::from(self.0[1].is_some())
    }
}

/// A host as seen, this tick, from outside one of its enclosing entities.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Outside {
    pub(super) failing: u32,
    pub(super) witnesses: u32,
    /// Views that see the host deliver (healthy or degraded), witnesses or not.
    pub(super) reached: u32,
    pub(super) degraded: u32,
    /// The earliest onset among the failing views.
    pub(super) onset: Option<Duration>,
    pub(super) fresh: bool,
    pub(super) failing_observers: TwoObservers,
}

impl Outside {
    /// First pass: a failing view sets the onset the witnesses are measured against.
    pub(super) fn add_failing(&mut self, v: &View) {
        self.failing += 1;
        self.onset = match (self.onset, v.onset) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.fresh |= v.fresh;
        self.failing_observers.add(v.observer);
    }

    /// Second pass: a delivering view, which is a witness if it saw progress after
    /// the onset (with slack). `degraded`: the view counts as degraded.
    pub(super) fn add_delivering(&mut self, v: &View, degraded: bool, cfg: &DetectorConfig) {
        self.reached += 1;
        if degraded {
            self.degraded += 1;
        }
        if let Some(onset) = self.onset
            && v.last_progress
                .is_some_and(|p| p > onset + cfg.witness_slack)
        {
            self.witnesses += 1;
        }
    }

    /// The host's state from here.
    pub(super) fn status(&self, now: Duration, cfg: &DetectorConfig) -> LinkStatus {
        if self.failing > 0 && self.witnesses == 0 {
            // One observer alone waits twice the slack: long enough for a witness
            // with progress after `onset + witness_slack` to have reported it.
            let agreed = self.failing_observers.count() >= 2
                || self
                    .onset
                    .is_some_and(|o| now.saturating_sub(o) >= 2 * cfg.witness_slack);
            if agreed {
                return LinkStatus::Failed;
            }
            // One observer, not yet corroborated by time: no judgement either way.
            return if self.reached > 0 {
                LinkStatus::Healthy
            } else {
                LinkStatus::Unknown
            };
        }
        if self.failing > 0 || self.degraded > 0 {
            LinkStatus::Degraded
        } else if self.reached > 0 {
            LinkStatus::Healthy
        } else {
            LinkStatus::Unknown
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn failing(observer: u16, onset: u64) -> View {
        View {
            observer,
            status: LinkStatus::Failed,
            onset: Some(ms(onset)),
            last_progress: Some(ms(onset.saturating_sub(50))),
            fresh: true,
        }
    }

    fn delivering(observer: u16, progress: u64) -> View {
        View {
            observer,
            status: LinkStatus::Healthy,
            onset: None,
            last_progress: Some(ms(progress)),
            fresh: false,
        }
    }

    fn judge(views: &[View], now: u64) -> LinkStatus {
        let cfg = DetectorConfig::default();
        let mut o = Outside::default();
        for v in views.iter().filter(|v| v.status == LinkStatus::Failed) {
            o.add_failing(v);
        }
        for v in views.iter().filter(|v| v.status != LinkStatus::Failed) {
            o.add_delivering(v, false, &cfg);
        }
        o.status(ms(now), &cfg)
    }

    #[test]
    fn progress_from_before_the_failure_does_not_veto_it() {
        // Two observers fail the host; a third last heard from it before the failure.
        let views = [failing(1, 1000), failing(2, 1020), delivering(3, 1100)];
        assert_eq!(judge(&views, 1100), LinkStatus::Failed);
    }

    #[test]
    fn progress_after_the_failure_began_is_a_witness() {
        let views = [failing(1, 1000), failing(2, 1020), delivering(3, 1400)];
        assert_eq!(judge(&views, 1400), LinkStatus::Degraded);
    }

    #[test]
    fn one_observer_alone_waits_for_the_slack() {
        let views = [failing(1, 1000), delivering(3, 990)];
        assert_eq!(judge(&views, 1100), LinkStatus::Healthy, "not yet");
        assert_eq!(
            judge(&views, 1300),
            LinkStatus::Healthy,
            "a witness may still report"
        );
        assert_eq!(judge(&views, 1600), LinkStatus::Failed, "uncontradicted");
    }

    #[test]
    fn two_observers_are_counted_once_each() {
        let mut two = TwoObservers::default();
        for o in [4, 4, 4] {
            two.add(o);
        }
        assert_eq!(two.count(), 1);
        two.add(9);
        two.add(11);
        assert_eq!(two.count(), 2);
    }
}
