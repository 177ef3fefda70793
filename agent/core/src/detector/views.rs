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
use crate::topology::EntityId;

/// One observer's view of one host this tick, from all its links to that host. 24
/// bytes: a tick writes one per (observer, host) pair, 100k of them at fleet scale.
#[derive(Debug, Clone, Copy)]
pub(super) struct View {
    /// Failing: when the earliest of its failing links stopped progressing, ms.
    pub(super) onset_ms: u64,
    /// The latest progress on any of its links to the host, ms: the host is alive.
    progress_ms: u64,
    /// How long before `progress_ms` the latest two-way progress was (our data
    /// acknowledged, where ACKs are counted), ms, saturated. In the padding.
    two_way_lag_ms: u16,
    pub(super) observer: u16,
    pub(super) status: LinkStatus,
    /// Failing with loss evidence no older than `fresh_evidence`: only such a view
    /// may raise a new FAILED.
    pub(super) fresh: bool,
    /// How long before the sampled moment the kernel's was, ms: failing, before
    /// `onset_ms`, the earliest first loss on its failing links (saturated at 255);
    /// otherwise, before its two-way progress, the latest answer crossing towards the
    /// observer ([`Self::answered_ms`]; saturated at 254, `u8::MAX`: none). In the
    /// padding.
    lead_ms: u8,
    /// How many of the host's enclosing entities, from the host up, do not hold the
    /// observer (0: none — the observer is the host itself; 4: not even its site).
    pub(super) outside: u8,
}

const NEVER: u64 = u64::MAX;

/// A time on the detector's clock in ms, as views keep it.
pub(super) fn ms(t: Duration) -> u64 {
    u64::try_from(t.as_millis()).unwrap_or(NEVER - 1)
}

impl View {
    /// Failing: the kernel's date of the earliest first loss on its links, ms. A
    /// partition began no later than that, and any answer from elsewhere that crossed
    /// the path later proves the observer is not inside it.
    pub(super) fn first_loss_ms(&self) -> u64 {
        self.onset_ms.saturating_sub(u64::from(self.lead_ms))
    }

    /// Not failing: when the host's latest answer to the observer's data crossed the
    /// path towards it at the latest, ms (`u64::MAX`: none, or none known recent
    /// enough): the latest ACK of its data by the kernel's clock, less half an RTT
    /// (`LinkDelta::acked_age_ms`; where the observer does not date its ACKs, the
    /// sample's moment less half an RTT).
    ///
    /// An ACK that crossed a partition just before it closed still comes in for up to
    /// a one-way delay after it (the far sites' longest); by its sample, or even by
    /// its own arrival, it passes for a host reached after the partition began. Dated
    /// this way it never comes after the partition began, hence never after the first
    /// loss the partition caused: an observer inside cannot prove it still reaches
    /// elsewhere, one outside can, half an RTT after its next answer.
    pub(super) fn answered_ms(&self) -> u64 {
        let two_way = self.two_way_ms();
        if self.status == LinkStatus::Failed || two_way == NEVER || self.lead_ms == u8::MAX {
            return NEVER;
        }
        two_way.saturating_sub(u64::from(self.lead_ms))
    }

    /// The latest two-way progress on its links to the host, ms (`u64::MAX`: never):
    /// the observer's own path there works. Segments that only come in (the host
    /// sends, the observer sends nothing) show the host alive, not the observer's
    /// path out: an observer that only receives must not pass for one that reaches.
    pub(super) fn two_way_ms(&self) -> u64 {
        if self.progress_ms == NEVER || self.two_way_lag_ms == u16::MAX {
            return NEVER;
        }
        self.progress_ms - u64::from(self.two_way_lag_ms)
    }
}

/// One link's status, then its stall onset, last progress, last two-way progress and
/// last evidence in ms (`u64::MAX`: never), how long before its onset the kernel
/// dates the stall, and how long before its two-way progress its latest answer
/// crossed.
pub(super) type LinkFacts = (LinkStatus, (u64, u64, u64, u64, u16, u16));

/// The clock a tick judges views by, ms: now, `fresh_evidence`, and per observer the
/// moment before which a stall is old news (see `Detector::host_views`).
#[derive(Debug, Clone, Copy)]
pub(super) struct ViewClock {
    pub(super) now_ms: u64,
    pub(super) fresh_ms: u64,
    pub(super) news_since_ms: u64,
}

