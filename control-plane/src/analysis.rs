//! Judging a rollout's gates from what each side did over a stage (a
//! [`Side`]: outcome counts and histograms, summed from the telemetry
//! windows by the leader). Each check says PASS, FAIL (with the numbers it
//! was made from) or WAIT (too little data: no data is never a pass), in
//! the rollout model's types.

use std::time::Duration;

use shepherd_proto::cost::{PICOS_PER_UNIT, Spend};
use shepherd_proto::histogram::Histogram;
use shepherd_proto::telemetry::{attempts, example, mean_similarity};
use shepherd_proto::v1;

pub use crate::rollout::model::PassRule;
use crate::rollout::model::{Figures, GateResult, SideCost, SideFigures, Stage, Verdict};
use crate::sequential::{self, Evidence};

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    Pass(String),
    Fail(String),
    Wait(String),
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

/// One backend's telemetry over a stage's windows, as the judge reads it:
/// its outcome counts, its latency and time-to-first-token histograms, an
/// example answer per failure class, and what its answers cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Side {
    pub backend: String,
    pub outcomes: v1::Outcomes,
    pub latency: Histogram,
    pub ttft: Histogram,
    pub examples: Vec<v1::FailureExample>,
    /// Spend by kind; `None` when the backend has no prices.
    pub cost: Option<Costs>,
    /// Output tokens of the answers served.
    pub output_tokens: u64,
    /// Hourly spend cap trips at the agents, and requests sent elsewhere
    /// (or not mirrored) while capped.
    pub spend_cap_trips: u64,
    pub spend_capped: u64,
}

/// A backend's spend by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Costs {
    pub served: Spend,
    pub failed: Spend,
    pub shadow: Spend,
}

impl Costs {
    pub fn of(c: &v1::Cost) -> Self {
        let spend = |s: &Option<v1::Spend>| s.as_ref().map(Spend::from_wire).unwrap_or_default();
        Costs {
            served: spend(&c.served),
            failed: spend(&c.failed),
            shadow: spend(&c.shadow),
        }
    }
}

impl Side {
    /// `requests` attempts, `errors` of them 5xx and the rest successes.
    #[cfg(test)]
    pub fn with_server_errors(requests: u64, errors: u64) -> Self {
        Side {
            outcomes: v1::Outcomes {
                success: requests - errors,
                server_error: errors,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A side from summed wire telemetry (rows were checked when they were
    /// merged; an absent or bad histogram is empty).
    pub fn of(t: &v1::BackendTelemetry) -> Self {
        let histogram = |h: &Option<v1::Histogram>| {
            h.as_ref()
                .and_then(|h| Histogram::from_wire(h).ok())
                .unwrap_or_default()
        };
        Side {
            backend: t.backend.clone(),
            outcomes: t.outcomes.unwrap_or_default(),
            latency: histogram(&t.latency),
            ttft: histogram(&t.ttft),
            examples: t.examples.clone(),
            cost: t.cost.as_ref().map(Costs::of),
            output_tokens: t.output_tokens,
            spend_cap_trips: t.spend_cap_trips,
            spend_capped: t.spend_capped,
        }
    }
}

/// Attempts that count against a backend: 5xx, timeouts, connect errors,
/// broken streams, rejected and malformed answers, breaker rejections and
/// injected faults.
pub fn errors(o: &v1::Outcomes) -> u64 {
    o.server_error
        + o.timeout
        + o.connect_error
        + o.stream_broken
        + o.backend_rejected
        + o.malformed
        + o.breaker_rejected
        + o.fault_injected
}

/// Answers showing the backend cannot serve the app at all: rejected
/// (wrong key, unknown model, unsupported parameter, quota) or malformed,
/// and the requests its breaker skipped because of them.
pub fn rejected(o: &v1::Outcomes) -> u64 {
    o.backend_rejected + o.malformed + o.breaker_rejected_broken
}

/// 4xx answers: the app's own mistakes and the backend's rejections.
pub fn client_errors(o: &v1::Outcomes) -> u64 {
    o.app_error + o.backend_rejected
}

/// Attempts judged: all but those the caller cancelled.
pub fn judged(o: &v1::Outcomes) -> u64 {
    attempts(o).saturating_sub(o.cancelled)
}

/// Fewest rate events (errors, 429s) behind a failed rate gate: a handful of
/// early errors is noise, not evidence.
pub const MIN_EVENTS_TO_FAIL: u64 = 5;

/// Significance used where a policy sets none.
pub const DEFAULT_SIGNIFICANCE: f64 = 0.01;

/// The rejected-answer ceiling where a policy sets none (on by default).
pub const DEFAULT_MAX_REJECTED_PERCENT: f64 = 1.0;
/// Fewest rejected or malformed answers before that ceiling can fail.
pub const DEFAULT_MIN_REJECTED: u64 = 5;
/// The 4xx excess, in percentage points, where a policy sets none (on by
/// default).
pub const DEFAULT_CLIENT_ERROR_EXCESS: f64 = 1.0;
/// Significance of the 4xx excess test where a policy sets none: stricter
/// than the error-rate test's, since an app's own mistakes vary a lot by
/// chance and the gate is on without being asked for. A candidate that
/// answers 4xx to everything still fails on its first few dozen requests.
pub const DEFAULT_CLIENT_ERROR_SIGNIFICANCE: f64 = 0.001;
/// The 4xx excess margin in points: the policy's (or 1), or a quarter of the
/// baseline's own 4xx rate when that is larger. An app that sends many bad
/// requests sees its 4xx rate vary more by chance.
fn client_error_margin(g: &v1::Gates, baseline_4xx: u64, baseline_n: u64) -> f64 {
    let set = g
        .max_client_error_excess_percent
        .unwrap_or(DEFAULT_CLIENT_ERROR_EXCESS);
    set.max(percent(baseline_4xx, baseline_n) * CLIENT_ERROR_RELATIVE_MARGIN)
}

/// The part of the baseline's 4xx rate the 4xx excess margin grows to.
pub const CLIENT_ERROR_RELATIVE_MARGIN: f64 = 0.25;

/// Fewest requests on each side before the 4xx excess test may fail.
pub const MIN_REQUESTS_FOR_EXCESS: u64 = 100;

/// Quantile `p` of the standard normal distribution (Acklam's rational
/// approximation, relative error below 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let low = 0.024_25;
    if p < low {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - low {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -normal_quantile(1.0 - p)
    }
}

/// Lower end of the one-sided Wilson score interval of a proportion.
pub fn wilson_lower(events: u64, n: u64, z: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let n = n as f64;
    let p = events as f64 / n;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - spread) / (1.0 + z2 / n)).max(0.0)
}

/// Statistic of the one-sided test that the candidate's error proportion
/// exceeds the baseline's by more than `effect` (a fraction), with one
/// success and one failure added to each side (Agresti-Caffo), which keeps
/// it sane with few requests or no errors.
pub fn excess_z(xc: u64, nc: u64, xb: u64, nb: u64, effect: f64) -> f64 {
    let pc = (xc as f64 + 1.0) / (nc as f64 + 2.0);
    let pb = (xb as f64 + 1.0) / (nb as f64 + 2.0);
    let se = (pc * (1.0 - pc) / (nc as f64 + 2.0) + pb * (1.0 - pb) / (nb as f64 + 2.0)).sqrt();
    (pc - pb - effect) / se
}

/// The statistics behind the comparative gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Statistics {
    /// Anytime-valid tests ([`crate::sequential`]): what the leader uses.
    #[default]
    Sequential,
    /// The fixed-horizon tests they replaced (a two-proportion z-test, the
    /// point ratio of quantiles), which lose their error guarantee when
    /// looked at every tick. Kept only so decision-bench can compare both
    /// judges on the same simulated traffic.
    FixedHorizon,
}

/// Shares of the significance of the error-rate test: the error rate over
/// the whole stage, each failure class (shared), and the rate since a
/// recent window (the onset test).
const WHOLE_RATE_SHARE: f64 = 0.8;
const CLASS_SHARE: f64 = 0.1;
const ONSET_SHARE: f64 = 0.1;

/// How many of the latest telemetry windows the onset test starts from.
pub const ONSET_LOOKBACK: usize = 30;

/// Failures and judged attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub errors: u64,
    pub requests: u64,
}

impl Tally {
    pub fn of(o: &v1::Outcomes) -> Self {
        Tally {
            errors: errors(o),
            requests: judged(o),
        }
    }

    pub fn add(&mut self, other: Tally) {
        self.errors += other.errors;
        self.requests += other.requests;
    }
}

/// One telemetry window of a stage: its ordinal from the stage's clock
/// start (1 for the first window, and for any before it) and what each
/// side did in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub index: u64,
    pub candidate: Tally,
    pub baseline: Tally,
}

/// Reads one failure class's count from an outcome tally.
type ClassCount = fn(&v1::Outcomes) -> u64;

/// The failure classes the error-rate test judges one by one, by their
/// names in telemetry.
const FAILURE_CLASSES: [(&str, ClassCount); 6] = [
    ("server_error", |o| o.server_error),
    ("timeout", |o| o.timeout),
    ("connect_error", |o| o.connect_error),
    ("stream_broken", |o| o.stream_broken),
    ("backend_rejected", |o| o.backend_rejected + o.malformed),
    ("rate_limited", |o| o.rate_limited),
];

