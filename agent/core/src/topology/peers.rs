//! Which agents an agent follows when its config says `peers = "auto"`.
//!
//! At fleet scale nobody writes peer lists by hand, and hand-written lists drift from
//! the topology. The choice enters as a [`Topology`] and the agent's own host, and
//! leaves as a short list of hosts whose agents it subscribes to. It is pure and
//! deterministic: every tie is broken by a hash of entity paths (FNV-1a, then a 64-bit
//! mixer), never by file order or randomness, so the same topology gives every agent
//! the same peers on every start, and an operator reproduces any agent's choice with
//! `faultline topology peers`.
//!
//! Only hosts with at least one address in the file and a rack take part (a host
//! without an address can neither be reached nor find itself); they are the
//! candidates and the agents below. "Observers" of an agent are itself and its peers.
//!
//! With `fanout >= GUARANTEED_FANOUT`, wherever the topology has the hosts for it:
//! 1. never itself, no duplicates, at most `fanout` peers;
//! 2. every rack and every site, its own included, is watched from outside: the
//!    observers outside it sit in at least two distinct racks, so no verdict about it
//!    rests on one observer. Where fewer racks outside it exist, as many as exist;
//! 3. racks before repeats: a rack gets a second observer only once every rack that
//!    still has an unchosen host has one (observers per such rack differ by at most
//!    one); the agent's own rack counts itself, so it comes last;
//! 4. sites before repeats: among the racks of a round, the site with the fewest
//!    observers goes first, so with `fanout >= sites + GUARANTEED_FANOUT - 1` every
//!    site with a candidate has an observer;
//! 5. a topology with at most `fanout` other candidates: every one of them is a peer;
//! 6. fleet-wide: racks and sites are put on rings ordered by path hash. Every agent
//!    follows a host of each of the next two racks after its own on the rack ring and
//!    of the next two sites after its own on the site ring (two racks of the next site
//!    when there are only two sites). So every rack R is followed by every agent of
//!    the two racks before it (with three or more racks: agents in two distinct racks
//!    outside R; with two racks: every agent of the other one), and every site S by
//!    every agent of the site before it, and of the one before that when there are
//!    three or more sites;
//! 7. load spreads: within a rack, each agent ranks hosts by a hash of (itself, host)
//!    (rendezvous hashing), and starts its walk of a site's racks at a hashed offset, so
//!    different agents pick different hosts and no host is followed by everyone.
//!
//! With a smaller fan-out the stages run in order until the list is full: the next
//! sites, the next racks, then the spread; what is left out is what the later stages
//! would have given. Cabinets get no guarantee of their own beyond the spread over racks.
use rustc_hash::FxHashMap;

use super::{EntityId, Topology};

/// Peers an agent follows by default: enough for every guarantee with room for the
/// spread, few enough that a subscription per peer costs an agent nothing noticeable.
pub const DEFAULT_FANOUT: usize = 16;

/// The fan-out from which every property in the module comment holds: two picks on
/// the site ring, two on the rack ring, and one more from the spread (with two sites,
/// it goes to another rack of the agent's own site when the rings left that empty).
pub const GUARANTEED_FANOUT: usize = 5;

/// How many sites and racks after its own an agent follows on each ring.
const RING_SUCCESSORS: usize = 2;

/// [`PeerIndex::peers_of`] on a fresh index. `me` must be a host of the topology with
/// an address; for anything else the list is empty.
pub fn auto_peers(topology: &Topology, me: EntityId, fanout: usize) -> Vec<EntityId> {
    PeerIndex::new(topology).peers_of(me, fanout)
}

/// The topology's candidates grouped by rack and site, in ring order. Built once
/// (linear in the topology), it answers for any agent in time that grows with the
/// fan-out and the number of sites, not with the fleet.
pub struct PeerIndex<'t> {
    topology: &'t Topology,
    hosts: Vec<HostSlot>,
    /// In rack-ring order: a rack's index is its position on the ring.
    racks: Vec<RackSlot>,
    /// In site-ring order.
    sites: Vec<SiteSlot>,
    slot_of: FxHashMap<EntityId, usize>,
}

struct HostSlot {
    id: EntityId,
    hash: u64,
    rack: usize,
}

struct RackSlot {
    site: usize,
    hosts: Vec<usize>,
}

struct SiteSlot {
    id: EntityId,
    hash: u64,
    /// Its racks, in ring order.
    racks: Vec<usize>,
    hosts: usize,
}

