//! The text of a rollout: the live view of `rollout watch` and the body of
//! `rollout status`. Pure functions of what the control plane said, so they
//! are tested without a terminal.

use std::fmt::Write as _;

use chrono::{DateTime, Local, Utc};
use shepherd_proto::v1;

/// A rollout as followed: its latest state, the stages of the policy
/// revision it runs, and its events so far.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    pub rollout: v1::Rollout,
    pub stages: Vec<v1::Stage>,
    pub events: Vec<v1::RolloutEvent>,
}

impl Watched {
    /// Takes an event: the rollout's state, stage and weight follow it.
    pub fn absorb(&mut self, event: v1::RolloutEvent) {
        if self.events.iter().any(|e| e.sequence == event.sequence) {
            return;
        }
        if event.sequence >= self.rollout.sequence {
            self.rollout.state = event.state;
            self.rollout.stage = event.stage;
            self.rollout.weight = event.weight;
            self.rollout.sequence = event.sequence;
            self.rollout.reason = event.reason.clone();
        }
        self.events.push(event);
        self.events.sort_by_key(|e| e.sequence);
    }

    /// True once the rollout has ended.
    pub fn ended(&self) -> bool {
        is_final(self.rollout.state())
    }
}

pub fn is_final(state: v1::RolloutState) -> bool {
    matches!(
        state,
        v1::RolloutState::Succeeded | v1::RolloutState::RolledBack | v1::RolloutState::Aborted
    )
}

/// `ROLLOUT_STATE_ROLLED_BACK` -> `ROLLED BACK`.
pub fn state_name(state: v1::RolloutState) -> String {
    state
        .as_str_name()
        .trim_start_matches("ROLLOUT_STATE_")
        .replace('_', " ")
}

fn kind_name(kind: v1::RolloutEventKind) -> String {
    kind.as_str_name()
        .trim_start_matches("ROLLOUT_EVENT_KIND_")
        .to_string()
}

/// Basis points as a percentage.
pub fn percent(basis_points: u32) -> String {
    format!("{:.2}%", f64::from(basis_points) / 100.0)
}

fn duration(d: Option<&pbjson_types::Duration>) -> String {
    match d {
        Some(d) => {
            let ms = d.seconds * 1000 + i64::from(d.nanos) / 1_000_000;
            if ms % 1000 == 0 {
                format!("{}s", ms / 1000)
            } else {
                format!("{ms}ms")
            }
        }
        None => "-".into(),
    }
}

fn time(t: Option<&pbjson_types::Timestamp>) -> String {
    t.and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .map(|t| t.with_timezone(&Local).format("%H:%M:%S").to_string())
        .unwrap_or_else(|| "--:--:--".into())
}

fn seconds_since(t: Option<&pbjson_types::Timestamp>, now: DateTime<Utc>) -> Option<i64> {
    let t = t?;
    let then = DateTime::<Utc>::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))?;
    Some((now - then).num_seconds().max(0))
}

