//! Policies as the agent runs them: plain Rust types converted from the wire
//! `shepherd.v1.Policy` (after the shared validation rules), with every
//! default filled in. Prost types stop here.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue};
use shepherd_proto::cost::Pricing;
use shepherd_proto::v1;
use shepherd_proto::validate::{timestamp_to_system_time, validate_policy};

use crate::api::Dialect;
use crate::breaker::BreakerSettings;
use crate::fault::{Abort, Delay, FaultSettings, StreamCut};
use crate::retry::{RetryClasses, RetrySettings};

/// A policy ready to run.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: Arc<str>,
    /// Labels an agent must carry for this policy to apply to it.
    pub selector: BTreeMap<String, String>,
    pub route: Route,
    pub backends: Vec<Backend>,
    /// Index into `backends`.
    pub baseline: usize,
    /// Index into `backends`.
    pub candidate: Option<usize>,
    /// Share of requests for the candidate, in basis points.
    pub candidate_weight: u32,
    /// Most the candidate may cost per clock hour at this agent, in units
    /// of the currency.
    pub candidate_spend_per_hour: Option<f64>,
    pub sticky_header: Option<HeaderName>,
    pub retry: RetrySettings,
    pub breaker: Option<BreakerSettings>,
    /// Indexes into `backends`, in the order they are tried.
    pub fallback: Vec<usize>,
    /// Faults per backend (same index as `backends`).
    pub faults: Vec<Option<FaultSettings>>,
    /// Mirrored traffic, if on.
    pub shadow: Option<ShadowSettings>,
    /// The wire form this was made from, kept for reports and the disk copy.
    pub source: Arc<v1::Policy>,
    /// The rollout stage that set the weight ("<rollout>/<stage>/<stage
    /// version>"), when a rollout is on (traces name it).
    pub rollout_stage: Option<Arc<str>>,
}

/// Mirroring of requests to a shadow backend.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowSettings {
    /// Index into `backends`.
    pub backend: usize,
    /// Share of requests mirrored, in basis points.
    pub basis_points: u32,
    pub max_concurrency: usize,
    pub max_requests_per_second: Option<f64>,
    pub max_tokens_per_minute: Option<u64>,
    pub keep_prompts: bool,
    /// Most the shadow's answers may cost per clock hour at this agent.
    pub max_spend_per_hour: Option<f64>,
}

/// Which requests a policy handles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub path_prefix: String,
    pub header: Option<(HeaderName, HeaderValue)>,
}

/// Where a backend's key comes from, resolved on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

/// Time limits for one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// Until the response head of one attempt.
    pub per_try: Duration,
    /// Until the response head, all attempts and backoff included.
    pub overall: Duration,
    /// Longest gap between two chunks of a response body.
    pub stream_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            per_try: Duration::from_secs(60),
            overall: Duration::from_secs(120),
            stream_idle: Duration::from_secs(30),
        }
    }
}

/// Scheme, authority and path prefix of a backend; request paths are appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path without a trailing '/', possibly empty.
    pub path: String,
    /// Query string to add to every request, if the base URL has one.
    pub query: Option<String>,
}

/// One upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub name: Arc<str>,
    pub base: BaseUrl,
    /// The API family the backend speaks.
    pub protocol: Dialect,
    pub credentials: Option<SecretRef>,
    /// The app's model name to this backend's.
    pub model_map: HashMap<String, String>,
    /// The model for names not in `model_map` (the "*" entry).
    pub model_default: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeouts: Timeouts,
    /// Answers name the model the app asked for (not the one that served
    /// them) when the model map rewrote it.
    pub answer_requested_model: bool,
    /// The `anthropic-version` sent to this backend, when set.
    pub anthropic_version: Option<HeaderValue>,
    /// `max_tokens` of translated requests that name none (Anthropic).
    pub default_max_tokens: Option<u64>,
    /// Drop (and count) fields with no counterpart in translated requests
    /// instead of refusing them.
    pub drop_unsupported: bool,
    /// What the backend charges; `None` when it names no prices (its
    /// answers are not costed).
    pub pricing: Option<Arc<Pricing>>,
}

