//! What the kernel saw on one link, in the form the detector consumes. The probe turns
//! the kernel's per-CPU records into these; peers send them over the wire; tests and
//! benches make them up. Nothing here knows about the kernel or the network.
use std::{net::IpAddr, time::Duration};

use serde::Serialize;

/// Buckets of the kernel's log2 RTT histogram (the probe checks it matches the kernel's).
pub const RTT_BUCKETS: usize = 24;

/// Upper edge (exclusive) of an RTT bucket in µs; the last bucket is open-ended.
pub fn rtt_bucket_upper_us(bucket: usize) -> u64 {
    1u64 << bucket
}

/// This host's address talking to one remote address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Link {
    pub local: IpAddr,
    pub remote: IpAddr,
}

/// The loss and progress counters of a link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LinkCounters {
    /// Segments received from the peer (the link delivers).
    pub progress_segs: u64,
    /// ACKs that acknowledged our data (the peer receives what we send). Progress, not
    /// loss. Counted only on sockets the kernel's sock_ops program saw open; 0 from a
    /// host without it, so 0 alone proves nothing (see `detector::link`).
    pub acked_segs: u64,
    /// Retransmitted segments on established connections (fast, TLP, after RTO).
    pub retrans_segs: u64,
    /// Retransmission timeouts.
    pub rto_timeouts: u64,
    /// SYN retransmissions (connect retries).
    pub syn_retrans: u64,
    /// Connects that gave up.
    pub failed_connects: u64,
    /// Resets received.
    pub resets_rx: u64,
    /// Of `rto_timeouts + syn_retrans`, those of a connection that had already timed
    /// out with nothing acknowledged since: its data waited since before. 0 from a host
    /// without sock_ops or an older agent, so every timeout then counts as news.
    pub repeat_timeouts: u64,
    /// Retransmissions on the agents' heartbeat connections (a segment a tick). They
    /// start a stall as early as any retransmission, but they are spurious whenever an
    /// ACK comes a little late, so they are never loss. 0 from an
    /// agent older than this field.
    pub control_retrans_segs: u64,
    /// Of `progress_segs`, the segments received on heartbeat connections: left out of
    /// loss ratios with `control_retrans_segs`, so the heartbeats do not dilute them.
    /// 0 from an agent older than this field.
    pub control_progress_segs: u64,
    /// Retransmission timeouts on heartbeat connections (not repeats). Their timeout
    /// is 20 ms past the RTT, so one hardens a stall as early as a path can be proven
    /// dead; never loss. 0 from an agent older than this field.
    pub control_timeouts: u64,
}

/// The most any counter may hold in one tick's delta: far beyond what a link carries
/// in a tick, and small enough that the detector's sums of a few never overflow. Peers
/// send deltas over the wire; one that sends `u64::MAX` must not wrap FAILED evidence
/// into none. Applied where they come in, not in the detector's per-link loop.
pub const MAX_TICK_COUNT: u64 = 1 << 40;

impl LinkCounters {
    /// Adds per-CPU counters; saturating, as the kernel's can be anything.
    pub fn add(&mut self, other: &Self) {
        let add = |a: &mut u64, b: u64| *a = a.saturating_add(b);
        add(&mut self.progress_segs, other.progress_segs);
        add(&mut self.acked_segs, other.acked_segs);
        add(&mut self.retrans_segs, other.retrans_segs);
        add(&mut self.rto_timeouts, other.rto_timeouts);
        add(&mut self.syn_retrans, other.syn_retrans);
        add(&mut self.failed_connects, other.failed_connects);
        add(&mut self.resets_rx, other.resets_rx);
        add(&mut self.repeat_timeouts, other.repeat_timeouts);
        add(&mut self.control_retrans_segs, other.control_retrans_segs);
        add(&mut self.control_progress_segs, other.control_progress_segs);
        add(&mut self.control_timeouts, other.control_timeouts);
    }

    /// Every counter capped at [`MAX_TICK_COUNT`], for arithmetic that must not wrap.
    #[must_use]
    pub fn clamped(&self) -> Self {
        let c = |v: u64| v.min(MAX_TICK_COUNT);
        Self {
            progress_segs: c(self.progress_segs),
            acked_segs: c(self.acked_segs),
            retrans_segs: c(self.retrans_segs),
            rto_timeouts: c(self.rto_timeouts),
            syn_retrans: c(self.syn_retrans),
            failed_connects: c(self.failed_connects),
            resets_rx: c(self.resets_rx),
            repeat_timeouts: c(self.repeat_timeouts),
            control_retrans_segs: c(self.control_retrans_segs),
            control_progress_segs: c(self.control_progress_segs),
            control_timeouts: c(self.control_timeouts),
        }
    }

