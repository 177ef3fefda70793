//! Health of one link (observer's address → peer address) from its per-tick counters.
//!
//! FAILED: losing and not progressing — an RTO, SYN retry or failed connect with no
//! progress since; a retransmission met with silence (not one segment back) for
//! `silent_stall` and a few RTTs, as the observer's next sample shows; or plain
//! retransmissions with no progress for `stall_timeout`.
//! DEGRADED: still delivering, but retransmitting a lot or with an RTT far above the
//! link's own slow baseline. HEALTHY: delivering. UNKNOWN: no evidence for `stale_after`.
//!
//! Progress is a segment received from the peer, or an ACK of our data
//! (`acked_segs`). Segments received alone miss a one-way fault: with the path towards
//! the peer dropping, the peer's own data still arrives while ours is never
//! acknowledged. So on a link whose ACKs are counted (it has reported `acked_segs`
//! before: the kernel's sock_ops program saw its sockets open), segments received do
//! not count while our own data goes unacknowledged — on a tick where we retransmitted
//! or timed out, and during a stall an RTO or SYN retry has hardened (between backed-off
//! RTOs, the peer's retransmissions still arrive) — only an ACK or a reset does. On
//! links that never reported ACKs (an agent without sock_ops, an older peer agent,
//! sockets opened before the probe attached), segments received are progress as before.
//!
//! A stall hardens at once on a timeout, unless every timeout is a repeat (the
//! connection had timed out before with nothing acknowledged since) while the link
//! had progressed since: a connection left deep in backoff by a fault that has
//! cleared, timing out once more before its retransmission gets through.
//!
//! The kernel counts an ACK only if it yields an RTT sample. With TCP timestamps (Linux's
//! default) it always does; without them (Karn's rule) an ACK of only retransmitted data
//! does not. A retransmission without an RTO therefore does not harden a stall; after
//! an RTO, such a link stays FAILED until an ACK of new data, so a host that sends
//! nothing new while the peer keeps sending is a false FAILED on a link without
//! timestamps.
use std::time::Duration;

use serde::Serialize;

use super::DetectorConfig;
use crate::link::LinkCounters;

/// What the counters of one link say right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LinkStatus {
    Unknown,
    Healthy,
    Degraded,
    Failed,
}

/// One tick's worth of evidence about one link.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkDelta {
    pub counters: LinkCounters,
    /// Median smoothed RTT of the segments received this tick, µs.
    pub rtt_p50_us: Option<u64>,
    /// How long ago, ms, the observer last lost something on this link (a
    /// retransmission or timeout), when not one segment has come from the peer since;
    /// None otherwise, or from an observer that does not say. It dates a stall to the
    /// kernel's clock instead of the tick that reported it.
    pub silent_ms: Option<u32>,
    /// How long ago, ms, the peer last acknowledged our data, by the kernel's clock,
    /// when it did during this tick; None otherwise, or from an observer that does not
    /// say. It dates the link's two-way progress to the ACK itself, not the tick that
    /// reported it: an ACK that crossed a partition just before it closed is then not
    /// taken for one that crossed after (see `View::answered_ms`).
    pub acked_age_ms: Option<u32>,
}

/// A point on the detector's clock in whole milliseconds; `NEVER` when unset. Eight
/// bytes instead of an `Option<Duration>`'s sixteen: 100k links × several stamps, and
/// five in every node's hold. Truncated to the ms, so a stamp is never later than the
/// moment it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp(u64);

impl Stamp {
    pub(super) const NEVER: Self = Self(u64::MAX);

    pub(super) fn at(now: Duration) -> Self {
        Self(u64::try_from(now.as_millis()).unwrap_or(u64::MAX - 1))
    }

    pub(super) fn get(self) -> Option<Duration> {
        (self != Self::NEVER).then(|| Duration::from_millis(self.0))
    }

    /// The moment, set to `now` first if unset.
    pub(super) fn get_or_set(&mut self, now: Duration) -> Duration {
        if *self == Self::NEVER {
            *self = Self::at(now);
        }
        Duration::from_millis(self.0)
    }

    /// Time from this stamp to `now`; None if never set.
    fn age(self, now: Duration) -> Option<Duration> {
        self.get().map(|t| now.saturating_sub(t))
    }
}

impl Default for Stamp {
    fn default() -> Self {
        Self::NEVER
    }
}

/// exp(-dt/tau): the weight left of an old sample after `dt`.
pub(super) fn decay(dt_ms: u64, tau: Duration) -> f32 {
    if dt_ms == 0 {
        return 1.0;
    }
    #[expect(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    let w = (-(dt_ms as f64) / (tau.as_secs_f64() * 1e3).max(1e-6)).exp() as f32;
    w
}

/// Decay weights for one elapsed time, memoized: links are observed every tick, so
/// nearly every observation has the same elapsed time, and `exp` is most of the cost
/// of folding one in.
#[derive(Debug, Clone, Copy)]
pub struct DecayWeights {
    dt_ms: u64,
    loss: f32,
    rtt_recent: f32,
    rtt_baseline: f32,
    /// `rtt_thresholds` of the config, converted with the weights rather than for
    /// every RTT sample.
    rtt_factor: f32,
    rtt_min_increase_us: f32,
}

impl Default for DecayWeights {
    fn default() -> Self {
        Self {
            dt_ms: u64::MAX,
            loss: 0.0,
            rtt_recent: 0.0,
            rtt_baseline: 0.0,
            rtt_factor: 0.0,
            rtt_min_increase_us: 0.0,
        }
    }
}

impl DecayWeights {
    fn for_dt(&mut self, dt_ms: u64, cfg: &DetectorConfig) -> &Self {
        if dt_ms != self.dt_ms {
            let (rtt_factor, rtt_min_increase_us) = rtt_thresholds(cfg);
            *self = Self {
                dt_ms,
                loss: decay(dt_ms, cfg.loss_window),
                rtt_recent: decay(dt_ms, cfg.rtt_recent_window),
                rtt_baseline: decay(dt_ms, cfg.rtt_baseline_window),
                rtt_factor,
                rtt_min_increase_us,
            };
        }
        self
    }
}

/// The counters of a link's latest tick with evidence, narrowed for storage: they
/// only feed verdict evidence.
#[derive(Debug, Clone, Copy, Default)]
struct LastTick {
    progress: u32,
    /// Retransmissions and timeouts that count as loss (`LinkCounters::lost_segs`).
    retrans: u32,
    /// Evidence only: saturates at 65,535 a tick, which a link that acknowledges
    /// anything at all has long shown.
    acked: u16,
    /// Of `progress`, on heartbeat connections (see `control_progress_segs`).
    control_progress: u16,
    rto: u16,
    syn_retrans: u16,
    failed_connects: u16,
    resets: u16,
}

