//! Token buckets for what one session sends: its frames per second, and
//! the bytes its frames put into other sessions' queues (a frame's size
//! once per recipient), so one member cannot bury the others.

use tokio::time::Instant;

pub enum Flooding {
    /// Over the limit: this frame is refused with `error rateLimited`.
    Warn,
    /// Still sending after `patience` refusals in a row: close with 1008.
    Persisting,
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Refusals in a row tolerated before the sender counts as persisting.
    patience: u32,
    refused_in_a_row: u32,
}

impl TokenBucket {
    /// `rate` 0 is no limit.
    pub fn new(rate: u32, burst: u32, patience: u32) -> Self {
        Self {
            rate: rate as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: Instant::now(),
            patience,
            refused_in_a_row: 0,
        }
    }

    /// Takes one token.
    pub fn take(&mut self) -> Result<(), Flooding> {
        self.take_n(1)
    }

    /// Takes `n` tokens. A full bucket lets one take larger than the burst
    /// through (the bucket then owes it), so a single frame the other
    /// bounds allow is never refused for its size alone.
    pub fn take_n(&mut self, n: usize) -> Result<(), Flooding> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        let n = n as f64;
        if self.tokens >= n || self.tokens >= self.burst {
            self.tokens -= n;
            self.refused_in_a_row = 0;
            return Ok(());
        }
        self.refused_in_a_row += 1;
        if self.refused_in_a_row > self.patience {
            Err(Flooding::Persisting)
        } else {
            Err(Flooding::Warn)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket::new(10, 3, 3);
        assert!((0..3).all(|_| b.take().is_ok()));
        assert!(matches!(b.take(), Err(Flooding::Warn)));
        b.last -= Duration::from_millis(150); // 1.5 tokens back
        assert!(b.take().is_ok());
        assert!(matches!(b.take(), Err(Flooding::Warn)));
    }

    #[test]
    fn persisting_floods_are_told_apart() {
        let mut b = TokenBucket::new(1, 2, 2);
        let _ = (b.take(), b.take());
        assert!(matches!(b.take(), Err(Flooding::Warn)));
        assert!(matches!(b.take(), Err(Flooding::Warn)));
        assert!(matches!(b.take(), Err(Flooding::Persisting)));
    }

    #[test]
    fn zero_rate_is_no_limit() {
        let mut b = TokenBucket::new(0, 1, 1);
        assert!((0..10_000).all(|_| b.take().is_ok()));
    }

    #[test]
    fn bytes_are_counted_and_a_full_bucket_passes_one_big_take() {
        let mut b = TokenBucket::new(1000, 4000, 10);
        assert!(b.take_n(3000).is_ok());
        assert!(matches!(b.take_n(3000), Err(Flooding::Warn)), "1000 left");
        assert!(b.take_n(1000).is_ok());
        b.last -= Duration::from_secs(10); // full again
        assert!(b.take_n(9000).is_ok(), "one take larger than the burst");
        assert!(matches!(b.take_n(1), Err(Flooding::Warn)), "owed");
    }
}
