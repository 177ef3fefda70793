//! Types shared by the kernel programs and the agent.
//!
//! Everything here is `#[repr(C)]` and `Copy` with explicit padding, because the same
//! bytes are written by eBPF code and read back by userspace through map syscalls:
//! the two sides must agree on every offset. The `user` feature adds `aya::Pod`.
#![no_std]

// The kernel bin uses aya-ebpf; the lib does not.
#[cfg(target_arch = "bpf")]
use aya_ebpf as _;

/// `AF_INET`, as stored in [`LinkKey::family`].
pub const AF_INET: u32 = 2;
/// `AF_INET6`, as stored in [`LinkKey::family`].
pub const AF_INET6: u32 = 10;

/// Number of log2 RTT buckets. Bucket 0 holds 0 µs, bucket `b` holds
/// `[2^(b-1), 2^b)` µs; the last bucket also holds everything above (≥ 4.2 s).
pub const RTT_BUCKETS: usize = 24;

/// Upper bound on distinct links tracked by the kernel (LRU: the least recently
/// touched link is evicted first, so a scan of many peers cannot wedge the map).
pub const DEFAULT_MAX_LINKS: u32 = 16_384;

/// One link: this host's address talking to one remote address.
///
/// Addresses are in network byte order. IPv4 uses the first 4 bytes and leaves the
/// other 12 zero; an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is stored as IPv4,
/// so a v4 peer reached from a v6 socket is the same link as from a v4 socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct LinkKey {
    /// [`AF_INET`] or [`AF_INET6`]. A u32 (not u16) so the struct has no hidden padding.
    pub family: u32,
    pub local: [u8; 16],
    pub remote: [u8; 16],
}

/// Most of this host's addresses the kernel programs keep links for. Links whose local
/// end is none of them are not this host's (another network namespace's: a container,
/// or another agent's host in a lab on one machine), and the agent never judges them;
/// counting them in the kernel filled the table and cost a map update per segment. A
/// host with more addresses has every link counted, and the agent keeps its own.
pub const MAX_LOCAL_ADDRS: u32 = 16;

/// One of this host's addresses, as a [`LinkKey`] holds its local end (IPv4 in the
/// first 4 bytes): the same 20 bytes as the key's first two fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LocalAddr {
    pub family: u32,
    pub addr: [u8; 16],
}

// The kernel programs compare a key's first 20 bytes with a `LocalAddr` word by word.
const _: () = assert!(
    size_of::<LocalAddr>() == 20
        && core::mem::offset_of!(LinkKey, local) == 4
        && align_of::<LinkKey>() == 4
        && align_of::<LocalAddr>() == 4
);

/// Per-CPU counters for one link, as the kernel accumulates them.
///
/// All counters only grow (until the LRU evicts the link); userspace sums the CPUs
/// and takes differences between ticks. Every field is 8 bytes so the layout has no
/// implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkStats {
    /// Segments received from the peer on established sockets (ACKs and data):
    /// grows while the peer is reachable, stops dead in a blackhole.
    pub progress_segs: u64,
    /// Retransmitted segments on established sockets (fast retransmit, tail-loss
    /// probe, and the re-sends that follow an RTO).
    pub retrans_segs: u64,
    /// Retransmission timer expirations (RTO) on established sockets. Needs sock_ops.
    pub rto_timeouts: u64,
    /// SYNs retransmitted (connect retries).
    pub syn_retrans: u64,
    /// Connects that gave up: SYN_SENT → CLOSE.
    pub failed_connects: u64,
    /// Resets received from the peer.
    pub resets_rx: u64,
    /// Log2 histogram of the smoothed RTT in µs, one sample per segment received.
    pub rtt_hist: [u64; RTT_BUCKETS],
    /// Latest smoothed RTT in µs, as of `last_progress_ns`.
    pub srtt_us: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last segment received, 0 if none.
    pub last_progress_ns: u64,
    /// `bpf_ktime_get_ns()` of the last retransmission, RTO, failed connect or reset.
    pub last_loss_ns: u64,
    /// ACKs that acknowledged our data (advanced `snd_una`, or SACKed) with an RTT
    /// sample: grows while the peer receives what we send, so unlike `progress_segs`
    /// it stops in a one-way fault towards the peer. Needs sock_ops; written by its RTT
    /// callback only, with an atomic add (that callback nests with itself). Last, so
    /// every field `tcp_probe` writes keeps the offset (and cache line) it had before
    /// this counter existed: that program's per-segment cost is measured against it.
    pub acked_segs: u64,
    /// RTOs and SYN retries of a connection that had already timed out and heard
    /// nothing since (the kernel's `icsk_retransmits` ≥ 1): its data has waited since
    /// an earlier timeout, so this one says nothing new about the path. A subset of
    /// `rto_timeouts + syn_retrans`; written by the RTO callback only.
    pub repeat_timeouts: u64,
    /// Retransmitted segments on established sockets of the agents' heartbeat port
    /// (local or remote port = the kernel programs' `CONTROL_PORT`): a segment a tick
    /// that times out 20 ms past its RTT (two, for a tail-loss probe, on kernels that
    /// cannot shorten the timeout), so a blackhole shows a tick sooner; but an ACK a
    /// little late makes the retransmission spurious. These start a stall like any retransmission and are
    /// never loss (never in `retrans_segs`).
    pub control_retrans_segs: u64,
    /// Of `progress_segs`, those received on the heartbeat port: liveness like any
    /// segment, but left out of loss ratios with `control_retrans_segs`, so that the
    /// heartbeats do not dilute them.
    pub control_progress_segs: u64,
    /// Retransmission timeouts on the heartbeat port, first ones only (a repeat says
    /// nothing new). Heartbeats time out 20 ms past their RTT (`TCP_RTO_MIN_US`), so
    /// one is a dead path's earliest proof: it ends a stall's wait for silence like
    /// any RTO, but never counts as loss (never in `rto_timeouts`).
    pub control_timeouts: u64,
    /// `bpf_ktime_get_ns()` of the last ACK of our data (as `acked_segs` counts them),
    /// 0 if none: the moment our own path there last worked both ways. An observer
    /// inside a cut-off site still receives the far sites' last ACKs for up to a
    /// one-way delay after the cut; dated by the kernel, they are told apart from
    /// answers that crossed after it. Written by the RTT callback only, stored whole.
    pub last_acked_ns: u64,
}

