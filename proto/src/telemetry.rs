//! Telemetry reports on the wire: histograms to and from their sparse wire
//! form, and merging of backend figures (the agent folds intervals, the
//! control plane folds agents and replicas, with the same code).

use crate::histogram::Histogram;
use crate::v1;

impl Histogram {
    /// The wire form: non-empty buckets only.
    pub fn to_wire(&self) -> v1::Histogram {
        let (buckets, counts) = self.to_sparse().into_iter().unzip();
        v1::Histogram {
            buckets,
            counts,
            sum_us: self.sum_us(),
        }
    }

    /// Reads the wire form; mismatched lists or buckets out of range are
    /// refused.
    pub fn from_wire(wire: &v1::Histogram) -> Result<Histogram, String> {
        if wire.buckets.len() != wire.counts.len() {
            return Err(format!(
                "buckets and counts differ in length ({} and {})",
                wire.buckets.len(),
                wire.counts.len()
            ));
        }
        Histogram::from_sparse(
            wire.buckets
                .iter()
                .copied()
                .zip(wire.counts.iter().copied()),
            wire.sum_us,
        )
    }
}

/// Adds `from` to `into` (an absent histogram counts as empty).
pub fn merge_histogram(
    into: &mut Option<v1::Histogram>,
    from: &Option<v1::Histogram>,
) -> Result<(), String> {
    let Some(from) = from else {
        return Ok(());
    };
    let mut sum = match into {
        Some(h) => Histogram::from_wire(h)?,
        None => Histogram::default(),
    };
    sum.merge(&Histogram::from_wire(from)?);
    *into = Some(sum.to_wire());
    Ok(())
}

/// Adds one set of outcome counts to another.
pub fn add_outcomes(into: &mut v1::Outcomes, from: &v1::Outcomes) {
    into.success += from.success;
    into.app_error += from.app_error;
    into.backend_rejected += from.backend_rejected;
    into.malformed += from.malformed;
    into.breaker_rejected_broken += from.breaker_rejected_broken;
    into.rate_limited += from.rate_limited;
    into.server_error += from.server_error;
    into.timeout += from.timeout;
    into.connect_error += from.connect_error;
    into.stream_broken += from.stream_broken;
    into.breaker_rejected += from.breaker_rejected;
    into.fault_injected += from.fault_injected;
    into.cancelled += from.cancelled;
}

/// Adds one backend's figures to another's (same backend).
pub fn merge_backend(
    into: &mut v1::BackendTelemetry,
    from: &v1::BackendTelemetry,
) -> Result<(), String> {
    merge_histogram(&mut into.latency, &from.latency).map_err(|e| format!("latency: {e}"))?;
    merge_histogram(&mut into.ttft, &from.ttft).map_err(|e| format!("ttft: {e}"))?;
    if let Some(o) = &from.outcomes {
        add_outcomes(into.outcomes.get_or_insert_with(Default::default), o);
    }
    into.input_tokens += from.input_tokens;
    into.output_tokens += from.output_tokens;
    into.retries += from.retries;
    into.fallbacks += from.fallbacks;
    into.selected += from.selected;
    into.spend_cap_trips += from.spend_cap_trips;
    into.spend_capped += from.spend_capped;
    merge_examples(&mut into.examples, &from.examples);
    if let Some(cost) = &from.cost {
        merge_cost(into.cost.get_or_insert_with(Default::default), cost)
            .map_err(|e| format!("cost.{e}"))?;
    }
    if let Some(shadow) = &from.shadow {
        merge_shadow(into.shadow.get_or_insert_with(Default::default), shadow)
            .map_err(|e| format!("shadow.{e}"))?;
    }
    Ok(())
}

/// Adds one backend's spend to another's; a sum that would overflow is
/// refused, naming its field, and changes nothing.
pub fn merge_cost(into: &mut v1::Cost, from: &v1::Cost) -> Result<(), String> {
    let mut sum = *into;
    for (name, a, b) in [
        ("served", &mut sum.served, &from.served),
        ("failed", &mut sum.failed, &from.failed),
        ("shadow", &mut sum.shadow, &from.shadow),
    ] {
        let Some(b) = b else { continue };
        let a = a.get_or_insert_with(Default::default);
        a.picos = a
            .picos
            .checked_add(b.picos)
            .ok_or_else(|| format!("{name}.picos: the sum overflows"))?;
        a.priced = a.priced.saturating_add(b.priced);
        a.unpriced = a.unpriced.saturating_add(b.unpriced);
        a.squares += b.squares;
    }
    *into = sum;
    Ok(())
}

