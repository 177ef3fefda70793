//! The observers: this agent and its peers. Each tick an observer is judged as a
//! whole, from where it stands in the topology:
//!
//! - **Lost.** An observer not heard from for `observer_timeout` (batches come every
//!   tick) says nothing: its evidence is set aside at once, never left to linger.
//! - **Cut off.** A partition is named at its level from both sides. Seen from inside,
//!   an observer whose links to everything outside some enclosing entity E fail while
//!   it still reaches hosts inside E names E as cut off, and blames nothing outside it:
//!   its views outside E are set aside. E is the highest such entity below the first
//!   level whose inside fails too; E is its own host when it reaches nothing at all.
//! - **Degraded everywhere.** An observer that sees most of its hosts degraded is the
//!   cause itself (its CPU, its NIC, the whole network): its degraded views are not
//!   blamed on anyone.
use std::{sync::Arc, time::Duration};

use super::{
    DetectorConfig,
    hold::Hold,
    link::LinkStatus,
    views::{PooledLoss, View},
};
use crate::topology::{EntityId, Level, PerLevel};

/// Hosts an observer sees on one side of an entity boundary, this tick.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Tally {
    pub(super) observed: u32,
    pub(super) failed: u32,
    pub(super) reached: u32,
    /// The rack (or host, when unplaced) of the first failed host, and whether
    /// another failed host lies elsewhere: one remote rack failing is not a cut.
    first_failed_group: Option<EntityId>,
    failed_groups_differ: bool,
}

impl Tally {
    fn add(&mut self, status: LinkStatus, group: EntityId) {
        match status {
            LinkStatus::Unknown => return,
            LinkStatus::Failed => {
                self.failed += 1;
                match self.first_failed_group {
                    None => self.first_failed_group = Some(group),
                    Some(g) if g != group => self.failed_groups_differ = true,
                    Some(_) => {}
                }
            }
            LinkStatus::Healthy | LinkStatus::Degraded => self.reached += 1,
        }
        self.observed += 1;
    }
}

pub(super) struct Observer {
    pub(super) name: Arc<str>,
    /// Its own host, placed from the local address of its links, and the entities
    /// enclosing it.
    pub(super) host: Option<EntityId>,
    pub(super) around: PerLevel<Option<EntityId>>,
    pub(super) last_heard: Option<Duration>,
    /// Heard again at, after it was forgotten as a lost peer: a stall that began
    /// before this (while it was away), or within the recovery hold after, is old
    /// news and never raises a new FAILED.
    pub(super) rejoined_at: Option<Duration>,
    /// Forgotten as a lost peer and not heard since.
    pub(super) forgotten: bool,
    /// Held while cut off, with the level of the entity it names: its views outside
    /// that entity stay set aside until it has been healthy for the recovery hold,
    /// since its connections come back one backed-off RTO at a time.
    pub(super) cut: Hold,
    pub(super) cut_level: Option<Level>,
    /// This tick's own finding, before hysteresis: the entity's verdict holds itself.
    pub(super) cut_now: Option<Level>,
    // This tick:
    pub(super) inside: PerLevel<Tally>,
    pub(super) outside: PerLevel<Tally>,
    /// Its views with a known state, failing, and degraded. Only an observer with
    /// enough failing views can be cut off, so only those are tallied by level.
    pub(super) known_views: u32,
    pub(super) failed_views: u32,
    /// The earliest onset among its failing views this tick, ms (`u64::MAX`: none).
    first_onset_ms: u64,
    pub(super) degraded_views: u32,
    /// Its pooled loss to hosts by how many of their enclosing entities do not hold it
    /// (as [`super::views::View::outside`]): this tick's, and the last tick's, which
    /// the views compare each host with (`views::expected_ratio`).
    pub(super) reach_loss: [PooledLoss; 5],
    pub(super) reach_loss_before: [PooledLoss; 5],
    pub(super) discount_degraded: bool,
    /// This tick: tallied by level (it may be cut off), and its views of hosts in
    /// other sites that progressed after its failures began (the bound that rules a
    /// cut out without tallying).
    pub(super) tallied: bool,
    far_reached: u32,
    /// Where its views count this tick: everywhere, or only inside this entity.
    judges_only_inside: Option<(Level, EntityId)>,
}

impl Observer {
    pub(super) fn new(name: Arc<str>) -> Self {
        Self {
            name,
            host: None,
            around: PerLevel::default(),
            last_heard: None,
            rejoined_at: None,
            forgotten: false,
            cut: Hold::default(),
            cut_level: None,
            cut_now: None,
            inside: PerLevel::default(),
            outside: PerLevel::default(),
            known_views: 0,
            failed_views: 0,
            first_onset_ms: u64::MAX,
            degraded_views: 0,
            reach_loss: [PooledLoss::default(); 5],
            reach_loss_before: [PooledLoss::default(); 5],
            discount_degraded: false,
            tallied: false,
            far_reached: 0,
            judges_only_inside: None,
        }
    }

