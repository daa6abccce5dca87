//! Prices and costs in exact integer arithmetic, so the agent and the
//! control plane count money identically and without float drift.
//!
//! A price is kept in millionths of the currency per million tokens
//! ([`Price`]); the cost of `t` tokens at price `p` is then `p × t`
//! millionths of a millionth of the currency (pico-units), an integer. Sums
//! are kept in pico-units and shown in whole micro-units or as decimals.

use std::collections::HashMap;

use crate::v1;

/// Pico-units (10⁻¹²) of the currency in one unit.
pub const PICOS_PER_UNIT: u128 = 1_000_000_000_000;

/// Largest price accepted, per million tokens.
pub const MAX_PRICE: f64 = 1_000_000.0;

/// A price in millionths of the currency per million tokens.
pub type Price = u64;

/// A price as written in a policy (currency per million tokens), in
/// millionths; or the rule it breaks.
pub fn price_of(written: f64) -> Result<Price, String> {
    if !written.is_finite() {
        return Err("must be a finite number".into());
    }
    if written < 0.0 {
        return Err("must not be negative".into());
    }
    if written > MAX_PRICE {
        return Err(format!("must be at most {MAX_PRICE} per million tokens"));
    }
    let micros = written * 1e6;
    let whole = micros.round();
    // Written decimals below a millionth would be lost; refuse them rather
    // than round a price silently. (0.1 is 100000.00000000001 millionths as
    // a double: within the tolerance.)
    if (micros - whole).abs() > 1e-3 {
        return Err("must have at most 6 decimal places".into());
    }
    Ok(whole as Price)
}

/// What one backend (or one of its models) charges, each in millionths of
/// the currency per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prices {
    pub input: Price,
    pub output: Price,
    pub cached_input: Price,
    pub cache_write: Price,
}

impl Prices {
    /// The prices of a policy's `Prices` message, cache prices defaulting to
    /// the input price; or the first rule broken, with its field's name.
    pub fn of(p: &v1::Prices) -> Result<Prices, (&'static str, String)> {
        let required = |field: &'static str, v: Option<f64>| match v {
            None => Err((field, "required".to_string())),
            Some(v) => price_of(v).map_err(|rule| (field, rule)),
        };
        let input = required("input_per_million", p.input_per_million)?;
        let output = required("output_per_million", p.output_per_million)?;
        let optional = |field: &'static str, v: Option<f64>| match v {
            None => Ok(input),
            Some(v) => price_of(v).map_err(|rule| (field, rule)),
        };
        Ok(Prices {
            input,
            output,
            cached_input: optional("cached_input_per_million", p.cached_input_per_million)?,
            cache_write: optional("cache_write_per_million", p.cache_write_per_million)?,
        })
    }

    /// The cost of an answer's tokens, in pico-units. `input` counts the
    /// input tokens read neither from nor into a cache.
    pub fn cost(&self, tokens: &Tokens) -> u128 {
        u128::from(self.input) * u128::from(tokens.input)
            + u128::from(self.output) * u128::from(tokens.output)
            + u128::from(self.cached_input) * u128::from(tokens.cache_read)
            + u128::from(self.cache_write) * u128::from(tokens.cache_write)
    }
}

/// A backend's prices: its own, and those of particular models by the name
/// they are sent under.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pricing {
    pub default: Option<Prices>,
    pub models: HashMap<String, Prices>,
}

/// What an answer of a priced backend is charged at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    Known(Prices),
    /// The backend has prices, but none for this model: its answers are
    /// unpriced.
    Unknown,
}

impl Pricing {
    /// A backend's pricing, `None` when it names no prices at all. The
    /// policy is validated first; a price that breaks the rules (which
    /// validation refuses) is left out.
    pub fn of(b: &v1::Backend) -> Option<Pricing> {
        if b.prices.is_none() && b.model_prices.is_empty() {
            return None;
        }
        Some(Pricing {
            default: b.prices.as_ref().and_then(|p| Prices::of(p).ok()),
            models: b
                .model_prices
                .iter()
                .filter_map(|(m, p)| Some((m.clone(), Prices::of(p).ok()?)))
                .collect(),
        })
    }

