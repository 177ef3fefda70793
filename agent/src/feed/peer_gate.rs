//! What a followed peer may send: batches of a bounded size, at a bounded rate, over
//! one stream per identity. The identity comes from the config (see
//! `peer_identity`), never from the batches, so a peer cannot speak as another
//! observer; a second endpoint that resolves to a host already followed is refused
//! while the first stream lives, so no host counts twice.
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

/// Why a batch or a stream was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The stream must not be followed: its identity is this agent's own, or another
    /// live stream's.
    Duplicate(String),
    /// This batch only.
    TooLarge(usize),
    TooFast,
}

/// One stream's gate; holds its identity's name while it lives.
pub(crate) struct PeerGate {
    names: NamesInUse,
    name: String,
    window: (Instant, u32),
}

impl PeerGate {
    /// Claims `name` for one stream; refused if it is `me` or held by a live stream.
    pub(crate) fn claim(
        me: &str,
        name: &str,
        names: NamesInUse,
        now: Instant,
    ) -> Result<Self, Refusal> {
        if name == me {
            return Err(Refusal::Duplicate(format!(
                "is this agent itself (`{name}`)"
            )));
        }
        if !names.claim(name) {
            return Err(Refusal::Duplicate(format!(
                "is `{name}`, which another endpoint's stream already follows"
            )));
        }
        Ok(Self {
            names,
            name: name.to_owned(),
            window: (now, 0),
        })
    }

    /// Whether a batch with `links` links, arriving at `now`, passes.
    pub(crate) fn check(&mut self, links: usize, now: Instant) -> Result<(), Refusal> {
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
        self.names.release(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_stream_per_identity_and_never_this_agent() {
        let names = NamesInUse::default();
        let t = Instant::now();
        assert!(matches!(
            PeerGate::claim("me", "me", names.clone(), t),
            Err(Refusal::Duplicate(_))
        ));
        let a = PeerGate::claim("me", "dc-a/c1/r1/web-1", names.clone(), t).unwrap();
        assert!(matches!(
            PeerGate::claim("me", "dc-a/c1/r1/web-1", names.clone(), t),
            Err(Refusal::Duplicate(_))
        ));
        // Once the first stream ends, the name is free again.
        drop(a);
        assert!(PeerGate::claim("me", "dc-a/c1/r1/web-1", names, t).is_ok());
    }

    #[test]
    fn batches_are_bounded_in_size_and_rate() {
        let t = Instant::now();
        let mut g = PeerGate::claim("me", "web-1", NamesInUse::default(), t).unwrap();
        assert_eq!(
            g.check(MAX_BATCH_LINKS + 1, t),
            Err(Refusal::TooLarge(MAX_BATCH_LINKS + 1))
        );
        let mut passed = 0;
        for i in 0..200 {
            if g.check(10, t + Duration::from_millis(i)).is_ok() {
                passed += 1;
            }
        }
        // The oversized batch counted against the rate too.
        assert_eq!(passed, MAX_BATCHES_PER_SECOND - 1);
        assert_eq!(g.check(10, t + Duration::from_secs(1)), Ok(()));
    }
}
