//! Value parsers for the command-line flags both binaries share in kind;
//! an error is the rule, which clap prints after the flag's name.

use std::time::Duration;

/// A duration above zero, written as humantime reads it (`250ms`, `5s`, `7d`).
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be above 0".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// A count of at least one.
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_must_be_above_zero() {
        assert_eq!(positive_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(positive_duration("0s"), Err("must be above 0".to_string()));
        assert!(positive_duration("soon").is_err());
    }

    #[test]
    fn counts_must_be_at_least_one() {
        assert_eq!(at_least_one("64"), Ok(64));
        assert_eq!(at_least_one("0"), Err("must be at least 1".to_string()));
        assert!(at_least_one("-1").is_err());
    }
}