impl<'t> PeerIndex<'t> {
    pub fn new(topology: &'t Topology) -> Self {
        let mut members = Vec::new();
        for (i, info) in topology.entities().iter().enumerate() {
            let id = EntityId(u32::try_from(i).expect("fewer than 2^32 entities"));
            let up = topology.ancestors(id);
            if let (super::Level::Host, Some(rack), Some(site)) =
                (info.level, up[super::Level::Rack], up[super::Level::Site])
                && !topology.addresses(id).is_empty()
            {
                members.push((id, rack, site));
            }
        }
        let ring = |ids: Vec<EntityId>| {
            let mut ids: Vec<(u64, EntityId)> = ids
                .into_iter()
                .map(|id| (path_hash(topology, id), id))
                .collect();
            ids.sort_unstable_by(|a, b| {
                a.0.cmp(&b.0)
                    .then_with(|| topology.entity(a.1).path.cmp(&topology.entity(b.1).path))
            });
            ids.dedup_by_key(|e| e.1);
            ids
        };
        let sites = ring(members.iter().map(|m| m.2).collect());
        let racks = ring(members.iter().map(|m| m.1).collect());
        let site_pos: FxHashMap<EntityId, usize> =
            sites.iter().enumerate().map(|(i, s)| (s.1, i)).collect();
        let rack_pos: FxHashMap<EntityId, usize> =
            racks.iter().enumerate().map(|(i, r)| (r.1, i)).collect();
        let mut index = Self {
            topology,
            hosts: Vec::with_capacity(members.len()),
            racks: racks
                .iter()
                .map(|_| RackSlot {
                    site: 0,
                    hosts: Vec::new(),
                })
                .collect(),
            sites: sites
                .iter()
                .map(|&(hash, id)| SiteSlot {
                    id,
                    hash,
                    racks: Vec::new(),
                    hosts: 0,
                })
                .collect(),
            slot_of: FxHashMap::default(),
        };
        for (id, rack, site) in members {
            let (rack, site) = (rack_pos[&rack], site_pos[&site]);
            let slot = index.hosts.len();
            index.hosts.push(HostSlot {
                id,
                hash: path_hash(topology, id),
                rack,
            });
            index.slot_of.insert(id, slot);
            index.racks[rack].hosts.push(slot);
            index.racks[rack].site = site;
            index.sites[site].hosts += 1;
        }
        for (r, rack) in index.racks.iter().enumerate() {
            index.sites[rack.site].racks.push(r);
        }
        index
    }

    /// The hosts `me` follows, at most `fanout`, in the order chosen (see the module
    /// comment). Empty when `me` is not a host with an address in the topology.
    pub fn peers_of(&self, me: EntityId, fanout: usize) -> Vec<EntityId> {
        let Some(&me) = self.slot_of.get(&me) else {
            return Vec::new();
        };
        let mut choice = Choice::new(self, me, fanout);
        choice.cover_next_sites();
        choice.cover_next_racks();
        choice.spread();
        choice.peers.iter().map(|&h| self.hosts[h].id).collect()
    }

    fn path(&self, id: EntityId) -> &str {
        &self.topology.entity(id).path
    }
}

/// One agent's choice in progress.
struct Choice<'i, 't> {
    index: &'i PeerIndex<'t>,
    me: usize,
    my_rack: usize,
    my_site: usize,
    fanout: usize,
    peers: Vec<usize>,
    /// Observers (this agent and its peers so far) per rack and per site.
    in_rack: FxHashMap<usize, usize>,
    in_site: FxHashMap<usize, usize>,
}

impl<'i, 't> Choice<'i, 't> {
    fn new(index: &'i PeerIndex<'t>, me: usize, fanout: usize) -> Self {
        let my_rack = index.hosts[me].rack;
        let my_site = index.racks[my_rack].site;
        Self {
            index,
            me,
            my_rack,
            my_site,
            fanout,
            peers: Vec::new(),
            in_rack: FxHashMap::from_iter([(my_rack, 1)]),
            in_site: FxHashMap::from_iter([(my_site, 1)]),
        }
    }

    fn observers_in_rack(&self, rack: usize) -> usize {
        self.in_rack.get(&rack).copied().unwrap_or(0)
    }

    fn observers_in_site(&self, site: usize) -> usize {
        self.in_site.get(&site).copied().unwrap_or(0)
    }

    /// Every host of a rack is either an observer already or still a candidate.
    fn rack_has_candidate(&self, rack: usize) -> bool {
        self.observers_in_rack(rack) < self.index.racks[rack].hosts.len()
    }

    fn site_has_candidate(&self, site: usize) -> bool {
        self.observers_in_site(site) < self.index.sites[site].hosts
    }

    /// Rendezvous hashing: each agent ranks the hosts of a rack its own way, so the
    /// agents that take one host of a rack spread over its hosts.
    fn take_host_in(&mut self, rack: usize) {
        if self.peers.len() >= self.fanout || !self.rack_has_candidate(rack) {
            return;
        }
        let index = self.index;
        let me = index.hosts[self.me].hash;
        let best = index.racks[rack]
            .hosts
            .iter()
            .copied()
            .filter(|&h| h != self.me && !self.peers.contains(&h))
            .max_by(|&a, &b| {
                let (a, b) = (&index.hosts[a], &index.hosts[b]);
                pair(me, a.hash)
                    .cmp(&pair(me, b.hash))
                    .then_with(|| index.path(b.id).cmp(index.path(a.id)))
            });
        if let Some(host) = best {
            self.peers.push(host);
            *self.in_rack.entry(rack).or_default() += 1;
            *self.in_site.entry(index.racks[rack].site).or_default() += 1;
        }
    }

