//! Decision quality of the rollout analysis: drives the control plane's own
//! stage judge (`analysis::judge_stage`) with synthetic telemetry over many
//! simulated rollouts and reports how fast a bad candidate is caught and how
//! often a healthy one is rolled back by mistake.
//!
//! The telemetry path is modelled as it runs: 1,000 req/s spread over 10
//! agents, each reporting every second at its own phase; a report reaches
//! the database at the replica's next flush (every second) and is judged at
//! the leader's next tick (every 250 ms).
//!
//! Usage: decision-bench [ROLLOUTS]   (default 1000 per case)

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss
)]

use std::time::Duration;

use shepherd_control_plane::analysis::{StageInput, judge_stage};
use shepherd_proto::v1;

const RATE: f64 = 1000.0;
const AGENTS: usize = 10;
const REPORT: f64 = 1.0;
const FLUSH: f64 = 1.0;
const TICK: f64 = 0.25;
const STEP: f64 = 0.01;

/// splitmix64: small, fast, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Copy, Default)]
struct Counts {
    requests: u64,
    errors: u64,
}

/// One backend's error probability as a function of time.
type Errors = dyn Fn(f64) -> f64;

fn telemetry(backend: &str, s: &Counts) -> v1::BackendTelemetry {
    v1::BackendTelemetry {
        backend: backend.into(),
        outcomes: Some(v1::Outcomes {
            success: s.requests - s.errors,
            server_error: s.errors,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn gates() -> v1::Gates {
    v1::Gates {
        max_error_rate_percent: Some(5.0),
        significance: Some(0.01),
        min_error_rate_effect_percent: Some(0.5),
        ..Default::default()
    }
}

fn stage(weight: u32, bake: u64, max: u64) -> v1::Stage {
    v1::Stage {
        weight,
        min_bake_time: Some(Duration::from_secs(bake).into()),
        min_requests: 500,
        max_stage_time: Some(Duration::from_secs(max).into()),
    }
}

/// Simulates one stage from its clock start; returns the verdict that ended
/// it and when (seconds), or WAIT at the time limit.
fn run_stage(
    rng: &mut Rng,
    stage: &v1::Stage,
    candidate_errors: &Errors,
    baseline_errors: &Errors,
) -> (v1::Verdict, f64) {
    let weight = f64::from(stage.weight) / 10_000.0;
    let max = Duration::try_from(stage.max_stage_time.unwrap())
        .unwrap()
        .as_secs_f64();
    let phases: Vec<f64> = (0..AGENTS).map(|_| rng.unit() * REPORT).collect();
    // Per agent: counts since its last report; reports in flight with the
    // time they become visible.
    let mut pending = vec![(Counts::default(), Counts::default()); AGENTS];
    let mut in_flight: Vec<(f64, Counts, Counts)> = Vec::new();
    let mut cand = Counts::default();
    let mut base = Counts::default();
    let per_step = RATE * STEP / AGENTS as f64;
    let mut next_tick = TICK;
    let mut t = 0.0;
    let mut carry = [0.0f64; AGENTS];
    while t < max + TICK {
        t += STEP;
        for (agent, (c, b)) in pending.iter_mut().enumerate() {
            carry[agent] += per_step;
            let n = carry[agent].floor() as u64;
            carry[agent] -= n as f64;
            for _ in 0..n {
                let to_candidate = rng.unit() < weight;
                let (side, p) = if to_candidate {
                    (&mut *c, candidate_errors(t))
                } else {
                    (&mut *b, baseline_errors(t))
                };
                side.requests += 1;
                if rng.unit() < p {
                    side.errors += 1;
                }
            }
            // A report at this agent's phase, every REPORT seconds.
            let since = (t - phases[agent]).rem_euclid(REPORT);
            if since < STEP {
                // Visible at the replica's next flush after arrival.
                let flush = (t / FLUSH).ceil() * FLUSH;
                in_flight.push((flush, *c, *b));
                *c = Counts::default();
                *b = Counts::default();
            }
        }
        if t + 1e-9 >= next_tick {
            next_tick += TICK;
            in_flight.retain(|(visible, c, b)| {
                if *visible <= t {
                    for (side, counts) in [(&mut cand, c), (&mut base, b)] {
                        side.requests += counts.requests;
                        side.errors += counts.errors;
                    }
                    false
                } else {
                    true
                }
            });
            let j = judge_stage(&StageInput {
                stage,
                gates: &gates(),
                elapsed: Duration::from_secs_f64(t),
                candidate: &telemetry("b", &cand),
                baseline: &telemetry("a", &base),
            });
            if j.verdict != v1::Verdict::Wait {
                return (j.verdict, t);
            }
        }
    }
    (v1::Verdict::Wait, max)
}

fn quantiles(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    format!(
        "p50 {:.2} s, p90 {:.2} s, p99 {:.2} s, max {:.2} s",
        q(0.5),
        q(0.9),
        q(0.99),
        v[v.len() - 1]
    )
}

fn main() {
    let rollouts: usize = std::env::args()
        .nth(1)
        .map_or(1000, |a| a.parse().expect("ROLLOUTS must be a number"));
    let mut rng = Rng(0x5eed);

    // (a) Hard failure: the candidate (10% of traffic) starts failing half
    // its requests 30 s into a healthy stage.
    let onset = 30.0;
    let mut times = Vec::new();
    let mut missed = 0;
    for _ in 0..rollouts {
        let st = stage(1000, 60, 600);
        let cand = move |t: f64| if t >= onset { 0.5 } else { 0.01 };
        match run_stage(&mut rng, &st, &cand, &|_| 0.01) {
            (v1::Verdict::Fail, t) if t >= onset => times.push(t - onset),
            _ => missed += 1,
        }
    }
    println!(
        "(a) hard failure (50% 5xx at 10% weight) to rollback decision, {rollouts} rollouts: {}; not caught after the onset: {missed}",
        quantiles(times)
    );

    // (b) Subtle regression from the stage's start: baseline 1%, candidate
    // 3%, candidate at 5% of 1,000 req/s.
    let mut times = Vec::new();
    let mut missed = 0;
    for _ in 0..rollouts {
        let st = stage(500, 600, 600);
        match run_stage(&mut rng, &st, &|_| 0.03, &|_| 0.01) {
            (v1::Verdict::Fail, t) => times.push(t),
            _ => missed += 1,
        }
    }
    println!(
        "(b) subtle regression (1% -> 3% at 5% weight) to rollback decision, {rollouts} rollouts: {}; not caught: {missed}",
        quantiles(times)
    );

    // (c) Healthy candidate, same 1% error rate as the baseline, through a
    // whole rollout of four stages (5%, 25%, 50%, 100%; 60 s bake each).
    let mut rolled_back = 0;
    let mut durations = Vec::new();
    for _ in 0..rollouts {
        let mut total = 0.0;
        let mut failed = false;
        for w in [500, 2500, 5000, 10_000] {
            let (verdict, t) = run_stage(&mut rng, &stage(w, 60, 600), &|_| 0.01, &|_| 0.01);
            total += t;
            if verdict == v1::Verdict::Fail {
                failed = true;
                break;
            }
        }
        if failed {
            rolled_back += 1;
        } else {
            durations.push(total);
        }
    }
    println!(
        "(c) healthy candidate (1% = 1%), {rollouts} four-stage rollouts: {rolled_back} rolled back ({:.2}%); rollout time {}",
        rolled_back as f64 * 100.0 / rollouts as f64,
        quantiles(durations)
    );
}
