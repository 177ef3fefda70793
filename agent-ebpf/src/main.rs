//! Faultline's kernel programs: per-link TCP health counters.
//!
//! Data enters from four tracepoints (global: they see every socket of every network
//! namespace, including sockets opened before the agent started) and one sock_ops
//! program (only for sockets opened after it attached, because it must ask for its RTO
//! and RTT callbacks at connect time). Everything is aggregated in a per-CPU LRU map keyed by
//! link, for links whose local end is one of the host's addresses when the loader gives
//! them (`LOCAL_ADDRS`: other namespaces' links are not this host's); userspace reads it
//! every tick. Rare, urgent events also go to a ring buffer,
//! rate-limited per CPU, so a blackhole wakes the agent at once. Rare failures (a map
//! insert or ring buffer output that fails, a record that cannot be copied) are logged
//! through aya-log; nothing is logged on the per-segment success path.
//!
//! # Nesting: who can interrupt whom on one CPU
//!
//! Map values here are per-CPU, but per-CPU is not exclusive: a program can be
//! interrupted on its CPU by another program that reaches the same value.
//! - Tracepoint programs never nest with each other: `trace_call_bpf` runs at most
//!   one per CPU at a time (`bpf_prog_active`); one that fires inside another is
//!   skipped and counted in the program's `recursion_misses`.
//! - The sock_ops program is not under that guard. Its RTO callback runs from the
//!   retransmit timer (softirq, or `tcp_release_cb` with BH disabled), so it can
//!   interrupt a tracepoint program running in process context with BH enabled
//!   (`tcp_probe` or `tcp_receive_reset` from socket backlog processing,
//!   `tcp_retransmit_skb` or `inet_sock_set_state` from a syscall), and touch the same
//!   link's `LinkStats`. The RTO callback itself never nests with itself (BH context).
//! - Its RTT callback runs wherever an ACK is processed: in softirq, or in process
//!   context with BH enabled (socket backlog processing in `release_sock`). So it can
//!   interrupt tracepoint programs, be interrupted by them and by the RTO callback,
//!   and, alone among our callbacks, nest with itself: a softirq ACK of one socket
//!   interrupting the backlog ACK of another socket to the same peer.
//!
//! Hence: no `&mut` to a whole `LinkStats`. Each field is written through its own raw
//! pointer ([`LinkSlot`]), every counter has exactly one writing program (so a
//! load + store cannot lose an interleaved increment), except `acked_segs`, whose one
//! writer nests with itself and so adds with one atomic instruction
//! ([`LinkSlot::count_nested`]); and the one field written by both sides,
//! `last_loss_ns`, is only ever stored whole (a store cannot tear), as is
//! `last_acked_ns`, whose one writer nests with itself. The urgent-event
//! budget is multiword read-modify-write state, so each side has its own slot of
//! `URGENT_BUDGET` ([`URGENT_BUDGET_TRACEPOINTS`], [`URGENT_BUDGET_SOCK_OPS`], the latter
//! used by the RTO callback only).
// aya's program macros hand each entry point its context by value.
#![expect(clippy::needless_pass_by_value)]
// `asm!` for BPF (one atomic add, see `LinkSlot::count_nested`), as aya-ebpf itself uses.
#![feature(asm_experimental_arch)]
#![no_std]
#![no_main]

use core::mem::offset_of;

use aya_ebpf::{
    EbpfContext, Global,
    bindings::{BPF_NOEXIST, BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_RTT_CB_FLAG},
    helpers::{bpf_ktime_get_ns, generated as helper},
    macros::{map, sock_ops, tracepoint},
    maps::{Array, LruPerCpuHashMap, PerCpuArray, RingBuf},
    programs::{SockOpsContext, TracePointContext},
};
use aya_log_ebpf::{error, warn};
use faultline_ebpf::{
    AF_INET, AF_INET6, AddrLayout, DEFAULT_MAX_LINKS, FIRST_LOSS_QUIET_NS, IPPROTO_TCP, LinkKey,
    LinkStats, LocalAddr, MAX_LOCAL_ADDRS, NO_CONTROL_PORT, ProbeLayout, RECORD_COPY_MAX,
    RTT_BUCKETS, ResetLayout, RetransmitLayout, StateChangeLayout, TCP_CLOSE, TCP_SYN_SENT,
    URGENT_BUDGET_SLOTS, URGENT_BUDGET_SOCK_OPS, URGENT_BUDGET_TRACEPOINTS, URGENT_PER_WINDOW,
    URGENT_WINDOW_NS, UrgentBudget, UrgentEvent, UrgentKind, rtt_bucket,
};