/// Folds one observer's links to a host into its view. Folded in locals and built
/// once: a view assembled field by field on the stack and then copied whole stalls
/// the copy, 100k times a tick.
#[inline(always)]
pub(super) fn view_of(
    observer: u16,
    outside: u8,
    links: impl Iterator<Item = LinkFacts>,
    clock: ViewClock,
) -> View {
    let now_ms = clock.now_ms;
    let (mut failed, mut healthy, mut degraded, mut fresh) = (false, false, false, false);
    let (mut onset_ms, mut progress_ms, mut two_way) = (NEVER, NEVER, NEVER);
    let (mut first_loss_ms, mut answered_ms) = (NEVER, NEVER);
    for (status, (onset, progress, both_ways, evidence, lead, answer_lead)) in links {
        if progress != NEVER && (progress_ms == NEVER || progress > progress_ms) {
            progress_ms = progress;
        }
        if both_ways != NEVER && (two_way == NEVER || both_ways > two_way) {
            two_way = both_ways;
        }
        if both_ways != NEVER {
            let answered = both_ways.saturating_sub(u64::from(answer_lead));
            if answered_ms == NEVER || answered > answered_ms {
                answered_ms = answered;
            }
        }
        match status {
            LinkStatus::Failed => {
                failed = true;
                let (onset, lead) = if onset == NEVER {
                    (now_ms, 0)
                } else {
                    (onset, lead)
                };
                onset_ms = onset_ms.min(onset);
                first_loss_ms = first_loss_ms.min(onset.saturating_sub(u64::from(lead)));
                fresh |= evidence != NEVER && now_ms.saturating_sub(evidence) <= clock.fresh_ms;
            }
            LinkStatus::Healthy => healthy = true,
            LinkStatus::Degraded => degraded = true,
            LinkStatus::Unknown => {}
        }
    }
    let two_way_lag_ms = two_way_lag(progress_ms, two_way);
    let status = if failed && !healthy && !degraded {
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
    let failing = status == LinkStatus::Failed;
    View {
        onset_ms: if failing { onset_ms } else { NEVER },
        progress_ms,
        two_way_lag_ms,
        observer,
        status,
        // A stall from before the observer's news began keeps a failure, never
        // raises one.
        fresh: failing && fresh && onset_ms >= clock.news_since_ms,
        lead_ms: if failing {
            loss_lead(onset_ms, first_loss_ms)
        } else {
            answer_lead(two_way, answered_ms)
        },
        outside,
    }
}

/// How long before `onset_ms` the kernel dated the first loss, saturated to a byte:
/// a lead longer than that (a stall reported late) leaves its date later than the
/// kernel's, so a partition's first moment is never taken for earlier than it was.
#[inline(always)]
fn loss_lead(onset_ms: u64, first_loss_ms: u64) -> u8 {
    u8::try_from(onset_ms.saturating_sub(first_loss_ms)).unwrap_or(u8::MAX)
}

/// How long before the two-way progress the latest answer crossed, saturated to 254
/// (dated earlier than it was: a far site proves reach later, never wrongly);
/// `u8::MAX`: none.
#[inline(always)]
fn answer_lead(two_way: u64, answered_ms: u64) -> u8 {
    if two_way == NEVER || answered_ms == NEVER {
        return u8::MAX;
    }
    u8::try_from(two_way.saturating_sub(answered_ms)).map_or(u8::MAX - 1, |l| l.min(u8::MAX - 1))
}

/// [`view_of`] for the common case of one link: its status is the view's.
#[inline(always)]
pub(super) fn view_of_link(observer: u16, outside: u8, link: LinkFacts, clock: ViewClock) -> View {
    let (status, (onset, progress_ms, two_way, evidence, lead, answered_lead)) = link;
    let failing = status == LinkStatus::Failed;
    let onset_ms = if !failing {
        NEVER
    } else if onset == NEVER {
        clock.now_ms
    } else {
        onset
    };
    let fresh = failing
        && evidence != NEVER
        && clock.now_ms.saturating_sub(evidence) <= clock.fresh_ms
        && onset_ms >= clock.news_since_ms;
    View {
        onset_ms,
        progress_ms,
        two_way_lag_ms: two_way_lag(progress_ms, two_way),
        observer,
        status,
        fresh,
        lead_ms: if failing {
            if onset == NEVER {
                0
            } else {
                loss_lead(onset, onset.saturating_sub(u64::from(lead)))
            }
        } else {
            answer_lead(two_way, two_way.saturating_sub(u64::from(answered_lead)))
        },
        outside,
    }
}

/// How long before the latest progress the latest two-way progress was, ms,
/// saturated; `u16::MAX`: never.
#[inline(always)]
fn two_way_lag(progress_ms: u64, two_way: u64) -> u16 {
    if two_way != NEVER && progress_ms != NEVER {
        u16::try_from(progress_ms.saturating_sub(two_way))
            .unwrap_or(u16::MAX - 1)
            .min(u16::MAX - 1)
    } else {
        u16::MAX
    }
}

/// Something counted by id: an observer's, or an entity's (a rack's).
pub(super) trait Id: Copy {
    fn id(self) -> u32;
}

impl Id for u16 {
    fn id(self) -> u32 {
        u32::from(self)
    }
}

impl Id for EntityId {
    fn id(self) -> u32 {
        self.0
    }
}

/// An empty place in a [`TwoDistinct`]: no observer id (`u16`) nor entity index
/// reaches it. (`u32::MAX` is taken: it stands for "in no rack", see
/// `Observer::rack`.)
const NO_ID: u32 = u32::MAX - 1;

/// Up to two distinct ids: enough to tell "one says so" from "several do". Eight
/// bytes, with a sentinel rather than `Option`s: a tick writes several per host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TwoDistinct([u32; 2]);

impl Default for TwoDistinct {
    fn default() -> Self {
        Self([NO_ID; 2])
    }
}

impl TwoDistinct {
    #[inline]
    pub(super) fn add(&mut self, o: impl Id) {
        self.add_id(o.id());
    }

    #[inline]
    fn add_id(&mut self, o: u32) {
        if self.0[0] == NO_ID {
            self.0[0] = o;
        } else if self.0[1] == NO_ID && self.0[0] != o {
            self.0[1] = o;
        }
    }

    #[inline]
    pub(super) fn merge(&mut self, other: Self) {
        for o in other.0 {
            if o != NO_ID {
                self.add_id(o);
            }
        }
    }

    /// 0, 1, or 2 meaning "two or more".
    pub(super) fn count(self) -> u32 {
        u32::from(self.0[0] != NO_ID) + u32::from(self.0[1] != NO_ID)
    }
}

/// Observers by id.
pub(super) type TwoObservers = TwoDistinct;
/// The racks observers stand in (their own host, when the topology places them in
/// none): above host level, no verdict rests on observers of one rack.
pub(super) type TwoRacks = TwoDistinct;

/// Who saw a host fail or degrade from outside one entity: what that entity's vote
/// takes of it (kept apart in [`Outside`], so a vote copies 28 bytes, not all of it).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Blame {
    pub(super) failing_observers: TwoObservers,
    pub(super) failing_racks: TwoRacks,
    pub(super) degraded_racks: TwoRacks,
    /// Degraded by pooled loss, which names no observer.
    pub(super) lossy: bool,
}