/// How long before the sample its latest answer to our data crossed the path towards
/// us at the latest, ms: the ACK's age by the kernel's clock (0 where the observer does
/// not say), plus half the larger of this tick's and the recent RTT, rounded up.
#[inline]
#[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn answer_age_ms(delta: &LinkDelta, rtt_recent_us: f32) -> u16 {
    // Whole µs, saturated: an RTT is far below 2^32 µs.
    let recent_us = rtt_recent_us as u32;
    let rtt_us = delta
        .rtt_p50_us
        .map_or(0, |r| u32::try_from(r).unwrap_or(u32::MAX))
        .max(recent_us);
    let half_rtt_ms = rtt_us.div_ceil(2000);
    let age = delta.acked_age_ms.unwrap_or(0).saturating_add(half_rtt_ms);
    u16::try_from(age).unwrap_or(u16::MAX - 1).min(u16::MAX - 1)
}

fn narrow32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn narrow16(v: u64) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// The thresholds a link's status is judged by, on the detector's millisecond clock:
/// converted from the config once per tick, not once per link.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    stale_ms: u64,
    stall_timeout_ms: u64,
    silent_stall_ms: u64,
    silent_stall_rtts: f64,
    loss_window: Duration,
    degraded_min_retrans: f64,
    degraded_loss_ratio: f64,
    rtt_factor: f32,
    rtt_min_increase_us: f32,
}

impl Limits {
    pub(super) fn new(cfg: &DetectorConfig) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (rtt_factor, rtt_min_increase_us) = rtt_thresholds(cfg);
        Self {
            stale_ms: ms(cfg.stale_after),
            stall_timeout_ms: ms(cfg.stall_timeout),
            silent_stall_ms: ms(cfg.silent_stall),
            silent_stall_rtts: cfg.silent_stall_rtts,
            loss_window: cfg.loss_window,
            degraded_min_retrans: cfg.degraded_min_retrans,
            degraded_loss_ratio: cfg.degraded_loss_ratio,
            rtt_factor,
            rtt_min_increase_us,
        }
    }
}

/// `rtt_factor` and `rtt_min_increase` (µs) as an RTT is compared with them.
fn rtt_thresholds(cfg: &DetectorConfig) -> (f32, f32) {
    #[expect(clippy::cast_possible_truncation)]
    (
        cfg.rtt_factor as f32,
        (cfg.rtt_min_increase.as_secs_f64() * 1e6) as f32,
    )
}

/// The state kept per link between ticks: 80 bytes, so 100k links fit in 8 MB and a
/// tick's pass over them stays in cache as much as it can.
#[derive(Debug, Clone, Default)]
pub struct LinkHealth {
    /// The latest tick with evidence; also the time the decayed `retrans` and
    /// `progress` sums are as of.
    last_evidence: Stamp,
    last_progress: Stamp,
    /// Since when the link has been losing with no progress.
    stall_since: Stamp,
    /// RTOs + SYN retries + failed connects since `stall_since` (saturates).
    stall_hard: u16,
    /// How long after `stall_since` (the kernel's clock) the observer's sample first
    /// reported the stall, ms, saturated: see [`Self::stamps_ms`].
    stall_reported_lag_ms: u16,
    /// Retransmissions since `stall_since` (evidence only: saturates).
    stall_retrans: u16,
    /// `SILENT`: not one segment from the peer since `stall_since`; `FRESH`: among its
    /// retransmissions one that is not a repeat timeout's (see [`Self::status_as_of`]).
    /// One byte for both, so that `answer_lead_ms` fits in 80.
    stall_flags: u8,
    /// Retransmissions and segments received, the heartbeats' left out (see
    /// `control_retrans_segs`), decayed with `loss_window`, as of `last_evidence`.
    retrans: f32,
    progress: f32,
    /// Recent and baseline RTT in µs (0 = no sample yet), as of `rtt_at`.
    rtt_recent_us: f32,
    rtt_baseline_us: f32,
    rtt_at: Stamp,
    last: LastTick,
    /// The link has reported ACKs of our data (`acked_segs`) at least once, so their
    /// absence means something (see the module doc).
    acks_counted: bool,
    /// How long before `last_progress` our own data was last acknowledged, ms
    /// (`u16::MAX`: at least that long, or never). Progress that only came in (the
    /// peer's segments, while we sent nothing) shows the peer alive, not that our
    /// path out works: an observer that only receives must not pass for one that
    /// reaches, nor witness for a host it cannot send to. 0 where ACKs are not counted.
    two_way_lag_ms: u16,
    /// How long before the latest two-way progress the peer's answer to our data
    /// crossed the path towards us at the latest, ms, saturated: see
    /// `View::answered_ms`. Both move only together, when our data is acknowledged.
    answer_lead_ms: u16,
}

const SILENT: u8 = 1;
const FRESH: u8 = 2;

impl LinkHealth {
    /// Folds in one tick of counters observed at `now`.
    pub fn observe(&mut self, delta: &LinkDelta, now: Duration, cfg: &DetectorConfig) {
        self.observe_with(delta, Stamp::at(now).0, cfg, &mut DecayWeights::default());
    }

    /// [`Self::observe`] at `now_ms` on the detector's clock, with memoized decay
    /// weights, for the detector's hot loop.
    #[inline(always)]
    pub(super) fn observe_with(
        &mut self,
        delta: &LinkDelta,
        now_ms: u64,
        cfg: &DetectorConfig,
        weights: &mut DecayWeights,
    ) {
        if !self.observe_delivering(delta, now_ms, cfg, weights) {
            self.observe_any(delta, now_ms, cfg, weights);
        }
    }

    /// [`Self::observe_any`] for what nearly every observation of a fleet is, in
    /// fewer steps: a link that delivers both ways and lost nothing this tick. False,
    /// and nothing changed, for any other. The two must agree exactly (see the test
    /// `the_delivering_path_agrees_with_the_general_one`): at 100k links this path
    /// is a tenth of a tick.
    #[inline(always)]
    fn observe_delivering(
        &mut self,
        delta: &LinkDelta,
        now_ms: u64,
        cfg: &DetectorConfig,
        weights: &mut DecayWeights,
    ) -> bool {
        let c = &delta.counters;
        let lost = c.retrans_segs
            | c.rto_timeouts
            | c.syn_retrans
            | c.failed_connects
            | c.resets_rx
            | c.repeat_timeouts
            | c.control_retrans_segs
            | c.control_timeouts;
        // Both ways: our data acknowledged, or (where ACKs are not counted) anything
        // received.
        let both_ways = c.acked_segs > 0 || (!self.acks_counted && c.progress_segs > 0);
        if lost != 0 || !both_ways {
            return false;
        }
        let stamp = Stamp(now_ms.min(u64::MAX - 1));
        let previous = self.last_evidence;
        self.last_evidence = stamp;
        self.last = LastTick {
            progress: narrow32(c.progress_segs),
            retrans: 0,
            acked: narrow16(c.acked_segs),
            control_progress: narrow16(c.control_progress_segs),
            rto: 0,
            syn_retrans: 0,
            failed_connects: 0,
            resets: 0,
        };
        self.acks_counted |= c.acked_segs > 0;
        self.two_way_lag_ms = 0;
        self.answer_lead_ms = answer_age_ms(delta, self.rtt_recent_us);
        self.last_progress = stamp;
        self.stall_since = Stamp::NEVER;
        self.stall_hard = 0;
        self.stall_retrans = 0;
        let w = if previous == Stamp::NEVER {
            0.0
        } else {
            weights.for_dt(stamp.0.saturating_sub(previous.0), cfg).loss
        };
        #[expect(clippy::cast_precision_loss)]
        {
            self.retrans = self.retrans * w + 0.0;
            self.progress = self.progress * w + c.progress_segs_but_heartbeats() as f32;
        }
        if let Some(rtt) = delta.rtt_p50_us {
            self.observe_rtt(rtt, stamp, cfg, weights);
        }
        true
    }

