//! Roll-up: racks, cabinets and sites vote on their hosts, never on their children.
//!
//! Quorum counts distinct hosts, whatever the number of children: an entity fails when
//! at least `min_failed_hosts` of its hosts, and at least `min_failed_fraction` of those
//! observed, are failing as seen from outside it; when `min_observers` distinct
//! observers saw them fail, standing in at least two racks (no verdict above host
//! level rests on one observer, nor on one rack's, which may share its fault); and
//! when some host elsewhere is still healthy (the observers still reach the rest).
//!
//! A failure that one smaller child explains is that child's, not the entity's: a
//! dead rack that holds three of its cabinet's five hosts fails the rack, not the
//! cabinet. A one-rack cabinet is no smaller than its rack, so it fails as the
//! cabinet, with the rack failed because of it.
//!
//! A host counts as failing when two observers agree on it, or one has for long
//! enough that a witness would have spoken. The vote also counts a host failing by one
//! observer alone when that observer sees at least `min_failed_hosts` of the entity's
//! hosts fail, and `min_observers` observers do: observers whose RTOs fire at
//! different moments then corroborate each other across hosts, not only host by host.
//! Two observers each losing two hosts of one rack at once is the rack, not noise.
//!
//! DEGRADED is relative: an entity is degraded only when its share of degraded hosts
//! stands out, `degraded_standout` times the share among the hosts outside it, or when
//! the loss into its hosts, pooled, stands out from what the same observers lose
//! elsewhere even without its worst child (`Vote::lossy`, from `gray`). A rise across
//! the whole network, or every host an observer sees, is nobody's fault.
use super::{
    DetectorConfig,
    link::LinkStatus,
    views::{Blame, TwoObservers, TwoRacks},
};
use crate::topology::EntityId;

/// One entity's hosts this tick.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Vote {
    /// Hosts with a known state as seen from outside this entity, and of those the
    /// failing and the degraded ones.
    pub(super) observed: u32,
    pub(super) failed: u32,
    pub(super) degraded: u32,
    /// Hosts failing by one observer alone, not yet corroborated (see the module doc):
    /// they may fail the entity only when the vote is counted again by observer.
    pub(super) uncorroborated: u32,
    /// Some failing view has fresh loss evidence.
    pub(super) fresh: bool,
    pub(super) failing_observers: TwoObservers,
    /// The racks of the observers of the failing hosts, and of the failing or
    /// degraded ones.
    pub(super) failing_racks: TwoRacks,
    bad_racks: TwoRacks,
    /// Some degraded host is degraded by pooled loss, which names no observer.
    pooled_loss: bool,
    /// The entity's hosts, pooled, lose more than its observers lose elsewhere,
    /// without its worst child (see `gray`).
    pub(super) lossy: bool,
    /// The same hosts judged at host level (from every observer but themselves):
    /// known, and degraded or failing. For the stand-out comparison and the
    /// "others are fine" check.
    pub(super) host_level_observed: u32,
    pub(super) host_level_bad: u32,
    pub(super) host_level_healthy: u32,
    /// The child holding the first failing host, and whether another failing host
    /// lies in another child; the same for every observed host.
    failed_child: Option<EntityId>,
    failed_children_differ: bool,
    bad_child: Option<EntityId>,
    bad_children_differ: bool,
    observed_child: Option<EntityId>,
    observed_children_differ: bool,
}

fn note(first: &mut Option<EntityId>, differ: &mut bool, child: EntityId) {
    match *first {
        None => *first = Some(child),
        Some(c) if c != child => *differ = true,
        Some(_) => {}
    }
}

impl Vote {
    /// One host, in child `child` of this entity: its state from outside this entity
    /// (`outside`) and at host level.
    pub(super) fn add(
        &mut self,
        child: EntityId,
        outside: LinkStatus,
        (fresh, uncorroborated): (bool, bool),
        seen: &Blame,
        host_level: LinkStatus,
    ) {
        if outside != LinkStatus::Unknown {
            self.observed += 1;
            note(
                &mut self.observed_child,
                &mut self.observed_children_differ,
                child,
            );
        }
        match outside {
            LinkStatus::Unknown | LinkStatus::Healthy => {
                if uncorroborated {
                    self.uncorroborated += 1;
                    self.fresh |= fresh;
                }
            }
            LinkStatus::Failed => {
                self.failing_observers.merge(seen.failing_observers);
                self.failing_racks.merge(seen.failing_racks);
                self.bad_racks.merge(seen.failing_racks);
                self.fresh |= fresh;
                self.add_failed(child);
            }
            LinkStatus::Degraded => {
                self.degraded += 1;
                self.bad_racks.merge(seen.failing_racks);
                self.bad_racks.merge(seen.degraded_racks);
                self.pooled_loss |= seen.lossy;
                note(&mut self.bad_child, &mut self.bad_children_differ, child);
            }
        }
        match host_level {
            LinkStatus::Unknown => {}
            LinkStatus::Healthy => {
                self.host_level_observed += 1;
                self.host_level_healthy += 1;
            }
            LinkStatus::Degraded | LinkStatus::Failed => {
                self.host_level_observed += 1;
                self.host_level_bad += 1;
            }
        }
    }
}

