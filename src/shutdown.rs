//! The shutdown sequence's shared clock: whether to stop, and the one deadline every step
//! after reading stops is bounded by.
//!
//! Owns: the stop flag, the deadline (`shutdown_timeout` from the first signal), and the
//! "now" flag of a second signal. Components poll it; none waits on another past the
//! deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Shutdown {
    stop: AtomicBool,
    deadline: OnceLock<Instant>,
    /// A second signal: the deadline is now.
    urgent: AtomicBool,
}

impl Shutdown {
    /// Starts the shutdown: reading stops, everything else must be done within `timeout`.
    /// A second call (a second signal) moves the deadline to now.
    pub fn begin(&self, timeout: Duration) {
        let now = Instant::now();
        // Saturating: a timeout too long for the clock is "a year", never a panic.
        let deadline = now
            .checked_add(timeout)
            .or_else(|| now.checked_add(Duration::from_secs(365 * 86_400)))
            .unwrap_or(now);
        if self.deadline.set(deadline).is_err() {
            // Already stopping: a second signal means now.
            self.urgent.store(true, Ordering::SeqCst);
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub fn deadline_passed(&self) -> bool {
        self.urgent.load(Ordering::SeqCst)
            || self.deadline.get().is_some_and(|d| Instant::now() >= *d)
    }

    /// Time left until the deadline (zero when not stopping or past it).
    pub fn remaining(&self) -> Duration {
        if self.urgent.load(Ordering::SeqCst) {
            return Duration::ZERO;
        }
        self.deadline
            .get()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_signal_moves_the_deadline_to_now() {
        let s = Shutdown::default();
        assert!(!s.stopping() && !s.deadline_passed());
        s.begin(Duration::from_secs(3600));
        assert!(s.stopping() && !s.deadline_passed());
        assert!(s.remaining() > Duration::from_secs(3500));
        s.begin(Duration::from_secs(3600));
        assert!(s.deadline_passed());
        assert_eq!(s.remaining(), Duration::ZERO);
    }

    #[test]
    fn any_timeout_is_saturated_not_a_panic() {
        let s = Shutdown::default();
        s.begin(Duration::MAX);
        assert!(s.stopping() && !s.deadline_passed());
        assert!(s.remaining() > Duration::from_secs(3600));
    }
}