/// Most failure examples kept in one set of figures.
pub const MAX_EXAMPLES: usize = 16;

/// Adds examples of failure classes not yet held (the first of each class
/// stays), up to [`MAX_EXAMPLES`].
pub fn merge_examples(into: &mut Vec<v1::FailureExample>, from: &[v1::FailureExample]) {
    for e in from {
        if into.len() >= MAX_EXAMPLES {
            return;
        }
        if !into.iter().any(|have| have.outcome == e.outcome) {
            into.push(e.clone());
        }
    }
}

/// The example of one failure class, if any.
pub fn example<'a>(
    examples: &'a [v1::FailureExample],
    outcome: &str,
) -> Option<&'a v1::FailureExample> {
    examples.iter().find(|e| e.outcome == outcome)
}

/// Buckets of the shadow similarity histogram (steps of 0.05).
pub const SIMILARITY_BUCKETS: usize = 20;

/// The bucket of a similarity score (0 to 1).
pub fn similarity_bucket(score: f64) -> usize {
    ((score.clamp(0.0, 1.0) * SIMILARITY_BUCKETS as f64) as usize).min(SIMILARITY_BUCKETS - 1)
}

/// Adds one set of shadow figures to another.
pub fn merge_shadow(
    into: &mut v1::ShadowTelemetry,
    from: &v1::ShadowTelemetry,
) -> Result<(), String> {
    if from.similarity.len() > SIMILARITY_BUCKETS {
        return Err(format!("similarity: at most {SIMILARITY_BUCKETS} buckets"));
    }
    merge_histogram(&mut into.latency, &from.latency).map_err(|e| format!("latency: {e}"))?;
    merge_histogram(&mut into.ttft, &from.ttft).map_err(|e| format!("ttft: {e}"))?;
    if let Some(o) = &from.outcomes {
        add_outcomes(into.outcomes.get_or_insert_with(Default::default), o);
    }
    into.mirrored += from.mirrored;
    into.skipped_rate += from.skipped_rate;
    into.skipped_tokens += from.skipped_tokens;
    into.shed += from.shed;
    into.cancelled += from.cancelled;
    into.compared += from.compared;
    into.status_mismatch += from.status_mismatch;
    into.primary_schema_errors += from.primary_schema_errors;
    into.shadow_schema_errors += from.shadow_schema_errors;
    into.diverged += from.diverged;
    into.input_tokens += from.input_tokens;
    into.output_tokens += from.output_tokens;
    into.primary_input_tokens += from.primary_input_tokens;
    into.primary_output_tokens += from.primary_output_tokens;
    into.client_errors += from.client_errors;
    into.primary_client_errors += from.primary_client_errors;
    merge_examples(&mut into.examples, &from.examples);
    if into.similarity.len() < from.similarity.len() {
        into.similarity.resize(from.similarity.len(), 0);
    }
    for (a, b) in into.similarity.iter_mut().zip(&from.similarity) {
        *a += b;
    }
    Ok(())
}

/// Mean similarity of a similarity histogram (bucket midpoints); `None`
/// when empty.
pub fn mean_similarity(buckets: &[u64]) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let width = 1.0 / SIMILARITY_BUCKETS as f64;
    let sum: f64 = buckets
        .iter()
        .enumerate()
        .map(|(i, n)| {
            // The last bucket holds the exact matches (1.0) too.
            let mid = if i + 1 == SIMILARITY_BUCKETS {
                1.0 - width / 4.0
            } else {
                (i as f64 + 0.5) * width
            };
            mid * *n as f64
        })
        .sum();
    Some(sum / total as f64)
}