/// When a comparison whose observed excess is above its margin, but not
/// proven, holds a stage under [`PassRule::NoRegression`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Always (the error rate).
    Always,
    /// Only while either side has too few requests to judge (`true`): the
    /// 4xx excess, since an app's own mistakes vary a lot by chance.
    WhileFew(bool),
}

impl Hold {
    fn holds(self) -> bool {
        match self {
            Hold::Always => true,
            Hold::WhileFew(few) => few,
        }
    }
}

/// What one stage's judge is given.
pub struct StageInput<'a> {
    pub stage: &'a Stage,
    pub gates: &'a v1::Gates,
    /// Time since the stage's clock started.
    pub elapsed: Duration,
    pub candidate: &'a Side,
    pub baseline: &'a Side,
    /// The stage's telemetry windows, by index, oldest first (for the
    /// onset test; empty: no onset test).
    pub windows: &'a [Window],
    pub rule: PassRule,
    pub statistics: Statistics,
    /// The policy's currency (for the cost figures).
    pub currency: &'a str,
}

/// A verdict, why, and the numbers behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub reason: String,
    pub figures: Figures,
}

/// One backend's figures.
fn side(t: &Side) -> SideFigures {
    let o = t.outcomes;
    let requests = judged(&o);
    SideFigures {
        backend: t.backend.clone(),
        requests,
        errors: errors(&o),
        rate_limited: o.rate_limited,
        error_rate_percent: percent(errors(&o), requests),
        rate_limited_percent: percent(o.rate_limited, requests),
        latency_p95: t.latency.quantile(0.95),
        latency_p99: t.latency.quantile(0.99),
        ttft_p95: t.ttft.quantile(0.95),
        app_errors: o.app_error,
        backend_rejected: o.backend_rejected,
        malformed: o.malformed,
        rejected_rate_percent: percent(rejected(&o), requests),
        client_error_rate_percent: percent(client_errors(&o), requests),
        examples: t.examples.clone(),
        cost: None,
        spend_cap_trips: t.spend_cap_trips,
        spend_capped: t.spend_capped,
    }
}

/// Seconds in the month of a projection (30 days).
pub const SECONDS_PER_MONTH: f64 = 30.0 * 86_400.0;

/// An amount in pico-units as units of the currency.
fn units(picos: u128) -> f64 {
    picos as f64 / PICOS_PER_UNIT as f64
}

/// One backend's spend figures, with its monthly spend were it to take
/// every request at `rate` attempts per second.
fn side_cost(t: &Side, requests: u64, rate: f64, currency: &str) -> Option<SideCost> {
    let c = t.cost?;
    let spend = c.served.picos + c.failed.picos;
    let per = |amount: u128, n: u64| {
        if n == 0 {
            0.0
        } else {
            units(amount) / n as f64
        }
    };
    Some(SideCost {
        currency: currency.to_string(),
        spend,
        shadow_spend: c.shadow.picos,
        priced: c.served.priced,
        unpriced: c.served.unpriced + c.failed.unpriced,
        per_request: per(c.served.picos, c.served.priced),
        per_1k_output_tokens: per(c.served.picos, t.output_tokens) * 1000.0,
        monthly_at_full: per(spend, requests) * rate * SECONDS_PER_MONTH,
    })
}

/// "at 100% the candidate would cost 1240.00 USD/month against 8310.00 USD:
/// -85%", when both sides are priced and have answers.
fn cost_projection(c: &SideFigures, b: &SideFigures) -> Option<String> {
    let (cc, bc) = (c.cost.as_ref()?, b.cost.as_ref()?);
    if c.requests == 0 || b.requests == 0 || cc.priced == 0 || bc.priced == 0 {
        return None;
    }
    let (cm, bm, cur) = (cc.monthly_at_full, bc.monthly_at_full, &cc.currency);
    let change = if bm > 0.0 {
        format!(": {:+.0}%", (cm / bm - 1.0) * 100.0)
    } else {
        String::new()
    };
    Some(format!(
        "at 100% the candidate would cost {cm:.2} {cur}/month against {bm:.2} {cur}{change}"
    ))
}

/// " (e.g. HTTP 401 invalid_api_key)": the first example of `classes`.
fn example_text(examples: &[v1::FailureExample], classes: &[&str]) -> String {
    classes
        .iter()
        .find_map(|c| example(examples, c))
        .map(|e| {
            let detail = if e.detail.is_empty() {
                String::new()
            } else {
                format!(" {}", e.detail)
            };
            format!("; e.g. {} HTTP {}{detail}", e.outcome, e.status)
        })
        .unwrap_or_default()
}

/// Fewest samples before quantile `q` of a histogram is judged.
pub fn min_samples(q: f64) -> u64 {
    (5.0 / (1.0 - q)).ceil() as u64
}

fn secs(d: &Option<pbjson_types::Duration>) -> Option<f64> {
    d.as_ref()
        .map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
}

struct Gatekeeper {
    results: Vec<GateResult>,
    rule: PassRule,
    statistics: Statistics,
}

impl Gatekeeper {
    fn add(&mut self, gate: &str, value: f64, limit: f64, verdict: Verdict, detail: String) {
        self.results.push(GateResult {
            gate: gate.into(),
            value,
            limit,
            verdict,
            detail,
        });
    }

    /// A ceiling on a rate: FAIL once the rate is above it with confidence
    /// (and a few events), PASS while the observed rate is at or below it,
    /// WAIT between the two.
    fn rate_ceiling(&mut self, gate: &str, what: &str, events: u64, n: u64, ceiling: f64, z: f64) {
        self.rate_ceiling_with(gate, what, events, n, ceiling, z, MIN_EVENTS_TO_FAIL, "");
    }

    /// [`Gatekeeper::rate_ceiling`] with its own minimum of events, and
    /// `more` said after the numbers (the breakdown, an example).
    #[allow(clippy::too_many_arguments)]
    fn rate_ceiling_with(
        &mut self,
        gate: &str,
        what: &str,
        events: u64,
        n: u64,
        ceiling: f64,
        z: f64,
        min_events: u64,
        more: &str,
    ) {
        let rate = percent(events, n);
        let lower = wilson_lower(events, n, z) * 100.0;
        let (verdict, detail) = if events >= min_events && lower > ceiling {
            (
                Verdict::Fail,
                format!(
                    "{what} {rate:.2}% ({events} of {n}{more}) is above the {ceiling}% ceiling (lower confidence bound {lower:.2}%)"
                ),
            )
        } else if n > 0 && rate <= ceiling {
            (
                Verdict::Pass,
                format!("{what} {rate:.2}% ({events} of {n}), ceiling {ceiling}%"),
            )
        } else if n == 0 {
            (Verdict::Wait, format!("no {what} data yet"))
        } else {
            (
                Verdict::Wait,
                format!(
                    "{what} {rate:.2}% ({events} of {n}{more}) is above the {ceiling}% ceiling, not yet with confidence"
                ),
            )
        };
        self.add(gate, rate, ceiling, verdict, detail);
    }

    /// The candidate's rejected and malformed answers against their ceiling
    /// (on by default), naming the classes and an example.
    fn rejected(
        &mut self,
        g: &v1::Gates,
        o: &v1::Outcomes,
        examples: &[v1::FailureExample],
        n: u64,
        z: f64,
    ) {
        let ceiling = g
            .max_rejected_percent
            .unwrap_or(DEFAULT_MAX_REJECTED_PERCENT);
        let min = g.min_rejected_answers.unwrap_or(DEFAULT_MIN_REJECTED);
        let skipped = if o.breaker_rejected_broken > 0 {
            format!(
                ", {} skipped by the breaker they opened",
                o.breaker_rejected_broken
            )
        } else {
            String::new()
        };
        let more = format!(
            ": {} backend_rejected, {} malformed{skipped}{}",
            o.backend_rejected,
            o.malformed,
            example_text(examples, &["backend_rejected", "malformed"])
        );
        self.rate_ceiling_with(
            "max_rejected_percent",
            "rejected or malformed answers",
            rejected(o),
            n,
            ceiling,
            z,
            min,
            &more,
        );
    }

    /// A comparative gate on a rate: is the candidate's rate of some events
    /// (`xc` of `nc`) above the baseline's (`xb` of `nb`) by more than
    /// `margin` points? FAIL once a regression is proven (with at least
    /// [`MIN_EVENTS_TO_FAIL`] events). Otherwise, under
    /// [`PassRule::ProvenNotWorse`], PASS once the candidate is proven not
    /// worse by more than the margin and WAIT until then; under
    /// [`PassRule::NoRegression`], WAIT while `hold` holds and the observed
    /// excess is above the margin, PASS otherwise. Returns the regression test's
    /// evidence.
    #[allow(clippy::too_many_arguments)]
    fn compare(
        &mut self,
        gate: &str,
        what: &str,
        (xc, nc): (u64, u64),
        (xb, nb): (u64, u64),
        margin: f64,
        alpha: f64,
        baseline_expected: bool,
        hold: Hold,
        more: &str,
    ) -> Option<Evidence> {
        if nb == 0 && !baseline_expected {
            self.add(
                gate,
                0.0,
                1.0 / alpha,
                Verdict::Pass,
                format!("{what} test not run: no baseline traffic at this weight"),
            );
            return None;
        }
        if nc == 0 || nb == 0 {
            self.add(
                gate,
                0.0,
                1.0 / alpha,
                Verdict::Wait,
                format!("{what} test needs traffic on both sides ({nc} candidate, {nb} baseline requests)"),
            );
            return None;
        }
        if self.statistics == Statistics::FixedHorizon {
            self.fixed_horizon(gate, what, (xc, nc), (xb, nb), margin, alpha, hold, more);
            return None;
        }
        let (rc, rb) = (percent(xc, nc), percent(xb, nb));
        let numbers = format!(
            "candidate {rc:.2}% ({xc} of {nc}) vs baseline {rb:.2}% ({xb} of {nb}), margin {margin} points"
        );
        let worse = sequential::worse(xc, nc, xb, nb, margin / 100.0, alpha);
        let holding = (hold.holds() && rc - rb > margin)
            .then(|| format!("{what} above baseline by more than the margin"));
        self.judged(
            gate,
            what,
            &numbers,
            xc,
            worse,
            || sequential::not_worse(xc, nc, xb, nb, margin / 100.0, alpha),
            holding,
            more,
        );
        Some(worse)
    }

