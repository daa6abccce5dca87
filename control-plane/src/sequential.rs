//! Anytime-valid tests of rates: the statistics behind every comparative
//! gate of a rollout.
//!
//! # Why
//!
//! The leader judges a stage at every tick, so a gate is looked at hundreds
//! of times before a stage ends. A fixed-horizon test (a z-test at level α)
//! keeps its error guarantee only when it is looked at once: checked again
//! and again, the chance that noise crosses its boundary at some look grows
//! far beyond α. The tests here keep their guarantee however often they are
//! looked at, and may stop as soon as the evidence is there.
//!
//! # Method
//!
//! Each test is an e-process: a mixture of likelihood ratios, the
//! sequential probability ratio of the alternatives against the null,
//! averaged over a grid of alternatives. Under the null its expectation is at
//! most 1 at every sample size, and by Ville's inequality the chance that it
//! *ever* reaches 1/α is at most α. A gate rejects its null the first time
//! the e-value reaches 1/α. This is the approach of Lindon, Sanden and
//! Shirikian, "Rapid Regression Detection in Software Deployments through
//! Sequential Testing" (KDD 2022), Netflix's sequential canary tests, with the
//! mixture taken over a discrete grid (Robbins' method of mixtures).
//!
//! - **One rate against a known boundary** ([`above`], [`below`]): `x` events
//!   in `n` requests, each an independent Bernoulli draw. The alternatives
//!   are [`GRID`] rates spaced evenly in log-odds (four per decade, odds from
//!   1e-4 to 1e2), each with weight 1/[`GRID`]; only those on the tested side
//!   of the boundary count. The latency gates use it: the share of candidate
//!   requests slower than a bound.
//! - **A regression: the candidate's rate above the baseline's plus a
//!   margin** ([`worse`]): Lindon et al.'s test for counts. Whatever the
//!   baseline's own rate, if the candidate's events come at `ρ` times it,
//!   each event is the candidate's with a probability fixed by `ρ` and the
//!   candidate's share of requests; the mixture is over the split of the
//!   events between the two sides, for `ρ` above the null's. It is averaged
//!   (weights 9/10 and 1/10: a weighted mean of e-values is an e-value)
//!   with the one-sample test of the next item, mirrored, which still has
//!   evidence when the baseline shows no events of the kind.
//! - **Non-inferiority: the candidate's rate below the baseline's plus a
//!   margin** ([`not_worse`]), for stages that pass on evidence: the same
//!   split with `ρ` below the null's. Rare events say little about a ratio,
//!   so it is averaged with a test of the candidate's rate itself against
//!   the low end of the baseline's anytime-valid confidence sequence
//!   ([`interval`], at level α/10) plus the margin, at level 9α/10: a
//!   candidate with no errors in enough requests is proven within the
//!   margin. The union bound keeps that test at level α.
//! - **A mean** ([`mean_interval`]), for the cost per answer: Robbins'
//!   normal-mixture boundary with the sample variance plugged in, the
//!   asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy
//!   and Ramdas, "Time-uniform central limit theory and asymptotic
//!   confidence sequences" (Annals of Statistics, 2024). It holds the mean
//!   at every sample size at once with probability approaching 1 − α as the
//!   samples grow, for any distribution with a finite variance; the cost
//!   gate compares two of them, each at α/2.

use std::sync::LazyLock;

/// Alternatives in the mixture.
pub const GRID: usize = 25;

/// Share of α spent on the baseline's confidence sequence.
const BASELINE_ALPHA_SHARE: f64 = 0.1;

/// An alternative rate with its logarithms.
struct Alternative {
    p: f64,
    ln_p: f64,
    ln_q: f64,
}

/// The alternatives: rates with odds 10^(-4 + j/4).
static ALTERNATIVES: LazyLock<[Alternative; GRID]> = LazyLock::new(|| {
    std::array::from_fn(|j| {
        let odds = 10f64.powf(-4.0 + j as f64 / 4.0);
        let p = odds / (1.0 + odds);
        Alternative {
            p,
            ln_p: p.ln(),
            ln_q: (1.0 - p).ln(),
        }
    })
});