impl Backend {
    /// The model name to send for `model`, if it changes.
    pub fn map_model(&self, model: &str) -> Option<&str> {
        self.model_map
            .get(model)
            .or(self.model_default.as_ref())
            .map(String::as_str)
    }

    /// True when requests to this backend need their body rewritten.
    pub fn rewrites_model(&self) -> bool {
        !self.model_map.is_empty() || self.model_default.is_some()
    }
}

/// A policy that cannot be run, naming the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy {policy:?}: {message}")]
pub struct PolicyError {
    pub policy: String,
    pub message: String,
}

fn err(policy: &str, field: impl std::fmt::Display, rule: impl std::fmt::Display) -> PolicyError {
    PolicyError {
        policy: policy.to_string(),
        message: format!("{field}: {rule}"),
    }
}

fn duration(d: Option<&pbjson_types::Duration>, default: Duration) -> Duration {
    d.and_then(|d| Duration::try_from(*d).ok())
        .unwrap_or(default)
}

impl TryFrom<&v1::Policy> for Policy {
    type Error = PolicyError;

    /// Converts a wire policy after checking every shared rule.
    fn try_from(p: &v1::Policy) -> Result<Self, PolicyError> {
        validate_policy(p, None).map_err(|e| PolicyError {
            policy: p.name.clone(),
            message: e
                .violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        })?;
        let name = p.name.as_str();
        let index_of = |backend: &str| p.backends.iter().position(|b| b.name == backend);

        let route = {
            let m = p
                .r#match
                .as_ref()
                .ok_or_else(|| err(name, "match", "required"))?;
            let header = match &m.header {
                None => None,
                Some(h) => Some((
                    HeaderName::try_from(h.name.as_str())
                        .map_err(|e| err(name, "match.header.name", e))?,
                    HeaderValue::try_from(h.value.as_str())
                        .map_err(|e| err(name, "match.header.value", e))?,
                )),
            };
            Route {
                path_prefix: m.path_prefix.clone(),
                header,
            }
        };

        let backends = p
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| backend(name, i, b))
            .collect::<Result<Vec<_>, _>>()?;

        let traffic = p
            .traffic
            .as_ref()
            .ok_or_else(|| err(name, "traffic", "required"))?;
        let baseline = index_of(&traffic.baseline)
            .ok_or_else(|| err(name, "traffic.baseline", "no such backend"))?;
        let candidate = match traffic.candidate.as_str() {
            "" => None,
            c => {
                Some(index_of(c).ok_or_else(|| err(name, "traffic.candidate", "no such backend"))?)
            }
        };
        let sticky_header = match traffic.sticky_header.as_str() {
            "" => None,
            h => Some(HeaderName::try_from(h).map_err(|e| err(name, "traffic.sticky_header", e))?),
        };

