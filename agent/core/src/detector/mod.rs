//! The verdict engine: link observations and a clock in, verdict changes out.
//!
//! Pure and deterministic: it never reads the kernel, the network or the wall clock,
//! so every rule is tested with scripted observations and simulated time.
//!
//! Each tick:
//! 1. every link's status comes from its counters ([`link`]);
//! 2. each observer's links to a host fold into its view of that host ([`views`]);
//! 3. each observer is judged as a whole ([`observers`]): lost when silent, cut off
//!    when everything outside some enclosing entity fails (it then names that entity
//!    and blames nothing outside it), degraded everywhere when its own CPU or network is;
//! 4. each host is judged once per level, only from the observers outside its entity
//!    at that level, with progress older than the failure no evidence against it;
//! 5. racks, cabinets and sites vote on their hosts ([`rollup`]);
//! 6. top-down, the highest failed entity is announced, and what lies under it is
//!    marked failed because of it; hysteresis ([`hold`]) keeps verdicts from flapping,
//!    and only fresh evidence raises a new FAILED.
pub mod config;
mod evidence;
mod forget;
mod gray;
mod hold;
pub mod link;
mod observers;
mod rollup;
mod scan;
pub mod verdict;
mod views;

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

use observers::Observer;
use rollup::{Outcome, Totals, Vote};
use views::{Blame, Outside, PooledLoss, View};

use rustc_hash::FxHashMap;

pub use config::DetectorConfig;
use hold::Hold;
pub use link::{LinkDelta, LinkHealth, LinkStatus};
pub use verdict::{ChildEvidence, Entity, Evidence, PeerEvidence, State, Verdict};

use crate::{
    link::{Link, LinkSample},
    topology::{EntityId, EntityInfo, Level, PerLevel, Placement, Topology, UNPLACED},
};

/// One tick of one link, as seen by one observer (this agent or a peer agent).
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub observer: Arc<str>,
    pub link: Link,
    pub delta: LinkDelta,
}

impl Observation {
    pub fn from_sample(observer: &Arc<str>, s: &LinkSample) -> Self {
        Self {
            observer: observer.clone(),
            link: s.link,
            delta: LinkDelta {
                counters: s.delta,
                rtt_p50_us: s.rtt.quantile_us(0.5),
                silent_ms: silent_ms(s),
                acked_age_ms: acked_age_ms(s),
            },
        }
    }
}

/// Since the latest loss, when nothing has been received since (see `LinkDelta`).
fn silent_ms(s: &LinkSample) -> Option<u32> {
    let loss = s.since_loss?;
    s.since_progress
        .is_none_or(|progress| progress > loss)
        .then(|| u32::try_from(loss.as_millis()).unwrap_or(u32::MAX))
}

/// How long ago the peer acknowledged our data, when it did during this tick.
fn acked_age_ms(s: &LinkSample) -> Option<u32> {
    (s.delta.acked_segs > 0)
        .then_some(s.since_acked)
        .flatten()
        .map(|age| u32::try_from(age.as_millis()).unwrap_or(u32::MAX))
}

/// Who observes a link, kept apart from its health ([`Detector::health`]): a tick
/// reads only the health, so its pass over 100k links streams 80 bytes per link
/// instead of 120.
struct LinkSlot {
    observer: u16,
    link: Link,
}

/// The published verdict's state, cause and local flag (Unknown, none: nothing yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shown {
    state: State,
    cause: Option<EntityId>,
    local: bool,
}

impl Default for Shown {
    fn default() -> Self {
        Self {
            state: State::Unknown,
            cause: None,
            local: false,
        }
    }
}

/// A link's place in the slot arena.
type SlotId = u32;

/// One entity's state, laid out by pass: a tick walks 10k host nodes three times,
/// and each pass asks ahead for the lines from the start that it reads of a host
/// ([`PUBLISH_BYTES`], [`HOST_VIEWS_BYTES`], [`JUDGE_BYTES`]: 2, 4 and 8 of its 12 lines).
/// First what every pass reads (publishing reads nothing else of a host), then what
/// building the views writes, then the host seen from outside, then what only racks
/// and above use.
#[derive(Default)]
#[repr(C, align(64))]
struct Node {
    /// The entities enclosing it (itself at its own level).
    around: PerLevel<Option<EntityId>>,
    /// The top failed ancestor (or self) as published this tick, for children.
    failed_root: Option<EntityId>,
    /// Boxed: a verdict is hundreds of bytes, and a tick walks every node.
    published: Option<Box<Verdict>>,
    hold: Hold,
    /// What `published` shows, kept inline so a tick compares without chasing the box.
    shown: Shown,
    /// This tick: the entity's own state before hysteresis.
    observed: bool,
    raw_failing: bool,
    raw_degraded: bool,
    /// Some live observer inside finds it cut off this tick (hosts: the observer is
    /// the host); and whether its held failure is that (named from inside).
    cut_off: bool,
    named_from_inside: bool,
    /// Held but not yet announced: children wait for it before announcing themselves.
    pending: bool,
    /// Whether the host is lossy seen from outside each enclosing entity (see `loss`).
    lossy: PerLevel<bool>,
    /// This tick, hosts only: its observers' views (a range of `Detector::views`).
    views: std::ops::Range<u32>,
    /// Hosts only: retransmissions and progress on the links of observers outside
    /// each enclosing entity, pooled over `pooled_loss_fast_window` and decayed from
    /// tick to tick, and this tick's over `loss_window`.
    fast_loss: PerLevel<PooledLoss>,
    loss: PerLevel<PooledLoss>,
    /// This tick, hosts only: how many views see the host healthy, by how many levels
    /// they are outside it; None if some view sees it failing or degraded. Counted as
    /// the views are built, so that judging a host every view sees healthy (most
    /// hosts, most ticks) reads none of them.
    healthy_reached: Option<[u32; 5]>,
    /// This tick, hosts only: the host as seen from outside each of its enclosing
    /// entities.
    outside: PerLevel<Outside>,
    /// This tick, racks and above: its hosts' loss pooled (see `gray`).
    gray: gray::EntityLoss,
    /// This tick, racks and above: the vote of its hosts.
    vote: Vote,
    /// Links to this host (hosts only): (observer, slot), sorted by observer.
    links: Vec<(u16, SlotId)>,
}

/// The bytes of a host's node that building its views reads and writes: up to what
/// they see of it.
const HOST_VIEWS_BYTES: usize =
    std::mem::offset_of!(Node, healthy_reached) + size_of::<Option<[u32; 5]>>();
