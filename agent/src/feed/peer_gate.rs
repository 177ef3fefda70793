//! What a followed peer may send: one name per stream, never this agent's own nor
//! one another live stream holds, batches of a bounded size, at a bounded rate. A
//! peer names itself in each batch, so without this one confused or hostile peer
//! could speak as another observer (wiping its evidence when its own stream ended),
//! or flood the detector.
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The most links one batch may carry: four times the default kernel table of 16,384
/// links. The decode limit alone allowed tens of thousands more.
pub(crate) const MAX_BATCH_LINKS: usize = 65_536;
/// The most batches a peer may send in one second: ten ticks, plus a sample per urgent
/// event (those are paced at 20 ms apart), with room to spare.
pub(crate) const MAX_BATCHES_PER_SECOND: u32 = 64;

/// The observer names held by live peer streams, shared by every follower.
#[derive(Clone, Default)]
pub(crate) struct NamesInUse(Arc<Mutex<HashSet<String>>>);

impl NamesInUse {
    fn claim(&self, name: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned())
    }

    /// Gives a name back when its stream ends.
    pub(crate) fn release(&self, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
    }
}

/// Why a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The stream must end: it speaks as someone it is not.
    Impostor(String),
    /// This batch only.
    TooLarge(usize),
    TooFast,
    Renamed {
        held: String,
        got: String,
    },
}

/// One stream's gate.
pub(crate) struct PeerGate {
    me: String,
    names: NamesInUse,
    /// The name this stream speaks as, once its first batch is accepted.
    name: Option<String>,
    window: (Instant, u32),
}

impl PeerGate {
    pub(crate) fn new(me: &str, names: NamesInUse, now: Instant) -> Self {
        Self {
            me: me.to_owned(),
            names,
            name: None,
            window: (now, 0),
        }
    }

    /// Whether a batch named `observer` with `links` links, arriving at `now`, passes.
    pub(crate) fn check(
        &mut self,
        observer: &str,
        links: usize,
        now: Instant,
    ) -> Result<(), Refusal> {
        match &self.name {
            Some(held) if held != observer => {
                return Err(Refusal::Renamed {
                    held: held.clone(),
                    got: observer.to_owned(),
                });
            }
            Some(_) => {}
            None if observer == self.me => {
                return Err(Refusal::Impostor(format!(
                    "claims this agent's own name `{observer}`"
                )));
            }
            None if observer.is_empty() => {
                return Err(Refusal::Impostor("names no observer".to_owned()));
            }
            None => {
                if !self.names.claim(observer) {
                    return Err(Refusal::Impostor(format!(
                        "claims `{observer}`, which another peer's stream speaks as"
                    )));
                }
                self.name = Some(observer.to_owned());
            }
        }
        // Every batch counts against the rate, refused or not: a flood is a flood.
        let (start, count) = &mut self.window;
        if now.duration_since(*start) >= Duration::from_secs(1) {
            (*start, *count) = (now, 0);
        }
        *count += 1;
        if *count > MAX_BATCHES_PER_SECOND {
            return Err(Refusal::TooFast);
        }
        if links > MAX_BATCH_LINKS {
            return Err(Refusal::TooLarge(links));
        }
        Ok(())
    }
}

impl Drop for PeerGate {
    fn drop(&mut self) {
        if let Some(name) = &self.name {
            self.names.release(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_may_not_speak_as_this_agent_or_as_another_live_peer() {
        let names = NamesInUse::default();
        let t = Instant::now();
        let mut a = PeerGate::new("me", names.clone(), t);
        assert!(matches!(a.check("me", 1, t), Err(Refusal::Impostor(_))));
        assert!(matches!(a.check("", 1, t), Err(Refusal::Impostor(_))));
        assert_eq!(a.check("web-1", 1, t), Ok(()));
        let mut b = PeerGate::new("me", names.clone(), t);
        assert!(matches!(b.check("web-1", 1, t), Err(Refusal::Impostor(_))));
        // Once the first stream ends, the name is free again.
        drop(a);
        assert_eq!(b.check("web-1", 1, t), Ok(()));
    }

    #[test]
    fn a_stream_keeps_its_name() {
        let t = Instant::now();
        let mut g = PeerGate::new("me", NamesInUse::default(), t);
        assert_eq!(g.check("web-1", 1, t), Ok(()));
        assert_eq!(
            g.check("web-2", 1, t),
            Err(Refusal::Renamed {
                held: "web-1".into(),
                got: "web-2".into()
            })
        );
    }

    #[test]
    fn batches_are_bounded_in_size_and_rate() {
        let t = Instant::now();
        let mut g = PeerGate::new("me", NamesInUse::default(), t);
        assert_eq!(
            g.check("web-1", MAX_BATCH_LINKS + 1, t),
            Err(Refusal::TooLarge(MAX_BATCH_LINKS + 1))
        );
        let mut passed = 0;
        for i in 0..200 {
            if g.check("web-1", 10, t + Duration::from_millis(i)).is_ok() {
                passed += 1;
            }
        }
        // The oversized batch counted against the rate too.
        assert_eq!(passed, MAX_BATCHES_PER_SECOND - 1);
        assert_eq!(g.check("web-1", 10, t + Duration::from_secs(1)), Ok(()));
    }
}
