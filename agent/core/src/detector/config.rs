//! Detector thresholds. Every default is explained where it is set, and all of them can
//! be overridden in the `[detector]` section of the agent's config file.
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    /// A link with no evidence at all for this long is UNKNOWN. 30 s: longer than the
    /// gaps between RTOs of a backed-off connection (0.2, 0.4, … 12.8 s), so a
    /// blackholed link stays FAILED while its connections keep trying.
    #[serde(with = "crate::duration")]
    pub stale_after: Duration,
    /// Retransmitting with no progress for this long is FAILED even without an RTO or
    /// SYN retry (hosts where sock_ops is unavailable). 1 s: five minimum RTOs.
    #[serde(with = "crate::duration")]
    pub stall_timeout: Duration,
    /// A retransmission followed by silence — not one segment from the peer — for this
    /// long, and for `silent_stall_rtts` of the link's baseline RTT, is FAILED without
    /// waiting for an RTO (see `LinkHealth::status_as_of`). 80 ms: the silence is read
    /// from the observer's next sample, a tick (100 ms) after the one that saw the
    /// retransmission, and a live path answers a retransmission within an RTT.
    #[serde(with = "crate::duration")]
    pub silent_stall: Duration,
    /// … 2 RTTs, counted from the retransmission: a live path answers it within one
    /// (a duplicate or out-of-order segment is acknowledged at once), and the second
    /// covers what may delay that answer (a delayed ACK, jitter). Its original had
    /// already gone unanswered for the two RTTs a tail-loss probe waits.
    pub silent_stall_rtts: f64,
    /// A FAILED condition must hold this long before it is announced, so a condition
    /// seen at one evaluation only is never news. 50 ms: half a default tick, so a
    /// condition must be seen at two evaluations (a tick, or urgent events 50 ms
    /// apart); the other guards (two observers, fresh evidence, witnesses) do the rest.
    #[serde(with = "crate::duration")]
    pub confirm: Duration,
    /// Leaving FAILED needs this long of sustained health. 5 s: long enough that a
    /// router does not fail back into a still-shaky rack, short enough to restore
    /// capacity quickly.
    #[serde(with = "crate::duration")]
    pub recovery_hold: Duration,
    /// Each re-entry into FAILED within this window doubles the hold (flap damping).
    #[serde(with = "crate::duration")]
    pub flap_window: Duration,
    /// Upper bound of the damped hold. 80 s: 16 × the default hold.
    #[serde(with = "crate::duration")]
    pub max_recovery_hold: Duration,
    /// DEGRADED when retransmissions exceed this share of segments received, over
    /// `loss_window`. 5 %: well above the ~1 % background loss TCP absorbs unnoticed.
    pub degraded_loss_ratio: f64,
    /// … and at least this many retransmissions in the window, so two lost packets on
    /// an idle link are not a gray failure.
    pub degraded_min_retrans: f64,
    /// A host is DEGRADED from outside an entity when the retransmissions of every
    /// observer outside it, pooled over their links to the host, exceed this share of
    /// the segments those links received (and `degraded_min_retrans`), and
    /// `degraded_standout` times what the same observers lose on their links to the
    /// other hosts as far away (`views::expected_ratio`). 1 %: one link
    /// rarely carries enough traffic to tell 3 % loss from noise in a few seconds; all
    /// of a host's observers together do. Retransmissions are counted per segment
    /// *received*, and request/response traffic receives about one and a half for each
    /// one it sends, so 3 % packet loss shows as about 2 %: at 1.5 % it sat on the
    /// threshold (measured 1.5–2.1 % in the lab) and its DEGRADED came and went. Loss
    /// on every long-haul path shows on all of an observer's links that cross it, so
    /// the comparison, not this floor, keeps network-wide noise from blaming a host.
    pub pooled_loss_ratio: f64,
    /// Time constant of the loss window. 2 s.
    #[serde(with = "crate::duration")]
    pub loss_window: Duration,
    /// Time constant of a second, short window for the pooled loss, tested against the
    /// same `pooled_loss_ratio` and `degraded_min_retrans`, and twice the stand-out
    /// bar. The 2 s window dilutes a new loss with the clean traffic from before it:
    /// a ratio of 2 % crosses 1 % after 1.4 s there, 0.35 s in a 500 ms window. A host
    /// with little traffic never gathers the minimum retransmissions in it and is left
    /// to the long window. `degraded_confirm` still has to pass.
    #[serde(with = "crate::duration")]
    pub pooled_loss_fast_window: Duration,
    /// DEGRADED when the recent RTT exceeds the link's own baseline by this factor …
    pub rtt_factor: f64,
    /// … and by at least this much, so a 20 µs → 100 µs jump on a LAN is not news. 5 ms.
    #[serde(with = "crate::duration")]
    pub rtt_min_increase: Duration,
    /// Time constant of the slow RTT baseline. 60 s.
    #[serde(with = "crate::duration")]
    pub rtt_baseline_window: Duration,
    /// Time constant of the recent RTT. 1 s.
    #[serde(with = "crate::duration")]
    pub rtt_recent_window: Duration,
    /// A rack, cabinet or site fails only when at least this many of its hosts fail,
    /// as seen from outside it, whatever its number of children. 2: one bad host never
    /// fails its rack.
    pub min_failed_hosts: u32,
    /// … and at least this share of its observed hosts. 0.5: a majority of healthy
    /// hosts always vetoes.
    pub min_failed_fraction: f64,
    /// … seen by at least this many distinct observers: above host level no verdict
    /// rests on a single observer. 2.
    pub min_observers: u32,
    /// An observer's progress counts against a failure only when it came this long
    /// after the failure began: it covers the delay of a peer's batch (a tick, plus the
    /// network). A host failed by one observer alone is judged after this long. 300 ms.
    #[serde(with = "crate::duration")]
    pub witness_slack: Duration,
    /// A new FAILED needs loss evidence this recent; older evidence only keeps a
    /// failure that is already announced. 1 s: longer than the gaps between the first
    /// backed-off RTOs (0.2, 0.4, 0.8 s).
    #[serde(with = "crate::duration")]
    pub fresh_evidence: Duration,
    /// An observer not heard from this long (batches come every tick) is lost and its
    /// evidence set aside. 300 ms: three default ticks.
    #[serde(with = "crate::duration")]
    pub observer_timeout: Duration,
    /// An observer that sees at least this share of its hosts degraded is the cause
    /// itself (its CPU, the whole network), and its degraded views blame no one. 0.5.
    pub degraded_observer_fraction: f64,
    /// A degraded condition must hold this long before DEGRADED is shown: RTTs rise at
    /// different moments on different links, and a moment's imbalance is not a gray
    /// failure. 1 s.
    #[serde(with = "crate::duration")]
    pub degraded_confirm: Duration,
    /// An entity is DEGRADED only when its share of degraded hosts is at least this
    /// many times the share among hosts outside it; a host is lossy only when its
    /// pooled loss is this many times what its observers lose elsewhere. 2.
    pub degraded_standout: f64,
    /// Cut off: an observer names its enclosing entity (its own host at least) as cut
    /// off when at least this many hosts outside it, in at least two racks, fail …
    pub local_fault_min_hosts: u32,
    /// … while at most this share of the hosts outside still progress. 0.2.
    pub local_fault_max_healthy_fraction: f64,
    /// Most peers (links, hosts) listed as evidence in one verdict. 16.
    pub max_evidence: usize,
    /// A link with no evidence for this long is forgotten, and a host the topology
    /// does not list is forgotten with its last link (its verdict with it). 60 s:
    /// twice `stale_after`, so what is forgotten had long been UNKNOWN.
    #[serde(with = "crate::duration")]
    pub forget_after: Duration,
    /// Most hosts the topology does not list tracked at once (a front-end's clients,
    /// addresses inside a rack's prefix); past it the least recently seen are
    /// forgotten first. 4,096: each costs ~4 KB (its node, links, verdict and its
    /// copy in the feed); measured, a host connecting to a million addresses in ten
    /// minutes then stays under 64 MB of RSS (`cargo xtask bench memory`). Racks
    /// and sites are judged from the topology's hosts, which are never forgotten.
    pub max_unlisted_hosts: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            stale_after: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(1),
            silent_stall: Duration::from_millis(80),
            silent_stall_rtts: 2.0,
            confirm: Duration::from_millis(50),
            recovery_hold: Duration::from_secs(5),
            flap_window: Duration::from_secs(60),
            max_recovery_hold: Duration::from_secs(80),
            degraded_loss_ratio: 0.05,
            degraded_min_retrans: 5.0,
            pooled_loss_ratio: 0.01,
            loss_window: Duration::from_secs(2),
            pooled_loss_fast_window: Duration::from_millis(500),
            rtt_factor: 4.0,
            rtt_min_increase: Duration::from_millis(5),
            rtt_baseline_window: Duration::from_secs(60),
            rtt_recent_window: Duration::from_secs(1),
            min_failed_hosts: 2,
            min_failed_fraction: 0.5,
            min_observers: 2,
            witness_slack: Duration::from_millis(300),
            fresh_evidence: Duration::from_secs(1),
            observer_timeout: Duration::from_millis(300),
            degraded_observer_fraction: 0.5,
            degraded_confirm: Duration::from_secs(1),
            degraded_standout: 2.0,
            local_fault_min_hosts: 3,
            local_fault_max_healthy_fraction: 0.2,
            max_evidence: 16,
            forget_after: Duration::from_secs(60),
            max_unlisted_hosts: 4096,
        }
    }
}

