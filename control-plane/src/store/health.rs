//! Whether the database answers, as this replica sees it. Every part that
//! talks to the database (the health check, the change listener, the
//! analysis leader, the fleet's reads and writes) reports what it saw; the
//! first failure of an outage is logged once with its cause, and the first
//! success after it once with how long it lasted. A restart shorter than
//! the health-check interval is still seen by whoever hit it.

use std::sync::Mutex;

use tokio::time::Instant;
use tracing::{info, warn};

use super::StoreError;

/// The database's reachability, logged on each change.
#[derive(Debug, Default)]
pub struct DbHealth {
    /// Since when it is out of reach, while it is.
    down: Mutex<Option<Instant>>,
}

impl DbHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        match self.down.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The database could not be reached: `cause` says why (logged for the
    /// first failure of an outage only).
    pub fn down(&self, cause: &dyn std::fmt::Display) {
        let mut down = self.lock();
        if down.is_none() {
            warn!(cause = %cause, "database unreachable; writes fail with UNAVAILABLE, agents keep their snapshots, rollout decisions wait");
            *down = Some(Instant::now());
        }
    }

    /// The database answered.
    pub fn up(&self) {
        let mut down = self.lock();
        if let Some(since) = down.take() {
            info!(
                after = %humantime::format_duration(std::time::Duration::from_millis(
                    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
                )),
                "database reachable again"
            );
        }
    }

    /// Reports a call's result: a success is up, an unavailable database is
    /// down; other errors say nothing about reachability.
    pub fn saw<T>(&self, result: &Result<T, StoreError>) {
        match result {
            Ok(_) => self.up(),
            Err(e) if e.is_retryable() => self.down(e),
            Err(_) => {}
        }
    }

    /// True while an outage is under way.
    pub fn is_down(&self) -> bool {
        self.lock().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An outage is one down and one up, however many reports.
    #[test]
    fn reports_each_change_once() {
        let h = DbHealth::default();
        h.up();
        assert!(!h.is_down());
        h.saw(&Err::<(), _>(StoreError::Unavailable(
            "connection refused".into(),
        )));
        h.down(&"again");
        assert!(h.is_down());
        // Not a reachability problem.
        h.saw(&Err::<(), _>(StoreError::NotFound { name: "x".into() }));
        assert!(h.is_down());
        h.saw(&Ok(()));
        assert!(!h.is_down());
    }
}