impl Vote {
    /// Forgets the failed hosts, to count them again another way.
    pub(super) fn clear_failed(&mut self) {
        self.failed = 0;
        self.failing_observers = TwoObservers::default();
        self.failing_racks = TwoRacks::default();
        self.failed_child = None;
        self.failed_children_differ = false;
    }

    /// One failed host, in child `child`.
    pub(super) fn add_failed(&mut self, child: EntityId) {
        self.failed += 1;
        note(
            &mut self.failed_child,
            &mut self.failed_children_differ,
            child,
        );
        note(&mut self.bad_child, &mut self.bad_children_differ, child);
    }

    /// Worth counting again by observer: enough hosts fail, some uncorroborated.
    pub(super) fn may_fail_when_counted_by_observer(&self, cfg: &DetectorConfig) -> bool {
        self.uncorroborated > 0 && self.failed + self.uncorroborated >= cfg.min_failed_hosts
    }
}

/// All hosts, judged at host level: the population every entity is compared with.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Totals {
    pub(super) observed: u32,
    pub(super) bad: u32,
    pub(super) healthy: u32,
}

/// What the vote says about the entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Failed,
    Degraded,
    Healthy,
    Unobserved,
}

pub(super) fn judge(v: &Vote, all: &Totals, cfg: &DetectorConfig) -> Outcome {
    if v.observed == 0 {
        return Outcome::Unobserved;
    }
    let quorum = |n: u32| {
        n >= cfg.min_failed_hosts && f64::from(n) >= cfg.min_failed_fraction * f64::from(v.observed)
    };
    let healthy_elsewhere = all.healthy > v.host_level_healthy;
    let racks = cfg.min_observers.min(2);
    // Every failing host in one child, while other children hold observed hosts.
    let one_child_explains = !v.failed_children_differ && v.observed_children_differ;
    if quorum(v.failed)
        && v.failing_observers.count() >= cfg.min_observers
        && v.failing_racks.count() >= racks
        && healthy_elsewhere
        && !one_child_explains
    {
        return Outcome::Failed;
    }
    let one_child_is_bad = !v.bad_children_differ && v.observed_children_differ;
    let from_racks_enough = v.bad_racks.count() >= racks || v.pooled_loss;
    let gray = v.lossy && v.observed >= cfg.min_failed_hosts;
    if gray
        || (quorum(v.failed + v.degraded)
            && stands_out(v, all, cfg)
            && !one_child_is_bad
            && from_racks_enough)
    {
        return Outcome::Degraded;
    }
    Outcome::Healthy
}