/// A host as seen, this tick, from outside one of its enclosing entities.
#[derive(Debug, Clone, Copy)]
pub(super) struct Outside {
    pub(super) failing: u32,
    pub(super) witnesses: u32,
    /// Views that see the host deliver (healthy or degraded), witnesses or not.
    pub(super) reached: u32,
    pub(super) degraded: u32,
    /// The earliest onset among the failing views, ms (`u64::MAX`: none).
    pub(super) onset_ms: u64,
    /// The kernel's date of the earliest first loss among the failing views, ms.
    pub(super) first_loss_ms: u64,
    pub(super) fresh: bool,
    /// Who saw it fail or degrade, and whether it loses pooled over every outside
    /// observer's links ([`PooledLoss`]): what its entity's vote takes of it.
    pub(super) blame: Blame,
}

/// Retransmissions and segments received over the loss window, summed over links,
/// and the retransmissions expected of them: what the same observers lose on their
/// links to other hosts as far away ([`expected_ratio`]).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PooledLoss {
    pub(super) retrans: f32,
    pub(super) progress: f32,
    pub(super) expected: f32,
}

impl PooledLoss {
    pub(super) fn add(&mut self, other: Self) {
        self.retrans += other.retrans;
        self.progress += other.progress;
        self.expected += other.expected;
    }

    /// These sums decayed by `w`, plus `other`.
    pub(super) fn decayed_plus(self, w: f32, other: Self) -> Self {
        Self {
            retrans: self.retrans * w + other.retrans,
            progress: self.progress * w + other.progress,
            expected: self.expected * w + other.expected,
        }
    }

