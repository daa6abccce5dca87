//! The rules every [`Policy`] must satisfy, shared by the control plane (on
//! every write) and the agent (on loading a policy file), so both refuse the
//! same things with the same words.
//!
//! Every broken rule is reported, each as a [`Violation`] naming the field path
//! (`backends[1].base_url`, `selector.match_labels["team"]`) and the rule.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::SystemTime;

use pbjson_types::{Duration, Timestamp};

use crate::v1::{
    AnswerModel, Backend, CircuitBreaker, FailureAction, Fault, Gates, PassRule, Policy, Protocol,
    RetryOn, RetryPolicy, RollbackMode, RolloutSpec, Shadow, Timeouts, Traffic,
};

/// Longest policy, backend or label name.
pub const MAX_NAME_LEN: usize = 63;
/// Most backends in one policy.
pub const MAX_BACKENDS: usize = 16;
/// Most stages in one rollout.
pub const MAX_STAGES: usize = 20;
/// Most fault entries in one policy.
pub const MAX_FAULTS: usize = 16;
/// Most selector labels.
pub const MAX_LABELS: usize = 32;
/// Most entries in one backend's model map.
pub const MAX_MODEL_MAP: usize = 64;
/// Largest `default_max_tokens` of a backend.
pub const MAX_DEFAULT_MAX_TOKENS: u32 = 1_000_000;
/// Most extra headers on one backend.
pub const MAX_HEADERS: usize = 32;
/// Longest base URL.
pub const MAX_URL_LEN: usize = 2048;
/// Longest path prefix.
pub const MAX_PATH_PREFIX_LEN: usize = 256;
/// Longest header value, model name or label value.
pub const MAX_VALUE_LEN: usize = 1024;
/// Highest weight: all traffic, in basis points.
pub const MAX_WEIGHT: u32 = 10_000;
/// Most attempts per backend.
pub const MAX_ATTEMPTS: u32 = 10;
/// Longest duration accepted for any timeout or stage time.
pub const MAX_DURATION_SECS: i64 = 7 * 24 * 3600;

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Path of the field, e.g. `backends[1].base_url`.
    pub field: String,
    /// The rule it breaks, e.g. `must be an absolute http or https URL`.
    pub rule: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.rule)
    }
}

/// A policy that breaks one or more rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The policy's name as given (may itself be invalid or empty).
    pub policy: String,
    /// Every broken rule, in field order.
    pub violations: Vec<Violation>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.policy.is_empty() && self.policy.len() <= MAX_NAME_LEN {
            write!(f, "policy {:?}: ", self.policy)?;
        }
        for (i, v) in self.violations.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

/// Checks every rule of a policy. `now`, when given, is the time of the write:
/// fault expiry times must then lie after it (an agent loading a file passes
/// `None` and simply ignores expired faults).
///
/// Server-set fields (revision, times) are not checked.
pub fn validate_policy(policy: &Policy, now: Option<SystemTime>) -> Result<(), PolicyError> {
    let mut c = Checker::default();
    c.policy(policy, now);
    if c.violations.is_empty() {
        Ok(())
    } else {
        Err(PolicyError {
            policy: policy.name.clone(),
            violations: c.violations,
        })
    }
}

/// Longest part of a caller's value quoted back in an error message.
pub const MAX_QUOTED: usize = 64;

/// A model name: 1 to 256 characters, no spaces or control characters.
fn model_name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && !s.chars().any(|c| c.is_control() || c == ' ')
}

/// A value as quoted in an error message: at most [`MAX_QUOTED`]
/// characters, with "…" and the full length when it was cut, so a huge
/// value never makes a huge error (gRPC clients refuse large metadata).
pub fn clip(value: &str) -> std::borrow::Cow<'_, str> {
    match value.char_indices().nth(MAX_QUOTED) {
        None => std::borrow::Cow::Borrowed(value),
        Some((end, _)) => {
            std::borrow::Cow::Owned(format!("{}…({} bytes)", &value[..end], value.len()))
        }
    }
}

/// Checks a name against the DNS-label rule used for policies and backends.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("required".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("must be at most {MAX_NAME_LEN} characters"));
    }
    let bytes = name.as_bytes();
    let ok_chars = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    let first_ok = bytes[0].is_ascii_lowercase();
    let last_ok = bytes[bytes.len() - 1] != b'-';
    if ok_chars && first_ok && last_ok {
        Ok(())
    } else {
        Err(
            "must be lowercase letters, digits and '-', start with a letter and not end with '-'"
                .into(),
        )
    }
}

/// Checks one label (of an agent, or of a selector): keys are 1 to 63 of
/// letters, digits, '-', '_', '.', '/', starting and ending with a letter or
/// digit; values are empty or the same.
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    let label_ok = |s: &str| {
        let b = s.as_bytes();
        s.len() <= MAX_NAME_LEN
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'/'))
            && b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric)
    };
    if !label_ok(key) {
        Err(format!(
            "label key must be 1 to {MAX_NAME_LEN} of letters, digits, '-', '_', '.', '/', starting and ending with a letter or digit"
        ))
    } else if !value.is_empty() && !label_ok(value) {
        Err(format!(
            "label value must be empty or up to {MAX_NAME_LEN} of letters, digits, '-', '_', '.', '/', starting and ending with a letter or digit"
        ))
    } else {
        Ok(())
    }
}