        let fallback = p
            .fallback
            .iter()
            .enumerate()
            .map(|(i, f)| {
                index_of(f).ok_or_else(|| err(name, format!("fallback[{i}]"), "no such backend"))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut faults = vec![None; backends.len()];
        for (i, f) in p.faults.iter().enumerate() {
            let at = index_of(&f.backend)
                .ok_or_else(|| err(name, format!("faults[{i}].backend"), "no such backend"))?;
            faults[at] = Some(fault(name, i, f)?);
        }
        // A shadow that follows the candidate rests while there is none.
        let shadow_target = p.shadow.as_ref().map(|sh| {
            if sh.backend.is_empty() {
                traffic.candidate.as_str()
            } else {
                sh.backend.as_str()
            }
        });
        let shadow = match (&p.shadow, shadow_target) {
            (Some(sh), Some(target)) if sh.percent > 0.0 && !target.is_empty() => {
                Some(ShadowSettings {
                    backend: index_of(target)
                        .ok_or_else(|| err(name, "shadow.backend", "no such backend"))?,
                    basis_points: (sh.percent * 100.0).round() as u32,
                    max_concurrency: match sh.max_concurrency {
                        0 => 16,
                        n => n as usize,
                    },
                    max_requests_per_second: sh.max_requests_per_second,
                    max_tokens_per_minute: sh.max_tokens_per_minute,
                    keep_prompts: sh.keep_prompts,
                    max_spend_per_hour: sh.max_spend_per_hour,
                })
            }
            _ => None,
        };

        Ok(Policy {
            name: Arc::from(name),
            selector: p
                .selector
                .as_ref()
                .map(|s| s.match_labels.clone())
                .unwrap_or_default(),
            route,
            backends,
            baseline,
            candidate,
            candidate_weight: traffic.candidate_weight,
            candidate_spend_per_hour: traffic.max_candidate_spend_per_hour,
            sticky_header,
            retry: p
                .retry
                .as_ref()
                .map(retry)
                .unwrap_or_else(RetrySettings::none),
            breaker: p.circuit_breaker.as_ref().map(breaker),
            fallback,
            faults,
            shadow,
            source: Arc::new(p.clone()),
            rollout_stage: None,
        })
    }
}

fn backend(policy: &str, i: usize, b: &v1::Backend) -> Result<Backend, PolicyError> {
    let at = format!("backends[{i}]");
    let uri: http::Uri = b
        .base_url
        .parse()
        .map_err(|e| err(policy, format!("{at}.base_url"), e))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| err(policy, format!("{at}.base_url"), "needs a scheme"))?;
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| err(policy, format!("{at}.base_url"), "needs a host"))?;
    let base = BaseUrl {
        scheme,
        authority,
        path: uri.path().trim_end_matches('/').to_string(),
        query: uri.query().map(str::to_string),
    };
    let protocol = match v1::Protocol::try_from(b.protocol) {
        Ok(v1::Protocol::Anthropic) => Dialect::Anthropic,
        _ => Dialect::OpenAi,
    };
    let credentials = if let Some(name) = b.credentials.strip_prefix("env:") {
        Some(SecretRef::Env(name.to_string()))
    } else {
        b.credentials
            .strip_prefix("file:")
            .map(|path| SecretRef::File(PathBuf::from(path)))
    };
    let mut model_map = HashMap::new();
    let mut model_default = None;
    for (from, to) in &b.model_map {
        if from == "*" {
            model_default = Some(to.clone());
        } else {
            model_map.insert(from.clone(), to.clone());
        }
    }
    let headers = b
        .headers
        .iter()
        .map(|(k, v)| {
            Ok((
                HeaderName::try_from(k.as_str())
                    .map_err(|e| err(policy, format!("{at}.headers[{k:?}]"), e))?,
                HeaderValue::try_from(v.as_str())
                    .map_err(|e| err(policy, format!("{at}.headers[{k:?}]"), e))?,
            ))
        })
        .collect::<Result<Vec<_>, PolicyError>>()?;
    let t = b.timeouts.unwrap_or_default();
    let defaults = Timeouts::default();
    let per_try = duration(t.per_try.as_ref(), defaults.per_try);
    Ok(Backend {
        name: Arc::from(b.name.as_str()),
        base,
        protocol,
        credentials,
        model_map,
        model_default,
        headers,
        timeouts: Timeouts {
            connect: duration(t.connect.as_ref(), defaults.connect),
            per_try,
            overall: duration(t.overall.as_ref(), defaults.overall.max(per_try)),
            stream_idle: duration(t.stream_idle.as_ref(), defaults.stream_idle),
        },
        answer_requested_model: b.answer_model() == v1::AnswerModel::Requested,
        anthropic_version: (!b.anthropic_version.is_empty())
            .then(|| HeaderValue::try_from(b.anthropic_version.as_str()))
            .transpose()
            .map_err(|e| err(policy, format!("{at}.anthropic_version"), e))?,
        default_max_tokens: (b.default_max_tokens != 0).then_some(u64::from(b.default_max_tokens)),
        drop_unsupported: b.drop_unsupported,
        pricing: Pricing::of(b).map(Arc::new),
    })
}

