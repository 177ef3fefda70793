//! The verdict engine: link observations and a clock in, verdict changes out.
//!
//! Pure and deterministic: it never reads the kernel, the network or the wall clock,
//! so every rule is tested with scripted observations and simulated time.
//!
//! Each tick:
//! 1. every link's status comes from its counters ([`link`]);
//! 2. each observer's links are grouped per peer host; an observer whose links fail
//!    across racks while almost nothing it talks to still progresses has a local
//!    fault: its evidence is set aside and the verdict is about its own host;
//! 3. the remaining observers' views merge into host states;
//! 4. hosts roll up to racks, cabinets and sites by voting (enough distinct failed
//!    children, at least half of the observed ones, and healthy hosts outside);
//! 5. top-down, the highest failed entity is announced, and what lies under it is
//!    marked failed because of it; hysteresis ([`hold`]) keeps verdicts from flapping.
pub mod config;
mod evidence;
mod hold;
pub mod link;
pub mod verdict;

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

use rustc_hash::FxHashMap;

pub use config::DetectorConfig;
use hold::Hold;
pub use link::{LinkDelta, LinkHealth, LinkStatus};
pub use verdict::{ChildEvidence, Entity, Evidence, PeerEvidence, State, Verdict};

use crate::{
    link::{Link, LinkSample},
    topology::{EntityId, EntityInfo, Level, Placement, Topology, UNPLACED},
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
            },
        }
    }
}

struct LinkSlot {
    observer: u16,
    link: Link,
    health: LinkHealth,
}

/// Per-tick roll-up counters of one entity.
#[derive(Debug, Clone, Copy, Default)]
struct Vote {
    observed: u32,
    failed: u32,
    degraded: u32,
    /// Healthy hosts anywhere below this entity.
    healthy_hosts: u32,
}

/// A link's place in the slot arena.
type SlotId = u32;

#[derive(Default)]
struct Node {
    /// Links to this host (hosts only): (observer, slot), sorted by observer.
    links: Vec<(u16, SlotId)>,
    /// This tick's view of each observer of this host, computed once per tick.
    views: Vec<(u16, LinkStatus)>,
    /// This tick: the merged view of a host, or the vote of a higher entity.
    observed: bool,
    raw_failing: bool,
    raw_degraded: bool,
    vote: Vote,
    /// This host is an observer with a local fault.
    local_fault: bool,
    hold: Hold,
    /// Held but not yet announced: children wait for it before announcing themselves.
    pending: bool,
    published: Option<Verdict>,
    /// The top failed ancestor (or self) as published this tick, for children.
    failed_root: Option<EntityId>,
}

struct Observer {
    name: Arc<str>,
    /// Its own host, placed from the local address of its links.
    host: Option<EntityId>,
    impaired: Hold,
    // This tick's view:
    observed_hosts: u32,
    failed_hosts: u32,
    healthy_hosts: u32,
    /// Failed hosts' racks (or the host itself when unplaced): first and whether a second differs.
    first_failed_group: Option<EntityId>,
    failed_groups_differ: bool,
    /// Lowest common ancestor of the failed hosts (None: they share none).
    failed_lca: Option<Option<EntityId>>,
}

/// The verdict engine.
pub struct Detector {
    cfg: DetectorConfig,
    topology: Topology,
    nodes: Vec<Node>,
    observers: Vec<Observer>,
    observer_ids: HashMap<Arc<str>, u16>,
    /// Every link's state, in the order links were first seen: a tick walks it
    /// sequentially, which at 100k links is most of the tick's cost.
    slots: Vec<LinkSlot>,
    /// Each slot's status this tick, computed once.
    status: Vec<LinkStatus>,
    /// (observer, link) → slot.
    link_index: FxHashMap<(u16, Link), SlotId>,
    /// Per observer, the slot its i-th observation went to last time: batches from
    /// one agent come in a stable order, so most lookups skip the hash.
    hints: Vec<Vec<SlotId>>,
    weights: link::DecayWeights,
    /// Healthy observed hosts this tick (for "others are fine").
    total_healthy: u32,
    host_of_ip: HashMap<IpAddr, EntityId>,
    /// Entities in the order a tick visits them bottom-up (hosts first).
    by_level: [Vec<EntityId>; 4],
}

