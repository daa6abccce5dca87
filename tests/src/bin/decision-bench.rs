//! Decision quality of the rollout analysis: drives the control plane's own
//! stage judge (`analysis::judge_stage`) with synthetic telemetry over many
//! simulated rollouts and reports how fast a bad candidate is caught and how
//! often a healthy one is rolled back by mistake.
//!
//! The telemetry path is modelled as it runs: 1,000 req/s spread over 10
//! agents, each reporting every second at its own phase; a report reaches
//! the database at the replica's next flush (every second) and is judged at
//! the leader's next tick (every 250 ms). Each request is an error (5xx), an
//! app error (a 4xx the request caused), a rejected answer (wrong key,
//! unknown model, ...) or a success, with each side's probabilities.
//!
//! Usage: decision-bench [ROLLOUTS]   (default 1000 per case); with WHY=1 in
//! the environment, every FAIL's reason is printed to stderr.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
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
    app_errors: u64,
    rejected: u64,
}

/// What one backend answers: the probability of each failure class.
#[derive(Clone, Copy, Default)]
struct Profile {
    error: f64,
    app_error: f64,
    rejected: f64,
}

impl Profile {
    fn errors(error: f64) -> Self {
        Self {
            error,
            ..Self::default()
        }
    }

    /// Draws one answer into `side`.
    fn draw(&self, rng: &mut Rng, side: &mut Counts) {
        side.requests += 1;
        let u = rng.unit();
        if u < self.error {
            side.errors += 1;
        } else if u < self.error + self.app_error {
            side.app_errors += 1;
        } else if u < self.error + self.app_error + self.rejected {
            side.rejected += 1;
        }
    }
}

/// One backend's answers as a function of time.
type Answers = dyn Fn(f64) -> Profile;