    /// True when the price depends on the model sent.
    pub fn by_model(&self) -> bool {
        !self.models.is_empty()
    }

    /// The rate of an answer to a request sent with `model`.
    pub fn rate(&self, model: Option<&str>) -> Rate {
        match model
            .and_then(|m| self.models.get(m))
            .or(self.default.as_ref())
        {
            Some(p) => Rate::Known(*p),
            None => Rate::Unknown,
        }
    }
}

/// Money spent on one kind of answer: the exact sum in pico-units, and how
/// many answers were priced and how many could not be (no usage reported,
/// or no price for their model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Spend {
    pub picos: u128,
    pub priced: u64,
    pub unpriced: u64,
    /// The sum of each priced answer's cost squared (for its spread).
    pub squares: u128,
}

impl Spend {
    /// Adds one answer: its cost, or `None` when it is unpriced.
    pub fn charge(&mut self, cost: Option<u128>) {
        match cost {
            Some(c) => {
                self.picos += c;
                self.priced += 1;
                self.squares = self.squares.saturating_add(c.saturating_mul(c));
            }
            None => self.unpriced += 1,
        }
    }

    pub fn add(&mut self, other: &Spend) {
        self.picos += other.picos;
        self.priced += other.priced;
        self.unpriced += other.unpriced;
        self.squares = self.squares.saturating_add(other.squares);
    }

    pub fn since(&self, earlier: &Spend) -> Spend {
        Spend {
            picos: self.picos.saturating_sub(earlier.picos),
            priced: self.priced.saturating_sub(earlier.priced),
            unpriced: self.unpriced.saturating_sub(earlier.unpriced),
            squares: self.squares.saturating_sub(earlier.squares),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.picos == 0 && self.priced == 0 && self.unpriced == 0
    }

    /// The wire form. A sum past `u64::MAX` pico-units (18 million units of
    /// the currency) is sent as `u64::MAX`; the caller keeps the rest for
    /// its next report.
    pub fn to_wire(&self) -> v1::Spend {
        v1::Spend {
            picos: u64::try_from(self.picos).unwrap_or(u64::MAX),
            priced: self.priced,
            unpriced: self.unpriced,
            squares: self.squares as f64,
        }
    }

    /// From the wire (the sum of squares, a float there, rounded).
    pub fn from_wire(w: &v1::Spend) -> Spend {
        Spend {
            picos: u128::from(w.picos),
            priced: w.priced,
            unpriced: w.unpriced,
            squares: if w.squares.is_finite() && w.squares > 0.0 {
                w.squares as u128
            } else {
                0
            },
        }
    }
}

/// The cost of an answer with `usage` at `rate`: `None` (unpriced) when
/// the answer reported no usage or its model has no price.
pub fn cost_of(rate: Rate, tokens: Option<&Tokens>) -> Option<u128> {
    match (rate, tokens) {
        (Rate::Known(p), Some(t)) => Some(p.cost(t)),
        _ => None,
    }
}

/// An answer's tokens by how they are charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tokens {
    /// Input tokens neither read from nor written to a prompt cache.
    pub input: u64,
    pub output: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read: u64,
    /// Input tokens written to the prompt cache.
    pub cache_write: u64,
}

