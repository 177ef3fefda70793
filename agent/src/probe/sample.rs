//! Typed link samples: what the kernel counted for one link during one tick.
//!
//! The kernel keeps ever-growing per-CPU counters. [`SampleTracker`] sums the CPUs and
//! subtracts the previous tick, so the detector sees deltas, and the kernel never has
//! to be reset (which would race with the programs).
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use faultline_core::link::{Link, LinkCounters, LinkSample, RTT_BUCKETS, RttHistogram};
use faultline_ebpf::{AF_INET, LinkKey, LinkStats};

// The detector's histogram type mirrors the kernel's buckets one for one.
const _: () = assert!(RTT_BUCKETS == faultline_ebpf::RTT_BUCKETS);

/// The link a kernel key names. A dual-stack socket talking IPv4 carries
/// IPv4-mapped IPv6 addresses (`::ffff:10.1.1.10`): folded to IPv4, the form the
/// topology lists and peers report.
pub(crate) fn link_of(key: &LinkKey) -> Link {
    let addr = |bytes: &[u8; 16]| -> IpAddr {
        if key.family == AF_INET {
            IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*bytes)).to_canonical()
        }
    };
    Link {
        local: addr(&key.local),
        remote: addr(&key.remote),
    }
}

fn counters_of(stats: &LinkStats) -> LinkCounters {
    LinkCounters {
        progress_segs: stats.progress_segs,
        acked_segs: stats.acked_segs,
        retrans_segs: stats.retrans_segs,
        rto_timeouts: stats.rto_timeouts,
        syn_retrans: stats.syn_retrans,
        failed_connects: stats.failed_connects,
        resets_rx: stats.resets_rx,
        repeat_timeouts: stats.repeat_timeouts,
        control_retrans_segs: stats.control_retrans_segs,
        control_progress_segs: stats.control_progress_segs,
        control_timeouts: stats.control_timeouts,
    }
}

/// A link's counters summed over CPUs, since the kernel first saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkTotals {
    pub counters: LinkCounters,
    pub rtt: RttHistogram,
    /// Latest smoothed RTT (from the CPU that saw the most recent segment).
    pub srtt_us: u64,
    pub last_progress_ns: u64,
    pub last_loss_ns: u64,
    pub last_acked_ns: u64,
}

impl LinkTotals {
    /// Sums the per-CPU values of one link.
    pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a LinkStats>) -> Self {
        let mut total = Self::default();
        for stats in per_cpu {
            total.counters.add(&counters_of(stats));
            total.rtt.add(&RttHistogram(stats.rtt_hist));
            if stats.last_progress_ns > total.last_progress_ns {
                total.last_progress_ns = stats.last_progress_ns;
                total.srtt_us = stats.srtt_us;
            }
            total.last_loss_ns = total.last_loss_ns.max(stats.last_loss_ns);
            total.last_acked_ns = total.last_acked_ns.max(stats.last_acked_ns);
        }
        total
    }
}

/// Turns successive kernel snapshots into per-tick deltas.
#[derive(Debug, Default)]
pub(crate) struct SampleTracker {
    previous: HashMap<LinkKey, LinkTotals>,
    /// Links the LRU evicted since start.
    evicted: u64,
    /// The table before `previous`, kept for the next sample to fill: two tables
    /// of 16,384 links each, allocated once.
    spare: HashMap<LinkKey, LinkTotals>,
}

impl SampleTracker {
    /// Takes the current totals of every link and returns the samples of the links
    /// that changed since the last call (all of them on the first call).
    /// `now_ns` is CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
    pub(crate) fn update(
        &mut self,
        current: HashMap<LinkKey, LinkTotals>,
        now_ns: u64,
    ) -> Vec<LinkSample> {
        let ago = |at: u64| (at != 0).then(|| Duration::from_nanos(now_ns.saturating_sub(at)));
        let mut samples = Vec::new();
        for (key, totals) in &current {
            let (delta, rtt) = match self.previous.get(key) {
                Some(prev) => (
                    totals.counters.since(&prev.counters),
                    totals.rtt.since(&prev.rtt),
                ),
                None => (totals.counters, totals.rtt),
            };
            if delta.is_zero() && rtt.count() == 0 && self.previous.contains_key(key) {
                continue;
            }
            samples.push(LinkSample {
                link: link_of(key),
                delta,
                rtt,
                total: totals.counters,
                srtt_us: totals.srtt_us,
                since_progress: ago(totals.last_progress_ns),
                since_loss: ago(totals.last_loss_ns),
                since_acked: ago(totals.last_acked_ns),
            });
        }
        samples.sort_by_key(|s| s.link);
        // A key never leaves the map but by the LRU making room: what was there last
        // time and is gone now was evicted.
        let evicted = self
            .previous
            .keys()
            .filter(|k| !current.contains_key(k))
            .count();
        self.evicted = self.evicted.saturating_add(evicted as u64);
        self.spare = std::mem::replace(&mut self.previous, current);
        samples
    }