    /// Where this agent starts walking a site's racks: hashed, so that agents start at
    /// different racks and share the load.
    fn offset(&self, site: usize) -> usize {
        let n = self.index.sites[site].racks.len();
        let me = self.index.hosts[self.me].hash;
        let n64 = u64::try_from(n).unwrap_or(u64::MAX).max(1);
        usize::try_from(pair(me, self.index.sites[site].hash) % n64).unwrap_or(0)
    }

    /// The first rack of `site` from this agent's offset with no observer yet.
    fn fresh_rack_in(&self, site: usize) -> Option<usize> {
        let racks = &self.index.sites[site].racks;
        let start = self.offset(site);
        (0..racks.len())
            .map(|k| racks[(start + k) % racks.len()])
            .find(|&r| self.observers_in_rack(r) == 0)
    }

    fn take_fresh_rack_in(&mut self, site: usize) {
        if let Some(rack) = self.fresh_rack_in(site) {
            self.take_host_in(rack);
        }
    }

    /// Stage 1: the next two sites on the site ring (two racks of the only other
    /// site): this site is watched from outside, and every site from the one before it.
    fn cover_next_sites(&mut self) {
        let n = self.index.sites.len();
        let next: Vec<usize> = (1..n)
            .map(|k| (self.my_site + k) % n)
            .take(RING_SUCCESSORS)
            .collect();
        match next[..] {
            [only] => {
                self.take_fresh_rack_in(only);
                self.take_fresh_rack_in(only);
            }
            _ => {
                for site in next {
                    self.take_fresh_rack_in(site);
                }
            }
        }
    }

    /// Stage 2: the next two racks on the rack ring, unless already followed: this
    /// rack is watched from two racks outside it, and every rack from the two before it.
    fn cover_next_racks(&mut self) {
        let n = self.index.racks.len();
        for k in (1..n).take(RING_SUCCESSORS) {
            let rack = (self.my_rack + k) % n;
            if self.observers_in_rack(rack) == 0 {
                self.take_host_in(rack);
            }
        }
    }

    /// Stage 3: rounds over the racks until the list is full or no candidate is left.
    /// Round k takes one host of every rack with at most k observers, site by site
    /// (fewest observers first), walking each site's racks from this agent's offset.
    fn spread(&mut self) {
        let index = self.index;
        let me = index.hosts[self.me].hash;
        let mut round = 0;
        while self.peers.len() < self.fanout {
            let mut open: Vec<usize> = (0..index.sites.len())
                .filter(|&s| self.site_has_candidate(s))
                .collect();
            if open.is_empty() {
                return;
            }
            // How far each site's walk has gone this round.
            let mut walked: FxHashMap<usize, usize> = FxHashMap::default();
            while self.peers.len() < self.fanout {
                let Some(pos) = (0..open.len()).min_by(|&a, &b| {
                    let (sa, sb) = (open[a], open[b]);
                    self.observers_in_site(sa)
                        .cmp(&self.observers_in_site(sb))
                        .then_with(|| {
                            pair(me, index.sites[sb].hash).cmp(&pair(me, index.sites[sa].hash))
                        })
                        .then_with(|| {
                            index
                                .path(index.sites[sa].id)
                                .cmp(index.path(index.sites[sb].id))
                        })
                }) else {
                    break;
                };
                let site = open[pos];
                match self.next_rack_of_round(site, round, walked.entry(site).or_default()) {
                    Some(rack) => self.take_host_in(rack),
                    None => {
                        open.swap_remove(pos);
                    }
                }
            }
            round += 1;
        }
    }

    /// The next rack of `site`'s walk with at most `round` observers and a candidate.
    fn next_rack_of_round(&self, site: usize, round: usize, walked: &mut usize) -> Option<usize> {
        let racks = &self.index.sites[site].racks;
        let start = self.offset(site);
        while *walked < racks.len() {
            let rack = racks[(start + *walked) % racks.len()];
            *walked += 1;
            if self.observers_in_rack(rack) <= round && self.rack_has_candidate(rack) {
                return Some(rack);
            }
        }
        None
    }
}

fn path_hash(topology: &Topology, id: EntityId) -> u64 {
    fnv1a(topology.entity(id).path.as_bytes())
}

/// FNV-1a, 64 bits: stable across builds and platforms, unlike `std`'s hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// The splitmix64 finalizer: FNV's low bits are weak, and offsets are taken modulo
/// small numbers.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A score for the pair (agent, entity): independent-looking across entities for one
/// agent, and across agents for one entity.
fn pair(me: u64, other: u64) -> u64 {
    mix(me ^ mix(other))
}

#[cfg(test)]
mod tests;