/// `x · ln(y)`, 0 when `x` is 0 (so a null rate of 0 or 1 is no NaN).
fn xlny(x: f64, y: f64) -> f64 {
    if x == 0.0 { 0.0 } else { x * y.ln() }
}

fn log_likelihood(x: f64, failures: f64, p: f64) -> f64 {
    xlny(x, p) + xlny(failures, 1.0 - p)
}

/// Which alternatives a mixture averages over.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Above,
    Below,
    Both,
}

/// ln of the mixture e-value of `x` events in `n` trials against the rate
/// `p0`, over the grid's alternatives on `side` of it.
fn log_e(x: u64, n: u64, p0: f64, side: Side) -> f64 {
    let p0 = p0.clamp(0.0, 1.0);
    let (xf, failures) = (x as f64, n.saturating_sub(x) as f64);
    let null = log_likelihood(xf, failures, p0);
    let mut max = f64::NEG_INFINITY;
    let mut terms = [f64::NEG_INFINITY; GRID];
    for (term, a) in terms.iter_mut().zip(ALTERNATIVES.iter()) {
        let counts = match side {
            Side::Above => a.p > p0,
            Side::Below => a.p < p0,
            Side::Both => true,
        };
        if counts {
            *term = xf * a.ln_p + failures * a.ln_q - null;
            max = max.max(*term);
        }
    }
    if max == f64::NEG_INFINITY {
        return max;
    }
    if max == f64::INFINITY {
        return max;
    }
    let sum: f64 = terms.iter().map(|t| (t - max).exp()).sum();
    max + sum.ln() - (GRID as f64).ln()
}

/// Evidence of one sequential test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evidence {
    /// ln of the e-value.
    pub log_e: f64,
    /// ln of the e-value that proves the alternative (1/α of the part of α
    /// spent on it).
    pub log_threshold: f64,
    /// The rate the events were tested against.
    pub boundary: f64,
}

impl Evidence {
    /// The e-value reached its threshold: the null is rejected.
    pub fn proven(&self) -> bool {
        self.log_e >= self.log_threshold
    }

    /// The e-value, capped at 1e15 (far past any threshold).
    pub fn e_value(&self) -> f64 {
        self.log_e.min(15.0 * std::f64::consts::LN_10).exp()
    }

    /// The threshold as an e-value.
    pub fn threshold(&self) -> f64 {
        self.log_threshold.exp()
    }

    /// "e = 412 (needs 100)".
    pub fn describe(&self) -> String {
        format!(
            "e-value {} (proof at {})",
            e_text(self.e_value()),
            e_text(self.threshold())
        )
    }
}

/// An e-value as text: plain below a million, scientific above.
pub fn e_text(e: f64) -> String {
    if e < 1e6 {
        format!("{e:.1}")
    } else {
        format!("{e:.2e}")
    }
}

fn threshold(alpha: f64) -> f64 {
    -alpha.clamp(f64::MIN_POSITIVE, 1.0).ln()
}

/// Is the rate behind `x` events in `n` requests above `p0`? Anytime-valid at
/// level `alpha`.
pub fn above(x: u64, n: u64, p0: f64, alpha: f64) -> Evidence {
    Evidence {
        log_e: log_e(x, n, p0, Side::Above),
        log_threshold: threshold(alpha),
        boundary: p0,
    }
}

/// Is the rate behind `x` events in `n` requests below `p0`? Anytime-valid at
/// level `alpha`.
pub fn below(x: u64, n: u64, p0: f64, alpha: f64) -> Evidence {
    Evidence {
        log_e: log_e(x, n, p0, Side::Below),
        log_threshold: threshold(alpha),
        boundary: p0,
    }
}