#[map(name = "LINKS")]
static LINKS: LruPerCpuHashMap<LinkKey, LinkStats> =
    LruPerCpuHashMap::with_max_entries(DEFAULT_MAX_LINKS, 0);

/// One all-zero LinkStats to insert new links from: a LinkStats on the 512-byte
/// BPF stack next to a key would not leave room for much else.
#[map(name = "ZERO_STATS")]
static ZERO_STATS: Array<LinkStats> = Array::with_max_entries(1, 0);

/// This host's addresses (the first `LOCAL_ADDR_COUNT`), filled by the loader before
/// any program is attached.
#[map(name = "LOCAL_ADDRS")]
static LOCAL_ADDRS: Array<LocalAddr> = Array::with_max_entries(MAX_LOCAL_ADDRS, 0);

#[map(name = "URGENT")]
static URGENT: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// One slot per kind of program that can interrupt the other (see "Nesting").
#[map(name = "URGENT_BUDGET")]
static URGENT_BUDGET: PerCpuArray<UrgentBudget> =
    PerCpuArray::with_max_entries(URGENT_BUDGET_SLOTS, 0);

// Record layouts, filled in by the loader from tracefs `format` files.
#[unsafe(no_mangle)]
static RETRANSMIT_LAYOUT: Global<RetransmitLayout> = Global::new(RetransmitLayout {
    addr: AddrLayout::ZERO,
    state: 0,
    sport: 0,
    dport: 0,
    _pad: 0,
});
/// How many of `LOCAL_ADDRS` are set; 0 keeps every link (see [`MAX_LOCAL_ADDRS`]).
#[unsafe(no_mangle)]
static LOCAL_ADDR_COUNT: Global<u32> = Global::new(0);
/// The agents' heartbeat port ([`NO_CONTROL_PORT`] for none), set by the loader.
#[unsafe(no_mangle)]
static CONTROL_PORT: Global<u16> = Global::new(NO_CONTROL_PORT);
#[unsafe(no_mangle)]
static RESET_LAYOUT: Global<ResetLayout> = Global::new(ResetLayout {
    addr: AddrLayout::ZERO,
});
#[unsafe(no_mangle)]
static STATE_LAYOUT: Global<StateChangeLayout> = Global::new(StateChangeLayout {
    addr: AddrLayout::ZERO,
    oldstate: 0,
    newstate: 0,
    protocol: 0,
    _pad: 0,
});
#[unsafe(no_mangle)]
static PROBE_LAYOUT: Global<ProbeLayout> = Global::new(ProbeLayout {
    addr: AddrLayout::ZERO,
    srtt: 0,
    sport: 0,
    dport: 0,
    _pad: 0,
});

const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;
const BPF_SOCK_OPS_RTO_CB: u32 = 8;
const BPF_SOCK_OPS_RTT_CB: u32 = 12;
/// `-EEXIST`: the link was inserted meanwhile (by another CPU, or a program that
/// interrupted this one), which is fine.
const EEXIST: i32 = 17;

/// The first `record_len` bytes of a tracepoint record, copied with one helper call
/// (a call per field cost ~25 ns each on the per-segment path).
struct Record([u8; RECORD_COPY_MAX]);

/// [`RECORD_COPY_MAX`] as the helper's length type (128 fits any integer type).
#[expect(
    clippy::cast_possible_truncation,
    reason = "a small constant, checked below"
)]
const RECORD_COPY_MAX_U32: u32 = RECORD_COPY_MAX as u32;
const _: () = assert!(RECORD_COPY_MAX_U32 as usize == RECORD_COPY_MAX);

