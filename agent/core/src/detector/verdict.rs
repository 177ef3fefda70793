//! What the detector announces: a verdict about one entity, with its evidence.
use std::{net::IpAddr, sync::Arc, time::Duration};

use serde::Serialize;

use super::link::LinkStatus;
use crate::{link::LinkCounters, topology::Level};

/// An entity's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// No recent evidence.
    Unknown,
    Healthy,
    /// Gray failure: elevated loss or RTT, still delivering.
    Degraded,
    /// Not delivering.
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "UNKNOWN",
            Self::Healthy => "HEALTHY",
            Self::Degraded => "DEGRADED",
            Self::Failed => "FAILED",
        }
    }
}

/// A failure domain, by level and path (`rack`, `dc-a/c1/r1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Entity {
    pub level: Level,
    pub path: Arc<str>,
}

impl Entity {
    /// The grpc.health.v1 service name: `rack/dc-a/c1/r1`.
    pub fn service_name(&self) -> String {
        format!("{}/{}", self.level, self.path)
    }
}

/// One link's contribution to a verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerEvidence {
    pub observer: Arc<str>,
    pub local: IpAddr,
    pub remote: IpAddr,
    pub status: LinkStatus,
    /// Counters of the link's latest tick with evidence.
    pub last: LinkCounters,
    /// RTOs + SYN retries + failed connects since the link stopped progressing.
    pub stall_hard: u64,
    pub stall_retrans: u64,
    /// Milliseconds since the peer last delivered anything (None: never seen to).
    pub since_progress_ms: Option<u64>,
    pub rtt_recent_us: u64,
    pub rtt_baseline_us: u64,
}

/// A child entity's contribution to a roll-up verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChildEvidence {
    pub entity: Entity,
    pub state: State,
}

/// What a verdict rests on.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Evidence {
    /// Links (for hosts and local faults), worst first, at most `max_evidence`.
    pub peers: Vec<PeerEvidence>,
    /// Children (for racks, cabinets, sites), failed first, at most `max_evidence`.
    pub children: Vec<ChildEvidence>,
    /// Children with a verdict, of which failed / degraded (for racks and above).
    pub observed_children: u32,
    pub failed_children: u32,
    pub degraded_children: u32,
    /// The vote: hosts with a known state as seen from outside this entity, of which
    /// failing / degraded (for racks and above). Quorum counts these.
    pub observed_hosts: u32,
    pub failed_hosts: u32,
    pub degraded_hosts: u32,
    /// Observed hosts outside this entity that are healthy (the "others are fine" check).
    pub healthy_outside: u32,
}

impl Evidence {
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty() && self.children.is_empty()
    }
}

/// The detector's judgement of one entity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub entity: Entity,
    pub state: State,
    /// When the entity entered this state, on the detector's clock.
    pub since: Duration,
    /// 0..1: grows with the share of children that agree and the number of
    /// independent observers (in distinct racks) that saw it.
    pub confidence: f64,
    /// One line for humans.
    pub reason: String,
    /// The higher entity whose failure explains this one (its rack, say), if any.
    pub cause: Option<Entity>,
    pub evidence: Evidence,
    /// The agents whose observations this rests on.
    pub observers: Vec<Arc<str>>,
    /// Named from inside: the observers in this entity (or the observer that is this
    /// host) are cut off from everything outside it while they still reach what is
    /// inside. In a multi-active deployment an isolated site must fence itself; nothing
    /// outside is blamed.
    pub local_fault: bool,
}

impl Verdict {
    /// A verdict with no evidence, for tests and benchmarks that drive the feed without
    /// a detector. The detector itself never announces a verdict without evidence.
    #[cfg(any(test, feature = "test-support"))]
    pub fn scripted(level: Level, path: &str, state: State) -> Self {
        Self {
            entity: Entity {
                level,
                path: path.into(),
            },
            state,
            since: Duration::from_secs(1),
            confidence: 0.6,
            reason: format!("scripted {path}"),
            cause: None,
            evidence: Evidence::default(),
            observers: vec!["obs".into()],
            local_fault: false,
        }
    }
}