    /// [`Self::observe_with`] for any observation.
    #[inline(never)]
    fn observe_any(
        &mut self,
        delta: &LinkDelta,
        now_ms: u64,
        cfg: &DetectorConfig,
        weights: &mut DecayWeights,
    ) {
        // Sums of these never wrap: peers' deltas are clamped where they come off the
        // wire (`LinkCounters::clamped`), the kernel's are a tick's worth.
        let c = &delta.counters;
        // The RTT first: most observations carry one, and it is one test, not eight.
        if delta.rtt_p50_us.is_none() && c.is_zero() {
            return;
        }
        let stamp = Stamp(now_ms.min(u64::MAX - 1));
        let previous = self.last_evidence;
        self.last_evidence = stamp;
        let (lost_retrans, lost_rto) = c.lost_segs();
        self.last = LastTick {
            progress: narrow32(c.progress_segs),
            retrans: narrow32(lost_retrans),
            acked: narrow16(c.acked_segs),
            control_progress: narrow16(c.control_progress_segs),
            rto: narrow16(lost_rto),
            syn_retrans: narrow16(c.syn_retrans),
            failed_connects: narrow16(c.failed_connects),
            resets: narrow16(c.resets_rx),
        };
        self.acks_counted |= c.acked_segs > 0;
        // Our data goes unacknowledged: we lost some this tick, or a hardened stall
        // is still waiting for its ACK. Segments from the peer then only show that its
        // own direction works (see the module doc).
        // Heartbeat retransmissions say as early as any that our data waits, but
        // are often spurious (see `control_retrans_segs`): they start and
        // date a stall, and a late ACK ends it; they are never loss.
        let retransmitted = c.retrans_segs + c.control_retrans_segs;
        let ours_lost = retransmitted + c.rto_timeouts + c.control_timeouts + c.syn_retrans > 0;
        let unacked = self.acks_counted && c.acked_segs == 0 && (ours_lost || self.stall_hard > 0);
        // A reset means the peer's stack answered: it is reachable.
        let reached = c.acked_segs > 0 || c.resets_rx > 0 || (c.progress_segs > 0 && !unacked);
        let mut hard = c.rto_timeouts + c.syn_retrans + c.failed_connects;
        if self.stall_since == Stamp::NEVER {
            // The link progressed since these connections last timed out (another
            // connection got through): their repeated timeouts are backoff left over
            // from an earlier stall, not a new one. After a fault clears, every
            // connection that sat in it times out once more, all at once on every
            // host, before its retransmission is acknowledged. They start a stall like
            // any retransmission does, which fails only after `stall_timeout`.
            hard -= c.repeat_timeouts.min(c.rto_timeouts + c.syn_retrans);
        }
        // A heartbeat's timeout (never a repeat: those are not counted) proves as
        // much as any, sooner; like its retransmissions, it is never loss.
        hard += c.control_timeouts;
        if reached {
            let two_way = !self.acks_counted || c.acked_segs > 0 || c.resets_rx > 0;
            self.two_way_lag_ms = if two_way {
                0
            } else if self.last_progress == Stamp::NEVER {
                u16::MAX
            } else {
                let since = stamp.0.saturating_sub(self.last_progress.0);
                u16::try_from(since)
                    .unwrap_or(u16::MAX)
                    .saturating_add(self.two_way_lag_ms)
            };
            if two_way {
                self.answer_lead_ms = answer_age_ms(delta, self.rtt_recent_us);
            }
            self.last_progress = stamp;
            self.stall_since = Stamp::NEVER;
            self.stall_hard = 0;
            self.stall_retrans = 0;
        } else if hard + retransmitted > 0 {
            if self.stall_since == Stamp::NEVER {
                // Dated by the kernel when it says when, never before the last
                // progress this detector saw.
                let silent = delta.silent_ms.map_or(0, u64::from);
                let floor = if self.last_progress == Stamp::NEVER {
                    0
                } else {
                    self.last_progress.0.saturating_add(1)
                };
                self.stall_since = Stamp(stamp.0.saturating_sub(silent).max(floor).min(stamp.0));
                self.stall_reported_lag_ms =
                    u16::try_from(stamp.0 - self.stall_since.0).unwrap_or(u16::MAX);
                self.stall_flags = SILENT;
            }
            if c.progress_segs > 0 {
                self.stall_flags &= !SILENT;
            }
            if retransmitted > c.repeat_timeouts {
                self.stall_flags |= FRESH;
            }
            self.stall_hard = self.stall_hard.saturating_add(narrow16(hard));
            self.stall_retrans = self.stall_retrans.saturating_add(narrow16(retransmitted));
        }
        let w = if previous == Stamp::NEVER {
            0.0
        } else {
            weights.for_dt(stamp.0.saturating_sub(previous.0), cfg).loss
        };
        #[expect(clippy::cast_precision_loss)]
        {
            self.retrans = self.retrans * w + (lost_retrans + lost_rto) as f32;
            // The heartbeats neither lose (their retransmissions are apart) nor
            // dilute the ratio.
            self.progress = self.progress * w + c.progress_segs_but_heartbeats() as f32;
        }
        if let Some(rtt) = delta.rtt_p50_us {
            self.observe_rtt(rtt, stamp, cfg, weights);
        }
    }

    #[expect(clippy::cast_precision_loss)]
    #[inline]
    fn observe_rtt(
        &mut self,
        rtt_us: u64,
        at: Stamp,
        cfg: &DetectorConfig,
        weights: &mut DecayWeights,
    ) {
        let sample = rtt_us as f32;
        if self.rtt_at == Stamp::NEVER {
            self.rtt_recent_us = sample;
            self.rtt_baseline_us = sample;
            self.rtt_at = at;
            return;
        }
        let w = weights.for_dt(at.0.saturating_sub(self.rtt_at.0), cfg);
        self.rtt_at = at;
        self.rtt_recent_us += (1.0 - w.rtt_recent) * (sample - self.rtt_recent_us);
        // Freeze the baseline while the RTT is inflated, so a long gray failure does
        // not become the new normal.
        if !self.rtt_inflated_by(w.rtt_factor, w.rtt_min_increase_us) {
            self.rtt_baseline_us += (1.0 - w.rtt_baseline) * (sample - self.rtt_baseline_us);
        }
    }