    /// Notes a batch from it at `now`.
    pub(super) fn heard(&mut self, now: Duration) {
        if self.forgotten {
            self.forgotten = false;
            self.rejoined_at = Some(now);
        }
        self.last_heard = Some(now);
    }

    /// Heard from within `observer_timeout`.
    pub(super) fn alive(&self, now: Duration, cfg: &DetectorConfig) -> bool {
        self.last_heard
            .is_some_and(|t| now.saturating_sub(t) <= cfg.observer_timeout)
    }

    pub(super) fn begin_tick(&mut self) {
        self.inside = PerLevel::default();
        self.outside = PerLevel::default();
        self.known_views = 0;
        self.failed_views = 0;
        self.first_onset_ms = u64::MAX;
        self.degraded_views = 0;
        self.far_reached = 0;
        self.reach_loss_before = std::mem::take(&mut self.reach_loss);
    }

    /// Counts one view, whatever its host.
    pub(super) fn count(&mut self, v: View) {
        match v.status {
            LinkStatus::Unknown => return,
            LinkStatus::Failed => {
                self.failed_views += 1;
                self.first_onset_ms = self.first_onset_ms.min(v.onset_ms);
            }
            LinkStatus::Degraded => self.degraded_views += 1,
            LinkStatus::Healthy => {}
        }
        self.known_views += 1;
    }

    /// Enough failing views that it might be cut off: worth tallying by level.
    pub(super) fn may_be_cut_off(&self, cfg: &DetectorConfig) -> bool {
        self.failed_views >= cfg.local_fault_min_hosts || self.cut.held || self.cut.pending()
    }

    /// Tallies one view of a host enclosed by `host_around`, on each side of each of
    /// its own enclosing entities; `group` is the host's rack (or the host itself).
    pub(super) fn tally(
        &mut self,
        v: &View,
        host_around: &PerLevel<Option<EntityId>>,
        group: EntityId,
    ) {
        // A host it still reaches only counts as reached if it progressed after this
        // observer's failures began: an idle link's old progress says nothing about
        // whether its NIC, rack or site still reaches that host.
        let status = match v.status {
            LinkStatus::Healthy | LinkStatus::Degraded
                if v.two_way_ms() == u64::MAX || v.two_way_ms() <= self.first_onset_ms =>
            {
                return;
            }
            s => s,
        };
        for level in Level::ALL {
            let Some(mine) = self.around[level] else {
                break;
            };
            if host_around[level] == Some(mine) {
                self.inside[level].add(status, group);
            } else {
                self.outside[level].add(status, group);
            }
        }
    }

    /// Counts a view of a host in another site that still progresses both ways after
    /// this observer's failures began: it is reached at every level [`Self::tally`]
    /// counts (each level's outside holds the other sites).
    pub(super) fn count_far_reach(&mut self, v: &View) {
        let two_way = v.two_way_ms();
        if v.outside == 4
            && matches!(v.status, LinkStatus::Healthy | LinkStatus::Degraded)
            && two_way != u64::MAX
            && two_way > self.first_onset_ms
        {
            self.far_reached += 1;
        }
    }

    /// Reaches too many hosts in other sites to be cut off at any level, whatever the
    /// tallies would say: at each level at least `far_reached` hosts outside are
    /// reached and at most `failed_views` fail, so the reached share there is at least
    /// far / (far + failed). A held or pending cut is tallied regardless (its
    /// evidence is built from the tallies).
    pub(super) fn reaches_too_far_to_be_cut_off(&self, cfg: &DetectorConfig) -> bool {
        let frac = cfg.local_fault_max_healthy_fraction;
        if self.cut.held || self.cut.pending() || frac >= 1.0 {
            return false;
        }
        f64::from(self.far_reached) * (1.0 - frac) > frac * f64::from(self.failed_views)
    }

