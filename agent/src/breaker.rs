//! A circuit breaker per backend: state updated from classified outcomes and
//! read through a cheap gate.
//!
//! Closed: requests pass; the breaker trips on `consecutive_failures` in a
//! row, or when the failure rate over `window` reaches `failure_rate` with at
//! least `min_requests` outcomes. Open: requests are refused (callers fall
//! back at once) for the open time, which grows by `open_time_multiplier` on
//! each trip in a row, up to `max_open_time`. Half-open: `half_open_probes`
//! requests are let through; if all succeed the breaker closes and the trip
//! count resets, one failure opens it again.
//!
//! A backend that cannot serve at all (it rejects the requests or answers
//! malformed ones) trips the breaker at once, whatever the mode; one whose
//! quota is exhausted keeps it open for `quota_open_time`.
//!
//! Generic: it knows outcomes only as their [`Health`].

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

pub use crate::outcome::Health;

/// Breaker settings, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    /// Trip after this many failures in a row; 0 turns this mode off.
    pub consecutive_failures: u32,
    /// Trip at this failure fraction (0 to 1) over the window; `None` is off.
    pub failure_rate: Option<f64>,
    pub window: Duration,
    /// Fewest outcomes in the window before the rate counts.
    pub min_requests: u32,
    pub open_time: Duration,
    pub open_time_multiplier: f64,
    pub max_open_time: Duration,
    pub half_open_probes: u32,
    /// Open time after a quota-exhausted answer.
    pub quota_open_time: Duration,
    /// A 429 counts as a failure.
    pub count_rate_limited: bool,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 0,
            failure_rate: None,
            window: Duration::from_secs(10),
            min_requests: 20,
            open_time: Duration::from_secs(5),
            open_time_multiplier: 2.0,
            max_open_time: Duration::from_secs(60),
            half_open_probes: 1,
            quota_open_time: Duration::from_secs(300),
            count_rate_limited: true,
        }
    }
}

/// The state as reported in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// Gauge value: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

const SLOTS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    epoch: u64,
    successes: u32,
    failures: u32,
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { issued: u32, succeeded: u32 },
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    /// What opened the breaker last.
    cause: Health,
    consecutive: u32,
    /// Trips in a row without a successful close in between.
    trips: u32,
    slots: [Slot; SLOTS],
}

/// One backend's breaker.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    start: Instant,
    inner: Mutex<Inner>,
}

/// Leave to send one request through the breaker. A half-open probe that is
/// dropped without an outcome gives its slot back.
#[derive(Debug)]
pub struct Permit {
    probe: Option<Arc<Breaker>>,
}

impl Permit {
    /// A permit that belongs to no breaker (the backend has none).
    pub fn unlimited() -> Self {
        Self { probe: None }
    }