    fn rtt_inflated_by(&self, factor: f32, min_increase_us: f32) -> bool {
        self.rtt_baseline_us > 0.0
            && self.rtt_recent_us >= self.rtt_baseline_us * factor
            && self.rtt_recent_us - self.rtt_baseline_us >= min_increase_us
    }

    /// The link's status at `now`, its observer heard from just now.
    pub fn status(&self, now: Duration, cfg: &DetectorConfig) -> LinkStatus {
        self.status_as_of(now, now, cfg)
    }

    /// The link's status at `now`, its observer last heard from at `heard` (its
    /// latest sample: a link it did not report then had nothing to report).
    ///
    /// A silent stall fails without waiting for an RTO: the link retransmitted (a
    /// tail-loss probe or a fast retransmit, not a repeat timeout) and, as samples
    /// of the same observer taken at least `silent_stall` and `silent_stall_rtts`
    /// baseline RTTs later show, not one segment has come from the peer since —
    /// neither an ACK nor data. A lost segment on a live path is answered within an
    /// RTT (the retransmission itself draws an immediate ACK); a segment without an
    /// RTT sample (no timestamps) still counts as a segment. The RTO floor (200 ms)
    /// made the first timeout the earliest sign of a dead host; a connection with
    /// more than one segment in flight probes after two RTTs.
    pub fn status_as_of(&self, now: Duration, heard: Duration, cfg: &DetectorConfig) -> LinkStatus {
        self.status_at(Stamp::at(now).0, Stamp::at(heard).0, &Limits::new(cfg))
    }

    /// [`Self::status_as_of`] on the detector's millisecond clock, with the
    /// thresholds converted once per tick: a tick asks this of every link.
    #[inline]
    pub(super) fn status_at(&self, now_ms: u64, heard_ms: u64, lim: &Limits) -> LinkStatus {
        if self.last_evidence == Stamp::NEVER
            || now_ms.saturating_sub(self.last_evidence.0) > lim.stale_ms
        {
            return LinkStatus::Unknown;
        }
        if self.stall_since != Stamp::NEVER
            && (self.stall_hard > 0
                || now_ms.saturating_sub(self.stall_since.0) >= lim.stall_timeout_ms
                || self.silence_proven_ms(lim).is_some_and(|at| heard_ms >= at))
        {
            return LinkStatus::Failed;
        }
        if self.retrans > 0.0 {
            // Both sums decay alike, so their ratio needs no decay; the minimum does.
            let age = now_ms.saturating_sub(self.last_evidence.0);
            let w = decay(age, lim.loss_window);
            let retrans = f64::from(self.retrans * w);
            let progress = f64::from(self.progress * w);
            if retrans >= lim.degraded_min_retrans
                && retrans >= lim.degraded_loss_ratio * progress.max(1.0)
            {
                return LinkStatus::Degraded;
            }
        }
        if self.rtt_inflated_by(lim.rtt_factor, lim.rtt_min_increase_us) {
            return LinkStatus::Degraded;
        }
        if self.last_progress != Stamp::NEVER
            && now_ms.saturating_sub(self.last_progress.0) <= lim.stale_ms
        {
            LinkStatus::Healthy
        } else {
            // Losing a little with no progress yet: not enough to call.
            LinkStatus::Unknown
        }
    }

    /// When a silent stall in progress will be proven, ms on the detector's clock, if
    /// the observer samples then and nothing has come back: the moment to sample and
    /// judge again. Rounded up to the millisecond, so a sample taken then proves it.
    pub(super) fn silence_proven_ms(&self, lim: &Limits) -> Option<u64> {
        if !self.in_silent_stall() {
            return None;
        }
        #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rtts_ms = (f64::from(self.rtt_baseline_us) * lim.silent_stall_rtts / 1e3).ceil() as u64;
        Some(
            self.stall_since
                .0
                .saturating_add(lim.silent_stall_ms.max(rtts_ms)),
        )
    }

    /// A silent stall is in progress ([`Self::silence_proven_ms`] is Some): flags only,
    /// for the observe loop, which asks before and after every observation.
    #[inline]
    pub(super) fn in_silent_stall(&self) -> bool {
        self.stall_flags == SILENT | FRESH && self.stall_since != Stamp::NEVER
    }

    /// Retransmissions and segments received over the loss window, as of the latest
    /// evidence; none once that is older than the window. Not decayed to now: pooled
    /// over many links every tick, where one `exp` per link would be most of the cost.
    pub(super) fn loss_sums(&self, now_ms: u64, window_ms: u64) -> Option<(f32, f32)> {
        (self.last_evidence != Stamp::NEVER
            && now_ms.saturating_sub(self.last_evidence.0) <= window_ms)
            .then_some((self.retrans, self.progress))
    }

    /// Retransmissions and segments received in the latest observation, if it came
    /// after `since_ms`: what the link added since then, for windows kept elsewhere.
    pub(super) fn loss_since(&self, since_ms: u64) -> Option<(f32, f32)> {
        #[expect(clippy::cast_precision_loss)]
        (self.last_evidence != Stamp::NEVER
            && (since_ms == u64::MAX || self.last_evidence.0 > since_ms))
            .then(|| {
                let l = &self.last;
                (
                    (u64::from(l.retrans) + u64::from(l.rto)) as f32,
                    l.progress.saturating_sub(u32::from(l.control_progress)) as f32,
                )
            })
    }

    /// The stall's start as the observer reported it, the last progress, the last
    /// two-way progress and the last evidence, in ms on the detector's clock
    /// (`u64::MAX`: never): the views' hot loop takes them raw.
    ///
    /// All four are the moments of the samples that showed them. The kernel dates a
    /// stall to the retransmission itself (the silence proof counts from there), but
    /// progress is only known at the sample that shows it, up to a tick after it came:
    /// an ACK that crossed a partition just before it closed, sampled after the
    /// kernel's date of a stall elsewhere, would pass for a host still reached after
    /// the failure began, and an observer inside the partition would blame the nearest
    /// site outside instead of naming itself cut off. Compared sample to sample, the
    /// stall and that ACK come in the same sample: not after.
    ///
    /// Fifth, how long before its report the kernel dates the stall, ms, and sixth,
    /// how long before the two-way progress the latest answer crossed towards us
    /// (`View::answered_ms`): an observer still reaches elsewhere when an answer
    /// crossed after a failure's first loss, both dated by the kernel.
    pub(super) fn stamps_ms(&self) -> (u64, u64, u64, u64, u16, u16) {
        let reported = if self.stall_since == Stamp::NEVER {
            Stamp::NEVER.0
        } else {
            self.stall_since.0 + u64::from(self.stall_reported_lag_ms)
        };
        (
            reported,
            self.last_progress.0,
            self.two_way_progress_ms(),
            self.last_evidence.0,
            self.stall_reported_lag_ms,
            self.answer_lead_ms,
        )
    }

