//! Command-line flags, each with an environment variable fallback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::auth::Token;

/// The Shepherd control plane: keeps rollout policies in a database and
/// serves them over gRPC (PolicyService, health, reflection).
///
/// With no subcommand it serves. The default database is a SQLite file in the
/// working directory, so it runs with nothing to set up; a postgres:// URL
/// selects Postgres. Migrations are applied at start.
#[derive(Debug, Parser)]
#[command(
    name = "shepherd-control-plane",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

// Parsed once at start; boxing would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate(MigrateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "SHEPHERD_LISTEN", default_value = "127.0.0.1:4100")]
    pub listen: SocketAddr,

    /// Address of the admin HTTP listener (`/metrics`, `/healthz`); "off"
    /// for none.
    #[arg(long, env = "SHEPHERD_ADMIN_LISTEN", default_value = "127.0.0.1:4101", value_parser = optional_addr)]
    pub admin_listen: OptionalAddr,

    /// Bearer token operators must send ("authorization: Bearer <token>").
    /// Prefer SHEPHERD_ADMIN_TOKEN_FILE: a flag is visible to other local
    /// users in the process list.
    #[arg(
        long,
        env = "SHEPHERD_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    pub admin_token: Option<String>,

    /// File holding the admin token (surrounding whitespace is ignored).
    #[arg(long, env = "SHEPHERD_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Bearer token agents must send on their Connect stream; separate from
    /// the admin token. Prefer SHEPHERD_AGENT_TOKEN_FILE.
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

    /// Allow listening on a non-loopback address with no token configured,
    /// so anyone who can reach the port can change policies.
    #[arg(long, env = "SHEPHERD_INSECURE")]
    pub insecure: bool,

    /// Largest gRPC request accepted, in bytes.
    #[arg(long, env = "SHEPHERD_MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Longest wait for in-flight calls to finish on SIGINT/SIGTERM.
    #[arg(long, env = "SHEPHERD_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub fleet: FleetArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// A listen address, or none ("off").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

fn optional_addr(s: &str) -> Result<OptionalAddr, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(OptionalAddr(None));
    }
    s.parse()
        .map(|a| OptionalAddr(Some(a)))
        .map_err(|e| format!("{e}: expected HOST:PORT or \"off\""))
}

/// How this replica serves agents.
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// This replica's name in the fleet view (default: host name and a
    /// random suffix).
    #[arg(long, env = "SHEPHERD_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// How often agent records and telemetry are written to the database.
    #[arg(long, env = "SHEPHERD_FLEET_FLUSH_INTERVAL", default_value = "1s", value_parser = positive_duration)]
    pub fleet_flush_interval: Duration,

    /// A replica not heard of for this long counts as gone, and its agents
    /// as disconnected.
    #[arg(long, env = "SHEPHERD_REPLICA_TIMEOUT", default_value = "15s", value_parser = positive_duration)]
    pub replica_timeout: Duration,

    /// Most agents handed their first snapshot at once (a reconnect storm
    /// queues behind this).
    #[arg(long, env = "SHEPHERD_MAX_CONNECTING_AGENTS", default_value_t = 256, value_parser = at_least_one)]
    pub max_connecting_agents: usize,

    /// Length of the telemetry windows written to the database.
    #[arg(long, env = "SHEPHERD_TELEMETRY_WINDOW", default_value = "1s", value_parser = positive_duration)]
    pub telemetry_window: Duration,

    /// How long telemetry windows are kept.
    #[arg(long, env = "SHEPHERD_TELEMETRY_RETENTION", default_value = "24h", value_parser = positive_duration)]
    pub telemetry_retention: Duration,

    /// How long disconnected agents stay listed.
    #[arg(long, env = "SHEPHERD_AGENT_RETENTION", default_value = "7d", value_parser = positive_duration)]
    pub agent_retention: Duration,

    /// How often the leading replica judges active rollouts.
    #[arg(long, env = "SHEPHERD_ANALYSIS_INTERVAL", default_value = "250ms", value_parser = positive_duration)]
    pub analysis_interval: Duration,

    /// Selected agents sending no telemetry for this long during a stage is
    /// a TELEMETRY_STALE event (decisions wait meanwhile).
    #[arg(long, env = "SHEPHERD_STALE_TELEMETRY_AFTER", default_value = "10s", value_parser = positive_duration)]
    pub stale_telemetry_after: Duration,
}

