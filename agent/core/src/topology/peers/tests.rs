//! The properties promised in the module comment, checked on hand-made topologies, on
//! generated ones of every shape (proptest) and on a 10,000-host fleet.
use std::{collections::HashSet, fmt::Write as _, path::Path};

use proptest::prelude::*;

use super::*;
use crate::topology::Level;

/// A topology's shape: sites of cabinets of racks of hosts; `false` is a host listed
/// without an address (it can take no part).
type Shape = Vec<Vec<Vec<Vec<bool>>>>;

/// The topology file for `shape`, each list in an order shuffled by `seed`. Odd sites
/// are IPv6 only.
fn topology_text(shape: &Shape, seed: u64) -> String {
    let (mut sites, mut cabinets, mut racks, mut hosts) = (vec![], vec![], vec![], vec![]);
    let mut n = 0u32;
    for (s, site) in shape.iter().enumerate() {
        sites.push(format!("[[site]]\nname = \"s{s}\"\n"));
        for (c, cabinet) in site.iter().enumerate() {
            cabinets.push(format!("[[cabinet]]\nname = \"c{c}\"\nsite = \"s{s}\"\n"));
            for (r, rack) in cabinet.iter().enumerate() {
                racks.push(format!(
                    "[[rack]]\nname = \"r{r}\"\ncabinet = \"s{s}/c{c}\"\n"
                ));
                for &addressed in rack {
                    n += 1;
                    let mut host =
                        format!("[[host]]\nname = \"h{n}\"\nrack = \"s{s}/c{c}/r{r}\"\n");
                    if addressed {
                        let addr = if s % 2 == 1 {
                            format!("fd00:{s}::{n:x}")
                        } else {
                            std::net::Ipv4Addr::from(0x0a00_0000 + n).to_string()
                        };
                        let _ = writeln!(host, "addresses = [\"{addr}\"]");
                    }
                    hosts.push(host);
                }
            }
        }
    }
    let mut state = seed | 1;
    let mut text = String::new();
    for mut list in [sites, cabinets, racks, hosts] {
        // Fisher-Yates with xorshift64: a file order the choice must not depend on.
        for i in (1..list.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let j = usize::try_from(state % u64::try_from(i + 1).unwrap()).unwrap();
            list.swap(i, j);
        }
        text.extend(list);
    }
    text
}

fn parse(text: &str) -> Topology {
    Topology::parse(Path::new("topo.toml"), text).unwrap()
}

fn paths(t: &Topology, ids: &[EntityId]) -> Vec<String> {
    ids.iter()
        .map(|&id| t.entity(id).path.to_string())
        .collect()
}

/// Every agent's peers, and what the checks need to know about the topology (looked
/// up once: the checks ask for each agent's rack and site again and again).
struct Fleet<'t> {
    t: &'t Topology,
    index: PeerIndex<'t>,
    fanout: usize,
    /// Hosts with an address: the agents and the candidates.
    agents: Vec<EntityId>,
    peers: Vec<Vec<EntityId>>,
    /// The rack and site of every agent, and the site of every rack.
    up: FxHashMap<EntityId, (EntityId, EntityId)>,
    /// Racks and sites with at least one agent, and their agents.
    members: FxHashMap<EntityId, Vec<EntityId>>,
    racks: Vec<EntityId>,
    sites: Vec<EntityId>,
    /// How many of those racks each rack (one) and site holds.
    racks_in: FxHashMap<EntityId, usize>,
}