impl DetectorConfig {
    /// The first value out of bounds, as (key, why). Every duration and number has
    /// bounds: zero where it makes no sense, NaN, negative and absurd values (a
    /// recovery hold of centuries overflows the clock) are refused before anything is
    /// bound or attached.
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        const MS: Duration = Duration::from_millis(1);
        const S: Duration = Duration::from_secs(1);
        const HOUR: Duration = Duration::from_secs(3600);
        const DAY: Duration = Duration::from_secs(86_400);
        let zero = Duration::ZERO;
        let durations: [(&'static str, Duration, Duration, Duration); 16] = [
            ("detector.stale_after", self.stale_after, 100 * MS, HOUR),
            (
                "detector.stall_timeout",
                self.stall_timeout,
                10 * MS,
                60 * S,
            ),
            ("detector.silent_stall", self.silent_stall, MS, 10 * S),
            ("detector.confirm", self.confirm, zero, 60 * S),
            ("detector.recovery_hold", self.recovery_hold, zero, HOUR),
            ("detector.flap_window", self.flap_window, zero, DAY),
            (
                "detector.max_recovery_hold",
                self.max_recovery_hold,
                zero,
                DAY,
            ),
            ("detector.loss_window", self.loss_window, 100 * MS, HOUR),
            (
                "detector.pooled_loss_fast_window",
                self.pooled_loss_fast_window,
                10 * MS,
                HOUR,
            ),
            (
                "detector.rtt_min_increase",
                self.rtt_min_increase,
                zero,
                60 * S,
            ),
            (
                "detector.rtt_baseline_window",
                self.rtt_baseline_window,
                100 * MS,
                DAY,
            ),
            (
                "detector.rtt_recent_window",
                self.rtt_recent_window,
                10 * MS,
                DAY,
            ),
            ("detector.witness_slack", self.witness_slack, MS, 60 * S),
            (
                "detector.fresh_evidence",
                self.fresh_evidence,
                10 * MS,
                HOUR,
            ),
            (
                "detector.observer_timeout",
                self.observer_timeout,
                10 * MS,
                60 * S,
            ),
            (
                "detector.degraded_confirm",
                self.degraded_confirm,
                zero,
                HOUR,
            ),
        ];
        for (key, value, min, max) in durations {
            if value < min || value > max {
                return Some((key, format!("must be between {min:?} and {max:?}")));
            }
        }
        // (key, value, min, max), inclusive; NaN is inside no range. A minimum of
        // f64::MIN_POSITIVE means "above zero".
        let numbers: [(&'static str, f64, f64, f64); 11] = [
            (
                "detector.silent_stall_rtts",
                self.silent_stall_rtts,
                1.0,
                100.0,
            ),
            (
                "detector.degraded_loss_ratio",
                self.degraded_loss_ratio,
                f64::MIN_POSITIVE,
                1.0,
            ),
            (
                "detector.degraded_min_retrans",
                self.degraded_min_retrans,
                0.0,
                1e6,
            ),
            (
                "detector.pooled_loss_ratio",
                self.pooled_loss_ratio,
                f64::MIN_POSITIVE,
                1.0,
            ),
            ("detector.rtt_factor", self.rtt_factor, 1.0, 1000.0),
            (
                "detector.min_failed_fraction",
                self.min_failed_fraction,
                0.0,
                1.0,
            ),
            (
                "detector.degraded_observer_fraction",
                self.degraded_observer_fraction,
                0.0,
                1.0,
            ),
            (
                "detector.degraded_standout",
                self.degraded_standout,
                1.0,
                1000.0,
            ),
            (
                "detector.local_fault_max_healthy_fraction",
                self.local_fault_max_healthy_fraction,
                0.0,
                1.0,
            ),
            (
                "detector.min_failed_hosts",
                f64::from(self.min_failed_hosts),
                1.0,
                1e6,
            ),
            (
                "detector.min_observers",
                f64::from(self.min_observers),
                1.0,
                1e4,
            ),
        ];
        for (key, value, min, max) in numbers {
            if !(min..=max).contains(&value) {
                let range = if min == f64::MIN_POSITIVE {
                    format!("above 0 and at most {max}")
                } else {
                    format!("between {min} and {max}")
                };
                return Some((key, format!("must be {range} (got {value})")));
            }
        }
        if !(1..=1_000_000).contains(&self.local_fault_min_hosts) {
            return Some((
                "detector.local_fault_min_hosts",
                "must be between 1 and 1000000".into(),
            ));
        }
        if !(1..=1024).contains(&self.max_evidence) {
            return Some(("detector.max_evidence", "must be between 1 and 1024".into()));
        }
        if !(16..=1 << 22).contains(&self.max_unlisted_hosts) {
            return Some((
                "detector.max_unlisted_hosts",
                "must be between 16 and 4194304".into(),
            ));
        }
        if self.forget_after < self.stale_after || self.forget_after > DAY {
            return Some((
                "detector.forget_after",
                "must be at least stale_after and at most 1 day".into(),
            ));
        }
        if self.max_recovery_hold < self.recovery_hold {
            return Some((
                "detector.max_recovery_hold",
                "must be at least recovery_hold".into(),
            ));
        }
        None
    }
}