/// The stage ladder, the weight, the gates of the last verdict against their
/// limits, and the latest `recent` events.
pub fn render(w: &Watched, now: DateTime<Utc>, recent: usize) -> String {
    let r = &w.rollout;
    let state = r.state();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rollout {}#{}  {}  weight {}  ({} -> {})",
        r.policy,
        r.number,
        state_name(state),
        percent(r.weight),
        r.baseline,
        r.candidate
    );
    if !r.reason.is_empty() {
        let _ = writeln!(out, "  {}", r.reason);
    }
    if r.telemetry_stale {
        let _ = writeln!(out, "  ! telemetry is stale: decisions wait");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "  stage    weight   bake   min requests  max time");
    let current = r.stage as usize;
    let failed = matches!(
        state,
        v1::RolloutState::RolledBack | v1::RolloutState::RollingBack | v1::RolloutState::Aborted
    );
    for (i, s) in w.stages.iter().enumerate() {
        let (mark, note) = if state == v1::RolloutState::Succeeded || i < current {
            ("[x]", "passed".to_string())
        } else if i == current && failed {
            ("[!]", "stopped here".to_string())
        } else if i == current {
            let note = match (state, seconds_since(r.clock_start_time.as_ref(), now)) {
                (v1::RolloutState::Paused, _) => "paused".to_string(),
                (_, Some(secs)) if r.clock_start_time.is_some() => {
                    format!("baking for {secs}s")
                }
                _ => "waiting for agents to apply it".to_string(),
            };
            ("[>]", note)
        } else {
            ("[ ]", String::new())
        };
        let _ = writeln!(
            out,
            "  {mark} {:<3} {:>8}  {:>5}  {:>12}  {:>8}  {note}",
            i + 1,
            percent(s.weight),
            duration(s.min_bake_time.as_ref()),
            s.min_requests,
            duration(s.max_stage_time.as_ref()),
        );
    }
    if let Some(e) = w.events.iter().rev().find(|e| {
        e.figures
            .as_ref()
            .is_some_and(|f| !f.gates.is_empty() || f.candidate.is_some())
    }) {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "  gates at the last verdict ({}, stage {}, {}):",
            kind_name(e.kind()),
            e.stage + 1,
            time(e.time.as_ref())
        );
        if let Some(f) = &e.figures {
            for g in &f.gates {
                let verdict = g
                    .verdict()
                    .as_str_name()
                    .trim_start_matches("VERDICT_")
                    .to_string();
                let _ = writeln!(
                    out,
                    "    {:<34} {:>10}  limit {:>10}  {verdict:<6} {}",
                    g.gate,
                    number(g.value),
                    number(g.limit),
                    g.detail
                );
            }
            for (side, s) in [("candidate", &f.candidate), ("baseline", &f.baseline)] {
                if let Some(s) = s {
                    let _ = writeln!(
                        out,
                        "    {side} {}: {} requests, {} errors ({:.2}%), {} rate-limited, p95 {}",
                        s.backend,
                        s.requests,
                        s.errors,
                        s.error_rate_percent,
                        s.rate_limited,
                        duration(s.latency_p95.as_ref())
                    );
                    if s.spend_cap_trips > 0 {
                        let _ = writeln!(
                            out,
                            "      hourly spend cap reached {} time(s) at the agents; {} requests sent elsewhere",
                            s.spend_cap_trips, s.spend_capped
                        );
                    }
                    if let Some(c) = &s.cost {
                        let unpriced = if c.unpriced > 0 {
                            format!(", {} unpriced", c.unpriced)
                        } else {
                            String::new()
                        };
                        let _ = writeln!(
                            out,
                            "      spent {} {cur}: {:.6} {cur} per answer, {:.4} {cur} per 1,000 output tokens{unpriced}",
                            c.spend,
                            c.per_request,
                            c.per_1k_output_tokens,
                            cur = c.currency,
                        );
                    }
                }
            }
            if !f.cost_projection.is_empty() {
                let _ = writeln!(out, "    {}", f.cost_projection);
            }
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "  recent events:");
    let skip = w.events.len().saturating_sub(recent);
    for e in w.events.iter().skip(skip) {
        let _ = writeln!(
            out,
            "    {} #{:<3} {:<18} stage {} {:>8}  {}",
            time(e.time.as_ref()),
            e.sequence,
            kind_name(e.kind()),
            e.stage + 1,
            percent(e.weight),
            e.reason
        );
    }
    out
}

/// One line per event, for a terminal that is not a TTY.
pub fn event_line(e: &v1::RolloutEvent) -> String {
    format!(
        "{} {}#{} #{} {} {} stage {} weight {}: {}",
        time(e.time.as_ref()),
        e.policy,
        e.number,
        e.sequence,
        kind_name(e.kind()),
        state_name(e.state()),
        e.stage + 1,
        percent(e.weight),
        e.reason
    )
}