impl<'t> Fleet<'t> {
    fn new(t: &'t Topology, fanout: usize) -> Self {
        let index = PeerIndex::new(t);
        let agents: Vec<EntityId> = (0..t.len())
            .map(|i| EntityId(u32::try_from(i).unwrap()))
            .filter(|&id| t.entity(id).level == Level::Host && !t.addresses(id).is_empty())
            .collect();
        let peers = agents.iter().map(|&a| index.peers_of(a, fanout)).collect();
        let mut up = FxHashMap::default();
        let mut members: FxHashMap<EntityId, Vec<EntityId>> = FxHashMap::default();
        for &a in &agents {
            let ancestors = t.ancestors(a);
            let (rack, site) = (
                ancestors[Level::Rack].unwrap(),
                ancestors[Level::Site].unwrap(),
            );
            up.insert(a, (rack, site));
            up.insert(rack, (rack, site));
            members.entry(rack).or_default().push(a);
            members.entry(site).or_default().push(a);
        }
        let of_level = |level| {
            let mut out: Vec<EntityId> = members
                .keys()
                .copied()
                .filter(|&e| t.entity(e).level == level)
                .collect();
            out.sort_unstable();
            out
        };
        let (racks, sites) = (of_level(Level::Rack), of_level(Level::Site));
        let mut racks_in: FxHashMap<EntityId, usize> = FxHashMap::default();
        for rack in &racks {
            racks_in.insert(*rack, 1);
            *racks_in.entry(up[rack].1).or_default() += 1;
        }
        Self {
            t,
            index,
            fanout,
            agents,
            peers,
            up,
            members,
            racks,
            sites,
            racks_in,
        }
    }

    /// The rack or site of an agent (or of a rack).
    fn up(&self, e: EntityId, level: Level) -> EntityId {
        match level {
            Level::Rack => self.up[&e].0,
            _ => self.up[&e].1,
        }
    }

    fn of_level(&self, level: Level) -> &[EntityId] {
        if level == Level::Rack {
            &self.racks
        } else {
            &self.sites
        }
    }

    fn check_every_agent(&self) {
        for (i, &me) in self.agents.iter().enumerate() {
            self.check_agent(me, &self.peers[i]);
        }
    }

    fn check_agent(&self, me: EntityId, peers: &[EntityId]) {
        let name = &self.t.entity(me).path;
        let unique: HashSet<EntityId> = peers.iter().copied().collect();
        assert_eq!(unique.len(), peers.len(), "{name}: duplicates");
        assert!(!unique.contains(&me), "{name}: follows itself");
        assert!(peers.len() <= self.fanout, "{name}: over the fan-out");
        for p in peers {
            assert!(self.up.contains_key(p), "{name}: {p:?} has no address");
        }
        if self.agents.len() - 1 <= self.fanout {
            assert_eq!(peers.len(), self.agents.len() - 1, "{name}: not everyone");
        }
        let observers: Vec<EntityId> = std::iter::once(me).chain(peers.iter().copied()).collect();
        self.check_rack_spread(me, &observers);
        if self.fanout >= GUARANTEED_FANOUT {
            self.check_watched(me, &observers);
        }
        if self.fanout >= self.sites.len() + GUARANTEED_FANOUT - 1 {
            for &site in &self.sites {
                assert!(
                    observers.iter().any(|&o| self.up(o, Level::Site) == site),
                    "{name}: no observer in {}",
                    self.t.entity(site).path
                );
            }
        }
    }

    /// A rack gets a second observer only once every rack with a candidate left has one.
    fn check_rack_spread(&self, me: EntityId, observers: &[EntityId]) {
        let mut count: FxHashMap<EntityId, usize> = FxHashMap::default();
        for &o in observers {
            *count.entry(self.up(o, Level::Rack)).or_default() += 1;
        }
        let max = count.values().copied().max().unwrap_or(0);
        for rack in &self.racks {
            let n = count.get(rack).copied().unwrap_or(0);
            if n < self.members[rack].len() {
                assert!(
                    n + 1 >= max,
                    "{}: {} has {n} observers and a candidate left, another rack {max}",
                    self.t.entity(me).path,
                    self.t.entity(*rack).path,
                );
            }
        }
    }

