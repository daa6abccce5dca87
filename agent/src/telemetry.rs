//! Telemetry per policy and backend: attempt outcomes by class, latency and
//! time-to-first-token histograms (the shared buckets of
//! [`shepherd_proto::histogram`]), tokens from `usage`, retries, fallbacks.
//! Recording is a few relaxed atomic adds; counters live in a registry keyed
//! by (policy, backend) so they continue across reloads.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shepherd_proto::histogram::{AtomicHistogram, Histogram, prometheus_bounds};

/// The class of an attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// 1xx to 3xx.
    Success,
    /// 4xx other than 429.
    ClientError,
    RateLimited,
    ServerError,
    /// No response head within the per-try timeout.
    Timeout,
    /// The connection failed.
    Connect,
    /// The body broke or stalled after the head reached the app.
    StreamBroken,
    /// The breaker was open: nothing was sent.
    BreakerRejected,
    /// A fault answered instead of the backend.
    FaultInjected,
    /// The app went away before the response ended.
    Cancelled,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::Success,
        Outcome::ClientError,
        Outcome::RateLimited,
        Outcome::ServerError,
        Outcome::Timeout,
        Outcome::Connect,
        Outcome::StreamBroken,
        Outcome::BreakerRejected,
        Outcome::FaultInjected,
        Outcome::Cancelled,
    ];

    /// The label value in metrics and reports.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "2xx",
            Outcome::ClientError => "4xx",
            Outcome::RateLimited => "429",
            Outcome::ServerError => "5xx",
            Outcome::Timeout => "timeout",
            Outcome::Connect => "connect",
            Outcome::StreamBroken => "stream_broken",
            Outcome::BreakerRejected => "breaker_rejected",
            Outcome::FaultInjected => "fault_injected",
            Outcome::Cancelled => "cancelled",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The class of a response status.
    pub fn of_status(status: http::StatusCode) -> Outcome {
        match status.as_u16() {
            429 => Outcome::RateLimited,
            400..=499 => Outcome::ClientError,
            500..=599 => Outcome::ServerError,
            _ => Outcome::Success,
        }
    }

    /// True when the outcome says the backend is unhealthy (for breakers).
    pub fn is_backend_failure(self) -> bool {
        matches!(
            self,
            Outcome::ServerError | Outcome::Timeout | Outcome::Connect | Outcome::StreamBroken
        )
    }
}

/// Counters of one backend within one policy.
#[derive(Debug, Default)]
pub struct BackendStats {
    outcomes: [AtomicU64; Outcome::ALL.len()],
    /// Time from sending an attempt to the end of its response.
    pub latency: AtomicHistogram,
    /// Time from sending an attempt to the first byte of a streamed body.
    pub ttft: AtomicHistogram,
    pub input_tokens: AtomicU64,
    pub output_tokens: AtomicU64,
    /// Attempts that were retries.
    pub retries: AtomicU64,
    /// Times this backend was tried as a fallback.
    pub fallbacks: AtomicU64,
    /// Requests the split sent to this backend first.
    pub selected: AtomicU64,
    /// Faults injected, by kind.
    pub faults_abort: AtomicU64,
    pub faults_delay: AtomicU64,
    pub faults_cut: AtomicU64,
    /// Breaker state gauge (see `BreakerState::as_gauge`).
    pub breaker_state: AtomicU64,
}

impl BackendStats {
    pub fn record(&self, outcome: Outcome) {
        self.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn outcome(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome.index()].load(Ordering::Relaxed)
    }

    pub fn add_tokens(&self, input: u64, output: u64) {
        if input > 0 {
            self.input_tokens.fetch_add(input, Ordering::Relaxed);
        }
        if output > 0 {
            self.output_tokens.fetch_add(output, Ordering::Relaxed);
        }
    }

    pub fn record_latency(&self, d: Duration) {
        self.latency.record(d);
    }
}

/// Agent-wide counters.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Requests refused because too many were in flight.
    pub shed: AtomicU64,
    /// Requests refused as too large.
    pub too_large: AtomicU64,
    /// Requests no policy matched.
    pub no_route: AtomicU64,
    /// Requests whose body could not be read.
    pub bad_request: AtomicU64,
    pub inflight: AtomicI64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
}

