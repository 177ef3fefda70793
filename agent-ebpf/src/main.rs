//! Faultline's kernel programs: per-link TCP health counters.
//!
//! Data enters from four tracepoints (global: they see every socket of every network
//! namespace, including sockets opened before the agent started) and one sock_ops
//! program (only for sockets opened after it attached, because it must ask for RTO
//! callbacks at connect time). Everything is aggregated in a per-CPU LRU map keyed by
//! link; userspace reads it every tick. Rare, urgent events also go to a ring buffer,
//! rate-limited per CPU, so a blackhole wakes the agent at once.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::{BPF_NOEXIST, BPF_SOCK_OPS_RTO_CB_FLAG},
    helpers::{bpf_ktime_get_ns, generated as helper},
    macros::{map, sock_ops, tracepoint},
    maps::{Array, LruPerCpuHashMap, PerCpuArray, RingBuf},
    programs::{SockOpsContext, TracePointContext},
};
use faultline_ebpf::{
    AF_INET, AF_INET6, AddrLayout, DEFAULT_MAX_LINKS, FIRST_LOSS_QUIET_NS, IPPROTO_TCP, LinkKey,
    LinkStats, ProbeLayout, RECORD_COPY_MAX, ResetLayout, RetransmitLayout, StateChangeLayout,
    TCP_CLOSE, TCP_SYN_SENT, URGENT_PER_WINDOW, URGENT_WINDOW_NS, UrgentBudget, UrgentEvent,
    UrgentKind, rtt_bucket,
};

#[map(name = "LINKS")]
static LINKS: LruPerCpuHashMap<LinkKey, LinkStats> =
    LruPerCpuHashMap::with_max_entries(DEFAULT_MAX_LINKS, 0);

/// One all-zero LinkStats to insert new links from: a LinkStats on the 512-byte
/// BPF stack next to a key would not leave room for much else.
#[map(name = "ZERO_STATS")]
static ZERO_STATS: Array<LinkStats> = Array::with_max_entries(1, 0);

#[map(name = "URGENT")]
static URGENT: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map(name = "URGENT_BUDGET")]
static URGENT_BUDGET: PerCpuArray<UrgentBudget> = PerCpuArray::with_max_entries(1, 0);

// Record layouts, filled in by the loader from tracefs `format` files.
#[unsafe(no_mangle)]
static RETRANSMIT_LAYOUT: Global<RetransmitLayout> = Global::new(RetransmitLayout {
    addr: AddrLayout::ZERO,
    state: 0,
    _pad: 0,
});
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
    _pad: 0,
});

const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;
const BPF_SOCK_OPS_RTO_CB: u32 = 8;

/// The first `record_len` bytes of a tracepoint record, copied with one helper call
/// (a call per field cost ~25 ns each on the per-segment path).
struct Record([u8; RECORD_COPY_MAX]);

impl Record {
    /// Fills `self` in place: returning the 128 bytes by value would copy them on a
    /// stack that only has 512.
    #[inline(always)]
    fn copy(&mut self, ctx: &TracePointContext, len: u16) -> Result<(), i64> {
        let len = (len as usize).min(RECORD_COPY_MAX);
        // SAFETY: copies at most RECORD_COPY_MAX bytes into a buffer of that size;
        // the helper checks the source address itself.
        let rc = unsafe {
            helper::bpf_probe_read_kernel(
                self.0.as_mut_ptr().cast(),
                len as u32,
                ctx.as_ptr().cast_const(),
            )
        };
        if rc < 0 { Err(rc) } else { Ok(()) }
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

/// This CPU's counters for `key`, creating the link on first sight.
#[inline(always)]
fn stats(key: &LinkKey) -> Option<&'static mut LinkStats> {
    if let Some(p) = LINKS.get_ptr_mut(key) {
        // SAFETY: per-CPU value of this CPU; programs on one CPU do not nest on
        // the same tracepoint, and the kernel keeps the value alive while we run.
        return Some(unsafe { &mut *p });
    }
    let zero = ZERO_STATS.get(0)?;
    // BPF_NOEXIST: another CPU may have inserted it meanwhile; that is fine.
    let _ = LINKS.insert(key, zero, u64::from(BPF_NOEXIST));
    // SAFETY: as above.
    LINKS.get_ptr_mut(key).map(|p| unsafe { &mut *p })
}

/// Sends an urgent event unless this CPU used up its budget for the window.
#[inline(always)]
fn urgent(key: &LinkKey, kind: UrgentKind, now: u64) {
    let Some(budget) = URGENT_BUDGET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array, alive while the program runs.
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
    if URGENT.output::<UrgentEvent>(&event, 0).is_err() {
        budget.ring_full += 1;
    }
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
    let s = stats(&key).ok_or(0i64)?;
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if state == TCP_SYN_SENT {
        s.syn_retrans += 1;
        urgent(&key, UrgentKind::SynRetrans, now);
    } else {
        s.retrans_segs += 1;
        if now.wrapping_sub(s.last_loss_ns) > FIRST_LOSS_QUIET_NS {
            urgent(&key, UrgentKind::FirstLoss, now);
        }
    }
    s.last_loss_ns = now;
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
    let s = stats(&key).ok_or(0i64)?;
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    s.resets_rx += 1;
    s.last_loss_ns = now;
    urgent(&key, UrgentKind::Reset, now);
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
    let s = stats(&key).ok_or(0i64)?;
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    s.failed_connects += 1;
    s.last_loss_ns = now;
    urgent(&key, UrgentKind::FailedConnect, now);
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
    let s = stats(&key).ok_or(0i64)?;
    // (bpf_ktime_get_coarse_ns would be cheaper, but the kernel refuses it to
    // tracepoint programs.)
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    s.progress_segs += 1;
    s.srtt_us = u64::from(srtt);
    s.last_progress_ns = now;
    let bucket = rtt_bucket(u64::from(srtt));
    if let Some(slot) = s.rtt_hist.get_mut(bucket) {
        *slot += 1;
    }
    Ok(())
}

/// Asks for RTO callbacks on every new socket, then counts RTOs. Tracepoints cannot
/// tell an RTO from a fast retransmit; this can.
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
            // OR in our flag: another agent or tool may have asked for others.
            let flags = ctx.cb_flags() | BPF_SOCK_OPS_RTO_CB_FLAG;
            ctx.set_cb_flags(flags as i32).map_err(i64::from)?;
        }
        BPF_SOCK_OPS_RTO_CB => {
            // SAFETY: ctx.ops is the kernel's bpf_sock_ops for this call.
            let state = unsafe { (*ctx.ops).state };
            if state as i32 == TCP_SYN_SENT {
                // Counted as a SYN retransmission by the tracepoint.
                return Ok(());
            }
            let key = sock_ops_key(ctx)?;
            let s = stats(&key).ok_or(0i64)?;
            // SAFETY: helper without preconditions.
            let now = unsafe { bpf_ktime_get_ns() };
            s.rto_timeouts += 1;
            s.last_loss_ns = now;
            urgent(&key, UrgentKind::Rto, now);
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