    /// Every rack and site is seen from at least two racks outside it, or from as
    /// many as the topology has.
    fn check_watched(&self, me: EntityId, observers: &[EntityId]) {
        for level in [Level::Rack, Level::Site] {
            for &entity in self.of_level(level) {
                let outside = |host| self.up(host, level) != entity;
                let mut seen: Vec<EntityId> = observers
                    .iter()
                    .filter(|&&o| outside(o))
                    .map(|&o| self.up(o, Level::Rack))
                    .collect();
                seen.sort_unstable();
                seen.dedup();
                // This agent counts for its own rack, so every rack outside the
                // entity can give it an observer.
                let reachable = self.racks.len() - self.racks_in[&entity];
                assert!(
                    seen.len() >= reachable.min(2),
                    "{}: {} seen from {} rack(s) outside, {reachable} possible",
                    self.t.entity(me).path,
                    self.t.entity(entity).path,
                    seen.len()
                );
            }
        }
    }

    /// Every rack and site is followed by agents of two racks (sites) before it on the
    /// ring, or by every agent of the only other one.
    fn check_fleet(&self) {
        for level in [Level::Rack, Level::Site] {
            // Entity → the agents outside it that follow a host in it.
            let mut followers: FxHashMap<EntityId, HashSet<EntityId>> = FxHashMap::default();
            for (&a, peers) in self.agents.iter().zip(&self.peers) {
                for &p in peers {
                    if self.up(p, level) != self.up(a, level) {
                        followers.entry(self.up(p, level)).or_default().insert(a);
                    }
                }
            }
            let entities = self.of_level(level);
            for entity in entities {
                let followers = followers.remove(entity).unwrap_or_default();
                let mut from: Vec<EntityId> =
                    followers.iter().map(|&f| self.up(f, level)).collect();
                from.sort_unstable();
                from.dedup();
                let path = &self.t.entity(*entity).path;
                match entities.len() {
                    0 | 1 => {}
                    2 => assert_eq!(
                        followers.len(),
                        self.agents.len() - self.members[entity].len(),
                        "{path}: not every agent outside"
                    ),
                    _ => assert!(from.len() >= 2, "{path} followed from {from:?} only"),
                }
            }
        }
    }

    /// What makes the fleet-wide guarantee: each agent follows a host of each of the
    /// next two racks on the rack ring and of the next two sites on the site ring (two
    /// racks of the only other site). Needs a fan-out of four.
    fn check_rings(&self) {
        let index = &self.index;
        let (racks, sites) = (index.racks.len(), index.sites.len());
        for (&me, peers) in self.agents.iter().zip(&self.peers) {
            let name = &self.t.entity(me).path;
            let rack_of = |h: EntityId| index.hosts[index.slot_of[&h]].rack;
            let my_rack = rack_of(me);
            let my_site = index.racks[my_rack].site;
            let mut peer_racks: Vec<usize> = peers.iter().map(|&p| rack_of(p)).collect();
            peer_racks.sort_unstable();
            peer_racks.dedup();
            for k in (1..racks).take(2) {
                let next = (my_rack + k) % racks;
                assert!(
                    peer_racks.contains(&next),
                    "{name}: rack {next} after {my_rack} not followed"
                );
            }
            let in_site = |site: usize| {
                peer_racks
                    .iter()
                    .filter(|&&r| index.racks[r].site == site)
                    .count()
            };
            match sites {
                0 | 1 => {}
                2 => {
                    let other = 1 - my_site;
                    let wanted = index.sites[other].racks.len().min(2);
                    assert!(
                        in_site(other) >= wanted,
                        "{name}: {wanted} racks of the other site"
                    );
                }
                _ => {
                    for k in 1..=2 {
                        let next = (my_site + k) % sites;
                        assert!(
                            in_site(next) >= 1,
                            "{name}: site {next} after {my_site} not followed"
                        );
                    }
                }
            }
        }
    }

