//! Decision quality of the rollout analysis: drives the control plane's own
//! stage judge (`analysis::judge_stage`) with synthetic telemetry over many
//! simulated rollouts and reports how fast a bad candidate is caught and how
//! often a healthy one is rolled back by mistake, for the anytime-valid
//! judge Shepherd uses and for the fixed-horizon judge it replaced, on the
//! same simulated traffic (each rollout's traffic comes from its own seed).
//!
//! The telemetry path is modelled as it runs by default: traffic spread
//! over 10 agents, each reporting every second at its own phase; a report
//! reaches the database at the replica's next flush (every second) and is
//! judged at the leader's next tick (every 250 ms). An agent whose backend
//! failed 5 times since its last report, in at least a quarter of that
//! backend's attempts, reports at once (at most every 100 ms), such an
//! urgent report is judged within 100 ms, and the replica asks every other
//! agent for a report at once (at most every 250 ms). Each request is an error
//! (5xx), an app error (a 4xx the request caused), a rejected answer (wrong
//! key, unknown model, ...) or a success, with each side's probabilities.
//!
//! Usage: decision-bench [ROLLOUTS] [matrix|cases|cost|all]   (default 1000,
//! all; `cases` includes the cost case, `cost` runs it alone)
//! With WHY=1 in the environment, every FAIL's reason is printed to stderr.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::too_many_arguments
)]

use std::time::Duration;

use shepherd_control_plane::analysis::{
    Costs, PassRule, Side, StageInput, Statistics, Tally, Window, judge_stage,
};
use shepherd_control_plane::rollout::model::{Stage, Verdict};
use shepherd_proto::cost::Spend;
use shepherd_proto::v1;

const AGENTS: usize = 10;
const REPORT: f64 = 1.0;
const FLUSH: f64 = 1.0;
const TICK: f64 = 0.25;
/// The simulation's time step.
const STEP: f64 = 0.05;
/// An agent's urgent report: one backend's failures since the last report
/// (at least a quarter of its attempts), the shortest time between two
/// reports, and the time from sending to being judged (the replica's
/// urgent flush and the leader's urgent tick, at most 50 ms each).
const URGENT_FAILURES: u64 = 3;
const URGENT_GAP: f64 = 0.1;
const URGENT_PATH: f64 = 0.1;
/// Shortest time between two requests of the replica for every agent's
/// report (ReportNow), which an urgent report triggers.
const REPORT_NOW_GAP: f64 = 0.25;

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

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit().max(1e-300), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// A binomial draw: exact (by inversion) while the mean is small, the
    /// normal approximation above.
    fn binomial(&mut self, n: u64, p: f64) -> u64 {
        if n == 0 || p <= 0.0 {
            return 0;
        }
        if p >= 1.0 {
            return n;
        }
        let mean = n as f64 * p;
        if mean.min(n as f64 - mean) > 30.0 {
            let draw = mean + self.normal() * (mean * (1.0 - p)).sqrt();
            return draw.round().clamp(0.0, n as f64) as u64;
        }
        if p > 0.5 {
            return n - self.binomial(n, 1.0 - p);
        }
        // Inversion over the probability mass function.
        let q = 1.0 - p;
        let mut mass = q.powf(n as f64);
        let mut cumulative = mass;
        let u = self.unit();
        let mut k = 0;
        while u > cumulative && k < n {
            mass *= (n - k) as f64 / (k + 1) as f64 * p / q;
            cumulative += mass;
            k += 1;
        }
        k
    }
}

#[derive(Clone, Copy, Default, PartialEq)]
struct Counts {
    requests: u64,
    errors: u64,
    app_errors: u64,
    rejected: u64,
    /// Successful answers priced, the sum of their costs and of their
    /// squares (pico-units).
    priced: u64,
    picos: f64,
    squares: f64,
}

impl Counts {
    /// Failures (5xx and rejections) and attempts, as the judge counts them.
    fn tally(&self) -> Tally {
        Tally {
            errors: self.errors + self.rejected,
            requests: self.requests,
        }
    }

