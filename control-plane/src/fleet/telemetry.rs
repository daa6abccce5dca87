//! Telemetry merged across this replica's agents: per policy, snapshot
//! version, backend and window, summed in memory and written to the store
//! every flush. Rows are partial sums, so windows merged by several replicas
//! (or by several flushes) add up when read.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use shepherd_proto::telemetry::merge_backend;
use shepherd_proto::v1;
use shepherd_proto::validate::timestamp_to_system_time;

use super::lock;
use crate::store::TelemetryRow;

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    policy: String,
    version: u64,
    backend: String,
    window_start_ms: i64,
}

struct Sum {
    data: v1::BackendTelemetry,
    reports: i64,
}

/// Telemetry waiting to be written.
pub struct Aggregator {
    window_ms: i64,
    max_keys: usize,
    pending: Mutex<HashMap<Key, Sum>>,
    /// Windows dropped because too many were pending (the store was down).
    pub dropped: std::sync::atomic::AtomicU64,
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Aggregator {
    pub fn new(window: std::time::Duration, max_keys: usize) -> Self {
        Self {
            window_ms: i64::try_from(window.as_millis()).unwrap_or(1000).max(1),
            max_keys,
            pending: Mutex::default(),
            dropped: Default::default(),
        }
    }

    /// Adds a report. A report that does not parse changes nothing.
    pub fn absorb(&self, report: &v1::TelemetryReport, now: SystemTime) -> Result<(), String> {
        let at = report
            .end_time
            .as_ref()
            .and_then(timestamp_to_system_time)
            .unwrap_or(now);
        // The window the interval ended in (its last millisecond).
        let end_ms = unix_ms(at).saturating_sub(1);
        let window_start_ms = end_ms - end_ms.rem_euclid(self.window_ms);
        // Check everything first, so a bad report adds nothing.
        let mut parsed = Vec::new();
        for (i, p) in report.policies.iter().enumerate() {
            for (j, b) in p.backends.iter().enumerate() {
                let mut sum = v1::BackendTelemetry {
                    backend: b.backend.clone(),
                    ..Default::default()
                };
                merge_backend(&mut sum, b)
                    .map_err(|e| format!("policies[{i}].backends[{j}].{e}"))?;
                parsed.push((
                    Key {
                        policy: p.policy.clone(),
                        version: p.snapshot_version,
                        backend: b.backend.clone(),
                        window_start_ms,
                    },
                    sum,
                ));
            }
        }
        let mut pending = lock(&self.pending);
        for (key, data) in parsed {
            if !add(&mut pending, key, data, 1, self.max_keys) {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Everything pending, as rows of `replica`.
    pub fn take(&self, replica: &str) -> Vec<TelemetryRow> {
        let pending = std::mem::take(&mut *lock(&self.pending));
        pending
            .into_iter()
            .map(|(k, s)| TelemetryRow {
                policy: k.policy,
                snapshot_version: i64::try_from(k.version).unwrap_or(i64::MAX),
                backend: k.backend,
                window_start_ms: k.window_start_ms,
                replica: replica.to_string(),
                reports: s.reports,
                data: s.data,
            })
            .collect()
    }

    /// Rows that could not be written go back to wait for the next flush.
    pub fn restore(&self, rows: Vec<TelemetryRow>) {
        let mut pending = lock(&self.pending);
        for r in rows {
            let key = Key {
                policy: r.policy,
                version: u64::try_from(r.snapshot_version).unwrap_or(0),
                backend: r.backend,
                window_start_ms: r.window_start_ms,
            };
            // What was taken out goes back whatever the limit.
            add(&mut pending, key, r.data, r.reports, usize::MAX);
        }
    }
}

/// Adds figures (already checked, so merging cannot fail) to the sum of
/// their key; a new key is refused beyond `max_keys`. Returns whether the
/// figures were kept.
fn add(
    pending: &mut HashMap<Key, Sum>,
    key: Key,
    data: v1::BackendTelemetry,
    reports: i64,
    max_keys: usize,
) -> bool {
    let full = pending.len() >= max_keys;
    match pending.get_mut(&key) {
        Some(s) => {
            let _ = merge_backend(&mut s.data, &data);
            s.reports += reports;
        }
        None if full => return false,
        None => {
            pending.insert(key, Sum { data, reports });
        }
    }
    true
}

/// Sums telemetry rows per (snapshot version, backend), for readers.
pub fn sum_rows(rows: &[TelemetryRow]) -> Vec<(i64, v1::BackendTelemetry, i64)> {
    let mut sums: Vec<(i64, v1::BackendTelemetry, i64)> = Vec::new();
    for r in rows {
        match sums
            .iter_mut()
            .find(|(v, b, _)| *v == r.snapshot_version && b.backend == r.backend)
        {
            Some((_, b, n)) => {
                let _ = merge_backend(b, &r.data);
                *n += r.reports;
            }
            None => sums.push((r.snapshot_version, r.data.clone(), r.reports)),
        }
    }
    sums.sort_by(|a, b| (a.0, &a.1.backend).cmp(&(b.0, &b.1.backend)));
    sums
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn report(at_ms: u64, success: u64) -> v1::TelemetryReport {
        let end = SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms);
        v1::TelemetryReport {
            urgent: false,
            requested: false,
            sequence: 1,
            start_time: None,
            end_time: Some(chrono::DateTime::<chrono::Utc>::from(end).into()),
            policies: vec![v1::PolicyTelemetry {
                policy: "chat".into(),
                snapshot_version: 7,
                requests: success,
                backends: vec![v1::BackendTelemetry {
                    backend: "openai".into(),
                    outcomes: Some(v1::Outcomes {
                        success,
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
            }],
            reports_lost: 0,
        }
    }

    /// Reports ending in the same window merge into one row; the next
    /// window gets its own.
    #[test]
    fn merges_by_window() {
        let a = Aggregator::new(Duration::from_secs(1), 100);
        a.absorb(&report(10_200, 2), SystemTime::now()).unwrap();
        a.absorb(&report(10_900, 3), SystemTime::now()).unwrap();
        a.absorb(&report(11_000, 4), SystemTime::now()).unwrap();
        a.absorb(&report(11_001, 5), SystemTime::now()).unwrap();
        let mut rows = a.take("r1");
        rows.sort_by_key(|r| r.window_start_ms);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].window_start_ms, 10_000);
        assert_eq!(rows[0].reports, 3);
        assert_eq!(rows[0].data.outcomes.as_ref().unwrap().success, 9);
        assert_eq!(rows[1].window_start_ms, 11_000);
        assert!(a.take("r1").is_empty());
    }

    /// A report with a malformed histogram adds nothing.
    #[test]
    fn bad_report_changes_nothing() {
        let a = Aggregator::new(Duration::from_secs(1), 100);
        let mut bad = report(10_200, 2);
        bad.policies[0].backends.push(v1::BackendTelemetry {
            backend: "x".into(),
            latency: Some(v1::Histogram {
                buckets: vec![1],
                counts: vec![],
                sum_us: 0,
            }),
            ..Default::default()
        });
        let err = a.absorb(&bad, SystemTime::now()).unwrap_err();
        assert!(err.starts_with("policies[0].backends[1].latency"), "{err}");
        assert!(a.take("r1").is_empty());
    }

    /// Rows that failed to be written come back and merge with new ones.
    #[test]
    fn restored_rows_are_not_lost() {
        let a = Aggregator::new(Duration::from_secs(1), 100);
        a.absorb(&report(10_200, 2), SystemTime::now()).unwrap();
        let rows = a.take("r1");
        a.absorb(&report(10_300, 1), SystemTime::now()).unwrap();
        a.restore(rows);
        let rows = a.take("r1");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].reports, 2);
        assert_eq!(rows[0].data.outcomes.as_ref().unwrap().success, 3);
        let sums = sum_rows(&rows);
        assert_eq!(sums[0].0, 7);
    }
}