    /// A comparative gate's verdict from its regression test's evidence
    /// (`events` behind it) and, under [`PassRule::ProvenNotWorse`], its
    /// non-inferiority test's; `holding` says why the figures hold the
    /// stage under [`PassRule::NoRegression`] when they do. Records the
    /// result with the regression test's e-value and threshold.
    #[allow(clippy::too_many_arguments)]
    fn judged(
        &mut self,
        gate: &str,
        what: &str,
        numbers: &str,
        events: u64,
        worse: Evidence,
        not_worse: impl FnOnce() -> Evidence,
        holding: Option<String>,
        more: &str,
    ) {
        let (verdict, detail) = if worse.proven() && events >= MIN_EVENTS_TO_FAIL {
            (
                Verdict::Fail,
                format!(
                    "{what} regression: {numbers}: {} against a bound of {:.2}%{more}",
                    worse.describe(),
                    worse.boundary * 100.0
                ),
            )
        } else if self.rule == PassRule::ProvenNotWorse {
            let not_worse = not_worse();
            let (verdict, proven) = if not_worse.proven() {
                (Verdict::Pass, "proven not worse")
            } else {
                (Verdict::Wait, "not yet proven not worse")
            };
            (
                verdict,
                format!(
                    "{what} {proven}: {numbers}: {} below a bound of {:.2}%",
                    not_worse.describe(),
                    not_worse.boundary * 100.0
                ),
            )
        } else if let Some(why) = holding {
            (
                Verdict::Wait,
                format!("{why}, not yet proven: {numbers}: {}", worse.describe()),
            )
        } else {
            (
                Verdict::Pass,
                format!("{what}: {numbers}: no regression ({})", worse.describe()),
            )
        };
        self.add(gate, worse.e_value(), worse.threshold(), verdict, detail);
    }

    /// The fixed-horizon two-proportion z-test the sequential tests
    /// replaced, kept so decision-bench can run both judges on the same
    /// seeds: FAIL when significant (the 4xx excess only once it has its
    /// minimum of requests), else WAIT while `hold` holds and the excess is
    /// above the margin, PASS otherwise.
    #[allow(clippy::too_many_arguments)]
    fn fixed_horizon(
        &mut self,
        gate: &str,
        what: &str,
        (xc, nc): (u64, u64),
        (xb, nb): (u64, u64),
        margin: f64,
        alpha: f64,
        hold: Hold,
        more: &str,
    ) {
        let z_critical = normal_quantile(1.0 - alpha);
        let (rc, rb) = (percent(xc, nc), percent(xb, nb));
        let z = excess_z(xc, nc, xb, nb, margin / 100.0);
        let numbers = format!(
            "candidate {rc:.2}% ({xc} of {nc}) vs baseline {rb:.2}% ({xb} of {nb}): z = {z:.2}, critical {z_critical:.2} at {alpha}, margin {margin} points"
        );
        let enough = hold == Hold::Always || !hold.holds();
        let (verdict, detail) = if z > z_critical && xc >= MIN_EVENTS_TO_FAIL && enough {
            (Verdict::Fail, format!("{what} regression: {numbers}{more}"))
        } else if hold.holds() && rc - rb > margin {
            (
                Verdict::Wait,
                format!("{what} above baseline, not yet significant: {numbers}"),
            )
        } else {
            (Verdict::Pass, format!("{what}: {numbers}"))
        };
        self.add(gate, z, z_critical, verdict, detail);
    }

    /// The error-rate test (the `significance` gate): the error rate over
    /// the whole stage at 8/10 of the significance; each failure class at
    /// an equal share of 1/10, so a regression confined to one class (the
    /// candidate's timeouts, say) is caught without waiting for the whole
    /// rate to show it; and the onset test at 1/10, so a candidate that
    /// turns bad late in a stage is caught on the failures since the
    /// change. Only the whole rate holds or passes a stage; a class or the
    /// onset test adds a result only when it proves a regression.
    #[allow(clippy::too_many_arguments)]
    fn error_rate(
        &mut self,
        (c, nc): (&v1::Outcomes, u64),
        (b, nb): (&v1::Outcomes, u64),
        windows: &[Window],
        margin: f64,
        alpha: f64,
        baseline_expected: bool,
        examples: &[v1::FailureExample],
    ) {
        let whole = if self.statistics == Statistics::Sequential {
            alpha * WHOLE_RATE_SHARE
        } else {
            alpha
        };
        let tested = self.compare(
            "significance",
            "error rate",
            (errors(c), nc),
            (errors(b), nb),
            margin,
            whole,
            baseline_expected,
            Hold::Always,
            &example_text(examples, &FAILURE_CLASSES.map(|(name, _)| name)),
        );
        if tested.is_none() {
            return;
        }
        let share = alpha * CLASS_SHARE / FAILURE_CLASSES.len() as f64;
        for (name, count) in FAILURE_CLASSES {
            let (xc, xb) = (count(c), count(b));
            if xc < MIN_EVENTS_TO_FAIL {
                continue;
            }
            let worse = sequential::worse(xc, nc, xb, nb, margin / 100.0, share);
            if worse.proven() {
                let detail = format!(
                    "{name} rate regression: candidate {:.2}% ({xc} of {nc}) vs baseline {:.2}% ({xb} of {nb}), margin {margin} points: {} against a bound of {:.2}%{}",
                    percent(xc, nc),
                    percent(xb, nb),
                    worse.describe(),
                    worse.boundary * 100.0,
                    example_text(examples, &[name])
                );
                self.add(
                    "significance",
                    worse.e_value(),
                    worse.threshold(),
                    Verdict::Fail,
                    detail,
                );
                return;
            }
        }
        if self.statistics == Statistics::Sequential {
            self.onset(
                windows,
                (errors(b), nb),
                margin,
                alpha * ONSET_SHARE,
                examples,
            );
        }
    }

    /// The onset test: the error rate since a recent window, so a candidate
    /// that turns bad after a long healthy stretch is judged on the
    /// failures since the change, not diluted by the stage's healthy
    /// history. The test from window `j` on runs at `alpha / (j (j + 1))`;
    /// those weights sum to 1, so by a union bound over the starting windows
    /// the level `alpha` holds. Only the [`ONSET_LOOKBACK`] latest starts
    /// are looked at (looking at fewer can only lower the chance of a false
    /// alarm), and only those where the candidate's observed rate is above
    /// the baseline's plus the margin (elsewhere no alternative is more
    /// likely than the null, and the e-value is below 1). The baseline's
    /// rate, which the margin is measured against, is bounded from its
    /// counts over the whole stage (`base`): a few windows of them say
    /// little.
    fn onset(
        &mut self,
        windows: &[Window],
        base: (u64, u64),
        margin: f64,
        alpha: f64,
        examples: &[v1::FailureExample],
    ) {
        let (mut c, mut b) = (Tally::default(), Tally::default());
        for w in windows.iter().rev().take(ONSET_LOOKBACK) {
            c.add(w.candidate);
            b.add(w.baseline);
            if c.errors < MIN_EVENTS_TO_FAIL
                || percent(c.errors, c.requests) <= percent(b.errors, b.requests) + margin
            {
                continue;
            }
            let j = w.index.max(1) as f64;
            let level = alpha / (j * (j + 1.0));
            let counts = (c.errors, c.requests, b.errors, b.requests);
            if !sequential::could_prove_worse(
                counts.0,
                counts.1,
                counts.2,
                counts.3,
                base,
                margin / 100.0,
                level,
            ) {
                continue;
            }
            let worse = sequential::worse_since(
                counts.0,
                counts.1,
                counts.2,
                counts.3,
                base,
                margin / 100.0,
                level,
            );
            if worse.proven() {
                let detail = format!(
                    "error rate regression since window {} of the stage: candidate {:.2}% ({} of {}) vs baseline {:.2}% ({} of {}), margin {margin} points: {} against a bound of {:.2}%{}",
                    w.index,
                    percent(c.errors, c.requests),
                    c.errors,
                    c.requests,
                    percent(b.errors, b.requests),
                    b.errors,
                    b.requests,
                    worse.describe(),
                    worse.boundary * 100.0,
                    example_text(examples, &FAILURE_CLASSES.map(|(name, _)| name))
                );
                self.add(
                    "significance",
                    worse.e_value(),
                    worse.threshold(),
                    Verdict::Fail,
                    detail,
                );
                return;
            }
        }
    }