fn telemetry(backend: &str, s: &Counts) -> v1::BackendTelemetry {
    v1::BackendTelemetry {
        backend: backend.into(),
        outcomes: Some(v1::Outcomes {
            success: s.requests - s.errors - s.app_errors - s.rejected,
            server_error: s.errors,
            app_error: s.app_errors,
            backend_rejected: s.rejected,
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
    gates: &v1::Gates,
    candidate: &Answers,
    baseline: &Answers,
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
                let (side, profile) = if to_candidate {
                    (&mut *c, candidate(t))
                } else {
                    (&mut *b, baseline(t))
                };
                profile.draw(rng, side);
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
                        side.app_errors += counts.app_errors;
                        side.rejected += counts.rejected;
                    }
                    false
                } else {
                    true
                }
            });
            let j = judge_stage(&StageInput {
                stage,
                gates,
                elapsed: Duration::from_secs_f64(t),
                candidate: &telemetry("b", &cand),
                baseline: &telemetry("a", &base),
            });
            if j.verdict != v1::Verdict::Wait {
                if j.verdict == v1::Verdict::Fail && std::env::var("WHY").is_ok() {
                    eprintln!("{} {t:.2}: {}", stage.weight, j.reason);
                }
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

/// Runs `rollouts` rollouts through the stages `weights` (60 s bake each),
/// stopping at a failed stage; returns how many were rolled back and the
/// durations of the rest.
fn whole_rollouts(
    rng: &mut Rng,
    rollouts: usize,
    gates: &v1::Gates,
    candidate: &Answers,
    baseline: &Answers,
) -> (usize, Vec<f64>) {
    let mut rolled_back = 0;
    let mut durations = Vec::new();
    for _ in 0..rollouts {
        let mut total = 0.0;
        let mut failed = false;
        for w in [500, 2500, 5000, 10_000] {
            let (verdict, t) = run_stage(rng, &stage(w, 60, 600), gates, candidate, baseline);
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
    (rolled_back, durations)
}

/// Times to a FAIL of a stage at `weight` whose candidate answers as
/// `candidate` from its start; and how many were not caught.
fn time_to_fail(
    rng: &mut Rng,
    rollouts: usize,
    weight: u32,
    gates: &v1::Gates,
    candidate: &Answers,
    baseline: &Answers,
) -> (Vec<f64>, usize) {
    let mut times = Vec::new();
    let mut missed = 0;
    for _ in 0..rollouts {
        match run_stage(rng, &stage(weight, 600, 600), gates, candidate, baseline) {
            (v1::Verdict::Fail, t) => times.push(t),
            _ => missed += 1,
        }
    }
    (times, missed)
}

fn main() {
    let rollouts: usize = std::env::args()
        .nth(1)
        .map_or(1000, |a| a.parse().expect("ROLLOUTS must be a number"));
    let mut rng = Rng(0x5eed);
    let g = gates();
    let healthy = |_: f64| Profile::errors(0.01);

    // (a) Hard failure: the candidate (10% of traffic) starts failing half
    // its requests 30 s into a healthy stage.
    let onset = 30.0;
    let mut times = Vec::new();
    let mut missed = 0;
    for _ in 0..rollouts {
        let st = stage(1000, 60, 600);
        let cand = move |t: f64| Profile::errors(if t >= onset { 0.5 } else { 0.01 });
        match run_stage(&mut rng, &st, &g, &cand, &healthy) {
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
    let (times, missed) = time_to_fail(
        &mut rng,
        rollouts,
        500,
        &g,
        &|_| Profile::errors(0.03),
        &healthy,
    );
    println!(
        "(b) subtle regression (1% -> 3% at 5% weight) to rollback decision, {rollouts} rollouts: {}; not caught: {missed}",
        quantiles(times)
    );

    // (c) Healthy candidate, same 1% error rate as the baseline, through a
    // whole rollout of four stages (5%, 25%, 50%, 100%; 60 s bake each).
    let (rolled_back, durations) = whole_rollouts(&mut rng, rollouts, &g, &healthy, &healthy);
    println!(
        "(c) healthy candidate (1% = 1%), {rollouts} four-stage rollouts: {rolled_back} rolled back ({:.2}%); rollout time {}",
        rolled_back as f64 * 100.0 / rollouts as f64,
        quantiles(durations)
    );

    // The default gates alone (the policy sets none).
    let none = v1::Gates::default();

    // (d) A candidate that rejects every request (wrong key, unknown model)
    // or answers 400 to every request, at 5% weight.
    let rejecting = |_: f64| Profile {
        rejected: 1.0,
        ..Profile::default()
    };
    let (times, missed) = time_to_fail(&mut rng, rollouts, 500, &none, &rejecting, &healthy);
    println!(
        "(d) candidate rejecting every request (401/404/...) at 5% weight, default gates, {rollouts} stages: {}; not caught: {missed}",
        quantiles(times)
    );
    let bad_request = |_: f64| Profile {
        app_error: 1.0,
        ..Profile::default()
    };
    let (times, missed) = time_to_fail(&mut rng, rollouts, 500, &none, &bad_request, &healthy);
    println!(
        "(d) candidate answering 400 to every request at 5% weight, default gates, {rollouts} stages: {}; not caught: {missed}",
        quantiles(times)
    );

    // (e) A candidate refusing a parameter some requests carry: 3% of its
    // answers rejected, at 5% weight.
    let partly = |_: f64| Profile {
        error: 0.01,
        rejected: 0.03,
        ..Profile::default()
    };
    let (times, missed) = time_to_fail(&mut rng, rollouts, 500, &none, &partly, &healthy);
    println!(
        "(e) candidate rejecting 3% of requests at 5% weight, default gates, {rollouts} stages: {}; not caught: {missed}",
        quantiles(times)
    );

    // (f) The control: the app's own bad requests (20% of them, and 2%) get
    // the same 400 from both sides; healthy otherwise. Whole rollouts with
    // the default gates and with the error-rate gates of (a)-(c).
    for share in [0.2, 0.02] {
        let app = move |_: f64| Profile {
            error: 0.01,
            app_error: share,
            ..Profile::default()
        };
        for (name, gates) in [("default gates", &none), ("error-rate gates", &g)] {
            let (rolled_back, durations) = whole_rollouts(&mut rng, rollouts, gates, &app, &app);
            println!(
                "(f) app sends {:.0}% bad requests to both sides, {name}, {rollouts} four-stage rollouts: {rolled_back} rolled back ({:.2}%); rollout time {}",
                share * 100.0,
                rolled_back as f64 * 100.0 / rollouts as f64,
                quantiles(durations)
            );
        }
    }
}