impl Record {
    /// Fills `self` in place: returning the 128 bytes by value would copy them on a
    /// stack that only has 512.
    #[inline(always)]
    fn copy(&mut self, ctx: &TracePointContext, len: u16) -> Result<(), i64> {
        let len = u32::from(len).min(RECORD_COPY_MAX_U32);
        // SAFETY: copies at most RECORD_COPY_MAX bytes into a buffer of that size;
        // the helper checks the source address itself.
        let rc = unsafe {
            helper::bpf_probe_read_kernel(
                self.0.as_mut_ptr().cast(),
                len,
                ctx.as_ptr().cast_const(),
            )
        };
        if rc < 0 {
            // The loader checked `len` against the format file, so the record is
            // shorter than its own format says: a kernel we do not understand.
            error!(
                ctx,
                "copy {} bytes of a tracepoint record: error {}", len, rc
            );
            return Err(rc);
        }
        Ok(())
    }

    /// The field at `offset`; offsets are load-time constants the verifier sees.
    #[inline(always)]
    fn at<T: Copy>(&self, offset: u16) -> Result<T, i64> {
        let offset = offset as usize;
        if offset + core::mem::size_of::<T>() > RECORD_COPY_MAX {
            return Err(0);
        }
        // SAFETY: in bounds (checked above); read_unaligned as records are packed.
        Ok(unsafe { core::ptr::read_unaligned(self.0.as_ptr().add(offset).cast::<T>()) })
    }
}

#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff
}

/// Builds a link key from a record's address fields, folding v4-mapped into v4.
#[inline(always)]
fn read_key(rec: &Record, l: &AddrLayout) -> Result<LinkKey, i64> {
    let family: u16 = rec.at(l.family)?;
    let mut key = LinkKey::default();
    if u32::from(family) == AF_INET {
        let local: [u8; 4] = rec.at(l.saddr4)?;
        let remote: [u8; 4] = rec.at(l.daddr4)?;
        key.family = AF_INET;
        key.local[..4].copy_from_slice(&local);
        key.remote[..4].copy_from_slice(&remote);
    } else if u32::from(family) == AF_INET6 {
        let local: [u8; 16] = rec.at(l.saddr6)?;
        let remote: [u8; 16] = rec.at(l.daddr6)?;
        key = v6_key(local, remote);
    } else {
        return Err(0);
    }
    Ok(key)
}

#[inline(always)]
fn v6_key(local: [u8; 16], remote: [u8; 16]) -> LinkKey {
    let mut key = LinkKey::default();
    if is_v4_mapped(&remote) {
        key.family = AF_INET;
        key.local[..4].copy_from_slice(&local[12..]);
        key.remote[..4].copy_from_slice(&remote[12..]);
    } else {
        key.family = AF_INET6;
        key.local = local;
        key.remote = remote;
    }
    key
}

/// A `u64` field of [`LinkStats`], by offset. Only the constants below (and
/// [`Field::rtt_bucket`], bounded) exist, so every offset is in bounds and aligned.
#[derive(Clone, Copy)]
struct Field(usize);

impl Field {
    const PROGRESS_SEGS: Self = Self(offset_of!(LinkStats, progress_segs));
    const ACKED_SEGS: Self = Self(offset_of!(LinkStats, acked_segs));
    const REPEAT_TIMEOUTS: Self = Self(offset_of!(LinkStats, repeat_timeouts));
    const RETRANS_SEGS: Self = Self(offset_of!(LinkStats, retrans_segs));
    const CONTROL_RETRANS_SEGS: Self = Self(offset_of!(LinkStats, control_retrans_segs));
    const CONTROL_PROGRESS_SEGS: Self = Self(offset_of!(LinkStats, control_progress_segs));
    const CONTROL_TIMEOUTS: Self = Self(offset_of!(LinkStats, control_timeouts));
    const RTO_TIMEOUTS: Self = Self(offset_of!(LinkStats, rto_timeouts));
    const SYN_RETRANS: Self = Self(offset_of!(LinkStats, syn_retrans));
    const FAILED_CONNECTS: Self = Self(offset_of!(LinkStats, failed_connects));
    const RESETS_RX: Self = Self(offset_of!(LinkStats, resets_rx));
    const SRTT_US: Self = Self(offset_of!(LinkStats, srtt_us));
    const LAST_PROGRESS_NS: Self = Self(offset_of!(LinkStats, last_progress_ns));
    const LAST_LOSS_NS: Self = Self(offset_of!(LinkStats, last_loss_ns));
    const LAST_ACKED_NS: Self = Self(offset_of!(LinkStats, last_acked_ns));