impl LinkStats {
    pub const ZERO: Self = Self {
        progress_segs: 0,
        retrans_segs: 0,
        rto_timeouts: 0,
        syn_retrans: 0,
        failed_connects: 0,
        resets_rx: 0,
        rtt_hist: [0; RTT_BUCKETS],
        srtt_us: 0,
        last_progress_ns: 0,
        last_loss_ns: 0,
        acked_segs: 0,
        repeat_timeouts: 0,
        control_retrans_segs: 0,
        control_progress_segs: 0,
        control_timeouts: 0,
        last_acked_ns: 0,
    };
}

/// Kinds of [`UrgentEvent`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrgentKind {
    /// The retransmission timer fired on an established socket.
    Rto = 1,
    /// A SYN was retransmitted: a connect is not being answered.
    SynRetrans = 2,
    /// A reset was received.
    Reset = 3,
    /// The first retransmission on a link that had no loss for a while.
    FirstLoss = 4,
    /// A connect gave up (SYN_SENT → CLOSE).
    FailedConnect = 5,
}

impl UrgentKind {
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            1 => Self::Rto,
            2 => Self::SynRetrans,
            3 => Self::Reset,
            4 => Self::FirstLoss,
            5 => Self::FailedConnect,
            _ => return None,
        })
    }
}

/// A rare event worth waking userspace for, sent through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UrgentEvent {
    pub link: LinkKey,
    /// An [`UrgentKind`] as u32.
    pub kind: u32,
    /// `bpf_ktime_get_ns()` when it happened.
    pub at_ns: u64,
}

/// In-kernel rate limit for urgent events: at most this many per CPU per window.
pub const URGENT_PER_WINDOW: u64 = 64;
/// Rate limit window, in ns (10 ms).
pub const URGENT_WINDOW_NS: u64 = 10_000_000;
/// A loss is "first" when the link had none for this long (1 s).
pub const FIRST_LOSS_QUIET_NS: u64 = 1_000_000_000;

/// Slots of the per-CPU `URGENT_BUDGET` array. The sock_ops RTO callback (softirq) can
/// interrupt a tracepoint program on the same CPU, so the two kinds of program keep
/// separate budgets: a read-modify-write of one slot is never interleaved with another
/// of the same slot. The rate limit is therefore per CPU and per kind of program.
pub const URGENT_BUDGET_TRACEPOINTS: u32 = 0;
/// The sock_ops program's slot; see [`URGENT_BUDGET_TRACEPOINTS`].
pub const URGENT_BUDGET_SOCK_OPS: u32 = 1;
/// Entries of `URGENT_BUDGET`; userspace sums all of them.
pub const URGENT_BUDGET_SLOTS: u32 = 2;

/// Per-CPU state of the urgent-event rate limit (one per slot, see
/// [`URGENT_BUDGET_TRACEPOINTS`]); `dropped` and `ring_full` are read by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UrgentBudget {
    pub window_start_ns: u64,
    pub sent_in_window: u64,
    /// Events suppressed by the rate limit since load.
    pub dropped: u64,
    /// Events the ring buffer had no room for since load.
    pub ring_full: u64,
}