/// The confidence sequence of a rate from `x` events in `n` requests: every
/// rate the two-sided mixture does not reject at level `alpha`. It holds the
/// true rate at every sample size at once with probability 1 − `alpha`.
/// `(0, 1)` without data.
pub fn interval(x: u64, n: u64, alpha: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let limit = threshold(alpha);
    let estimate = x.min(n) as f64 / n as f64;
    // ln E(p) is convex in p and below the limit at the estimate (where
    // every alternative's likelihood ratio is at most 1).
    let inside = |p: f64| log_e(x, n, p, Side::Both) < limit;
    let search = |mut inner: f64, mut outer: f64| {
        if inside(outer) {
            return outer;
        }
        for _ in 0..40 {
            let mid = 0.5 * (inner + outer);
            if inside(mid) {
                inner = mid;
            } else {
                outer = mid;
            }
        }
        inner
    };
    (search(estimate, 0.0), search(estimate, 1.0))
}

/// Weight of the split of the events in the regression test; the rest goes
/// to the one-sample test, which matters only when the baseline shows (next
/// to) no events of the kind, where the evidence is overwhelming anyway.
const SPLIT_WEIGHT: f64 = 0.9;

/// Multiples of the null's rate ratio that the regression test's mixture
/// averages over.
const RATIOS_UP: [f64; 8] = [1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0];
/// The same for the non-inferiority test.
const RATIOS_DOWN: [f64; 6] = [0.8, 0.67, 0.5, 0.33, 0.2, 0.05];

/// Is the candidate's rate (`xc` events in `nc` requests) above the
/// baseline's (`xb` in `nb`) by more than `margin` (a fraction)?
/// Anytime-valid at level `alpha`.
///
/// Lindon et al.'s test for counts: if the candidate's events come at `ρ`
/// times the baseline's rate per request, each event is the candidate's with
/// probability `q = ρs / (ρs + 1 − s)`, `s` being the candidate's share of
/// the requests, whatever the baseline's own rate. The test is the mixture
/// of the likelihood ratios of the events' split, `xc` against `xb`, for
/// `ρ` at [`RATIOS_UP`] times the null's `ρ0`, against `ρ0`. With no
/// margin `ρ0 = 1` and the test is exact. A margin in rate points is the
/// ratio `ρ0 = (p + margin) / p` at the baseline's rate `p`, which is not
/// known: it is taken at the low end of the baseline's confidence sequence
/// (at α/10, the one the one-sample part uses), where the ratio is at its
/// largest, so the null tested contains the true one whenever the sequence
/// holds, and the union bound keeps the level (the split is then judged at
/// 9α/10 like the one-sample part). Under the null the split is no more
/// lopsided than the binomial one (sampling without replacement is more
/// concentrated), so the mixture stays a supermartingale.
///
/// The split says little when the baseline has no events of the kind at
/// all (a failure class it never shows), so the test is a weighted mean of
/// that e-value (9/10) and the one-sample test of the candidate's rate
/// against the high end of the baseline's confidence sequence plus the
/// margin (1/10; the construction of [`not_worse`], mirrored): a weighted
/// mean of e-values is an e-value.
pub fn worse(xc: u64, nc: u64, xb: u64, nb: u64, margin: f64, alpha: f64) -> Evidence {
    two_sample_test(xc, nc, xb, nb, (xb, nb), margin, alpha, Side::Above)
}

/// [`worse`] on counts since some point of the stage, with the baseline's
/// rate, which the margin is measured against, known from `base` (its
/// counts over the whole stage, events and requests): the onset test's
/// windows hold too few baseline events to bound its rate. The baseline's
/// rate is taken to hold over the stage.
#[allow(clippy::too_many_arguments)]
pub fn worse_since(
    xc: u64,
    nc: u64,
    xb: u64,
    nb: u64,
    base: (u64, u64),
    margin: f64,
    alpha: f64,
) -> Evidence {
    two_sample_test(xc, nc, xb, nb, base, margin, alpha, Side::Above)
}