/// The bytes of a host's node that judging it reads and writes: up to how it is seen
/// from outside.
const JUDGE_BYTES: usize = std::mem::offset_of!(Node, outside) + size_of::<PerLevel<Outside>>();
/// The bytes of a node publishing reads of a host.
const PUBLISH_BYTES: usize = std::mem::offset_of!(Node, fast_loss);

/// The verdict engine.
pub struct Detector {
    cfg: DetectorConfig,
    topology: Topology,
    nodes: Vec<Node>,
    observers: Vec<Observer>,
    observer_ids: HashMap<Arc<str>, u16>,
    /// Every link, in the order links were first seen.
    slots: Vec<LinkSlot>,
    /// Each link's state, by slot: a tick reads it for every host, which at 100k
    /// links is most of the tick's cost.
    health: Vec<LinkHealth>,
    /// `cfg`'s link thresholds in the units a tick compares them in.
    limits: link::Limits,
    /// Links in a silent stall not yet proven ([`Self::silence_due`]).
    silent_watch: Vec<SlotId>,
    /// Per observer, this tick: alive, its latest sample and the start of fresh
    /// news (see `host_views`), ms.
    observer_clock: Vec<(bool, u64, u64)>,
    /// Every host's links end to end, in the order a tick reads them.
    scan: scan::LinkScan,
    /// Per observer and level, this tick: the latest progress from outside its own
    /// entity at that level (`work_out_reach`), when something fails.
    reach_ms: Vec<PerLevel<u64>>,
    /// Something fails this tick and `reach_ms` is not worked out yet: it is, when
    /// first asked for (most failing ticks ask for none: their failures are held).
    reach_due: bool,
    /// Every (observer, host) view of this tick, host after host: one sequential
    /// buffer rather than a vector per host, which at 100k views missed the cache.
    views: Vec<View>,
    /// (observer, link) → slot.
    link_index: FxHashMap<(u16, Link), SlotId>,
    /// Per observer, the slot its i-th observation went to last time: batches from
    /// one agent come in a stable order, so most lookups skip the hash.
    hints: Vec<Vec<SlotId>>,
    weights: link::DecayWeights,
    /// Every host at host level this tick (for "others are fine" and stand-out).
    totals: Totals,
    /// When `host_views` last ran, ms (`u64::MAX`: never).
    last_tick_ms: u64,
    host_of_ip: HashMap<IpAddr, EntityId>,
    /// Entities of each level, in the order a tick visits them.
    by_level: PerLevel<Vec<EntityId>>,
    /// See [`Self::refused_observations`].
    refused_observations: u64,
    /// The entities with `cut_off` set this tick: cleared by list, not by a pass over
    /// every node.
    cut_off_entities: Vec<EntityId>,
    /// Scratch for `judge_hosts`, kept to reuse its allocation.
    newly_failing: Vec<EntityId>,
    /// This tick: the hosts some view from outside sees failing, in host order. A
    /// failing entity's recount, and the observers agreeing on its failure, are
    /// looked for among these, not among every host.
    failing_hosts: Vec<EntityId>,
    /// Scratch for `gray`: entities to compare with elsewhere and the bars they
    /// face, their hosts, per observer its loss to one entity and how far it is,
    /// and the observers seen.
    gray_candidates: Vec<(EntityId, gray::Bars)>,
    gray_members: Vec<(EntityId, EntityId)>,
    gray_scratch: Vec<(PooledLoss, u8)>,
    gray_seen: Vec<u16>,
    forgetting: forget::Forgetting,
}

impl Detector {
    pub fn new(topology: Topology, cfg: DetectorConfig) -> Self {
        let mut d = Self {
            limits: link::Limits::new(&cfg),
            cfg,
            nodes: Vec::new(),
            observers: Vec::new(),
            observer_ids: HashMap::new(),
            slots: Vec::new(),
            health: Vec::new(),
            observer_clock: Vec::new(),
            scan: scan::LinkScan::default(),
            silent_watch: Vec::new(),
            views: Vec::new(),
            reach_ms: Vec::new(),
            reach_due: false,
            link_index: FxHashMap::default(),
            hints: Vec::new(),
            weights: link::DecayWeights::default(),
            totals: Totals::default(),
            last_tick_ms: u64::MAX,
            host_of_ip: HashMap::new(),
            by_level: PerLevel::default(),
            forgetting: forget::Forgetting::new(topology.len()),
            topology: Topology::default(),
            refused_observations: 0,
            cut_off_entities: Vec::new(),
            gray_candidates: Vec::new(),
            gray_members: Vec::new(),
            gray_scratch: Vec::new(),
            gray_seen: Vec::new(),
            newly_failing: Vec::new(),
            failing_hosts: Vec::new(),
        };
        for (i, e) in topology.entities().iter().enumerate() {
            let id = EntityId(u32::try_from(i).expect("< 2^32 entities"));
            d.by_level[e.level].push(id);
            d.nodes.push(Node {
                around: topology.ancestors(id),
                ..Node::default()
            });
        }
        d.topology = topology;
        d
    }