/// Attempts counted in a set of outcomes.
pub fn attempts(o: &v1::Outcomes) -> u64 {
    o.success
        + o.app_error
        + o.backend_rejected
        + o.malformed
        + o.rate_limited
        + o.server_error
        + o.timeout
        + o.connect_error
        + o.stream_broken
        + o.breaker_rejected
        + o.fault_injected
        + o.cancelled
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A histogram survives the wire, and bad wire forms are refused.
    #[test]
    fn histogram_wire_round_trip() {
        let mut h = Histogram::default();
        h.record(Duration::from_millis(3));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(2));
        let wire = h.to_wire();
        assert_eq!(wire.buckets.len(), 2);
        assert_eq!(Histogram::from_wire(&wire).unwrap(), h);
        let uneven = v1::Histogram {
            buckets: vec![1, 2],
            counts: vec![1],
            sum_us: 0,
        };
        assert!(
            Histogram::from_wire(&uneven)
                .unwrap_err()
                .contains("differ")
        );
        let out_of_range = v1::Histogram {
            buckets: vec![10_000],
            counts: vec![1],
            sum_us: 0,
        };
        assert!(Histogram::from_wire(&out_of_range).is_err());
    }

    /// Merging adds every counter and histogram.
    #[test]
    fn merges_backend_figures() {
        let mut a_hist = Histogram::default();
        a_hist.record(Duration::from_millis(10));
        let a = v1::BackendTelemetry {
            backend: "b".into(),
            outcomes: Some(v1::Outcomes {
                success: 3,
                server_error: 1,
                ..Default::default()
            }),
            latency: Some(a_hist.to_wire()),
            input_tokens: 5,
            selected: 4,
            ..Default::default()
        };
        let mut sum = v1::BackendTelemetry {
            backend: "b".into(),
            ..Default::default()
        };
        merge_backend(&mut sum, &a).unwrap();
        merge_backend(&mut sum, &a).unwrap();
        let o = sum.outcomes.as_ref().unwrap();
        assert_eq!((o.success, o.server_error), (6, 2));
        assert_eq!(attempts(o), 8);
        assert_eq!((sum.input_tokens, sum.selected), (10, 8));
        let latency = Histogram::from_wire(sum.latency.as_ref().unwrap()).unwrap();
        assert_eq!(latency.count(), 2);
        assert!(sum.ttft.is_none());
        assert!(sum.shadow.is_none());
    }

    /// Spend adds up per kind; a sum that would overflow is refused, naming
    /// its field, and leaves the figures as they were.
    #[test]
    fn merges_cost_or_refuses_an_overflow() {
        let spend = |picos, priced, unpriced| v1::Spend {
            picos,
            priced,
            unpriced,
            squares: 0.0,
        };
        let a = v1::Cost {
            served: Some(spend(65, 1, 1)),
            shadow: Some(spend(7, 2, 1)),
            ..Default::default()
        };
        let mut sum = v1::Cost::default();
        merge_cost(&mut sum, &a).unwrap();
        merge_cost(&mut sum, &a).unwrap();
        assert_eq!(sum.served, Some(spend(130, 2, 2)));
        assert_eq!(sum.shadow, Some(spend(14, 4, 2)));
        assert_eq!(sum.failed, None);
        let before = sum;
        let huge = v1::Cost {
            failed: Some(spend(1, 1, 0)),
            shadow: Some(spend(u64::MAX, 1, 0)),
            ..Default::default()
        };
        assert_eq!(
            merge_cost(&mut sum, &huge),
            Err("shadow.picos: the sum overflows".into())
        );
        assert_eq!(sum, before);
        let mut b = v1::BackendTelemetry {
            cost: Some(before),
            ..Default::default()
        };
        let err = merge_backend(
            &mut b,
            &v1::BackendTelemetry {
                cost: Some(huge),
                ..Default::default()
            },
        );
        assert_eq!(err, Err("cost.shadow.picos: the sum overflows".into()));
    }

    /// Shadow figures merge field by field; similarity buckets add up.
    #[test]
    fn merges_shadow_figures() {
        let mut similarity = vec![0; SIMILARITY_BUCKETS];
        similarity[similarity_bucket(1.0)] = 2;
        similarity[similarity_bucket(0.0)] = 2;
        let b = v1::BackendTelemetry {
            backend: "b".into(),
            shadow: Some(v1::ShadowTelemetry {
                mirrored: 4,
                compared: 4,
                status_mismatch: 1,
                diverged: 2,
                similarity,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut sum = v1::BackendTelemetry::default();
        merge_backend(&mut sum, &b).unwrap();
        merge_backend(&mut sum, &b).unwrap();
        let s = sum.shadow.clone().unwrap();
        assert_eq!(
            (s.mirrored, s.compared, s.status_mismatch, s.diverged),
            (8, 8, 2, 4)
        );
        let mean = mean_similarity(&s.similarity).unwrap();
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        assert_eq!(similarity_bucket(0.049), 0);
        assert_eq!(similarity_bucket(0.05), 1);
        assert!(mean_similarity(&[]).is_none());
        let bad = v1::BackendTelemetry {
            shadow: Some(v1::ShadowTelemetry {
                similarity: vec![1; 21],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(
            merge_backend(&mut sum, &bad)
                .unwrap_err()
                .starts_with("shadow.similarity")
        );
    }
}
