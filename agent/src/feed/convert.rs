//! Our verdict types to and from the faultline.v1 wire types. The only place that
//! knows both.
use std::time::{Duration, SystemTime};

use faultline_proto::v1 as pb;

use crate::{
    detector::{ChildEvidence, Entity, Evidence, LinkStatus, PeerEvidence, State, Verdict},
    topology::Level,
};

pub fn level(l: Level) -> pb::Level {
    match l {
        Level::Host => pb::Level::Host,
        Level::Rack => pb::Level::Rack,
        Level::Cabinet => pb::Level::Cabinet,
        Level::Site => pb::Level::Site,
    }
}

pub fn level_from(l: pb::Level) -> Option<Level> {
    match l {
        pb::Level::Unspecified => None,
        pb::Level::Host => Some(Level::Host),
        pb::Level::Rack => Some(Level::Rack),
        pb::Level::Cabinet => Some(Level::Cabinet),
        pb::Level::Site => Some(Level::Site),
    }
}

pub fn state(s: State) -> pb::State {
    match s {
        State::Unknown => pb::State::Unknown,
        State::Healthy => pb::State::Healthy,
        State::Degraded => pb::State::Degraded,
        State::Failed => pb::State::Failed,
    }
}

pub fn state_from(s: pb::State) -> State {
    match s {
        pb::State::Unspecified | pb::State::Unknown => State::Unknown,
        pb::State::Healthy => State::Healthy,
        pb::State::Degraded => State::Degraded,
        pb::State::Failed => State::Failed,
    }
}

fn link_state(s: LinkStatus) -> pb::State {
    match s {
        LinkStatus::Unknown => pb::State::Unknown,
        LinkStatus::Healthy => pb::State::Healthy,
        LinkStatus::Degraded => pb::State::Degraded,
        LinkStatus::Failed => pb::State::Failed,
    }
}

pub fn entity(e: &Entity) -> pb::Entity {
    pb::Entity {
        level: level(e.level).into(),
        path: e.path.to_string(),
    }
}

fn peer(p: &PeerEvidence) -> pb::LinkEvidence {
    pb::LinkEvidence {
        observer: p.observer.to_string(),
        local_address: p.local.to_string(),
        remote_address: p.remote.to_string(),
        state: link_state(p.status).into(),
        progress_segs: p.last.progress_segs,
        retrans_segs: p.last.retrans_segs,
        rto_timeouts: p.last.rto_timeouts,
        syn_retrans: p.last.syn_retrans,
        failed_connects: p.last.failed_connects,
        resets_rx: p.last.resets_rx,
        stall_hard: p.stall_hard,
        stall_retrans: p.stall_retrans,
        since_progress_ms: p.since_progress_ms,
        rtt_recent_us: p.rtt_recent_us,
        rtt_baseline_us: p.rtt_baseline_us,
    }
}

fn child(c: &ChildEvidence) -> pb::ChildEvidence {
    pb::ChildEvidence {
        entity: Some(entity(&c.entity)),
        state: state(c.state).into(),
    }
}

fn evidence(e: &Evidence) -> pb::Evidence {
    pb::Evidence {
        links: e.peers.iter().map(peer).collect(),
        children: e.children.iter().map(child).collect(),
        observed_children: e.observed_children,
        failed_children: e.failed_children,
        degraded_children: e.degraded_children,
        healthy_outside: e.healthy_outside,
        observed_hosts: e.observed_hosts,
        failed_hosts: e.failed_hosts,
        degraded_hosts: e.degraded_hosts,
    }
}

/// `epoch`: the wall-clock time of the detector's zero.
pub fn verdict(v: &Verdict, epoch: SystemTime) -> pb::Verdict {
    let since = epoch + v.since;
    pb::Verdict {
        entity: Some(entity(&v.entity)),
        state: state(v.state).into(),
        since: Some(timestamp(since)),
        confidence: v.confidence,
        reason: v.reason.clone(),
        evidence: Some(evidence(&v.evidence)),
        observers: v.observers.iter().map(ToString::to_string).collect(),
        cause: v.cause.as_ref().map(entity),
        local_fault: v.local_fault,
    }
}

pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