/// Counters of every (policy, backend) seen, continuous across reloads.
#[derive(Debug, Default)]
pub struct StatsRegistry {
    backends: Mutex<HashMap<(String, String), Arc<BackendStats>>>,
    policies: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl StatsRegistry {
    /// The counters of a backend within a policy.
    pub fn backend(&self, policy: &str, backend: &str) -> Arc<BackendStats> {
        lock(&self.backends)
            .entry((policy.to_string(), backend.to_string()))
            .or_default()
            .clone()
    }

    /// The request counter of a policy.
    pub fn policy_requests(&self, policy: &str) -> Arc<AtomicU64> {
        lock(&self.policies)
            .entry(policy.to_string())
            .or_default()
            .clone()
    }

    /// Renders every counter in the Prometheus text format.
    pub fn render(&self, agent: &AgentStats, snapshot_version: u64) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let mut backends: Vec<_> = lock(&self.backends)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        backends.sort_by(|a, b| a.0.cmp(&b.0));
        let mut policies: Vec<_> = lock(&self.policies)
            .iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect();
        policies.sort();

        header(
            &mut out,
            "shepherd_agent_requests_total",
            "counter",
            "Requests matched to a policy.",
        );
        for (policy, n) in &policies {
            let _ = writeln!(
                out,
                "shepherd_agent_requests_total{{policy=\"{}\"}} {n}",
                esc(policy)
            );
        }
        header(
            &mut out,
            "shepherd_agent_attempts_total",
            "counter",
            "Attempts sent to a backend (or refused or faulted), by outcome.",
        );
        for ((policy, backend), s) in &backends {
            for o in Outcome::ALL {
                let _ = writeln!(
                    out,
                    "shepherd_agent_attempts_total{{policy=\"{}\",backend=\"{}\",outcome=\"{}\"}} {}",
                    esc(policy),
                    esc(backend),
                    o.label(),
                    s.outcome(o)
                );
            }
        }
        type Getter = fn(&BackendStats) -> u64;
        let simple: [(&str, &str, Getter); 4] = [
            (
                "shepherd_agent_selected_total",
                "Requests the split sent to a backend first.",
                |s| s.selected.load(Ordering::Relaxed),
            ),
            (
                "shepherd_agent_retries_total",
                "Attempts that were retries.",
                |s| s.retries.load(Ordering::Relaxed),
            ),
            (
                "shepherd_agent_fallbacks_total",
                "Times a backend was tried as a fallback.",
                |s| s.fallbacks.load(Ordering::Relaxed),
            ),
            (
                "shepherd_agent_breaker_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
                |s| s.breaker_state.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, get) in simple {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            header(&mut out, name, kind, help);
            for ((policy, backend), s) in &backends {
                let _ = writeln!(
                    out,
                    "{name}{{policy=\"{}\",backend=\"{}\"}} {}",
                    esc(policy),
                    esc(backend),
                    get(s)
                );
            }
        }
        header(
            &mut out,
            "shepherd_agent_tokens_total",
            "counter",
            "Tokens reported in usage, by kind.",
        );
        for ((policy, backend), s) in &backends {
            for (kind, v) in [("input", &s.input_tokens), ("output", &s.output_tokens)] {
                let _ = writeln!(
                    out,
                    "shepherd_agent_tokens_total{{policy=\"{}\",backend=\"{}\",kind=\"{kind}\"}} {}",
                    esc(policy),
                    esc(backend),
                    v.load(Ordering::Relaxed)
                );
            }
        }
        header(
            &mut out,
            "shepherd_agent_faults_injected_total",
            "counter",
            "Faults injected, by kind.",
        );
        for ((policy, backend), s) in &backends {
            for (kind, v) in [
                ("abort", &s.faults_abort),
                ("delay", &s.faults_delay),
                ("stream_cut", &s.faults_cut),
            ] {
                let _ = writeln!(
                    out,
                    "shepherd_agent_faults_injected_total{{policy=\"{}\",backend=\"{}\",kind=\"{kind}\"}} {}",
                    esc(policy),
                    esc(backend),
                    v.load(Ordering::Relaxed)
                );
            }
        }
        for (name, help, pick) in [
            (
                "shepherd_agent_attempt_duration_seconds",
                "Time from sending an attempt to the end of its response.",
                (|s: &BackendStats| s.latency.snapshot()) as fn(&BackendStats) -> Histogram,
            ),
            (
                "shepherd_agent_time_to_first_token_seconds",
                "Time from sending an attempt to the first byte of its streamed body.",
                |s: &BackendStats| s.ttft.snapshot(),
            ),
        ] {
            header(&mut out, name, "histogram", help);
            for ((policy, backend), s) in &backends {
                histogram(
                    &mut out,
                    name,
                    &format!("policy=\"{}\",backend=\"{}\"", esc(policy), esc(backend)),
                    &pick(s),
                );
            }
        }
        for (name, kind, help, v) in [
            (
                "shepherd_agent_inflight_requests",
                "gauge",
                "Requests in flight.",
                agent.inflight.load(Ordering::Relaxed).max(0) as u64,
            ),
            (
                "shepherd_agent_shed_total",
                "counter",
                "Requests refused because too many were in flight.",
                agent.shed.load(Ordering::Relaxed),
            ),
            (
                "shepherd_agent_request_too_large_total",
                "counter",
                "Requests refused as too large.",
                agent.too_large.load(Ordering::Relaxed),
            ),
            (
                "shepherd_agent_no_route_total",
                "counter",
                "Requests no policy matched.",
                agent.no_route.load(Ordering::Relaxed),
            ),
            (
                "shepherd_agent_bad_request_total",
                "counter",
                "Requests whose body could not be read.",
                agent.bad_request.load(Ordering::Relaxed),
            ),
            (
                "shepherd_agent_snapshot_version",
                "gauge",
                "Version of the policy snapshot in use.",
                snapshot_version,
            ),
        ] {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
        header(
            &mut out,
            "shepherd_agent_policy_reloads_total",
            "counter",
            "Policy reloads, by result.",
        );
        let _ = writeln!(
            out,
            "shepherd_agent_policy_reloads_total{{result=\"ok\"}} {}",
            agent.reloads_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "shepherd_agent_policy_reloads_total{{result=\"failed\"}} {}",
            agent.reloads_failed.load(Ordering::Relaxed)
        );
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let mut cumulative = 0u64;
    let mut next = 0usize;
    for (index, le) in prometheus_bounds() {
        while next <= index {
            cumulative += h.bucket(next);
            next += 1;
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count());
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_us() as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count());
}

/// Escapes a label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rendering carries the recorded values with Prometheus conventions.
    #[test]
    fn renders_prometheus_text() {
        let reg = StatsRegistry::default();
        let s = reg.backend("chat", "openai");
        s.record(Outcome::Success);
        s.record(Outcome::Success);
        s.record(Outcome::ServerError);
        s.record_latency(Duration::from_millis(3));
        s.add_tokens(24, 12);
        reg.policy_requests("chat").fetch_add(3, Ordering::Relaxed);
        let text = reg.render(&AgentStats::default(), 7);
        for line in [
            "shepherd_agent_requests_total{policy=\"chat\"} 3",
            "shepherd_agent_attempts_total{policy=\"chat\",backend=\"openai\",outcome=\"2xx\"} 2",
            "shepherd_agent_attempts_total{policy=\"chat\",backend=\"openai\",outcome=\"5xx\"} 1",
            "shepherd_agent_tokens_total{policy=\"chat\",backend=\"openai\",kind=\"input\"} 24",
            "shepherd_agent_attempt_duration_seconds_bucket{policy=\"chat\",backend=\"openai\",le=\"0.0025\"} 0",
            "shepherd_agent_attempt_duration_seconds_bucket{policy=\"chat\",backend=\"openai\",le=\"0.005\"} 1",
            "shepherd_agent_attempt_duration_seconds_count{policy=\"chat\",backend=\"openai\"} 1",
            "shepherd_agent_snapshot_version 7",
            "# TYPE shepherd_agent_attempts_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // The same key gives the same counters (continuity across reloads).
        assert!(Arc::ptr_eq(&s, &reg.backend("chat", "openai")));
    }
}
