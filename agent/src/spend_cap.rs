//! Hourly spend caps in the data path: what a policy's candidate (or its
//! shadow) may cost per clock hour at this agent. Spend is added as answers
//! are priced; once it reaches the cap the cap closes, and the candidate's
//! share goes to the baseline (or mirroring stops) until the hour ends. A
//! cap is kept across reloads while its policy keeps it, so a new snapshot
//! (a rollout stage, say) does not forget the hour's spend.
//!
//! Times are whole seconds since the Unix epoch, given by the caller, so
//! the hour's turn is tested without waiting for one.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use shepherd_proto::cost::{PICOS_PER_UNIT, exact};

use crate::lock;

/// What a cap limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CapKind {
    /// The candidate's answers served and billed failures.
    Candidate,
    /// The shadow's answers.
    Shadow,
}

impl CapKind {
    pub fn label(self) -> &'static str {
        match self {
            CapKind::Candidate => "candidate",
            CapKind::Shadow => "shadow",
        }
    }
}

/// One policy's cap on one kind of spend per clock hour.
#[derive(Debug)]
pub struct HourCap {
    policy: String,
    kind: CapKind,
    window: Mutex<Window>,
    /// Set while the cap is reached in the current hour (read on every
    /// request without a lock).
    closed: AtomicBool,
}

#[derive(Debug)]
struct Window {
    hour: u64,
    spent: u128,
    limit: u128,
}

/// The current time in whole seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A limit in units of the currency, in pico-units.
fn picos(units: f64) -> u128 {
    (units * PICOS_PER_UNIT as f64).round() as u128
}

impl HourCap {
    pub fn new(policy: &str, kind: CapKind, limit: f64) -> Self {
        HourCap {
            policy: policy.to_string(),
            kind,
            window: Mutex::new(Window {
                hour: 0,
                spent: 0,
                limit: picos(limit),
            }),
            closed: AtomicBool::new(false),
        }
    }

    /// Changes the limit (a new policy revision); the hour's spend stays.
    pub fn set_limit(&self, limit: f64, now: u64) {
        let mut w = lock(&self.window);
        w.limit = picos(limit);
        let over = w.hour == now / 3600 && w.spent >= w.limit;
        self.closed.store(over, Ordering::Release);
    }

    /// Adds `cost` spent at `now`. Returns true when this reached the cap:
    /// the cap closes until the hour ends (said once in the log).
    pub fn add(&self, cost: u128, now: u64) -> bool {
        let mut w = lock(&self.window);
        self.turn(&mut w, now);
        w.spent = w.spent.saturating_add(cost);
        if w.spent < w.limit || self.closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        tracing::warn!(
            policy = %self.policy,
            cap = self.kind.label(),
            spent = %exact(w.spent),
            limit = %exact(w.limit),
            "hourly spend cap reached: {} until the hour ends",
            match self.kind {
                CapKind::Candidate => "the candidate's share goes to the baseline",
                CapKind::Shadow => "mirroring stops",
            }
        );
        true
    }

    /// True while the cap is reached at `now`; the first call in a new hour
    /// opens it again (said in the log). Lock-free while open.
    pub fn closed(&self, now: u64) -> bool {
        if !self.closed.load(Ordering::Acquire) {
            return false;
        }
        let mut w = lock(&self.window);
        self.turn(&mut w, now);
        self.closed.load(Ordering::Acquire)
    }

    /// Starts a new hour's window when `now` is in a later hour than the
    /// window's, opening the cap if it was closed.
    fn turn(&self, w: &mut Window, now: u64) {
        let hour = now / 3600;
        if w.hour == hour {
            return;
        }
        w.hour = hour;
        w.spent = 0;
        if self.closed.swap(false, Ordering::AcqRel) {
            tracing::info!(
                policy = %self.policy,
                cap = self.kind.label(),
                "a new hour: the hourly spend cap is open again"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3600;

    /// The cap closes when the hour's spend reaches it, once, stays closed
    /// for the rest of the hour, and opens when the hour turns, with the
    /// new hour's spend starting from nothing.
    #[test]
    fn trips_and_releases_with_the_hour() {
        let cap = HourCap::new("chat", CapKind::Candidate, 0.5);
        let start = 1_000 * HOUR + 10;
        let half = PICOS_PER_UNIT / 4;
        assert!(!cap.add(half, start));
        assert!(!cap.closed(start));
        assert!(cap.add(half, start + 60), "0.5 reached");
        assert!(cap.closed(start + 61));
        assert!(!cap.add(half, start + 62), "already closed: said once");
        assert!(cap.closed(start + HOUR - 11));
        // The next hour.
        assert!(!cap.closed(start + HOUR));
        assert!(!cap.add(half, start + HOUR + 1), "the new hour starts at 0");
        assert!(cap.add(half, start + HOUR + 2));
        // Spend that comes in a later hour opens the cap too, before anyone
        // asks whether it is closed.
        let cap = HourCap::new("chat", CapKind::Shadow, 0.5);
        assert!(cap.add(2 * half, start));
        assert!(!cap.add(half, start + 2 * HOUR));
        assert!(!cap.closed(start + 2 * HOUR));
    }

    /// A new limit applies at once; the hour's spend is kept.
    #[test]
    fn a_new_limit_keeps_the_hours_spend() {
        let cap = HourCap::new("chat", CapKind::Candidate, 1.0);
        let now = 5 * HOUR;
        assert!(!cap.add(PICOS_PER_UNIT / 2, now));
        cap.set_limit(0.25, now + 1);
        assert!(cap.closed(now + 2));
        cap.set_limit(2.0, now + 3);
        assert!(!cap.closed(now + 4));
    }
}