    /// The 4xx excess (on by default): the candidate's 4xx rate against the
    /// baseline's on the same mix of requests. It fails on significance and,
    /// once there is enough data, does not hold a stage otherwise: an app's
    /// own mistakes vary a lot by chance.
    fn client_error_excess(
        &mut self,
        g: &v1::Gates,
        (c, nc): (&v1::Outcomes, u64),
        (b, nb): (&v1::Outcomes, u64),
        examples: &[v1::FailureExample],
        baseline_expected: bool,
    ) {
        let margin = client_error_margin(g, client_errors(b), nb);
        let more = example_text(examples, &["backend_rejected", "app_error"]);
        let few = nc < MIN_REQUESTS_FOR_EXCESS || nb < MIN_REQUESTS_FOR_EXCESS;
        self.compare(
            "max_client_error_excess_percent",
            "4xx rate",
            (client_errors(c), nc),
            (client_errors(b), nb),
            margin,
            DEFAULT_CLIENT_ERROR_SIGNIFICANCE,
            baseline_expected,
            Hold::WhileFew(few),
            &more,
        );
    }

    /// A ceiling on a quantile of a histogram, judged once it has enough
    /// samples.
    fn quantile_ceiling(&mut self, gate: &str, what: &str, h: &Histogram, q: f64, ceiling: f64) {
        let need = min_samples(q);
        let (value, verdict, detail) = match h.quantile(q) {
            Some(v) if h.count() >= need => {
                let v = v.as_secs_f64();
                if v > ceiling {
                    (
                        v,
                        Verdict::Fail,
                        format!(
                            "{what} {v:.3}s over {} samples is above the {ceiling}s ceiling",
                            h.count()
                        ),
                    )
                } else {
                    (
                        v,
                        Verdict::Pass,
                        format!("{what} {v:.3}s, ceiling {ceiling}s"),
                    )
                }
            }
            _ => (
                0.0,
                Verdict::Wait,
                format!("{what}: {} of {need} samples needed", h.count()),
            ),
        };
        self.add(gate, value, ceiling, verdict, detail);
    }

    /// A ceiling on the candidate's quantile `q` divided by the baseline's,
    /// judged as a rate: the share of candidate requests slower than
    /// `ceiling` times the baseline's quantile may be at most `1 - q`. A
    /// regression once that share is proven above it (anytime-valid, at
    /// `alpha`); under [`PassRule::ProvenNotWorse`], a pass once it is proven
    /// below it; otherwise WAIT while the candidate's quantile is above the
    /// ceiling. The baseline's quantile is taken as measured: at stages
    /// below 50% the baseline has more samples than the candidate.
    #[allow(clippy::too_many_arguments)]
    fn slower_share(
        &mut self,
        gate: &str,
        what: &str,
        c: &Histogram,
        b: &Histogram,
        q: f64,
        ceiling: f64,
        alpha: f64,
        baseline_expected: bool,
    ) {
        let need = min_samples(q);
        if !baseline_expected && b.count() == 0 {
            self.add(
                gate,
                0.0,
                1.0 / alpha,
                Verdict::Pass,
                format!("{what} ratio not judged: no baseline traffic at this weight"),
            );
            return;
        }
        let few =
            b.count() < need || (self.statistics == Statistics::FixedHorizon && c.count() < need);
        let (Some(bv), Some(cv), false) = (b.quantile(q), c.quantile(q), few) else {
            self.add(
                gate,
                0.0,
                1.0 / alpha,
                Verdict::Wait,
                format!(
                    "{what} ratio: {} and {} of {need} samples needed",
                    c.count(),
                    b.count()
                ),
            );
            return;
        };
        let ratio = cv.as_secs_f64() / bv.as_secs_f64().max(1e-6);
        let quantiles = format!(
            "{what} candidate {:.3}s / baseline {:.3}s = {ratio:.2}",
            cv.as_secs_f64(),
            bv.as_secs_f64()
        );
        if self.statistics == Statistics::FixedHorizon {
            let verdict = if ratio > ceiling {
                Verdict::Fail
            } else {
                Verdict::Pass
            };
            self.add(
                gate,
                ratio,
                ceiling,
                verdict,
                format!("{quantiles}, ceiling {ceiling}"),
            );
            return;
        }
        let bound = bv.mul_f64(ceiling);
        let (slow, n) = (c.count_above(bound), c.count());
        let allowed = 1.0 - q;
        let numbers = format!(
            "{quantiles}; {:.2}% of candidate requests ({slow} of {n}) slower than {ceiling} x the baseline's {:.3}s, {:.0}% allowed",
            percent(slow, n),
            bv.as_secs_f64(),
            allowed * 100.0
        );
        let worse = sequential::above(slow, n, allowed, alpha);
        let holding = (n >= need && ratio > ceiling)
            .then(|| format!("{what} ratio above the {ceiling} ceiling"));
        self.judged(
            gate,
            what,
            &numbers,
            slow,
            worse,
            || sequential::below(slow, n, allowed, alpha),
            holding,
            "",
        );
    }
}

impl Gatekeeper {
    /// The cost gate: the candidate's mean cost per answer served against
    /// `ceiling` times the baseline's. Each side's mean has an anytime-valid
    /// confidence sequence at half of `alpha` ([`sequential::mean_interval`],
    /// from [`MIN_COST_SAMPLES`] priced answers on each side); a regression
    /// once the candidate's lower bound is above `ceiling` times the
    /// baseline's upper bound, proven not worse once the candidate's upper
    /// bound is below `ceiling` times the baseline's lower bound.
    fn cost_ratio(&mut self, c: Spend, b: Spend, ceiling: f64, alpha: f64, expected: bool) {
        let gate = "max_cost_ratio";
        if b.priced == 0 && !expected {
            self.add(
                gate,
                0.0,
                ceiling,
                Verdict::Pass,
                "cost ratio not judged: no baseline traffic at this weight".into(),
            );
            return;
        }
        if c.priced < MIN_COST_SAMPLES || b.priced < MIN_COST_SAMPLES {
            self.add(
                gate,
                0.0,
                ceiling,
                Verdict::Wait,
                format!(
                    "cost ratio: {} and {} of {MIN_COST_SAMPLES} priced answers needed",
                    c.priced, b.priced
                ),
            );
            return;
        }
        let mean = |s: &Spend| units(s.picos) / s.priced as f64;
        let (mc, mb) = (mean(&c), mean(&b));
        let ratio = if mb > 0.0 { mc / mb } else { f64::INFINITY };
        let numbers = format!(
            "candidate {mc:.8} vs baseline {mb:.8} per answer ({} and {} priced answers): ratio {ratio:.2}, ceiling {ceiling}",
            c.priced, b.priced
        );
        if self.statistics == Statistics::FixedHorizon {
            let verdict = if ratio > ceiling {
                Verdict::Fail
            } else {
                Verdict::Pass
            };
            self.add(gate, ratio, ceiling, verdict, format!("cost {numbers}"));
            return;
        }
        let interval = |s: &Spend| {
            sequential::mean_interval(s.priced, s.picos as f64, s.squares as f64, alpha / 2.0)
                .map_or((0.0, f64::INFINITY), |(lo, hi)| {
                    (lo / PICOS_PER_UNIT as f64, hi / PICOS_PER_UNIT as f64)
                })
        };
        let ((cl, ch), (bl, bh)) = (interval(&c), interval(&b));
        let (verdict, detail) = if cl > ceiling * bh {
            (
                Verdict::Fail,
                format!(
                    "cost regression: {numbers}: the candidate's mean is at least {cl:.8}, above {ceiling} x the baseline's at most {bh:.8}"
                ),
            )
        } else if self.rule == PassRule::ProvenNotWorse {
            if ch < ceiling * bl {
                (
                    Verdict::Pass,
                    format!(
                        "cost proven not worse: {numbers}: the candidate's mean is at most {ch:.8}, below {ceiling} x the baseline's at least {bl:.8}"
                    ),
                )
            } else {
                (
                    Verdict::Wait,
                    format!(
                        "cost not yet proven not worse: {numbers}: the candidate's mean is at most {ch:.8}, the bound {ceiling} x {bl:.8}"
                    ),
                )
            }
        } else if ratio > ceiling {
            (
                Verdict::Wait,
                format!(
                    "cost ratio above the {ceiling} ceiling, not yet proven: {numbers}: the candidate's mean is at least {cl:.8}, the bound {ceiling} x {bh:.8}"
                ),
            )
        } else {
            (Verdict::Pass, format!("cost: {numbers}: no regression"))
        };
        self.add(gate, ratio, ceiling, verdict, detail);
    }

    /// A cap on what the candidate spends in the stage (`spent`, in
    /// pico-units; `cap` in units): reaching it fails the stage.
    fn stage_spend(&mut self, spent: u128, cap: f64) {
        let value = units(spent);
        let (verdict, detail) = if value >= cap {
            (
                Verdict::Fail,
                format!("stage spend {value:.6} reached its cap of {cap}"),
            )
        } else {
            (
                Verdict::Pass,
                format!("stage spend {value:.6} of its cap of {cap}"),
            )
        };
        self.add("max_stage_spend", value, cap, verdict, detail);
    }
}

