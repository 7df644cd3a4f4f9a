//! Side-by-side benchmarks against the Rust peers: `echo` (runtime), `pgload` (drivers),
//! `pgconnect` (connection set-up),
//! `pgbulk` (issue 19's bulk paths).
//!
//! Shared pieces: a fixed-size latency histogram and small statistics helpers.

pub mod bulk;
pub mod connect;
pub mod http;
pub mod pgload;
pub mod report;
pub mod suite;

use std::time::Duration;

/// A log-linear latency histogram over nanoseconds: exact below 64 ns, then 32 sub-buckets per
/// power of two (about 3 % relative error). Fixed size, so recording never allocates.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

/// Sub-buckets per power of two (as a shift).
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Values below this are their own bucket.
const LINEAR: u64 = 2 * SUB;
const BUCKETS: usize = (LINEAR + (64 - (SUB_BITS as u64 + 1)) * SUB) as usize;

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }

    fn index(ns: u64) -> usize {
        if ns < LINEAR {
            return ns as usize;
        }
        let exp = 63 - u64::from(ns.leading_zeros()); // >= SUB_BITS + 1
        let mantissa = (ns >> (exp - u64::from(SUB_BITS))) - SUB; // 0..SUB
        (LINEAR + (exp - u64::from(SUB_BITS) - 1) * SUB + mantissa) as usize
    }

    /// The midpoint (ns) of the values that fall in bucket `i`.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < LINEAR {
            return i;
        }
        let exp = (i - LINEAR) / SUB + u64::from(SUB_BITS) + 1;
        let mantissa = (i - LINEAR) % SUB;
        let shift = exp - u64::from(SUB_BITS);
        let low = (SUB + mantissa) << shift;
        low + (1u64 << shift) / 2
    }

    /// Records one sample.
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::index(ns)] += 1;
        self.total += 1;
    }

    /// How many samples were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    /// The `q` quantile (0.0..=1.0), or zero for an empty histogram.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_nanos(Self::value(i));
            }
        }
        Duration::from_nanos(Self::value(BUCKETS - 1))
    }
}

/// The median of `values` (mean of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_within_three_percent() {
        for ns in [
            0u64,
            1,
            63,
            64,
            65,
            100,
            1_000,
            12_345,
            999_999,
            1 << 40,
            u64::MAX / 2,
        ] {
            let i = Histogram::index(ns);
            assert!(i < BUCKETS, "{ns} -> {i}");
            let v = Histogram::value(i);
            let err = (v as f64 - ns as f64).abs() / (ns.max(1) as f64);
            assert!(err <= 0.032, "{ns} -> bucket {i} -> {v} ({err})");
        }
        assert!(Histogram::index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile(0.5).as_secs_f64() * 1e6;
        let p99 = h.quantile(0.99).as_secs_f64() * 1e6;
        assert!((p50 - 50.0).abs() < 2.0, "{p50}");
        assert!((p99 - 99.0).abs() < 4.0, "{p99}");
        assert_eq!(h.count(), 100);
        assert_eq!(Histogram::new().quantile(0.5), Duration::ZERO);
    }

    #[test]
    fn median_odd_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
