//! Gray failures of racks, cabinets and sites: loss pooled over an entity's hosts.
//!
//! Each host alone, judged by the hosts it is degraded on, needs its own handful of
//! retransmissions: on thin traffic (a few segments a second per link) three percent
//! lost into a rack gives each host three or four a second, and a rack waited for two
//! of them to gather enough at once. A rack's loss is judged here on all its hosts
//! together, as its outside observers see them, so it gathers evidence as many times
//! faster as it has hosts.
//!
//! Three rules keep that from blaming an entity for what is not its own:
//! - **One child never stands for it.** The loss counted is what remains without the
//!   child that lost the most (a rack's worst host, a cabinet's worst rack), so one bad
//!   host never degrades its rack, nor one bad rack its cabinet. An entity whose hosts
//!   sit in one child only (a one-rack cabinet) is no bigger than that child, and is
//!   judged without its worst host instead, as the child is.
//! - **It stands out from what the same observers see elsewhere**: each observer's
//!   loss to the entity is compared with its loss to other hosts as far away *outside
//!   the entity* (as `views::expected_ratio` does for a host, with the entity's hosts
//!   left out and not only the host: a host's rack mates, as lossy as itself, would
//!   otherwise set what is expected of it). Loss on the long-haul network or at one
//!   observer's NIC shows on all that observer's links as far away alike. The loss
//!   must be `degraded_standout` times that, and significantly more: in a small fleet
//!   "elsewhere" is a few hosts, and what they lose is itself an uncertain count.
//! - **It is happening now**: the long window (`loss_window`) gathers the evidence,
//!   and the share of segments lost must pass `pooled_loss_ratio` in either window,
//!   since the long one dilutes a new loss with the clean traffic from before it; the
//!   short window must still stand out, so a loss that has ended stops counting
//!   within a short window, and is not raised after it ended.
use super::{Detector, DetectorConfig, Node, PooledLoss, views};
use std::time::Duration;

use crate::topology::{EntityId, Level};

/// The levels whose loss is pooled over their hosts.
const ABOVE: [Level; 3] = [Level::Rack, Level::Cabinet, Level::Site];

/// Loss over the long and the short pooled windows.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LossPair {
    pub(super) long: PooledLoss,
    pub(super) fast: PooledLoss,
}

impl LossPair {
    fn add(&mut self, other: Self) {
        self.long.add(other.long);
        self.fast.add(other.fast);
    }

    /// The share of segments lost, in whichever window shows more.
    fn ratio(&self) -> f32 {
        self.long.ratio().max(self.fast.ratio())
    }

    fn minus(self, other: Self) -> Self {
        let less = |a: PooledLoss, b: PooledLoss| PooledLoss {
            retrans: (a.retrans - b.retrans).max(0.0),
            progress: (a.progress - b.progress).max(0.0),
            expected: (a.expected - b.expected).max(0.0),
        };
        Self {
            long: less(self.long, other.long),
            fast: less(self.fast, other.fast),
        }
    }
}

/// One entity's hosts' loss this tick, as seen from outside it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct EntityLoss {
    sum: LossPair,
    /// The child (a rack's host, a cabinet's rack …) and the host with the most
    /// retransmissions over the long window, and how many children are seen.
    worst_child: LossPair,
    worst_host: LossPair,
    children: u32,
    /// Its hosts' loss seen from outside its parent: what the parent counts of it.
    up: LossPair,
    /// When lossy: the share of segments its hosts lose, and the share its observers
    /// lose elsewhere (for the evidence).
    pub(super) shown: Option<(f32, f32)>,
    /// Its loss passes the plain bars: compared with elsewhere this tick.
    candidate: bool,
}

fn worse(worst: &mut LossPair, candidate: LossPair) {
    if candidate.long.retrans > worst.long.retrans {
        *worst = candidate;
    }
}

impl EntityLoss {
    fn add_host(&mut self, loss: LossPair) {
        self.sum.add(loss);
        worse(&mut self.worst_host, loss);
    }

