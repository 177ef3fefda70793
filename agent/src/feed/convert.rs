//! Our verdict types to and from the faultline.v1 wire types. The only place that
//! knows both.
use std::time::{Duration, SystemTime};

use faultline_proto::v1 as pb;

use crate::{
    detector::{ChildEvidence, Entity, Evidence, LinkStatus, PeerEvidence, State, Verdict},
    topology::Level,
};

pub(crate) fn level(l: Level) -> pb::Level {
    match l {
        Level::Host => pb::Level::Host,
        Level::Rack => pb::Level::Rack,
        Level::Cabinet => pb::Level::Cabinet,
        Level::Site => pb::Level::Site,
    }
}

pub(crate) fn level_from(l: pb::Level) -> Option<Level> {
    match l {
        pb::Level::Unspecified => None,
        pb::Level::Host => Some(Level::Host),
        pb::Level::Rack => Some(Level::Rack),
        pb::Level::Cabinet => Some(Level::Cabinet),
        pb::Level::Site => Some(Level::Site),
    }
}

pub(crate) fn state(s: State) -> pb::State {
    match s {
        State::Unknown => pb::State::Unknown,
        State::Healthy => pb::State::Healthy,
        State::Degraded => pb::State::Degraded,
        State::Failed => pb::State::Failed,
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

pub(crate) fn entity(e: &Entity) -> pb::Entity {
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
        acked_segs: p.last.acked_segs,
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
pub(crate) fn verdict(v: &Verdict, epoch: SystemTime) -> pb::Verdict {
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

pub(crate) fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prost::Message as _;

    use super::*;
    use faultline_core::link::LinkCounters;

    /// A host verdict with link and child evidence, a cause and a local fault: every
    /// field set to a distinct, non-default value, so a field dropped or swapped on the
    /// way to the wire shows.
    fn rich_verdict() -> Verdict {
        Verdict {
            entity: Entity {
                level: Level::Host,
                path: "dc-a/c1/r1/web-1".into(),
            },
            state: State::Failed,
            since: Duration::from_millis(2_500),
            confidence: 0.75,
            reason: "local fault: 5 hosts in 3 racks unreachable".into(),
            cause: Some(Entity {
                level: Level::Rack,
                path: "dc-a/c1/r1".into(),
            }),
            evidence: Evidence {
                peers: vec![PeerEvidence {
                    observer: Arc::from("obs-a"),
                    local: "10.1.1.10".parse().unwrap(),
                    remote: "fd00:a:1:2::7".parse().unwrap(),
                    status: LinkStatus::Failed,
                    last: LinkCounters {
                        progress_segs: 1,
                        acked_segs: 16,
                        retrans_segs: 2,
                        rto_timeouts: 3,
                        syn_retrans: 4,
                        failed_connects: 5,
                        resets_rx: 6,
                        repeat_timeouts: 0,
                        control_retrans_segs: 0,
                        control_progress_segs: 0,
                        control_timeouts: 0,
                    },
                    stall_hard: 7,
                    stall_retrans: 8,
                    since_progress_ms: Some(900),
                    rtt_recent_us: 4_000,
                    rtt_baseline_us: 150,
                }],
                children: vec![ChildEvidence {
                    entity: Entity {
                        level: Level::Cabinet,
                        path: "dc-a/c2".into(),
                    },
                    state: State::Degraded,
                }],
                observed_children: 9,
                failed_children: 4,
                degraded_children: 2,
                healthy_outside: 11,
                observed_hosts: 12,
                failed_hosts: 13,
                degraded_hosts: 14,
            },
            observers: vec![Arc::from("obs-a"), Arc::from("obs-b")],
            local_fault: true,
        }
    }

    #[test]
    fn every_field_of_a_verdict_with_evidence_reaches_the_wire() {
        let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let sent = verdict(&rich_verdict(), epoch);
        // Through the wire format and back, as a subscriber receives it.
        let got = pb::Verdict::decode(sent.encode_to_vec().as_slice()).unwrap();
        assert_eq!(got, sent);

        let entity = got.entity.as_ref().unwrap();
        assert_eq!(
            (entity.level(), entity.path.as_str()),
            (pb::Level::Host, "dc-a/c1/r1/web-1")
        );
        assert_eq!(got.state(), pb::State::Failed);
        let since = got.since.unwrap();
        assert_eq!((since.seconds, since.nanos), (1_700_000_002, 500_000_000));
        assert!((got.confidence - 0.75).abs() < f64::EPSILON);
        assert_eq!(got.reason, "local fault: 5 hosts in 3 racks unreachable");
        let cause = got.cause.as_ref().expect("the cause is on the wire");
        assert_eq!(
            (cause.level(), cause.path.as_str()),
            (pb::Level::Rack, "dc-a/c1/r1")
        );
        assert!(got.local_fault, "local_fault is on the wire");
        assert_eq!(got.observers, ["obs-a", "obs-b"]);

        let evidence = got.evidence.as_ref().expect("evidence is on the wire");
        assert_eq!(
            evidence.links,
            [pb::LinkEvidence {
                observer: "obs-a".into(),
                local_address: "10.1.1.10".into(),
                remote_address: "fd00:a:1:2::7".into(),
                state: pb::State::Failed.into(),
                progress_segs: 1,
                retrans_segs: 2,
                rto_timeouts: 3,
                syn_retrans: 4,
                failed_connects: 5,
                resets_rx: 6,
                stall_hard: 7,
                stall_retrans: 8,
                since_progress_ms: Some(900),
                rtt_recent_us: 4_000,
                rtt_baseline_us: 150,
                acked_segs: 16,
            }]
        );
        assert_eq!(evidence.children.len(), 1);
        let child = &evidence.children[0];
        let child_entity = child.entity.as_ref().unwrap();
        assert_eq!(
            (
                child_entity.level(),
                child_entity.path.as_str(),
                child.state()
            ),
            (pb::Level::Cabinet, "dc-a/c2", pb::State::Degraded)
        );
        assert_eq!(
            (
                evidence.observed_children,
                evidence.failed_children,
                evidence.degraded_children,
                evidence.healthy_outside
            ),
            (9, 4, 2, 11)
        );
        assert_eq!(
            (
                evidence.observed_hosts,
                evidence.failed_hosts,
                evidence.degraded_hosts
            ),
            (12, 13, 14)
        );
    }

    #[test]
    fn a_link_never_seen_to_progress_has_no_since_progress_on_the_wire() {
        let mut v = rich_verdict();
        v.evidence.peers[0].since_progress_ms = None;
        v.cause = None;
        v.local_fault = false;
        let sent = verdict(&v, SystemTime::UNIX_EPOCH);
        let got = pb::Verdict::decode(sent.encode_to_vec().as_slice()).unwrap();
        let link = &got.evidence.unwrap().links[0];
        assert_eq!(link.since_progress_ms, None, "absent, not 0 ms");
        assert_eq!(got.cause, None);
        assert!(!got.local_fault);
    }

    #[test]
    fn levels_and_states_map_both_ways() {
        for l in Level::ALL {
            assert_eq!(level_from(level(l)), Some(l));
        }
        assert_eq!(
            [
                State::Unknown,
                State::Healthy,
                State::Degraded,
                State::Failed
            ]
            .map(state),
            [
                pb::State::Unknown,
                pb::State::Healthy,
                pb::State::Degraded,
                pb::State::Failed
            ]
        );
        assert_eq!(level_from(pb::Level::Unspecified), None);
    }
}
