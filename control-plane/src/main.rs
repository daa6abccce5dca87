//! `shepherd-control-plane`: parse flags, set up logging, run until SIGINT or
//! SIGTERM, and map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use shepherd_control_plane::config::LogFormat;
use shepherd_control_plane::config::{Cli, Command};
use shepherd_control_plane::server;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (command, log) = match cli.command {
        None => (Command::Serve(cli.serve.clone()), cli.serve.log.clone()),
        Some(Command::Serve(args)) => {
            let log = args.log.clone();
            (Command::Serve(args), log)
        }
        Some(Command::Migrate(args)) => {
            let log = args.log.clone();
            (Command::Migrate(args), log)
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let outcome = runtime.block_on(async {
        let json = matches!(log.log_format, LogFormat::Json);
        let observe = match shepherd_observe::init(&log.log, json, "shepherd-control-plane") {
            Ok(o) => o,
            Err(e) => return Err(format!("logging: {e}")),
        };
        let outcome = match command {
            Command::Serve(args) => {
                let shutdown = CancellationToken::new();
                tokio::spawn(shepherd_observe::cancel_on_signal(shutdown.clone()));
                server::run(args, shutdown).await
            }
            Command::Migrate(args) => server::open_store(&args.database).await.map(|_| {
                tracing::info!("migrations applied");
            }),
        }
        .map_err(|e| e.to_string());
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

/// Exits with failure; the message was logged already once logging is up.
fn fail(message: &str) -> ExitCode {
    #[allow(clippy::print_stderr)]
    if !tracing::dispatcher::has_been_set() {
        eprintln!("error: {message}");
    }
    ExitCode::FAILURE
}
