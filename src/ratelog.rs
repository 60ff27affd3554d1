//! Rate limiting for warnings about bad input, so a file full of garbage produces a few log
//! lines, not millions. Every occurrence is still counted in the self-metrics.

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub struct RateLimited {
    every: Duration,
    last: HashMap<&'static str, (Instant, u64)>,
}

impl RateLimited {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: HashMap::new(),
        }
    }

    /// Whether to log an occurrence of `key` now; `Some(n)` carries how many were suppressed
    /// since the last one logged.
    pub fn allow(&mut self, key: &'static str) -> Option<u64> {
        let now = Instant::now();
        match self.last.get_mut(key) {
            Some((at, suppressed)) if now.duration_since(*at) < self.every => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                *at = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                self.last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suppresses_within_the_interval() {
        let mut r = RateLimited::new(Duration::from_secs(3600));
        assert_eq!(r.allow("a"), Some(0));
        assert_eq!(r.allow("a"), None);
        assert_eq!(r.allow("b"), Some(0));
        let mut r = RateLimited::new(Duration::ZERO);
        assert_eq!(r.allow("a"), Some(0));
        assert_eq!(r.allow("a"), Some(0));
    }
}