/// A backend of a one-backend policy (`name: b`, `base_url:
/// http://b.test`) with the fields of `extra` added, for tests.
#[cfg(test)]
pub(crate) fn test_backend(extra: serde_json::Value) -> Backend {
    let mut b = serde_json::json!({"name": "b", "base_url": "http://b.test"});
    if let (Some(b), Some(extra)) = (b.as_object_mut(), extra.as_object()) {
        b.extend(extra.clone());
    }
    let p = serde_json::json!({
        "name": "p", "match": {"path_prefix": "/"},
        "backends": [b],
        "traffic": {"baseline": "b"}
    });
    let mut policies = parse(&p.to_string()).unwrap_or_else(|e| panic!("{e}"));
    policies.remove(0).backends.remove(0)
}

fn retry(r: &v1::RetryPolicy) -> RetrySettings {
    let defaults = RetrySettings::default();
    let mut classes = RetryClasses::empty();
    for class in &r.retry_on {
        match v1::RetryOn::try_from(*class) {
            Ok(v1::RetryOn::ConnectError) => classes.connect = true,
            Ok(v1::RetryOn::Timeout) => classes.timeout = true,
            Ok(v1::RetryOn::RateLimited) => classes.rate_limited = true,
            Ok(v1::RetryOn::ServerError) => classes.server_error = true,
            _ => {}
        }
    }
    RetrySettings {
        max_attempts: if r.max_attempts == 0 {
            defaults.max_attempts
        } else {
            r.max_attempts
        },
        backoff_base: duration(r.backoff_base.as_ref(), defaults.backoff_base),
        backoff_max: duration(r.backoff_max.as_ref(), defaults.backoff_max),
        retry_after_max: duration(r.retry_after_max.as_ref(), defaults.retry_after_max),
        budget_ratio: r
            .budget_percent
            .map_or(defaults.budget_ratio, |p| p / 100.0),
        budget_min_per_second: r
            .budget_min_per_second
            .unwrap_or(defaults.budget_min_per_second),
        retry_on: if r.retry_on.is_empty() {
            RetryClasses::all()
        } else {
            classes
        },
    }
}

fn breaker(b: &v1::CircuitBreaker) -> BreakerSettings {
    let d = BreakerSettings::default();
    BreakerSettings {
        consecutive_failures: b.consecutive_failures,
        failure_rate: b.failure_rate_percent.map(|p| p / 100.0),
        window: duration(b.failure_rate_window.as_ref(), d.window),
        min_requests: if b.min_requests == 0 {
            d.min_requests
        } else {
            b.min_requests
        },
        open_time: duration(b.open_time.as_ref(), d.open_time),
        open_time_multiplier: b.open_time_multiplier.unwrap_or(d.open_time_multiplier),
        max_open_time: duration(b.max_open_time.as_ref(), d.max_open_time),
        half_open_probes: if b.half_open_probes == 0 {
            d.half_open_probes
        } else {
            b.half_open_probes
        },
        quota_open_time: duration(b.quota_open_time.as_ref(), d.quota_open_time),
        count_rate_limited: b.count_rate_limited.unwrap_or(d.count_rate_limited),
    }
}

