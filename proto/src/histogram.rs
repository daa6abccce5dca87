//! Latency histograms with fixed bucket boundaries shared by the agent (which
//! records) and the control plane (which merges reports and computes
//! quantiles), so both compute the same numbers.
//!
//! Boundaries run from 100 µs to 1000 s, 26 per decade with mantissas
//! 1.0, 1.1, ... 9.0 (steps of at most 12.5 %), in whole microseconds. Bucket
//! `i` counts values in `(BOUNDS_US[i-1], BOUNDS_US[i]]`; bucket 0 counts
//! everything up to 100 µs and the last bucket everything above 1000 s.
//! Quantiles interpolate linearly inside a bucket, so they are within a
//! bucket's width of the exact value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Mantissas of the boundaries in each decade, times ten.
const MANTISSAS_X10: [u64; 26] = [
    10, 11, 12, 13, 14, 15, 16, 18, 20, 22, 24, 25, 28, 30, 33, 36, 40, 45, 50, 55, 60, 65, 70, 75,
    80, 90,
];
const DECADES: usize = 7;

/// Number of finite boundaries.
pub const BOUND_COUNT: usize = DECADES * MANTISSAS_X10.len() + 1;
/// Number of buckets: one per boundary, plus the overflow bucket.
pub const BUCKET_COUNT: usize = BOUND_COUNT + 1;

/// Upper bounds of the buckets, in microseconds (the overflow bucket has none).
pub const BOUNDS_US: [u64; BOUND_COUNT] = bounds();

const fn bounds() -> [u64; BOUND_COUNT] {
    let mut out = [0u64; BOUND_COUNT];
    let mut decade = 0;
    // 100 µs = 10 (mantissa x10) * 10 µs.
    let mut scale = 10u64;
    let mut i = 0;
    while decade < DECADES {
        let mut m = 0;
        while m < MANTISSAS_X10.len() {
            out[i] = MANTISSAS_X10[m] * scale;
            i += 1;
            m += 1;
        }
        scale *= 10;
        decade += 1;
    }
    out[i] = 10 * scale;
    out
}

/// The bucket a duration falls in.
pub fn bucket_of(value: Duration) -> usize {
    let us = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
    BOUNDS_US.partition_point(|&bound| bound < us)
}

/// Bucket boundaries suitable as Prometheus `le` labels: 1, 2.5 and 5 of each
/// decade, in seconds, as (bucket index, seconds).
pub fn prometheus_bounds() -> impl Iterator<Item = (usize, f64)> {
    BOUNDS_US.iter().enumerate().filter_map(|(i, &us)| {
        let mut m = us;
        while m >= 100 && m % 10 == 0 {
            m /= 10;
        }
        matches!(m, 1 | 10 | 25 | 5 | 50).then_some((i, us as f64 / 1e6))
    })
}