    #[inline(always)]
    fn rtt_bucket(bucket: usize) -> Self {
        let bucket = if bucket < RTT_BUCKETS {
            bucket
        } else {
            RTT_BUCKETS - 1
        };
        Self(offset_of!(LinkStats, rtt_hist) + bucket * size_of::<u64>())
    }
}

/// This CPU's `LinkStats` of one link, reached one field at a time: another program
/// may be writing other fields of the same value (see "Nesting"), so there is never
/// a `&mut` to the whole value.
///
/// Fields are read and written with volatile accesses, like the kernel's
/// `READ_ONCE`/`WRITE_ONCE`: each is one aligned 8-byte BPF load or store, which cannot
/// tear. (Relaxed `AtomicU64` loads and stores would say the same in Rust's own model,
/// but LLVM's BPF backend cannot select them below cpu v4: "Cannot select AtomicStore".)
#[derive(Clone, Copy)]
struct LinkSlot(*mut LinkStats);

impl LinkSlot {
    /// The field's address; in bounds and 8-aligned (see [`Field`]).
    #[inline(always)]
    fn field(self, field: Field) -> *mut u64 {
        self.0.wrapping_byte_add(field.0).cast::<u64>()
    }

    /// Adds one to a counter that only the calling program writes: a load and a store,
    /// not an atomic add. A program that interrupts us between the two never writes
    /// this field, so no increment is lost.
    #[inline(always)]
    fn count(self, field: Field) {
        self.set(field, self.get(field).wrapping_add(1));
    }

    /// Adds one to a counter whose writing program can interrupt itself on this CPU
    /// (the RTT callback, see "Nesting"): one BPF atomic add (`lock +=`, which the
    /// verifier allows on map values), so no interleaved increment is lost. Costs about
    /// what a load and a store do on an uncontended, CPU-local line.
    #[inline(always)]
    fn count_nested(self, field: Field) {
        // SAFETY: the address is valid, writable and 8-aligned as in `set`. The
        // instruction is a single 64-bit atomic add to that address: it reads and writes
        // nothing else, touches no stack and leaves the registers it is given intact.
        unsafe {
            core::arch::asm!(
                "lock *(u64 *)({field} + 0) += {one}",
                field = in(reg) self.field(field),
                one = in(reg) 1u64,
                options(nostack),
            );
        }
    }

    #[inline(always)]
    fn set(self, field: Field, value: u64) {
        // SAFETY: `self.0` points at this CPU's LinkStats in a preallocated LRU map, so
        // the memory stays valid and writable while the program is loaded (an eviction
        // may hand it to another link while we run: at worst one count lands there).
        // The offset is in bounds and aligned (`Field`). No reference to the value
        // exists anywhere, only raw pointers; see the type's comment for concurrency.
        unsafe { self.field(field).write_volatile(value) }
    }

    #[inline(always)]
    fn get(self, field: Field) -> u64 {
        // SAFETY: as in `set`.
        unsafe { self.field(field).read_volatile() }
    }

    /// Records a loss at `now`. Both sides of "Nesting" store here; a store cannot
    /// tear, but an RTO callback's time can be overwritten by the slightly older time
    /// of the tracepoint program it interrupted (older by less than one program run).
    #[inline(always)]
    fn loss_at(self, now: u64) {
        self.set(Field::LAST_LOSS_NS, now);
    }
}

/// This CPU's counters for `key`, creating the link on first sight; None for a link
/// that is not this host's ([`is_local`]), which every program then leaves alone.
#[inline(always)]
fn stats<C: EbpfContext>(ctx: &C, key: &LinkKey) -> Option<LinkSlot> {
    if !is_local(key) {
        return None;
    }
    if let Some(p) = LINKS.get_ptr_mut(key) {
        return Some(LinkSlot(p));
    }
    let zero = ZERO_STATS.get(0)?;
    if let Err(rc) = LINKS.insert(key, zero, u64::from(BPF_NOEXIST)) {
        // -EBUSY when this program interrupted another one inserting into the same
        // bucket on this CPU; -ENOMEM if the LRU could not free an entry.
        if rc != -EEXIST {
            warn!(ctx, "insert a link into LINKS: error {}", rc);
            return None;
        }
    }
    LINKS.get_ptr_mut(key).map(LinkSlot)
}

