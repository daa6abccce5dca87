//! Judging a rollout's gates from the fleet's telemetry windows. Each check
//! says PASS, FAIL (with the numbers it was made from) or WAIT (too little
//! data: no data is never a pass).

use shepherd_proto::telemetry::{mean_similarity, merge_shadow};
use shepherd_proto::v1;

use crate::store::TelemetryRow;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    Pass(String),
    Fail(String),
    Wait(String),
}

/// The shadow figures of one policy's backend, summed over the windows
/// recorded under `since_version` or later.
pub fn shadow_figures(
    rows: &[TelemetryRow],
    backend: &str,
    since_version: i64,
) -> v1::ShadowTelemetry {
    let mut sum = v1::ShadowTelemetry::default();
    for r in rows
        .iter()
        .filter(|r| r.backend == backend && r.snapshot_version >= since_version)
    {
        if let Some(s) = &r.data.shadow {
            // Rows were checked when they were merged; a bad one adds nothing.
            let _ = merge_shadow(&mut sum, s);
        }
    }
    sum
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// The shadow gates of a policy (divergence, status mismatch and schema
/// error ceilings, similarity floor) over the figures of a shadow stage.
/// Waits until `min_compared` pairs (at least one) were compared; passes
/// when no shadow gate is set and enough pairs were compared.
pub fn judge_shadow(s: &v1::ShadowTelemetry, gates: &v1::Gates, min_compared: u64) -> Check {
    let needed = min_compared.max(1);
    if s.compared < needed {
        return Check::Wait(format!(
            "{} of {needed} shadow comparisons so far ({} mirrored, {} shed, {} skipped by caps)",
            s.compared,
            s.mirrored,
            s.shed,
            s.skipped_rate + s.skipped_tokens
        ));
    }
    let rates = [
        (
            "shadow divergence",
            s.diverged,
            gates.max_shadow_divergence_percent,
        ),
        (
            "shadow status mismatch",
            s.status_mismatch,
            gates.max_shadow_status_mismatch_percent,
        ),
        (
            "shadow schema errors",
            s.shadow_schema_errors,
            gates.max_shadow_schema_error_percent,
        ),
    ];
    let mut seen = Vec::new();
    for (what, count, ceiling) in rates {
        let rate = percent(count, s.compared);
        if let Some(max) = ceiling {
            if rate > max {
                return Check::Fail(format!(
                    "{what} {rate:.2}% ({count} of {} compared) is above the {max}% ceiling",
                    s.compared
                ));
            }
            seen.push(format!("{what} {rate:.2}% (ceiling {max}%)"));
        }
    }
    if let Some(floor) = gates.min_shadow_similarity {
        match mean_similarity(&s.similarity) {
            None => {
                return Check::Wait(
                    "no compared pair had answers on both sides to measure similarity".into(),
                );
            }
            Some(mean) if mean < floor => {
                return Check::Fail(format!(
                    "mean shadow similarity {mean:.3} over {} pairs is below the {floor} floor",
                    s.similarity.iter().sum::<u64>()
                ));
            }
            Some(mean) => seen.push(format!("mean similarity {mean:.3} (floor {floor})")),
        }
    }
    Check::Pass(format!(
        "{} pairs compared; {}",
        s.compared,
        if seen.is_empty() {
            "no shadow gate set".to_string()
        } else {
            seen.join(", ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shepherd_proto::telemetry::{SIMILARITY_BUCKETS, similarity_bucket};

    fn figures(compared: u64, mismatch: u64, schema: u64, similar: f64) -> v1::ShadowTelemetry {
        let mut similarity = vec![0; SIMILARITY_BUCKETS];
        similarity[similarity_bucket(similar)] = compared;
        v1::ShadowTelemetry {
            mirrored: compared,
            compared,
            status_mismatch: mismatch,
            shadow_schema_errors: schema,
            diverged: mismatch + schema,
            similarity,
            ..Default::default()
        }
    }

    fn gates() -> v1::Gates {
        v1::Gates {
            max_shadow_divergence_percent: Some(10.0),
            max_shadow_status_mismatch_percent: Some(5.0),
            max_shadow_schema_error_percent: Some(2.0),
            min_shadow_similarity: Some(0.6),
            ..Default::default()
        }
    }

    /// No data, or too little, is never a pass.
    #[test]
    fn waits_for_enough_comparisons() {
        let none = v1::ShadowTelemetry::default();
        assert!(matches!(judge_shadow(&none, &gates(), 0), Check::Wait(_)));
        let few = figures(10, 0, 0, 1.0);
        match judge_shadow(&few, &gates(), 50) {
            Check::Wait(why) => assert!(why.starts_with("10 of 50"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    /// Each ceiling and the floor fail with the numbers behind them.
    #[test]
    fn fails_each_gate_with_its_numbers() {
        let healthy = figures(100, 1, 0, 0.9);
        assert!(matches!(
            judge_shadow(&healthy, &gates(), 50),
            Check::Pass(_)
        ));
        match judge_shadow(&figures(100, 8, 0, 0.9), &gates(), 50) {
            Check::Fail(why) => {
                assert!(
                    why.contains("shadow status mismatch 8.00% (8 of 100 compared)"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        match judge_shadow(&figures(100, 0, 3, 0.9), &gates(), 50) {
            Check::Fail(why) => assert!(why.contains("schema errors 3.00%"), "{why}"),
            other => panic!("{other:?}"),
        }
        let mut only_divergence = gates();
        only_divergence.max_shadow_status_mismatch_percent = None;
        only_divergence.max_shadow_schema_error_percent = None;
        match judge_shadow(&figures(100, 6, 6, 0.9), &only_divergence, 50) {
            Check::Fail(why) => assert!(why.contains("divergence 12.00%"), "{why}"),
            other => panic!("{other:?}"),
        }
        match judge_shadow(&figures(100, 0, 0, 0.3), &gates(), 50) {
            Check::Fail(why) => assert!(why.contains("below the 0.6 floor"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    /// Figures add up over the windows of the stage's version and later.
    #[test]
    fn sums_figures_from_the_stage_version_on() {
        let row = |version: i64, backend: &str, compared: u64| TelemetryRow {
            policy: "chat".into(),
            snapshot_version: version,
            backend: backend.into(),
            window_start_ms: 0,
            replica: "r".into(),
            reports: 1,
            data: v1::BackendTelemetry {
                backend: backend.into(),
                shadow: Some(figures(compared, 1, 0, 1.0)),
                ..Default::default()
            },
        };
        let rows = [
            row(4, "b", 100),
            row(5, "b", 10),
            row(6, "b", 20),
            row(6, "a", 7),
        ];
        let s = shadow_figures(&rows, "b", 5);
        assert_eq!((s.compared, s.status_mismatch), (30, 2));
    }
}