fn fault(policy: &str, i: usize, f: &v1::Fault) -> Result<FaultSettings, PolicyError> {
    let expires_at = f
        .expire_time
        .as_ref()
        .and_then(timestamp_to_system_time)
        .ok_or_else(|| err(policy, format!("faults[{i}].expire_time"), "required"))?;
    let abort = match &f.abort {
        None => None,
        Some(a) => Some(Abort {
            percent: a.percent,
            status: http::StatusCode::from_u16(a.status as u16)
                .map_err(|e| err(policy, format!("faults[{i}].abort.status"), e))?,
            retry_after: a
                .retry_after
                .as_ref()
                .and_then(|d| Duration::try_from(*d).ok()),
        }),
    };
    Ok(FaultSettings {
        abort,
        delay: f.delay.as_ref().map(|d| Delay {
            percent: d.percent,
            duration: duration(d.duration.as_ref(), Duration::ZERO),
        }),
        stream_cut: f.stream_cut.as_ref().map(|c| StreamCut {
            percent: c.percent,
            after_chunks: c.after_chunks,
        }),
        expires_at,
    })
}

impl Policy {
    /// True when an agent with `labels` is selected by this policy.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        shepherd_proto::validate::labels_match(&self.selector, labels)
    }

    /// Faults still in force at `now`, per backend.
    pub fn active_faults(&self, backend: usize, now: SystemTime) -> Option<&FaultSettings> {
        self.faults
            .get(backend)?
            .as_ref()
            .filter(|f| f.expires_at > now)
    }
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a policy or a list of policies in the protobuf JSON mapping: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: PolicyError,
    },
    #[error("{path}: policy {name:?} appears twice")]
    Duplicate { path: PathBuf, name: String },
}

/// Reads a policy file: one `Policy` object or a JSON array of them, in the
/// protobuf JSON mapping (the same JSON grpcurl and the control plane use).
pub fn load_file(path: &Path) -> Result<Vec<Policy>, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        LoadError::Parse { message, .. } => LoadError::Parse {
            path: path.to_path_buf(),
            message,
        },
        LoadError::Invalid { source, .. } => LoadError::Invalid {
            path: path.to_path_buf(),
            source,
        },
        LoadError::Duplicate { name, .. } => LoadError::Duplicate {
            path: path.to_path_buf(),
            name,
        },
        other => other,
    })
}

