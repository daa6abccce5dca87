//! Retries: which failures may be retried, how long to wait (exponential
//! backoff with full jitter, or the upstream's `Retry-After` up to a cap), and
//! a budget that keeps retries to a fraction of recent requests so an outage
//! does not become a retry storm.
//!
//! Generic: nothing here knows of policies, HTTP bodies or the wire types.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use tokio::time::Instant;

/// Which failure classes are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryClasses {
    pub connect: bool,
    pub timeout: bool,
    pub rate_limited: bool,
    pub server_error: bool,
}

impl RetryClasses {
    pub fn all() -> Self {
        Self {
            connect: true,
            timeout: true,
            rate_limited: true,
            server_error: true,
        }
    }

    pub fn empty() -> Self {
        Self {
            connect: false,
            timeout: false,
            rate_limited: false,
            server_error: false,
        }
    }

    /// True when failures of `class` are retried.
    pub fn covers(&self, class: Failure) -> bool {
        match class {
            Failure::Connect => self.connect,
            Failure::Timeout => self.timeout,
            Failure::RateLimited => self.rate_limited,
            Failure::ServerError => self.server_error,
        }
    }
}

/// Retry settings, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySettings {
    /// Attempts per backend, the first included.
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A longer `Retry-After` ends retries on that backend.
    pub retry_after_max: Duration,
    /// Retries may add at most this fraction of recent requests.
    pub budget_ratio: f64,
    /// Retries always allowed per second.
    pub budget_min_per_second: u32,
    pub retry_on: RetryClasses,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_attempts: 2,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            retry_after_max: Duration::from_secs(5),
            budget_ratio: 0.2,
            budget_min_per_second: 10,
            retry_on: RetryClasses::all(),
        }
    }
}

impl RetrySettings {
    /// One attempt, no retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }
}

/// A class of failure that may be retried on the same backend (see
/// [`crate::outcome::Outcome::retry_class`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be made.
    Connect,
    /// No response head within the per-try timeout.
    Timeout,
    /// 429.
    RateLimited,
    /// 5xx, or a plain answer whose body broke off.
    ServerError,
}

/// How long to wait before trying the same backend again after a failure of
/// `class` (`None`: a failure never retried there), or `None` to stop
/// retrying there and fall back: the class is not retried, the attempts
/// are used up, the body cannot be sent again, the backend's `Retry-After`
/// is above the cap, or the wait would pass the deadline (`remaining`).
/// `unit` is the jitter draw from `[0, 1)`.
pub fn next_wait(
    settings: &RetrySettings,
    class: Option<Failure>,
    retry_after: Option<Duration>,
    tries: u32,
    replayable: bool,
    remaining: Duration,
    unit: f64,
) -> Option<Duration> {
    let class = class?;
    if tries >= settings.max_attempts || !settings.retry_on.covers(class) || !replayable {
        return None;
    }
    let wait = match retry_after {
        Some(ra) if ra > settings.retry_after_max => return None,
        Some(ra) => ra,
        None => backoff(settings, tries.saturating_sub(1), unit),
    };
    (wait < remaining).then_some(wait)
}

/// A backend's cool-down after a 429 with `Retry-After`: until it ends,
/// requests of every caller that have somewhere else to go go there at once,
/// and return when it ends. Kept per (policy, backend) across reloads.
#[derive(Debug, Default)]
pub struct CoolDown {
    until: Mutex<Option<Instant>>,
}

impl CoolDown {
    /// Starts (or extends) the cool-down to `until`.
    pub fn start(&self, until: Instant) {
        let mut u = crate::lock(&self.until);
        if u.is_none_or(|t| t < until) {
            *u = Some(until);
        }
    }

    /// The time left at `now`, while cooling down.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        let u = *crate::lock(&self.until);
        u.filter(|t| *t > now).map(|t| t - now)
    }
}

/// Exponential backoff with full jitter: a uniform draw from
/// `[0, min(max, base * 2^retry)]`, where `retry` counts from 0. `unit` is a
/// draw from `[0, 1)`.
pub fn backoff(settings: &RetrySettings, retry: u32, unit: f64) -> Duration {
    let exp = settings
        .backoff_base
        .saturating_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX));
    let ceiling = exp.min(settings.backoff_max);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// The wait a `Retry-After` header asks for: delay-seconds or an HTTP date