    /// Retransmissions per segment received.
    pub(super) fn ratio(&self) -> f32 {
        self.retrans / self.progress.max(1.0)
    }

    /// Expected retransmissions per segment received.
    pub(super) fn expected_ratio(&self) -> f32 {
        self.expected / self.progress.max(1.0)
    }

    /// A gray failure: more loss than `pooled_loss_ratio`, on enough retransmissions,
    /// and `standout` times what its observers lose elsewhere.
    pub(super) fn is_lossy(&self, standout: f64, cfg: &DetectorConfig) -> bool {
        let (retrans, progress) = (f64::from(self.retrans), f64::from(self.progress));
        retrans >= cfg.degraded_min_retrans
            && retrans >= cfg.pooled_loss_ratio * progress.max(1.0)
            && retrans >= standout * f64::from(self.expected)
    }
}

/// Segments received elsewhere that would show `degraded_min_retrans` at
/// `pooled_loss_ratio`: enough to compare a host with.
pub(super) fn enough_to_compare(cfg: &DetectorConfig) -> f32 {
    #[expect(clippy::cast_possible_truncation)]
    let enough = (cfg.degraded_min_retrans / cfg.pooled_loss_ratio) as f32;
    enough
}

/// The loss an observer's link to a host would show if the host were like the other
/// hosts it sees as far away. `before`: its sums over its links by distance (as
/// [`View::outside`]) from the last tick; `here`: this host's, at distance `reach`.
/// Where the rest at that distance carries too little traffic to have shown even
/// `pooled_loss_ratio`'s worth of `degraded_min_retrans`, the hosts farther away are
/// added in turn; None when even all of them do not: the observer has nothing to
/// compare with. `enough`: [`enough_to_compare`], worked out once per tick.
///
/// Loss on the long-haul network, or on an observer's own NIC, shows on all of that
/// observer's links as far away alike, so it is expected; loss into one rack shows
/// on the links into that rack only. Comparing each observer with itself, and not a
/// host with the median host, keeps a host whose outside observers are all across
/// the long-haul network (a one-cabinet site) from standing out under noise there.
/// Adding hosts farther away only adds long-haul loss: it errs towards expecting more.
pub(super) fn expected_ratio(
    before: &[PooledLoss; 5],
    reach: usize,
    here: PooledLoss,
    enough: f32,
) -> Option<f32> {
    elsewhere(before, reach, here, (enough, enough)).map(|(retrans, progress)| retrans / progress)
}

/// An observer's retransmissions and segments to the hosts as far away as `here`'s
/// and farther, without `here`'s own, widened until they reach `enough` segments
/// (as [`expected_ratio`]), or as wide as they go if they reach only
/// `least`.
pub(super) fn elsewhere(
    before: &[PooledLoss; 5],
    reach: usize,
    here: PooledLoss,
    (enough, least): (f32, f32),
) -> Option<(f32, f32)> {
    let (mut retrans, mut progress) = (-here.retrans, -here.progress);
    for sums in before.get(reach..)? {
        retrans += sums.retrans;
        progress += sums.progress;
        if progress >= enough {
            break;
        }
    }
    (progress >= least).then_some((retrans.max(0.0), progress))
}

impl Default for Outside {
    fn default() -> Self {
        Self {
            failing: 0,
            witnesses: 0,
            reached: 0,
            degraded: 0,
            onset_ms: NEVER,
            first_loss_ms: NEVER,
            fresh: false,
            blame: Blame::default(),
        }
    }
}

impl Outside {
    /// A failing view: it sets the onset the witnesses are measured against.
    /// A failing view from an observer standing in `rack`.
    #[inline]
    pub(super) fn add_failing(&mut self, v: &View, rack: EntityId) {
        self.failing += 1;
        self.onset_ms = self.onset_ms.min(v.onset_ms);
        self.first_loss_ms = self.first_loss_ms.min(v.first_loss_ms());
        self.fresh |= v.fresh;
        self.blame.failing_observers.add(v.observer);
        self.blame.failing_racks.add(rack);
    }

    /// A delivering view; `degraded`: it counts as degraded. Witnesses are counted
    /// apart ([`Self::add_witness`]) once every onset is known.
    #[inline]
    pub(super) fn add_delivering(&mut self, degraded: bool, rack: EntityId) {
        self.reached += 1;
        if degraded {
            self.degraded += 1;
            self.blame.degraded_racks.add(rack);
        }
    }