/// Parses the text of a policy file (see [`load_file`]).
pub fn parse(text: &str) -> Result<Vec<Policy>, LoadError> {
    let wire =
        shepherd_proto::file::policies_from_json(text).map_err(|message| LoadError::Parse {
            path: PathBuf::new(),
            message,
        })?;
    let mut seen = std::collections::BTreeSet::new();
    wire.iter()
        .map(|p| {
            if !seen.insert(p.name.clone()) {
                return Err(LoadError::Duplicate {
                    path: PathBuf::new(),
                    name: p.name.clone(),
                });
            }
            Policy::try_from(p).map_err(|source| LoadError::Invalid {
                path: PathBuf::new(),
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &str = include_str!("../../deploy/examples/chat-policy.json");

    /// The example policy converts with its settings and the documented
    /// defaults.
    #[test]
    fn converts_the_example() {
        let p = parse(CHAT).unwrap().remove(0);
        assert_eq!(&*p.name, "chat");
        assert_eq!(p.route.path_prefix, "/v1/");
        assert_eq!(p.backends.len(), 2);
        assert_eq!((p.baseline, p.candidate), (0, Some(1)));
        assert_eq!(
            p.sticky_header.as_ref().map(|h| h.as_str()),
            Some("x-user-id")
        );
        let mistral = &p.backends[1];
        assert_eq!(mistral.map_model("gpt-4o"), Some("mistral-large-latest"));
        assert_eq!(mistral.map_model("other"), Some("mistral-small-latest"));
        assert_eq!(
            mistral.credentials,
            Some(SecretRef::File("/run/secrets/mistral-api-key".into()))
        );
        assert_eq!(mistral.base.scheme, Scheme::HTTPS);
        assert_eq!(mistral.timeouts.per_try, Duration::from_secs(30));
        assert_eq!(p.retry.max_attempts, 3);
        assert!((p.retry.budget_ratio - 0.2).abs() < 1e-9);
        assert_eq!(p.fallback, vec![0]);
        let b = p.breaker.unwrap();
        assert_eq!(b.consecutive_failures, 5);
        assert_eq!(b.failure_rate, Some(0.5));
    }

    /// A file may hold a list; names must be unique; rules are the shared ones.
    #[test]
    fn lists_duplicates_and_rules() {
        let two = format!("[{CHAT}, {}]", CHAT.replace("\"chat\"", "\"chat-2\""));
        assert_eq!(parse(&two).unwrap().len(), 2);
        let dup = format!("[{CHAT}, {CHAT}]");
        assert!(matches!(parse(&dup), Err(LoadError::Duplicate { name, .. }) if name == "chat"));
        let bad = CHAT.replace("https://api.mistral.ai", "mistral");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(
            e.contains("backends[1].base_url: must be an absolute http or https URL"),
            "{e}"
        );
        let typo = CHAT.replace("\"base_url\"", "\"base_ur\"");
        let e = parse(&typo).unwrap_err().to_string();
        assert!(e.contains("base_ur"), "{e}");
        // A type error names its field, as shepherdctl does.
        let percent = CHAT.replace("\"candidate_weight\": 0", "\"candidate_weight\": \"10%\"");
        assert_ne!(percent, CHAT);
        let e = parse(&format!("[{CHAT}, {percent}]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[1].traffic.candidate_weight: "), "{e}");
    }

    /// The local examples in the README are valid (a list, and the single
    /// policies of the fleet and rollout walkthroughs).
    #[test]
    fn local_example_is_valid() {
        let policies = parse(include_str!("../../deploy/examples/agent-local.json")).unwrap();
        assert_eq!(policies.len(), 1);
        assert_eq!(policies[0].candidate_weight, 1000);
        let fleet = parse(include_str!(
            "../../deploy/examples/fleet-local-policy.json"
        ))
        .unwrap();
        assert_eq!(fleet.len(), 1);
        let demo = BTreeMap::from([("app".to_string(), "demo".to_string())]);
        assert!(fleet[0].selects(&demo));
        assert!(!fleet[0].selects(&BTreeMap::new()));
        let rollout = parse(include_str!(
            "../../deploy/examples/rollout-local-policy.json"
        ))
        .unwrap();
        assert_eq!(rollout[0].candidate_weight, 0);
    }

    /// A shadow that follows the candidate rests while the policy has none
    /// (as after a rollout made its candidate the baseline).
    #[test]
    fn a_shadow_without_a_candidate_rests() {
        let p = r#"{"name": "m", "match": {"path_prefix": "/"},
            "backends": [{"name": "a", "base_url": "http://127.0.0.1:1"}],
            "traffic": {"baseline": "a"}, "shadow": {"percent": 100},
            "rollout": {"stages": [{"weight": 0, "min_bake_time": "1s", "max_stage_time": "2s"},
                                   {"weight": 10000, "min_bake_time": "1s", "max_stage_time": "2s"}]}}"#;
        let p = parse(p).unwrap().remove(0);
        assert!(p.shadow.is_none());
    }

    /// Without a retry section a request gets one attempt.
    #[test]
    fn defaults_without_sections() {
        let minimal = r#"{"name": "m", "match": {"path_prefix": "/"},
            "backends": [{"name": "a", "base_url": "http://127.0.0.1:1/base/"}],
            "traffic": {"baseline": "a"}}"#;
        let p = parse(minimal).unwrap().remove(0);
        assert_eq!(p.retry.max_attempts, 1);
        assert!(p.breaker.is_none());
        assert_eq!(p.backends[0].base.path, "/base");
        assert_eq!(p.backends[0].timeouts, Timeouts::default());
        assert!(p.selects(&BTreeMap::new()));
    }
}
