//! The verdict hub: the latest verdict of every entity, a numbered history of recent
//! changes, and a broadcast of new ones.
//!
//! The history is bounded by its count of changes and by their size on the wire: a
//! change carries its evidence (up to `max_evidence` links). In the lab a change held
//! ~3.3 KiB of heap (heaptrack), so 4096 of them would hold 13 MiB, more with fuller
//! evidence, and the agents' RSS climbed 16 → 25 MiB over a 50-minute bench on the
//! way there: bounded, but it looks like a leak to whoever watches it.
//!
//! The detector publishes here and never waits: subscribers read from a bounded
//! broadcast, and one that falls behind is told so (it then takes a fresh snapshot,
//! which holds the latest state of every entity, so nothing that matters is lost).
use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use faultline_proto::v1 as pb;
use prost::Message as _;
use tokio::sync::broadcast;

use super::{FeedLimits, convert};
use crate::detector::Verdict;

/// A verdict change with its sequence number, and its wire form, converted once here
/// rather than once per subscriber (1,000 subscribers would convert it 1,000 times).
#[derive(Debug, Clone)]
pub struct Numbered {
    pub sequence: u64,
    pub verdict: Arc<Verdict>,
    pub wire: Arc<pb::Verdict>,
    /// When it was published, for the verdict → subscriber latency.
    pub published: std::time::Instant,
}

/// What a new subscriber starts from.
pub enum Start {
    /// Every change after the requested sequence number is still in the history.
    Resume(Vec<Numbered>),
    /// A snapshot of every entity's latest verdict, as of `sequence`.
    Snapshot {
        sequence: u64,
        verdicts: Vec<Numbered>,
    },
}

struct State {
    sequence: u64,
    /// Latest verdict per entity, keyed by health service name (level/path).
    latest: BTreeMap<String, Numbered>,
    /// The most recent changes, oldest first.
    history: VecDeque<Numbered>,
    /// Their wire forms' encoded size, summed.
    history_bytes: usize,
}

/// Shared by the run loop (publisher) and the gRPC services (subscribers).
pub struct Hub {
    state: Mutex<State>,
    live: broadcast::Sender<Numbered>,
    history_len: usize,
    history_bytes: usize,
    /// Wall-clock time of the detector's zero, for the wire form's timestamps.
    epoch: SystemTime,
}

impl Hub {
    /// Keeps `limits.history` changes of at most `limits.history_bytes` on the wire
    /// for resuming (the newest change always); a subscriber may fall
    /// `limits.backlog` changes behind before it is switched to a snapshot.
    pub fn new(limits: &FeedLimits, epoch: SystemTime) -> Self {
        let (live, _) = broadcast::channel(limits.backlog.max(1));
        Self {
            state: Mutex::new(State {
                sequence: 0,
                latest: BTreeMap::new(),
                history: VecDeque::new(),
                history_bytes: 0,
            }),
            live,
            history_len: limits.history,
            history_bytes: limits.history_bytes,
            epoch,
        }
    }