/// Checks a bearer token (admin or agent) and returns it without
/// surrounding whitespace: not empty, visible ASCII without spaces, so it can
/// travel in an `authorization` header.
pub fn check_token(value: &str) -> Result<&str, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if !value.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err("must be visible ASCII characters without spaces".into());
    }
    Ok(value)
}

/// Checks an agent id: 1 to 128 of letters, digits and '-', '_', '.', ':',
/// '/', '@' (a pod name, a host name and port, ...).
pub fn check_agent_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("required, at most 128 characters".into());
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@".contains(&b))
    {
        return Err("letters, digits and '-', '_', '.', ':', '/', '@' only".into());
    }
    Ok(())
}

/// True when an agent with `labels` has every label of `required` with the
/// same value (an empty selector selects every agent).
pub fn labels_match(
    required: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    required
        .iter()
        .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
}

/// True when a value looks like a credential pasted where a reference or a
/// plain setting belongs: a known key prefix, an authorization scheme, or a
/// long mixed-case token.
pub fn looks_like_secret(value: &str) -> bool {
    let v = value.trim();
    let lower = v.to_ascii_lowercase();
    const PREFIXES: &[&str] = &[
        "sk-",
        "sk_",
        "rk_",
        "pk_live_",
        "bearer ",
        "basic ",
        "xai-",
        "gsk_",
        "ghp_",
        "gho_",
        "github_pat_",
        "glpat-",
        "hf_",
        "xoxb-",
        "xoxp-",
        "aiza",
        "akia",
        "asia",
        "ya29.",
    ];
    if PREFIXES.iter().any(|p| lower.starts_with(p)) && v.len() >= 12 {
        return true;
    }
    // A long opaque token: 32+ characters of a key alphabet mixing upper case,
    // lower case and digits (model names and URLs do not look like this).
    let token_chars = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'/' | b'='));
    token_chars
        && v.len() >= 32
        && v.bytes().any(|b| b.is_ascii_uppercase())
        && v.bytes().any(|b| b.is_ascii_lowercase())
        && v.bytes().any(|b| b.is_ascii_digit())
}

/// Checks a secret reference: empty, `env:NAME` or `file:/absolute/path`.
pub fn check_secret_ref(value: &str) -> Result<(), String> {
    const RULE: &str = "must be a secret reference, env:NAME or file:/absolute/path";
    if value.is_empty() {
        return Ok(());
    }
    if let Some(name) = value.strip_prefix("env:") {
        let valid = !name.is_empty()
            && name.len() <= 256
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        return if valid {
            Ok(())
        } else {
            Err("env: must name an environment variable (letters, digits, '_', not starting with a digit)".into())
        };
    }
    if let Some(path) = value.strip_prefix("file:") {
        let valid = path.starts_with('/')
            && path.len() <= 4096
            && !path.chars().any(char::is_control)
            && !path.split('/').any(|seg| seg == "..");
        return if valid {
            Ok(())
        } else {
            Err("file: must be an absolute path without '..'".into())
        };
    }
    if looks_like_secret(value) {
        Err(format!("{RULE}; it looks like a raw key, which is refused"))
    } else {
        Err(RULE.into())
    }
}

