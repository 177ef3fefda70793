//! Builds a verdict's evidence, reason and confidence. Runs only when an entity's
//! state changes, so it may scan; the per-tick path never comes here.
use std::{collections::BTreeSet, sync::Arc, time::Duration};

use super::{
    ChildEvidence, Detector, Entity, Evidence, LinkSlot, LinkStatus, PeerEvidence, State, Verdict,
    is_within,
};
use crate::topology::{EntityId, Level};

pub(super) fn build(
    d: &Detector,
    id: EntityId,
    state: State,
    cause: Option<EntityId>,
    since: Duration,
    now: Duration,
) -> Verdict {
    let info = d.topology.entity(id);
    let entity = Entity {
        level: info.level,
        path: info.path.clone(),
    };
    let cause = cause.map(|c| entity_of(d, c));
    let node = &d.nodes[id.index()];
    let mut verdict = Verdict {
        entity,
        state,
        since,
        confidence: 0.0,
        reason: String::new(),
        cause,
        evidence: Evidence::default(),
        observers: Vec::new(),
        local_fault: false,
    };
    if info.level == Level::Host && node.local_fault {
        local_fault(d, id, now, &mut verdict);
    } else if info.level == Level::Host {
        host(d, id, now, &mut verdict);
    } else {
        group(d, id, now, &mut verdict);
    }
    if let Some(c) = &verdict.cause {
        verdict.reason = format!("part of failed {} {}; {}", c.level, c.path, verdict.reason);
    }
    verdict
}

fn entity_of(d: &Detector, id: EntityId) -> Entity {
    let info = d.topology.entity(id);
    Entity {
        level: info.level,
        path: info.path.clone(),
    }
}

fn peer(d: &Detector, slot: &LinkSlot, now: Duration) -> PeerEvidence {
    let (rtt_recent_us, rtt_baseline_us) = slot.health.rtt_us();
    PeerEvidence {
        observer: d.observers[usize::from(slot.observer)].name.clone(),
        local: slot.link.local,
        remote: slot.link.remote,
        status: slot.health.status(now, &d.cfg),
        last: slot.health.last_counters(),
        stall_hard: slot.health.stall_hard(),
        stall_retrans: slot.health.stall_retrans(),
        since_progress_ms: slot
            .health
            .since_progress(now)
            .map(|s| u64::try_from(s.as_millis()).unwrap_or(u64::MAX)),
        rtt_recent_us,
        rtt_baseline_us,
    }
}

/// 0.6 for one observer's rack, 0.8 for two, 0.9 for three…: independent vantage
/// points make a verdict more believable.
fn observer_confidence(d: &Detector, observers: &BTreeSet<u16>) -> f64 {
    let racks: BTreeSet<Option<EntityId>> = observers
        .iter()
        .map(|&o| {
            d.observers[usize::from(o)]
                .host
                .map(|h| d.topology.entity(h).parent.unwrap_or(h))
        })
        .collect();
    let n = i32::try_from(racks.len()).unwrap_or(i32::MAX);
    if n == 0 {
        0.0
    } else {
        1.0 - 0.4 * 0.5f64.powi(n - 1)
    }
}

/// The unimpaired observers whose links support `state` for this entity: for a host,
/// its own links; above, the failed links of the held hosts below it; for an
/// observer's own local fault, that observer. Cheap next to a whole verdict, so the
/// tick can ask whether new observers confirm a failure without building evidence.
pub(super) fn agreeing(d: &Detector, id: EntityId, state: State, now: Duration) -> BTreeSet<u16> {
    let node = &d.nodes[id.index()];
    let usable = |o: u16| !d.observers[usize::from(o)].impaired.held;
    let level = d.topology.entity(id).level;
    if level == Level::Host && node.local_fault {
        return d
            .observers
            .iter()
            .position(|o| o.host == Some(id))
            .and_then(|i| u16::try_from(i).ok())
            .into_iter()
            .collect();
    }
    let supports = |st: LinkStatus| match state {
        State::Failed => st == LinkStatus::Failed,
        State::Degraded => matches!(st, LinkStatus::Degraded | LinkStatus::Failed),
        _ => st != LinkStatus::Unknown,
    };
    let slots = |host: EntityId| {
        d.nodes[host.index()]
            .links
            .iter()
            .filter(|&&(o, _)| usable(o))
            .map(|&(_, slot)| &d.slots[slot as usize])
    };
    if level == Level::Host {
        return slots(id)
            .filter(|s| supports(s.health.status(now, &d.cfg)))
            .map(|s| s.observer)
            .collect();
    }
    let mut observers = BTreeSet::new();
    for &host in &d.by_level[0] {
        if d.nodes[host.index()].hold.held && is_within(&d.topology, host, id) {
            observers.extend(
                slots(host)
                    .filter(|s| s.health.status(now, &d.cfg) == LinkStatus::Failed)
                    .map(|s| s.observer),
            );
        }
    }
    observers
}

/// Observer names sorted by name: ids follow arrival order, which differs run to run.
fn observer_names(d: &Detector, ids: &BTreeSet<u16>) -> Vec<Arc<str>> {
    let mut names: Vec<Arc<str>> = ids
        .iter()
        .map(|&o| d.observers[usize::from(o)].name.clone())
        .collect();
    names.sort();
    names
}

