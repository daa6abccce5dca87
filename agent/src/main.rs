//! `shepherd-agent`: parse flags, set up logging, load the policy file, serve
//! until SIGINT or SIGTERM, drain, exit.
//!
//! Threads: one worker per CPU (or `--workers`), each a single-threaded event
//! loop with its own listener socket on the shared port and its own upstream
//! connection pools, so a request never hops threads; plus a control thread
//! for the admin listener, reloads and signals.
//!
//! Shutdown phases: readiness turns false; the workers stop accepting and let
//! in-flight requests (streams included) finish for up to the grace period;
//! the control tasks stop.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use shepherd_agent::config::Cli;
use shepherd_agent::control::{self, ControlSettings};
use shepherd_agent::proxy::Limits;
use shepherd_agent::runtime::Registry;
use shepherd_agent::server::ServerSettings;
use shepherd_agent::state::StateDir;
use shepherd_agent::upstream::{self, Tls};
use shepherd_agent::{Agent, admin, reload, server};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let control = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let outcome = control.block_on(async {
        let json = matches!(cli.log_format, shepherd_agent::config::LogFormat::Json);
        let observe = shepherd_observe::init(&cli.log, json, "shepherd-agent")
            .map_err(|e| format!("logging: {e}"))?;
        let outcome = run(cli).await;
        if let Err(e) = &outcome {
            tracing::error!("{e}");
        }
        observe.finish().await;
        outcome
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let workers = match cli.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let tls = Tls::new(cli.upstream_ca_file.as_deref())?;
    let limits = Limits {
        max_request_body: cli.max_request_bytes,
        retry_body_limit: cli.retry_body_limit,
        max_concurrent: cli.max_concurrent,
        cost_header: cli.cost_header,
    };
    let registry = Registry::new(tls).with_workers(workers);
    let agent = Arc::new(Agent::new(registry, limits, cli.labels.0.clone()));
    let control_settings = if cli.control_plane.is_empty() {
        None
    } else {
        let agent_id = cli
            .agent_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", control::hostname(), cli.listen.port()));
        shepherd_proto::validate::check_agent_id(&agent_id)
            .map_err(|rule| format!("--agent-id {agent_id:?}: {rule}"))?;
        for url in &cli.control_plane {
            let ok = url.parse::<http::Uri>().ok().is_some_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !ok {
                return Err(format!(
                    "--control-plane {url:?}: must be an http:// or https:// URL with a host"
                ));
            }
        }
        let mut settings = ControlSettings::new(cli.control_plane.clone(), agent_id);
        settings.token = cli.agent_token();
        if let Some(token) = &settings.token {
            token.read()?;
        }
        settings.tls = control::ClientTls {
            ca: cli.control_plane_ca.clone(),
            cert: cli.control_plane_cert.clone(),
            key: cli.control_plane_key.clone(),
        };
        settings.tls.config(&settings.endpoints)?;
        settings.state = Some(StateDir::open(&cli.state_dir)?);
        settings.report_interval = cli.report_interval;
        settings.urgent_failures = cli.urgent_report_failures;
        settings.urgent_min_interval = cli.urgent_report_min_interval;
        settings.loss_ttl = cli.control_plane_loss_ttl;
        Some(settings)
    };
    match (&cli.policy_file, &control_settings) {
        (Some(path), _) => {
            reload::load(&agent, path)
                .map_err(|e| format!("cannot start with the policy file: {e}"))?;
        }
        (None, Some(s)) => {
            info!(agent_id = %s.agent_id, control_plane = ?s.endpoints, "policies come from the control plane");
        }
        (None, None) => {
            return Err(
                "no policies to serve: set --control-plane (SHEPHERD_AGENT_CONTROL_PLANE) or --policy-file (SHEPHERD_AGENT_POLICY_FILE)"
                    .into(),
            );
        }
    }
    let listeners = server::bind_shared(cli.listen, workers)
        .map_err(|e| format!("cannot listen on {}: {e}", cli.listen))?;
    let proxy_addr = listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .ok_or("no listener")?;
    let admin_listener = TcpListener::bind(cli.admin_listen)
        .await
        .map_err(|e| format!("cannot listen on {} (admin): {e}", cli.admin_listen))?;
    let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;

    let signalled = CancellationToken::new();
    let shutdown = CancellationToken::new();
    let background = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(shepherd_observe::cancel_on_signal(signalled.clone()));
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
    match control_settings {
        Some(settings) => {
            tasks.spawn(control::run(agent.clone(), settings, background.clone()));
        }
        None => {
            tasks.spawn(control::retire_counters(agent.clone(), background.clone()));
        }
    }
    // On a signal: not ready at once, then (after the pre-stop delay, for
    // load balancers to stop sending) the listener closes and the drain
    // starts.
    tasks.spawn({
        let (agent, shutdown, delay) = (agent.clone(), shutdown.clone(), cli.shutdown_delay);
        async move {
            signalled.cancelled().await;
            agent.set_stopping();
            if !delay.is_zero() {
                info!(delay = ?delay, "not ready; the listener closes after the delay");
                tokio::time::sleep(delay).await;
            }
            shutdown.cancel();
        }
    });

    let settings = ServerSettings {
        header_read_timeout: cli.header_read_timeout,
        max_header_bytes: cli.max_header_bytes,
        shutdown_grace: cli.shutdown_grace,
        ..ServerSettings::default()
    };
    let settings = ServerSettings {
        max_connections: cli.max_connections.unwrap_or(settings.max_connections),
        ..settings
    };
    let mut threads = Vec::with_capacity(workers);
    for (index, listener) in listeners.into_iter().enumerate() {
        let (proxy, settings, shutdown) = (agent.proxy.clone(), settings.clone(), shutdown.clone());
        let thread = std::thread::Builder::new()
            .name(format!("shepherd-worker-{index}"))
            .spawn(move || -> Result<(), String> {
                upstream::set_worker(index);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).map_err(|e| e.to_string())?;
                    server::serve(listener, proxy, settings, shutdown).await;
                    Ok(())
                })
            })
            .map_err(|e| format!("cannot start worker {index}: {e}"))?;
        threads.push(thread);
    }
    info!(proxy = %proxy_addr, admin = %admin_addr, workers, "agent listening");

    let outcome = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| Err("a worker panicked".into())))
            .collect::<Result<Vec<()>, String>>()
    })
    .await
    .map_err(|e| e.to_string())?;
    shutdown.cancel();
    background.cancel();
    tasks.close();
    tasks.wait().await;
    outcome?;
    info!("agent stopped");
    Ok(())
}

/// Exits with failure; the message was logged already once logging is up.
fn fail(message: &str) -> ExitCode {
    #[allow(clippy::print_stderr)]
    if !tracing::dispatcher::has_been_set() {
        eprintln!("error: {message}");
    }
    ExitCode::FAILURE
}
