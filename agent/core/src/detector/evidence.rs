//! Builds a verdict's evidence, reason and confidence. Runs only when an entity's
//! state changes (and, for failed entities, to see whether new observers confirm
//! them), so it may scan.
use std::{collections::BTreeSet, sync::Arc, time::Duration};

use super::{
    ChildEvidence, Detector, Entity, Evidence, LinkStatus, PeerEvidence, SlotId, State, Verdict,
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
    let mut verdict = Verdict {
        entity: entity_of(d, id),
        state,
        since,
        confidence: 0.0,
        reason: String::new(),
        cause: cause.map(|c| entity_of(d, c)),
        evidence: Evidence::default(),
        observers: Vec::new(),
        local_fault: false,
    };
    let node = &d.nodes[id.index()];
    if node.named_from_inside && state == State::Failed && cause.is_none() {
        cut_off(d, id, now, &mut verdict);
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

fn peer(d: &Detector, id: SlotId, now: Duration) -> PeerEvidence {
    let (slot, health) = (&d.slots[id as usize], &d.health[id as usize]);
    let (rtt_recent_us, rtt_baseline_us) = health.rtt_us();
    PeerEvidence {
        observer: d.observers[usize::from(slot.observer)].name.clone(),
        local: slot.link.local,
        remote: slot.link.remote,
        status: d.link_status(id, now),
        last: health.last_counters(),
        stall_hard: health.stall_hard(),
        stall_retrans: health.stall_retrans(),
        since_progress_ms: health
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

/// Observer names sorted by name: ids follow arrival order, which differs run to run.
fn observer_names(d: &Detector, ids: &BTreeSet<u16>) -> Vec<Arc<str>> {
    let mut names: Vec<Arc<str>> = ids
        .iter()
        .map(|&o| d.observers[usize::from(o)].name.clone())
        .collect();
    names.sort();
    names
}

/// The live observers that name `id` as the entity they are cut off in.
fn naming_cut_off(d: &Detector, id: EntityId, now: Duration) -> BTreeSet<u16> {
    (0u16..)
        .zip(&d.observers)
        .filter(|(_, o)| o.alive(now, &d.cfg) && o.cut_off_entity() == Some(id))
        .map(|(i, _)| i)
        .collect()
}

/// The observers whose views support `state` for this entity, counted as the verdict
/// counts them: from outside the entity, alive, and not cut off from its side. For a
/// cut-off entity, the observers inside that name it. Cheap next to a whole verdict,
/// so the tick can ask whether new observers confirm a failure without building one.
pub(super) fn agreeing(d: &Detector, id: EntityId, state: State, now: Duration) -> BTreeSet<u16> {
    let node = &d.nodes[id.index()];
    if node.named_from_inside && state == State::Failed {
        return naming_cut_off(d, id, now);
    }
    let level = d.topology.entity(id).level;
    let supports = |st: LinkStatus| match state {
        State::Failed => st == LinkStatus::Failed,
        State::Degraded => matches!(st, LinkStatus::Degraded | LinkStatus::Failed),
        _ => st != LinkStatus::Unknown,
    };
    let mut observers = BTreeSet::new();
    let inside = |h: &EntityId| d.nodes[h.index()].around[level] == Some(id);
    let hosts: Vec<EntityId> = if level == Level::Host {
        vec![id]
    } else if state == State::Failed {
        // Only a host some view from outside sees failing has a view that supports
        // a failure from outside the entity: found among those, not among every
        // host (a held failure is asked this every tick).
        d.failing_hosts.iter().copied().filter(inside).collect()
    } else if state == State::Degraded {
        d.by_level[Level::Host]
            .iter()
            .copied()
            .filter(inside)
            .collect()
    } else {
        Vec::new()
    };
    for h in hosts {
        let around = &d.nodes[h.index()].around;
        for v in d.views_of(h) {
            let o = &d.observers[usize::from(v.observer)];
            if o.around[level] != Some(id) && o.may_judge(around) && supports(v.status) {
                observers.insert(v.observer);
            }
        }
    }
    observers
}

fn host(d: &Detector, id: EntityId, now: Duration, v: &mut Verdict) {
    let node = &d.nodes[id.index()];
    let counts = |o: u16| {
        let ob = &d.observers[usize::from(o)];
        ob.alive(now, &d.cfg) && ob.host != Some(id) && ob.may_judge(&node.around)
    };
    let mut peers: Vec<PeerEvidence> = node
        .links
        .iter()
        .filter(|&&(o, _)| counts(o))
        .map(|&(_, slot)| peer(d, slot, now))
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
    let outside = &node.outside[Level::Host];
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
            "{failed} link(s) losing with no progress ({hard} RTO/SYN retries/failed connects, {retrans} retransmissions), seen by {} observer(s); none saw it progress since",
            agreeing.len()
        ),
        State::Degraded if outside.failing > 0 && outside.witnesses > 0 => format!(
            "{} observer(s) cannot reach it while {} still do: a path problem",
            outside.failing, outside.witnesses
        ),
        State::Degraded if outside.blame.lossy => {
            let cfg = &d.cfg;
            let (long, fast) = (&node.loss[Level::Host], &node.fast_loss[Level::Host]);
            // The window that found it: the short one only when the long one did not.
            let loss = if long.is_lossy(cfg.degraded_standout, cfg) {
                long
            } else {
                fast
            };
            format!(
                "losing {:.1}% of segments, pooled over the links of every observer, where they lose {:.1}% to other hosts as far away",
                100.0 * f64::from(loss.ratio()),
                100.0 * f64::from(loss.expected_ratio())
            )
        }
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

/// Named from inside: the observers that name it are cut off from everything
/// outside it while they still reach what is inside. Nothing outside is blamed.
fn cut_off(d: &Detector, id: EntityId, now: Duration, v: &mut Verdict) {
    v.local_fault = true;
    let naming = naming_cut_off(d, id, now);
    let level = d.topology.entity(id).level;
    let mut peers = Vec::new();
    let (mut failed, mut observed) = (0, 0);
    for &o in &naming {
        let ob = &d.observers[usize::from(o)];
        let out = ob.outside[level];
        failed += out.failed;
        observed += out.observed;
        for &host in &d.by_level[Level::Host] {
            if is_within(&d.topology, host, id) {
                continue;
            }
            for &(_, slot) in d.nodes[host.index()]
                .links
                .iter()
                .filter(|&&(ob, _)| ob == o)
            {
                if d.link_status(slot, now) == LinkStatus::Failed {
                    peers.push(peer(d, slot, now));
                }
            }
        }
    }
    peers.sort_by(|a, b| {
        a.observer
            .cmp(&b.observer)
            .then_with(|| (a.local, a.remote).cmp(&(b.local, b.remote)))
    });
    peers.truncate(d.cfg.max_evidence);
    let what = if level == Level::Host {
        "this observer reaches nothing".to_owned()
    } else {
        format!("its observers still reach hosts inside this {level}")
    };
    v.reason = format!(
        "cut off: {failed} of {observed} host(s) outside unreachable from inside while {what}; nothing outside is blamed"
    );
    v.confidence = observer_confidence(d, &naming)
        .min(0.6 + 0.1 * f64::from(u32::try_from(naming.len()).unwrap_or(4).min(4)));
    v.observers = observer_names(d, &naming);
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
    let mut children: Vec<ChildEvidence> = d.by_level[child_level]
        .iter()
        .filter(|&&c| d.topology.entity(c).parent == Some(id))
        .filter_map(|&c| {
            // This tick's state (children are published after their parent).
            let n = &d.nodes[c.index()];
            let state = if n.hold.held {
                State::Failed
            } else if n.hold.degraded(now) {
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
    let e = &mut v.evidence;
    e.observed_children = u32::try_from(children.len()).unwrap_or(u32::MAX);
    e.failed_children = count(&children, State::Failed);
    e.degraded_children = count(&children, State::Degraded);
    e.observed_hosts = vote.observed;
    e.failed_hosts = vote.failed;
    e.degraded_hosts = vote.degraded;
    e.healthy_outside = d.totals.healthy.saturating_sub(vote.host_level_healthy);
    let share = if vote.observed == 0 {
        0.0
    } else {
        f64::from(vote.failed) / f64::from(vote.observed)
    };
    v.reason = match (v.state, node.gray.shown) {
        (State::Degraded, Some((lost, expected))) => format!(
            "its hosts lose {:.1}% of segments, pooled over every observer outside it and standing out even without the part of it that loses most, where the same observers lose {:.1}% to other hosts as far away",
            100.0 * f64::from(lost),
            100.0 * f64::from(expected)
        ),
        (State::Failed, _) => format!(
            "{} of {} observed hosts fail as seen from outside it, by {} observer(s); {} host(s) outside are healthy",
            vote.failed,
            vote.observed,
            observers.len(),
            e.healthy_outside
        ),
        (State::Degraded, None) => format!(
            "{} of {} observed hosts failing or degraded, well above the share outside it",
            vote.failed + vote.degraded,
            vote.observed,
        ),
        (State::Healthy, _) => format!(
            "{} observed host(s), too few failing to vote it down",
            vote.observed
        ),
        (State::Unknown, _) => "no recent evidence".into(),
    };
    v.confidence = match v.state {
        State::Failed | State::Degraded => share * observer_confidence(d, &observers).max(0.5),
        State::Healthy => 1.0 - share,
        State::Unknown => 0.0,
    };
    v.observers = observer_names(d, &observers);
    children.truncate(d.cfg.max_evidence);
    e.children = children;
}

fn count(children: &[ChildEvidence], state: State) -> u32 {
    u32::try_from(children.iter().filter(|c| c.state == state).count()).unwrap_or(u32::MAX)
}