/// Where the address fields of one tracepoint record sit. Read from tracefs
/// `format` files at start-up, because record layouts change between kernels.
/// Offsets are in bytes from the start of the record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrLayout {
    pub family: u16,
    pub saddr4: u16,
    pub daddr4: u16,
    pub saddr6: u16,
    pub daddr6: u16,
    /// Bytes of the record the program copies: the end of the last field it reads
    /// (at most [`RECORD_COPY_MAX`]). One copy per event instead of one per field.
    pub record_len: u16,
}

/// Largest record prefix a program copies onto its (512-byte) stack.
pub const RECORD_COPY_MAX: usize = 128;

impl AddrLayout {
    pub const ZERO: Self = Self {
        family: 0,
        saddr4: 0,
        daddr4: 0,
        saddr6: 0,
        daddr6: 0,
        record_len: 0,
    };
}

/// `tcp:tcp_retransmit_skb`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetransmitLayout {
    pub addr: AddrLayout,
    /// `int state`: the socket's TCP state.
    pub state: u16,
    /// `__u16 sport` and `dport`: the local and remote ports, host byte order.
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
}

/// `tcp:tcp_receive_reset`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetLayout {
    pub addr: AddrLayout,
}

/// `sock:inet_sock_set_state`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateChangeLayout {
    pub addr: AddrLayout,
    pub oldstate: u16,
    pub newstate: u16,
    pub protocol: u16,
    pub _pad: u16,
}

/// `tcp:tcp_probe`. Its addresses are whole `sockaddr_in`/`sockaddr_in6`, so the
/// userspace side points `saddr4`/`saddr6` at `sin_addr`/`sin6_addr` inside them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeLayout {
    pub addr: AddrLayout,
    /// `__u32 srtt`, already in µs.
    pub srtt: u16,
    /// `__u16 sport` and `dport`: the local and remote ports, host byte order.
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
}

/// The agents' heartbeat port, as the loader sets the kernel programs' `CONTROL_PORT`;
/// 0 when there is none (a probe without an agent behind it, as in `faultline links`).
/// Its retransmissions are counted in [`LinkStats::control_retrans_segs`].
pub const NO_CONTROL_PORT: u16 = 0;

/// TCP states, as in `include/net/tcp_states.h`.
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_SENT: i32 = 2;
pub const TCP_CLOSE: i32 = 7;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;

/// The log2 bucket of an RTT in µs (see [`RTT_BUCKETS`]).
#[inline(always)]
pub fn rtt_bucket(us: u64) -> usize {
    let b = (64 - us.leading_zeros()) as usize;
    if b >= RTT_BUCKETS { RTT_BUCKETS - 1 } else { b }
}

/// Upper edge (exclusive) of a bucket in µs; the last bucket is open-ended.
pub fn rtt_bucket_upper_us(bucket: usize) -> u64 {
    1u64 << bucket
}

#[cfg(feature = "user")]
mod pod {
    /// Each of these is #[repr(C)], Copy, made only of integers, with explicit padding
    /// fields, so every bit pattern is valid and no byte is uninitialised.
    macro_rules! pod {
        ($($t:ident),*) => {$(
            // SAFETY: see the macro's doc: integers only, explicit padding, repr(C).
            unsafe impl aya::Pod for super::$t {}
        )*};
    }
    pod!(
        LinkKey,
        LocalAddr,
        LinkStats,
        UrgentBudget,
        RetransmitLayout,
        ResetLayout,
        StateChangeLayout,
        ProbeLayout
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<LinkKey>(), 36);
        // 6 counters, the histogram, 3 latest values, acked_segs, repeat_timeouts,
        // the three control counters and the last ACK's time: all u64, no padding.
        assert_eq!(
            core::mem::size_of::<LinkStats>(),
            8 * (6 + RTT_BUCKETS + 3 + 6)
        );
        assert_eq!(
            core::mem::offset_of!(LinkStats, last_progress_ns),
            8 * (6 + RTT_BUCKETS + 1),
            "tcp_probe's fields keep their offsets"
        );
        assert_eq!(
            core::mem::offset_of!(LinkStats, acked_segs),
            8 * (6 + RTT_BUCKETS + 3)
        );
        assert_eq!(core::mem::align_of::<LinkStats>(), 8);
        assert_eq!(core::mem::size_of::<UrgentEvent>(), 48);
        assert_eq!(core::mem::size_of::<AddrLayout>(), 12);
    }

    #[test]
    fn rtt_buckets_are_log2_and_clamped() {
        assert_eq!(rtt_bucket(0), 0);
        assert_eq!(rtt_bucket(1), 1);
        assert_eq!(rtt_bucket(3), 2);
        assert_eq!(rtt_bucket(4), 3);
        assert_eq!(rtt_bucket(1000), 10);
        assert_eq!(rtt_bucket(u64::MAX), RTT_BUCKETS - 1);
        assert!(rtt_bucket_upper_us(10) > 1000);
    }
}