    /// The failures since the last report call for an urgent one.
    fn jumped(&self) -> bool {
        let failures = self.errors + self.rejected;
        failures >= URGENT_FAILURES && failures * 4 >= self.requests
    }

    fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.app_errors += o.app_errors;
        self.rejected += o.rejected;
        self.priced += o.priced;
        self.picos += o.picos;
        self.squares += o.squares;
    }
}

/// The cost of an answer at the baseline's prices, in pico-units: 200
/// input tokens at 2.50 and 1 to 1,000 output tokens at 8.00 per million,
/// skewed short (the output is 1 + 999·U³ for a uniform U: a mean of 251).
fn answer_cost(rng: &mut Rng) -> f64 {
    let u = rng.unit();
    200.0 * 2.5e6 + 8e6 * (1.0 + (999.0 * u * u * u).round())
}

/// What one backend answers: the probability of each failure class.
#[derive(Clone, Copy, Default)]
struct Profile {
    error: f64,
    app_error: f64,
    rejected: f64,
    /// Prices as a multiple of the baseline's (0: not priced).
    price: f64,
}

impl Profile {
    fn errors(error: f64) -> Self {
        Self {
            error,
            ..Self::default()
        }
    }

    /// Draws the answers to `n` requests into `side`.
    fn draw(&self, rng: &mut Rng, n: u64, side: &mut Counts) {
        side.requests += n;
        let errors = rng.binomial(n, self.error);
        let rest = n - errors;
        let app = rng.binomial(rest, self.app_error / (1.0 - self.error).max(1e-12));
        let rejected = rng.binomial(
            rest - app,
            self.rejected / (1.0 - self.error - self.app_error).max(1e-12),
        );
        side.errors += errors;
        side.app_errors += app;
        side.rejected += rejected;
        if self.price > 0.0 {
            let ok = rest - app - rejected;
            side.priced += ok;
            for _ in 0..ok {
                let x = self.price * answer_cost(rng);
                side.picos += x;
                side.squares += x * x;
            }
        }
    }
}

/// One backend's answers as a function of time.
type Answers = dyn Fn(f64) -> Profile + Sync;