    /// How many agents follow each host, most first.
    fn followers_per_host(&self) -> Vec<usize> {
        let mut count: FxHashMap<EntityId, usize> = FxHashMap::default();
        for p in self.peers.iter().flatten() {
            *count.entry(*p).or_default() += 1;
        }
        let mut out: Vec<usize> = count.into_values().collect();
        out.sort_unstable_by(|a, b| b.cmp(a));
        out
    }
}

const LAB: &str = include_str!("../../../../../examples/lab/topology.toml");

#[test]
fn the_lab_with_a_small_fanout_keeps_every_guarantee() {
    let t = parse(LAB);
    for fanout in [GUARANTEED_FANOUT, 8] {
        let fleet = Fleet::new(&t, fanout);
        assert_eq!(fleet.agents.len(), 16);
        fleet.check_every_agent();
        fleet.check_fleet();
        fleet.check_rings();
        assert!(fleet.peers.iter().all(|p| p.len() == fanout));
    }
}

#[test]
fn the_lab_with_the_default_fanout_follows_everyone() {
    let t = parse(LAB);
    let me = t.find("dc-a/c1/r1/a11-1").unwrap();
    let peers = auto_peers(&t, me, DEFAULT_FANOUT);
    assert_eq!(peers.len(), 15);
    // The next sites and racks first: another site leads.
    assert!(
        !t.entity(peers[0]).path.starts_with("dc-a/"),
        "{:?}",
        paths(&t, &peers)
    );
}

#[test]
fn the_choice_is_stable_and_ignores_file_order() {
    let shape: Shape = vec![vec![vec![vec![true; 3]; 4]; 2]; 3];
    let a = parse(&topology_text(&shape, 1));
    let b = parse(&topology_text(&shape, 99));
    let me_a = a.find("s1/c0/r2/h32").unwrap();
    let me_b = b.find("s1/c0/r2/h32").unwrap();
    assert_ne!(me_a, me_b, "the shuffle moved the host");
    let first = paths(&a, &auto_peers(&a, me_a, 7));
    assert_eq!(first, paths(&a, &auto_peers(&a, me_a, 7)));
    assert_eq!(first, paths(&b, &auto_peers(&b, me_b, 7)));
}

#[test]
fn too_small_topologies_give_what_they_have() {
    let alone = parse(&topology_text(&vec![vec![vec![vec![true]]]], 0));
    let me = alone.find("s0/c0/r0/h1").unwrap();
    assert!(auto_peers(&alone, me, DEFAULT_FANOUT).is_empty());

    let pair = parse(&topology_text(
        &vec![vec![vec![vec![true, true, false]]]],
        0,
    ));
    let me = pair.find("s0/c0/r0/h1").unwrap();
    assert_eq!(
        paths(&pair, &auto_peers(&pair, me, DEFAULT_FANOUT)),
        ["s0/c0/r0/h2"],
        "the host without an address is no candidate"
    );
    assert!(auto_peers(&pair, me, 0).is_empty());
    let rack = pair.find("s0/c0/r0").unwrap();
    assert!(
        auto_peers(&pair, rack, DEFAULT_FANOUT).is_empty(),
        "not a host"
    );
    let unaddressed = pair.find("s0/c0/r0/h3").unwrap();
    assert!(auto_peers(&pair, unaddressed, DEFAULT_FANOUT).is_empty());
}

#[test]
fn agents_taking_one_host_of_a_rack_spread_over_its_hosts() {
    // One rack of four hosts, twenty single-host racks around it: with a fan-out of
    // 20, each single-host agent takes one host of every other rack, so all twenty
    // take one host of the big rack, and not the same one.
    let mut cabinet = vec![vec![true; 4]];
    cabinet.extend(vec![vec![true]; 20]);
    let t = parse(&topology_text(&vec![vec![cabinet]], 3));
    let fleet = Fleet::new(&t, 20);
    let big = t.find("s0/c0/r0").unwrap();
    let taken: HashSet<EntityId> = fleet
        .agents
        .iter()
        .zip(&fleet.peers)
        .filter(|(a, _)| fleet.up(**a, Level::Rack) != big)
        .flat_map(|(_, peers)| {
            let inside: Vec<EntityId> = peers
                .iter()
                .copied()
                .filter(|&p| fleet.up(p, Level::Rack) == big)
                .collect();
            assert_eq!(inside.len(), 1, "one host per rack before a second");
            inside
        })
        .collect();
    assert!(
        taken.len() >= 3,
        "only {taken:?} of the rack's 4 hosts followed"
    );
}