    /// A delivering view is a witness if it saw progress after the onset (with slack).
    #[inline]
    pub(super) fn add_witness(&mut self, v: &View, cfg: &DetectorConfig) {
        if self.onset_ms != NEVER
            && v.progress_ms != NEVER
            && v.progress_ms > self.onset_ms.saturating_add(ms(cfg.witness_slack))
        {
            self.witnesses += 1;
        }
    }

    /// Adds what another set of views saw (for the nested outside sets of a host).
    #[inline]
    pub(super) fn merge(&mut self, o: &Self) {
        self.failing += o.failing;
        self.witnesses += o.witnesses;
        self.reached += o.reached;
        self.degraded += o.degraded;
        self.onset_ms = self.onset_ms.min(o.onset_ms);
        self.first_loss_ms = self.first_loss_ms.min(o.first_loss_ms);
        self.fresh |= o.fresh;
        let (mine, theirs) = (&mut self.blame, &o.blame);
        mine.failing_observers.merge(theirs.failing_observers);
        mine.failing_racks.merge(theirs.failing_racks);
        mine.degraded_racks.merge(theirs.degraded_racks);
    }

    /// Failing by one observer only, no witness against it, and not yet long enough
    /// to stand alone: its entity's vote may still count it when that observer sees
    /// more of the entity fail, and another observer does too (see `rollup`).
    pub(super) fn uncorroborated(&self, now: Duration, cfg: &DetectorConfig) -> bool {
        self.judged(now, cfg).1
    }

    /// [`Self::status`] and [`Self::uncorroborated`], the status judged once.
    #[inline]
    pub(super) fn judged(&self, now: Duration, cfg: &DetectorConfig) -> (LinkStatus, bool) {
        let status = self.status(now, cfg);
        let uncorroborated =
            self.failing > 0 && self.witnesses == 0 && status != LinkStatus::Failed;
        (status, uncorroborated)
    }

    /// Degraded views from at least a third of the observers that reach the host, and
    /// from `min_observers` of them where that many do. With every host an agent, a
    /// host has a dozen observers or more, and one of them whose link's RTT jumps (its
    /// own CPU busy, one path) is not the host degrading: under CPU contention, one
    /// view in fifteen was enough to turn whole racks DEGRADED. A host only one
    /// observer reaches is still judged by that one.
    #[inline]
    fn degraded_by_enough(&self, cfg: &DetectorConfig) -> bool {
        self.degraded > 0
            && self.degraded >= cfg.min_observers.min(self.reached)
            && 3 * self.degraded >= self.reached
    }

