//! The links a tick reads, host after host, in one flat array.
//!
//! A tick builds every host's views from its links' health: at 100k links, 8 MB read
//! in the order of hosts, while the slots lie in the order links were first seen (an
//! observer's batch after another's). Each host's own list of links is a small
//! allocation of its own; following ten thousand of them, and then ten slots spread
//! across the arena per host, a tick waited on memory at almost every host. Here the
//! lists are copied end to end, with how far outside each host its observer stands
//! (which never changes for a link), and as the tick passes each host it asks for
//! the health of the links a little further on, so they are in cache when it gets
//! there.
//!
//! The hosts' own lists stay what links are added to and removed from; the copy is
//! made again on the first tick after any of them, or the hosts, or an observer's
//! place changed (rare past start-up: a link first seen or forgotten).
use super::{Node, SlotId, observers::Observer};
use crate::topology::EntityId;

/// One of a host's links, as a tick reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ScanLink {
    pub(super) observer: u16,
    /// How many of the host's enclosing entities do not hold the observer
    /// (`View::outside`).
    pub(super) outside: u8,
    pub(super) slot: SlotId,
}

/// How many links ahead of the one being read the tick asks for health: far enough
/// that a miss to memory (a few hundred ns) is over by the time it gets there, near
/// enough that what it asked for is still in cache.
const AHEAD: usize = 24;

#[derive(Debug, Default)]
pub(super) struct LinkScan {
    links: Vec<ScanLink>,
    /// Where each host's links start in `links`, by its place in the host order the
    /// copy was made for, and one past the last (empty: no copy yet).
    starts: Vec<u32>,
    stale: bool,
}

impl LinkScan {
    /// A host's links, an observer's or the hosts changed: copy again before the next
    /// tick reads.
    pub(super) fn invalidate(&mut self) {
        self.stale = true;
    }

    /// Copies the links of `hosts` (in that order) again, if anything changed.
    pub(super) fn refresh(&mut self, hosts: &[EntityId], nodes: &[Node], observers: &[Observer]) {
        // No copy yet, or one for other hosts, is refreshed as if invalidated.
        if !self.stale && self.starts.len() == hosts.len() + 1 {
            return;
        }
        self.links.clear();
        self.starts.clear();
        for &host in hosts {
            self.starts.push(index(self.links.len()));
            let node = &nodes[host.index()];
            let host_ids = super::ids(&node.around);
            self.links
                .extend(node.links.iter().map(|&(observer, slot)| {
                    let observer_ids = super::ids(&observers[usize::from(observer)].around);
                    ScanLink {
                        observer,
                        outside: super::outside_count(host_ids, observer_ids),
                        slot,
                    }
                }));
        }
        self.starts.push(index(self.links.len()));
        self.stale = false;
    }

    /// The links of the `i`-th host, after asking for the health of those `AHEAD`
    /// places further on.
    #[inline(always)]
    pub(super) fn host<T>(&self, i: usize, health: &[T]) -> &[ScanLink] {
        let (start, end) = (self.starts[i] as usize, self.starts[i + 1] as usize);
        // Near the end there is nothing far enough ahead: no hints there.
        let ahead = self.links.get(start + AHEAD..end + AHEAD).unwrap_or(&[]);
        for l in ahead {
            if let Some(h) = health.get(l.slot as usize) {
                prefetch(h);
            }
        }
        &self.links[start..end]
    }

    /// Whether the copy is what `refresh` would make now (debug builds check it
    /// every tick: every change to a host's links must invalidate it).
    #[cfg(debug_assertions)]
    pub(super) fn matches(
        &self,
        hosts: &[EntityId],
        nodes: &[Node],
        observers: &[Observer],
    ) -> bool {
        let mut fresh = Self {
            stale: true,
            ..Self::default()
        };
        fresh.refresh(hosts, nodes, observers);
        fresh.links == self.links && fresh.starts == self.starts
    }
}

fn index(n: usize) -> u32 {
    u32::try_from(n).expect("fewer than 2^32 links")
}

/// Asks for the cache lines of a link's health to be loaded, without waiting for them:
/// those of its first and last byte, which is all of them for a value on at most two
/// lines (80 bytes in a 16-byte aligned arena are). Two plain hints, not a loop: this
/// runs once per link per tick.
#[inline(always)]
fn prefetch<T>(value: &T) {
    let first = std::ptr::from_ref(value).cast::<i8>();
    prefetch_line(first);
    prefetch_line(first.wrapping_add(size_of::<T>().saturating_sub(1)));
}

/// Asks for the cache lines of the first `bytes` of `value` (at most all of it), one
/// every 64 bytes from its first: the part of a host's node a pass reads, a few hosts
/// ahead of the one it is at. Nodes are 64-byte aligned, so these are exactly the
/// lines that part lies on.
#[inline(always)]
pub(super) fn prefetch_bytes<T>(value: &T, bytes: usize) {
    let first = std::ptr::from_ref(value).cast::<i8>();
    for offset in (0..bytes.min(size_of::<T>())).step_by(64) {
        prefetch_line(first.wrapping_add(offset));
    }
}

#[inline(always)]
fn prefetch_line(at: *const i8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults nor changes what memory
    // holds, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}