    /// New thresholds, keeping what was observed (a reload that changes only them).
    pub fn reconfigure(&mut self, cfg: DetectorConfig) {
        self.limits = link::Limits::new(&cfg);
        self.weights = link::DecayWeights::default();
        self.cfg = cfg;
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Folds in one tick of observations.
    pub fn observe<'a>(
        &mut self,
        observations: impl IntoIterator<Item = &'a Observation>,
        now: Duration,
    ) {
        // (observer name, id — None: refused —, position in its run of observations)
        let mut current: Option<(&'a Arc<str>, Option<u16>, usize)> = None;
        let now_ms = views::ms(now);
        for o in observations {
            let (observer, position) = match current {
                Some((name, id, i)) if Arc::ptr_eq(name, &o.observer) || **name == *o.observer => {
                    (id, i)
                }
                _ => {
                    let id = self.observer(&o.observer, o.link.local);
                    if let Some(id) = id {
                        self.observers[usize::from(id)].heard(now);
                    }
                    (id, 0)
                }
            };
            current = Some((&o.observer, observer, position + 1));
            let Some(observer) = observer else {
                self.refused_observations += 1;
                continue;
            };
            let slot = self.slot_for(observer, position, o.link);
            let health = &mut self.health[slot as usize];
            let watched = health.in_silent_stall();
            health.observe_with(&o.delta, now_ms, &self.cfg, &mut self.weights);
            if !watched && health.in_silent_stall() {
                self.silent_watch.push(slot);
            }
        }
    }

    /// The slot of `link`, trying the observer's hint for `position` first.
    #[inline]
    fn slot_for(&mut self, observer: u16, position: usize, link: Link) -> SlotId {
        let o = usize::from(observer);
        if self.hints.len() <= o {
            self.hints.resize_with(o + 1, Vec::new);
        }
        if let Some(&id) = self.hints[o].get(position)
            && let Some(slot) = self.slots.get(id as usize)
            && slot.observer == observer
            && slot.link == link
        {
            return id;
        }
        let id = match self.link_index.get(&(observer, link)) {
            Some(&id) => id,
            None => self.first_seen(observer, link),
        };
        let hints = &mut self.hints[o];
        if hints.len() <= position {
            hints.resize(position + 1, SlotId::MAX);
        }
        hints[position] = id;
        id
    }

    /// A link seen for the first time: its slot, listed with its host.
    #[cold]
    fn first_seen(&mut self, observer: u16, link: Link) -> SlotId {
        let host = self.host_entity(link.remote);
        let id = self.new_slot(observer, link);
        let links = &mut self.nodes[host.index()].links;
        let at = links.partition_point(|&(ob, _)| ob <= observer);
        links.insert(at, (observer, id));
        self.scan.invalidate();
        self.link_index.insert((observer, link), id);
        id
    }

    /// Notes that an observer sent a batch, even an empty one: it is alive. Batches
    /// come every tick; an observer silent for `observer_timeout` is set aside.
    pub fn heard_from(&mut self, name: &str, now: Duration) {
        if let Some(&id) = self.observer_ids.get(name) {
            self.observers[usize::from(id)].heard(now);
        }
    }

    /// The earliest moment a silent stall that `name` reported will be proven by its
    /// next sample (see `LinkHealth::status_as_of`), if one is in progress: when a
    /// peer's batch arrives at or after it, it is news; for the agent's own kernel, the
    /// moment to sample again. A stall is watched until a sample proves it.
    pub fn silence_due(&mut self, name: &str) -> Option<Duration> {
        let &id = self.observer_ids.get(name)?;
        let heard = self.observers[usize::from(id)].last_heard;
        let (slots, health, limits) = (&self.slots, &self.health, &self.limits);
        let mut due: Option<Duration> = None;
        self.silent_watch.retain(|&slot| {
            let Some(at) = health[slot as usize].silence_proven_ms(limits) else {
                return false;
            };
            let at = Duration::from_millis(at);
            if slots[slot as usize].observer != id {
                return true;
            }
            due = Some(due.map_or(at, |d| d.min(at)));
            heard.is_none_or(|h| h < at)
        });
        due
    }

    /// Drops everything an observer reported (a peer agent that went away): its last
    /// word must not keep entities FAILED or DEGRADED until it goes stale.
    pub fn forget_observer(&mut self, name: &str) {
        let Some(&id) = self.observer_ids.get(name) else {
            return;
        };
        // Its slots say nothing any more, but stay where they are: a peer that comes
        // back reuses them, so a flapping peer does not grow the arena.
        for (slot, health) in self.slots.iter().zip(self.health.iter_mut()) {
            if slot.observer == id {
                *health = LinkHealth::default();
            }
        }
        let o = &mut self.observers[usize::from(id)];
        o.cut = Hold::default();
        o.cut_level = None;
        o.last_heard = None;
        o.forgotten = true;
    }

    /// A link's status as its views see it: as of its observer's latest sample.
    fn link_status(&self, slot: SlotId, now: Duration) -> LinkStatus {
        let heard = self.observers[usize::from(self.slots[slot as usize].observer)].last_heard;
        let heard_ms = views::ms(heard.unwrap_or(now));
        self.health[slot as usize].status_at(views::ms(now), heard_ms, &self.limits)
    }

    /// The id of observer `name`, new or not; None when all 65,536 ids are taken by
    /// observers that are not forgotten. A forgotten observer's id (a peer that went
    /// away, or renamed itself on reconnecting) is reused, so a peer with a new name on
    /// every reconnect cannot exhaust them.
    fn observer(&mut self, name: &Arc<str>, local: IpAddr) -> Option<u16> {
        let id = match self.observer_ids.get(name) {
            Some(&id) => id,
            None => {
                let id = match u16::try_from(self.observers.len()) {
                    Ok(id) => {
                        self.observers.push(Observer::new(name.clone()));
                        id
                    }
                    Err(_) => {
                        let reused = self.observers.iter().position(|o| o.forgotten)?;
                        let old = std::mem::replace(
                            &mut self.observers[reused],
                            Observer::new(name.clone()),
                        );
                        self.observer_ids.remove(&old.name);
                        if let Some(hints) = self.hints.get_mut(reused) {
                            hints.clear();
                        }
                        u16::try_from(reused).expect("an existing id fits")
                    }
                };
                self.observer_ids.insert(name.clone(), id);
                id
            }
        };
        if self.observers[usize::from(id)].host.is_none() {
            let host = self.host_entity(local);
            let o = &mut self.observers[usize::from(id)];
            o.host = Some(host);
            o.around = self.nodes[host.index()].around;
            self.scan.invalidate();
        }
        Some(id)
    }

    /// Observations dropped since the start because every observer id was taken by an
    /// observer still heard from.
    pub fn refused_observations(&self) -> u64 {
        self.refused_observations
    }

    /// The host entity of `ip`, creating it for addresses the topology does not list.
    fn host_entity(&mut self, ip: IpAddr) -> EntityId {
        if let Some(&id) = self.host_of_ip.get(&ip) {
            return id;
        }
        let id = match self.topology.locate(ip) {
            Placement::Host(id) => id,
            Placement::InRack(rack) => self.add_host(
                format!("{}/{ip}", self.topology.entity(rack).path),
                Some(rack),
            ),
            Placement::Unplaced => self.add_host(format!("{UNPLACED}/{ip}"), None),
        };
        self.host_of_ip.insert(ip, id);
        id
    }

    fn add_host(&mut self, path: String, parent: Option<EntityId>) -> EntityId {
        if let Some(id) = self.topology.find(&path) {
            return id;
        }
        self.new_unlisted_host(EntityInfo {
            level: Level::Host,
            path: path.into(),
            parent,
        })
    }

    /// Evaluates every rule at `now` and returns the verdicts that changed.
    pub fn tick(&mut self, now: Duration) -> Vec<Verdict> {
        self.forget(now);
        self.host_views(now);
        self.judge_observers(now);
        self.judge_hosts(now);
        self.judge_gray(now);
        self.roll_up(now);
        let mut changes = self.forgotten_changes();
        changes.extend(self.publish(now));
        changes
    }

    /// When a failure pending now is confirmed if it still holds, None if none is
    /// pending. Judging again then, not at the next tick, makes confirming cost
    /// `confirm` and not up to a tick more.
    pub fn confirm_due(&self) -> Option<Duration> {
        let cfg = &self.cfg;
        let entities = self.nodes.iter().filter_map(|n| n.hold.confirm_due(cfg));
        let cuts = self.observers.iter().filter_map(|o| o.cut_confirm_due(cfg));
        entities.chain(cuts).min()
    }

    /// Every entity's current verdict, except those never observed.
    pub fn verdicts(&self) -> Vec<Verdict> {
        self.nodes
            .iter()
            .filter_map(|n| n.published.as_deref().cloned())
            .collect()
    }

    /// The current verdict of the entity at `path`, if it was ever observed.
    pub fn verdict(&self, level: Level, path: &str) -> Option<&Verdict> {
        let id = self.topology.find(path)?;
        (self.topology.entity(id).level == level)
            .then(|| self.nodes[id.index()].published.as_deref())
            .flatten()
    }

    /// Step 2: each live observer's view of each host, and what it tallies of where
    /// it stands (for step 3).
    fn host_views(&mut self, now: Duration) {
        self.clear_gray();
        let cfg = &self.cfg;
        self.views.clear();
        let (now_ms, fresh_ms) = (views::ms(now), views::ms(cfg.fresh_evidence));
        let loss_ms = views::ms(cfg.loss_window);
        // What a view needs of its observer, worked out once per observer, not once
        // per view: (alive, its latest sample, ms; stalls older than this are old
        // news, ms).
        self.observer_clock.clear();
        for o in &mut self.observers {
            o.begin_tick();
            // A stall that began before a lost peer came back, or within the recovery
            // hold after, is old news: it keeps a failure, it never raises one. Its
            // connections come back one backed-off RTO at a time, and its connects
            // from while it was away retry or give up after it is back.
            let joined = o
                .rejoined_at
                .map_or(0, |t| views::ms(t.saturating_add(cfg.recovery_hold)));
            let heard = views::ms(o.last_heard.unwrap_or(now));
            self.observer_clock.push((o.alive(now, cfg), heard, joined));
        }
        let limits = &self.limits;
        let enough = views::enough_to_compare(cfg);
        // The short pooled window: what each link reported since the last tick, added
        // to each host's decayed sums (see `pooled_loss_fast_window`). A link observed
        // twice between ticks adds only its latest observation.
        let last_tick_ms = self.last_tick_ms;
        let fast_weight = if last_tick_ms == u64::MAX {
            0.0
        } else {
            link::decay(
                now_ms.saturating_sub(last_tick_ms),
                cfg.pooled_loss_fast_window,
            )
        };
        self.last_tick_ms = now_ms;
        let hosts = &self.by_level[Level::Host];
        self.scan.refresh(hosts, &self.nodes, &self.observers);
        #[cfg(debug_assertions)]
        assert!(
            self.scan.matches(hosts, &self.nodes, &self.observers),
            "a change to a host's links did not invalidate the scan"
        );
        for i in 0..self.by_level[Level::Host].len() {
            self.prefetch_host(i + NODES_AHEAD, HOST_VIEWS_BYTES);
            let host = self.by_level[Level::Host][i];
            let node = &mut self.nodes[host.index()];
            let start = u32::try_from(self.views.len()).expect("fewer than 2^32 views");
            let health_of = &self.health;
            // Pooled loss by how many levels its observer is outside (as views are
            // bucketed in `outside_of`); each level sums the buckets above it.
            let mut loss_outside = [PooledLoss::default(); 5];
            let mut fresh_loss_outside = [PooledLoss::default(); 5];
            let (mut healthy, mut all_healthy) = ([0; 5], true);
            for chunk in self
                .scan
                .host(i, health_of)
                .chunk_by(|a, b| a.observer == b.observer)
            {
                let (observer, outside) = (chunk[0].observer, chunk[0].outside);
                let (alive, heard_ms, joined_ms) = self.observer_clock[usize::from(observer)];
                if !alive {
                    continue;
                }
                let o = &mut self.observers[usize::from(observer)];
                // One pass over the chunk's slots: each is read once per tick and its
                // status computed here, not in a pass of its own over every slot.
                let (mut loss, mut fresh_loss) = (PooledLoss::default(), PooledLoss::default());
                let clock = views::ViewClock {
                    now_ms,
                    fresh_ms,
                    news_since_ms: joined_ms,
                };
                let mut facts = |slot: SlotId| {
                    let at = LinkClock {
                        now_ms,
                        heard_ms,
                        loss_ms,
                        last_tick_ms,
                    };
                    link_facts(
                        &health_of[slot as usize],
                        at,
                        limits,
                        &mut loss,
                        &mut fresh_loss,
                    )
                };
                // One link per observer and host is the common case (one local
                // address): folded without the loop, it costs a third less.
                let view = if let [link] = chunk {
                    views::view_of_link(observer, outside, facts(link.slot), clock)
                } else {
                    let links = chunk.iter().map(|l| facts(l.slot));
                    views::view_of(observer, outside, links, clock)
                };
                let reach = usize::from(outside);
                // Without other hosts as far away to compare with, the observer
                // expects what it sees: it neither makes the host stand out nor hides it.
                let expected = views::expected_ratio(&o.reach_loss_before, reach, loss, enough)
                    .unwrap_or_else(|| loss.ratio());
                loss.expected = expected * loss.progress;
                fresh_loss.expected = expected * fresh_loss.progress;
                o.reach_loss[reach].add(loss);
                loss_outside[reach].add(loss);
                fresh_loss_outside[reach].add(fresh_loss);
                healthy[reach] += u32::from(view.status == LinkStatus::Healthy);
                all_healthy &= view.status < LinkStatus::Degraded;
                o.count(view);
                self.views.push(view);
            }
            node.views = start..u32::try_from(self.views.len()).expect("fewer than 2^32 views");
            node.healthy_reached = all_healthy.then_some(healthy);
            let (mut pooled, mut added) = (PooledLoss::default(), PooledLoss::default());
            for level in Level::ALL.into_iter().rev() {
                pooled.add(loss_outside[level.index() + 1]);
                added.add(fresh_loss_outside[level.index() + 1]);
                let fast = node.fast_loss[level].decayed_plus(fast_weight, added);
                node.fast_loss[level] = fast;
                // The short window holds a quarter of the samples, so twice the
                // noise: it must stand out twice as far.
                node.lossy[level] = pooled.is_lossy(cfg.degraded_standout, cfg)
                    || fast.is_lossy(2.0 * cfg.degraded_standout, cfg);
                node.loss[level] = pooled;
            }
            gray::pool(&mut self.nodes, host);
        }
        // Only observers with enough failing views can be cut off: tally them by level.
        let mut any = false;
        for o in &mut self.observers {
            o.tallied = o.may_be_cut_off(cfg);
            any |= o.tallied;
        }
        if !any {
            return;
        }
        // A bound first, a few instructions per view: an observer that still reaches
        // enough hosts in other sites is cut off at no level (a rack blackholed
        // elsewhere fails fifty of its views every tick, and tallying ten thousand
        // views by level for each such observer was a fifth of the tick).
        for v in &self.views {
            let o = &mut self.observers[usize::from(v.observer)];
            if o.tallied {
                o.count_far_reach(v);
            }
        }
        any = false;
        for o in &mut self.observers {
            o.tallied &= !o.reaches_too_far_to_be_cut_off(cfg);
            any |= o.tallied;
        }
        if !any {
            return;
        }
        for &host in &self.by_level[Level::Host] {
            let node = &self.nodes[host.index()];
            let group = node.around[Level::Rack].unwrap_or(host);
            for v in &self.views[range(&node.views)] {
                let o = &mut self.observers[usize::from(v.observer)];
                if o.tallied {
                    o.tally(v, &node.around, group);
                }
            }
        }
    }

    /// Step 3: each observer as a whole; the entities cut-off observers name.
    fn judge_observers(&mut self, now: Duration) {
        for e in self.cut_off_entities.drain(..) {
            self.nodes[e.index()].cut_off = false;
        }
        // (entity, observers naming it cut off this tick)
        let mut named: Vec<(EntityId, u32)> = Vec::new();
        for o in &mut self.observers {
            if !o.alive(now, &self.cfg) {
                continue;
            }
            o.judge(now, &self.cfg);
            if let Some(e) = o.cut_off_entity_named(now, &self.cfg) {
                match named.iter_mut().find(|(x, _)| *x == e) {
                    Some((_, n)) => *n += 1,
                    None => named.push((e, 1)),
                }
            }
        }
        // An entity is cut off when `min_observers` of the live observers inside it
        // say so (all of them, if fewer live there): one observer whose long-haul
        // links all lost a burst at once does not speak for its whole site.
        for (e, n) in named {
            let level = self.topology.entity(e).level;
            let inside = self
                .observers
                .iter()
                .filter(|o| o.around[level] == Some(e) && o.alive(now, &self.cfg))
                .count();
            let needed = self
                .cfg
                .min_observers
                .min(u32::try_from(inside).unwrap_or(u32::MAX));
            if n >= needed {
                self.nodes[e.index()].cut_off = true;
                self.cut_off_entities.push(e);
            }
        }
    }

    /// Step 4: each host from outside each of its enclosing entities, its vote in
    /// each of them, then its own state and hold. One pass over the hosts: at fleet
    /// scale a tick is bound by how often it walks the nodes.
    fn judge_hosts(&mut self, now: Duration) {
        self.totals = Totals::default();
        for level in [Level::Rack, Level::Cabinet, Level::Site] {
            for &id in &self.by_level[level] {
                self.nodes[id.index()].vote = Vote::default();
            }
        }
        let plain = self.observers.iter().all(Observer::judges_everywhere);
        let mut something_fails = false;
        self.failing_hosts.clear();
        // Hosts failing from outside and not yet held: judged once every observer's
        // reach is known (see below).
        let mut newly_failing = std::mem::take(&mut self.newly_failing);
        for i in 0..self.by_level[Level::Host].len() {
            self.prefetch_host(i + NODES_AHEAD, JUDGE_BYTES);
            let host = self.by_level[Level::Host][i];
            let node = &mut self.nodes[host.index()];
            outside_of(
                &mut node.outside,
                &self.views[range(&node.views)],
                &node.around,
                &self.observers,
                (plain, node.healthy_reached),
                &self.cfg,
            );
            for level in Level::ALL {
                node.outside[level].blame.lossy = node.lossy[level];
            }
            if node.outside[Level::Host].failing > 0 {
                something_fails = true;
                self.failing_hosts.push(host);
            }
            self.vote(host, now);
            let node = &self.nodes[host.index()];
            let from_outside = node.outside[Level::Host].status(now, &self.cfg);
            if from_outside == LinkStatus::Failed && !node.hold.held && !node.cut_off {
                newly_failing.push(host);
            } else {
                self.settle_host(host, from_outside, now);
            }
        }
        self.reach_ms.clear();
        self.reach_due = something_fails;
        if !newly_failing.is_empty() {
            self.work_out_reach();
        }
        for &host in &newly_failing {
            // Raised only by observers that still reach elsewhere (see
            // `vote_of_reaching_observers`): a partitioned observer's first failing
            // views are of its nearest neighbours outside, not of dead hosts.
            let node = &self.nodes[host.index()];
            let onset = node.outside[Level::Host].first_loss_ms;
            let around = node.around;
            let reaching = self.views_of(host).iter().any(|v| {
                v.status == LinkStatus::Failed
                    && v.outside > 0
                    && self.observers[usize::from(v.observer)].may_judge(&around)
                    && self.reaches_after(v, onset)
            });
            let from_outside = if reaching {
                LinkStatus::Failed
            } else {
                LinkStatus::Unknown
            };
            self.settle_host(host, from_outside, now);
        }
        newly_failing.clear();
        self.newly_failing = newly_failing;
    }

    /// A host's own state and hold, from its status seen from outside.
    fn settle_host(&mut self, host: EntityId, from_outside: LinkStatus, now: Duration) {
        let cfg = &self.cfg;
        let node = &mut self.nodes[host.index()];
        let cut_off = node.cut_off;
        let failing = cut_off || from_outside == LinkStatus::Failed;
        // Only fresh evidence raises a new FAILED; old evidence only keeps one.
        let raise = cut_off || node.outside[Level::Host].fresh || node.hold.held;
        node.observed = cut_off || from_outside != LinkStatus::Unknown;
        node.raw_failing = failing && raise;
        // Held FAILED, it is recovering: the loss and RTTs its links show are its
        // failure's (every connection that sat in it times out once more and
        // re-sends as it clears), judged afresh once the hold lets go.
        node.raw_degraded = !failing && !node.hold.held && from_outside == LinkStatus::Degraded;
        node.hold
            .update(node.raw_failing, node.raw_degraded, now, cfg);
        match from_outside {
            LinkStatus::Unknown => {}
            LinkStatus::Healthy => {
                self.totals.observed += 1;
                self.totals.healthy += 1;
            }
            LinkStatus::Degraded | LinkStatus::Failed => {
                self.totals.observed += 1;
                self.totals.bad += 1;
            }
        }
    }

    /// A host's vote in each of its enclosing entities.
    fn vote(&mut self, host: EntityId, now: Duration) {
        let node = &self.nodes[host.index()];
        let host_level = node.outside[Level::Host].status(now, &self.cfg);
        let around = node.around;
        let mut child = host;
        for level in [Level::Rack, Level::Cabinet, Level::Site] {
            let Some(e) = around[level] else {
                continue;
            };
            let o = &self.nodes[host.index()].outside[level];
            let (status, uncorroborated) = o.judged(now, &self.cfg);
            let fresh = (o.fresh, uncorroborated);
            // Only a failing or degraded host's blame is counted.
            let blame = if status >= LinkStatus::Degraded {
                o.blame
            } else {
                Blame::default()
            };
            self.nodes[e.index()]
                .vote
                .add(child, status, fresh, &blame, host_level);
            child = e;
        }
    }

    /// Step 5: racks, cabinets and sites judge their hosts' votes.
    fn roll_up(&mut self, now: Duration) {
        for level in [Level::Rack, Level::Cabinet, Level::Site] {
            for i in 0..self.by_level[level].len() {
                let id = self.by_level[level][i];
                let plain = &self.nodes[id.index()].vote;
                let mut outcome = rollup::judge(plain, &self.totals, &self.cfg);
                if outcome == Outcome::Failed || plain.may_fail_when_counted_by_observer(&self.cfg)
                {
                    // Count again by observer, only with observers that still reach
                    // elsewhere.
                    self.work_out_reach();
                    let vote = self.vote_of_reaching_observers(id, level, now);
                    let recounted = rollup::judge(&vote, &self.totals, &self.cfg);
                    if recounted == Outcome::Failed {
                        self.nodes[id.index()].vote = vote;
                        outcome = recounted;
                    } else if outcome == Outcome::Failed {
                        outcome = recounted;
                    }
                }
                let node = &mut self.nodes[id.index()];
                let failing = node.cut_off || outcome == Outcome::Failed;
                let raise = node.cut_off || node.vote.fresh || node.hold.held;
                node.observed = node.cut_off || outcome != Outcome::Unobserved;
                node.raw_failing = failing && raise;
                node.raw_degraded = !failing && !node.hold.held && outcome == Outcome::Degraded;
                node.hold
                    .update(node.raw_failing, node.raw_degraded, now, &self.cfg);
            }
        }
    }

    /// The vote of `e` (at `level`) counting only failing views from observers that,
    /// since the failure began, still saw progress from some host outside `e` and
    /// outside their own entity at the highest level where they and `e` differ (their
    /// site, for an entity in another site). An observer cut off with others (a whole
    /// site, say) sees everything outside fail, the nearest first: until it finds
    /// itself cut off, its failing views would vote down the first site whose RTOs
    /// fire, while its neighbours inside still answer. Both moments are the kernel's
    /// (the failure's first loss, and each answer less half its RTT,
    /// [`View::answered_ms`]), so no slack is needed.
    ///
    /// A host failing by one such observer alone counts when that observer sees at
    /// least `min_failed_hosts` of `e`'s hosts fail and `min_observers` observers do
    /// (see `rollup`). Runs only for an entity whose plain vote fails or may.
    fn vote_of_reaching_observers(&self, e: EntityId, level: Level, now: Duration) -> Vote {
        let cfg = &self.cfg;
        // Its hosts that some view from outside sees failing: no other has a view
        // that counts here (failing, from outside `e`), nor a first loss.
        let members: Vec<EntityId> = self
            .failing_hosts
            .iter()
            .copied()
            .filter(|h| self.nodes[h.index()].around[level] == Some(e))
            .collect();
        let counts = |v: &View, around: &PerLevel<Option<EntityId>>| {
            v.status == LinkStatus::Failed
                && usize::from(v.outside) > level.index()
                && self.observers[usize::from(v.observer)].may_judge(around)
        };
        let onset = members
            .iter()
            .map(|&h| self.nodes[h.index()].outside[level].first_loss_ms)
            .min()
            .unwrap_or(NEVER_MS);
        let reaching = |h: EntityId| {
            let node = &self.nodes[h.index()];
            self.views_of(h)
                .iter()
                .filter(move |v| counts(v, &node.around) && self.reaches_after(v, onset))
        };
        // The observers that see at least min_failed_hosts of e's hosts fail (one view
        // per observer and host): sorted and counted in runs, since a site's vote may
        // hold thousands of views from as many observers.
        let mut failing_views: Vec<u16> = members
            .iter()
            .flat_map(|&h| reaching(h).map(|v| v.observer))
            .collect();
        failing_views.sort_unstable();
        let seeing_enough: Vec<u16> = failing_views
            .chunk_by(|a, b| a == b)
            .filter(|run| u32::try_from(run.len()).unwrap_or(u32::MAX) >= cfg.min_failed_hosts)
            .map(|run| run[0])
            .collect();
        let sees_enough = |o: u16| seeing_enough.binary_search(&o).is_ok();
        let strong = seeing_enough.len();
        let corroborate_across_hosts =
            u32::try_from(strong).unwrap_or(u32::MAX) >= cfg.min_observers;
        let mut vote = self.nodes[e.index()].vote;
        vote.clear_failed();
        for &h in &members {
            let node = &self.nodes[h.index()];
            let outside = &node.outside[level];
            let mut counted = false;
            let mut by_one_that_sees_enough = false;
            for v in reaching(h) {
                vote.failing_observers.add(v.observer);
                vote.failing_racks
                    .add(self.observers[usize::from(v.observer)].rack());
                counted = true;
                by_one_that_sees_enough |= sees_enough(v.observer);
            }
            let failed = outside.status(now, cfg) == LinkStatus::Failed
                || (corroborate_across_hosts
                    && by_one_that_sees_enough
                    && outside.uncorroborated(now, cfg));
            if counted && failed {
                vote.add_failed(child_within(node, h, level));
            }
        }
        vote
    }

    /// Whether the observer behind failing view `v` had an answer crossing after
    /// `onset` from some host outside its own entity at the highest level where it and
    /// the failing host differ: it still reaches elsewhere, so it is not the one cut
    /// off. Strictly after: an answer dated to the partition's first moment may have
    /// crossed just before it.
    fn reaches_after(&self, v: &View, onset: u64) -> bool {
        let l = Level::ALL[usize::from(v.outside).clamp(1, 4) - 1];
        self.reach_ms
            .get(usize::from(v.observer))
            .is_some_and(|r| r[l] != NEVER_MS && r[l] > onset)
    }

    /// Per observer and level, the latest answer it had from a host outside its own
    /// entity at that level, dated when it crossed the path at the latest
    /// ([`View::answered_ms`]), not by the sample that showed it: the far sites' last
    /// ACKs reach an observer inside a partition after its nearest site's links have
    /// failed, sampled after them, yet they crossed before the partition. Worked out
    /// once in a tick where something fails, when first asked for; left empty (no
    /// observer reaches anything after anything) in one where nothing does.
    fn work_out_reach(&mut self) {
        if !std::mem::take(&mut self.reach_due) {
            return;
        }
        // The latest answer by how many levels its host is outside the observer
        // (1–4), one store per view; each level then takes the latest of those
        // outside it at least as far. (Taking every level in each view's own loop
        // was about 3 % of a failing tick's instructions.)
        let mut by_distance = vec![[NEVER_MS; 4]; self.observers.len()];
        for v in &self.views {
            let p = v.answered_ms();
            if p == NEVER_MS || v.outside == 0 {
                continue;
            }
            let latest =
                &mut by_distance[usize::from(v.observer)][usize::from(v.outside.min(4)) - 1];
            if *latest == NEVER_MS || p > *latest {
                *latest = p;
            }
        }
        self.reach_ms.clear();
        self.reach_ms.extend(by_distance.iter().map(|d| {
            let mut r = PerLevel([NEVER_MS; 4]);
            let mut latest = NEVER_MS;
            for l in Level::ALL.into_iter().rev() {
                let p = d[l.index()];
                if p != NEVER_MS && (latest == NEVER_MS || p > latest) {
                    latest = p;
                }
                r[l] = latest;
            }
            r
        }));
    }

    /// Step 6: top-down, decide what each entity shows and collect the changes.
    fn publish(&mut self, now: Duration) -> Vec<Verdict> {
        let mut changes = Vec::new();
        for level in Level::ALL.into_iter().rev() {
            for i in 0..self.by_level[level].len() {
                if level == Level::Host {
                    self.prefetch_host(i + NODES_AHEAD, PUBLISH_BYTES);
                }
                let id = self.by_level[level][i];
                let (state, cause) = self.shown_state(id, now);
                let node = &self.nodes[id.index()];
                let local = node.named_from_inside && state == State::Failed && cause.is_none();
                let now_shown = Shown {
                    state,
                    cause,
                    local,
                };
                let unchanged = node.shown == now_shown;
                if unchanged
                    && state == State::Failed
                    && cause.is_none()
                    && let Some(published) = &node.published
                {
                    // A failure that more observers now confirm is worth re-announcing:
                    // its confidence and observers changed. (Observers dropping out while
                    // it recovers under the hold is not news.) Only the observer set is
                    // computed per tick; the whole verdict only when it grew.
                    let grew = evidence::agreeing(self, id, state, now).iter().any(|&o| {
                        !published
                            .observers
                            .contains(&self.observers[usize::from(o)].name)
                    });
                    if grew {
                        let fresh = evidence::build(self, id, state, cause, published.since, now);
                        changes.push(fresh.clone());
                        self.nodes[id.index()].published = Some(Box::new(fresh));
                    }
                    continue;
                }
                if !unchanged {
                    let since = match &node.published {
                        Some(p) if p.state == state => p.since,
                        _ => now,
                    };
                    let verdict = evidence::build(self, id, state, cause, since, now);
                    changes.push(verdict.clone());
                    let node = &mut self.nodes[id.index()];
                    node.published = Some(Box::new(verdict));
                    node.shown = now_shown;
                }
            }
        }
        changes
    }

    /// The state an entity shows, and the failed ancestor that explains it.
    fn shown_state(&mut self, id: EntityId, now: Duration) -> (State, Option<EntityId>) {
        let parent = self.topology.entity(id).parent;
        let (parent_root, parent_pending) = parent.map_or((None, false), |p| {
            let n = &self.nodes[p.index()];
            (n.failed_root, n.pending)
        });
        let node = &mut self.nodes[id.index()];
        let previous = node.published.is_some().then_some(node.shown.state);
        node.pending = false;
        node.failed_root = None;
        if node.cut_off && node.hold.held {
            node.named_from_inside = true;
        } else if !node.hold.held {
            node.named_from_inside = false;
        }
        if node.hold.held {
            if let Some(root) = parent_root
                && !node.named_from_inside
            {
                node.failed_root = Some(root);
                return (State::Failed, Some(root));
            }
            if previous == Some(State::Failed) || node.named_from_inside || !parent_pending {
                // A cut-off entity is named by those inside it, whose neighbours they
                // still reach: what lies under it is not failed because of it.
                node.failed_root = (!node.named_from_inside).then_some(id);
                return (State::Failed, None);
            }
            // Not announced yet: keep showing what was shown, so a failure that turns
            // out to be its parent's is announced once, as the parent's.
            node.pending = true;
            return (previous.unwrap_or(State::Unknown), None);
        }
        if node.hold.pending() {
            // Failing, not yet for `confirm`: show what was shown; children wait.
            node.pending = true;
            return (previous.unwrap_or(State::Unknown), None);
        }
        // A level too small to vote (a one-host rack) passes its parent's wait down.
        node.pending = parent_pending;
        if let Some(root) = parent_root {
            // Inside a failed entity: what it is failed for shows through to what lies
            // below, even across a level too small to vote (a one-host rack).
            node.failed_root = Some(root);
            let v = &node.vote;
            if v.failed > 0 && 2 * v.failed >= v.observed {
                return (State::Failed, Some(root));
            }
        }
        let state = if node.hold.degraded(now) {
            State::Degraded
        } else if node.observed {
            State::Healthy
        } else {
            State::Unknown
        };
        (state, None)
    }
}

const NEVER_MS: u64 = u64::MAX;

/// The clock a link is read by in a tick, ms: now, its observer's latest sample, the
/// loss window and the previous tick.
#[derive(Clone, Copy)]
struct LinkClock {
    now_ms: u64,
    heard_ms: u64,
    loss_ms: u64,
    last_tick_ms: u64,
}

/// One link's status and stamps for its view, its loss added to `loss` (over the loss
/// window) and `fresh` (since the last tick). Each link is read once per tick, here,
/// not in a pass of its own over every slot.
#[inline(always)]
fn link_facts(
    health: &LinkHealth,
    at: LinkClock,
    limits: &link::Limits,
    loss: &mut PooledLoss,
    fresh: &mut PooledLoss,
) -> views::LinkFacts {
    let status = health.status_at(at.now_ms, at.heard_ms, limits);
    // Loss on links that still deliver: a failing link's retransmissions are its
    // failure, not a gray one.
    if status != LinkStatus::Failed {
        if let Some((retrans, progress)) = health.loss_sums(at.now_ms, at.loss_ms) {
            loss.retrans += retrans;
            loss.progress += progress;
        }
        if let Some((retrans, progress)) = health.loss_since(at.last_tick_ms) {
            fresh.retrans += retrans;
            fresh.progress += progress;
        }
    }
    (status, health.stamps_ms())
}

/// How many hosts ahead of the one a pass is at it asks for a node: each is several
/// hundred bytes, walked host after host, and waiting for each in turn was a tenth
/// of a tick.
const NODES_AHEAD: usize = 4;

impl Detector {
    /// Asks for the first `bytes` of the node of the `i`-th host, if there is one,
    /// ahead of reading them.
    #[inline(always)]
    fn prefetch_host(&self, i: usize, bytes: usize) {
        if let Some(&host) = self.by_level[Level::Host].get(i) {
            scan::prefetch_bytes(&self.nodes[host.index()], bytes);
        }
    }
}

/// A node's views as an index range of `Detector::views`.
fn range(r: &std::ops::Range<u32>) -> std::ops::Range<usize> {
    r.start as usize..r.end as usize
}

/// The views of one host this tick.
impl Detector {
    fn views_of(&self, host: EntityId) -> &[View] {
        &self.views[range(&self.nodes[host.index()].views)]
    }
}

/// How many of a host's enclosing entities, from the host up, do not hold the
/// observer: its view counts at those levels. Entities nest, so those run from the
/// host up to the first entity they share, and a host placed nowhere has nothing
/// above itself: counting every level that differs gives the same, without a branch
/// per level (it runs once per view). Ids as [`ids`] gives them.
fn outside_count(host: [u32; 4], observer: [u32; 4]) -> u8 {
    let mut n = 0;
    for l in 0..4 {
        n += u8::from(host[l] != NO_ENTITY && host[l] != observer[l]);
    }
    n
}

#[cfg(test)]
#[test]
fn outside_counts_the_levels_up_to_the_first_shared_entity() {
    let e = |i: u32| Some(EntityId(i));
    // Host 1 in rack 10, cabinet 20, site 30; others placed around it, and hosts
    // placed nowhere.
    let host = PerLevel([e(1), e(10), e(20), e(30)]);
    let nowhere = PerLevel([e(9), None, None, None]);
    let shapes = [
        (PerLevel([e(1), e(10), e(20), e(30)]), 0),
        (PerLevel([e(2), e(10), e(20), e(30)]), 1),
        (PerLevel([e(3), e(11), e(20), e(30)]), 2),
        (PerLevel([e(4), e(12), e(21), e(30)]), 3),
        (PerLevel([e(5), e(13), e(22), e(31)]), 4),
        (nowhere, 4),
    ];
    for (observer, expected) in shapes {
        assert_eq!(
            outside_count(ids(&host), ids(&observer)),
            expected,
            "{observer:?}"
        );
    }
    assert_eq!(
        outside_count(ids(&nowhere), ids(&host)),
        1,
        "only its own host"
    );
    assert_eq!(outside_count(ids(&nowhere), ids(&nowhere)), 0);
}

/// No entity at that level, in [`ids`].
const NO_ENTITY: u32 = u32::MAX;

/// Enclosing entities as plain ids, `NO_ENTITY` where there is none.
fn ids(around: &PerLevel<Option<EntityId>>) -> [u32; 4] {
    around.0.map(|e| e.map_or(NO_ENTITY, |e| e.0))
}

/// The host as seen from outside each of its enclosing entities, into `out`. Each
/// view lands in the bucket of how many levels it is outside; each level sums the
/// buckets above it. Witnesses need every level's onset first, so they are counted in
/// a second pass, and only when something fails. `plain`: every observer judges
/// everywhere ([`Observer::judges_everywhere`]), so a host every view sees healthy
/// (most hosts, most ticks: `healthy_reached`, counted as its views were built) is
/// judged without reading its views.
fn outside_of(
    out: &mut PerLevel<Outside>,
    views: &[View],
    around: &PerLevel<Option<EntityId>>,
    observers: &[Observer],
    (plain, healthy_reached): (bool, Option<[u32; 5]>),
    cfg: &DetectorConfig,
) {
    if plain && let Some(reached) = healthy_reached {
        let mut acc = 0;
        for level in Level::ALL.into_iter().rev() {
            acc += reached[level.index() + 1];
            out[level] = Outside {
                reached: acc,
                ..Outside::default()
            };
        }
        return;
    }
    let mut buckets = [Outside::default(); 5];
    for v in views {
        let o = &observers[usize::from(v.observer)];
        if v.status == LinkStatus::Unknown || !o.may_judge(around) {
            continue;
        }
        let b = &mut buckets[usize::from(v.outside)];
        if v.status == LinkStatus::Failed {
            b.add_failing(v, o.rack());
        } else {
            b.add_delivering(
                v.status == LinkStatus::Degraded && !o.discount_degraded,
                o.rack(),
            );
        }
    }
    let mut acc = Outside::default();
    for level in Level::ALL.into_iter().rev() {
        acc.merge(&buckets[level.index() + 1]);
        out[level] = acc;
    }
    if out[Level::Host].failing > 0 {
        let delivering =
            |v: &&View| v.status > LinkStatus::Unknown && v.status < LinkStatus::Failed;
        for v in views.iter().filter(delivering) {
            if observers[usize::from(v.observer)].may_judge(around) {
                for level in Level::ALL.into_iter().take(usize::from(v.outside)) {
                    out[level].add_witness(v, cfg);
                }
            }
        }
    }
}

fn is_within(topology: &Topology, mut e: EntityId, ancestor: EntityId) -> bool {
    loop {
        if e == ancestor {
            return true;
        }
        match topology.entity(e).parent {
            Some(p) => e = p,
            None => return false,
        }
    }
}

/// The child of the entity at `level` that holds host `h` (the host itself, for a rack).
fn child_within(node: &Node, h: EntityId, level: Level) -> EntityId {
    let mut child = h;
    for l in [Level::Rack, Level::Cabinet, Level::Site] {
        if l == level {
            break;
        }
        if let Some(e) = node.around[l] {
            child = e;
        }
    }
    child
}

#[cfg(test)]
mod dc_tests;
#[cfg(test)]
mod tests;