/// The entity's share of bad hosts is `degraded_standout` times that outside it.
fn stands_out(v: &Vote, all: &Totals, cfg: &DetectorConfig) -> bool {
    let share = |bad: u32, of: u32| {
        if of == 0 {
            0.0
        } else {
            f64::from(bad) / f64::from(of)
        }
    };
    let inside = share(v.host_level_bad, v.host_level_observed);
    let outside = share(
        all.bad.saturating_sub(v.host_level_bad),
        all.observed.saturating_sub(v.host_level_observed),
    );
    inside > 0.0 && inside >= cfg.degraded_standout * outside
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hosts as (state, observer that saw it, child it sits in); each observer in a
    /// rack of its own.
    fn vote_in(hosts: &[(LinkStatus, u16, u32)]) -> Vote {
        let racked: Vec<_> = hosts
            .iter()
            .map(|&(s, o, child)| (s, o, 1000 + u32::from(o), child))
            .collect();
        vote_racked(&racked)
    }

    /// Hosts as (state, observer that saw it, the observer's rack, child it sits in).
    fn vote_racked(hosts: &[(LinkStatus, u16, u32, u32)]) -> Vote {
        let mut v = Vote::default();
        for &(s, observer, rack, child) in hosts {
            let mut seen = Blame::default();
            seen.failing_observers.add(observer);
            match s {
                LinkStatus::Failed => seen.failing_racks.add(EntityId(rack)),
                LinkStatus::Degraded => seen.degraded_racks.add(EntityId(rack)),
                _ => {}
            }
            v.add(EntityId(child), s, (true, false), &seen, s);
        }
        v
    }

    fn vote(hosts: &[(LinkStatus, u16)]) -> Vote {
        let in_one: Vec<_> = hosts.iter().map(|&(s, o)| (s, o, 0)).collect();
        vote_in(&in_one)
    }

    fn totals(v: &Vote, healthy_outside: u32, bad_outside: u32) -> Totals {
        Totals {
            observed: v.host_level_observed + healthy_outside + bad_outside,
            bad: v.host_level_bad + bad_outside,
            healthy: v.host_level_healthy + healthy_outside,
        }
    }

    use LinkStatus::{Degraded, Failed, Healthy};

    #[test]
    fn two_failed_hosts_seen_by_two_observers_fail_a_one_rack_cabinet() {
        let v = vote(&[(Failed, 1), (Failed, 2)]);
        assert_eq!(
            judge(&v, &totals(&v, 5, 0), &DetectorConfig::default()),
            Outcome::Failed
        );
    }

    #[test]
    fn one_bad_host_never_fails_its_rack() {
        let v = vote(&[(Failed, 1), (Healthy, 1), (Healthy, 2)]);
        assert_eq!(
            judge(&v, &totals(&v, 5, 0), &DetectorConfig::default()),
            Outcome::Healthy
        );
    }

    #[test]
    fn one_observer_alone_never_fails_an_entity() {
        let v = vote(&[(Failed, 1), (Failed, 1), (Failed, 1)]);
        assert_ne!(
            judge(&v, &totals(&v, 5, 0), &DetectorConfig::default()),
            Outcome::Failed
        );
    }

    #[test]
    fn observers_of_one_rack_alone_never_fail_or_degrade_an_entity() {
        let cfg = DetectorConfig::default();
        // Two observers, one rack: their ToR may be the fault.
        let v = vote_racked(&[(Failed, 1, 7, 0), (Failed, 2, 7, 0)]);
        assert_eq!(judge(&v, &totals(&v, 5, 0), &cfg), Outcome::Healthy);
        let v = vote_racked(&[(Failed, 1, 7, 0), (Failed, 2, 8, 0)]);
        assert_eq!(judge(&v, &totals(&v, 5, 0), &cfg), Outcome::Failed);
        let v = vote_racked(&[(Degraded, 1, 7, 0), (Degraded, 2, 7, 0), (Healthy, 3, 9, 0)]);
        assert_eq!(judge(&v, &totals(&v, 20, 1), &cfg), Outcome::Healthy);
        let v = vote_racked(&[(Degraded, 1, 7, 0), (Degraded, 2, 8, 0), (Healthy, 3, 9, 0)]);
        assert_eq!(judge(&v, &totals(&v, 20, 1), &cfg), Outcome::Degraded);
    }

    #[test]
    fn nothing_fails_when_nothing_anywhere_is_healthy() {
        let v = vote(&[(Failed, 1), (Failed, 2)]);
        assert_ne!(
            judge(&v, &totals(&v, 0, 4), &DetectorConfig::default()),
            Outcome::Failed
        );
    }

    #[test]
    fn a_failure_one_smaller_child_explains_is_the_childs() {
        let cfg = DetectorConfig::default();
        // Three of five hosts, all in child 1: that rack's failure, not the cabinet's.
        let v = vote_in(&[
            (Failed, 1, 1),
            (Failed, 2, 1),
            (Failed, 3, 1),
            (Healthy, 1, 2),
            (Healthy, 2, 2),
        ]);
        assert_ne!(judge(&v, &totals(&v, 5, 0), &cfg), Outcome::Failed);
        // Spread over two children: the cabinet's.
        let v = vote_in(&[
            (Failed, 1, 1),
            (Failed, 2, 1),
            (Failed, 3, 2),
            (Healthy, 1, 2),
            (Healthy, 2, 2),
        ]);
        assert_eq!(judge(&v, &totals(&v, 5, 0), &cfg), Outcome::Failed);
    }

    #[test]
    fn degraded_only_when_it_stands_out() {
        let cfg = DetectorConfig::default();
        let v = vote(&[(Degraded, 1), (Degraded, 2), (Healthy, 3)]);
        assert_eq!(
            judge(&v, &totals(&v, 20, 1), &cfg),
            Outcome::Degraded,
            "2/3 against 1/21"
        );
        assert_eq!(
            judge(&v, &totals(&v, 10, 10), &cfg),
            Outcome::Healthy,
            "2/3 against 1/2"
        );
    }
}