/// Header names a policy may not set as extra headers: credentials belong in
/// `credentials`, and hop-by-hop or framing headers are the proxy's own.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "cookie",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "traceparent",
    "tracestate",
];

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn is_header_value(s: &str) -> bool {
    s.len() <= MAX_VALUE_LEN && s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

#[derive(Default)]
struct Checker {
    violations: Vec<Violation>,
}

/// Whether an absent message or duration is a violation.
#[derive(Clone, Copy, PartialEq)]
enum Presence {
    Required,
    Optional,
}

impl Checker {
    fn fail(&mut self, field: impl Into<String>, rule: impl Into<String>) {
        self.violations.push(Violation {
            field: field.into(),
            rule: rule.into(),
        });
    }

    fn policy(&mut self, p: &Policy, now: Option<SystemTime>) {
        if let Err(rule) = check_name(&p.name) {
            self.fail("name", rule);
        }
        if let Some(sel) = &p.selector {
            self.labels("selector.match_labels", &sel.match_labels);
        }
        match &p.r#match {
            None => self.fail("match", "required"),
            Some(m) => {
                let prefix = &m.path_prefix;
                if prefix.is_empty() {
                    self.fail("match.path_prefix", "required");
                } else if !prefix.starts_with('/')
                    || prefix.len() > MAX_PATH_PREFIX_LEN
                    || prefix
                        .bytes()
                        .any(|b| !(0x21..0x7f).contains(&b) || b == b'?' || b == b'#')
                {
                    self.fail(
                        "match.path_prefix",
                        format!(
                            "must start with '/' and be at most {MAX_PATH_PREFIX_LEN} visible characters without '?' or '#'"
                        ),
                    );
                }
                if let Some(h) = &m.header {
                    if !is_token(&h.name) {
                        self.fail("match.header.name", "must be a valid HTTP header name");
                    }
                    if h.value.is_empty() || !is_header_value(&h.value) {
                        self.fail(
                            "match.header.value",
                            format!("must be 1 to {MAX_VALUE_LEN} visible ASCII characters"),
                        );
                    }
                }
            }
        }

        let names = self.backends(&p.backends);
        match &p.traffic {
            None => self.fail("traffic", "required"),
            Some(t) => self.traffic(t, &names),
        }
        self.spend_caps(p);
        if let Some(r) = &p.rollout {
            self.rollout(r, p.shadow.as_ref());
            if r.gates.as_ref().is_some_and(|g| g.max_cost_ratio.is_some())
                && let Some(t) = &p.traffic
            {
                for (role, name) in [("baseline", &t.baseline), ("candidate", &t.candidate)] {
                    let priced = p.backends.iter().any(|b| {
                        &b.name == name && (b.prices.is_some() || !b.model_prices.is_empty())
                    });
                    if !name.is_empty() && !priced {
                        self.fail(
                            "rollout.gates.max_cost_ratio",
                            format!("needs prices on the {role} backend {name:?} (backends[].prices or model_prices)"),
                        );
                    }
                }
            }
        }
        if let Some(r) = &p.retry {
            self.retry(r);
        }
        if let Some(b) = &p.circuit_breaker {
            self.breaker(b);
        }
        self.fallback(&p.fallback, &names);
        if let Some(s) = &p.shadow {
            self.shadow(s, &names);
        }
        self.faults(&p.faults, &names, now);
        if !p.currency.is_empty() && !crate::cost::is_currency(&p.currency) {
            self.fail(
                "currency",
                "must be an ISO 4217 code of three capital letters, for example \"USD\"",
            );
        }
    }

    /// A backend's prices (`prices`, or one entry of `model_prices`).
    fn prices(&mut self, at: &str, p: &crate::v1::Prices) {
        if let Err((field, rule)) = crate::cost::Prices::of(p) {
            self.fail(format!("{at}.{field}"), rule);
        }
    }

    fn labels(&mut self, path: &str, labels: &BTreeMap<String, String>) {
        if labels.len() > MAX_LABELS {
            self.fail(path, format!("at most {MAX_LABELS} labels"));
        }
        for (k, v) in labels {
            if let Err(rule) = check_label(k, v) {
                self.fail(format!("{path}[{:?}]", clip(k)), rule);
            }
        }
    }

    /// Checks the backends and returns the set of valid-looking names.
    fn backends(&mut self, backends: &[Backend]) -> BTreeSet<String> {
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        if backends.is_empty() {
            self.fail("backends", "at least one backend is required");
        }
        if backends.len() > MAX_BACKENDS {
            self.fail("backends", format!("at most {MAX_BACKENDS} backends"));
        }
        for (i, b) in backends.iter().enumerate() {
            let at = format!("backends[{i}]");
            match check_name(&b.name) {
                Err(rule) => self.fail(format!("{at}.name"), rule),
                Ok(()) => {
                    if let Some(first) = names.get(b.name.as_str()) {
                        self.fail(
                            format!("{at}.name"),
                            format!("duplicate of backends[{first}].name {:?}", clip(&b.name)),
                        );
                    } else {
                        names.insert(&b.name, i);
                    }
                }
            }
            self.backend(&at, b);
        }
        names.keys().map(|s| s.to_string()).collect()
    }

    fn backend(&mut self, at: &str, b: &Backend) {
        if let Err(rule) = check_base_url(&b.base_url) {
            self.fail(format!("{at}.base_url"), rule);
        }
        if Protocol::try_from(b.protocol).is_err() {
            self.fail(
                format!("{at}.protocol"),
                "must be PROTOCOL_OPENAI or PROTOCOL_ANTHROPIC",
            );
        }
        if let Err(rule) = check_secret_ref(&b.credentials) {
            self.fail(format!("{at}.credentials"), rule);
        }
        if b.model_map.len() > MAX_MODEL_MAP {
            self.fail(
                format!("{at}.model_map"),
                format!("at most {MAX_MODEL_MAP} entries"),
            );
        }
        for (from, to) in &b.model_map {
            let path = format!("{at}.model_map[{:?}]", clip(from));
            let model_ok = model_name_ok;
            if !model_ok(from) {
                self.fail(
                    &path,
                    "model name must be 1 to 256 characters without spaces",
                );
            } else if !model_ok(to) {
                self.fail(
                    &path,
                    "mapped model name must be 1 to 256 characters without spaces",
                );
            } else if looks_like_secret(to) || looks_like_secret(from) {
                self.fail(&path, "looks like a raw key, which is refused");
            }
        }
        if b.headers.len() > MAX_HEADERS {
            self.fail(
                format!("{at}.headers"),
                format!("at most {MAX_HEADERS} headers"),
            );
        }
        for (name, value) in &b.headers {
            let path = format!("{at}.headers[{:?}]", clip(name));
            let lower = name.to_ascii_lowercase();
            if !is_token(name) {
                self.fail(&path, "must be a valid HTTP header name");
            } else if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-shepherd-")
            {
                self.fail(
                    &path,
                    "this header is set by the agent; credentials go in credentials as a secret reference",
                );
            } else if !is_header_value(value) {
                self.fail(
                    &path,
                    format!("value must be at most {MAX_VALUE_LEN} visible ASCII characters"),
                );
            } else if looks_like_secret(value) {
                self.fail(
                    &path,
                    "value looks like a raw key, which is refused; use credentials with a secret reference",
                );
            }
        }
        if let Some(t) = &b.timeouts {
            self.timeouts(&format!("{at}.timeouts"), t);
        }
        if let Some(p) = &b.prices {
            self.prices(&format!("{at}.prices"), p);
        }
        if b.model_prices.len() > MAX_MODEL_MAP {
            self.fail(
                format!("{at}.model_prices"),
                format!("at most {MAX_MODEL_MAP} entries"),
            );
        }
        for (model, p) in &b.model_prices {
            let path = format!("{at}.model_prices[{:?}]", clip(model));
            if !model_name_ok(model) {
                self.fail(
                    &path,
                    "model name must be 1 to 256 characters without spaces",
                );
            } else {
                self.prices(&path, p);
            }
        }
        if AnswerModel::try_from(b.answer_model).is_err() {
            self.fail(
                format!("{at}.answer_model"),
                "must be ANSWER_MODEL_SERVED or ANSWER_MODEL_REQUESTED",
            );
        }
        let anthropic = b.protocol == Protocol::Anthropic as i32;
        if !b.anthropic_version.is_empty() {
            if !anthropic {
                self.fail(
                    format!("{at}.anthropic_version"),
                    "only for a PROTOCOL_ANTHROPIC backend",
                );
            } else if b.anthropic_version.len() > 64
                || !b
                    .anthropic_version
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                self.fail(
                    format!("{at}.anthropic_version"),
                    "must be 1 to 64 letters, digits, '-', '_' or '.' (for example \"2023-06-01\")",
                );
            }
        }
        if b.headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("anthropic-version"))
        {
            self.fail(
                format!("{at}.headers[\"anthropic-version\"]"),
                "set the version in anthropic_version",
            );
        }
        if b.default_max_tokens != 0 {
            if !anthropic {
                self.fail(
                    format!("{at}.default_max_tokens"),
                    "only for a PROTOCOL_ANTHROPIC backend",
                );
            } else if b.default_max_tokens > MAX_DEFAULT_MAX_TOKENS {
                self.fail(
                    format!("{at}.default_max_tokens"),
                    format!("must be at most {MAX_DEFAULT_MAX_TOKENS}"),
                );
            }
        }
    }

    fn timeouts(&mut self, at: &str, t: &Timeouts) {
        self.duration(
            &format!("{at}.connect"),
            t.connect.as_ref(),
            Presence::Optional,
        );
        let per_try = self.duration(
            &format!("{at}.per_try"),
            t.per_try.as_ref(),
            Presence::Optional,
        );
        let overall = self.duration(
            &format!("{at}.overall"),
            t.overall.as_ref(),
            Presence::Optional,
        );
        self.duration(
            &format!("{at}.stream_idle"),
            t.stream_idle.as_ref(),
            Presence::Optional,
        );
        self.not_shorter(&format!("{at}.overall"), overall, per_try, "per_try");
    }

    fn traffic(&mut self, t: &Traffic, names: &BTreeSet<String>) {
        if t.baseline.is_empty() {
            self.fail("traffic.baseline", "required");
        } else if !names.contains(&t.baseline) {
            self.fail(
                "traffic.baseline",
                format!("no backend is named {:?}", clip(&t.baseline)),
            );
        }
        if !t.candidate.is_empty() {
            if !names.contains(&t.candidate) {
                self.fail(
                    "traffic.candidate",
                    format!("no backend is named {:?}", clip(&t.candidate)),
                );
            } else if t.candidate == t.baseline {
                self.fail("traffic.candidate", "must differ from traffic.baseline");
            }
        }
        if t.candidate_weight > MAX_WEIGHT {
            self.fail(
                "traffic.candidate_weight",
                format!("must be 0 to {MAX_WEIGHT} basis points"),
            );
        } else if t.candidate_weight > 0 && t.candidate.is_empty() {
            self.fail(
                "traffic.candidate_weight",
                "must be 0 when traffic.candidate is empty",
            );
        }
        if !t.sticky_header.is_empty() && !is_token(&t.sticky_header) {
            self.fail("traffic.sticky_header", "must be a valid HTTP header name");
        }
    }

    fn rollout(&mut self, r: &RolloutSpec, shadow: Option<&Shadow>) {
        if r.stages.is_empty() {
            self.fail("rollout.stages", "at least one stage is required");
        }
        if r.stages.len() > MAX_STAGES {
            self.fail("rollout.stages", format!("at most {MAX_STAGES} stages"));
        }
        let mut previous: Option<u32> = None;
        for (i, s) in r.stages.iter().enumerate() {
            let at = format!("rollout.stages[{i}]");
            if s.weight > MAX_WEIGHT {
                self.fail(
                    format!("{at}.weight"),
                    format!("must be 0 to {MAX_WEIGHT} basis points"),
                );
            } else if previous.is_some_and(|p| s.weight <= p) {
                self.fail(
                    format!("{at}.weight"),
                    "stage weights must strictly increase",
                );
            }
            previous = Some(s.weight);
            if s.weight == 0 && shadow.is_none_or(|sh| sh.percent <= 0.0) {
                self.fail(
                    format!("{at}.weight"),
                    "a shadow-only stage (weight 0) needs shadow with a percent above 0",
                );
            }
            let bake = self.duration(
                &format!("{at}.min_bake_time"),
                s.min_bake_time.as_ref(),
                Presence::Required,
            );
            let max = self.duration(
                &format!("{at}.max_stage_time"),
                s.max_stage_time.as_ref(),
                Presence::Required,
            );
            self.not_shorter(&format!("{at}.max_stage_time"), max, bake, "min_bake_time");
            if s.min_requests > 1_000_000_000 {
                self.fail(format!("{at}.min_requests"), "must be at most 1000000000");
            }
        }
        if let Some(last) = r.stages.last()
            && last.weight != MAX_WEIGHT
        {
            self.fail(
                format!("rollout.stages[{}].weight", r.stages.len() - 1),
                format!("the last stage must be {MAX_WEIGHT} (all traffic)"),
            );
        }
        if let Some(g) = &r.gates {
            self.gates(g);
        }
        if FailureAction::try_from(r.on_failure).is_err() {
            self.fail(
                "rollout.on_failure",
                "must be FAILURE_ACTION_ROLLBACK or FAILURE_ACTION_PAUSE",
            );
        }
        if RollbackMode::try_from(r.rollback_mode).is_err() {
            self.fail(
                "rollout.rollback_mode",
                "must be ROLLBACK_MODE_IMMEDIATE or ROLLBACK_MODE_GRADUAL",
            );
        }
        self.duration(
            "rollout.rollback_step_time",
            r.rollback_step_time.as_ref(),
            Presence::Optional,
        );
        self.opt_number(
            "rollout.ack_quorum_percent",
            r.ack_quorum_percent,
            |q| q > 0.0 && q <= 100.0,
            "must be above 0 and at most 100",
        );
        self.duration(
            "rollout.ack_timeout",
            r.ack_timeout.as_ref(),
            Presence::Optional,
        );
        if PassRule::try_from(r.pass_rule).is_err() {
            self.fail(
                "rollout.pass_rule",
                "must be PASS_RULE_NO_REGRESSION or PASS_RULE_PROVEN_NOT_WORSE",
            );
        }
    }

    /// The hourly spend caps: positive amounts, on backends with prices.
    fn spend_caps(&mut self, p: &crate::v1::Policy) {
        let priced = |name: &str| {
            p.backends
                .iter()
                .any(|b| b.name == name && (b.prices.is_some() || !b.model_prices.is_empty()))
        };
        let traffic = p.traffic.clone().unwrap_or_default();
        let caps = [
            (
                "traffic.max_candidate_spend_per_hour",
                traffic.max_candidate_spend_per_hour,
                traffic.candidate.clone(),
                "the candidate",
            ),
            (
                "shadow.max_spend_per_hour",
                p.shadow.as_ref().and_then(|s| s.max_spend_per_hour),
                p.shadow
                    .as_ref()
                    .map(|s| s.backend.clone())
                    .filter(|b| !b.is_empty())
                    .unwrap_or(traffic.candidate),
                "the shadow",
            ),
        ];
        for (path, cap, backend, role) in caps {
            let Some(cap) = cap else { continue };
            if !(cap.is_finite() && cap > 0.0 && cap <= 1e12) {
                self.fail(path, "must be above 0 and at most 1000000000000");
            } else if !backend.is_empty() && !priced(&backend) {
                self.fail(
                    path,
                    format!("needs prices on {role} backend {backend:?} (backends[].prices or model_prices)"),
                );
            }
        }
    }

    fn gates(&mut self, g: &Gates) {
        self.opt_percent(
            "rollout.gates.max_error_rate_percent",
            g.max_error_rate_percent,
        );
        self.opt_number(
            "rollout.gates.significance",
            g.significance,
            |a| a > 0.0 && a < 0.5,
            "must be between 0 and 0.5, exclusive (for example 0.01)",
        );
        self.opt_percent(
            "rollout.gates.min_error_rate_effect_percent",
            g.min_error_rate_effect_percent,
        );
        if g.min_error_rate_effect_percent.is_some() && g.significance.is_none() {
            self.fail(
                "rollout.gates.min_error_rate_effect_percent",
                "needs rollout.gates.significance: the effect size belongs to the significance test",
            );
        }
        self.opt_percent(
            "rollout.gates.max_rate_limited_percent",
            g.max_rate_limited_percent,
        );
        self.duration(
            "rollout.gates.max_latency_p95",
            g.max_latency_p95.as_ref(),
            Presence::Optional,
        );
        self.duration(
            "rollout.gates.max_latency_p99",
            g.max_latency_p99.as_ref(),
            Presence::Optional,
        );
        self.ratio(
            "rollout.gates.max_latency_p95_ratio",
            g.max_latency_p95_ratio,
        );
        self.ratio(
            "rollout.gates.max_latency_p99_ratio",
            g.max_latency_p99_ratio,
        );
        self.duration(
            "rollout.gates.max_ttft_p95",
            g.max_ttft_p95.as_ref(),
            Presence::Optional,
        );
        self.ratio("rollout.gates.max_ttft_p95_ratio", g.max_ttft_p95_ratio);
        self.opt_percent(
            "rollout.gates.max_shadow_divergence_percent",
            g.max_shadow_divergence_percent,
        );
        self.opt_percent(
            "rollout.gates.max_shadow_status_mismatch_percent",
            g.max_shadow_status_mismatch_percent,
        );
        self.opt_percent(
            "rollout.gates.max_shadow_schema_error_percent",
            g.max_shadow_schema_error_percent,
        );
        self.opt_number(
            "rollout.gates.min_shadow_similarity",
            g.min_shadow_similarity,
            |s| (0.0..=1.0).contains(&s),
            "must be from 0 to 1",
        );
        self.opt_percent("rollout.gates.max_rejected_percent", g.max_rejected_percent);
        if g.min_rejected_answers
            .is_some_and(|n| n == 0 || n > 1_000_000_000)
        {
            self.fail(
                "rollout.gates.min_rejected_answers",
                "must be 1 to 1000000000",
            );
        }
        self.opt_percent(
            "rollout.gates.max_client_error_excess_percent",
            g.max_client_error_excess_percent,
        );
        self.opt_number(
            "rollout.gates.max_cost_ratio",
            g.max_cost_ratio,
            |r| r > 0.0 && r <= 1000.0,
            "must be above 0 and at most 1000",
        );
        self.opt_number(
            "rollout.gates.max_stage_spend",
            g.max_stage_spend,
            |s| s > 0.0 && s <= 1e12,
            "must be above 0 and at most 1000000000000",
        );
    }

    fn retry(&mut self, r: &RetryPolicy) {
        if r.max_attempts > MAX_ATTEMPTS {
            self.fail(
                "retry.max_attempts",
                format!("must be 1 to {MAX_ATTEMPTS} (0 for the default)"),
            );
        }
        let base = self.duration(
            "retry.backoff_base",
            r.backoff_base.as_ref(),
            Presence::Optional,
        );
        let max = self.duration(
            "retry.backoff_max",
            r.backoff_max.as_ref(),
            Presence::Optional,
        );
        self.not_shorter("retry.backoff_max", max, base, "backoff_base");
        self.duration(
            "retry.retry_after_max",
            r.retry_after_max.as_ref(),
            Presence::Optional,
        );
        self.opt_percent("retry.budget_percent", r.budget_percent);
        if r.budget_min_per_second.is_some_and(|n| n > 100_000) {
            self.fail("retry.budget_min_per_second", "must be at most 100000");
        }
        let mut seen = BTreeSet::new();
        for (i, class) in r.retry_on.iter().enumerate() {
            match RetryOn::try_from(*class) {
                Ok(RetryOn::Unspecified) | Err(_) => self.fail(
                    format!("retry.retry_on[{i}]"),
                    "must be RETRY_ON_CONNECT_ERROR, RETRY_ON_TIMEOUT, RETRY_ON_RATE_LIMITED or RETRY_ON_SERVER_ERROR",
                ),
                Ok(_) => {
                    if !seen.insert(*class) {
                        self.fail(format!("retry.retry_on[{i}]"), "listed twice");
                    }
                }
            }
        }
    }

    fn breaker(&mut self, b: &CircuitBreaker) {
        if b.consecutive_failures == 0 && b.failure_rate_percent.is_none() {
            self.fail(
                "circuit_breaker",
                "set consecutive_failures or failure_rate_percent (or leave the breaker out)",
            );
        }
        if b.consecutive_failures > 10_000 {
            self.fail(
                "circuit_breaker.consecutive_failures",
                "must be at most 10000",
            );
        }
        self.opt_number(
            "circuit_breaker.failure_rate_percent",
            b.failure_rate_percent,
            |p| p > 0.0 && p <= 100.0,
            "must be above 0 and at most 100",
        );
        self.duration(
            "circuit_breaker.failure_rate_window",
            b.failure_rate_window.as_ref(),
            Presence::Optional,
        );
        if b.min_requests > 1_000_000 {
            self.fail("circuit_breaker.min_requests", "must be at most 1000000");
        }
        let open = self.duration(
            "circuit_breaker.open_time",
            b.open_time.as_ref(),
            Presence::Optional,
        );
        self.opt_number(
            "circuit_breaker.open_time_multiplier",
            b.open_time_multiplier,
            |m| (1.0..=100.0).contains(&m),
            "must be from 1 to 100",
        );
        let max = self.duration(
            "circuit_breaker.max_open_time",
            b.max_open_time.as_ref(),
            Presence::Optional,
        );
        self.not_shorter("circuit_breaker.max_open_time", max, open, "open_time");
        if b.half_open_probes > 1_000 {
            self.fail("circuit_breaker.half_open_probes", "must be at most 1000");
        }
        self.duration(
            "circuit_breaker.quota_open_time",
            b.quota_open_time.as_ref(),
            Presence::Optional,
        );
    }

    fn fallback(&mut self, fallback: &[String], names: &BTreeSet<String>) {
        let mut seen = BTreeSet::new();
        for (i, name) in fallback.iter().enumerate() {
            if !names.contains(name) {
                self.fail(
                    format!("fallback[{i}]"),
                    format!("no backend is named {:?}", clip(name)),
                );
            } else if !seen.insert(name) {
                self.fail(
                    format!("fallback[{i}]"),
                    format!("{:?} is listed twice", clip(name)),
                );
            }
        }
    }

    fn shadow(&mut self, s: &Shadow, names: &BTreeSet<String>) {
        // An empty backend follows the candidate: with no candidate the
        // shadow rests (a policy whose rollout made its candidate the
        // baseline keeps its shadow settings for the next migration).
        if !s.backend.is_empty() && !names.contains(&s.backend) {
            self.fail(
                "shadow.backend",
                format!("no backend is named {:?}", clip(&s.backend)),
            );
        }
        self.percent("shadow.percent", s.percent);
        if s.max_concurrency > 10_000 {
            self.fail(
                "shadow.max_concurrency",
                "must be 1 to 10000 (0 for the default)",
            );
        }
        self.opt_number(
            "shadow.max_requests_per_second",
            s.max_requests_per_second,
            |r| r > 0.0 && r <= 100_000.0,
            "must be above 0 and at most 100000",
        );
        if s.max_tokens_per_minute == Some(0) {
            self.fail(
                "shadow.max_tokens_per_minute",
                "must be positive (absent for no cap)",
            );
        }
    }

    fn faults(&mut self, faults: &[Fault], names: &BTreeSet<String>, now: Option<SystemTime>) {
        if faults.len() > MAX_FAULTS {
            self.fail("faults", format!("at most {MAX_FAULTS} fault entries"));
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, f) in faults.iter().enumerate() {
            let at = format!("faults[{i}]");
            if f.backend.is_empty() {
                self.fail(format!("{at}.backend"), "required");
            } else if !names.contains(&f.backend) {
                self.fail(
                    format!("{at}.backend"),
                    format!("no backend is named {:?}", clip(&f.backend)),
                );
            } else if let Some(first) = seen.get(f.backend.as_str()) {
                self.fail(
                    format!("{at}.backend"),
                    format!(
                        "faults[{first}] already covers {:?}; use one entry per backend",
                        clip(&f.backend)
                    ),
                );
            } else {
                seen.insert(&f.backend, i);
            }
            if f.abort.is_none() && f.delay.is_none() && f.stream_cut.is_none() {
                self.fail(&at, "set at least one of abort, delay, stream_cut");
            }
            if let Some(a) = &f.abort {
                self.fault_percent(&format!("{at}.abort.percent"), a.percent);
                if !(400..=599).contains(&a.status) {
                    self.fail(
                        format!("{at}.abort.status"),
                        "must be an HTTP error status, 400 to 599",
                    );
                }
                self.duration(
                    &format!("{at}.abort.retry_after"),
                    a.retry_after.as_ref(),
                    Presence::Optional,
                );
            }
            if let Some(d) = &f.delay {
                self.fault_percent(&format!("{at}.delay.percent"), d.percent);
                self.duration(
                    &format!("{at}.delay.duration"),
                    d.duration.as_ref(),
                    Presence::Required,
                );
            }
            if let Some(c) = &f.stream_cut {
                self.fault_percent(&format!("{at}.stream_cut.percent"), c.percent);
                if c.after_chunks > 1_000_000 {
                    self.fail(
                        format!("{at}.stream_cut.after_chunks"),
                        "must be at most 1000000",
                    );
                }
            }
            match &f.expire_time {
                None => self.fail(
                    format!("{at}.expire_time"),
                    "required: every fault must expire",
                ),
                Some(t) => match timestamp_to_system_time(t) {
                    None => self.fail(
                        format!("{at}.expire_time"),
                        "must be a valid timestamp from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z",
                    ),
                    Some(at_time) => {
                        if now.is_some_and(|now| at_time <= now) {
                            self.fail(format!("{at}.expire_time"), "must be in the future");
                        }
                    }
                },
            }
        }
    }

    /// Checks a duration; returns it when it is present and valid, so that
    /// comparisons between two durations only run on valid operands.
    fn duration<'d>(
        &mut self,
        path: &str,
        d: Option<&'d Duration>,
        presence: Presence,
    ) -> Option<&'d Duration> {
        match d {
            None if presence == Presence::Required => {
                self.fail(path, "required");
                None
            }
            None => None,
            Some(d) => {
                let valid = d.nanos.abs() < 1_000_000_000
                    && !(d.seconds > 0 && d.nanos < 0)
                    && !(d.seconds < 0 && d.nanos > 0);
                if !valid {
                    self.fail(path, "must be a valid duration");
                } else if d.seconds < 0 || (d.seconds == 0 && d.nanos <= 0) {
                    self.fail(path, "must be positive");
                } else if d.seconds > MAX_DURATION_SECS
                    || (d.seconds == MAX_DURATION_SECS && d.nanos > 0)
                {
                    self.fail(
                        path,
                        format!("must be at most {MAX_DURATION_SECS}s (7 days)"),
                    );
                } else {
                    return Some(d);
                }
                None
            }
        }
    }

    /// `longer` must not be shorter than `shorter` (both already valid).
    fn not_shorter(
        &mut self,
        path: &str,
        longer: Option<&Duration>,
        shorter: Option<&Duration>,
        shorter_name: &str,
    ) {
        if let (Some(longer), Some(shorter)) = (longer, shorter)
            && nanos(longer) < nanos(shorter)
        {
            self.fail(path, format!("must not be shorter than {shorter_name}"));
        }
    }

    /// An optional number, when set, must satisfy `ok`.
    fn opt_number(&mut self, path: &str, value: Option<f64>, ok: impl Fn(f64) -> bool, rule: &str) {
        if let Some(v) = value
            && !(v.is_finite() && ok(v))
        {
            self.fail(path, rule);
        }
    }

    fn percent(&mut self, path: &str, p: f64) {
        if !(p.is_finite() && (0.0..=100.0).contains(&p)) {
            self.fail(path, "must be a percentage from 0 to 100");
        }
    }

    fn fault_percent(&mut self, path: &str, p: f64) {
        if !(p.is_finite() && p > 0.0 && p <= 100.0) {
            self.fail(path, "must be a percentage above 0 and at most 100");
        }
    }

    fn opt_percent(&mut self, path: &str, p: Option<f64>) {
        self.opt_number(
            path,
            p,
            |p| (0.0..=100.0).contains(&p),
            "must be a percentage from 0 to 100",
        );
    }

    fn ratio(&mut self, path: &str, r: Option<f64>) {
        self.opt_number(
            path,
            r,
            |r| (1.0..=1000.0).contains(&r),
            "must be a ratio from 1 to 1000",
        );
    }
}