    /// When our data was last acknowledged (or, where ACKs are not counted, the peer
    /// last delivered), ms; `u64::MAX`: never.
    fn two_way_progress_ms(&self) -> u64 {
        if self.last_progress == Stamp::NEVER {
            return u64::MAX;
        }
        self.last_progress
            .0
            .saturating_sub(u64::from(self.two_way_lag_ms))
    }

    /// When the peer's latest answer to our data crossed the path towards us at the
    /// latest, ms (`u64::MAX`: never), as views date it ([`super::views::View::answered_ms`]).
    #[cfg(test)]
    pub(super) fn answered_ms(&self) -> u64 {
        if self.two_way_lag_ms == u16::MAX {
            return u64::MAX;
        }
        self.two_way_progress_ms()
            .saturating_sub(u64::from(self.answer_lead_ms))
    }

    /// When the current stall began (losing with no progress since), if stalled.
    pub fn stall_onset(&self) -> Option<Duration> {
        self.stall_since.get()
    }

    /// When the peer last delivered anything, if ever.
    pub fn last_progress_at(&self) -> Option<Duration> {
        self.last_progress.get()
    }

    /// When the link last reported anything at all.
    pub fn last_evidence_at(&self) -> Option<Duration> {
        self.last_evidence.get()
    }

    /// How long since the peer last delivered anything, if ever.
    pub fn since_progress(&self, now: Duration) -> Option<Duration> {
        self.last_progress.age(now)
    }

    /// RTOs, SYN retries and failed connects since the stall began.
    pub fn stall_hard(&self) -> u64 {
        u64::from(self.stall_hard)
    }

    pub fn stall_retrans(&self) -> u64 {
        u64::from(self.stall_retrans)
    }

    /// Recent and baseline RTT, µs.
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    pub fn rtt_us(&self) -> (u64, u64) {
        (self.rtt_recent_us as u64, self.rtt_baseline_us as u64)
    }