    /// The host's state from here.
    #[inline]
    pub(super) fn status(&self, now: Duration, cfg: &DetectorConfig) -> LinkStatus {
        if self.failing > 0 && self.witnesses == 0 {
            // One observer alone waits twice the slack: long enough for a witness
            // with progress after `onset + witness_slack` to have reported it.
            let agreed = self.blame.failing_observers.count() >= 2
                || (self.onset_ms != NEVER
                    && ms(now).saturating_sub(self.onset_ms) >= ms(2 * cfg.witness_slack));
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
        if self.failing > 0 || self.blame.lossy || self.degraded_by_enough(cfg) {
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

    fn failing(observer: u16, onset: u64) -> View {
        View {
            onset_ms: onset,
            progress_ms: onset.saturating_sub(50),
            two_way_lag_ms: 0,
            observer,
            status: LinkStatus::Failed,
            fresh: true,
            lead_ms: 0,
            outside: 4,
        }
    }

    fn delivering(observer: u16, progress: u64) -> View {
        View {
            onset_ms: NEVER,
            progress_ms: progress,
            two_way_lag_ms: 0,
            observer,
            status: LinkStatus::Healthy,
            fresh: false,
            lead_ms: 0,
            outside: 4,
        }
    }

    fn judge(views: &[View], now: u64) -> LinkStatus {
        let cfg = DetectorConfig::default();
        let mut o = Outside::default();
        for v in views.iter().filter(|v| v.status == LinkStatus::Failed) {
            o.add_failing(v, EntityId(0));
        }
        for v in views.iter().filter(|v| v.status != LinkStatus::Failed) {
            o.add_delivering(false, EntityId(0));
            o.add_witness(v, &cfg);
        }
        o.status(Duration::from_millis(now), &cfg)
    }

    #[test]
    fn a_single_link_view_is_the_general_fold_of_one_link() {
        let statuses = [
            LinkStatus::Unknown,
            LinkStatus::Healthy,
            LinkStatus::Degraded,
            LinkStatus::Failed,
        ];
        let stamps = [NEVER, 0, 900, 1000, 1990, 2000];
        let mut checked = 0;
        for status in statuses {
            for onset in stamps {
                for progress in stamps {
                    for two_way in stamps {
                        for (evidence, (lead, answered)) in stamps
                            .into_iter()
                            .zip([(0, 0), (30, 400), (300, u16::MAX)].into_iter().cycle())
                        {
                            for news_since_ms in [0, 1000, 2500] {
                                let clock = ViewClock {
                                    now_ms: 2000,
                                    fresh_ms: 1000,
                                    news_since_ms,
                                };
                                let link =
                                    (status, (onset, progress, two_way, evidence, lead, answered));
                                let one = view_of_link(7, 3, link, clock);
                                let fold = view_of(7, 3, std::iter::once(link), clock);
                                assert_eq!(format!("{one:?}"), format!("{fold:?}"), "{link:?}");
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 4 * 6 * 6 * 6 * 6 * 3);
    }

    #[test]
    fn a_view_stays_small() {
        assert!(size_of::<View>() <= 24, "{}", size_of::<View>());
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

    /// A host `reached` observers deliver from, `degraded` of them degraded.
    fn degraded_of(degraded: u32, reached: u32) -> LinkStatus {
        let mut o = Outside::default();
        for i in 0..reached {
            o.add_delivering(i < degraded, EntityId(i));
        }
        o.status(Duration::from_secs(1), &DetectorConfig::default())
    }

    #[test]
    fn one_degraded_view_among_many_is_not_the_host() {
        assert_eq!(degraded_of(1, 15), LinkStatus::Healthy);
        assert_eq!(degraded_of(4, 15), LinkStatus::Healthy, "under a third");
        assert_eq!(degraded_of(5, 15), LinkStatus::Degraded);
        assert_eq!(
            degraded_of(1, 2),
            LinkStatus::Healthy,
            "two reach it: two must agree"
        );
        assert_eq!(degraded_of(2, 2), LinkStatus::Degraded);
        assert_eq!(degraded_of(1, 1), LinkStatus::Degraded, "its only observer");
    }

    fn pooled(retrans: f32, progress: f32) -> PooledLoss {
        PooledLoss {
            retrans,
            progress,
            expected: 0.0,
        }
    }

    #[test]
    fn a_host_is_compared_with_what_the_same_observer_sees_elsewhere() {
        let cfg = DetectorConfig::default();
        let enough = enough_to_compare(&cfg);
        let at = |reach: usize, sums: PooledLoss| {
            let mut before = [PooledLoss::default(); 5];
            before[reach] = sums;
            before
        };
        // The observer loses 1 % on all its links as far away (long-haul noise):
        // 30 of 3000 segments, 10 of them on this host's 1000.
        let noise = expected_ratio(
            &at(4, pooled(30.0, 3000.0)),
            4,
            pooled(10.0, 1000.0),
            enough,
        );
        assert_eq!(noise, Some(0.01));
        // 3 % into this host alone: the rest still loses 1 %, so 3 % stands out.
        let gray = expected_ratio(
            &at(4, pooled(50.0, 3000.0)),
            4,
            pooled(30.0, 1000.0),
            enough,
        );
        assert_eq!(gray, Some(0.01));
        // Too little traffic elsewhere to show the floor's minimum: nothing to compare…
        let few = at(2, pooled(12.0, 1300.0));
        assert_eq!(expected_ratio(&few, 2, pooled(10.0, 1000.0), enough), None);
        // … unless the hosts farther away make up for it.
        let mut wider = few;
        wider[4] = pooled(4.0, 2000.0);
        assert_eq!(
            expected_ratio(&wider, 2, pooled(10.0, 1000.0), enough),
            Some(6.0 / 2300.0)
        );
        let mut host = pooled(30.0, 1000.0);
        host.expected = 0.01 * 1000.0;
        assert!(
            host.is_lossy(cfg.degraded_standout, &cfg),
            "3 % against 1 % expected"
        );
        host.expected = 0.02 * 1000.0;
        assert!(
            !host.is_lossy(cfg.degraded_standout, &cfg),
            "3 % against 2 % expected"
        );
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