/// Whether [`worse`] could prove a regression at all: a cheap bound that
/// needs no mixture and no confidence sequence, for callers that look at
/// many tests (the onset test). Every term of each mixture is at most the
/// likelihood ratio at the observed proportion (the generalised ratio), and
/// the high end of the baseline's confidence sequence is at least its
/// observed rate, so when the weighted mean of those bounds stays below
/// the thresholds, so does the test's e-value. `false` means it cannot
/// prove one; `true` means it might.
#[allow(clippy::too_many_arguments)]
pub fn could_prove_worse(
    xc: u64,
    nc: u64,
    xb: u64,
    nb: u64,
    base: (u64, u64),
    margin: f64,
    alpha: f64,
) -> bool {
    if nc == 0 || nb == 0 || xc == 0 || base.1 == 0 {
        return false;
    }
    // The split, as split_test sets its null: with a margin, at a baseline
    // rate no higher than the low end of its confidence sequence, which is
    // at most its observed rate (the mixture never rejects the observed
    // rate), so the observed rate gives the smallest null.
    let p = if margin > 0.0 {
        base.0 as f64 / base.1 as f64
    } else {
        (xb as f64 + 1.0) / (nb as f64 + 2.0)
    };
    let share = nc as f64 / (nc + nb) as f64;
    let odds0 = (p + margin).min(1.0) / p * share / (1.0 - share);
    let q0 = odds0 / (1.0 + odds0);
    let q = xc as f64 / (xc + xb) as f64;
    let split = if p > 0.0 && q > q0 {
        log_likelihood(xc as f64, xb as f64, q) - log_likelihood(xc as f64, xb as f64, q0)
    } else {
        0.0
    };
    // The candidate's rate against the baseline's observed rate plus the
    // margin.
    let bound = (base.0 as f64 / base.1 as f64 + margin).min(1.0);
    let pc = xc as f64 / nc as f64;
    let (x, rest) = (xc as f64, (nc - xc) as f64);
    let rate = if pc > bound && bound < 1.0 {
        log_likelihood(x, rest, pc) - log_likelihood(x, rest, bound)
    } else {
        0.0
    };
    let baseline_alpha = alpha * BASELINE_ALPHA_SHARE;
    let most = SPLIT_WEIGHT * (split - threshold(alpha)).exp()
        + (1.0 - SPLIT_WEIGHT) * (rate - threshold(alpha - baseline_alpha)).exp();
    most >= 1.0
}

/// [`worse`] (`Side::Above`) or [`not_worse`] (`Side::Below`).
/// The two-sample test of [`worse`] or [`not_worse`]; the baseline's rate
/// (its confidence sequence) comes from the counts `base`.
#[allow(clippy::too_many_arguments)]
fn two_sample_test(
    xc: u64,
    nc: u64,
    xb: u64,
    nb: u64,
    base: (u64, u64),
    margin: f64,
    alpha: f64,
    side: Side,
) -> Evidence {
    let ratios: &[f64] = if side == Side::Above {
        &RATIOS_UP
    } else {
        &RATIOS_DOWN
    };
    let baseline_alpha = alpha * BASELINE_ALPHA_SHARE;
    let (lower, upper) = interval(base.0, base.1, baseline_alpha);
    // The margin's ratio is largest at the baseline's lowest rate (so a
    // regression must clear the most the margin can allow) and smallest at
    // its highest (so non-inferiority must clear the least).
    let split = if margin > 0.0 {
        let base = if side == Side::Above { lower } else { upper };
        split_test(
            xc,
            nc,
            xb,
            nb,
            margin,
            Some(base),
            alpha - baseline_alpha,
            ratios,
        )
    } else {
        split_test(xc, nc, xb, nb, margin, None, alpha, ratios)
    };
    let edge = if side == Side::Above { upper } else { lower };
    let rate = Evidence {
        log_e: log_e(xc, nc, (edge + margin).min(1.0), side),
        log_threshold: threshold(alpha - baseline_alpha),
        boundary: (edge + margin).min(1.0),
    };
    combine(split, rate, alpha)
}