/// Fewest priced answers on each side before the cost ratio is judged.
pub const MIN_COST_SAMPLES: u64 = 100;

/// Judges a stage where the candidate takes live traffic: every gate of the
/// policy over the stage's window, then the stage's time and request
/// minimums. FAIL needs no minimum (a bad candidate is caught as soon as
/// the evidence is there); PASS needs them all. The caller turns a WAIT past
/// the stage's time limit into INCONCLUSIVE.
pub fn judge_stage(input: &StageInput<'_>) -> Judgement {
    let g = input.gates;
    let (latency, baseline_latency) = (&input.candidate.latency, &input.baseline.latency);
    let (ttft, baseline_ttft) = (&input.candidate.ttft, &input.baseline.ttft);
    let mut c = side(input.candidate);
    let mut b = side(input.baseline);
    // Attempts per second over the stage, both sides: the policy's rate.
    let rate = (c.requests + b.requests) as f64 / input.elapsed.as_secs_f64().max(1.0);
    c.cost = side_cost(input.candidate, c.requests, rate, input.currency);
    b.cost = side_cost(input.baseline, b.requests, rate, input.currency);
    let alpha = g.significance.unwrap_or(DEFAULT_SIGNIFICANCE);
    let z_critical = normal_quantile(1.0 - alpha);
    let baseline_expected = input.stage.weight < 10_000;
    let mut keeper = Gatekeeper {
        results: Vec::new(),
        rule: input.rule,
        statistics: input.statistics,
    };
    let (co, bo) = (input.candidate.outcomes, input.baseline.outcomes);
    keeper.rejected(g, &co, &input.candidate.examples, c.requests, z_critical);
    keeper.client_error_excess(
        g,
        (&co, c.requests),
        (&bo, b.requests),
        &input.candidate.examples,
        baseline_expected,
    );
    if let Some(ceiling) = g.max_error_rate_percent {
        keeper.rate_ceiling(
            "max_error_rate_percent",
            "error rate",
            c.errors,
            c.requests,
            ceiling,
            z_critical,
        );
    }
    if g.significance.is_some() {
        keeper.error_rate(
            (&co, c.requests),
            (&bo, b.requests),
            input.windows,
            g.min_error_rate_effect_percent.unwrap_or(0.0),
            alpha,
            baseline_expected,
            &input.candidate.examples,
        );
    }
    if let Some(ceiling) = g.max_rate_limited_percent {
        keeper.rate_ceiling(
            "max_rate_limited_percent",
            "429 rate",
            c.rate_limited,
            c.requests,
            ceiling,
            z_critical,
        );
    }
    if let Some(ceiling) = secs(&g.max_latency_p95) {
        keeper.quantile_ceiling("max_latency_p95", "latency p95", latency, 0.95, ceiling);
    }
    if let Some(ceiling) = secs(&g.max_latency_p99) {
        keeper.quantile_ceiling("max_latency_p99", "latency p99", latency, 0.99, ceiling);
    }
    if let Some(ceiling) = g.max_latency_p95_ratio {
        keeper.slower_share(
            "max_latency_p95_ratio",
            "latency p95",
            latency,
            baseline_latency,
            0.95,
            ceiling,
            alpha,
            baseline_expected,
        );
    }
    if let Some(ceiling) = g.max_latency_p99_ratio {
        keeper.slower_share(
            "max_latency_p99_ratio",
            "latency p99",
            latency,
            baseline_latency,
            0.99,
            ceiling,
            alpha,
            baseline_expected,
        );
    }
    if let Some(ceiling) = secs(&g.max_ttft_p95) {
        keeper.quantile_ceiling(
            "max_ttft_p95",
            "time to first token p95",
            ttft,
            0.95,
            ceiling,
        );
    }
    if let Some(ceiling) = g.max_ttft_p95_ratio {
        keeper.slower_share(
            "max_ttft_p95_ratio",
            "time to first token p95",
            ttft,
            baseline_ttft,
            0.95,
            ceiling,
            alpha,
            baseline_expected,
        );
    }
    let (cc, bc) = (input.candidate.cost, input.baseline.cost);
    if let Some(ceiling) = g.max_cost_ratio {
        keeper.cost_ratio(
            cc.map(|c| c.served).unwrap_or_default(),
            bc.map(|c| c.served).unwrap_or_default(),
            ceiling,
            alpha,
            baseline_expected,
        );
    }
    if let Some(cap) = g.max_stage_spend {
        keeper.stage_spend(cc.map_or(0, |c| c.served.picos + c.failed.picos), cap);
    }
    let figures = Figures {
        cost_projection: cost_projection(&c, &b),
        candidate: Some(c.clone()),
        baseline: Some(b),
        elapsed: input.elapsed,
        gates: keeper.results,
        ..Default::default()
    };
    let first = |verdict: Verdict| {
        figures
            .gates
            .iter()
            .find(|r| r.verdict == verdict)
            .map(|r| r.detail.clone())
    };
    if let Some(why) = first(Verdict::Fail) {
        return Judgement {
            verdict: Verdict::Fail,
            reason: why,
            figures,
        };
    }
    let wait = |reason: String| Judgement {
        verdict: Verdict::Wait,
        reason,
        figures: figures.clone(),
    };
    let bake = input.stage.min_bake.as_secs_f64();
    if input.elapsed.as_secs_f64() < bake {
        return wait(format!(
            "baking: {:.1}s of {bake}s",
            input.elapsed.as_secs_f64()
        ));
    }
    let needed = input.stage.min_requests.max(1);
    if c.requests < needed {
        return wait(format!(
            "{} of {needed} candidate requests so far",
            c.requests
        ));
    }
    if let Some(why) = first(Verdict::Wait) {
        return wait(why);
    }
    Judgement {
        verdict: Verdict::Pass,
        reason: format!(
            "every gate holds over {} candidate requests in {:.1}s",
            c.requests,
            input.elapsed.as_secs_f64()
        ),
        figures,
    }
}

