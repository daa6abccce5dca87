//! Admission to shadow traffic: which requests are mirrored (a sticky
//! share, like the split), within a concurrency bound with a queue, a
//! request rate cap and a token cap; and the bounded list of mismatch
//! samples an operator reads. Kept across reloads while a policy's shadow
//! settings stay the same.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::lock;
use crate::policy::ShadowSettings;
use crate::telemetry::{ShadowStats, shadow_counter as c};

/// Mismatch samples kept.
pub const MAX_SAMPLES: usize = 100;

/// Admission to shadow traffic for one policy: slots, queue, rate and token
/// caps. Kept across reloads while the settings stay the same.
pub struct ShadowGate {
    pub settings: ShadowSettings,
    /// The split's seed for the shadow's own sticky buckets.
    seed: String,
    slots: Arc<Semaphore>,
    /// Admitted and not yet finished (running or waiting for a slot).
    admitted: AtomicUsize,
    rate: Mutex<Bucket>,
    tokens: Mutex<TokenWindow>,
}

/// A token bucket for the request rate cap.
struct Bucket {
    available: f64,
    last: Instant,
}

/// Tokens used per second over the last minute.
struct TokenWindow {
    seconds: [u64; 60],
    /// The second (since `origin`) each slot holds.
    stamps: [u64; 60],
    origin: Instant,
}

impl TokenWindow {
    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    fn total(&self, now: Instant) -> u64 {
        let s = self.second(now);
        self.seconds
            .iter()
            .zip(&self.stamps)
            .filter(|(_, stamp)| s < **stamp + 60)
            .map(|(n, _)| *n)
            .sum()
    }

    fn add(&mut self, now: Instant, n: u64) {
        let s = self.second(now);
        let slot = (s % 60) as usize;
        if self.stamps[slot] != s {
            self.stamps[slot] = s;
            self.seconds[slot] = 0;
        }
        self.seconds[slot] += n;
    }
}

/// A shadow request admitted; dropping it gives its place back.
pub struct Admission {
    gate: Arc<ShadowGate>,
}

impl Admission {
    /// The gate this admission belongs to.
    pub fn gate(&self) -> &Arc<ShadowGate> {
        &self.gate
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.gate.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ShadowGate {
    pub fn new(policy: &str, settings: ShadowSettings) -> Self {
        let now = Instant::now();
        Self {
            seed: format!("{policy}\u{0}shadow"),
            slots: Arc::new(Semaphore::new(settings.max_concurrency.max(1))),
            admitted: AtomicUsize::new(0),
            rate: Mutex::new(Bucket {
                available: settings.max_requests_per_second.unwrap_or(0.0).max(1.0),
                last: now,
            }),
            tokens: Mutex::new(TokenWindow {
                seconds: [0; 60],
                stamps: [u64::MAX - 60; 60],
                origin: now,
            }),
            settings,
        }
    }

    /// The sticky bucket of a request for mirroring (independent of the
    /// split's).
    pub fn bucket(&self, key: Option<&[u8]>) -> u32 {
        match key {
            Some(k) => crate::split::bucket(&self.seed, k),
            None => crate::split::random_bucket(),
        }
    }

    /// Whether a request in `bucket` is mirrored now; counts those picked but
    /// skipped (caps) or shed (no slot or queue place).
    pub fn admit(self: &Arc<Self>, bucket: u32, stats: &ShadowStats) -> Option<Admission> {
        if bucket >= self.settings.basis_points {
            return None;
        }
        let now = Instant::now();
        if let Some(cap) = self.settings.max_tokens_per_minute
            && lock(&self.tokens).total(now) >= cap
        {
            stats.bump(c::SKIPPED_TOKENS);
            return None;
        }
        if let Some(rps) = self.settings.max_requests_per_second {
            let mut b = lock(&self.rate);
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.available = (b.available + elapsed * rps).min(rps.max(1.0));
            b.last = now;
            if b.available < 1.0 {
                stats.bump(c::SKIPPED_RATE);
                return None;
            }
            b.available -= 1.0;
        }
        // Running plus waiting: at most twice the slots.
        let limit = self.settings.max_concurrency.max(1) * 2;
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= limit {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            stats.bump(c::SHED);
            return None;
        }
        Some(Admission { gate: self.clone() })
    }

    /// Waits for a slot to run a shadow request in; `None` once the gate
    /// is closed.
    pub async fn slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    /// Counts tokens a shadow answer used against the token cap.
    pub fn used_tokens(&self, n: u64) {
        if n > 0 {
            lock(&self.tokens).add(Instant::now(), n);
        }
    }
}

/// A mismatch kept for an operator.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub time: String,
    pub policy: String,
    pub backend: String,
    pub request_id: String,
    pub primary_status: u16,
    /// 0 when the shadow got no answer.
    pub shadow_status: u16,
    pub reason: String,
    /// The request body, when the policy keeps prompts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

/// The latest mismatch samples, bounded.
#[derive(Default)]
pub struct Samples {
    inner: Mutex<VecDeque<Sample>>,
}

impl Samples {
    pub fn push(&self, sample: Sample) {
        let mut q = lock(&self.inner);
        if q.len() >= MAX_SAMPLES {
            q.pop_front();
        }
        q.push_back(sample);
    }

    /// Newest first.
    pub fn list(&self) -> Vec<Sample> {
        lock(&self.inner).iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings(percent_bp: u32, concurrency: usize) -> ShadowSettings {
        ShadowSettings {
            backend: 1,
            basis_points: percent_bp,
            max_concurrency: concurrency,
            max_requests_per_second: None,
            max_tokens_per_minute: None,
            keep_prompts: false,
            max_spend_per_hour: None,
        }
    }

    /// Only buckets under the percentage are picked; beyond twice the slots
    /// requests are shed, and places come back when admissions end.
    #[test]
    fn admits_within_percent_and_sheds_beyond_the_queue() {
        let gate = Arc::new(ShadowGate::new("chat", settings(1000, 2)));
        let stats = ShadowStats::default();
        assert!(gate.admit(1000, &stats).is_none(), "not picked");
        let held: Vec<_> = (0..4).map(|_| gate.admit(0, &stats).unwrap()).collect();
        assert!(gate.admit(0, &stats).is_none());
        assert_eq!(stats.counters[c::SHED].load(Ordering::Relaxed), 1);
        drop(held);
        assert!(gate.admit(0, &stats).is_some());
        // The shadow's bucket of a key is sticky.
        assert_eq!(gate.bucket(Some(b"alice")), gate.bucket(Some(b"alice")));
    }

    /// The request rate cap and the token cap skip mirroring, counted.
    #[tokio::test(start_paused = true)]
    async fn caps_rate_and_tokens() {
        let mut s = settings(10_000, 100);
        s.max_requests_per_second = Some(2.0);
        s.max_tokens_per_minute = Some(100);
        let gate = Arc::new(ShadowGate::new("chat", s));
        let stats = ShadowStats::default();
        assert!(gate.admit(0, &stats).is_some());
        assert!(gate.admit(0, &stats).is_some());
        assert!(gate.admit(0, &stats).is_none());
        assert_eq!(stats.counters[c::SKIPPED_RATE].load(Ordering::Relaxed), 1);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(
            gate.admit(0, &stats).is_some(),
            "one more after half a second"
        );
        gate.used_tokens(100);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(gate.admit(0, &stats).is_none());
        assert_eq!(stats.counters[c::SKIPPED_TOKENS].load(Ordering::Relaxed), 1);
        // The tokens leave the window after a minute.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(gate.admit(0, &stats).is_some());
    }
}
