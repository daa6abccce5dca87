//! Prices and costs in exact integer arithmetic, so the agent and the
//! control plane count money identically and without float drift.
//!
//! A price is kept in millionths of the currency per million tokens
//! ([`Price`]); the cost of `t` tokens at price `p` is then `p × t`
//! millionths of a millionth of the currency (pico-units), an integer. Sums
//! are kept in pico-units and shown in whole micro-units or as decimals.

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
    fn currency_codes() {
        assert!(is_currency("USD") && is_currency("EUR"));
        assert!(!is_currency("usd") && !is_currency("US") && !is_currency("USDT"));
        assert_eq!(currency_of(&v1::Policy::default()), "USD");
    }
}