/// The weighted mean of the split test's e-value (9/10) and the one-sample
/// test's (1/10), each scaled to its own threshold: an e-value for the
/// whole test at `alpha`, reported with the split's boundary.
fn combine(split: Evidence, rate: Evidence, alpha: f64) -> Evidence {
    let (a, b) = (
        split.log_e - split.log_threshold + SPLIT_WEIGHT.ln(),
        rate.log_e - rate.log_threshold + (1.0 - SPLIT_WEIGHT).ln(),
    );
    let high = a.max(b);
    let log_e = if high.is_infinite() {
        high
    } else {
        high + ((a - high).exp() + (b - high).exp()).ln()
    };
    let log_threshold = threshold(alpha);
    Evidence {
        log_e: log_e + log_threshold,
        log_threshold,
        boundary: split.boundary,
    }
}

/// The split of the events between the two sides (see [`worse`]), at level
/// `alpha`; `base` is the baseline rate the margin is a ratio at (`None`:
/// as measured, for the bound reported when there is no margin).
#[allow(clippy::too_many_arguments)]
fn split_test(
    xc: u64,
    nc: u64,
    xb: u64,
    nb: u64,
    margin: f64,
    base: Option<f64>,
    alpha: f64,
    ratios: &[f64],
) -> Evidence {
    let p = base.unwrap_or((xb as f64 + 1.0) / (nb as f64 + 2.0));
    let bound = (p + margin).min(1.0);
    let log_threshold = threshold(alpha);
    if nc == 0 || nb == 0 || p <= 0.0 || p >= 1.0 {
        return Evidence {
            log_e: f64::NEG_INFINITY,
            log_threshold,
            boundary: bound,
        };
    }
    let share = nc as f64 / (nc + nb) as f64;
    let odds0 = bound / p * share / (1.0 - share);
    let q0 = odds0 / (1.0 + odds0);
    let (xc, xb) = (xc as f64, xb as f64);
    let mut terms = [0.0; RATIOS_UP.len()];
    let terms = &mut terms[..ratios.len()];
    for (term, m) in terms.iter_mut().zip(ratios) {
        let odds = odds0 * m;
        let q = odds / (1.0 + odds);
        *term = xlny(xc, q / q0) + xlny(xb, (1.0 - q) / (1.0 - q0));
    }
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = terms.iter().map(|t| (t - max).exp()).sum();
    Evidence {
        log_e: max + sum.ln() - (ratios.len() as f64).ln(),
        log_threshold,
        boundary: bound,
    }
}

/// Is the candidate's rate below the baseline's plus `margin`: not worse by
/// more than the margin? Anytime-valid at level `alpha`.
///
/// [`worse`] mirrored: the split of the events with the mixture over `ρ`
/// at [`RATIOS_DOWN`] times `ρ0` (weight 9/10), and the one-sample test of
/// the candidate's rate, which needs no events at all: a candidate with
/// none in enough requests is proven within the margin (weight 1/10).
///
/// For the one-sample part, the baseline's rate is at least the lower end
/// `L` of its confidence sequence at level α/10 at every look, except with
/// probability α/10, and the candidate is tested against `L + margin` at
/// level 9α/10 with [`below`].
/// Under the null (the candidate's rate `pc` is at least the baseline's
/// plus the margin), `L + margin ≤ pc` whenever the sequence holds; each
/// alternative's likelihood ratio against a lower boundary is smaller
/// wherever the candidate's observed rate is below it (and at most 1
/// elsewhere), so the mixture can reach its threshold only if the mixture
/// against `pc` itself does, which happens with probability at most 9α/10.
pub fn not_worse(xc: u64, nc: u64, xb: u64, nb: u64, margin: f64, alpha: f64) -> Evidence {
    two_sample_test(xc, nc, xb, nb, (xb, nb), margin, alpha, Side::Below)
}

/// Sample size at which [`mean_interval`] is tightest.
const MEAN_TUNED_FOR: f64 = 200.0;

