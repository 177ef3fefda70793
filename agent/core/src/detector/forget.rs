//! Forgetting, so memory follows what is live and not every address ever seen: a
//! link with no evidence for `forget_after` is forgotten; a host the topology does
//! not list goes with its last link, and past `max_unlisted_hosts` the least recently
//! seen of them go first. A forgotten host's verdict goes too (announced UNKNOWN
//! first if it showed anything else). Slots and host ids are reused, so a front-end
//! whose clients churn through a million addresses keeps a bounded arena.
//!
//! Hosts the topology lists, and hosts an observer stands on, are never forgotten.
use std::{net::IpAddr, time::Duration};

use super::{
    Detector, Entity, Evidence, LinkHealth, LinkSlot, Node, SlotId, State, Verdict, views,
};
use crate::{
    link::Link,
    topology::{EntityId, EntityInfo, Level},
};

/// How often forgetting runs at most (and at once when far past the cap).
const SWEEP_EVERY_MS: u64 = 1000;

/// An observer id no live slot carries.
const FREE: u16 = u16::MAX;

#[derive(Default)]
pub(super) struct Forgetting {
    free_slots: Vec<SlotId>,
    free_hosts: Vec<EntityId>,
    /// Hosts the topology does not list, tracked now.
    unlisted: usize,
    /// Entities with an id below this are the topology's own.
    listed: usize,
    next_sweep_ms: u64,
    /// Forgotten since the last `take_forgotten`.
    gone: Vec<Entity>,
    /// UNKNOWN verdicts for forgotten hosts that showed something else, for the tick's
    /// changes.
    announce: Vec<Verdict>,
}

impl Forgetting {
    pub(super) fn new(listed: usize) -> Self {
        Self {
            listed,
            ..Self::default()
        }
    }
}

impl Detector {
    /// A slot for a new link of `observer`, reusing a forgotten one.
    pub(super) fn new_slot(&mut self, observer: u16, link: Link) -> SlotId {
        let slot = LinkSlot { observer, link };
        match self.forgetting.free_slots.pop() {
            Some(id) => {
                self.slots[id as usize] = slot;
                self.health[id as usize] = LinkHealth::default();
                id
            }
            None => {
                if self.slots.len() == self.slots.capacity() {
                    let more = (self.slots.len() / 2).max(64);
                    self.slots.reserve_exact(more);
                    self.health.reserve_exact(more);
                }
                let id = SlotId::try_from(self.slots.len()).expect("fewer than 2^32 links");
                self.slots.push(slot);
                self.health.push(LinkHealth::default());
                id
            }
        }
    }

    /// An id for a host the topology does not list, reusing a forgotten one.
    pub(super) fn new_unlisted_host(&mut self, info: EntityInfo) -> EntityId {
        self.forgetting.unlisted += 1;
        let Some(id) = self.forgetting.free_hosts.pop() else {
            // Grown by half, not doubled: at the cap, a doubling would hold twice the
            // nodes the cap allows (and both copies while it moves them).
            if self.nodes.len() == self.nodes.capacity() {
                self.nodes.reserve_exact((self.nodes.len() / 2).max(64));
            }
            let id = self.topology.push(info);
            self.nodes.push(Node {
                around: self.topology.ancestors(id),
                ..Node::default()
            });
            self.by_level[Level::Host].push(id);
            self.scan.invalidate();
            return id;
        };
        self.topology.reuse(id, info);
        self.nodes[id.index()] = Node {
            around: self.topology.ancestors(id),
            ..Node::default()
        };
        self.by_level[Level::Host].push(id);
        self.scan.invalidate();
        id
    }

    /// Hosts forgotten since the last call, whose verdicts the feed should drop.
    pub fn take_forgotten(&mut self) -> Vec<Entity> {
        std::mem::take(&mut self.forgetting.gone)
    }

    /// UNKNOWN verdicts of hosts forgotten this tick that showed something else.
    pub(super) fn forgotten_changes(&mut self) -> Vec<Verdict> {
        std::mem::take(&mut self.forgetting.announce)
    }

