//! The server's one source of wall-clock time (Unix milliseconds, the unit
//! of every wire timestamp). Token expiry, sale windows, reservation
//! deadlines, coupon expiry, mutes, slow mode and poll closes all read it,
//! so a test can move time forward instead of sleeping: start the server
//! with a [`ManualClock`]'s clock (`flashcast::start_with_clock`) and
//! [`advance`](ManualClock::advance) it past a deadline.
//!
//! Timers that only pace work (ticks, sweeps, timeouts) stay on tokio's
//! monotonic clock; they decide when to look, this clock decides what is due.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A handle to the time; cheap to clone. The system clock unless it was
/// made by a [`ManualClock`].
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<Manual>>,
}

impl Clock {
    /// The operating system's wall clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match &self.manual {
            Some(m) => m.now_ms(),
            None => flashcast_wire::now_ms(),
        }
    }

    /// Whole seconds since the Unix epoch.
    pub fn now_secs(&self) -> u64 {
        self.now_ms() / 1_000
    }
}

#[derive(Debug)]
struct Manual {
    /// Where a frozen clock stands; None runs with the system clock.
    frozen_at: Option<u64>,
    /// Milliseconds the test moved the clock forward.
    advanced: AtomicU64,
}

impl Manual {
    fn now_ms(&self) -> u64 {
        let base = self.frozen_at.unwrap_or_else(flashcast_wire::now_ms);
        base + self.advanced.load(Ordering::Acquire)
    }
}

/// A clock a test moves forward by hand: for tests only.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Manual>);

impl ManualClock {
    /// Stands still at `start_ms` (Unix ms) until advanced: exact, for unit
    /// tests of what is due when.
    pub fn frozen(start_ms: u64) -> ManualClock {
        ManualClock(Arc::new(Manual {
            frozen_at: Some(start_ms),
            advanced: AtomicU64::new(0),
        }))
    }

    /// Runs with the system clock, plus every [`advance`](Self::advance):
    /// for a whole server under test, whose pacing (throttled counts, ticks)
    /// still needs time to flow while the test skips the waits.
    pub fn running() -> ManualClock {
        ManualClock(Arc::new(Manual {
            frozen_at: None,
            advanced: AtomicU64::new(0),
        }))
    }

    /// The handle to give the server; it reads this clock.
    pub fn clock(&self) -> Clock {
        Clock {
            manual: Some(self.0.clone()),
        }
    }

    /// Moves time forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.0
            .advanced
            .fetch_add(by.as_millis() as u64, Ordering::AcqRel);
    }

    pub fn now_ms(&self) -> u64 {
        self.0.now_ms()
    }

    pub fn now_secs(&self) -> u64 {
        self.now_ms() / 1_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_clock_moves_only_when_advanced() {
        let manual = ManualClock::frozen(1_000);
        let clock = manual.clock();
        assert_eq!(clock.now_ms(), 1_000);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now_ms(), 1_000);
        manual.advance(Duration::from_millis(2_500));
        assert_eq!(clock.now_ms(), 3_500);
        assert_eq!(clock.clone().now_secs(), 3);
    }

    #[test]
    fn a_running_clock_keeps_the_jumps_it_was_given() {
        let manual = ManualClock::running();
        let before = flashcast_wire::now_ms();
        manual.advance(Duration::from_secs(3_600));
        let now = manual.clock().now_ms();
        assert!(now >= before + 3_600_000 && now < before + 3_660_000);
    }

    #[test]
    fn the_system_clock_is_the_wall_clock() {
        let before = flashcast_wire::now_ms();
        let now = Clock::system().now_ms();
        assert!(now >= before && now < before + 60_000);
    }
}