    /// This run of the agent: its start in ns since the Unix epoch (see the proto's
    /// `WatchEvent.incarnation`).
    pub fn incarnation(&self) -> u64 {
        self.epoch
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Drops the latest verdicts of entities the detector forgot (their UNKNOWN was
    /// published first), so snapshots hold only what is tracked.
    pub fn forget(&self, gone: &[crate::detector::Entity]) {
        if gone.is_empty() {
            return;
        }
        let mut state = self.state.lock().expect("hub lock");
        for e in gone {
            state.latest.remove(&e.service_name());
        }
    }

    /// Records and broadcasts changes, in order. Never blocks on subscribers.
    pub fn publish(&self, changes: &[Verdict]) {
        let mut state = self.state.lock().expect("hub lock");
        for v in changes {
            state.sequence += 1;
            let numbered = Numbered {
                sequence: state.sequence,
                verdict: Arc::new(v.clone()),
                wire: Arc::new(convert::verdict(v, self.epoch)),
                published: std::time::Instant::now(),
            };
            state
                .latest
                .insert(v.entity.service_name(), numbered.clone());
            state.history_bytes += numbered.wire.encoded_len();
            state.history.push_back(numbered.clone());
            while state.history.len() > self.history_len.max(1)
                || (state.history_bytes > self.history_bytes && state.history.len() > 1)
            {
                let Some(oldest) = state.history.pop_front() else {
                    break;
                };
                state.history_bytes -= oldest.wire.encoded_len();
            }
            // No receivers is fine: nobody is watching yet.
            let _ = self.live.send(numbered);
        }
    }

    /// Subscribes, and says where to start: the changes after `resume_after` if they
    /// are all still in the history, a snapshot otherwise. Done under the lock, so no
    /// change falls between the start and the live stream.
    pub fn subscribe(
        &self,
        resume_after: Option<u64>,
        incarnation: Option<u64>,
    ) -> (Start, broadcast::Receiver<Numbered>) {
        let state = self.state.lock().expect("hub lock");
        let live = self.live.subscribe();
        // A sequence number from another run of the agent means nothing here.
        let same_run = incarnation.is_none_or(|i| i == self.incarnation());
        if let Some(after) = resume_after.filter(|_| same_run) {
            let oldest = state
                .history
                .front()
                .map_or(state.sequence + 1, |n| n.sequence);
            // Resumable when nothing between `after` and now has been dropped.
            if after <= state.sequence && after + 1 >= oldest {
                let missed = state
                    .history
                    .iter()
                    .filter(|n| n.sequence > after)
                    .cloned()
                    .collect();
                return (Start::Resume(missed), live);
            }
        }
        (
            Start::Snapshot {
                sequence: state.sequence,
                verdicts: state.latest.values().cloned().collect(),
            },
            live,
        )
    }

    /// The latest verdict of every entity, and the sequence number it is as of.
    pub fn snapshot(&self) -> (u64, Vec<Numbered>) {
        let state = self.state.lock().expect("hub lock");
        (state.sequence, state.latest.values().cloned().collect())
    }

    /// The latest verdict of one entity by service name (`rack/dc-a/c1/r1`).
    pub fn latest(&self, service: &str) -> Option<Arc<Verdict>> {
        self.state
            .lock()
            .expect("hub lock")
            .latest
            .get(service)
            .map(|n| n.verdict.clone())
    }

    /// A receiver of live changes only (health Watch).
    pub fn live(&self) -> broadcast::Receiver<Numbered> {
        self.live.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{detector::State as VState, topology::Level};

    fn limits(history: usize, history_bytes: usize, backlog: usize) -> FeedLimits {
        FeedLimits {
            history,
            history_bytes,
            backlog,
            ..FeedLimits::default()
        }
    }

    fn verdict(path: &str, state: VState) -> Verdict {
        Verdict::scripted(Level::Rack, path, state)
    }

    #[test]
    fn resume_within_history_and_snapshot_beyond_it() {
        let hub = Hub::new(&limits(3, usize::MAX, 16), SystemTime::UNIX_EPOCH);
        for i in 0..5 {
            hub.publish(&[verdict(&format!("r{i}"), VState::Failed)]);
        }
        // History holds 3, 4, 5: resuming after 2 misses nothing.
        match hub.subscribe(Some(2), None).0 {
            Start::Resume(missed) => assert_eq!(
                missed.iter().map(|n| n.sequence).collect::<Vec<_>>(),
                [3, 4, 5]
            ),
            Start::Snapshot { .. } => panic!("2 is resumable"),
        }
        // After 1, change 2 is gone: a snapshot of all five entities.
        match hub.subscribe(Some(1), None).0 {
            Start::Snapshot { sequence, verdicts } => {
                assert_eq!(sequence, 5);
                assert_eq!(verdicts.len(), 5);
            }
            Start::Resume(_) => panic!("1 is too old"),
        }
        // A sequence from the future (another agent run) gets a snapshot too.
        assert!(matches!(
            hub.subscribe(Some(99), None).0,
            Start::Snapshot { .. }
        ));
        // Up to date: resume with nothing missed.
        assert!(matches!(hub.subscribe(Some(5), None).0, Start::Resume(m) if m.is_empty()));
    }

    #[test]
    fn the_history_keeps_to_its_bytes_as_well_as_its_count() {
        let one = |i: usize| verdict(&format!("r{i:02}"), VState::Failed);
        let size = convert::verdict(&one(0), SystemTime::UNIX_EPOCH).encoded_len();
        // Room for three changes by bytes, a hundred by count.
        let hub = Hub::new(
            &limits(100, 3 * size + size / 2, 16),
            SystemTime::UNIX_EPOCH,
        );
        for i in 0..10 {
            hub.publish(&[one(i)]);
        }
        match hub.subscribe(Some(7), None).0 {
            Start::Resume(missed) => assert_eq!(
                missed.iter().map(|n| n.sequence).collect::<Vec<_>>(),
                [8, 9, 10]
            ),
            Start::Snapshot { .. } => panic!("8, 9 and 10 fit in the bytes"),
        }
        // Change 7 was dropped for its bytes: a snapshot, every entity in it.
        match hub.subscribe(Some(6), None).0 {
            Start::Snapshot { sequence, verdicts } => {
                assert_eq!((sequence, verdicts.len()), (10, 10));
            }
            Start::Resume(_) => panic!("7 no longer fits"),
        }
        // A change bigger than the whole budget is still kept, alone.
        let tiny = Hub::new(&limits(100, 1, 16), SystemTime::UNIX_EPOCH);
        tiny.publish(&[one(0), one(1)]);
        assert!(matches!(tiny.subscribe(Some(1), None).0, Start::Resume(m) if m.len() == 1));
        assert!(matches!(
            tiny.subscribe(Some(0), None).0,
            Start::Snapshot { .. }
        ));
    }

    #[test]
    fn latest_state_per_entity_survives() {
        let hub = Hub::new(&limits(2, usize::MAX, 2), SystemTime::UNIX_EPOCH);
        hub.publish(&[
            verdict("a", VState::Failed),
            verdict("b", VState::Failed),
            verdict("a", VState::Healthy),
        ]);
        let (seq, all) = hub.snapshot();
        assert_eq!(seq, 3);
        assert_eq!(all.len(), 2);
        assert_eq!(hub.latest("rack/a").unwrap().state, VState::Healthy);
    }

    #[test]
    fn forgotten_entities_leave_the_snapshot() {
        let hub = Hub::new(&limits(8, usize::MAX, 8), SystemTime::UNIX_EPOCH);
        hub.publish(&[verdict("a", VState::Healthy), verdict("b", VState::Unknown)]);
        let b = hub.latest("rack/b").unwrap().entity.clone();
        hub.forget(&[b]);
        let (seq, all) = hub.snapshot();
        assert_eq!((seq, all.len()), (2, 1), "no new sequence, one entity left");
        assert!(hub.latest("rack/b").is_none());
    }
}
