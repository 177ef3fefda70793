//! Latencies kept in an HDR histogram (microseconds, 3 significant digits, up to a
//! minute) and shown to Prometheus as a histogram in seconds, with buckets fine
//! enough to read the sub-second goals off them.
use std::{sync::Mutex, time::Duration};

use hdrhistogram::Histogram;

/// Bucket bounds, seconds: the goals are 300 ms to a host and 1 s to a router.
const BOUNDS_S: [&str; 14] = [
    "0.001", "0.002", "0.005", "0.01", "0.02", "0.05", "0.1", "0.2", "0.3", "0.5", "1", "2", "5",
    "10",
];
const BOUNDS_US: [u64; 14] = [
    1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 300_000, 500_000, 1_000_000,
    2_000_000, 5_000_000, 10_000_000,
];

pub(crate) struct Latency {
    inner: Mutex<(Histogram<u64>, u64)>,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            inner: Mutex::new((
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
                0,
            )),
        }
    }
}

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Latency")
    }
}

/// Cumulative bucket counts (`le` bound, count), the total count and sum.
pub(crate) struct Snapshot {
    pub(crate) buckets: Vec<(&'static str, u64)>,
    pub(crate) count: u64,
    pub(crate) sum_us: u64,
}

impl Latency {
    pub(crate) fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, 60_000_000);
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = inner.0.record(us);
        inner.1 = inner.1.saturating_add(us);
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (h, sum_us) = (&inner.0, inner.1);
        let buckets = BOUNDS_S
            .iter()
            .zip(BOUNDS_US)
            .map(|(&le, us)| (le, h.count_between(0, us)))
            .collect();
        Snapshot {
            buckets,
            count: h.len(),
            sum_us,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_count_everything() {
        let l = Latency::default();
        for ms in [3, 40, 40, 250, 900, 70_000] {
            l.record(Duration::from_millis(ms));
        }
        let s = l.snapshot();
        let le = |bound: &str| s.buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(le("0.005"), 1);
        assert_eq!(le("0.05"), 3);
        assert_eq!(le("0.3"), 4);
        assert_eq!(le("1"), 5);
        assert_eq!(le("10"), 5, "a minute-long outlier is only in +Inf");
        assert_eq!(s.count, 6);
    }
}