    /// Forgets what says nothing any more: at most once a second, or at once when
    /// the unlisted hosts are a quarter past their cap.
    pub(super) fn forget(&mut self, now: Duration) {
        let now_ms = views::ms(now);
        let cap = self.cfg.max_unlisted_hosts;
        let far_past_cap = self.forgetting.unlisted > cap + cap / 4;
        if now_ms < self.forgetting.next_sweep_ms && !far_past_cap {
            return;
        }
        self.forgetting.next_sweep_ms = now_ms.saturating_add(SWEEP_EVERY_MS);
        let idle_before = now.saturating_sub(self.cfg.forget_after);
        let idle: Vec<SlotId> = (0..self.slots.len())
            .filter(|&i| self.slots[i].observer != FREE)
            .filter(|&i| {
                self.health[i]
                    .last_evidence_at()
                    .is_none_or(|t| t < idle_before)
            })
            .map(|i| SlotId::try_from(i).expect("fewer than 2^32 links"))
            .collect();
        for slot in idle {
            self.free_slot(slot);
        }
        // Unlisted hosts: gone with their last link; past the cap, the least recently
        // seen go with their links.
        let standing: Vec<EntityId> = self.observers.iter().filter_map(|o| o.host).collect();
        let mut unlisted: Vec<(Duration, EntityId)> = self.by_level[Level::Host]
            .iter()
            .filter(|h| h.index() >= self.forgetting.listed && !standing.contains(h))
            .map(|&h| (self.last_seen(h), h))
            .collect();
        let over = unlisted.len().saturating_sub(cap);
        if over > 0 {
            unlisted.sort_unstable();
        }
        let mut forgotten = Vec::new();
        for &(seen, h) in &unlisted {
            let held = self.nodes[h.index()].hold.held;
            let linkless = self.nodes[h.index()].links.is_empty();
            let reason = if forgotten.len() < over {
                format!(
                    "forgotten: more than {cap} hosts outside the topology (detector.max_unlisted_hosts)"
                )
            } else if linkless && !held {
                format!(
                    "forgotten: no evidence since {} s ago",
                    now.saturating_sub(seen).as_secs()
                )
            } else {
                continue;
            };
            self.free_host(h, reason, now);
            forgotten.push(h);
        }
        if !forgotten.is_empty() {
            forgotten.sort_unstable();
            self.by_level[Level::Host].retain(|h| forgotten.binary_search(h).is_err());
            self.scan.invalidate();
        }
    }

    /// The latest evidence on any link to `host` (zero: none).
    fn last_seen(&self, host: EntityId) -> Duration {
        self.nodes[host.index()]
            .links
            .iter()
            .filter_map(|&(_, slot)| self.health[slot as usize].last_evidence_at())
            .max()
            .unwrap_or_default()
    }

    fn free_slot(&mut self, slot: SlotId) {
        let LinkSlot { observer, link } = self.slots[slot as usize];
        self.link_index.remove(&(observer, link));
        if let Some(&host) = self.host_of_ip.get(&link.remote) {
            self.nodes[host.index()].links.retain(|&(_, s)| s != slot);
            self.scan.invalidate();
        }
        self.silent_watch.retain(|&s| s != slot);
        self.slots[slot as usize].observer = FREE;
        self.health[slot as usize] = LinkHealth::default();
        self.forgetting.free_slots.push(slot);
    }

    fn free_host(&mut self, host: EntityId, reason: String, now: Duration) {
        let links: Vec<SlotId> = self.nodes[host.index()]
            .links
            .iter()
            .map(|&(_, s)| s)
            .collect();
        for slot in links {
            self.free_slot(slot);
        }
        let node = &mut self.nodes[host.index()];
        if let Some(published) = node.published.take()
            && published.state != State::Unknown
        {
            self.forgetting.announce.push(Verdict {
                state: State::Unknown,
                since: now,
                confidence: 0.0,
                reason,
                cause: None,
                evidence: Evidence::default(),
                observers: Vec::new(),
                local_fault: false,
                entity: published.entity.clone(),
            });
        }
        let path = self.topology.entity(host).path.clone();
        // An unlisted host is named by its address: `unplaced/ADDR`, `RACK/ADDR`.
        if let Some(ip) = path
            .rsplit('/')
            .next()
            .and_then(|a| a.parse::<IpAddr>().ok())
        {
            self.host_of_ip.remove(&ip);
        }
        self.forgetting.gone.push(Entity {
            level: Level::Host,
            path,
        });
        self.topology.unlist(host);
        self.nodes[host.index()] = Node::default();
        self.forgetting.unlisted = self.forgetting.unlisted.saturating_sub(1);
        self.forgetting.free_hosts.push(host);
    }
}

impl Detector {
    /// What the arena holds now: live links, and hosts the topology does not list.
    pub fn tracked(&self) -> Tracked {
        Tracked {
            links: self.slots.len() - self.forgetting.free_slots.len(),
            unlisted_hosts: self.forgetting.unlisted,
            arena_links: self.slots.len(),
        }
    }
}