fn host(d: &Detector, id: EntityId, now: Duration, v: &mut Verdict) {
    let node = &d.nodes[id.index()];
    let mut peers: Vec<PeerEvidence> = node
        .links
        .iter()
        .map(|&(_, slot)| &d.slots[slot as usize])
        .filter(|s| !d.observers[usize::from(s.observer)].impaired.held)
        .map(|s| peer(d, s, now))
        .filter(|p| p.status != LinkStatus::Unknown)
        .collect();
    // Worst first, then by name and address: the same evidence reads the same whatever
    // order the observers' batches arrived in.
    peers.sort_by(|a, b| {
        b.status
            .cmp(&a.status)
            .then_with(|| a.observer.cmp(&b.observer))
            .then_with(|| (a.local, a.remote).cmp(&(b.local, b.remote)))
    });
    let agreeing = agreeing(d, id, v.state, now);
    let failed = peers
        .iter()
        .filter(|p| p.status == LinkStatus::Failed)
        .count();
    let hard: u64 = peers.iter().map(|p| p.stall_hard).sum();
    let retrans: u64 = peers.iter().map(|p| p.stall_retrans).sum();
    v.reason = match v.state {
        State::Failed if v.cause.is_none() && failed == 0 => {
            "recovering: held failed until health is sustained".into()
        }
        State::Failed => format!(
            "{failed} link(s) losing with no progress ({hard} RTO/SYN retries/failed connects, {retrans} retransmissions), seen by {} observer(s)",
            agreeing.len()
        ),
        State::Degraded => format!(
            "{} of {} link(s) degraded or failing (loss or RTT above baseline)",
            peers
                .iter()
                .filter(|p| p.status >= LinkStatus::Degraded)
                .count(),
            peers.len()
        ),
        State::Healthy => format!("{} link(s) delivering", peers.len()),
        State::Unknown => "no recent evidence".into(),
    };
    v.confidence = observer_confidence(d, &agreeing);
    v.observers = observer_names(d, &agreeing);
    peers.truncate(d.cfg.max_evidence);
    v.evidence.peers = peers;
}

fn local_fault(d: &Detector, id: EntityId, now: Duration, v: &mut Verdict) {
    v.local_fault = true;
    let Some((index, observer)) = d
        .observers
        .iter()
        .enumerate()
        .find(|(_, o)| o.host == Some(id))
    else {
        return;
    };
    let index = u16::try_from(index).unwrap_or(u16::MAX);
    let mut peers = Vec::new();
    for &host in &d.by_level[0] {
        for slot in d.nodes[host.index()]
            .links
            .iter()
            .filter(|&&(o, _)| o == index)
            .map(|&(_, slot)| &d.slots[slot as usize])
        {
            if slot.health.status(now, &d.cfg) == LinkStatus::Failed
                && peers.len() < d.cfg.max_evidence
            {
                peers.push(peer(d, slot, now));
            }
        }
    }
    v.reason = format!(
        "local fault: this observer's links to {} host(s) in several racks failed at once while {} of {} peers progress; no remote entity is blamed",
        observer.failed_hosts, observer.healthy_hosts, observer.observed_hosts
    );
    v.confidence = 0.6;
    v.observers = vec![observer.name.clone()];
    v.evidence.peers = peers;
}

fn group(d: &Detector, id: EntityId, now: Duration, v: &mut Verdict) {
    let node = &d.nodes[id.index()];
    let level = d.topology.entity(id).level;
    let child_level = match level {
        Level::Site => Level::Cabinet,
        Level::Cabinet => Level::Rack,
        _ => Level::Host,
    };
    let mut children: Vec<ChildEvidence> = d.by_level[super::level_index(child_level)]
        .iter()
        .filter(|&&c| d.topology.entity(c).parent == Some(id))
        .filter_map(|&c| {
            let n = &d.nodes[c.index()];
            let state = if n.hold.held {
                State::Failed
            } else if n.raw_degraded || n.hold.degraded(now) {
                State::Degraded
            } else if n.observed {
                State::Healthy
            } else {
                return None;
            };
            Some(ChildEvidence {
                entity: entity_of(d, c),
                state,
            })
        })
        .collect();
    children.sort_by(|a, b| b.state.cmp(&a.state).then_with(|| a.entity.cmp(&b.entity)));
    let observers = agreeing(d, id, v.state, now);
    let vote = node.vote;
    v.evidence.observed_children = vote.observed;
    v.evidence.failed_children = vote.failed;
    v.evidence.degraded_children = vote.degraded;
    v.evidence.healthy_outside = d.total_healthy.saturating_sub(vote.healthy_hosts);
    let share = if vote.observed == 0 {
        0.0
    } else {
        f64::from(vote.failed) / f64::from(vote.observed)
    };
    v.reason = match v.state {
        State::Failed => format!(
            "{} of {} observed {}s failed; {} host(s) outside are healthy",
            vote.failed, vote.observed, child_level, v.evidence.healthy_outside
        ),
        State::Degraded => format!(
            "{} of {} observed {}s failed or degraded",
            vote.failed + vote.degraded,
            vote.observed,
            child_level
        ),
        State::Healthy => format!(
            "{} observed {}(s), too few failed to vote it down",
            vote.observed, child_level
        ),
        State::Unknown => "no recent evidence".into(),
    };
    v.confidence = match v.state {
        State::Failed | State::Degraded => share * observer_confidence(d, &observers).max(0.5),
        State::Healthy => 1.0 - share,
        State::Unknown => 0.0,
    };
    v.observers = observer_names(d, &observers);
    children.truncate(d.cfg.max_evidence);
    v.evidence.children = children;
}