/// The confidence sequence of a mean from `n` samples with sum `sum` and sum
/// of squares `squares`, two-sided at level `alpha`: mean ± σ̂ · √(2(nρ² +
/// 1)/(n²ρ²) · ln(√(nρ² + 1)/α)), with ρ tuned for [`MEAN_TUNED_FOR`]
/// samples. Asymptotic (see the module docs). `None` without samples.
pub fn mean_interval(n: u64, sum: f64, squares: f64, alpha: f64) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let nf = n as f64;
    let mean = sum / nf;
    let variance = (squares / nf - mean * mean).max(0.0);
    let alpha = alpha.clamp(f64::MIN_POSITIVE, 1.0);
    let l = -2.0 * alpha.ln();
    let rho2 = (l + (l + 1.0).ln()) / MEAN_TUNED_FOR;
    let a = nf * rho2 + 1.0;
    let radius = (variance * 2.0 * a / (nf * nf * rho2) * (a.sqrt() / alpha).ln()).sqrt();
    Some((mean - radius, mean + radius))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{RngExt, SeedableRng};

    fn binomial(rng: &mut SmallRng, n: u64, p: f64) -> u64 {
        (0..n).filter(|_| rng.random::<f64>() < p).count() as u64
    }

    /// Looked at after every batch of requests, a test under its null
    /// rejects in far fewer than α of the runs: the guarantee holds however
    /// often it is looked at. (A fixed-horizon z-test looked at as often
    /// rejects in many times α.)
    #[test]
    fn repeated_looks_keep_the_false_alarm_rate() {
        let mut rng = SmallRng::seed_from_u64(7);
        let alpha = 0.05;
        let runs = 200;
        let mut alarms = 0;
        let mut z_alarms = 0;
        for _ in 0..runs {
            let (mut xc, mut nc, mut xb, mut nb) = (0, 0, 0, 0);
            let (mut alarmed, mut z_alarmed) = (false, false);
            for _ in 0..100 {
                nc += 20;
                xc += binomial(&mut rng, 20, 0.05);
                nb += 60;
                xb += binomial(&mut rng, 60, 0.05);
                alarmed |= worse(xc, nc, xb, nb, 0.0, alpha).proven();
                let (pc, pb) = (xc as f64 / nc as f64, xb as f64 / nb as f64);
                let pooled = (xc + xb) as f64 / (nc + nb) as f64;
                let se = (pooled * (1.0 - pooled) * (1.0 / nc as f64 + 1.0 / nb as f64)).sqrt();
                z_alarmed |= se > 0.0 && (pc - pb) / se > 1.645;
            }
            alarms += u32::from(alarmed);
            z_alarms += u32::from(z_alarmed);
        }
        let rate = f64::from(alarms) / f64::from(runs);
        let z_rate = f64::from(z_alarms) / f64::from(runs);
        assert!(rate <= alpha, "sequential: {rate}");
        assert!(
            z_rate > 3.0 * alpha,
            "fixed horizon, looked at often: {z_rate}"
        );
    }

    /// A one-sample test at its null boundary, looked at after every
    /// request, stays under α too.
    #[test]
    fn one_sample_null_holds_under_continuous_looks() {
        let mut rng = SmallRng::seed_from_u64(11);
        let alpha = 0.05;
        let runs = 400;
        let mut alarms = 0;
        for _ in 0..runs {
            let (mut x, mut n) = (0, 0);
            for _ in 0..3000 {
                n += 1;
                x += u64::from(rng.random::<f64>() < 0.05);
                if above(x, n, 0.05, alpha).proven() {
                    alarms += 1;
                    break;
                }
            }
        }
        assert!(
            f64::from(alarms) / f64::from(runs) <= alpha,
            "{alarms} of {runs}"
        );
    }

    /// A clear regression is proven, with more data sooner than less; a
    /// candidate within the margin is not; the margin is in rate units.
    #[test]
    fn regressions_are_proven() {
        // 3% against 1% over 2,000 and 40,000 requests.
        let clear = worse(60, 2000, 400, 40_000, 0.0, 0.01);
        assert!(clear.proven(), "{clear:?}");
        assert!(clear.boundary > 0.01 && clear.boundary < 0.013, "{clear:?}");
        let few = worse(3, 100, 20, 2000, 0.0, 0.01);
        assert!(!few.proven(), "{few:?}");
        // 1.3% against 1% with a 0.5-point margin: not a regression.
        let within = worse(26, 2000, 400, 40_000, 0.005, 0.01);
        assert!(!within.proven() && within.log_e < 0.0, "{within:?}");
        // Everything failing against a healthy baseline: proven at once.
        assert!(worse(10, 10, 1, 100, 0.005, 0.01).proven());
        // No candidate data: no evidence.
        let none = worse(0, 0, 10, 1000, 0.0, 0.01);
        assert!(!none.proven() && none.log_e <= 0.0, "{none:?}");
    }

    /// Non-inferiority is proven for a candidate as good as the baseline
    /// once there is enough data, also when neither side has any event; a
    /// candidate worse than the margin never is.
    #[test]
    fn non_inferiority_is_proven() {
        assert!(not_worse(0, 1500, 0, 20_000, 0.01, 0.01).proven());
        assert!(!not_worse(0, 100, 0, 2000, 0.01, 0.01).proven());
        let alike = not_worse(100, 10_000, 1000, 100_000, 0.01, 0.01);
        assert!(alike.proven(), "{alike:?}");
        let worse_than_margin = not_worse(300, 10_000, 1000, 100_000, 0.01, 0.01);
        assert!(!worse_than_margin.proven(), "{worse_than_margin:?}");
    }

    /// The confidence sequence holds the estimate, narrows with data, and
    /// is the whole range without it.
    #[test]
    fn intervals() {
        assert_eq!(interval(0, 0, 0.01), (0.0, 1.0));
        let (l1, u1) = interval(10, 1000, 0.01);
        let (l2, u2) = interval(100, 10_000, 0.01);
        assert!(l1 < 0.01 && 0.01 < u1, "{l1} {u1}");
        assert!(l1 < l2 && u2 < u1, "{l1} {l2} {u2} {u1}");
        assert!(u2 < 0.015 && l2 > 0.006, "{l2} {u2}");
        let (l0, u0) = interval(0, 1000, 0.01);
        assert!(l0 < 1e-4 && u0 < 0.02, "{l0} {u0}");
        let (la, ua) = interval(50, 50, 0.01);
        assert!(la > 0.8 && ua == 1.0, "{la} {ua}");
    }

    /// The mixture is defined at the edges: a null rate of 0 with events is
    /// infinite evidence, without events none.
    #[test]
    fn edges() {
        assert_eq!(above(1, 10, 0.0, 0.01).log_e, f64::INFINITY);
        assert!(above(0, 10, 0.0, 0.01).log_e <= 0.0);
        assert_eq!(above(5, 10, 1.0, 0.01).log_e, f64::NEG_INFINITY);
        assert!(!below(0, 0, 0.5, 0.01).proven());
        // A margin of the whole range: proven at once, never NaN.
        let all = not_worse(0, 10, 0, 10, 1.0, 0.01);
        assert!(all.proven() && all.log_e == f64::INFINITY, "{all:?}");
        assert!(!worse(10, 10, 0, 10, 1.0, 0.01).proven());
        assert_eq!(e_text(12.345), "12.3");
        assert_eq!(e_text(2.5e9), "2.50e9");
        assert!((above(200, 200, 0.01, 0.01).e_value() - 1e15).abs() < 1e3);
    }

    /// The cheap bound never says "cannot" where the test proves a
    /// regression, and rules out most healthy comparisons.
    #[test]
    fn the_cheap_bound_never_hides_a_proof() {
        let mut rng = SmallRng::seed_from_u64(3);
        let (mut proven, mut ruled_out, mut healthy) = (0, 0, 0);
        for i in 0..4000 {
            let nc = 20 + rng.random_range(0..2000u64);
            let nb = 20 + rng.random_range(0..20_000u64);
            let pb: f64 = [0.001, 0.01, 0.05, 0.2][i % 4];
            let pc = pb * [1.0, 1.0, 1.5, 3.0, 20.0][i % 5];
            let (xc, xb) = (
                binomial(&mut rng, nc, pc.min(1.0)),
                binomial(&mut rng, nb, pb),
            );
            let margin = [0.0, 0.005][i % 2];
            let alpha = [0.01, 1e-5][i % 2];
            // Half the time the baseline's rate comes from the whole
            // stage, as in the onset test.
            let base = if i % 3 == 0 {
                (xb, nb)
            } else {
                let more = nb * 4;
                (xb + binomial(&mut rng, more, pb), nb + more)
            };
            let e = if base == (xb, nb) {
                worse(xc, nc, xb, nb, margin, alpha)
            } else {
                worse_since(xc, nc, xb, nb, base, margin, alpha)
            };
            let could = could_prove_worse(xc, nc, xb, nb, base, margin, alpha);
            if e.proven() {
                proven += 1;
                assert!(
                    could,
                    "{xc}/{nc} vs {xb}/{nb} (base {base:?}), margin {margin}, alpha {alpha}"
                );
            }
            if pc == pb {
                healthy += 1;
                ruled_out += u32::from(!could);
            }
        }
        assert!(proven > 100, "{proven}");
        assert!(ruled_out * 10 >= healthy * 9, "{ruled_out} of {healthy}");
    }

    /// Looked at after every sample from the cost gate's minimum on, the
    /// mean's confidence sequence misses the true mean at some look in
    /// fewer than α of the runs, for a skewed cost-like distribution (the
    /// guarantee is asymptotic: from 30 samples it misses in 10.5%); a
    /// fixed-horizon interval looked at as often misses it far more.
    #[test]
    fn the_mean_sequence_holds_however_often_it_is_looked_at() {
        let mut rng = SmallRng::seed_from_u64(5);
        let alpha = 0.1;
        // Output tokens 1..=1000 skewed low (the cube of a uniform), at a
        // price per token of 8, plus 200 input tokens at 2.5.
        let true_mean = 500.0 + 8.0 * (1.0 + 999.0 / 4.0);
        let (runs, looks) = (200, 2000);
        const MIN: u64 = crate::analysis::MIN_COST_SAMPLES;
        let (mut missed, mut fixed_missed) = (0, 0);
        let z = 1.644_854; // two-sided 90%
        for _ in 0..runs {
            let (mut sum, mut squares) = (0.0, 0.0);
            let (mut miss, mut fixed_miss) = (false, false);
            for n in 1..=looks {
                let u: f64 = rng.random();
                let x = 500.0 + 8.0 * (1.0 + (999.0 * u * u * u).round());
                sum += x;
                squares += x * x;
                if n < MIN {
                    continue;
                }
                let (lo, hi) = mean_interval(n, sum, squares, alpha).unwrap();
                miss |= true_mean < lo || true_mean > hi;
                let nf = n as f64;
                let m = sum / nf;
                let half = z * ((squares / nf - m * m).max(0.0) / nf).sqrt();
                fixed_miss |= (true_mean - m).abs() > half;
            }
            missed += u32::from(miss);
            fixed_missed += u32::from(fixed_miss);
        }
        assert!(
            f64::from(missed) / f64::from(runs) <= alpha,
            "missed in {missed} of {runs} runs"
        );
        assert!(
            fixed_missed > 3 * missed.max(10),
            "{fixed_missed} vs {missed}"
        );
        // It narrows as samples grow.
        let width = |n: u64| {
            let (lo, hi) = mean_interval(n, 10.0 * n as f64, 101.0 * n as f64, 0.05).unwrap();
            hi - lo
        };
        assert!(width(10_000) < width(1_000) && width(1_000) < width(100));
        assert_eq!(mean_interval(0, 0.0, 0.0, 0.05), None);
    }
}