/// An amount in pico-units as a decimal of the currency, rounded to whole
/// micro-units ("0.000123").
pub fn decimal(picos: u128) -> String {
    let micros = (picos + 500_000) / 1_000_000;
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// An amount in pico-units as an exact decimal of the currency, without
/// trailing zeros ("0.0065", "0.0000007", "12").
pub fn exact(picos: u128) -> String {
    let units = picos / PICOS_PER_UNIT;
    let frac = picos % PICOS_PER_UNIT;
    if frac == 0 {
        return units.to_string();
    }
    let digits = format!("{frac:012}");
    format!("{units}.{}", digits.trim_end_matches('0'))
}

/// The pico-units of a decimal written by [`exact`] (at most 12 decimal
/// places); `None` for anything else.
pub fn parse_exact(text: &str) -> Option<u128> {
    let (units, frac) = match text.split_once('.') {
        Some((units, frac)) => (units, Some(frac)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(units) || frac.is_some_and(|f| !digits(f) || f.len() > 12) {
        return None;
    }
    let frac = frac.unwrap_or("");
    let whole: u128 = units.parse().ok()?;
    let frac: u128 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<12}").parse().ok()?
    };
    whole.checked_mul(PICOS_PER_UNIT)?.checked_add(frac)
}

/// Whether `code` looks like an ISO 4217 currency code (three capital
/// letters).
pub fn is_currency(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// The currency a policy's prices are in ("USD" when it names none).
pub fn currency_of(policy: &v1::Policy) -> &str {
    if policy.currency.is_empty() {
        "USD"
    } else {
        &policy.currency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_exact_millionths() {
        assert_eq!(price_of(2.5), Ok(2_500_000));
        assert_eq!(price_of(0.1), Ok(100_000));
        assert_eq!(price_of(0.42), Ok(420_000));
        assert_eq!(price_of(0.000001), Ok(1));
        assert_eq!(price_of(0.0), Ok(0));
        assert_eq!(price_of(1_000_000.0), Ok(1_000_000_000_000));
        assert!(
            price_of(0.0000001)
                .unwrap_err()
                .contains("6 decimal places")
        );
        assert!(price_of(-1.0).unwrap_err().contains("negative"));
        assert!(price_of(f64::NAN).unwrap_err().contains("finite"));
        assert!(price_of(f64::INFINITY).unwrap_err().contains("finite"));
        assert!(price_of(1e7).unwrap_err().contains("at most"));
    }

    /// GPT-4.1 at $2.50/$8.00 per million: 1,000 input and 500 output
    /// tokens cost $0.0065 exactly; a million such answers $6,500, with no
    /// drift however many are added.
    #[test]
    fn costs_add_up_exactly() {
        let p = Prices::of(&v1::Prices {
            input_per_million: Some(2.5),
            output_per_million: Some(8.0),
            cached_input_per_million: Some(1.25),
            cache_write_per_million: None,
        })
        .unwrap();
        assert_eq!(p.cache_write, p.input);
        let t = Tokens {
            input: 1000,
            output: 500,
            ..Default::default()
        };
        assert_eq!(decimal(p.cost(&t)), "0.006500");
        let total: u128 = (0..1_000_000).map(|_| p.cost(&t)).sum();
        assert_eq!(total, 6_500 * PICOS_PER_UNIT);
        assert_eq!(decimal(total), "6500.000000");
        let cached = Tokens {
            input: 200,
            output: 10,
            cache_read: 800,
            cache_write: 0,
        };
        // 200 × 2.5 + 10 × 8 + 800 × 1.25 millionths... per million tokens.
        assert_eq!(
            p.cost(&cached),
            200 * 2_500_000 + 10 * 8_000_000 + 800 * 1_250_000
        );
        // $0.10/$0.42: 7 input tokens cost 0.7 millionths, kept exactly.
        let cheap = Prices::of(&v1::Prices {
            input_per_million: Some(0.1),
            output_per_million: Some(0.42),
            ..Default::default()
        })
        .unwrap();
        let seven = Tokens {
            input: 7,
            ..Default::default()
        };
        assert_eq!(cheap.cost(&seven), 700_000);
        let ten_million: u128 = (0..10_000_000).map(|_| cheap.cost(&seven)).sum();
        assert_eq!(decimal(ten_million), "7.000000");
    }

    #[test]
    fn prices_name_the_field_they_break() {
        let missing = Prices::of(&v1::Prices {
            input_per_million: Some(1.0),
            ..Default::default()
        });
        assert_eq!(missing, Err(("output_per_million", "required".to_string())));
        let bad = Prices::of(&v1::Prices {
            input_per_million: Some(1.0),
            output_per_million: Some(2.0),
            cached_input_per_million: Some(-0.5),
            ..Default::default()
        });
        assert_eq!(bad.unwrap_err().0, "cached_input_per_million");
    }

    #[test]
    fn exact_decimals() {
        assert_eq!(exact(0), "0");
        assert_eq!(exact(6_500_000_000), "0.0065");
        assert_eq!(exact(700_000), "0.0000007");
        assert_eq!(exact(1), "0.000000000001");
        assert_eq!(exact(12 * PICOS_PER_UNIT), "12");
        assert_eq!(exact(12 * PICOS_PER_UNIT + 5), "12.000000000005");
        for picos in [
            0,
            1,
            700_000,
            6_500_000_000,
            12 * PICOS_PER_UNIT + 5,
            u128::from(u64::MAX),
        ] {
            assert_eq!(parse_exact(&exact(picos)), Some(picos));
        }
        for bad in ["", ".5", "1.", "-1", "1.0000000000001", "1e3", "x"] {
            assert_eq!(parse_exact(bad), None, "{bad}");
        }
    }

    /// A model's own price wins over the backend's; a model without one
    /// takes the backend's, or is unpriced when the backend has none.
    #[test]
    fn rates_by_model() {
        let prices = |i: f64, o: f64| v1::Prices {
            input_per_million: Some(i),
            output_per_million: Some(o),
            ..Default::default()
        };
        let b = v1::Backend {
            prices: Some(prices(1.0, 2.0)),
            model_prices: [("mini".to_string(), prices(0.1, 0.4))].into(),
            ..Default::default()
        };
        let p = Pricing::of(&b).unwrap();
        assert!(p.by_model());
        let Rate::Known(mini) = p.rate(Some("mini")) else {
            panic!("mini is priced")
        };
        assert_eq!((mini.input, mini.output), (100_000, 400_000));
        let Rate::Known(other) = p.rate(Some("big")) else {
            panic!("the backend's price applies")
        };
        assert_eq!(other.input, 1_000_000);
        assert_eq!(p.rate(None), Rate::Known(other));
        let only_models = v1::Backend {
            model_prices: [("mini".to_string(), prices(0.1, 0.4))].into(),
            ..Default::default()
        };
        let p = Pricing::of(&only_models).unwrap();
        assert_eq!(p.rate(Some("big")), Rate::Unknown);
        assert_eq!(p.rate(None), Rate::Unknown);
        assert_eq!(Pricing::of(&v1::Backend::default()), None);
    }

    #[test]
    fn spend_counts_unpriced_apart() {
        let t = Tokens {
            input: 10,
            output: 10,
            ..Default::default()
        };
        let mut s = Spend::default();
        let rate = Rate::Known(Prices {
            input: 1,
            output: 2,
            cached_input: 1,
            cache_write: 1,
        });
        s.charge(cost_of(rate, Some(&t)));
        s.charge(cost_of(rate, None));
        s.charge(cost_of(Rate::Unknown, Some(&t)));
        assert_eq!(
            s,
            Spend {
                picos: 30,
                priced: 1,
                unpriced: 2,
                squares: 900,
            }
        );
        let big = Spend {
            picos: u128::from(u64::MAX) + 7,
            ..s
        };
        assert_eq!(big.to_wire().picos, u64::MAX);
        assert_eq!(Spend::from_wire(&s.to_wire()), s);
    }

    #[test]
    fn currency_codes() {
        assert!(is_currency("USD") && is_currency("EUR"));
        assert!(!is_currency("usd") && !is_currency("US") && !is_currency("USDT"));
        assert_eq!(currency_of(&v1::Policy::default()), "USD");
    }
}