/// Judges a shadow-only stage (weight 0): the default gates over the
/// shadow's answers (rejected and malformed ones; the 4xx excess against
/// the primary's answers to the same requests), the shadow gates over the
/// candidate's compared answers, then the stage's time minimum.
pub fn judge_shadow_stage(
    stage: &Stage,
    gates: &v1::Gates,
    elapsed: Duration,
    shadow: &v1::ShadowTelemetry,
    shadow_spend: u128,
) -> Judgement {
    let mut keeper = Gatekeeper {
        results: Vec::new(),
        rule: PassRule::NoRegression,
        statistics: Statistics::Sequential,
    };
    let z = normal_quantile(1.0 - gates.significance.unwrap_or(DEFAULT_SIGNIFICANCE));
    let o = shadow.outcomes.unwrap_or_default();
    keeper.rejected(gates, &o, &shadow.examples, judged(&o), z);
    let effect = client_error_margin(gates, shadow.primary_client_errors, shadow.compared);
    if shadow.compared > 0 {
        keeper.compare(
            "max_client_error_excess_percent",
            "shadow 4xx rate",
            (shadow.client_errors, shadow.compared),
            (shadow.primary_client_errors, shadow.compared),
            effect,
            DEFAULT_CLIENT_ERROR_SIGNIFICANCE,
            true,
            Hold::WhileFew(shadow.compared < MIN_REQUESTS_FOR_EXCESS),
            &example_text(&shadow.examples, &["backend_rejected", "app_error"]),
        );
    }
    if let Some(cap) = gates.max_stage_spend {
        keeper.stage_spend(shadow_spend, cap);
    }
    let figures = Figures {
        shadow: Some(shadow.clone()),
        elapsed,
        gates: keeper.results,
        ..Default::default()
    };
    let failed = figures
        .gates
        .iter()
        .find(|r| r.verdict == Verdict::Fail)
        .map(|r| r.detail.clone());
    let (verdict, reason) = match failed {
        Some(why) => (Verdict::Fail, why),
        None => match judge_shadow(shadow, gates, stage.min_requests) {
            Check::Fail(why) => (Verdict::Fail, why),
            Check::Wait(why) => (Verdict::Wait, why),
            Check::Pass(why) => {
                let bake = stage.min_bake.as_secs_f64();
                if elapsed.as_secs_f64() < bake {
                    (
                        Verdict::Wait,
                        format!("baking: {:.1}s of {bake}s", elapsed.as_secs_f64()),
                    )
                } else {
                    (Verdict::Pass, why)
                }
            }
        },
    };
    Judgement {
        verdict,
        reason,
        figures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shepherd_proto::telemetry::{SIMILARITY_BUCKETS, similarity_bucket};

    /// The normal quantile matches tabled values.
    #[test]
    fn normal_quantiles() {
        for (p, z) in [
            (0.5, 0.0),
            (0.95, 1.644_854),
            (0.99, 2.326_348),
            (0.001, -3.090_232),
        ] {
            assert!(
                (normal_quantile(p) - z).abs() < 1e-5,
                "{p}: {}",
                normal_quantile(p)
            );
        }
    }

    /// The Wilson bound is below the observed rate, tighter with more data.
    #[test]
    fn wilson_bounds() {
        let z = normal_quantile(0.99);
        assert_eq!(wilson_lower(0, 0, z), 0.0);
        let small = wilson_lower(5, 10, z);
        let large = wilson_lower(500, 1000, z);
        assert!(small < large && large < 0.5, "{small} {large}");
        // 50 errors of 100 is surely above 5%; 1 of 20 is not.
        assert!(wilson_lower(50, 100, z) > 0.05);
        assert!(wilson_lower(1, 20, z) < 0.05);
    }

    /// The two-proportion statistic grows with the excess and the data, and
    /// the minimum effect is subtracted.
    #[test]
    fn excess_statistic() {
        let equal = excess_z(10, 1000, 10, 1000, 0.0);
        assert!(equal.abs() < 0.01, "{equal}");
        let worse = excess_z(30, 1000, 10, 1000, 0.0);
        let worse_more_data = excess_z(300, 10_000, 100, 10_000, 0.0);
        assert!(
            worse > 2.0 && worse_more_data > worse,
            "{worse} {worse_more_data}"
        );
        assert!(excess_z(30, 1000, 10, 1000, 0.02) < 0.5);
    }

    fn outcomes(requests: u64, errors: u64) -> Side {
        Side::with_server_errors(requests, errors)
    }

    /// A stage waits for its bake time and requests, passes when every gate
    /// holds, and fails at once on clear evidence.
    #[test]
    fn stage_verdicts() {
        let stage = Stage {
            weight: 1000,
            min_bake: Duration::from_secs(10),
            min_requests: 100,
            max_time: Some(Duration::from_secs(60)),
        };
        let gates = v1::Gates {
            max_error_rate_percent: Some(5.0),
            significance: Some(0.01),
            min_error_rate_effect_percent: Some(1.0),
            ..Default::default()
        };
        let judge = |elapsed: u64, c: Side, b: Side| {
            judge_stage(&StageInput {
                stage: &stage,
                gates: &gates,
                elapsed: Duration::from_secs(elapsed),
                candidate: &c,
                baseline: &b,
                windows: &[],
                rule: PassRule::NoRegression,
                statistics: Statistics::Sequential,
                currency: "USD",
            })
        };
        let early = judge(5, outcomes(200, 2), outcomes(2000, 20));
        assert_eq!(early.verdict, Verdict::Wait);
        assert!(early.reason.starts_with("baking"), "{}", early.reason);
        let few = judge(20, outcomes(50, 0), outcomes(2000, 20));
        assert_eq!(few.verdict, Verdict::Wait);
        assert!(few.reason.contains("50 of 100"), "{}", few.reason);
        let none = judge(20, outcomes(0, 0), outcomes(0, 0));
        assert_eq!(none.verdict, Verdict::Wait);
        let healthy = judge(20, outcomes(200, 2), outcomes(2000, 20));
        assert_eq!(healthy.verdict, Verdict::Pass, "{}", healthy.reason);
        let failing = judge(1, outcomes(40, 20), outcomes(400, 4));
        assert_eq!(failing.verdict, Verdict::Fail);
        assert!(
            failing.reason.contains("error rate 50.00%"),
            "{}",
            failing.reason
        );
        let c = failing.figures.candidate.unwrap();
        assert_eq!((c.requests, c.errors), (40, 20));
        // The error-rate test proved it too: its e-value is past its
        // threshold, and the event says so.
        let test = failing
            .figures
            .gates
            .iter()
            .find(|g| g.gate == "significance")
            .unwrap();
        assert_eq!(test.verdict, Verdict::Fail);
        assert!(test.value >= test.limit, "{test:?}");
        assert!(test.detail.contains("e-value"), "{}", test.detail);
        // A candidate like the baseline: the test passes, far from proof.
        let alike = judge(20, outcomes(200, 2), outcomes(2000, 20));
        let test = alike
            .figures
            .gates
            .iter()
            .find(|g| g.gate == "significance")
            .unwrap();
        assert_eq!(test.verdict, Verdict::Pass);
        assert!(test.value < 1.0, "{test:?}");
    }

    fn side_with(requests: u64, change: impl FnOnce(&mut v1::Outcomes)) -> Side {
        let mut t = outcomes(requests, 0);
        let o = &mut t.outcomes;
        change(o);
        o.success = requests - (o.app_error + o.backend_rejected + o.malformed + o.server_error);
        t
    }

    fn stage_of(weight: u32) -> Stage {
        Stage {
            weight,
            min_bake: Duration::from_secs(1),
            min_requests: 50,
            max_time: Some(Duration::from_secs(60)),
        }
    }

    fn judge_with(gates: &v1::Gates, weight: u32, c: &Side, b: &Side) -> Judgement {
        judge_stage(&StageInput {
            stage: &stage_of(weight),
            gates,
            elapsed: Duration::from_secs(5),
            candidate: c,
            baseline: b,
            windows: &[],
            rule: PassRule::NoRegression,
            statistics: Statistics::Sequential,
            currency: "USD",
        })
    }

    fn judge_by(
        rule: PassRule,
        statistics: Statistics,
        gates: &v1::Gates,
        c: &Side,
        b: &Side,
    ) -> Judgement {
        judge_stage(&StageInput {
            stage: &stage_of(1000),
            gates,
            elapsed: Duration::from_secs(30),
            candidate: c,
            baseline: b,
            windows: &[],
            rule,
            statistics,
            currency: "USD",
        })
    }

    fn error_gates() -> v1::Gates {
        v1::Gates {
            significance: Some(0.01),
            min_error_rate_effect_percent: Some(0.5),
            ..Default::default()
        }
    }

    /// A regression confined to one failure class is caught by that class's
    /// own test, named in the event, while the error rate as a whole is not
    /// yet proven worse.
    #[test]
    fn a_failure_class_is_judged_on_its_own() {
        let b = side_with(40_000, |o| o.server_error = 800);
        let c = side_with(10_000, |o| {
            o.server_error = 150;
            o.timeout = 100;
        });
        let j = judge_by(
            PassRule::NoRegression,
            Statistics::Sequential,
            &error_gates(),
            &c,
            &b,
        );
        assert_eq!(j.verdict, Verdict::Fail, "{}", j.reason);
        assert!(
            j.reason.starts_with("timeout rate regression: candidate 0.99% (100 of 10100) vs baseline 0.00% (0 of 40000), margin 0.5 points: e-value"),
            "{}",
            j.reason
        );
        let whole = j
            .figures
            .gates
            .iter()
            .find(|g| g.gate == "significance" && g.detail.starts_with("error rate"))
            .unwrap();
        assert_ne!(whole.verdict, Verdict::Fail, "{}", whole.detail);
    }

    /// Under the proven-not-worse rule a stage passes once every
    /// comparative gate proves the candidate within its margin, and waits
    /// until then; with too little data the default rule passes where it
    /// waits. A candidate worse than the margin is never proven not worse.
    #[test]
    fn proven_not_worse_passes_on_evidence() {
        let g = v1::Gates {
            min_error_rate_effect_percent: Some(1.0),
            ..error_gates()
        };
        let b = side_with(40_000, |o| o.server_error = 400);
        let plenty = side_with(20_000, |o| o.server_error = 200);
        let j = judge_by(
            PassRule::ProvenNotWorse,
            Statistics::Sequential,
            &g,
            &plenty,
            &b,
        );
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.reason);
        for gate in ["significance", "max_client_error_excess_percent"] {
            let r = j.figures.gates.iter().find(|r| r.gate == gate).unwrap();
            assert!(r.detail.contains("proven not worse"), "{}", r.detail);
        }
        let little = side_with(500, |o| o.server_error = 5);
        let j = judge_by(
            PassRule::ProvenNotWorse,
            Statistics::Sequential,
            &g,
            &little,
            &b,
        );
        assert_eq!(j.verdict, Verdict::Wait);
        assert!(
            j.reason.contains("not yet proven not worse"),
            "{}",
            j.reason
        );
        let j = judge_by(
            PassRule::NoRegression,
            Statistics::Sequential,
            &g,
            &little,
            &b,
        );
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.reason);
        let worse = side_with(20_000, |o| o.server_error = 500);
        let j = judge_by(
            PassRule::ProvenNotWorse,
            Statistics::Sequential,
            &g,
            &worse,
            &b,
        );
        assert_ne!(j.verdict, Verdict::Pass, "{}", j.reason);
    }

    fn timed(requests: u64, ms: impl Fn(u64) -> u64) -> Side {
        let mut h = Histogram::default();
        for i in 0..requests {
            h.record(Duration::from_millis(ms(i)));
        }
        let mut t = outcomes(requests, 0);
        t.latency = h.clone();
        t.ttft = h;
        t
    }

    /// The latency and time-to-first-token ratios are judged as the share
    /// of candidate requests slower than the ceiling times the baseline's
    /// quantile: a clearly slower candidate is a regression, a like one
    /// passes (or, under the proven-not-worse rule, passes once proven).
    #[test]
    fn latency_ratios_are_sequential_tests() {
        let g = v1::Gates {
            max_latency_p95_ratio: Some(1.5),
            max_ttft_p95_ratio: Some(1.5),
            max_client_error_excess_percent: Some(100.0),
            ..Default::default()
        };
        // Baseline uniform over 100-199 ms: p95 about 195 ms.
        let b = timed(20_000, |i| 100 + i % 100);
        let slow = timed(1000, |i| 200 + i % 200);
        let j = judge_by(
            PassRule::NoRegression,
            Statistics::Sequential,
            &g,
            &slow,
            &b,
        );
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.reason
                .starts_with("latency p95 regression: latency p95 candidate"),
            "{}",
            j.reason
        );
        assert!(
            j.reason.contains("slower than 1.5 x the baseline's"),
            "{}",
            j.reason
        );
        let ttft = j
            .figures
            .gates
            .iter()
            .find(|r| r.gate == "max_ttft_p95_ratio")
            .unwrap();
        assert_eq!(ttft.verdict, Verdict::Fail);
        assert!(ttft.value >= ttft.limit);
        let alike = timed(1000, |i| 100 + (i * 7) % 100);
        let j = judge_by(
            PassRule::NoRegression,
            Statistics::Sequential,
            &g,
            &alike,
            &b,
        );
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.reason);
        let j = judge_by(
            PassRule::ProvenNotWorse,
            Statistics::Sequential,
            &g,
            &alike,
            &b,
        );
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.reason);
        let ratios = j
            .figures
            .gates
            .iter()
            .filter(|r| r.gate.ends_with("_ratio"));
        assert_eq!(ratios.clone().count(), 2);
        for r in ratios {
            assert!(r.detail.contains("proven not worse"), "{}", r.detail);
        }
        let few = timed(20, |i| 100 + (i * 7) % 100);
        let j = judge_by(
            PassRule::ProvenNotWorse,
            Statistics::Sequential,
            &g,
            &few,
            &b,
        );
        assert_eq!(j.verdict, Verdict::Wait, "{}", j.reason);
    }

    /// The fixed-horizon judge (kept for decision-bench) fails on its z
    /// statistic and on the point ratio of quantiles.
    #[test]
    fn fixed_horizon_judge() {
        let b = side_with(40_000, |o| o.server_error = 400);
        let c = side_with(2000, |o| o.server_error = 60);
        let j = judge_by(
            PassRule::NoRegression,
            Statistics::FixedHorizon,
            &error_gates(),
            &c,
            &b,
        );
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(j.reason.contains("z = "), "{}", j.reason);
        let g = v1::Gates {
            max_latency_p95_ratio: Some(1.5),
            max_client_error_excess_percent: Some(100.0),
            ..Default::default()
        };
        let j = judge_by(
            PassRule::NoRegression,
            Statistics::FixedHorizon,
            &g,
            &timed(200, |i| 200 + i % 200),
            &timed(2000, |i| 100 + i % 100),
        );
        assert_eq!(j.verdict, Verdict::Fail, "{}", j.reason);
        assert!(j.reason.contains("= 2."), "{}", j.reason);
    }

    /// With no gate set, a candidate that rejects the app (or answers
    /// malformed JSON) fails at its first stage, the event naming the
    /// classes, the counts and an example; a healthy one passes; a policy can
    /// raise the ceiling or turn it off.
    #[test]
    fn rejected_answers_fail_by_default() {
        let none = v1::Gates::default();
        let mut c = side_with(8, |o| o.backend_rejected = 8);
        c.examples = vec![v1::FailureExample {
            outcome: "backend_rejected".into(),
            status: 401,
            detail: "invalid_api_key".into(),
        }];
        let b = outcomes(40, 0);
        let j = judge_with(&none, 2000, &c, &b);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.reason.starts_with("rejected or malformed answers 100.00% (8 of 8: 8 backend_rejected, 0 malformed; e.g. backend_rejected HTTP 401 invalid_api_key)"),
            "{}",
            j.reason
        );
        let side = j.figures.candidate.unwrap();
        assert_eq!(
            (side.backend_rejected, side.rejected_rate_percent),
            (8, 100.0)
        );
        // Four are too few to call it.
        let four = side_with(4, |o| o.malformed = 4);
        assert_eq!(judge_with(&none, 2000, &four, &b).verdict, Verdict::Wait);
        let healthy = outcomes(100, 0);
        assert_eq!(judge_with(&none, 2000, &healthy, &b).verdict, Verdict::Pass);
        // 3 of 100 malformed: above 1% with confidence? Not yet with 3.
        let few = side_with(100, |o| o.malformed = 3);
        assert_ne!(judge_with(&none, 2000, &few, &b).verdict, Verdict::Fail);
        let off = v1::Gates {
            max_rejected_percent: Some(100.0),
            max_client_error_excess_percent: Some(100.0),
            ..Default::default()
        };
        assert_eq!(
            judge_with(
                &off,
                2000,
                &side_with(100, |o| o.backend_rejected = 100),
                &b
            )
            .verdict,
            Verdict::Pass
        );
        let tuned = v1::Gates {
            max_rejected_percent: Some(50.0),
            min_rejected_answers: Some(20),
            max_client_error_excess_percent: Some(100.0),
            ..Default::default()
        };
        assert_ne!(judge_with(&tuned, 2000, &c, &b).verdict, Verdict::Fail);
        assert_eq!(
            judge_with(
                &tuned,
                2000,
                &side_with(100, |o| o.backend_rejected = 90),
                &b
            )
            .verdict,
            Verdict::Fail
        );
    }

    /// The 4xx excess fails a candidate whose 4xx rate is clearly above the
    /// baseline's on the same mix, passes one with the same rate (it never
    /// holds a stage on noise), and is not run without baseline traffic.
    #[test]
    fn client_error_excess_by_default() {
        let none = v1::Gates::default();
        let b = side_with(1000, |o| o.app_error = 100);
        let same = side_with(200, |o| o.app_error = 26);
        let j = judge_with(&none, 2000, &same, &b);
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.reason);
        let mut worse = side_with(200, |o| o.app_error = 120);
        worse.examples = vec![v1::FailureExample {
            outcome: "app_error".into(),
            status: 400,
            detail: "invalid_request_error".into(),
        }];
        let j = judge_with(&none, 2000, &worse, &b);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(j.reason.starts_with("4xx rate regression: candidate 60.00% (120 of 200) vs baseline 10.00% (100 of 1000)"), "{}", j.reason);
        assert!(
            j.reason
                .ends_with("e.g. app_error HTTP 400 invalid_request_error"),
            "{}",
            j.reason
        );
        let gate = j
            .figures
            .gates
            .iter()
            .find(|g| g.gate == "max_client_error_excess_percent")
            .unwrap();
        assert!(gate.value > gate.limit);
        // Overwhelming evidence needs no minimum of requests: 60 of 60.
        let all = judge_with(&none, 2000, &side_with(60, |o| o.app_error = 60), &b);
        assert_eq!(all.verdict, Verdict::Fail, "{}", all.reason);
        // Above the margin without proof, with under 100 requests: waits.
        let early = judge_with(&none, 2000, &side_with(60, |o| o.app_error = 15), &b);
        assert_eq!(early.verdict, Verdict::Wait, "{}", early.reason);
        assert!(
            early
                .reason
                .starts_with("4xx rate above baseline by more than the margin, not yet proven"),
            "{}",
            early.reason
        );
        // The same rate over 200 requests is not proven either, and no
        // longer holds the stage: an app's own mistakes vary by chance.
        let later = judge_with(&none, 2000, &side_with(200, |o| o.app_error = 30), &b);
        assert_eq!(later.verdict, Verdict::Pass, "{}", later.reason);
        let alone = judge_with(&none, 10_000, &worse, &outcomes(0, 0));
        let gate = alone
            .figures
            .gates
            .iter()
            .find(|g| g.gate == "max_client_error_excess_percent")
            .unwrap();
        assert_eq!(gate.verdict, Verdict::Pass);
        assert!(gate.detail.contains("not run"), "{}", gate.detail);
    }

    /// In a shadow stage the default gates read the shadow's answers: its
    /// rejections, and its 4xx answers against the primary's on the same
    /// requests.
    #[test]
    fn shadow_stage_default_gates() {
        let stage = stage_of(0);
        let none = v1::Gates::default();
        let rejecting = v1::ShadowTelemetry {
            mirrored: 30,
            compared: 30,
            outcomes: Some(v1::Outcomes {
                backend_rejected: 30,
                ..Default::default()
            }),
            client_errors: 30,
            ..Default::default()
        };
        let j = judge_shadow_stage(&stage, &none, Duration::from_secs(5), &rejecting, 0);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(j.reason.contains("30 backend_rejected"), "{}", j.reason);
        let bad_requests = v1::ShadowTelemetry {
            mirrored: 100,
            compared: 100,
            outcomes: Some(v1::Outcomes {
                success: 40,
                app_error: 60,
                ..Default::default()
            }),
            client_errors: 60,
            primary_client_errors: 5,
            ..Default::default()
        };
        let j = judge_shadow_stage(&stage, &none, Duration::from_secs(5), &bad_requests, 0);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.reason.starts_with("shadow 4xx rate regression"),
            "{}",
            j.reason
        );
        let alike = v1::ShadowTelemetry {
            primary_client_errors: 60,
            ..bad_requests
        };
        let j = judge_shadow_stage(&stage, &none, Duration::from_secs(5), &alike, 0);
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.reason);
    }

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

    /// Judges `windows` (candidate at 10%, the error-rate gate at 0.05 with
    /// `margin` points) from their sums, with or without the onset test.
    fn judge_windows(windows: &[Window], onset: bool, margin: f64) -> Judgement {
        let (mut c, mut b) = (Tally::default(), Tally::default());
        for w in windows {
            c.add(w.candidate);
            b.add(w.baseline);
        }
        let gates = v1::Gates {
            significance: Some(0.05),
            min_error_rate_effect_percent: Some(margin),
            max_client_error_excess_percent: Some(100.0),
            ..Default::default()
        };
        judge_stage(&StageInput {
            stage: &stage_of(1000),
            gates: &gates,
            elapsed: Duration::from_secs(windows.len() as u64),
            candidate: &outcomes(c.requests, c.errors),
            baseline: &outcomes(b.requests, b.errors),
            windows: if onset { windows } else { &[] },
            rule: PassRule::NoRegression,
            statistics: Statistics::Sequential,
            currency: "USD",
        })
    }

    /// A candidate that turns bad after five healthy minutes is caught on
    /// the failures since the change (one window of them), which the whole
    /// stage's rate, diluted by its healthy history, does not yet show.
    #[test]
    fn onset_test_catches_a_late_failure() {
        let window = |index: u64, errors: u64| Window {
            index,
            candidate: Tally {
                errors,
                requests: 100,
            },
            baseline: Tally {
                errors: 9,
                requests: 900,
            },
        };
        let mut windows: Vec<Window> = (1..=300).map(|i| window(i, 1)).collect();
        windows.push(window(301, 50));
        let caught = judge_windows(&windows, true, 0.5);
        assert_eq!(caught.verdict, Verdict::Fail, "{}", caught.reason);
        assert!(
            caught.reason.contains("since window 301"),
            "{}",
            caught.reason
        );
        let diluted = judge_windows(&windows, false, 0.5);
        assert_ne!(diluted.verdict, Verdict::Fail, "{}", diluted.reason);
        // A healthy history alone proves nothing.
        windows.pop();
        assert_ne!(judge_windows(&windows, true, 0.5).verdict, Verdict::Fail);
    }

    /// With the onset test looking at every recent start, a healthy
    /// candidate looked at after every window still raises an alarm in no
    /// more than α of the runs.
    #[test]
    fn onset_test_keeps_the_false_alarm_rate() {
        use rand::rngs::SmallRng;
        use rand::{RngExt, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(5);
        let mut binomial =
            |n: u64, p: f64| (0..n).filter(|_| rng.random::<f64>() < p).count() as u64;
        let runs = 60;
        let mut alarms = 0;
        for _ in 0..runs {
            let mut windows = Vec::new();
            for index in 1..=40 {
                windows.push(Window {
                    index,
                    candidate: Tally {
                        errors: binomial(50, 0.05),
                        requests: 50,
                    },
                    baseline: Tally {
                        errors: binomial(150, 0.05),
                        requests: 150,
                    },
                });
                if judge_windows(&windows, true, 0.0).verdict == Verdict::Fail {
                    alarms += 1;
                    break;
                }
            }
        }
        assert!(
            alarms * 20 <= runs,
            "{alarms} alarms in {runs} runs at 0.05"
        );
    }

    /// `n` answers served at `mean` pico-units each, half of them `spread`
    /// below and half above, with 10 output tokens each.
    fn priced(n: u64, mean: u128, spread: u128) -> Side {
        let mut side = Side::with_server_errors(n, 0);
        side.cost = Some(Costs {
            served: Spend {
                picos: mean * u128::from(n),
                priced: n,
                unpriced: 0,
                squares: (mean * mean + spread * spread) * u128::from(n),
            },
            ..Default::default()
        });
        side.output_tokens = 10 * n;
        side
    }

    fn cost_gate(ratio: f64) -> v1::Gates {
        v1::Gates {
            max_cost_ratio: Some(ratio),
            ..Default::default()
        }
    }

    fn cost_result(j: &Judgement) -> &GateResult {
        j.figures
            .gates
            .iter()
            .find(|r| r.gate == "max_cost_ratio")
            .expect("the cost gate is judged")
    }

    /// A candidate three times pricier per answer fails the cost gate once
    /// its confidence sequence clears the baseline's; before its minimum of
    /// answers it waits; one as cheap passes, and under the evidence rule is
    /// proven not worse.
    #[test]
    fn cost_ratio_is_a_sequential_test() {
        let micro = 1_000_000; // 10^-6 of the currency, in pico-units
        let baseline = priced(5000, 65 * micro, 30 * micro);
        let dear = priced(500, 3 * 65 * micro, 90 * micro);
        let j = judge_with(&cost_gate(1.2), 1000, &dear, &baseline);
        assert_eq!(j.verdict, Verdict::Fail, "{}", j.reason);
        let r = cost_result(&j);
        assert!((r.value - 3.0).abs() < 1e-9 && r.limit == 1.2, "{r:?}");
        assert!(r.detail.starts_with("cost regression"), "{}", r.detail);

        let few = priced(MIN_COST_SAMPLES - 1, 3 * 65 * micro, 0);
        let j = judge_with(&cost_gate(1.2), 1000, &few, &baseline);
        assert_eq!(cost_result(&j).verdict, Verdict::Wait);

        // Slightly above the ceiling but noisy: not proven, so it holds.
        let close = priced(120, 82 * micro, 150 * micro);
        let j = judge_with(&cost_gate(1.2), 1000, &close, &baseline);
        let r = cost_result(&j);
        assert_eq!(r.verdict, Verdict::Wait, "{}", r.detail);
        assert!(r.detail.contains("not yet proven"), "{}", r.detail);

        let same = priced(500, 65 * micro, 30 * micro);
        let j = judge_with(&cost_gate(1.2), 1000, &same, &baseline);
        assert_eq!(cost_result(&j).verdict, Verdict::Pass);
        let j = judge_by(
            PassRule::ProvenNotWorse,
            Statistics::Sequential,
            &cost_gate(1.2),
            &same,
            &baseline,
        );
        let r = cost_result(&j);
        assert_eq!(r.verdict, Verdict::Pass, "{}", r.detail);
        assert!(r.detail.contains("proven not worse"), "{}", r.detail);
        // At 100% with no baseline answers it is not judged.
        let j = judge_with(&cost_gate(1.2), 10_000, &dear, &Side::default());
        assert_eq!(cost_result(&j).verdict, Verdict::Pass);
    }

    /// The stage's spend, billed failures included, fails the stage once it
    /// reaches the cap.
    #[test]
    fn stage_spend_cap() {
        let mut c = priced(1000, 1_000_000_000, 0); // 0.001 each: 1.0 in all
        let b = priced(1000, 1_000_000_000, 0);
        let cap = |spend: f64| v1::Gates {
            max_stage_spend: Some(spend),
            ..Default::default()
        };
        let j = judge_with(&cap(1.5), 1000, &c, &b);
        let r = j
            .figures
            .gates
            .iter()
            .find(|r| r.gate == "max_stage_spend")
            .unwrap();
        assert_eq!((r.verdict, r.value, r.limit), (Verdict::Pass, 1.0, 1.5));
        if let Some(cost) = c.cost.as_mut() {
            cost.failed.picos = 500_000_000_000;
        }
        let j = judge_with(&cap(1.5), 1000, &c, &b);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.reason
                .contains("stage spend 1.500000 reached its cap of 1.5"),
            "{}",
            j.reason
        );
        // In a shadow stage, the shadow's spend counts.
        let stage = stage_of(0);
        let shadow = v1::ShadowTelemetry::default();
        let j = judge_shadow_stage(
            &stage,
            &cap(1.0),
            Duration::from_secs(5),
            &shadow,
            2_000_000_000_000,
        );
        assert_eq!(j.verdict, Verdict::Fail, "{}", j.reason);
    }

    /// Each side's cost figures, and the projection of a full move at the
    /// stage's request rate.
    #[test]
    fn cost_figures_and_projection() {
        let micro = 1_000_000;
        // 1000 answers in 5 s at 0.000065 and 0.00001 each.
        let b = priced(900, 65 * micro, 0);
        let c = priced(100, 10 * micro, 0);
        let j = judge_with(&v1::Gates::default(), 1000, &c, &b);
        let (cf, bf) = (
            j.figures.candidate.as_ref().unwrap().cost.clone().unwrap(),
            j.figures.baseline.as_ref().unwrap().cost.clone().unwrap(),
        );
        assert_eq!(cf.currency, "USD");
        assert_eq!((cf.spend, cf.priced), (1000 * micro, 100));
        assert!((bf.per_request - 0.000065).abs() < 1e-12);
        assert!((bf.per_1k_output_tokens - 0.0065).abs() < 1e-12);
        // 200 attempts per second for 30 days.
        let month = 200.0 * SECONDS_PER_MONTH;
        assert!(
            (bf.monthly_at_full - 0.000065 * month).abs() < 1e-6,
            "{}",
            bf.monthly_at_full
        );
        assert!((cf.monthly_at_full - 0.00001 * month).abs() < 1e-6);
        assert_eq!(
            j.figures.cost_projection.as_deref(),
            Some("at 100% the candidate would cost 5184.00 USD/month against 33696.00 USD: -85%")
        );
        // Unpriced sides: no cost figures, no projection.
        let plain = Side::with_server_errors(100, 0);
        let j = judge_with(&v1::Gates::default(), 1000, &plain, &b);
        assert!(j.figures.candidate.as_ref().unwrap().cost.is_none());
        assert_eq!(j.figures.cost_projection, None);
    }
}