/// (relative to `now`). `None` when absent or unreadable.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate_parse(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form HTTP
/// requires senders to use.
fn httpdate_parse(s: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: u64 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as u64
        + 1;
    let year: u64 = year.parse().ok()?;
    let hms: Vec<u64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    if year < 1970 || !(1..=31).contains(&day) || *h > 23 || *m > 59 || *sec > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + m * 60 + sec;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Number of one-second slots the budget looks back over.
const BUDGET_WINDOW_SECS: u64 = 10;

/// Retries allowed as a fraction of the requests of the last ten seconds, plus
/// a floor per second.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    start: Instant,
    slots: Mutex<[Slot; BUDGET_WINDOW_SECS as usize]>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    second: u64,
    requests: u64,
    retries: u64,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        Self {
            ratio,
            min_per_second,
            start: Instant::now(),
            slots: Mutex::new([Slot::default(); BUDGET_WINDOW_SECS as usize]),
        }
    }

    fn now_second(&self) -> u64 {
        Instant::now().duration_since(self.start).as_secs()
    }

    fn with_slots<R>(
        &self,
        f: impl FnOnce(&mut [Slot; BUDGET_WINDOW_SECS as usize], u64) -> R,
    ) -> R {
        let second = self.now_second();
        let mut slots = match self.slots.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let slot = &mut slots[(second % BUDGET_WINDOW_SECS) as usize];
        if slot.second != second {
            *slot = Slot {
                second,
                ..Slot::default()
            };
        }
        f(&mut slots, second)
    }

    /// Counts a request (each request funds `ratio` retries).
    pub fn deposit(&self) {
        self.with_slots(|slots, second| {
            slots[(second % BUDGET_WINDOW_SECS) as usize].requests += 1
        });
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_withdraw(&self) -> bool {
        self.with_slots(|slots, second| {
            let recent = |s: &&Slot| s.second + BUDGET_WINDOW_SECS > second;
            let requests: u64 = slots.iter().filter(recent).map(|s| s.requests).sum();
            let retries: u64 = slots.iter().filter(recent).map(|s| s.retries).sum();
            let current = &mut slots[(second % BUDGET_WINDOW_SECS) as usize];
            let floor_ok = current.retries < u64::from(self.min_per_second);
            // A budget younger than its window has seen only part of one:
            // its requests count as the whole window's at the same rate, so
            // a fresh agent falls back as a warm one would.
            let age = Instant::now().duration_since(self.start).as_secs_f64();
            let window = BUDGET_WINDOW_SECS as f64;
            let scale = if age < window {
                window / age.max(1.0)
            } else {
                1.0
            };
            let ratio_ok = (retries + 1) as f64 <= self.ratio * requests as f64 * scale;
            if floor_ok || ratio_ok {
                current.retries += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cool-down lasts until its end, is extended by a later one, and is
    /// never shortened.
    #[tokio::test(start_paused = true)]
    async fn cool_downs() {
        let c = CoolDown::default();
        let t0 = Instant::now();
        assert_eq!(c.remaining(t0), None);
        c.start(t0 + Duration::from_secs(2));
        assert_eq!(c.remaining(t0), Some(Duration::from_secs(2)));
        c.start(t0 + Duration::from_secs(1));
        assert_eq!(
            c.remaining(t0),
            Some(Duration::from_secs(2)),
            "not shortened"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(c.remaining(Instant::now()), None, "over");
        c.start(Instant::now() + Duration::from_secs(3));
        assert_eq!(c.remaining(Instant::now()), Some(Duration::from_secs(3)));
    }

    /// The backoff ceiling doubles per retry up to the cap; jitter scales it.
    #[test]
    fn backoff_is_capped_full_jitter() {
        let s = RetrySettings::default();
        assert_eq!(
            backoff(&s, 0, 0.999_999),
            Duration::from_millis(100).mul_f64(0.999_999)
        );
        assert_eq!(backoff(&s, 3, 0.5), Duration::from_millis(400));
        assert_eq!(backoff(&s, 10, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(&s, 40, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(&s, 2, 0.0), Duration::ZERO);
    }

    /// A retry waits the backoff or the Retry-After; it stops at the attempt
    /// limit, for classes not retried, bodies too large to resend, a
    /// Retry-After above the cap, and waits past the deadline.
    #[test]
    fn plans_the_next_try() {
        let s = RetrySettings {
            max_attempts: 3,
            ..RetrySettings::default()
        };
        let long = Duration::from_secs(60);
        let plan = |class, ra, tries, replayable, remaining| {
            next_wait(&s, class, ra, tries, replayable, remaining, 0.5)
        };
        let server = Some(Failure::ServerError);
        assert_eq!(
            plan(server, None, 1, true, long),
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            plan(server, None, 2, true, long),
            Some(Duration::from_millis(100))
        );
        assert_eq!(plan(server, None, 3, true, long), None, "attempts used up");
        assert_eq!(plan(None, None, 1, true, long), None, "never retried");
        assert_eq!(plan(server, None, 1, false, long), None, "not replayable");
        let ra = Some(Duration::from_secs(3));
        assert_eq!(plan(Some(Failure::RateLimited), ra, 1, true, long), ra);
        assert_eq!(
            plan(
                Some(Failure::RateLimited),
                Some(Duration::from_secs(6)),
                1,
                true,
                long
            ),
            None,
            "Retry-After above the cap"
        );
        assert_eq!(
            plan(
                Some(Failure::RateLimited),
                ra,
                1,
                true,
                Duration::from_secs(2)
            ),
            None,
            "past the deadline"
        );
        let only_connect = RetrySettings {
            retry_on: RetryClasses {
                connect: true,
                ..RetryClasses::empty()
            },
            ..s.clone()
        };
        assert_eq!(
            next_wait(&only_connect, server, None, 1, true, long, 0.5),
            None
        );
    }

    /// Retry-After in seconds and as an HTTP date.
    #[test]
    fn reads_retry_after() {
        let mut h = HeaderMap::new();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(retry_after(&h, now), None);
        h.insert(http::header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(3)));
        h.insert(http::header::RETRY_AFTER, "0.5".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_millis(500)));
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT.
        h.insert(
            http::header::RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:47 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(10)));
        h.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }

    /// The budget allows the floor per second, then a fraction of requests,
    /// and refills as time passes.
    #[tokio::test(start_paused = true)]
    async fn budget_caps_retries() {
        let budget = RetryBudget::new(0.2, 2);
        // Past its first window (see the next test for a young budget).
        tokio::time::advance(Duration::from_secs(BUDGET_WINDOW_SECS)).await;
        // No requests: only the floor.
        assert!(budget.try_withdraw());
        assert!(budget.try_withdraw());
        assert!(!budget.try_withdraw());
        // 100 requests fund 20 retries in the window (2 already taken).
        for _ in 0..100 {
            budget.deposit();
        }
        let granted = (0..100).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 18);
        // A new second brings the floor back; the ratio stays spent.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(budget.try_withdraw());
        assert!(budget.try_withdraw());
        assert!(!budget.try_withdraw());
        // Past the window, old requests and retries are forgotten.
        tokio::time::advance(Duration::from_secs(BUDGET_WINDOW_SECS)).await;
        for _ in 0..10 {
            budget.deposit();
        }
        let granted = (0..10).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 2);
    }

    /// A budget younger than its window counts its requests as a whole
    /// window's at the same rate: a fresh agent may fall back as much as a
    /// warm one seeing the same traffic.
    #[tokio::test(start_paused = true)]
    async fn a_young_budget_counts_a_whole_window() {
        let young = RetryBudget::new(0.2, 0);
        // 50 requests in its first second: 500 over a window, 100 retries.
        for _ in 0..50 {
            young.deposit();
        }
        assert_eq!((0..200).filter(|_| young.try_withdraw()).count(), 100);
        // At 5 s, its 100 requests count twice: 40 retries in all.
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..50 {
            young.deposit();
        }
        assert_eq!((0..200).filter(|_| young.try_withdraw()).count(), 0);
        // A warm budget with 500 requests in its window allows 100 too.
        let warm = RetryBudget::new(0.2, 0);
        tokio::time::advance(Duration::from_secs(BUDGET_WINDOW_SECS)).await;
        for _ in 0..500 {
            warm.deposit();
        }
        assert_eq!((0..200).filter(|_| warm.try_withdraw()).count(), 100);
    }
}