/// A histogram that many threads record into without locks.
#[derive(Debug)]
pub struct AtomicHistogram {
    buckets: Box<[AtomicU64; BUCKET_COUNT]>,
    sum_us: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self {
            buckets: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl AtomicHistogram {
    /// Counts one observation.
    pub fn record(&self, value: Duration) {
        self.buckets[bucket_of(value)].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// A copy of the counts so far.
    pub fn snapshot(&self) -> Histogram {
        Histogram {
            counts: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// Bucket counts, mergeable by addition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    sum_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKET_COUNT],
            sum_us: 0,
        }
    }
}

impl Histogram {
    /// Counts one observation.
    pub fn record(&mut self, value: Duration) {
        self.counts[bucket_of(value)] += 1;
        self.sum_us = self
            .sum_us
            .saturating_add(u64::try_from(value.as_micros()).unwrap_or(u64::MAX));
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sum of the observations, in microseconds.
    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// Count of one bucket.
    pub fn bucket(&self, index: usize) -> u64 {
        self.counts.get(index).copied().unwrap_or(0)
    }

    /// Adds another histogram's counts to this one.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    /// Counts added since `earlier`, a snapshot of the same histogram.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            counts: self
                .counts
                .iter()
                .zip(&earlier.counts)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
        }
    }

    /// Non-empty buckets as (index, count), for the wire.
    pub fn to_sparse(&self) -> Vec<(u32, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (i as u32, *c))
            .collect()
    }

    /// Rebuilds a histogram from (index, count) pairs; indexes out of range
    /// are refused.
    pub fn from_sparse(
        pairs: impl IntoIterator<Item = (u32, u64)>,
        sum_us: u64,
    ) -> Result<Histogram, String> {
        let mut h = Histogram {
            sum_us,
            ..Histogram::default()
        };
        for (index, count) in pairs {
            let slot = h
                .counts
                .get_mut(index as usize)
                .ok_or_else(|| format!("bucket {index} out of range (0..{BUCKET_COUNT})"))?;
            *slot = slot.saturating_add(count);
        }
        Ok(h)
    }

    /// How many values are above `bound`: whole buckets above it, and the
    /// part of the bucket it falls in that lies above it (as values spread
    /// evenly inside a bucket, the way [`Histogram::quantile`] reads them),
    /// rounded down.
    pub fn count_above(&self, bound: Duration) -> u64 {
        let us = bound.as_micros() as f64;
        let i = bucket_of(bound);
        let whole: u64 = self.counts.iter().skip(i + 1).sum();
        let Some(&count) = self.counts.get(i) else {
            return whole;
        };
        let Some(&upper) = BOUNDS_US.get(i) else {
            return whole + count;
        };
        let lower = if i == 0 { 0 } else { BOUNDS_US[i - 1] };
        let share = (upper as f64 - us) / (upper - lower) as f64;
        whole + (count as f64 * share.clamp(0.0, 1.0)).floor() as u64
    }

    /// The `q` quantile (0 to 1) by nearest rank, interpolated inside its
    /// bucket; `None` when empty. Values above the last boundary report it.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut before = 0u64;
        for (i, &count) in self.counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            if before + count >= rank {
                let lower = if i == 0 { 0 } else { BOUNDS_US[i - 1] };
                let Some(&upper) = BOUNDS_US.get(i) else {
                    return Some(Duration::from_micros(lower));
                };
                let within = (rank - before) as f64 / count as f64;
                let us = lower as f64 + within * (upper - lower) as f64;
                return Some(Duration::from_micros(us.round() as u64));
            }
            before += count;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values above a bound: whole buckets above it, part of the bucket it
    /// falls in, nothing above the largest value, everything below the
    /// smallest.
    #[test]
    fn counts_above_a_bound() {
        let mut h = Histogram::default();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        assert_eq!(h.count_above(Duration::ZERO), 100);
        assert_eq!(h.count_above(Duration::from_secs(1)), 0);
        let above_50 = h.count_above(Duration::from_millis(50));
        assert!((48..=51).contains(&above_50), "{above_50}");
        let above_95 = h.count_above(Duration::from_millis(95));
        assert!((3..=6).contains(&above_95), "{above_95}");
        // Consistent with the quantiles: about 5% above the p95.
        let p95 = h.quantile(0.95).unwrap();
        assert!((4..=6).contains(&h.count_above(p95)), "{p95:?}");
    }

    /// The boundaries run from 100 µs to 1000 s, strictly increasing, in steps
    /// of at most 12.5 %.
    #[test]
    fn boundaries() {
        assert_eq!(BOUNDS_US[0], 100);
        assert_eq!(BOUNDS_US[BOUND_COUNT - 1], 1_000_000_000);
        for w in BOUNDS_US.windows(2) {
            assert!(w[1] > w[0]);
            assert!((w[1] - w[0]) * 1000 <= w[0] * 125, "{w:?}");
        }
    }

    /// Values land in the bucket whose upper bound is the first at or above them.
    #[test]
    fn buckets_are_upper_inclusive() {
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_micros(100)), 0);
        assert_eq!(bucket_of(Duration::from_micros(101)), 1);
        assert_eq!(bucket_of(Duration::from_micros(110)), 1);
        assert_eq!(bucket_of(Duration::from_secs(1000)), BOUND_COUNT - 1);
        assert_eq!(bucket_of(Duration::from_secs(5000)), BUCKET_COUNT - 1);
    }

    /// Quantiles of a known distribution are within a bucket's width.
    #[test]
    fn quantiles_are_close() {
        let mut h = Histogram::default();
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        for (q, exact_ms) in [(0.5, 500.0), (0.95, 950.0), (0.99, 990.0)] {
            let got = h.quantile(q).unwrap().as_secs_f64() * 1000.0;
            assert!(
                (got - exact_ms).abs() / exact_ms < 0.13,
                "q{q}: {got} vs {exact_ms}"
            );
        }
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    /// Merging and sparse encoding keep every count; differences undo merges.
    #[test]
    fn merge_sparse_and_since() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(Duration::from_millis(3));
        b.record(Duration::from_millis(3));
        b.record(Duration::from_secs(2));
        let before = a.clone();
        a.merge(&b);
        assert_eq!(a.count(), 3);
        let back = Histogram::from_sparse(a.to_sparse(), a.sum_us()).unwrap();
        assert_eq!(back, a);
        assert_eq!(a.since(&before), b);
        assert!(Histogram::from_sparse([(BUCKET_COUNT as u32, 1)], 0).is_err());
    }

    /// Concurrent recording loses nothing.
    #[test]
    fn atomic_histogram_counts_everything() {
        let h = std::sync::Arc::new(AtomicHistogram::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        h.record(Duration::from_micros(i * 37));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(h.snapshot().count(), 4000);
    }

    /// Prometheus buckets are the clean 1, 2.5, 5 of each decade.
    #[test]
    fn prometheus_subset() {
        let les: Vec<f64> = prometheus_bounds().map(|(_, s)| s).collect();
        assert_eq!(&les[..4], &[0.0001, 0.00025, 0.0005, 0.001]);
        assert_eq!(*les.last().unwrap(), 1000.0);
        assert_eq!(les.len(), 3 * 7 + 1);
    }
}
