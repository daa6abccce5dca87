//! `shepherd-agent`: parse flags, set up logging, load the policy file, serve
//! the proxy and admin listeners until SIGINT or SIGTERM, drain, exit.
//!
//! Shutdown phases: readiness turns false; the listeners stop accepting;
//! in-flight requests (streams included) finish for up to the grace period;
//! background tasks stop.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use shepherd_agent::config::Cli;
use shepherd_agent::proxy::Limits;
use shepherd_agent::runtime::Registry;
use shepherd_agent::server::ServerSettings;
use shepherd_agent::upstream::Tls;
use shepherd_agent::{Agent, admin, logging, reload, server};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init(cli.log_format, &cli.log) {
        return fail(&format!("logging: {e}"));
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if cli.worker_threads > 0 {
        runtime.worker_threads(cli.worker_threads);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let tls = Tls::new(cli.upstream_ca_file.as_deref())?;
    let limits = Limits {
        max_request_body: cli.max_request_bytes,
        retry_body_limit: cli.retry_body_limit,
        max_concurrent: cli.max_concurrent,
    };
    let agent = Arc::new(Agent::new(Registry::new(tls), limits, cli.labels.0.clone()));
    match &cli.policy_file {
        Some(path) => {
            reload::reload(&agent, path)
                .map_err(|e| format!("cannot start with the policy file: {e}"))?;
        }
        None => warn!("no --policy-file: every request gets 404 until policies arrive"),
    }
    let proxy_listener = TcpListener::bind(cli.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cli.listen))?;
    let admin_listener = TcpListener::bind(cli.admin_listen)
        .await
        .map_err(|e| format!("cannot listen on {} (admin): {e}", cli.admin_listen))?;
    info!(
        proxy = %proxy_listener.local_addr().map_err(|e| e.to_string())?,
        admin = %admin_listener.local_addr().map_err(|e| e.to_string())?,
        "agent listening"
    );

    let shutdown = CancellationToken::new();
    let background = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(logging::cancel_on_signal(shutdown.clone()));
    tasks.spawn(admin::serve(
        admin_listener,
        agent.clone(),
        background.clone(),
    ));
    if let Some(path) = cli.policy_file.clone() {
        tasks.spawn(reload::watch(
            agent.clone(),
            path,
            cli.policy_poll,
            background.clone(),
        ));
    }
    let settings = ServerSettings {
        header_read_timeout: cli.header_read_timeout,
        max_header_bytes: cli.max_header_bytes,
        shutdown_grace: cli.shutdown_grace,
        ..ServerSettings::default()
    };
    let stopping = {
        let agent = agent.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            agent.set_stopping();
        }
    };
    tasks.spawn(stopping);
    server::serve(
        proxy_listener,
        agent.proxy.clone(),
        settings,
        shutdown.clone(),
    )
    .await;
    background.cancel();
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    info!("agent stopped");
    Ok(())
}

fn fail(message: &str) -> ExitCode {
    tracing::error!("{message}");
    #[allow(clippy::print_stderr)]
    if !tracing::dispatcher::has_been_set() {
        eprintln!("error: {message}");
    }
    ExitCode::FAILURE
}