/// See [`Detector::tracked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    pub links: usize,
    pub unlisted_hosts: usize,
    /// Slots allocated, live or free for reuse: the arena's high-water mark.
    pub arena_links: usize,
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::Arc};

    use super::*;
    use crate::{
        detector::{DetectorConfig, LinkDelta, Observation},
        link::LinkCounters,
        topology::Topology,
    };

    const TOPOLOGY: &str = "[[site]]\nname = \"s\"\n[[cabinet]]\nname = \"c\"\nsite = \"s\"\n\
        [[rack]]\nname = \"r\"\ncabinet = \"s/c\"\nprefixes = [\"10.0.0.0/24\"]\n\
        [[host]]\nname = \"me\"\nrack = \"s/c/r\"\naddresses = [\"10.0.0.1\"]\n\
        [[host]]\nname = \"db\"\nrack = \"s/c/r\"\naddresses = [\"10.0.0.2\"]\n";

    fn delivering(remote: IpAddr) -> Observation {
        Observation {
            observer: Arc::from("me"),
            link: Link {
                local: "10.0.0.1".parse().unwrap(),
                remote,
            },
            delta: LinkDelta {
                counters: LinkCounters {
                    progress_segs: 10,
                    acked_segs: 10,
                    ..LinkCounters::default()
                },
                rtt_p50_us: Some(200),
                silent_ms: None,
                acked_age_ms: None,
            },
        }
    }

    fn client(i: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0xC633_0000 + i))
    }

    fn detector(cfg: DetectorConfig) -> Detector {
        Detector::new(Topology::parse(Path::new("t.toml"), TOPOLOGY).unwrap(), cfg)
    }

    /// A link forgotten while its host stays: the next tick reads the host's links
    /// as they are now (debug builds check the tick's copy of them every tick).
    #[test]
    fn a_forgotten_link_of_a_listed_host_leaves_its_views() {
        let mut d = detector(DetectorConfig::default());
        let db: IpAddr = "10.0.0.2".parse().unwrap();
        let from_peer = |mut o: Observation| {
            o.observer = Arc::from("peer");
            o.link.local = "10.0.0.9".parse().unwrap();
            o
        };
        let t0 = Duration::from_secs(1);
        d.observe(&[delivering(db), from_peer(delivering(db))], t0);
        d.tick(t0);
        assert_eq!(d.tracked().links, 2);
        // The peer stays, but stops talking to db; we keep talking to it.
        let mut now = t0;
        while now < t0 + Duration::from_secs(62) {
            now += Duration::from_secs(1);
            d.observe(&[delivering(db)], now);
            d.heard_from("peer", now);
            d.tick(now);
        }
        assert_eq!(d.tracked().links, 1);
        let v = d.verdict(Level::Host, "s/c/r/db").expect("db stays");
        assert_eq!(v.state, State::Healthy);
    }

    #[test]
    fn idle_links_and_their_unlisted_hosts_are_forgotten_listed_hosts_stay() {
        let mut d = detector(DetectorConfig::default());
        let stranger = client(7);
        let db: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Duration::from_secs(1);
        d.observe(&[delivering(stranger), delivering(db)], t0);
        d.tick(t0);
        assert_eq!(d.tracked().unlisted_hosts, 1);
        assert!(d.verdict(Level::Host, "unplaced/198.51.0.7").is_some());
        // Still there just before forget_after, gone after.
        let before = t0 + Duration::from_secs(59);
        d.heard_from("me", before);
        d.tick(before);
        assert_eq!(d.tracked().links, 2);
        let after = t0 + Duration::from_secs(62);
        d.heard_from("me", after);
        let changes = d.tick(after);
        assert_eq!(
            d.tracked(),
            Tracked {
                links: 0,
                unlisted_hosts: 0,
                arena_links: 2
            }
        );
        assert!(d.verdict(Level::Host, "unplaced/198.51.0.7").is_none());
        let gone: Vec<_> = d.take_forgotten().into_iter().map(|e| e.path).collect();
        assert_eq!(gone, [Arc::from("unplaced/198.51.0.7")]);
        assert!(
            changes
                .iter()
                .all(|v| v.entity.path.as_ref() != "unplaced/198.51.0.7"
                    || v.state == State::Unknown),
            "{changes:?}"
        );
        assert!(
            d.verdict(Level::Host, "s/c/r/db").is_some(),
            "a listed host stays"
        );
        // The freed slots are reused: the arena does not grow.
        d.observe(&[delivering(client(8)), delivering(db)], after);
        d.tick(after);
        assert_eq!(d.tracked().arena_links, 2);
        assert_eq!(d.tracked().links, 2);
    }

    #[test]
    fn past_the_cap_the_least_recently_seen_unlisted_hosts_go_first() {
        let cfg = DetectorConfig {
            max_unlisted_hosts: 100,
            ..DetectorConfig::default()
        };
        let mut d = detector(cfg);
        let mut shown_gone = 0;
        // A million-address churn, scaled down: 5,000 addresses, 50 new per tick.
        for tick in 0..100_u32 {
            let now = Duration::from_millis(100) * (tick + 1);
            let batch: Vec<Observation> =
                (0..50).map(|i| delivering(client(tick * 50 + i))).collect();
            d.observe(&batch, now);
            for v in d.tick(now) {
                if v.reason.starts_with("forgotten") {
                    assert_eq!(v.state, State::Unknown, "{v:?}");
                    shown_gone += 1;
                }
            }
            let t = d.tracked();
            assert!(t.unlisted_hosts <= 125 + 50, "{t:?} at tick {tick}");
        }
        let t = d.tracked();
        assert!(t.arena_links <= 200, "the arena stays bounded: {t:?}");
        assert!(
            shown_gone > 4000,
            "forgotten hosts announced UNKNOWN: {shown_gone}"
        );
        // The newest are kept.
        assert!(d.verdict(Level::Host, "unplaced/198.51.19.135").is_some());
        assert!(d.verdict(Level::Host, "unplaced/198.51.0.0").is_none());
    }
}
