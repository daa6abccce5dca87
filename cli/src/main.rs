//! `shepherdctl`: policies, rollouts and agents of a Shepherd control plane,
//! over the same gRPC API and bearer token as grpcurl.

mod client;
mod commands;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Drive a Shepherd control plane: apply policies, run and watch rollouts,
/// list agents.
#[derive(Debug, Parser)]
#[command(name = "shepherdctl", version)]
pub struct Cli {
    #[command(flatten)]
    pub conn: Conn,
    /// Output format of reads.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the control plane is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// The control plane's gRPC address (http://HOST:PORT, https://HOST:PORT
    /// for one serving TLS, or HOST:PORT).
    #[arg(
        long,
        global = true,
        env = "SHEPHERD_SERVER",
        default_value = "http://127.0.0.1:4100"
    )]
    pub server: String,
    /// The admin token ("authorization: Bearer <token>"). Prefer
    /// SHEPHERD_ADMIN_TOKEN_FILE: a flag is visible in the process list.
    #[arg(
        long,
        global = true,
        env = "SHEPHERD_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// File holding the admin token: the token alone, or one "NAME TOKEN"
    /// line (the control plane's token file format).
    #[arg(long, global = true, env = "SHEPHERD_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) to verify an https:// control plane with
    /// (default: the public web roots).
    #[arg(long, global = true, env = "SHEPHERD_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables and sentences.
    Text,
    /// Protobuf JSON, as grpcurl prints it.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, read, list, delete policies and read their history.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Start, inspect, steer and watch rollouts.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// The agents connected to the fleet.
    #[command(subcommand)]
    Agents(AgentsCommand),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Create the policy in FILE (JSON or YAML), or replace it at its latest
    /// revision.
    Apply {
        /// The policy file (JSON or YAML; one policy, or a list as the
        /// agent's policy files hold); "-" reads standard input.
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// Check it and show the result without storing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show a policy (its latest revision, or --revision).
    Get {
        name: String,
        #[arg(long, default_value_t = 0)]
        revision: i64,
    },
    /// List policies.
    List,
    /// Delete a policy (the deletion is a revision too).
    Delete { name: String },
    /// Every revision of a policy, newest first.
    History { name: String },
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout of the policy's candidate.
    Start {
        policy: String,
        #[arg(long, default_value = "")]
        reason: String,
        /// Then watch it until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// The policy's latest rollout (or --number), and its recent events.
    Status {
        policy: String,
        #[arg(long, default_value_t = 0)]
        number: i64,
    },
    /// Hold the rollout at its current weight.
    Pause(Steer),
    /// Go on from a pause (the stage starts over).
    Resume(Steer),
    /// Go to the next stage now (--full: straight to 100% and success).
    Promote {
        #[command(flatten)]
        steer: Steer,
        #[arg(long)]
        full: bool,
    },
    /// Roll back to 0% now.
    Abort(Steer),
    /// Start again a rollout that ended without success.
    Retry(Steer),
    /// Follow a rollout live: stage ladder, weight, gates against limits,
    /// recent events. Ends when the rollout does.
    Watch {
        policy: String,
        #[arg(long, default_value_t = 0)]
        number: i64,
    },
}

#[derive(Debug, Args)]
pub struct Steer {
    pub policy: String,
    /// The rollout's number (default: the latest).
    #[arg(long, default_value_t = 0)]
    pub number: i64,
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Every agent the fleet knows, connected or not.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&shepherd_observe::error_chain(e.as_ref())),
    }
}

#[allow(clippy::print_stderr)]
fn fail(message: &str) -> ExitCode {
    eprintln!("shepherdctl: {message}");
    ExitCode::FAILURE
}