impl Detector {
    pub fn new(topology: Topology, cfg: DetectorConfig) -> Self {
        let mut d = Self {
            cfg,
            nodes: Vec::new(),
            observers: Vec::new(),
            observer_ids: HashMap::new(),
            slots: Vec::new(),
            status: Vec::new(),
            link_index: FxHashMap::default(),
            hints: Vec::new(),
            weights: link::DecayWeights::default(),
            total_healthy: 0,
            host_of_ip: HashMap::new(),
            by_level: Default::default(),
            topology: Topology::default(),
        };
        for (i, e) in topology.entities().iter().enumerate() {
            d.by_level[level_index(e.level)]
                .push(EntityId(u32::try_from(i).expect("< 2^32 entities")));
            d.nodes.push(Node::default());
        }
        d.topology = topology;
        d
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
        // (observer name, id, position in its run of observations)
        let mut current: Option<(&'a Arc<str>, u16, usize)> = None;
        for o in observations {
            let (observer, position) = match current {
                Some((name, id, i)) if Arc::ptr_eq(name, &o.observer) || **name == *o.observer => {
                    (id, i)
                }
                _ => (self.observer(&o.observer, o.link.local), 0),
            };
            current = Some((&o.observer, observer, position + 1));
            let slot = self.slot_for(observer, position, o.link);
            self.slots[slot as usize].health.observe_with(
                &o.delta,
                now,
                &self.cfg,
                &mut self.weights,
            );
        }
    }

    /// The slot of `link`, trying the observer's hint for `position` first.
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
            None => {
                let host = self.host_entity(link.remote);
                let id = SlotId::try_from(self.slots.len()).expect("fewer than 2^32 links");
                self.slots.push(LinkSlot {
                    observer,
                    link,
                    health: LinkHealth::default(),
                });
                let links = &mut self.nodes[host.index()].links;
                let at = links.partition_point(|&(ob, _)| ob <= observer);
                links.insert(at, (observer, id));
                self.link_index.insert((observer, link), id);
                id
            }
        };
        let hints = &mut self.hints[o];
        if hints.len() <= position {
            hints.resize(position + 1, SlotId::MAX);
        }
        hints[position] = id;
        id
    }

    /// Drops everything an observer reported (a peer agent that went away): its last
    /// word must not keep entities FAILED or DEGRADED until it goes stale.
    pub fn forget_observer(&mut self, name: &str) {
        let Some(&id) = self.observer_ids.get(name) else {
            return;
        };
        // Its slots say nothing any more, but stay where they are: a peer that comes
        // back reuses them, so a flapping peer does not grow the arena.
        for slot in self.slots.iter_mut().filter(|s| s.observer == id) {
            slot.health = LinkHealth::default();
        }
        self.observers[usize::from(id)].impaired = Hold::default();
        if let Some(host) = self.observers[usize::from(id)].host {
            self.nodes[host.index()].local_fault = false;
        }
    }

    fn observer(&mut self, name: &Arc<str>, local: IpAddr) -> u16 {
        if let Some(&id) = self.observer_ids.get(name) {
            if self.observers[usize::from(id)].host.is_none() {
                let host = self.host_entity(local);
                self.observers[usize::from(id)].host = Some(host);
            }
            return id;
        }
        let id = u16::try_from(self.observers.len()).expect("fewer than 65536 observers");
        let host = Some(self.host_entity(local));
        self.observers.push(Observer {
            name: name.clone(),
            host,
            impaired: Hold::default(),
            observed_hosts: 0,
            failed_hosts: 0,
            healthy_hosts: 0,
            first_failed_group: None,
            failed_groups_differ: false,
            failed_lca: None,
        });
        self.observer_ids.insert(name.clone(), id);
        id
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
        let id = self.topology.push(EntityInfo {
            level: Level::Host,
            path: path.into(),
            parent,
        });
        self.nodes.push(Node::default());
        self.by_level[0].push(id);
        id
    }

    /// Evaluates every rule at `now` and returns the verdicts that changed.
    pub fn tick(&mut self, now: Duration) -> Vec<Verdict> {
        self.observer_views(now);
        self.judge_observers(now);
        self.judge_hosts(now);
        self.roll_up(now);
        self.publish(now)
    }

    /// Every entity's current verdict, except those never observed.
    pub fn verdicts(&self) -> Vec<Verdict> {
        self.nodes
            .iter()
            .filter_map(|n| n.published.clone())
            .collect()
    }

    /// The current verdict of the entity at `path`, if it was ever observed.
    pub fn verdict(&self, level: Level, path: &str) -> Option<&Verdict> {
        let id = self.topology.find(path)?;
        (self.topology.entity(id).level == level)
            .then(|| self.nodes[id.index()].published.as_ref())
            .flatten()
    }

    /// Step 2a: each observer's view of each host, aggregated per observer.
    fn observer_views(&mut self, now: Duration) {
        let cfg = &self.cfg;
        self.status.clear();
        self.status
            .extend(self.slots.iter().map(|s| s.health.status(now, cfg)));
        for o in &mut self.observers {
            o.observed_hosts = 0;
            o.failed_hosts = 0;
            o.healthy_hosts = 0;
            o.first_failed_group = None;
            o.failed_groups_differ = false;
            o.failed_lca = None;
        }
        for &host in &self.by_level[0] {
            let node = &mut self.nodes[host.index()];
            node.views.clear();
            node.views.extend(views(&node.links, &self.status));
            for &(observer, view) in &self.nodes[host.index()].views {
                let o = &mut self.observers[usize::from(observer)];
                match view {
                    LinkStatus::Unknown => continue,
                    LinkStatus::Failed => {
                        o.failed_hosts += 1;
                        let group = self.topology.entity(host).parent.unwrap_or(host);
                        match o.first_failed_group {
                            None => o.first_failed_group = Some(group),
                            Some(g) if g != group => o.failed_groups_differ = true,
                            Some(_) => {}
                        }
                        o.failed_lca = Some(match o.failed_lca {
                            None => Some(host),
                            Some(lca) => lca.and_then(|l| common_ancestor(&self.topology, l, host)),
                        });
                    }
                    LinkStatus::Healthy => o.healthy_hosts += 1,
                    LinkStatus::Degraded => {}
                }
                o.observed_hosts += 1;
            }
        }
    }

    /// Step 2b: local faults.
    fn judge_observers(&mut self, now: Duration) {
        for o in &mut self.observers {
            let local = local_fault(o, &self.topology, &self.cfg);
            o.impaired.update(local, false, true, now, &self.cfg);
            if let Some(host) = o.host {
                self.nodes[host.index()].local_fault = o.impaired.held;
            }
        }
    }

    /// Step 3: merge the unimpaired observers' views into host states.
    fn judge_hosts(&mut self, now: Duration) {
        for &host in &self.by_level[0] {
            let node = &self.nodes[host.index()];
            let (mut failed, mut healthy, mut degraded) = (0u32, 0u32, 0u32);
            for &(observer, view) in &node.views {
                if self.observers[usize::from(observer)].impaired.held {
                    continue;
                }
                match view {
                    LinkStatus::Failed => failed += 1,
                    LinkStatus::Healthy => healthy += 1,
                    LinkStatus::Degraded => degraded += 1,
                    LinkStatus::Unknown => {}
                }
            }
            let node = &mut self.nodes[host.index()];
            // Unreachable from some observers but not others: a path problem, gray.
            let failing = node.local_fault || (failed > 0 && healthy == 0 && degraded == 0);
            let gray = !failing && (degraded > 0 || (failed > 0 && healthy > 0));
            node.observed = node.local_fault || failed + healthy + degraded > 0;
            node.raw_failing = failing;
            node.raw_degraded = gray;
            node.hold.update(failing, gray, true, now, &self.cfg);
        }
    }

    /// Step 4: vote upwards, level by level.
    fn roll_up(&mut self, now: Duration) {
        for level in &self.by_level[1..] {
            for &id in level {
                self.nodes[id.index()].vote = Vote::default();
            }
        }
        self.total_healthy = 0;
        for &host in &self.by_level[0] {
            let n = &self.nodes[host.index()];
            if n.observed && !n.hold.held && !n.raw_degraded {
                self.total_healthy += 1;
                let mut up = self.topology.entity(host).parent;
                while let Some(p) = up {
                    self.nodes[p.index()].vote.healthy_hosts += 1;
                    up = self.topology.entity(p).parent;
                }
            }
        }
        for level in 0..4 {
            for i in 0..self.by_level[level].len() {
                let id = self.by_level[level][i];
                if level > 0 {
                    self.judge_group(id, now);
                }
                let n = &self.nodes[id.index()];
                let (observed, held, degraded) = (n.observed, n.hold.held, n.hold.degraded(now));
                if let Some(p) = self.topology.entity(id).parent
                    && observed
                {
                    let v = &mut self.nodes[p.index()].vote;
                    v.observed += 1;
                    if held {
                        v.failed += 1;
                    } else if degraded {
                        v.degraded += 1;
                    }
                }
            }
        }
    }

    fn judge_group(&mut self, id: EntityId, now: Duration) {
        let total_healthy = self.total_healthy;
        let cfg = &self.cfg;
        let node = &mut self.nodes[id.index()];
        let v = node.vote;
        let quorum = |n: u32| {
            n >= cfg.min_failed_children
                && f64::from(n) >= cfg.min_failed_fraction * f64::from(v.observed)
        };
        let outside_healthy = total_healthy > v.healthy_hosts;
        node.observed = v.observed > 0;
        node.raw_failing = v.observed > 0 && quorum(v.failed) && outside_healthy;
        node.raw_degraded = !node.raw_failing && v.observed > 0 && quorum(v.failed + v.degraded);
        node.hold
            .update(node.raw_failing, node.raw_degraded, false, now, cfg);
    }

    /// Step 5: top-down, decide what each entity shows and collect the changes.
    fn publish(&mut self, now: Duration) -> Vec<Verdict> {
        let mut changes = Vec::new();
        for level in (0..4).rev() {
            for i in 0..self.by_level[level].len() {
                let id = self.by_level[level][i];
                let (state, cause) = self.shown_state(id, now);
                let node = &self.nodes[id.index()];
                let unchanged = match &node.published {
                    Some(p) => {
                        p.state == state
                            && p.cause.as_ref().map(|c| &c.path)
                                == cause.map(|c| &self.topology.entity(c).path)
                    }
                    None => state == State::Unknown,
                };
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
                        self.nodes[id.index()].published = Some(fresh);
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
                    self.nodes[id.index()].published = Some(verdict);
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
        let cfg = &self.cfg;
        let node = &mut self.nodes[id.index()];
        let previous = node.published.as_ref().map(|p| p.state);
        node.pending = false;
        node.failed_root = None;
        if node.hold.held {
            if let Some(root) = parent_root {
                node.failed_root = Some(root);
                return (State::Failed, Some(root));
            }
            if previous == Some(State::Failed) || (node.hold.confirmed(now, cfg) && !parent_pending)
            {
                node.failed_root = Some(id);
                return (State::Failed, None);
            }
            // Not announced yet: keep showing what was shown, so a failure that turns
            // out to be its parent's is announced once, as the parent's.
            node.pending = true;
            return (previous.unwrap_or(State::Unknown), None);
        }
        let state = if node.raw_degraded || node.hold.degraded(now) || node.hold.held {
            State::Degraded
        } else if node.observed {
            State::Healthy
        } else {
            State::Unknown
        };
        (state, None)
    }
}

/// Per observer, its view of one host from its links to it (links sorted by observer).
fn views<'a>(
    links: &'a [(u16, SlotId)],
    status: &'a [LinkStatus],
) -> impl Iterator<Item = (u16, LinkStatus)> + 'a {
    links.chunk_by(|a, b| a.0 == b.0).map(move |chunk| {
        let (mut failed, mut healthy, mut degraded) = (false, false, false);
        for &(_, slot) in chunk {
            match status[slot as usize] {
                LinkStatus::Failed => failed = true,
                LinkStatus::Healthy => healthy = true,
                LinkStatus::Degraded => degraded = true,
                LinkStatus::Unknown => {}
            }
        }
        let view = if failed && !healthy && !degraded {
            LinkStatus::Failed
        } else if degraded || failed {
            LinkStatus::Degraded
        } else if healthy {
            LinkStatus::Healthy
        } else {
            LinkStatus::Unknown
        };
        (chunk[0].0, view)
    })
}

/// An observer is cut off itself when its links fail in several racks at once while
/// almost nothing it talks to still progresses — unless one remote entity that does not
/// contain the observer explains every failure (then that entity is the suspect).
fn local_fault(o: &Observer, topology: &Topology, cfg: &DetectorConfig) -> bool {
    if o.failed_hosts < cfg.local_fault_min_hosts || !o.failed_groups_differ {
        return false;
    }
    if f64::from(o.healthy_hosts)
        > cfg.local_fault_max_healthy_fraction * f64::from(o.observed_hosts)
    {
        return false;
    }
    match (o.failed_lca.flatten(), o.host) {
        (Some(lca), Some(me)) => is_within(topology, me, lca),
        (Some(_), None) => false,
        (None, _) => true,
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

fn common_ancestor(topology: &Topology, a: EntityId, b: EntityId) -> Option<EntityId> {
    let mut x = Some(a);
    while let Some(e) = x {
        if is_within(topology, b, e) {
            return Some(e);
        }
        x = topology.entity(e).parent;
    }
    None
}

fn level_index(level: Level) -> usize {
    match level {
        Level::Host => 0,
        Level::Rack => 1,
        Level::Cabinet => 2,
        Level::Site => 3,
    }
}

#[cfg(test)]
mod tests;
