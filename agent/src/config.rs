//! Command-line flags, each with an environment variable fallback.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use shepherd_observe::flags::{at_least_one, positive_duration};

/// The Shepherd agent: a sidecar proxy for LLM API traffic. Point the app's
/// OpenAI-compatible (or Anthropic) base URL at it, e.g.
/// http://127.0.0.1:4000/v1.
///
/// Policies come from the control plane (--control-plane), or from a JSON
/// file in the same form as the control plane's Policy (one object or a
/// list; SIGHUP or a change of the file reloads it).
#[derive(Debug, Clone, Parser)]
#[command(name = "shepherd-agent", version)]
pub struct Cli {
    /// Address the proxy listens on (HTTP/1.1 and h2c).
    #[arg(long, env = "SHEPHERD_AGENT_LISTEN", default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,

    /// Address of /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "SHEPHERD_AGENT_ADMIN_LISTEN",
        default_value = "127.0.0.1:4001"
    )]
    pub admin_listen: SocketAddr,

    /// Policy file: one Policy or a JSON list of them (protobuf JSON mapping).
    #[arg(
        long,
        env = "SHEPHERD_AGENT_POLICY_FILE",
        conflicts_with = "control_plane"
    )]
    pub policy_file: Option<PathBuf>,

    /// Control-plane addresses, comma-separated (e.g.
    /// http://cp-0:4100,http://cp-1:4100); one is used at a time, the others
    /// when it cannot be reached.
    #[arg(long, env = "SHEPHERD_AGENT_CONTROL_PLANE", value_delimiter = ',')]
    pub control_plane: Vec<String>,

    /// The agent token the control plane expects. Prefer
    /// SHEPHERD_AGENT_TOKEN_FILE: a flag is visible in the process list.
    #[arg(
        long,
        env = "SHEPHERD_AGENT_TOKEN",
        hide_env_values = true,
        conflicts_with = "agent_token_file"
    )]
    pub agent_token: Option<String>,

    /// File holding the agent token.
    #[arg(long, env = "SHEPHERD_AGENT_TOKEN_FILE")]
    pub agent_token_file: Option<PathBuf>,

    /// CA certificates (PEM) to verify an https:// control plane with
    /// (default: the public web roots). Re-read at each connection.
    #[arg(long, env = "SHEPHERD_AGENT_CONTROL_PLANE_CA")]
    pub control_plane_ca: Option<PathBuf>,

    /// Client certificate (PEM) presented to an https:// control plane that
    /// takes agents by certificate (mTLS); its DNS or URI subject
    /// alternative name must be the agent id. Re-read at each connection,
    /// so a renewed certificate is used from the next one.
    #[arg(
        long,
        env = "SHEPHERD_AGENT_CONTROL_PLANE_CERT",
        requires = "control_plane_key"
    )]
    pub control_plane_cert: Option<PathBuf>,

    /// Private key (PEM) of --control-plane-cert.
    #[arg(
        long,
        env = "SHEPHERD_AGENT_CONTROL_PLANE_KEY",
        requires = "control_plane_cert"
    )]
    pub control_plane_key: Option<PathBuf>,

    /// This agent's id in the fleet, stable across restarts (default: the
    /// host name and the proxy port, e.g. the pod name in Kubernetes).
    #[arg(long, env = "SHEPHERD_AGENT_ID")]
    pub agent_id: Option<String>,

    /// Directory where the last applied snapshot is kept, to start from when
    /// the control plane cannot be reached.
    #[arg(
        long,
        env = "SHEPHERD_AGENT_STATE_DIR",
        default_value = "shepherd-agent-state"
    )]
    pub state_dir: PathBuf,

    /// How often telemetry is reported to the control plane.
    #[arg(long, env = "SHEPHERD_AGENT_REPORT_INTERVAL", default_value = "1s", value_parser = positive_duration)]
    pub report_interval: Duration,

    /// Failures of one backend since the last report, at least a quarter of
    /// its attempts, that send the next report at once, marked urgent (a
    /// breaker opening always does); 0: only breakers.
    #[arg(
        long,
        env = "SHEPHERD_AGENT_URGENT_REPORT_FAILURES",
        default_value_t = 3
    )]
    pub urgent_report_failures: u64,

    /// Shortest time between two reports when urgent ones are called for.
    #[arg(long, env = "SHEPHERD_AGENT_URGENT_REPORT_MIN_INTERVAL", default_value = "100ms", value_parser = positive_duration)]
    pub urgent_report_min_interval: Duration,

    /// After this long without the control plane, faults and shadow traffic
    /// stop (weights stay).
    #[arg(long, env = "SHEPHERD_AGENT_CONTROL_PLANE_LOSS_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub control_plane_loss_ttl: Duration,

    /// How often the policy file is checked for changes; 0s turns that off
    /// (SIGHUP still reloads).
    #[arg(long, env = "SHEPHERD_AGENT_POLICY_POLL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub policy_poll: Duration,

    /// This agent's labels, which policy selectors match: key=value,key=value.
    #[arg(long, env = "SHEPHERD_AGENT_LABELS", default_value = "", value_parser = parse_labels)]
    pub labels: Labels,

    /// Largest request body accepted; larger gets 413.
    #[arg(long, env = "SHEPHERD_AGENT_MAX_REQUEST_BYTES", default_value_t = 16 << 20)]
    pub max_request_bytes: usize,

    /// Largest request body that may be retried or sent to a fallback after
    /// a failed attempt; larger bodies are sent once.
    #[arg(long, env = "SHEPHERD_AGENT_RETRY_BODY_LIMIT", default_value_t = 4 << 20)]
    pub retry_body_limit: usize,

    /// Most requests in flight; more get 503 at once (load shedding).
    #[arg(long, env = "SHEPHERD_AGENT_MAX_CONCURRENT", default_value_t = 1024)]
    pub max_concurrent: usize,

    /// Answers read whole carry their cost in `x-shepherd-cost` ("0.0065
    /// USD", or "unpriced"), when their backend has prices. Streams do not:
    /// their cost is known only at their end.
    #[arg(long, env = "SHEPHERD_AGENT_COST_HEADER")]
    pub cost_header: bool,

    /// Time a client has to send a request's headers, and a new connection
    /// its first request, whatever its protocol (a connection that sends
    /// nothing, or half an HTTP/2 preface, is closed).
    #[arg(long, env = "SHEPHERD_AGENT_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// Most proxy connections open at once (default: half the process's
    /// open-file limit). Past it, the oldest connection that has sent no
    /// request is closed to make room; if every one has, the new
    /// connection is closed at once.
    #[arg(long, env = "SHEPHERD_AGENT_MAX_CONNECTIONS", value_parser = at_least_one)]
    pub max_connections: Option<usize>,

    /// Largest request head, in bytes.
    #[arg(long, env = "SHEPHERD_AGENT_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,

    /// Longest wait for in-flight requests (streams included) at shutdown.
    #[arg(long, env = "SHEPHERD_AGENT_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// On SIGTERM/SIGINT, how long the agent reports not ready while it
    /// still serves, before it closes its listener: load balancers (a
    /// Kubernetes Service) stop sending it new requests first.
    #[arg(long, env = "SHEPHERD_AGENT_SHUTDOWN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,

    /// Extra CA certificates (PEM) to trust for https upstreams, besides the
    /// built-in Mozilla roots.
    #[arg(long, env = "SHEPHERD_AGENT_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<PathBuf>,

    /// Worker threads, each an event loop with its own listener socket and
    /// connection pools (0: one per CPU).
    #[arg(long, env = "SHEPHERD_AGENT_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// Log line format.
    #[arg(long, env = "SHEPHERD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, e.g. "info" or "info,shepherd_agent=debug".
    #[arg(long, env = "SHEPHERD_LOG", default_value = "info")]
    pub log: String,
}