    fn add_child(&mut self, loss: LossPair) {
        // Seen at all: a clean child counts, or a cabinet with one lossy rack and
        // one clean one would be judged as if the lossy rack were all of it.
        if loss.long.progress > 0.0 || loss.long.retrans > 0.0 {
            self.children += 1;
        }
        worse(&mut self.worst_child, loss);
    }

    /// What remains without the child that lost the most.
    fn rest(&self) -> LossPair {
        let out = if self.children >= 2 {
            self.worst_child
        } else {
            self.worst_host
        };
        self.sum.minus(out)
    }
}

/// One host's pooled loss, as its views were just built, added to the entities
/// enclosing it: while its node is in cache, not in a pass of its own over every host
/// (that pass was a twentieth of a tick at 10k hosts).
#[inline]
pub(super) fn pool(nodes: &mut [Node], host: EntityId) {
    let node = &nodes[host.index()];
    let around = node.around;
    let seen = ABOVE.map(|l| LossPair {
        long: node.loss[l],
        fast: node.fast_loss[l],
    });
    for (k, level) in ABOVE.into_iter().enumerate() {
        let Some(e) = around[level] else { continue };
        nodes[e.index()].gray.add_host(seen[k]);
        // The host's child of `e`: a rack's host itself, a cabinet's rack …
        match (k > 0).then(|| around[ABOVE[k - 1]]).flatten() {
            Some(child) => nodes[child.index()].gray.up.add(seen[k]),
            None => nodes[e.index()].gray.add_child(seen[k]),
        }
    }
}

impl Detector {
    /// Before the hosts' views are built: every rack, cabinet and site starts the
    /// tick with no loss pooled.
    pub(super) fn clear_gray(&mut self) {
        for level in ABOVE {
            for i in 0..self.by_level[level].len() {
                self.nodes[self.by_level[level][i].index()].gray = EntityLoss::default();
            }
        }
    }

    /// Step 4½: each rack, cabinet and site judged on its hosts' pooled loss (pooled
    /// as the views were built, [`pool`]); sets `lossy` in its vote for the roll-up.
    pub(super) fn judge_gray(&mut self, now: Duration) {
        let now_ms = views::ms(now);
        for (k, level) in ABOVE.into_iter().enumerate().skip(1) {
            for i in 0..self.by_level[ABOVE[k - 1]].len() {
                let child = &self.nodes[self.by_level[ABOVE[k - 1]][i].index()];
                if let Some(parent) = child.around[level] {
                    let up = child.gray.up;
                    self.nodes[parent.index()].gray.add_child(up);
                }
            }
        }
        // The comparison walks the entity's links: only for entities whose loss
        // passes the plain bars first, and their hosts found in one pass.
        let mut candidates = std::mem::take(&mut self.gray_candidates);
        candidates.clear();
        for level in ABOVE {
            for &e in &self.by_level[level] {
                let node = &self.nodes[e.index()];
                let bars = Bars::new(&self.cfg, node.hold.degrading(now));
                if bars.enough_loss(&node.gray.sum, &node.gray.rest()) {
                    candidates.push((e, bars));
                }
            }
        }
        if !candidates.is_empty() {
            let mut members = std::mem::take(&mut self.gray_members);
            members.clear();
            for &(e, _) in &candidates {
                self.nodes[e.index()].gray.candidate = true;
            }
            for &h in &self.by_level[Level::Host] {
                let around = self.nodes[h.index()].around;
                for level in ABOVE {
                    if let Some(e) = around[level].filter(|e| self.nodes[e.index()].gray.candidate)
                    {
                        members.push((e, h));
                    }
                }
            }
            members.sort_unstable_by_key(|&(e, _)| e.0);
            for (e, bars) in candidates.drain(..) {
                let start = members.partition_point(|&(m, _)| m.0 < e.0);
                let end = members.partition_point(|&(m, _)| m.0 <= e.0);
                let level = self.topology.entity(e).level;
                let hosts = members[start..end].iter().map(|&(_, h)| h);
                let expected = self.expected_outside(level, hosts, now_ms);
                let node = &mut self.nodes[e.index()];
                node.gray.candidate = false;
                let rest = node.gray.rest();
                if let Some(expected) = expected.filter(|x| bars.stands_out(&rest, *x)) {
                    node.gray.shown = Some((node.gray.sum.ratio(), expected.ratio));
                    node.vote.lossy = true;
                }
            }
            self.gray_members = members;
        }
        self.gray_candidates = candidates;
    }