/// A gate's value or limit: three decimals, or scientific when large (an
/// e-value may be).
fn number(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{v:.3e}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: i64) -> Option<pbjson_types::Duration> {
        Some(pbjson_types::Duration {
            seconds: s,
            nanos: 0,
        })
    }

    fn stage(weight: u32) -> v1::Stage {
        v1::Stage {
            weight,
            min_bake_time: secs(30),
            min_requests: 100,
            max_stage_time: secs(300),
        }
    }

    fn event(seq: i64, kind: v1::RolloutEventKind, stage: u32, weight: u32) -> v1::RolloutEvent {
        v1::RolloutEvent {
            policy: "chat".into(),
            number: 1,
            sequence: seq,
            kind: kind as i32,
            state: v1::RolloutState::Running as i32,
            stage,
            weight,
            reason: format!("event {seq}"),
            ..Default::default()
        }
    }

    /// The ladder marks passed, current and pending stages; the gates of
    /// the last verdict show with their limits; events follow in order.
    #[test]
    fn renders_the_ladder_gates_and_events() {
        let mut w = Watched {
            rollout: v1::Rollout {
                policy: "chat".into(),
                number: 1,
                baseline: "openai".into(),
                candidate: "mistral".into(),
                ..Default::default()
            },
            stages: vec![stage(500), stage(2000), stage(10000)],
            events: vec![],
        };
        w.absorb(event(1, v1::RolloutEventKind::Started, 0, 500));
        let mut promoted = event(2, v1::RolloutEventKind::Promoted, 1, 2000);
        promoted.verdict = v1::Verdict::Pass as i32;
        promoted.figures = Some(v1::Figures {
            gates: vec![v1::GateResult {
                gate: "max_error_rate_percent".into(),
                value: 0.4,
                limit: 5.0,
                verdict: v1::Verdict::Pass as i32,
                detail: String::new(),
            }],
            candidate: Some(v1::SideFigures {
                backend: "mistral".into(),
                requests: 250,
                errors: 1,
                error_rate_percent: 0.4,
                spend_cap_trips: 2,
                spend_capped: 40,
                cost: Some(v1::SideCost {
                    currency: "USD".into(),
                    spend: "0.0025".into(),
                    priced: 250,
                    per_request: 0.00001,
                    per_1k_output_tokens: 0.0012,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            cost_projection:
                "at 100% the candidate would cost 1240.00 USD/month against 8310.00 USD: -85%"
                    .into(),
            ..Default::default()
        });
        w.absorb(promoted);
        // A repeated event changes nothing.
        w.absorb(event(2, v1::RolloutEventKind::Promoted, 1, 2000));
        let text = render(&w, Utc::now(), 10);
        assert!(
            text.starts_with("rollout chat#1  RUNNING  weight 20.00%  (openai -> mistral)"),
            "{text}"
        );
        assert!(text.contains("[x] 1      5.00%"), "{text}");
        assert!(text.contains("[>] 2     20.00%"), "{text}");
        assert!(text.contains("waiting for agents"), "{text}");
        assert!(text.contains("[ ] 3    100.00%"), "{text}");
        assert!(text.contains("max_error_rate_percent"), "{text}");
        assert!(text.contains("limit      5.000  PASS"), "{text}");
        assert!(
            text.contains("candidate mistral: 250 requests, 1 errors (0.40%)"),
            "{text}"
        );
        assert!(
            text.contains(
                "spent 0.0025 USD: 0.000010 USD per answer, 0.0012 USD per 1,000 output tokens"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "at 100% the candidate would cost 1240.00 USD/month against 8310.00 USD: -85%"
            ),
            "{text}"
        );
        assert_eq!(w.events.len(), 2);
        let started = text.find("STARTED").unwrap();
        assert!(started < text.find("PROMOTED      ").unwrap(), "{text}");
        assert!(!w.ended());

        let mut back = event(3, v1::RolloutEventKind::RolledBack, 1, 0);
        back.state = v1::RolloutState::RolledBack as i32;
        w.absorb(back);
        assert!(w.ended());
        let text = render(&w, Utc::now(), 1);
        assert!(text.contains("ROLLED BACK  weight 0.00%"), "{text}");
        assert!(text.contains("[!] 2"), "{text}");
        assert!(
            !text.contains("#1   STARTED"),
            "only the latest event: {text}"
        );
    }
}