/// The link's local end is one of this host's addresses, or no addresses were given.
/// Compared as words: a key is 4-aligned and begins with the 20 bytes of a
/// [`LocalAddr`] (family, then the local address).
#[inline(always)]
fn is_local(key: &LinkKey) -> bool {
    let count = LOCAL_ADDR_COUNT.load();
    if count == 0 {
        return true;
    }
    // SAFETY: LinkKey is repr(C), 4-aligned, `family: u32` then `local: [u8; 16]`:
    // its first 20 bytes are 5 aligned words.
    let k = unsafe { &*core::ptr::from_ref(key).cast::<[u32; 5]>() };
    for i in 0..MAX_LOCAL_ADDRS {
        if i >= count {
            break;
        }
        let Some(a) = LOCAL_ADDRS.get(i) else {
            break;
        };
        // SAFETY: LocalAddr is repr(C), 4-aligned, 20 bytes: 5 words.
        let a = unsafe { &*core::ptr::from_ref(a).cast::<[u32; 5]>() };
        // Word by word: an array compare may become a memcmp call, which BPF lacks.
        if a[0] == k[0] && a[1] == k[1] && a[2] == k[2] && a[3] == k[3] && a[4] == k[4] {
            return true;
        }
    }
    false
}

/// Sends an urgent event unless this CPU's `slot` used up its budget for the window.
#[inline(always)]
fn urgent<C: EbpfContext>(ctx: &C, slot: u32, key: &LinkKey, kind: UrgentKind, now: u64) {
    let Some(budget) = URGENT_BUDGET.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: this CPU's value of `slot` in a per-CPU array, valid while the program is
    // loaded. Only one kind of program uses each slot, and neither kind nests with
    // itself on a CPU (see "Nesting"): nothing else writes this value while the `&mut`
    // lives. Userspace only copies it out through the bpf syscall.
    let budget = unsafe { &mut *budget };
    if now.wrapping_sub(budget.window_start_ns) > URGENT_WINDOW_NS {
        budget.window_start_ns = now;
        budget.sent_in_window = 0;
    }
    if budget.sent_in_window >= URGENT_PER_WINDOW {
        budget.dropped += 1;
        return;
    }
    budget.sent_in_window += 1;
    let event = UrgentEvent {
        link: *key,
        kind: kind as u32,
        at_ns: now,
    };
    if let Err(rc) = URGENT.output::<UrgentEvent>(&event, 0) {
        budget.ring_full += 1;
        warn!(
            ctx,
            "urgent event lost: URGENT ring buffer output: error {}", rc
        );
    }
}

/// A heartbeat socket: one end on the agents' heartbeat port (local when a peer sends
/// this agent heartbeats, remote when this agent sends them).
#[inline(always)]
fn is_control(sport: u16, dport: u16) -> bool {
    let control = CONTROL_PORT.load();
    control != NO_CONTROL_PORT && (sport == control || dport == control)
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let _ = try_retransmit(&ctx);
    0
}

fn try_retransmit(ctx: &TracePointContext) -> Result<(), i64> {
    let layout = RETRANSMIT_LAYOUT.load();
    let mut rec = Record([0; RECORD_COPY_MAX]);
    rec.copy(ctx, layout.addr.record_len)?;
    let key = read_key(&rec, &layout.addr)?;
    let state: i32 = rec.at(layout.state)?;
    let control = is_control(rec.at(layout.sport)?, rec.at(layout.dport)?);
    let s = stats(ctx, &key).ok_or(0i64)?;
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if state == TCP_SYN_SENT {
        s.count(Field::SYN_RETRANS);
        urgent(
            ctx,
            URGENT_BUDGET_TRACEPOINTS,
            &key,
            UrgentKind::SynRetrans,
            now,
        );
    } else {
        // Heartbeats time out 20 ms past their RTT, so their retransmissions are often
        // spurious: a stall's start, never loss (see `control_retrans_segs`).
        if control {
            s.count(Field::CONTROL_RETRANS_SEGS);
        } else {
            s.count(Field::RETRANS_SEGS);
        }
        if now.wrapping_sub(s.get(Field::LAST_LOSS_NS)) > FIRST_LOSS_QUIET_NS {
            urgent(
                ctx,
                URGENT_BUDGET_TRACEPOINTS,
                &key,
                UrgentKind::FirstLoss,
                now,
            );
        }
    }
    s.loss_at(now);
    Ok(())
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let _ = try_reset(&ctx);
    0
}