    /// `self - earlier`; a counter that went down means the link was evicted and
    /// re-created in the kernel, so everything it holds now is new.
    pub fn since(&self, earlier: &Self) -> Self {
        let d = |now: u64, then: u64| if now >= then { now - then } else { now };
        Self {
            progress_segs: d(self.progress_segs, earlier.progress_segs),
            acked_segs: d(self.acked_segs, earlier.acked_segs),
            retrans_segs: d(self.retrans_segs, earlier.retrans_segs),
            rto_timeouts: d(self.rto_timeouts, earlier.rto_timeouts),
            syn_retrans: d(self.syn_retrans, earlier.syn_retrans),
            failed_connects: d(self.failed_connects, earlier.failed_connects),
            resets_rx: d(self.resets_rx, earlier.resets_rx),
            repeat_timeouts: d(self.repeat_timeouts, earlier.repeat_timeouts),
            control_retrans_segs: d(self.control_retrans_segs, earlier.control_retrans_segs),
            control_progress_segs: d(self.control_progress_segs, earlier.control_progress_segs),
            control_timeouts: d(self.control_timeouts, earlier.control_timeouts),
        }
    }

    /// Any kind of loss at all (ACKs and segments received are progress, not loss;
    /// the agent's own streams' retransmissions are not loss either).
    pub fn losses(&self) -> u64 {
        self.retrans_segs
            .saturating_add(self.rto_timeouts)
            .saturating_add(self.syn_retrans)
            .saturating_add(self.failed_connects)
            .saturating_add(self.resets_rx)
    }

    /// Retransmitted segments and timeouts that count as loss: those of connections
    /// that had already timed out and heard nothing since (`repeat_timeouts`, each
    /// with its re-sent segment) are the tail of an earlier stall, as every
    /// connection that sat in a fault times out once more after it clears, on its
    /// backoff timer, seconds later: not new loss.
    pub fn lost_segs(&self) -> (u64, u64) {
        let repeat = self.repeat_timeouts;
        (
            self.retrans_segs.saturating_sub(repeat),
            self.rto_timeouts.saturating_sub(repeat),
        )
    }

    /// `progress_segs` without the heartbeats': the denominator of a loss ratio.
    pub fn progress_segs_but_heartbeats(&self) -> u64 {
        self.progress_segs
            .saturating_sub(self.control_progress_segs)
    }

    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// Log2 histogram of smoothed RTT samples, in µs (the kernel's `rtt_bucket`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RttHistogram(pub [u64; RTT_BUCKETS]);

impl Default for RttHistogram {
    fn default() -> Self {
        Self([0; RTT_BUCKETS])
    }
}

impl RttHistogram {
    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The upper edge, in µs, of the bucket holding quantile `q` (0..=1); None if empty.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // Rank of the sample at quantile q, 1-based, at least 1.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, n) in self.0.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(rtt_bucket_upper_us(bucket));
            }
        }
        None
    }

    pub fn add(&mut self, other: &Self) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }

    pub fn since(&self, earlier: &Self) -> Self {
        let mut out = *self;
        let restarted = self
            .0
            .iter()
            .zip(earlier.0.iter())
            .any(|(now, then)| now < then);
        if !restarted {
            for (a, b) in out.0.iter_mut().zip(earlier.0.iter()) {
                *a -= b;
            }
        }
        out
    }
}

/// What one link did during one tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkSample {
    pub link: Link,
    /// Counted during this tick.
    pub delta: LinkCounters,
    /// RTT samples recorded during this tick.
    pub rtt: RttHistogram,
    /// Counted since the probe attached (or the link was first seen).
    pub total: LinkCounters,
    /// Latest smoothed RTT, µs (0 before any segment was received).
    pub srtt_us: u64,
    /// Time since the last segment from the peer; None if never.
    pub since_progress: Option<Duration>,
    /// Time since the last loss event; None if never.
    pub since_loss: Option<Duration>,
    /// Time since the peer last acknowledged our data; None if never.
    pub since_acked: Option<Duration>,
}