    /// What observers outside the entity at `level` whose hosts are `hosts` lose to
    /// hosts as far away from them as these, outside it, weighted by what they
    /// exchange with its hosts; None when no observer outside sees them.
    fn expected_outside(
        &mut self,
        level: Level,
        hosts: impl Iterator<Item = EntityId>,
        now_ms: u64,
    ) -> Option<Expected> {
        let loss_ms = views::ms(self.cfg.loss_window);
        let enough = views::enough_to_compare(&self.cfg);
        #[expect(clippy::cast_possible_truncation)]
        let least = (1.0 / self.cfg.pooled_loss_ratio) as f32;
        // Per observer: its loss to these hosts and how far it is (0: not seen yet;
        // an observer outside is at least one level away). Left zeroed after use.
        let mut per_observer = std::mem::take(&mut self.gray_scratch);
        per_observer.resize(self.observers.len(), (PooledLoss::default(), 0));
        let mut seen = std::mem::take(&mut self.gray_seen);
        seen.clear();
        for h in hosts {
            let node = &self.nodes[h.index()];
            let host_ids = super::ids(&node.around);
            for chunk in node.links.chunk_by(|a, b| a.0 == b.0) {
                let o = usize::from(chunk[0].0);
                let (alive, ..) = self.observer_clock[o];
                let observer_ids = super::ids(&self.observers[o].around);
                let reach = super::outside_count(host_ids, observer_ids);
                if !alive || usize::from(reach) <= level.index() {
                    continue;
                }
                let (sums, at) = &mut per_observer[o];
                if *at == 0 {
                    seen.push(chunk[0].0);
                }
                *at = reach;
                for &(_, slot) in chunk {
                    if let Some((r, p)) = self.health[slot as usize].loss_sums(now_ms, loss_ms) {
                        sums.retrans += r;
                        sums.progress += p;
                    }
                }
            }
        }
        let (mut expected, mut variance, mut progress) = (0.0, 0.0, 0.0);
        for &o in &seen {
            let (here, reach) = std::mem::take(&mut per_observer[usize::from(o)]);
            if here.progress <= 0.0 {
                continue;
            }
            let before = &self.observers[usize::from(o)].reach_loss;
            // Where the hosts as far away carry less than a host is compared with,
            // what they carry is still an estimate, if a rough one: its variance
            // goes into the test. With nothing to compare with, the observer expects
            // what it sees: it neither makes the entity stand out nor hides it.
            let (r, p) = views::elsewhere(before, usize::from(reach), here, (enough, least))
                .unwrap_or((here.retrans, here.progress));
            let scale = here.progress / p;
            expected += r * scale;
            // A Poisson count of r, scaled to this entity's segments; none seen is
            // still an uncertain count (as if one had been), or a few quiet
            // segments elsewhere would claim to know the loss exactly.
            variance += (r + 1.0) * scale * scale;
            progress += here.progress;
        }
        self.gray_scratch = per_observer;
        self.gray_seen = seen;
        (progress > 0.0).then(|| Expected {
            ratio: expected / progress,
            relative_variance: variance / (progress * progress),
        })
    }
}

/// The bars an entity's pooled loss must pass, as they stand for it this tick.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bars {
    min_retrans: f32,
    min_ratio: f32,
    standout: f32,
    sds: f32,
}

impl Bars {
    /// Once `degrading` (the condition held last tick, or DEGRADED is shown), half
    /// the share lost and half the significance keep it: a loss near the bars would
    /// otherwise restart `degraded_confirm` at every dip of its counts. The stand-out
    /// factor and the minimum count do not relax.
    #[expect(clippy::cast_possible_truncation)]
    fn new(cfg: &DetectorConfig, degrading: bool) -> Self {
        let relax = if degrading { 0.5 } else { 1.0 };
        Self {
            min_retrans: cfg.degraded_min_retrans as f32,
            min_ratio: (cfg.pooled_loss_ratio * relax) as f32,
            standout: cfg.degraded_standout as f32,
            sds: SIGNIFICANT_SDS * relax as f32,
        }
    }