    /// Reports the outcome of the request this permit let through. Returns
    /// whether that opened the breaker.
    pub fn record(mut self, breaker: Option<&Breaker>, health: Health) -> bool {
        let probe = self.probe.take().is_some();
        breaker.is_some_and(|b| b.record(health, probe))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(b) = self.probe.take() {
            b.release_probe();
        }
    }
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            start: Instant::now(),
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                cause: Health::Failure,
                consecutive: 0,
                trips: 0,
                slots: [Slot::default(); SLOTS],
            }),
        }
    }

    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The current state (an open breaker whose time is up reads half-open).
    pub fn state(&self) -> BreakerState {
        match self.lock().phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if Instant::now() >= until => BreakerState::HalfOpen,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Asks to send a request: refused while the breaker is open (or all
    /// half-open probes are out), with what opened it: plain failures, or a
    /// backend that rejects the app or answers malformed ones.
    pub fn try_acquire(self: &Arc<Self>) -> Result<Permit, Health> {
        let mut inner = self.lock();
        match inner.phase {
            Phase::Closed => Ok(Permit { probe: None }),
            Phase::Open { until } => {
                if Instant::now() < until {
                    return Err(inner.cause);
                }
                inner.phase = Phase::HalfOpen {
                    issued: 1,
                    succeeded: 0,
                };
                Ok(Permit {
                    probe: Some(self.clone()),
                })
            }
            Phase::HalfOpen { ref mut issued, .. } => {
                if *issued >= self.settings.half_open_probes {
                    return Err(inner.cause);
                }
                *issued += 1;
                Ok(Permit {
                    probe: Some(self.clone()),
                })
            }
        }
    }

    fn release_probe(&self) {
        let mut inner = self.lock();
        if let Phase::HalfOpen { ref mut issued, .. } = inner.phase {
            *issued = issued.saturating_sub(1);
        }
    }

    /// Learns an outcome; returns whether it opened the breaker.
    fn record(&self, health: Health, probe: bool) -> bool {
        let mut inner = self.lock();
        let now = Instant::now();
        let success = health == Health::Success;
        match inner.phase {
            Phase::HalfOpen {
                ref mut succeeded, ..
            } => {
                // Outcomes of requests let through before the breaker opened
                // say nothing about the backend now.
                if !probe {
                    return false;
                }
                if success {
                    *succeeded += 1;
                    if *succeeded >= self.settings.half_open_probes {
                        inner.phase = Phase::Closed;
                        inner.trips = 0;
                        inner.consecutive = 0;
                        inner.slots = [Slot::default(); SLOTS];
                    }
                    false
                } else {
                    self.trip(&mut inner, now, health);
                    true
                }
            }
            Phase::Open { .. } => false,
            Phase::Closed => {
                self.count(&mut inner, now, success);
                if success {
                    inner.consecutive = 0;
                    return false;
                }
                inner.consecutive += 1;
                let by_count = self.settings.consecutive_failures > 0
                    && inner.consecutive >= self.settings.consecutive_failures;
                let trips =
                    by_count || health != Health::Failure || self.rate_exceeded(&inner, now);
                if trips {
                    self.trip(&mut inner, now, health);
                }
                trips
            }
        }
    }

    fn trip(&self, inner: &mut Inner, now: Instant, health: Health) {
        let factor = self
            .settings
            .open_time_multiplier
            .powi(i32::try_from(inner.trips).unwrap_or(i32::MAX));
        let mut open = self
            .settings
            .open_time
            .mul_f64(factor.min(1e6))
            .min(self.settings.max_open_time);
        if health == Health::Exhausted {
            open = open.max(self.settings.quota_open_time);
        }
        inner.trips = inner.trips.saturating_add(1);
        inner.cause = health;
        inner.consecutive = 0;
        inner.slots = [Slot::default(); SLOTS];
        inner.phase = Phase::Open { until: now + open };
    }

    fn slot_width(&self) -> Duration {
        (self.settings.window / SLOTS as u32).max(Duration::from_millis(1))
    }

    fn epoch(&self, now: Instant) -> u64 {
        let width = self.slot_width().as_nanos().max(1);
        (now.duration_since(self.start).as_nanos() / width) as u64
    }

    fn count(&self, inner: &mut Inner, now: Instant, success: bool) {
        if self.settings.failure_rate.is_none() {
            return;
        }
        let epoch = self.epoch(now);
        let slot = &mut inner.slots[(epoch % SLOTS as u64) as usize];
        if slot.epoch != epoch {
            *slot = Slot {
                epoch,
                ..Slot::default()
            };
        }
        if success {
            slot.successes += 1;
        } else {
            slot.failures += 1;
        }
    }

    fn rate_exceeded(&self, inner: &Inner, now: Instant) -> bool {
        let Some(threshold) = self.settings.failure_rate else {
            return false;
        };
        let epoch = self.epoch(now);
        let (ok, failed) = inner
            .slots
            .iter()
            .filter(|s| s.epoch + SLOTS as u64 > epoch && s.successes + s.failures > 0)
            .fold((0u64, 0u64), |(o, f), s| {
                (o + u64::from(s.successes), f + u64::from(s.failures))
            });
        let total = ok + failed;
        total >= u64::from(self.settings.min_requests) && failed as f64 >= threshold * total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consecutive(n: u32) -> Arc<Breaker> {
        Arc::new(Breaker::new(BreakerSettings {
            consecutive_failures: n,
            open_time: Duration::from_secs(5),
            open_time_multiplier: 2.0,
            max_open_time: Duration::from_secs(15),
            ..BreakerSettings::default()
        }))
    }

    /// Records an outcome; returns whether it opened the breaker.
    fn outcome(b: &Arc<Breaker>, success: bool) -> bool {
        let permit = b.try_acquire().expect("admitted");
        let health = if success {
            Health::Success
        } else {
            Health::Failure
        };
        permit.record(Some(b), health)
    }

    /// N failures in a row open it; a success in between resets the count.
    #[tokio::test(start_paused = true)]
    async fn trips_on_consecutive_failures() {
        let b = consecutive(3);
        outcome(&b, false);
        outcome(&b, false);
        outcome(&b, true);
        outcome(&b, false);
        assert!(!outcome(&b, false), "not open yet");
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(outcome(&b, false), "the failure that opens it says so");
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().is_err());
    }

    /// After the open time one probe passes; success closes it.
    #[tokio::test(start_paused = true)]
    async fn half_open_probe_closes() {
        let b = consecutive(1);
        outcome(&b, false);
        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert!(b.try_acquire().is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.try_acquire().expect("probe");
        assert!(b.try_acquire().is_err(), "only one probe at a time");
        probe.record(Some(&b), Health::Success);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire().is_ok());
    }

    /// Asserts the breaker refuses requests for exactly `secs` from now.
    async fn open_for(b: &Arc<Breaker>, secs: u64) {
        tokio::time::advance(Duration::from_secs(secs) - Duration::from_millis(1)).await;
        assert!(b.try_acquire().is_err(), "still open just before {secs}s");
        tokio::time::advance(Duration::from_millis(1)).await;
    }

    /// A failed probe reopens it for longer each time, up to the cap; a close
    /// resets the growth.
    #[tokio::test(start_paused = true)]
    async fn open_time_grows_and_resets() {
        let b = consecutive(1);
        outcome(&b, false);
        open_for(&b, 5).await;
        outcome(&b, false); // the probe fails
        open_for(&b, 10).await;
        outcome(&b, false);
        open_for(&b, 15).await; // 20 s, capped at 15 s
        outcome(&b, true); // the probe succeeds: closed
        assert_eq!(b.state(), BreakerState::Closed);
        outcome(&b, false);
        open_for(&b, 5).await; // growth starts over
    }

    /// A dropped probe gives its slot back.
    #[tokio::test(start_paused = true)]
    async fn dropped_probe_is_released() {
        let b = consecutive(1);
        outcome(&b, false);
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(b.try_acquire().expect("probe"));
        assert!(b.try_acquire().is_ok(), "the slot came back");
    }

    /// The failure-rate mode needs the minimum volume, then trips at the rate.
    #[tokio::test(start_paused = true)]
    async fn trips_on_failure_rate() {
        let b = Arc::new(Breaker::new(BreakerSettings {
            failure_rate: Some(0.5),
            min_requests: 10,
            window: Duration::from_secs(10),
            ..BreakerSettings::default()
        }));
        for _ in 0..4 {
            outcome(&b, false);
        }
        assert_eq!(b.state(), BreakerState::Closed, "below the minimum volume");
        for _ in 0..5 {
            outcome(&b, true);
        }
        outcome(&b, false); // 5 of 10 failed
        assert_eq!(b.state(), BreakerState::Open);
    }

    /// A rejected or malformed answer trips the breaker at once, whatever
    /// the mode; quota exhaustion keeps it open for the quota open time.
    #[tokio::test(start_paused = true)]
    async fn broken_backends_trip_at_once() {
        let b = Arc::new(Breaker::new(BreakerSettings {
            consecutive_failures: 5,
            open_time: Duration::from_secs(5),
            quota_open_time: Duration::from_secs(300),
            count_rate_limited: true,
            ..BreakerSettings::default()
        }));
        b.try_acquire().unwrap().record(Some(&b), Health::Broken);
        assert_eq!(b.try_acquire().unwrap_err(), Health::Broken, "the cause");
        open_for(&b, 5).await;
        // The probe finds quota exhausted: open for the quota time.
        b.try_acquire().unwrap().record(Some(&b), Health::Exhausted);
        open_for(&b, 300).await;
        b.try_acquire().unwrap().record(Some(&b), Health::Success);
        assert_eq!(b.state(), BreakerState::Closed);
        // Plain failures still need five in a row.
        for _ in 0..4 {
            outcome(&b, false);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    /// Failures older than the window are forgotten.
    #[tokio::test(start_paused = true)]
    async fn failure_rate_window_slides() {
        let b = Arc::new(Breaker::new(BreakerSettings {
            failure_rate: Some(0.5),
            min_requests: 10,
            window: Duration::from_secs(10),
            ..BreakerSettings::default()
        }));
        for _ in 0..9 {
            outcome(&b, false);
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        for _ in 0..9 {
            outcome(&b, true);
        }
        outcome(&b, false); // 1 of 10 in the window
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