    /// A table to fill with the next sample (its allocation reused).
    pub(crate) fn take_spare(&mut self) -> HashMap<LinkKey, LinkTotals> {
        std::mem::take(&mut self.spare)
    }

    /// Links in the kernel's table at the last sample, and evicted since start.
    pub(crate) fn occupancy(&self) -> (usize, u64) {
        (self.previous.len(), self.evicted)
    }
}

/// CLOCK_MONOTONIC in ns, comparable with the kernel's `bpf_ktime_get_ns()`.
pub(crate) fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    #[expect(clippy::cast_sign_loss)]
    let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    ns
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_ebpf::rtt_bucket;

    fn key(remote: u8) -> LinkKey {
        let mut k = LinkKey {
            family: AF_INET,
            ..LinkKey::default()
        };
        k.local[..4].copy_from_slice(&[10, 0, 0, 1]);
        k.remote[..4].copy_from_slice(&[10, 0, 0, remote]);
        k
    }

    fn stats(retrans: u64, progress: u64, at: u64) -> LinkStats {
        let mut s = LinkStats::ZERO;
        s.retrans_segs = retrans;
        s.progress_segs = progress;
        s.acked_segs = progress / 2;
        s.last_progress_ns = at;
        s.last_acked_ns = at / 2;
        s.srtt_us = at / 1000;
        s
    }

    #[test]
    fn sums_cpus_and_takes_latest_srtt() {
        let t = LinkTotals::sum(&[stats(2, 10, 5_000), stats(3, 1, 9_000)]);
        assert_eq!(t.counters.retrans_segs, 5);
        assert_eq!(t.counters.progress_segs, 11);
        assert_eq!(t.counters.acked_segs, 5);
        assert_eq!(t.srtt_us, 9);
        assert_eq!(t.last_progress_ns, 9_000);
        assert_eq!(t.last_acked_ns, 4_500, "the latest ACK on any CPU");
    }

    #[test]
    fn deltas_between_ticks_and_quiet_links_are_skipped() {
        let mut tracker = SampleTracker::default();
        let snap = |retrans, progress| {
            HashMap::from([
                (key(2), LinkTotals::sum(&[stats(retrans, progress, 1)])),
                (key(3), LinkTotals::sum(&[stats(0, 7, 1)])),
            ])
        };
        let first = tracker.update(snap(1, 5), 10);
        assert_eq!(first.len(), 2, "first tick reports every link");
        let second = tracker.update(snap(4, 9), 20);
        assert_eq!(second.len(), 1, "the unchanged link is quiet");
        assert_eq!(second[0].link.remote.to_string(), "10.0.0.2");
        assert_eq!(second[0].delta.retrans_segs, 3);
        assert_eq!(second[0].delta.progress_segs, 4);
        assert_eq!(second[0].delta.acked_segs, 2);
        assert_eq!(second[0].total.retrans_segs, 4);
    }

    #[test]
    fn a_recreated_link_counts_from_zero() {
        let mut tracker = SampleTracker::default();
        tracker.update(
            HashMap::from([(key(2), LinkTotals::sum(&[stats(50, 50, 1)]))]),
            1,
        );
        let after = tracker.update(
            HashMap::from([(key(2), LinkTotals::sum(&[stats(2, 3, 1)]))]),
            2,
        );
        assert_eq!(after[0].delta.retrans_segs, 2);
        assert_eq!(after[0].delta.progress_segs, 3);
    }

    #[test]
    fn quantiles_come_from_bucket_edges() {
        let mut h = RttHistogram::default();
        h.0[rtt_bucket(100)] = 98; // 64..128 µs
        h.0[rtt_bucket(5000)] = 2; // 4096..8192 µs
        assert_eq!(h.quantile_us(0.5), Some(128));
        assert_eq!(h.quantile_us(0.99), Some(8192));
        assert_eq!(RttHistogram::default().quantile_us(0.5), None);
    }

    #[test]
    fn v4_and_v6_keys_become_addresses() {
        let link = link_of(&key(9));
        assert_eq!(link.remote.to_string(), "10.0.0.9");
        let mut v6 = LinkKey {
            family: faultline_ebpf::AF_INET6,
            ..LinkKey::default()
        };
        v6.remote = "fd00::7".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(link_of(&v6).remote.to_string(), "fd00::7");
        // A dual-stack socket's IPv4 peer, as the topology lists it.
        v6.remote = "::ffff:10.1.1.10".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(link_of(&v6).remote.to_string(), "10.1.1.10");
    }
}
