//! Command-line flags, each with an environment variable fallback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use shepherd_observe::flags::{at_least_one, positive_duration};

use crate::auth::{Credential, Role, Token, TokenSet, parse_token_file};

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

    /// File holding the admin tokens: one per line, alone (named "admin")
    /// or as "NAME TOKEN"; '#' starts a comment. Re-read when it changes, so
    /// tokens rotate without a restart.
    #[arg(long, env = "SHEPHERD_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Read-only token: Get, List and Watch calls only. Prefer
    /// SHEPHERD_VIEWER_TOKEN_FILE.
    #[arg(
        long,
        env = "SHEPHERD_VIEWER_TOKEN",
        hide_env_values = true,
        conflicts_with = "viewer_token_file"
    )]
    pub viewer_token: Option<String>,

    /// File holding the viewer tokens (the admin token file's format).
    #[arg(long, env = "SHEPHERD_VIEWER_TOKEN_FILE")]
    pub viewer_token_file: Option<PathBuf>,

    /// Bearer token agents must send on their Connect stream; separate from
    /// the admin token. Prefer SHEPHERD_AGENT_TOKEN_FILE.
    #[arg(
        long,
        env = "SHEPHERD_AGENT_TOKEN",
        hide_env_values = true,
        conflicts_with = "agent_token_file"
    )]
    pub agent_token: Option<String>,

    /// File holding the agent tokens (the admin token file's format).
    #[arg(long, env = "SHEPHERD_AGENT_TOKEN_FILE")]
    pub agent_token_file: Option<PathBuf>,

    /// How often token files (and TLS files) are checked for changes. A
    /// file that changes into something unreadable is logged and the
    /// previous contents stay in force.
    #[arg(long, env = "SHEPHERD_RELOAD_INTERVAL", default_value = "5s", value_parser = positive_duration)]
    pub reload_interval: Duration,

    /// Certificate chain (PEM) to serve TLS with, on the gRPC and admin
    /// listeners. Needs --tls-key.
    #[arg(long, env = "SHEPHERD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "SHEPHERD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM) of client certificates (mTLS). Agents must
    /// then present a certificate from this CA whose DNS or URI subject
    /// alternative name is their agent id; operators may present one or
    /// not. Needs --tls-cert.
    #[arg(long, env = "SHEPHERD_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Allow listening on a non-loopback address with no token configured,
    /// so anyone who can reach the port can change policies.
    #[arg(long, env = "SHEPHERD_INSECURE")]
    pub insecure: bool,

    /// Most gRPC connections open at once (default: half the open-file
    /// limit). Past it, a new connection closes the oldest one still on its
    /// TLS handshake or HTTP/2 preface, or is closed at once when there is
    /// none; agents then reconnect with backoff.
    #[arg(long, env = "SHEPHERD_MAX_CONNECTIONS", value_parser = at_least_one)]
    pub max_connections: Option<usize>,

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
    /// Each role with its token given directly and its token file.
    fn token_sources(&self) -> [(Role, Option<&str>, Option<&PathBuf>); 3] {
        [
            (
                Role::Admin,
                self.admin_token.as_deref(),
                self.admin_token_file.as_ref(),
            ),
            (
                Role::Viewer,
                self.viewer_token.as_deref(),
                self.viewer_token_file.as_ref(),
            ),
            (
                Role::Agent,
                self.agent_token.as_deref(),
                self.agent_token_file.as_ref(),
            ),
        ]
    }

    /// The token files, watched for changes.
    pub fn token_files(&self) -> Vec<PathBuf> {
        self.token_sources()
            .into_iter()
            .filter_map(|(_, _, file)| file.cloned())
            .collect()
    }

    /// Every token from the flags, the variables and the files.
    pub fn read_tokens(&self) -> Result<TokenSet, String> {
        let mut credentials = Vec::new();
        for (role, value, file) in self.token_sources() {
            match (value, file) {
                (Some(v), _) => {
                    let token =
                        Token::new(v).map_err(|rule| format!("{} token: {rule}", role.name()))?;
                    credentials.push(Credential::new(role.name(), role, token)?);
                }
                (None, Some(path)) => {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        format!("{} token file {}: {e}", role.name(), path.display())
                    })?;
                    credentials.extend(parse_token_file(role, path, &text)?);
                }
                (None, None) => {}
            }
        }
        TokenSet::new(credentials)
    }

    /// The TLS files, if TLS is on.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
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

    /// Tokens come from flags and files of each role; an empty file is
    /// refused with its path.
    #[test]
    fn reads_token_files() {
        let dir = tempfile::tempdir().unwrap();
        let admin = dir.path().join("admin");
        let viewer = dir.path().join("viewer");
        std::fs::write(&admin, "s3cret\n").unwrap();
        std::fs::write(&viewer, "dashboard v1\ngrafana v2\n").unwrap();
        let args = Cli::try_parse_from([
            "shepherd-control-plane",
            "--admin-token-file",
            admin.to_str().unwrap(),
            "--viewer-token-file",
            viewer.to_str().unwrap(),
            "--agent-token",
            "agent-1",
        ])
        .unwrap()
        .serve;
        let set = args.read_tokens().unwrap();
        assert_eq!(
            (
                set.count(Role::Admin),
                set.count(Role::Viewer),
                set.count(Role::Agent)
            ),
            (1, 2, 1)
        );
        assert_eq!(args.token_files(), vec![admin.clone(), viewer]);
        std::fs::write(&admin, "\n").unwrap();
        let err = args.read_tokens().unwrap_err();
        assert!(err.contains("holds no admin token"), "{err}");
        assert!(err.contains(admin.to_str().unwrap()), "{err}");
    }
}
