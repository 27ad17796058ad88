//! How much one peer may ask of a node.

use std::time::Instant;

/// A token bucket: `rate` messages per second on average, bursts of up to `burst`.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(rate: f64, burst: f64) -> RateLimit {
        RateLimit {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one message's worth; false when the peer is over its rate.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let mut r = RateLimit::new(10.0, 5.0);
        assert_eq!((0..8).filter(|_| r.take()).count(), 5);
        std::thread::sleep(std::time::Duration::from_millis(250));
        let more = (0..8).filter(|_| r.take()).count();
        assert!((2..=3).contains(&more), "{more}");
    }
}