fn try_reset(ctx: &TracePointContext) -> Result<(), i64> {
    let layout = RESET_LAYOUT.load();
    let mut rec = Record([0; RECORD_COPY_MAX]);
    rec.copy(ctx, layout.addr.record_len)?;
    let key = read_key(&rec, &layout.addr)?;
    let s = stats(ctx, &key).ok_or(0i64)?;
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    s.count(Field::RESETS_RX);
    s.loss_at(now);
    urgent(ctx, URGENT_BUDGET_TRACEPOINTS, &key, UrgentKind::Reset, now);
    Ok(())
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_state_change(&ctx);
    0
}

fn try_state_change(ctx: &TracePointContext) -> Result<(), i64> {
    let layout = STATE_LAYOUT.load();
    let mut rec = Record([0; RECORD_COPY_MAX]);
    rec.copy(ctx, layout.addr.record_len)?;
    let oldstate: i32 = rec.at(layout.oldstate)?;
    let newstate: i32 = rec.at(layout.newstate)?;
    let protocol: u16 = rec.at(layout.protocol)?;
    if oldstate != TCP_SYN_SENT || newstate != TCP_CLOSE || protocol != IPPROTO_TCP {
        return Ok(());
    }
    let key = read_key(&rec, &layout.addr)?;
    let s = stats(ctx, &key).ok_or(0i64)?;
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    s.count(Field::FAILED_CONNECTS);
    s.loss_at(now);
    urgent(
        ctx,
        URGENT_BUDGET_TRACEPOINTS,
        &key,
        UrgentKind::FailedConnect,
        now,
    );
    Ok(())
}

/// The per-segment path: runs for every segment an established socket receives,
/// so it does one map lookup and a handful of stores, nothing else.
#[tracepoint(category = "tcp", name = "tcp_probe")]
fn tcp_probe(ctx: TracePointContext) -> u32 {
    let _ = try_probe(&ctx);
    0
}

fn try_probe(ctx: &TracePointContext) -> Result<(), i64> {
    let layout = PROBE_LAYOUT.load();
    let mut rec = Record([0; RECORD_COPY_MAX]);
    rec.copy(ctx, layout.addr.record_len)?;
    let key = read_key(&rec, &layout.addr)?;
    let srtt: u32 = rec.at(layout.srtt)?;
    let control = is_control(rec.at(layout.sport)?, rec.at(layout.dport)?);
    let s = stats(ctx, &key).ok_or(0i64)?;
    // (bpf_ktime_get_coarse_ns would be cheaper, but the kernel refuses it to
    // tracepoint programs.)
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    s.count(Field::PROGRESS_SEGS);
    if control {
        s.count(Field::CONTROL_PROGRESS_SEGS);
    }
    s.set(Field::SRTT_US, u64::from(srtt));
    s.set(Field::LAST_PROGRESS_NS, now);
    s.count(Field::rtt_bucket(rtt_bucket(u64::from(srtt))));
    Ok(())
}

/// Asks for RTO and RTT callbacks on every new socket, then counts RTOs and ACKs of our
/// data. Tracepoints cannot tell an RTO from a fast retransmit, nor an ACK of our data
/// from any other segment received; this can.
///
/// ACKs: `BPF_SOCK_OPS_RTT_CB` runs from `tcp_rtt_estimator`, once per ACK that
/// acknowledges new data (cumulatively or by SACK) and yields an RTT sample. That is
/// the cheapest way to see our data acknowledged: no per-segment work in `tcp_probe`
/// and no per-socket map (comparing `snd_una` between segments would need both). What
/// it misses: with TCP timestamps (Linux's default, negotiated by both ends) every such
/// ACK yields a sample; without them Karn's rule leaves an ACK of only retransmitted
/// data without one, so that ACK is not counted (the next ACK of new data is). Like
/// RTOs, only sockets opened after the program attached are covered.
#[sock_ops]
fn faultline_sock_ops(ctx: SockOpsContext) -> u32 {
    let _ = try_sock_ops(&ctx);
    1
}