/// 10,000 hosts: 4 sites × 5 cabinets × 25 racks × 20 hosts.
#[test]
fn a_ten_thousand_host_fleet_keeps_every_guarantee_and_spreads_the_load() {
    let shape: Shape = vec![vec![vec![vec![true; 20]; 25]; 5]; 4];
    let t = parse(&topology_text(&shape, 7));
    let fleet = Fleet::new(&t, DEFAULT_FANOUT);
    assert_eq!(fleet.agents.len(), 10_000);
    assert!(fleet.peers.iter().all(|p| p.len() == DEFAULT_FANOUT));
    // The per-agent checks walk the whole topology: a sample of agents keeps it quick.
    for i in (0..fleet.agents.len()).step_by(97) {
        fleet.check_agent(fleet.agents[i], &fleet.peers[i]);
    }
    fleet.check_fleet();
    fleet.check_rings();
    let followers = fleet.followers_per_host();
    // Each agent follows 16 hosts, so a host has 16 followers on average; hashing
    // spreads them, and nobody is followed by a crowd.
    assert!(followers[0] <= 3 * DEFAULT_FANOUT, "{:?}", &followers[..10]);
    assert!(
        followers.len() >= 9_900,
        "only {} hosts followed",
        followers.len()
    );
}

#[test]
fn sparse_fleets_keep_the_fleet_wide_guarantee() {
    // Sixty single-host racks, five peers each: hashing alone would leave some rack
    // followed from one rack or none; the rack ring does not.
    let t = parse(&topology_text(&vec![vec![vec![vec![true]; 60]]], 5));
    let fleet = Fleet::new(&t, GUARANTEED_FANOUT);
    fleet.check_every_agent();
    fleet.check_fleet();
    fleet.check_rings();
    // Forty single-rack sites.
    let t = parse(&topology_text(&vec![vec![vec![vec![true; 2]]]; 40], 5));
    let fleet = Fleet::new(&t, GUARANTEED_FANOUT);
    fleet.check_every_agent();
    fleet.check_fleet();
    fleet.check_rings();
}

fn shapes() -> impl Strategy<Value = Shape> {
    let rack = prop::collection::vec(prop::bool::weighted(0.9), 1..=4);
    let cabinet = prop::collection::vec(rack, 1..=5);
    let site = prop::collection::vec(cabinet, 1..=4);
    prop::collection::vec(site, 1..=4)
}

proptest! {
    #[test]
    fn every_generated_topology_keeps_the_guarantees(
        shape in shapes(),
        fanout in 0usize..=20,
        seeds in (any::<u64>(), any::<u64>()),
    ) {
        let t = parse(&topology_text(&shape, seeds.0));
        let fleet = Fleet::new(&t, fanout);
        fleet.check_every_agent();
        if fanout >= GUARANTEED_FANOUT {
            fleet.check_fleet();
        }
        if fanout >= 2 * RING_SUCCESSORS {
            fleet.check_rings();
        }
        // The same topology written in another order: the same peers, in the same order.
        let other = parse(&topology_text(&shape, seeds.1));
        let index = PeerIndex::new(&other);
        for (&me, peers) in fleet.agents.iter().zip(&fleet.peers) {
            let again = index.peers_of(other.find(&t.entity(me).path).unwrap(), fanout);
            prop_assert_eq!(paths(&t, peers), paths(&other, &again));
        }
    }
}