impl FleetArgs {
    pub fn options(&self) -> crate::fleet::FleetOptions {
        let defaults = crate::fleet::FleetOptions::default();
        crate::fleet::FleetOptions {
            replica: self.replica_id.clone().unwrap_or(defaults.replica),
            flush_interval: self.fleet_flush_interval,
            replica_timeout: self.replica_timeout,
            max_connecting: self.max_connecting_agents,
            telemetry_window: self.telemetry_window,
            telemetry_retention: self.telemetry_retention,
            agent_retention: self.agent_retention,
            analysis_interval: self.analysis_interval,
            stale_telemetry_after: self.stale_telemetry_after,
            ..defaults
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Database URL: sqlite://FILE (created if missing) or
    /// postgres://USER@HOST:PORT/DB.
    #[arg(
        long,
        env = "SHEPHERD_DATABASE_URL",
        default_value = "sqlite://shepherd.db",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Most open database connections.
    #[arg(long, env = "SHEPHERD_DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,

    /// Longest wait for a database connection; past it a call fails with
    /// UNAVAILABLE.
    #[arg(long, env = "SHEPHERD_DATABASE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub database_timeout: Duration,

    /// How long to keep trying to reach the database at start before giving up.
    #[arg(long, env = "SHEPHERD_DATABASE_CONNECT_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub database_connect_wait: Duration,

    /// How often the database is pinged for the gRPC health service (and the
    /// log of outages; every other database call reports too).
    #[arg(long, env = "SHEPHERD_DATABASE_HEALTH_INTERVAL", default_value = "1s", value_parser = positive_duration)]
    pub database_health_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, env = "SHEPHERD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, e.g. "info" or "info,shepherd_control_plane=debug". The
    /// database driver's own chatter stays at warnings by default.
    #[arg(long, env = "SHEPHERD_LOG", default_value = "info,sqlx=warn")]
    pub log: String,
}

impl ServeArgs {
    /// The admin token from the flag, the variable or the file, if any.
    pub fn admin_token(&self) -> Result<Option<Token>, String> {
        read_token(
            "admin token",
            self.admin_token.as_deref(),
            self.admin_token_file.as_ref(),
        )
    }

    /// The agent token from the flag, the variable or the file, if any.
    pub fn agent_token(&self) -> Result<Option<Token>, String> {
        read_token(
            "agent token",
            self.agent_token.as_deref(),
            self.agent_token_file.as_ref(),
        )
    }

    /// Refuses a configuration that would expose policy writes or the agent
    /// stream to the network without a token.
    pub fn check_exposure(&self, has_admin: bool, has_agent: bool) -> Result<(), String> {
        if self.insecure || self.listen.ip().is_loopback() {
            return Ok(());
        }
        if !has_admin {
            return Err(format!(
                "refusing to listen on {} with no admin token: anyone who can reach it could change policies. \
                 Set SHEPHERD_ADMIN_TOKEN_FILE (or --admin-token-file), or pass --insecure to accept that",
                self.listen
            ));
        }
        if !has_agent {
            return Err(format!(
                "refusing to listen on {} with no agent token: anyone who can reach it could read every policy as an agent. \
                 Set SHEPHERD_AGENT_TOKEN_FILE (or --agent-token-file), or pass --insecure to accept that",
                self.listen
            ));
        }
        Ok(())
    }
}

/// A duration above zero.
fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be above 0".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// A count of at least one.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Reads a token given directly or in a file.
pub fn read_token(
    what: &str,
    value: Option<&str>,
    file: Option<&PathBuf>,
) -> Result<Option<Token>, String> {
    let raw = match (value, file) {
        (Some(v), _) => v.to_string(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("{what} file {}: {e}", path.display()))?,
        (None, None) => return Ok(None),
    };
    Token::new(&raw)
        .map(Some)
        .map_err(|rule| format!("{what}: {rule}"))
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

    /// No subcommand serves; `migrate` takes the database flags.
    #[test]
    fn parses_default_and_migrate() {
        let cli =
            Cli::try_parse_from(["shepherd-control-plane", "--listen", "127.0.0.1:0"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.listen.port(), 0);
        let cli = Cli::try_parse_from([
            "shepherd-control-plane",
            "migrate",
            "--database-url",
            "postgres://db/x",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Migrate(m)) => assert_eq!(m.database.database_url, "postgres://db/x"),
            other => panic!("expected migrate, got {other:?}"),
        }
    }

    /// Without a token, only loopback is allowed unless --insecure is given.
    #[test]
    fn refuses_exposed_listener_without_token() {
        let parse = |args: &[&str]| {
            let mut all = vec!["shepherd-control-plane"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().serve
        };
        let exposed = parse(&["--listen", "0.0.0.0:4100"]);
        let err = exposed.check_exposure(false, true).unwrap_err();
        assert!(
            err.contains("no admin token") && err.contains("--insecure"),
            "{err}"
        );
        let err = exposed.check_exposure(true, false).unwrap_err();
        assert!(err.contains("no agent token"), "{err}");
        assert!(exposed.check_exposure(true, true).is_ok());
        assert!(
            parse(&["--listen", "0.0.0.0:4100", "--insecure"])
                .check_exposure(false, false)
                .is_ok()
        );
        assert!(
            parse(&["--listen", "[::1]:4100"])
                .check_exposure(false, false)
                .is_ok()
        );
    }

    /// Fleet intervals must be above zero and the admission limit at least
    /// one; the error names the flag.
    #[test]
    fn refuses_zero_fleet_settings() {
        for (flag, value) in [
            ("--fleet-flush-interval", "0s"),
            ("--telemetry-window", "0ms"),
            ("--max-connecting-agents", "0"),
        ] {
            let err = Cli::try_parse_from(["shepherd-control-plane", flag, value])
                .unwrap_err()
                .to_string();
            assert!(err.contains(flag), "{err}");
        }
    }

    /// A token file is read and trimmed; an empty one is refused.
    #[test]
    fn reads_token_file() {
        let dir = std::env::temp_dir().join(format!("shepherd-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert!(
            read_token("admin token", None, Some(&file))
                .unwrap()
                .is_some()
        );
        std::fs::write(&file, "\n").unwrap();
        let err = read_token("admin token", None, Some(&file)).unwrap_err();
        assert_eq!(err, "admin token: must not be empty");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