fn try_sock_ops(ctx: &SockOpsContext) -> Result<(), i64> {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB
        | BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        | BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            // OR in our flags: another agent or tool may have asked for others.
            let flags = ctx.cb_flags() | BPF_SOCK_OPS_RTO_CB_FLAG | BPF_SOCK_OPS_RTT_CB_FLAG;
            ctx.set_cb_flags(flags.cast_signed()).map_err(i64::from)?;
        }
        BPF_SOCK_OPS_RTO_CB => {
            // Arg 1 is `icsk_retransmits`: the timeouts this connection already had
            // with nothing acknowledged since. After a fault clears, a connection deep
            // in backoff still times out once more before its retransmission gets
            // through; that timeout is old news, and userspace must be able to tell.
            let repeat = ctx.arg(0) > 0;
            // SAFETY: ctx.ops is the kernel's bpf_sock_ops for this call.
            let state = unsafe { (*ctx.ops).state };
            let syn_sent = state.cast_signed() == TCP_SYN_SENT;
            if syn_sent && !repeat {
                // Counted as a SYN retransmission by the tracepoint.
                return Ok(());
            }
            // A heartbeat's timeout is 20 ms past its RTT: proof of a dead path, often
            // enough spurious to never be loss; a repeat one is not even news. Ports
            // are 16 bits in 32-bit fields: `remote_port` in network byte order,
            // `local_port` in host order.
            #[expect(clippy::cast_possible_truncation)]
            let (local, remote) = (
                ctx.local_port() as u16,
                u32::from_be(ctx.remote_port()) as u16,
            );
            let control = !syn_sent && is_control(local, remote);
            if control && repeat {
                return Ok(());
            }
            let key = sock_ops_key(ctx)?;
            let s = stats(ctx, &key).ok_or(0i64)?;
            if repeat {
                s.count(Field::REPEAT_TIMEOUTS);
            }
            if syn_sent {
                return Ok(());
            }
            // SAFETY: helper without preconditions.
            let now = unsafe { bpf_ktime_get_ns() };
            s.count(if control {
                Field::CONTROL_TIMEOUTS
            } else {
                Field::RTO_TIMEOUTS
            });
            s.loss_at(now);
            urgent(ctx, URGENT_BUDGET_SOCK_OPS, &key, UrgentKind::Rto, now);
        }
        BPF_SOCK_OPS_RTT_CB => {
            // The per-ACK path: a map lookup, one atomic add and the clock, no event.
            // The time is stored whole, so a nested callback's store cannot tear it
            // (either ACK's time is right).
            let key = sock_ops_key(ctx)?;
            let s = stats(ctx, &key).ok_or(0i64)?;
            s.count_nested(Field::ACKED_SEGS);
            // SAFETY: helper without preconditions.
            s.set(Field::LAST_ACKED_NS, unsafe { bpf_ktime_get_ns() });
        }
        _ => {}
    }
    Ok(())
}

#[inline(always)]
fn sock_ops_key(ctx: &SockOpsContext) -> Result<LinkKey, i64> {
    let family = ctx.family();
    if family == AF_INET {
        let mut key = LinkKey {
            family: AF_INET,
            ..LinkKey::default()
        };
        // Stored in network byte order; to_ne_bytes keeps the bytes as they are.
        key.local[..4].copy_from_slice(&ctx.local_ip4().to_ne_bytes());
        key.remote[..4].copy_from_slice(&ctx.remote_ip4().to_ne_bytes());
        Ok(key)
    } else if family == AF_INET6 {
        Ok(v6_key(
            words_to_bytes(ctx.local_ip6()),
            words_to_bytes(ctx.remote_ip6()),
        ))
    } else {
        Err(0)
    }
}

#[inline(always)]
fn words_to_bytes(w: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