    /// Enough retransmissions without the worst child, and a share lost over all
    /// its hosts (without the worst child it is biased low: the most of a few counts
    /// lies above their mean) past `pooled_loss_ratio` in either window, since the
    /// long one dilutes a new loss with the clean traffic from before it.
    fn enough_loss(&self, sum: &LossPair, rest: &LossPair) -> bool {
        rest.long.retrans >= self.min_retrans && sum.ratio() >= self.min_ratio
    }

    /// `degraded_standout` times what is expected in both windows (the short one:
    /// the loss goes on now), and significantly more than expected over the long
    /// one, the expectation's own uncertainty included.
    fn stands_out(&self, rest: &LossPair, expected: Expected) -> bool {
        let (r, p) = (rest.long.retrans, rest.long.progress);
        let mean = expected.ratio * p;
        let sd = (mean + expected.relative_variance * p * p).sqrt();
        let beyond = |l: &PooledLoss| l.retrans >= self.standout * expected.ratio * l.progress;
        r - mean >= self.sds * sd && beyond(&rest.long) && beyond(&rest.fast)
    }
}

/// How many standard deviations the loss must stand above what is expected of it:
/// the expectation is itself a count, and on thin traffic a small one. 3: at the
/// lab's rates a gray rack passes it with its first five retransmissions; a site
/// under long-haul noise, compared with a handful of hosts elsewhere, does not.
const SIGNIFICANT_SDS: f32 = 3.5;

/// The loss an entity's hosts would show if they were like the rest.
#[derive(Debug, Clone, Copy)]
struct Expected {
    /// Retransmissions per segment.
    ratio: f32,
    /// The variance of that estimate, per segment squared: an entity's expected
    /// count over `p` segments has variance `p² × relative_variance`.
    relative_variance: f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss(retrans: f32, progress: f32) -> PooledLoss {
        PooledLoss {
            retrans,
            progress,
            expected: 0.0,
        }
    }

    fn pair(long: (f32, f32), fast: (f32, f32)) -> LossPair {
        LossPair {
            long: loss(long.0, long.1),
            fast: loss(fast.0, fast.1),
        }
    }

    fn expect(ratio: f32, relative_variance: f32) -> Expected {
        Expected {
            ratio,
            relative_variance,
        }
    }

    fn at_one_percent() -> DetectorConfig {
        DetectorConfig {
            pooled_loss_ratio: 0.01,
            ..DetectorConfig::default()
        }
    }

    #[test]
    fn a_loss_near_the_bar_keeps_its_condition_once_degrading() {
        let cfg = at_one_percent();
        // 0.8 % over both windows: under `pooled_loss_ratio`, over half of it.
        let sum = pair((16.0, 2000.0), (4.0, 500.0));
        let rest = pair((11.0, 1350.0), (3.0, 340.0));
        assert!(!Bars::new(&cfg, false).enough_loss(&sum, &rest));
        assert!(Bars::new(&cfg, true).enough_loss(&sum, &rest));
        // Too few retransmissions never pass, degrading or not.
        let few = pair((4.0, 300.0), (1.0, 80.0));
        assert!(!Bars::new(&cfg, true).enough_loss(&sum, &few));
    }

    #[test]
    fn a_new_loss_passes_in_the_short_window_before_the_long_one() {
        let cfg = at_one_percent();
        // The long window still holds the clean traffic from before: 0.6 %.
        let sum = pair((12.0, 2000.0), (9.0, 500.0));
        let rest = pair((8.0, 1350.0), (6.0, 340.0));
        assert!(Bars::new(&cfg, false).enough_loss(&sum, &rest));
        let quiet_now = pair((12.0, 2000.0), (2.0, 500.0));
        assert!(!Bars::new(&cfg, false).enough_loss(&quiet_now, &rest));
    }

