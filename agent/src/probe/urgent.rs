//! Urgent events from the kernel's ring buffer: an RTO, a SYN retry, a reset, a failed
//! connect, the first loss on a quiet link. The agent waits on the ring's fd, so it
//! wakes the moment one arrives instead of at the next tick.
use aya::maps::{Map, MapData, RingBuf};
use faultline_ebpf::{UrgentEvent, UrgentKind};
use tokio::io::{Interest, unix::AsyncFd};

use super::{Link, ProbeError};

/// One urgent event, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrgentRecord {
    pub link: Link,
    pub kind: UrgentKind,
    /// CLOCK_MONOTONIC ns when the kernel saw it.
    pub at_ns: u64,
}

/// The ring buffer, readable from async code.
pub struct UrgentEvents {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl UrgentEvents {
    /// Must be called inside a tokio runtime (it registers the ring with the reactor).
    pub(super) fn new(map: Map) -> Result<Self, ProbeError> {
        let ring = RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            name: "URGENT",
            source,
        })?;
        // SAFETY: RingBuf owns its map fd; it stays open and the same for as long as
        // the RingBuf lives, which is as long as this AsyncFd.
        let ring =
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| {
                ProbeError::Map {
                    name: "URGENT",
                    source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                        call: "epoll register of the ring buffer",
                        io_error: e.into(),
                    }),
                }
            })?;
        Ok(Self { ring })
    }

    /// Waits until at least one event is available and returns all that are.
    pub async fn next_batch(&mut self) -> std::io::Result<Vec<UrgentRecord>> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            let batch = drain_ring(guard.get_inner_mut());
            guard.clear_ready();
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }

    /// Every event available right now, without waiting.
    pub fn drain(&mut self) -> Vec<UrgentRecord> {
        drain_ring(self.ring.get_mut())
    }
}

fn drain_ring(ring: &mut RingBuf<MapData>) -> Vec<UrgentRecord> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        if let Some(record) = decode(&item) {
            out.push(record);
        }
    }
    out
}

fn decode(bytes: &[u8]) -> Option<UrgentRecord> {
    if bytes.len() < size_of::<UrgentEvent>() {
        return None;
    }
    // SAFETY: length checked above; UrgentEvent is repr(C) plain integers, so any
    // bytes are a valid value; read_unaligned because ring records are 8-aligned
    // only by convention.
    let event: UrgentEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    Some(UrgentRecord {
        link: super::sample::link_of(&event.link),
        kind: UrgentKind::from_raw(event.kind)?,
        at_ns: event.at_ns,
    })
}