impl Cli {
    /// Where the agent token comes from, if anywhere: a file is re-read at
    /// each connection, so a rotated token is used from the next one.
    pub fn agent_token(&self) -> Option<crate::control::TokenSource> {
        use crate::control::{Secret, TokenSource};
        match (&self.agent_token, &self.agent_token_file) {
            (Some(v), _) => Some(TokenSource::Value(Secret(v.clone()))),
            (None, Some(path)) => Some(TokenSource::File(path.clone())),
            (None, None) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Labels as parsed from `key=value,key=value`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(pub BTreeMap<String, String>);

fn parse_labels(s: &str) -> Result<Labels, String> {
    let mut labels = BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?}: labels are key=value"))?;
        shepherd_proto::validate::check_label(k, v).map_err(|rule| format!("{pair:?}: {rule}"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    Ok(Labels(labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The flag definitions are consistent (clap's own check).
    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// A zero report interval is refused, naming the flag.
    #[test]
    fn refuses_zero_report_interval() {
        let err = Cli::try_parse_from(["shepherd-agent", "--report-interval", "0s"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--report-interval") && err.contains("above 0"),
            "{err}"
        );
    }

    /// Labels parse from key=value pairs; bad ones say why.
    #[test]
    fn parses_labels() {
        let l = parse_labels("app=support-bot, env=prod").unwrap();
        assert_eq!(l.0.get("app").map(String::as_str), Some("support-bot"));
        assert_eq!(l.0.len(), 2);
        assert!(parse_labels("").unwrap().0.is_empty());
        assert!(parse_labels("novalue").unwrap_err().contains("key=value"));
        assert!(parse_labels("a b=c").is_err());
    }
}