    /// The counters of the latest tick with evidence.
    pub fn last_counters(&self) -> LinkCounters {
        let l = &self.last;
        LinkCounters {
            progress_segs: u64::from(l.progress),
            acked_segs: u64::from(l.acked),
            retrans_segs: u64::from(l.retrans),
            rto_timeouts: u64::from(l.rto),
            syn_retrans: u64::from(l.syn_retrans),
            failed_connects: u64::from(l.failed_connects),
            resets_rx: u64::from(l.resets),
            repeat_timeouts: 0,
            // Not kept (the node would grow by 8 bytes): `stall_retrans` shows them
            // while they matter, during a stall.
            control_retrans_segs: 0,
            control_progress_segs: u64::from(l.control_progress),
            // Likewise: `stall_hard` shows them.
            control_timeouts: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::tests::Rng;

    fn delta(progress: u64, retrans: u64, rto: u64) -> LinkDelta {
        LinkDelta {
            counters: LinkCounters {
                progress_segs: progress,
                retrans_segs: retrans,
                rto_timeouts: rto,
                ..LinkCounters::default()
            },
            rtt_p50_us: None,
            silent_ms: None,
            acked_age_ms: None,
        }
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// One of `0..values`, or 0 two times in three.
    fn sometimes(rng: &mut Rng, values: u64) -> u64 {
        if rng.below(3) == 0 {
            rng.below(values)
        } else {
            0
        }
    }

    /// Any observation at all: loss, timeouts, resets, heartbeats, ACKs or none (up
    /// to past what a stored count holds), an RTT or none, kernel dates or none.
    fn any_delta(rng: &mut Rng) -> LinkDelta {
        let progress = sometimes(rng, 300);
        LinkDelta {
            counters: LinkCounters {
                progress_segs: progress,
                acked_segs: sometimes(rng, 100_000),
                retrans_segs: sometimes(rng, 4),
                rto_timeouts: sometimes(rng, 3),
                syn_retrans: sometimes(rng, 2),
                failed_connects: sometimes(rng, 2),
                resets_rx: sometimes(rng, 2),
                repeat_timeouts: sometimes(rng, 3),
                control_retrans_segs: sometimes(rng, 2),
                control_progress_segs: sometimes(rng, progress + 1),
                control_timeouts: sometimes(rng, 2),
            },
            rtt_p50_us: (rng.below(4) > 0).then(|| 100 + rng.below(200_000)),
            silent_ms: (rng.below(2) == 0).then(|| u32::try_from(rng.below(2000)).unwrap_or(0)),
            acked_age_ms: (rng.below(2) == 0)
                .then(|| u32::try_from(rng.below(70_000)).unwrap_or(0)),
        }
    }

    /// What a delivering link reports: [`any_delta`] with nothing lost and no stall
    /// to date.
    fn delivering_delta(rng: &mut Rng) -> LinkDelta {
        let d = any_delta(rng);
        let c = d.counters;
        LinkDelta {
            counters: LinkCounters {
                progress_segs: c.progress_segs,
                acked_segs: c.acked_segs,
                control_progress_segs: c.control_progress_segs,
                ..LinkCounters::default()
            },
            silent_ms: None,
            ..d
        }
    }

    #[test]
    fn the_delivering_path_agrees_with_the_general_one() {
        let cfg = DetectorConfig::default();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut taken, mut declined) = (0, 0);
        for _ in 0..200 {
            let mut link = LinkHealth::default();
            let mut weights = DecayWeights::default();
            let mut now_ms = rng.below(1000);
            for _ in 0..60 {
                // Mostly a tick apart, sometimes the same moment or a long gap.
                now_ms += [0, 100, 100, 100, 37, 5000][usize::try_from(rng.below(6)).unwrap_or(0)];
                let d = if rng.below(2) == 0 {
                    delivering_delta(&mut rng)
                } else {
                    any_delta(&mut rng)
                };
                let before = format!("{link:?}");
                let (mut fast, mut fast_weights) = (link.clone(), weights);
                let took = fast.observe_delivering(&d, now_ms, &cfg, &mut fast_weights);
                link.observe_any(&d, now_ms, &cfg, &mut weights);
                if took {
                    taken += 1;
                    assert_eq!(format!("{fast:?}"), format!("{link:?}"), "after {d:?}");
                } else {
                    // Declined: it changed nothing, and the general path runs.
                    declined += 1;
                    assert_eq!(format!("{fast:?}"), before, "declining {d:?}");
                }
            }
        }
        // Both paths were exercised, many times.
        assert!(
            taken > 1000 && declined > 1000,
            "taken {taken}, declined {declined}"
        );
    }

    #[test]
    fn rto_without_progress_fails_and_progress_heals() {
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        l.observe(&delta(100, 0, 0), ms(0), &cfg);
        assert_eq!(l.status(ms(0), &cfg), LinkStatus::Healthy);
        l.observe(&delta(0, 1, 1), ms(300), &cfg);
        assert_eq!(l.status(ms(300), &cfg), LinkStatus::Failed);
        l.observe(&delta(5, 0, 0), ms(400), &cfg);
        assert_eq!(l.status(ms(400), &cfg), LinkStatus::Healthy);
    }

    #[test]
    fn retransmissions_alone_fail_only_after_the_stall_timeout() {
        // The observer sends no later sample (`heard` stays at the stall's tick): the
        // silence is never read, so only the stall timeout fails the link.
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        l.observe(&delta(100, 0, 0), ms(0), &cfg);
        l.observe(&delta(0, 2, 0), ms(100), &cfg);
        assert_ne!(l.status_as_of(ms(500), ms(100), &cfg), LinkStatus::Failed);
        assert_eq!(l.status_as_of(ms(1100), ms(100), &cfg), LinkStatus::Failed);
    }

    #[test]
    fn a_retransmission_met_with_silence_fails_at_the_next_sample() {
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        l.observe(&acked(60, delta(100, 0, 0)), ms(0), &cfg);
        // A tail-loss probe, nothing back in its tick.
        l.observe(&delta(0, 1, 0), ms(100), &cfg);
        assert_ne!(l.status_as_of(ms(100), ms(100), &cfg), LinkStatus::Failed);
        assert_ne!(
            l.status_as_of(ms(170), ms(170), &cfg),
            LinkStatus::Failed,
            "70 ms of silence is not enough"
        );
        assert_ne!(
            l.status_as_of(ms(250), ms(100), &cfg),
            LinkStatus::Failed,
            "time alone is not silence: the observer has not sampled since"
        );
        assert_eq!(l.status_as_of(ms(200), ms(200), &cfg), LinkStatus::Failed);
        // The peer answers: healthy again.
        l.observe(&acked(1, delta(1, 0, 0)), ms(300), &cfg);
        assert_eq!(l.status_as_of(ms(300), ms(300), &cfg), LinkStatus::Healthy);
    }

    /// The kernel dates a stall to its retransmission, and the silence proof counts
    /// from there; the views compare it with progress as samples show both, so the
    /// stall's onset there is the sample that reported it.
    #[test]
    fn a_stall_is_proven_from_the_kernels_date_and_shown_as_of_its_sample() {
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        l.observe(&acked(60, delta(100, 0, 0)), ms(1000), &cfg);
        // Sampled at 1100: a retransmission 60 ms ago, nothing back since.
        let mut d = delta(0, 1, 0);
        d.silent_ms = Some(60);
        l.observe(&d, ms(1100), &cfg);
        assert_eq!(l.stall_onset(), Some(ms(1040)), "dated by the kernel");
        assert_eq!(l.stamps_ms().0, 1100, "as the views see it");
        assert_ne!(l.status_as_of(ms(1119), ms(1119), &cfg), LinkStatus::Failed);
        assert_eq!(
            l.status_as_of(ms(1120), ms(1120), &cfg),
            LinkStatus::Failed,
            "proven 80 ms after the retransmission, not after the sample"
        );
    }

    #[test]
    fn a_retransmission_answered_by_any_segment_is_not_silence() {
        // Without TCP timestamps an ACK of retransmitted data carries no RTT sample
        // and is not counted as an ACK; the segment still arrived.
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        l.observe(&acked(60, delta(100, 0, 0)), ms(0), &cfg);
        l.observe(&delta(1, 1, 0), ms(100), &cfg);
        assert_eq!(l.stall_onset(), Some(ms(100)), "unacknowledged: a stall");
        assert_ne!(l.status_as_of(ms(300), ms(300), &cfg), LinkStatus::Failed);
        // Nor when the segment comes in a later tick of the stall.
        let mut l = LinkHealth::default();
        l.observe(&acked(60, delta(100, 0, 0)), ms(0), &cfg);
        l.observe(&delta(0, 1, 0), ms(100), &cfg);
        l.observe(&delta(2, 1, 0), ms(150), &cfg);
        assert_ne!(l.status_as_of(ms(300), ms(300), &cfg), LinkStatus::Failed);
    }

    /// `delta` whose retransmissions were heartbeats' (`control_retrans_segs`).
    fn control(d: LinkDelta) -> LinkDelta {
        let mut d = d;
        d.counters.control_retrans_segs = std::mem::take(&mut d.counters.retrans_segs);
        d
    }

    #[test]
    fn a_control_retransmission_met_with_silence_fails_like_any_other() {
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        l.observe(&acked(60, delta(100, 0, 0)), ms(0), &cfg);
        // A heartbeat went unanswered: its tail-loss probe, then nothing.
        l.observe(&control(delta(0, 1, 0)), ms(100), &cfg);
        assert_eq!(l.stall_onset(), Some(ms(100)));
        assert_ne!(l.status_as_of(ms(170), ms(170), &cfg), LinkStatus::Failed);
        assert_eq!(l.status_as_of(ms(200), ms(200), &cfg), LinkStatus::Failed);
        assert_eq!(l.stall_retrans(), 1, "shown in the stall's evidence");
        // Its ACK came after all: healthy again.
        l.observe(&acked(2, delta(2, 0, 0)), ms(300), &cfg);
        assert_eq!(l.status_as_of(ms(300), ms(300), &cfg), LinkStatus::Healthy);
    }

    #[test]
    fn control_retransmissions_are_never_loss() {
        // Every tick's heartbeat retransmitted spuriously (its ACK a little late), with
        // the ACKs coming: as much "loss" as `heavy_loss_with_progress_is_degraded`
        // and more, never DEGRADED, and nothing in the loss sums pooled elsewhere.
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        for t in 0..20 {
            l.observe(&control(acked(5, delta(10, 10, 0))), ms(t * 100), &cfg);
            assert_eq!(l.status(ms(t * 100), &cfg), LinkStatus::Healthy, "tick {t}");
        }
        let (retrans, progress) = l.loss_sums(1900, 10_000).expect("recent evidence");
        assert!(retrans == 0.0 && progress > 0.0, "{retrans} {progress}");
        assert_eq!(l.loss_since(0), Some((0.0, 10.0)));
        // The same counts as plain retransmissions are loss.
        let mut plain = LinkHealth::default();
        for t in 0..20 {
            plain.observe(&acked(5, delta(10, 10, 0)), ms(t * 100), &cfg);
        }
        assert_eq!(plain.status(ms(1900), &cfg), LinkStatus::Degraded);
    }

    #[test]
    fn a_heartbeat_timeout_fails_the_link_at_once_and_is_never_loss() {
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        l.observe(&acked(60, delta(100, 0, 0)), ms(0), &cfg);
        // Its tail-loss probe, then its timeout 20 ms past the RTT: no silence to wait.
        l.observe(&control(delta(0, 1, 0)), ms(100), &cfg);
        assert_ne!(l.status_as_of(ms(110), ms(110), &cfg), LinkStatus::Failed);
        let mut timeout = control(delta(0, 1, 0));
        timeout.counters.control_timeouts = 1;
        l.observe(&timeout, ms(130), &cfg);
        assert_eq!(l.status_as_of(ms(130), ms(130), &cfg), LinkStatus::Failed);
        assert_eq!(l.stall_hard(), 1, "shown in the stall's evidence");
        assert_eq!(l.loss_since(0), Some((0.0, 0.0)), "no loss");
        // Its ACK came after all: healthy again, and nothing lost on the way.
        l.observe(&acked(1, delta(1, 0, 0)), ms(140), &cfg);
        assert_eq!(l.status_as_of(ms(140), ms(140), &cfg), LinkStatus::Healthy);
        let (retrans, _) = l.loss_sums(140, 10_000).expect("recent evidence");
        assert!(retrans == 0.0, "{retrans}");
    }

    #[test]
    fn the_heartbeats_do_not_dilute_the_users_loss() {
        // 10 % of the users' segments retransmitted, beside ten times as many
        // heartbeat segments: DEGRADED as without them.
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        for t in 0..20 {
            let mut d = acked(50, delta(1100, 10, 0));
            d.counters.control_progress_segs = 1000;
            l.observe(&d, ms(t * 100), &cfg);
        }
        assert_eq!(l.status(ms(1900), &cfg), LinkStatus::Degraded);
        assert_eq!(l.loss_since(0), Some((10.0, 100.0)));
        assert_eq!(
            l.last_counters().progress_segs,
            1100,
            "evidence keeps them all"
        );
    }

    #[test]
    fn silence_is_measured_in_round_trips_on_a_long_link() {
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        // A 100 ms path: a live peer answers a retransmission within an RTT, plus
        // what delays its ACK; 80 ms of silence is not yet proof there, two RTTs are.
        for t in 0..5 {
            l.observe(
                &with_rtt(100_000, acked(10, delta(10, 0, 0))),
                ms(t * 100),
                &cfg,
            );
        }
        l.observe(&delta(0, 1, 0), ms(1000), &cfg);
        assert_ne!(l.status_as_of(ms(1100), ms(1100), &cfg), LinkStatus::Failed);
        assert_ne!(l.status_as_of(ms(1199), ms(1199), &cfg), LinkStatus::Failed);
        assert_eq!(l.status_as_of(ms(1200), ms(1200), &cfg), LinkStatus::Failed);
    }

    #[test]
    fn a_repeat_timeout_alone_is_not_a_silent_stall() {
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        l.observe(&acked(60, delta(100, 0, 0)), ms(0), &cfg);
        l.observe(&repeated(1, delta(0, 1, 1)), ms(100), &cfg);
        assert_ne!(l.status_as_of(ms(500), ms(500), &cfg), LinkStatus::Failed);
    }

    fn with_rtt(us: u64, d: LinkDelta) -> LinkDelta {
        LinkDelta {
            rtt_p50_us: Some(us),
            ..d
        }
    }

    #[test]
    fn heavy_loss_with_progress_is_degraded_not_failed() {
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        for t in 0..20 {
            l.observe(&delta(100, 10, u64::from(t % 5 == 0)), ms(t * 100), &cfg);
        }
        assert_eq!(l.status(ms(1900), &cfg), LinkStatus::Degraded);
    }

    #[test]
    fn rtt_far_above_baseline_is_degraded() {
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        for t in 0..100 {
            l.observe(&with_rtt(200, delta(50, 0, 0)), ms(t * 100), &cfg);
        }
        assert_eq!(l.status(ms(9900), &cfg), LinkStatus::Healthy);
        for t in 100..130 {
            l.observe(&with_rtt(40_000, delta(50, 0, 0)), ms(t * 100), &cfg);
        }
        assert_eq!(l.status(ms(12_900), &cfg), LinkStatus::Degraded);
        let (recent, baseline) = l.rtt_us();
        assert!(baseline < 1000 && recent > 20_000, "{recent} {baseline}");
    }

    /// `delta` with `acked` of our segments acknowledged.
    fn acked(acked: u64, d: LinkDelta) -> LinkDelta {
        let mut d = d;
        d.counters.acked_segs = acked;
        d
    }

    #[test]
    fn a_one_way_fault_fails_though_the_peers_segments_arrive() {
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        // Both directions carry data; ours is acknowledged.
        l.observe(&acked(60, delta(100, 0, 0)), ms(0), &cfg);
        assert_eq!(l.status(ms(0), &cfg), LinkStatus::Healthy);
        // Everything towards the peer is dropped: we retransmit and time out, the peer's
        // data still arrives, nothing of ours is acknowledged.
        l.observe(&delta(20, 3, 1), ms(300), &cfg);
        assert_eq!(l.status(ms(300), &cfg), LinkStatus::Failed);
        // Between our backed-off RTOs, the peer's own retransmissions keep arriving.
        l.observe(&delta(2, 0, 0), ms(400), &cfg);
        assert_eq!(l.status(ms(400), &cfg), LinkStatus::Failed);
        l.observe(&delta(1, 1, 1), ms(700), &cfg);
        l.observe(&delta(1, 0, 0), ms(900), &cfg);
        assert_eq!(l.status(ms(900), &cfg), LinkStatus::Failed);
        assert_eq!(l.stall_onset(), Some(ms(300)));
        assert_eq!(l.last_progress_at(), Some(ms(0)));
        assert_eq!(l.last_counters().acked_segs, 0);
        // The path heals: our data is acknowledged again.
        l.observe(&acked(20, delta(30, 0, 0)), ms(1000), &cfg);
        assert_eq!(l.status(ms(1000), &cfg), LinkStatus::Healthy);
        assert_eq!(l.last_counters().acked_segs, 20);
    }

    /// `delta` with `repeats` of its timeouts repeated ones (see `repeat_timeouts`).
    fn repeated(repeats: u64, d: LinkDelta) -> LinkDelta {
        let mut d = d;
        d.counters.repeat_timeouts = repeats;
        d
    }

    #[test]
    fn a_connection_left_in_backoff_times_out_once_more_without_failing_the_link() {
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        l.observe(&acked(60, delta(100, 0, 0)), ms(0), &cfg);
        // The fault: timeouts, the first of each connection, then repeats.
        l.observe(&delta(0, 2, 2), ms(300), &cfg);
        l.observe(&repeated(2, delta(0, 2, 2)), ms(900), &cfg);
        assert_eq!(l.status(ms(900), &cfg), LinkStatus::Failed);
        assert_eq!(
            l.stall_hard(),
            4,
            "repeats extend a stall that never healed"
        );
        // It clears; a new connection gets through at once.
        l.observe(&acked(10, delta(10, 0, 0)), ms(5000), &cfg);
        assert_eq!(l.status(ms(5000), &cfg), LinkStatus::Healthy);
        // An old connection's backed-off timer fires: old news, not a failed link.
        l.observe(&repeated(1, delta(0, 1, 1)), ms(7000), &cfg);
        assert_ne!(l.status(ms(7000), &cfg), LinkStatus::Failed);
        assert_eq!(l.stall_onset(), Some(ms(7000)));
        assert_eq!(l.stall_hard(), 0);
        // Its retransmission is acknowledged a round trip later.
        l.observe(&acked(1, delta(1, 0, 0)), ms(7100), &cfg);
        assert_eq!(l.status(ms(7100), &cfg), LinkStatus::Healthy);

        // Were nothing acknowledged, the stall would still fail, after the timeout.
        l.observe(&repeated(1, delta(0, 1, 1)), ms(9000), &cfg);
        assert_ne!(l.status(ms(9000), &cfg), LinkStatus::Failed);
        assert_eq!(
            l.status(ms(9000) + cfg.stall_timeout, &cfg),
            LinkStatus::Failed
        );
    }

    #[test]
    fn a_first_timeout_beside_a_repeat_fails_the_link_at_once() {
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        l.observe(&acked(60, delta(100, 0, 0)), ms(0), &cfg);
        // One connection times out for the first time, another repeats: a new stall.
        l.observe(&repeated(1, delta(0, 2, 2)), ms(300), &cfg);
        assert_eq!(l.status(ms(300), &cfg), LinkStatus::Failed);
        assert_eq!(l.stall_hard(), 1);
    }

    #[test]
    fn progress_that_only_comes_in_is_not_two_way() {
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        l.observe(&acked(60, delta(100, 0, 0)), ms(1000), &cfg);
        assert_eq!(l.stamps_ms().2, 1000);
        // The peer keeps sending; we send nothing (so nothing of ours to acknowledge).
        l.observe(&delta(50, 0, 0), ms(1100), &cfg);
        l.observe(&delta(50, 0, 0), ms(1200), &cfg);
        assert_eq!(
            l.status(ms(1200), &cfg),
            LinkStatus::Healthy,
            "the peer is alive"
        );
        assert_eq!(l.last_progress_at(), Some(ms(1200)));
        assert_eq!(l.stamps_ms().2, 1000, "our path out was last shown at 1000");
        l.observe(&acked(1, delta(1, 0, 0)), ms(1300), &cfg);
        assert_eq!(l.stamps_ms().2, 1300);
        // Where ACKs are not counted, segments received are all we have.
        let mut old = LinkHealth::default();
        old.observe(&delta(50, 0, 0), ms(500), &cfg);
        assert_eq!(old.stamps_ms().2, 500);
    }

    #[test]
    fn an_answer_is_dated_by_the_kernel_less_half_an_rtt() {
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        // Acknowledged 30 ms before a sample at 1000, on a path of 100 ms round trip:
        // the ACK crossed any point of the path to us no later than 1000 - 30 - 50.
        let mut d = acked(2, delta(2, 0, 0));
        d.rtt_p50_us = Some(100_000);
        d.acked_age_ms = Some(30);
        l.observe(&d, ms(1000), &cfg);
        assert_eq!(l.answered_ms(), 920);
        assert_eq!(
            l.stamps_ms().2,
            1000,
            "sampled, as the cut-off tallies see it"
        );
        // Segments that only come in keep the last answer.
        l.observe(&delta(5, 0, 0), ms(1100), &cfg);
        assert_eq!(l.answered_ms(), 920);
        // An observer that does not date its ACKs: the sample less half the RTT seen.
        let mut undated = acked(2, delta(2, 0, 0));
        undated.rtt_p50_us = Some(100_000);
        l.observe(&undated, ms(1200), &cfg);
        assert_eq!(l.answered_ms(), 1150);
        // Never answered at all.
        let mut silent = LinkHealth::default();
        silent.observe(&delta(0, 1, 1), ms(1100), &cfg);
        assert_eq!(silent.answered_ms(), u64::MAX);
        // Where ACKs are not counted, a segment received is the answer, sampled.
        let mut old = LinkHealth::default();
        old.observe(&delta(5, 0, 0), ms(1000), &cfg);
        assert_eq!(old.answered_ms(), 1000);
    }

    #[test]
    fn loss_with_our_data_acknowledged_is_not_failed() {
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        l.observe(&acked(60, delta(100, 0, 0)), ms(0), &cfg);
        l.observe(&acked(5, delta(20, 3, 1)), ms(300), &cfg);
        assert_ne!(l.status(ms(300), &cfg), LinkStatus::Failed);
        for t in 4..24 {
            let d = delta(100, 10, u64::from(t % 5 == 0));
            l.observe(&acked(40, d), ms(t * 100), &cfg);
        }
        assert_eq!(l.status(ms(2300), &cfg), LinkStatus::Degraded);
    }

    #[test]
    fn an_earlier_stalls_repeat_timeouts_are_not_loss() {
        // After a fault clears, connections that sat in it time out once more and
        // re-send: as much loss, counted, as a fresh 3 % a tick would be, but all of
        // it repeats.
        let cfg = DetectorConfig::default();
        let (mut tail, mut fresh) = (LinkHealth::default(), LinkHealth::default());
        for t in 0..20 {
            let mut repeats = delta(100, 3, 3);
            repeats.counters.repeat_timeouts = 3;
            tail.observe(&repeats, ms(t * 100), &cfg);
            fresh.observe(&delta(100, 3, 3), ms(t * 100), &cfg);
        }
        let lost = |l: &LinkHealth| l.loss_sums(1900, 2000).map(|(r, _)| r);
        assert_eq!(lost(&tail), Some(0.0));
        assert!(lost(&fresh).is_some_and(|r| r > 10.0), "{:?}", lost(&fresh));
        assert_eq!(tail.loss_since(1800), Some((0.0, 100.0)));
    }

    #[test]
    fn without_ack_counts_segments_received_stay_progress() {
        // A host without sock_ops (or an older peer agent) never reports acked_segs.
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        l.observe(&delta(100, 0, 0), ms(0), &cfg);
        l.observe(&delta(20, 3, 1), ms(300), &cfg);
        assert_ne!(l.status(ms(300), &cfg), LinkStatus::Failed);
        assert_eq!(l.last_progress_at(), Some(ms(300)));
    }

    #[test]
    fn a_retransmission_acked_without_an_rtt_sample_ends_its_stall() {
        // Without TCP timestamps an ACK of retransmitted data gives no RTT sample (Karn),
        // so acked_segs misses it: a retransmission without an RTO does not harden the
        // stall, and the peer's segments on the next loss-free tick end it.
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        l.observe(&acked(60, delta(100, 0, 0)), ms(0), &cfg);
        l.observe(&delta(20, 1, 0), ms(100), &cfg);
        assert_eq!(l.stall_onset(), Some(ms(100)));
        l.observe(&delta(20, 0, 0), ms(200), &cfg);
        assert_eq!(l.stall_onset(), None);
        assert_eq!(l.status(ms(1500), &cfg), LinkStatus::Healthy);
    }

    #[test]
    fn the_state_stays_small() {
        assert!(size_of::<LinkHealth>() <= 80, "{}", size_of::<LinkHealth>());
    }

    #[test]
    fn silence_becomes_unknown() {
        let cfg = DetectorConfig::default();
        let mut l = LinkHealth::default();
        assert_eq!(l.status(ms(0), &cfg), LinkStatus::Unknown);
        l.observe(&delta(10, 0, 0), ms(0), &cfg);
        assert_eq!(l.status(cfg.stale_after + ms(1), &cfg), LinkStatus::Unknown);
    }
}