    #[test]
    fn a_loss_that_has_stopped_does_not_stand_out() {
        let bars = Bars::new(&DetectorConfig::default(), true);
        let going_on = pair((20.0, 1000.0), (4.0, 250.0));
        assert!(bars.stands_out(&going_on, expect(0.001, 0.0)));
        // The long window still remembers it; the short one is quiet.
        let stopped = pair((20.0, 1000.0), (0.2, 250.0));
        assert!(!bars.stands_out(&stopped, expect(0.001, 0.0)));
    }

    #[test]
    fn an_expectation_from_few_segments_must_be_beaten_by_more() {
        // Long-haul noise of 2 % both ways, in a lab-sized fleet: a site compared
        // with the few hosts of the one other site, which showed half their loss by
        // chance. Three times the expectation, but within its uncertainty.
        let bars = Bars::new(&DetectorConfig::default(), false);
        let site = pair((21.4, 747.0), (7.4, 201.0));
        assert!(!bars.stands_out(&site, expect(0.0094, 2.5e-5)));
        // The same expectation known from many segments: the site stands out.
        assert!(bars.stands_out(&site, expect(0.0094, 0.0)));
        // Twice the expectation is needed whatever its certainty.
        let twice_less = pair((13.0, 747.0), (7.4, 201.0));
        assert!(!bars.stands_out(&twice_less, expect(0.0094, 0.0)));
    }

    #[test]
    fn the_child_that_loses_most_is_left_out() {
        let host = |r: f32| pair((r, 300.0), (r / 4.0, 75.0));
        // A rack: its hosts are its children.
        let mut rack = EntityLoss::default();
        for r in [30.0, 1.0, 2.0] {
            rack.add_host(host(r));
            rack.add_child(host(r));
        }
        assert!((rack.rest().long.retrans - 3.0).abs() < 1e-3);
        assert!((rack.rest().long.progress - 600.0).abs() < 1e-3);
        // A cabinet whose hosts all sit in one rack is judged as that rack is.
        let mut cabinet = EntityLoss::default();
        for r in [30.0, 1.0, 2.0] {
            cabinet.add_host(host(r));
        }
        cabinet.add_child(host(33.0));
        assert!((cabinet.rest().long.retrans - 3.0).abs() < 1e-3);
        // With two racks that lose, the worse rack is left out whole.
        cabinet.add_host(host(5.0));
        cabinet.add_child(host(5.0));
        assert!((cabinet.rest().long.retrans - 5.0).abs() < 1e-3);
    }

    #[test]
    fn a_clean_child_is_a_child_too() {
        // A cabinet: a rack of three lossy hosts, and a rack that lost nothing.
        let host = |r: f32| pair((r, 300.0), (r / 4.0, 75.0));
        let mut cabinet = EntityLoss::default();
        for r in [10.0, 9.0, 8.0, 0.0] {
            cabinet.add_host(host(r));
        }
        cabinet.add_child(pair((27.0, 900.0), (6.75, 225.0)));
        cabinet.add_child(host(0.0));
        assert_eq!(
            cabinet.rest().long.retrans,
            0.0,
            "the lossy rack is left out whole"
        );
    }

    #[test]
    fn elsewhere_widens_to_enough_segments_or_as_far_as_it_goes() {
        let mut before = [PooledLoss::default(); 5];
        before[2] = loss(2.0, 120.0); // `here` (100 segments) and 20 others
        before[3] = loss(1.0, 200.0);
        before[4] = loss(9.0, 600.0);
        let here = loss(1.0, 100.0);
        assert_eq!(
            views::elsewhere(&before, 2, here, (500.0, 100.0)),
            Some((11.0, 820.0))
        );
        assert_eq!(
            views::elsewhere(&before, 2, here, (200.0, 100.0)),
            Some((2.0, 220.0))
        );
        // Too little even widened: nothing to compare with.
        before[4] = PooledLoss::default();
        assert_eq!(
            views::elsewhere(&before, 3, loss(0.0, 150.0), (500.0, 100.0)),
            None
        );
    }
}
