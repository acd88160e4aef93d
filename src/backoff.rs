//! Full-jitter exponential backoff as a plain, validated value type.
//!
//! The n-th retry (0-based) waits a uniformly random time in
//! `[0, min(max, initial · 2ⁿ)]` ("full jitter"): many bridges restarting
//! against one gateway spread out instead of retrying in lockstep.

use std::time::Duration;

/// Backoff bounds, checked on construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

/// Why a pair of bounds was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackoffError {
    #[error("initial delay must be at least 1 ms")]
    ZeroInitial,
    #[error("maximum delay ({max_ms} ms) must not be below the initial delay ({initial_ms} ms)")]
    MaxBelowInitial { initial_ms: u64, max_ms: u64 },
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Result<Self, BackoffError> {
        if initial < Duration::from_millis(1) {
            return Err(BackoffError::ZeroInitial);
        }
        if max < initial {
            return Err(BackoffError::MaxBelowInitial {
                initial_ms: initial.as_millis() as u64,
                max_ms: max.as_millis() as u64,
            });
        }
        Ok(Backoff { initial, max })
    }

    pub fn initial(&self) -> Duration {
        self.initial
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    /// The upper bound of the wait before retry `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        // 2^31 · 1 ms already exceeds any sane max: saturate instead of overflowing.
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The wait before retry `attempt`, given a uniform sample `unit` in `[0, 1)`.
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.ceiling(attempt).mul_f64(unit)
    }

    /// The wait before retry `attempt`, with a random sample.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rejects_bad_bounds() {
        assert_eq!(Backoff::new(ms(0), ms(10)), Err(BackoffError::ZeroInitial));
        assert_eq!(
            Backoff::new(ms(100), ms(10)),
            Err(BackoffError::MaxBelowInitial {
                initial_ms: 100,
                max_ms: 10
            })
        );
        assert!(Backoff::new(ms(10), ms(10)).is_ok());
    }

    #[test]
    fn ceiling_doubles_then_caps_and_never_overflows() {
        let b = Backoff::new(ms(250), ms(30_000)).unwrap();
        let ceilings: Vec<u64> = (0..9).map(|a| b.ceiling(a).as_millis() as u64).collect();
        assert_eq!(
            ceilings,
            vec![250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]
        );
        assert_eq!(b.ceiling(u32::MAX), ms(30_000));
        assert_eq!(b.ceiling(64), ms(30_000));
    }

    #[test]
    fn delay_is_within_zero_and_ceiling() {
        let b = Backoff::new(ms(250), ms(30_000)).unwrap();
        assert_eq!(b.delay_with(3, 0.0), Duration::ZERO);
        assert_eq!(b.delay_with(3, 0.5), ms(1000));
        assert_eq!(b.delay_with(3, 7.0), ms(2000));
        assert_eq!(b.delay_with(3, f64::NAN), Duration::ZERO);
        for attempt in 0..40 {
            for _ in 0..50 {
                let d = b.delay(attempt);
                assert!(d <= b.ceiling(attempt), "{d:?} > ceiling at {attempt}");
            }
        }
    }

    #[test]
    fn delays_are_spread_not_lockstep() {
        let b = Backoff::new(ms(1000), ms(30_000)).unwrap();
        let samples: Vec<Duration> = (0..200).map(|_| b.delay(4)).collect();
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(
            distinct.len() > 150,
            "only {} distinct delays",
            distinct.len()
        );
        let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / 200.0;
        // Uniform on [0, 16 s]: the mean is 8 s; 200 samples keep it well within 6..10.
        assert!((6.0..10.0).contains(&mean), "mean {mean}");
    }
}