fn telemetry(backend: &str, s: &Counts) -> Side {
    Side {
        backend: backend.into(),
        outcomes: v1::Outcomes {
            success: s.requests - s.errors - s.app_errors - s.rejected,
            server_error: s.errors,
            app_error: s.app_errors,
            backend_rejected: s.rejected,
            ..Default::default()
        },
        cost: (s.priced > 0).then(|| Costs {
            served: Spend {
                picos: s.picos as u128,
                priced: s.priced,
                unpriced: 0,
                squares: s.squares as u128,
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One judge: its statistics and what its stages wait for.
#[derive(Clone, Copy)]
struct Judge {
    statistics: Statistics,
    rule: PassRule,
}

const SEQUENTIAL: Judge = Judge {
    statistics: Statistics::Sequential,
    rule: PassRule::NoRegression,
};
const FIXED: Judge = Judge {
    statistics: Statistics::FixedHorizon,
    rule: PassRule::NoRegression,
};
const EVIDENCE: Judge = Judge {
    statistics: Statistics::Sequential,
    rule: PassRule::ProvenNotWorse,
};

/// The traffic and the stages of a simulation.
#[derive(Clone, Copy)]
struct Setup {
    /// Requests per second over all agents.
    rate: f64,
    bake: u64,
    max: u64,
    min_requests: u64,
    /// Agents send urgent reports.
    urgent: bool,
}

fn stage(weight: u32, s: &Setup) -> Stage {
    Stage {
        weight,
        min_bake: Duration::from_secs(s.bake),
        min_requests: s.min_requests,
        max_time: Some(Duration::from_secs(s.max)),
    }
}

/// Simulates one stage from its clock start with the traffic of `seed`;
/// returns the verdict that ended it and when (seconds), or WAIT at the
/// time limit.
fn run_stage(
    seed: u64,
    setup: &Setup,
    stage: &Stage,
    gates: &v1::Gates,
    judge: Judge,
    candidate: &Answers,
    baseline: &Answers,
) -> (Verdict, f64) {
    let mut rng = Rng(seed);
    let weight = f64::from(stage.weight) / 10_000.0;
    let max = stage.max_time.unwrap().as_secs_f64();
    let bake = stage.min_bake.as_secs_f64();
    let phases: Vec<f64> = (0..AGENTS).map(|_| rng.unit() * REPORT).collect();
    // Per agent: counts since its last report; reports in flight with the
    // time they become visible.
    let mut pending = vec![(Counts::default(), Counts::default()); AGENTS];
    let mut last_report = [f64::NEG_INFINITY; AGENTS];
    let mut asked = [false; AGENTS];
    let mut last_asked = f64::NEG_INFINITY;
    let mut in_flight: Vec<(f64, u64, Counts, Counts)> = Vec::new();
    // What became visible, per 1 s telemetry window of the report's time.
    let mut windows: Vec<Window> = Vec::new();
    let mut cand = Counts::default();
    let mut base = Counts::default();
    let per_step = setup.rate * STEP / AGENTS as f64;
    let mut carry = [0.0f64; AGENTS];
    let mut t = 0.0;
    let mut judged_at_bake = false;
    let mut changed = false;
    while t < max + TICK {
        let start = t;
        t += STEP;
        for (agent, (c, b)) in pending.iter_mut().enumerate() {
            carry[agent] += per_step;
            let n = carry[agent].floor() as u64;
            carry[agent] -= n as f64;
            let to_candidate = rng.binomial(n, weight);
            candidate(start).draw(&mut rng, to_candidate, c);
            baseline(start).draw(&mut rng, n - to_candidate, b);
            // A report at this agent's phase, every REPORT seconds, an
            // urgent one, or one the control plane asked for.
            let due = (t - phases[agent]).rem_euclid(REPORT) < STEP - 1e-9;
            let may_hurry = setup.urgent && t - last_report[agent] >= URGENT_GAP - 1e-9;
            let urgent = may_hurry && (c.jumped() || b.jumped());
            let requested = may_hurry && asked[agent];
            if urgent && t - last_asked >= REPORT_NOW_GAP - 1e-9 {
                // The replica asks every agent for a report at once.
                last_asked = t;
                asked = [true; AGENTS];
            }
            if due || urgent || requested {
                asked[agent] = false;
                // Visible at the replica's next flush after arrival, or
                // judged at once when urgent or requested.
                let visible = if urgent || requested {
                    t + URGENT_PATH
                } else {
                    (t / FLUSH).ceil() * FLUSH
                };
                in_flight.push((visible, t.floor() as u64 + 1, *c, *b));
                *c = Counts::default();
                *b = Counts::default();
                last_report[agent] = t;
            }
        }
        in_flight.retain(|(visible, index, c, b)| {
            if *visible <= t + 1e-9 {
                cand.add(c);
                base.add(b);
                let at = windows.partition_point(|w| w.index < *index);
                if windows.get(at).is_none_or(|w| w.index != *index) {
                    windows.insert(
                        at,
                        Window {
                            index: *index,
                            ..Default::default()
                        },
                    );
                }
                windows[at].candidate.add(c.tally());
                windows[at].baseline.add(b.tally());
                changed = true;
                false
            } else {
                true
            }
        });
        // The verdict moves only with new data or the end of the bake.
        let baked = t >= bake && !judged_at_bake;
        if !changed && !baked {
            continue;
        }
        judged_at_bake |= t >= bake;
        changed = false;
        let j = judge_stage(&StageInput {
            stage,
            gates,
            elapsed: Duration::from_secs_f64(t),
            candidate: &telemetry("b", &cand),
            baseline: &telemetry("a", &base),
            windows: &windows,
            rule: judge.rule,
            statistics: judge.statistics,
            currency: "USD",
        });
        if j.verdict != Verdict::Wait {
            if j.verdict == Verdict::Fail && std::env::var("WHY").is_ok() {
                eprintln!("{} {t:.2}: {}", stage.weight, j.reason);
            }
            return (j.verdict, t);
        }
    }
    (Verdict::Wait, max)
}

fn quantile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

fn quantiles(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "none".into();
    }
    format!(
        "p50 {:.2} s, p90 {:.2} s, p99 {:.2} s, max {:.2} s",
        quantile(&mut v, 0.5),
        quantile(&mut v, 0.9),
        quantile(&mut v, 0.99),
        quantile(&mut v, 1.0)
    )
}

/// How whole rollouts ended.
#[derive(Default)]
struct Rollouts {
    rolled_back: usize,
    inconclusive: usize,
    durations: Vec<f64>,
    /// Each stage's time, per stage.
    stages: Vec<Vec<f64>>,
}

impl Rollouts {
    /// "stage 1: p50 …; stage 2: …".
    fn per_stage(&self) -> String {
        self.stages
            .iter()
            .enumerate()
            .map(|(k, t)| format!("stage {}: {}", k + 1, quantiles(t.clone())))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Runs `rollouts` rollouts through the stages `weights`, stopping at a
/// failed or inconclusive stage. Rollout `i` uses the seeds of `seed + i`.
fn whole_rollouts(
    seed: u64,
    rollouts: usize,
    setup: &Setup,
    weights: &[u32],
    gates: &v1::Gates,
    judge: Judge,
    candidate: &Answers,
    baseline: &Answers,
) -> Rollouts {
    let mut out = Rollouts::default();
    for i in 0..rollouts {
        let mut total = 0.0;
        let mut ended = None;
        for (k, &w) in weights.iter().enumerate() {
            let seed = mix(seed, i as u64, k as u64);
            let (verdict, t) = run_stage(
                seed,
                setup,
                &stage(w, setup),
                gates,
                judge,
                candidate,
                baseline,
            );
            total += t;
            if out.stages.len() <= k {
                out.stages.resize_with(k + 1, Vec::new);
            }
            out.stages[k].push(t);
            if verdict != Verdict::Pass {
                ended = Some(verdict);
                break;
            }
        }
        match ended {
            Some(Verdict::Fail) => out.rolled_back += 1,
            Some(_) => out.inconclusive += 1,
            None => out.durations.push(total),
        }
    }
    out
}

fn mix(seed: u64, i: u64, k: u64) -> u64 {
    let mut r =
        Rng(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ k.wrapping_mul(0xd6e8_feb8_6659_fd93));
    r.next()
}

/// Times to a FAIL of a stage at `weight` whose candidate answers as
/// `candidate` from its start; and how many were not caught.
fn time_to_fail(
    seed: u64,
    rollouts: usize,
    setup: &Setup,
    weight: u32,
    gates: &v1::Gates,
    judge: Judge,
    candidate: &Answers,
    baseline: &Answers,
) -> (Vec<f64>, usize) {
    let mut times = Vec::new();
    let mut missed = 0;
    for i in 0..rollouts {
        match run_stage(
            mix(seed, i as u64, 0),
            setup,
            &stage(weight, setup),
            gates,
            judge,
            candidate,
            baseline,
        ) {
            (Verdict::Fail, t) => times.push(t),
            _ => missed += 1,
        }
    }
    (times, missed)
}

/// The error-rate gates of the matrix: the test at 0.01 with a margin of a
/// quarter of the baseline's error rate.
fn matrix_gates(base: f64) -> v1::Gates {
    v1::Gates {
        significance: Some(0.01),
        min_error_rate_effect_percent: Some(base * 100.0 * 0.25),
        ..Default::default()
    }
}

fn p99_text(mut v: Vec<f64>, missed: usize) -> String {
    if v.is_empty() {
        return format!("none caught ({missed} missed)");
    }
    let p50 = quantile(&mut v, 0.5);
    let p99 = if missed * 100 > v.len() + missed {
        "–".to_string()
    } else {
        let share = 0.99 * (v.len() + missed) as f64 / v.len() as f64;
        format!("{:.1}", quantile(&mut v, share.min(1.0)))
    };
    let missed = if missed > 0 {
        format!(" ({missed} missed)")
    } else {
        String::new()
    };
    format!("{p50:.1} / {p99}{missed}")
}

/// The matrix: traffic, first-stage weight, baseline error rate, and the
/// candidate's error rate as a multiple of it. Healthy cells (1×, and 1.1×:
/// slightly worse, within the margin) run whole four-stage rollouts with
/// 60 s bakes and count false rollbacks; regression cells (1.5×, 2×, 5×)
/// time the first stage's rollback. Both judges, same seeds.
fn matrix(rollouts: usize) {
    println!("## Matrix ({rollouts} rollouts per cell and judge)");
    println!();
    println!("healthy cells: rolled back (inconclusive) of {rollouts}, sequential | fixed horizon");
    println!("regression cells: time to rollback p50 / p99 in s, sequential | fixed horizon");
    println!();
    println!("| req/s | weight | baseline errors | 1× | 1.1× (within margin) | 1.5× | 2× | 5× |");
    println!("| ---: | ---: | ---: | --- | --- | --- | --- | --- |");
    let cells: Vec<(f64, u32, f64)> = [10.0, 100.0, 1000.0, 10_000.0]
        .iter()
        .flat_map(|&rate| {
            [100u32, 500]
                .into_iter()
                .flat_map(move |w| [0.001, 0.01, 0.05].into_iter().map(move |b| (rate, w, b)))
        })
        .collect();
    let rows: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = cells
            .chunks(cells.len().div_ceil(2))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|&c| matrix_row(rollouts, c))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    for r in rows {
        println!("{r}");
    }
    println!();
}

fn matrix_row(rollouts: usize, (rate, weight, base): (f64, u32, f64)) -> String {
    let setup = Setup {
        rate,
        bake: 60,
        max: 600,
        min_requests: 100,
        urgent: true,
    };
    let gates = matrix_gates(base);
    let baseline = move |_: f64| Profile::errors(base);
    let seed = (rate as u64) << 32 ^ u64::from(weight) << 16 ^ (base * 1e4) as u64;
    let weights = [weight, 2500, 5000, 10_000];
    let mut cells = Vec::new();
    for factor in [1.0, 1.1] {
        let cand = move |_: f64| Profile::errors(base * factor);
        let text: Vec<String> = [SEQUENTIAL, FIXED]
            .iter()
            .map(|&judge| {
                let r = whole_rollouts(
                    seed, rollouts, &setup, &weights, &gates, judge, &cand, &baseline,
                );
                format!("{} ({})", r.rolled_back, r.inconclusive)
            })
            .collect();
        cells.push(text.join(" \\| "));
    }
    for factor in [1.5, 2.0, 5.0] {
        let cand = move |_: f64| Profile::errors(base * factor);
        let text: Vec<String> = [SEQUENTIAL, FIXED]
            .iter()
            .map(|&judge| {
                let (times, missed) = time_to_fail(
                    seed, rollouts, &setup, weight, &gates, judge, &cand, &baseline,
                );
                p99_text(times, missed)
            })
            .collect();
        cells.push(text.join(" \\| "));
    }
    format!(
        "| {rate} | {}% | {}% | {} |",
        f64::from(weight) / 100.0,
        base * 100.0,
        cells.join(" | ")
    )
}

/// The named cases of the goals and of the earlier benches.
/// The traffic and stages of the cases: 1,000 req/s, 60 s bakes, 600 s at
/// most, 500 requests at least, urgent reports on.
const CASES: Setup = Setup {
    rate: 1000.0,
    bake: 60,
    max: 600,
    min_requests: 500,
    urgent: true,
};

fn cases(rollouts: usize) {
    let setup = CASES;
    let g = v1::Gates {
        max_error_rate_percent: Some(5.0),
        significance: Some(0.01),
        min_error_rate_effect_percent: Some(0.5),
        ..Default::default()
    };
    let healthy = |_: f64| Profile::errors(0.01);
    let judges = [("sequential", SEQUENTIAL), ("fixed horizon", FIXED)];

    // (a) Hard failure: the candidate (10% of traffic) starts failing half
    // its requests 30 s into a healthy stage.
    let onset = 30.0;
    let cand = move |t: f64| Profile::errors(if t >= onset { 0.5 } else { 0.01 });
    let no_urgent = Setup {
        urgent: false,
        ..setup
    };
    for (name, judge, setup) in [
        ("sequential", SEQUENTIAL, &setup),
        ("fixed horizon", FIXED, &setup),
        ("sequential, no urgent reports", SEQUENTIAL, &no_urgent),
    ] {
        let mut times = Vec::new();
        let mut missed = 0;
        for i in 0..rollouts {
            match run_stage(
                mix(1, i as u64, 0),
                setup,
                &stage(1000, setup),
                &g,
                judge,
                &cand,
                &healthy,
            ) {
                (Verdict::Fail, t) if t >= onset => times.push(t - onset),
                _ => missed += 1,
            }
        }
        println!(
            "(a) {name}: hard failure (50% 5xx at 10% weight) to rollback decision: {}; not caught after the onset: {missed}",
            quantiles(times)
        );
    }

    // (b) Subtle regression from the stage's start: baseline 1%, candidate
    // 3%, candidate at 5% of 1,000 req/s.
    for (name, judge) in judges {
        let (times, missed) = time_to_fail(
            2,
            rollouts,
            &setup,
            500,
            &g,
            judge,
            &|_| Profile::errors(0.03),
            &healthy,
        );
        println!(
            "(b) {name}: subtle regression (1% -> 3% at 5% weight) to rollback decision: {}; not caught: {missed}",
            quantiles(times)
        );
    }

    // (c) Healthy candidate, same 1% error rate as the baseline, through a
    // whole rollout of four stages (5%, 25%, 50%, 100%; 60 s bake each).
    let weights = [500, 2500, 5000, 10_000];
    for (name, judge) in judges {
        let r = whole_rollouts(3, rollouts, &setup, &weights, &g, judge, &healthy, &healthy);
        println!(
            "(c) {name}: healthy candidate (1% = 1%), four-stage rollouts: {} rolled back ({:.2}%), {} inconclusive; rollout time {}",
            r.rolled_back,
            r.rolled_back as f64 * 100.0 / rollouts as f64,
            r.inconclusive,
            quantiles(r.durations)
        );
    }

    // (c') The same with stages that pass on evidence: a 10 s minimum bake,
    // each comparative gate proving the candidate within its margin. A team
    // that wants fast stages sets a margin it can prove fast: 1 point here.
    let fast = Setup { bake: 10, ..setup };
    let margin = v1::Gates {
        min_error_rate_effect_percent: Some(1.0),
        ..g
    };
    let r = whole_rollouts(
        4, rollouts, &fast, &weights, &margin, EVIDENCE, &healthy, &healthy,
    );
    println!(
        "(c') evidence-driven stages (10 s minimum bake, 1-point margin), healthy candidate: {} rolled back, {} inconclusive; rollout time {} ({})",
        r.rolled_back,
        r.inconclusive,
        quantiles(r.durations.clone()),
        r.per_stage()
    );
    let r = whole_rollouts(
        4, rollouts, &fast, &weights, &g, EVIDENCE, &healthy, &healthy,
    );
    println!(
        "(c') evidence-driven stages (10 s minimum bake, 0.5-point margin), healthy candidate: {} rolled back, {} inconclusive; rollout time {}",
        r.rolled_back,
        r.inconclusive,
        quantiles(r.durations)
    );
    // The first stage takes most of the time: at 10% it sees twice the
    // candidate requests a second.
    let r = whole_rollouts(
        4,
        rollouts,
        &fast,
        &[1000, 2500, 5000, 10_000],
        &margin,
        EVIDENCE,
        &healthy,
        &healthy,
    );
    println!(
        "(c') evidence-driven stages (10 s minimum bake, 1-point margin), first stage at 10%, healthy candidate: {} rolled back, {} inconclusive; rollout time {} ({})",
        r.rolled_back,
        r.inconclusive,
        quantiles(r.durations.clone()),
        r.per_stage()
    );

    // The default gates alone (the policy sets none).
    let none = v1::Gates::default();

    // (d) A candidate that rejects every request (wrong key, unknown model)
    // or answers 400 to every request, at 5% weight.
    let rejecting = |_: f64| Profile {
        rejected: 1.0,
        ..Profile::default()
    };
    let bad_request = |_: f64| Profile {
        app_error: 1.0,
        ..Profile::default()
    };
    // (e) A candidate refusing a parameter some requests carry: 3% of its
    // answers rejected, at 5% weight.
    let partly = |_: f64| Profile {
        error: 0.01,
        rejected: 0.03,
        ..Profile::default()
    };
    for (label, cand) in [
        (
            "(d) candidate rejecting every request (401/404/...)",
            &rejecting as &Answers,
        ),
        ("(d) candidate answering 400 to every request", &bad_request),
        ("(e) candidate rejecting 3% of requests", &partly),
    ] {
        for (name, judge) in judges {
            let (times, missed) =
                time_to_fail(5, rollouts, &setup, 500, &none, judge, cand, &healthy);
            println!(
                "{label} at 5% weight, default gates, {name}: {}; not caught: {missed}",
                quantiles(times)
            );
        }
    }

    // (f) The control: the app's own bad requests (20% of them, and 2%) get
    // the same 400 from both sides; healthy otherwise. Whole rollouts with
    // the default gates and with the error-rate gates of (a)-(c).
    for share in [0.2, 0.02] {
        let app = move |_: f64| Profile {
            error: 0.01,
            app_error: share,
            ..Profile::default()
        };
        for (gates_name, gates) in [("default gates", &none), ("error-rate gates", &g)] {
            for (name, judge) in judges {
                let r = whole_rollouts(6, rollouts, &setup, &weights, gates, judge, &app, &app);
                println!(
                    "(f) app sends {:.0}% bad requests to both sides, {gates_name}, {name}: {} rolled back ({:.2}%); rollout time {}",
                    share * 100.0,
                    r.rolled_back,
                    r.rolled_back as f64 * 100.0 / rollouts as f64,
                    quantiles(r.durations)
                );
            }
        }
    }
}

/// (g) The cost gate: a candidate three times pricier per answer, and
/// healthy ones as costly as the baseline or 10% pricier (within a ceiling
/// of 1.2), at 5% of 1,000 req/s.
fn cost_cases(rollouts: usize) {
    let setup = CASES;
    let gates = v1::Gates {
        max_cost_ratio: Some(1.2),
        ..Default::default()
    };
    let priced = |price: f64| {
        move |_: f64| Profile {
            error: 0.01,
            price,
            ..Profile::default()
        }
    };
    let baseline = priced(1.0);
    let judges = [("sequential", SEQUENTIAL), ("fixed horizon", FIXED)];
    for (name, judge) in judges {
        let (times, missed) = time_to_fail(
            7,
            rollouts,
            &setup,
            500,
            &gates,
            judge,
            &priced(3.0),
            &baseline,
        );
        println!(
            "(g) {name}: candidate 3x pricier per answer at 5% weight, max_cost_ratio 1.2, to rollback decision: {}; not caught: {missed}",
            quantiles(times)
        );
    }
    let weights = [500, 2500, 5000, 10_000];
    for price in [1.0, 1.1] {
        for (name, judge) in judges {
            let r = whole_rollouts(
                8,
                rollouts,
                &setup,
                &weights,
                &gates,
                judge,
                &priced(price),
                &baseline,
            );
            println!(
                "(g) {name}: candidate at {price}x the baseline's cost, max_cost_ratio 1.2, four-stage rollouts: {} rolled back ({:.2}%), {} inconclusive; rollout time {}",
                r.rolled_back,
                r.rolled_back as f64 * 100.0 / rollouts as f64,
                r.inconclusive,
                quantiles(r.durations)
            );
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rollouts: usize = args
        .next()
        .map_or(1000, |a| a.parse().expect("ROLLOUTS must be a number"));
    let what = args.next().unwrap_or_else(|| "all".into());
    if what == "cases" || what == "all" {
        cases(rollouts);
    }
    if what == "cost" || what == "cases" || what == "all" {
        cost_cases(rollouts);
    }
    if what == "matrix" || what == "all" {
        matrix(rollouts);
    }
}