    /// The observer's own judgement for this tick: is it cut off, and does it see
    /// everything degraded.
    pub(super) fn judge(&mut self, now: Duration, cfg: &DetectorConfig) {
        let raw = self.cut_off_level(cfg);
        // Coming back from a cut, what the observer reaches again first (its
        // neighbours, one backed-off RTO at a time) widens the region it seems cut off
        // in, and its stalls from the fault inside that wider region are old: a rack
        // cut off recovers as "my site is cut off, and these hosts in it are dead". The
        // narrowest region stays until the recovery hold has passed.
        let cut = match (raw, self.cut_level.filter(|_| self.cut.held)) {
            (Some(now_found), Some(held)) => Some(now_found.min(held)),
            (found, _) => found,
        };
        self.cut_now = cut;
        // Held (and its region kept, above) only once found across batches: the batch
        // that brings an observer's first failures cannot also show its neighbours
        // answering after them, so on its own it finds the observer cut off at its
        // host. Judged again before the next batch (a confirm falling due), that alone
        // held the observer's host cut off for the whole recovery hold.
        self.cut
            .update_confirmed_after(cut.is_some(), false, now, cut_confirm(cfg), cfg);
        if cut.is_some() {
            self.cut_level = cut;
        } else if !self.cut.held {
            self.cut_level = None;
        }
        let observed = self.known_views;
        self.discount_degraded = observed >= cfg.local_fault_min_hosts
            && f64::from(self.degraded_views)
                >= cfg.degraded_observer_fraction * f64::from(observed);
        // The raw finding counts at once (no confirm): a cut-off observer's failing
        // views would otherwise race its own verdict and blame the outside for a few
        // ticks. The held one keeps them aside while its connections come back.
        let level = self.cut_now.or(self
            .cut_level
            .filter(|_| self.cut.held || self.cut.pending()));
        self.judges_only_inside = level.and_then(|l| self.around[l].map(|e| (l, e)));
    }

    /// The entity this observer is cut off in, if any (see the module doc).
    fn cut_off_level(&self, cfg: &DetectorConfig) -> Option<Level> {
        let mut found = None;
        for level in Level::ALL {
            if self.around[level].is_none() {
                break;
            }
            let inside = self.inside[level];
            if level != Level::Host {
                if inside.failed > 0 && 2 * inside.failed >= inside.reached {
                    break; // the inside fails too (a third or more): the cut lies lower
                }
                if inside.reached == 0 {
                    continue; // nothing seen inside: no claim about this entity
                }
            }
            let out = self.outside[level];
            if out.failed >= cfg.local_fault_min_hosts
                && out.failed_groups_differ
                && f64::from(out.reached)
                    <= cfg.local_fault_max_healthy_fraction * f64::from(out.observed)
            {
                found = Some(level);
            }
        }
        found
    }

    /// The entity it names as cut off, while that is held.
    pub(super) fn cut_off_entity(&self) -> Option<EntityId> {
        self.cut
            .held
            .then_some(self.cut_level)
            .flatten()
            .and_then(|l| self.around[l])
    }

    /// The entity it finds itself cut off in this tick, before hysteresis.
    pub(super) fn cut_off_entity_now(&self) -> Option<EntityId> {
        self.cut_now.and_then(|l| self.around[l])
    }

    /// The entity it names cut off: found this tick, and found continuously for
    /// [`cut_confirm`]. Setting its views aside needs no proof; naming a verdict does.
    pub(super) fn cut_off_entity_named(
        &self,
        now: Duration,
        cfg: &DetectorConfig,
    ) -> Option<EntityId> {
        let since = self.cut.failing_since()?;
        (now.saturating_sub(since) >= cut_confirm(cfg))
            .then(|| self.cut_off_entity_now())
            .flatten()
    }

    /// When its cut-off finding will have held for [`cut_confirm`], if pending.
    pub(super) fn cut_confirm_due(&self, cfg: &DetectorConfig) -> Option<Duration> {
        self.cut_now?;
        self.cut
            .failing_since()
            .map(|since| since + cut_confirm(cfg))
    }

    /// Whether its view of a host enclosed by `host_around` counts: not while it is
    /// cut off from that host's side of the boundary.
    /// The rack it stands in. Observers the topology places in no rack share one
    /// stand-in: peers outside the topology never corroborate each other into a
    /// verdict above host level; one in a rack must agree.
    pub(super) fn rack(&self) -> EntityId {
        self.around[Level::Rack].unwrap_or(EntityId(u32::MAX))
    }

    /// Every view it has counts as it is: none set aside, degraded ones not
    /// discounted.
    pub(super) fn judges_everywhere(&self) -> bool {
        self.judges_only_inside.is_none() && !self.discount_degraded
    }

    pub(super) fn may_judge(&self, host_around: &PerLevel<Option<EntityId>>) -> bool {
        match self.judges_only_inside {
            Some((level, e)) => host_around[level] == Some(e),
            None => true,
        }
    }
}

/// How long an observer must find itself cut off before it names the entity: longer
/// than a tick (half of `observer_timeout`, three ticks), so its finding has seen a
/// batch after the one it came from. Progress and a new failure in one batch say
/// nothing of their order; judged again a few milliseconds later, the same batch
/// says the same.
fn cut_confirm(cfg: &DetectorConfig) -> Duration {
    cfg.confirm.max(cfg.observer_timeout / 2)
}