/// Checks a backend base URL: absolute http or https, with a host, without
/// credentials, fragment or key-like query parameters.
pub fn check_base_url(raw: &str) -> Result<(), String> {
    const RULE: &str = "must be an absolute http or https URL";
    if raw.is_empty() {
        return Err("required".into());
    }
    if raw.len() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} characters"));
    }
    if raw.contains('#') {
        return Err(format!("{RULE} without a fragment"));
    }
    let uri: http::Uri = raw.parse().map_err(|_| RULE.to_string())?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(RULE.into()),
    }
    let Some(authority) = uri.authority() else {
        return Err(RULE.into());
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "{RULE} without credentials in it; use credentials with a secret reference"
        ));
    }
    if authority.host().is_empty() {
        return Err(format!("{RULE} with a host"));
    }
    check_port(authority.as_str())?;
    if let Some(query) = uri.query() {
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = name.to_ascii_lowercase();
            if name.contains("key")
                || name.contains("token")
                || name.contains("secret")
                || looks_like_secret(value)
            {
                return Err(format!(
                    "must not carry credentials in its query ({:?}); use credentials with a secret reference",
                    clip(&name)
                ));
            }
        }
    }
    Ok(())
}

/// Earliest and latest seconds of a protobuf Timestamp
/// (0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z): what its JSON form can
/// write.
pub const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// The port of an authority (`host:port`, `[v6]:port`), when it has one,
/// must be a number from 1 to 65535: the agent would otherwise send the key
/// to the scheme's default port.
fn check_port(authority: &str) -> Result<(), String> {
    let after_host = match authority.rfind(']') {
        Some(i) => &authority[i + 1..],
        None => authority,
    };
    let Some((_, port)) = after_host.rsplit_once(':') else {
        return Ok(());
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err(format!(
            "the port {:?} must be a number from 1 to 65535",
            clip(port)
        )),
    }
}

/// Converts a protobuf timestamp to `SystemTime`; `None` outside the range a
/// Timestamp may hold.
pub fn timestamp_to_system_time(t: &Timestamp) -> Option<SystemTime> {
    if !(0..1_000_000_000).contains(&t.nanos) || !TIMESTAMP_SECONDS.contains(&t.seconds) {
        return None;
    }
    let base = if t.seconds >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(t.seconds as u64))?
    } else {
        SystemTime::UNIX_EPOCH
            .checked_sub(std::time::Duration::from_secs(t.seconds.unsigned_abs()))?
    };
    base.checked_add(std::time::Duration::from_nanos(t.nanos as u64))
}

/// A duration in nanoseconds, for comparisons (saturating).
fn nanos(d: &Duration) -> i128 {
    i128::from(d.seconds) * 1_000_000_000 + i128::from(d.nanos)
}

#[cfg(test)]
mod tests;
