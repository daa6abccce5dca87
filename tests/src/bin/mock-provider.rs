//! A mock LLM provider for trying Shepherd locally and for demos: answers
//! OpenAI-compatible and Anthropic requests (JSON and SSE) like the test kit's
//! mock, and can be told to fail, slow down or rate-limit.
//!
//!   mock-provider [--listen 127.0.0.1:9001] [--name NAME] [--api openai|anthropic]
//!                 [--error-rate F] [--error-status 503] [--delay-ms N] [--chunks N]
//!                 [--chunk-delay-ms N] [--mode MODE] [--cached-tokens N]
//!
//! Without `--api` it answers both API families on any path. `--api
//! anthropic` serves only `/v1/messages`, strictly, as Anthropic does
//! (x-api-key and anthropic-version required, unknown fields refused,
//! Anthropic-shaped errors); `--api openai` serves only OpenAI's paths
//! (a bearer key required, unknown arguments refused). Requests that offer
//! tools get a tool call back (streamed as argument deltas).
//! `--error-rate 0.2` fails exactly a fifth of requests, evenly spread.
//! `--mode` answers every request as a misconfigured provider does:
//! unauthorized, forbidden, model-not-found, unsupported-parameter,
//! quota-exhausted, malformed, empty-choices. A request can ask for a
//! failure itself with `x-mock-status: 500` or `x-mock-mode: MODE`.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use shepherd_tests::mock::{Api, MockProvider, Mode};

const USAGE: &str = "mock-provider [--listen 127.0.0.1:9001] [--name NAME] [--api openai|anthropic]
              [--error-rate F] [--error-status 503] [--delay-ms N] [--chunks N]
              [--chunk-delay-ms N] [--cached-tokens N]
              [--mode unauthorized|forbidden|model-not-found|unsupported-parameter|
                      quota-exhausted|malformed|empty-choices]";

fn main() -> ExitCode {
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9001));
    let mut name = String::from("mock");
    let mut api = None;
    let provider_settings = |p: &MockProvider, flag: &str, value: &str| -> Result<(), String> {
        let number = |v: &str| v.parse::<f64>().map_err(|e| format!("{flag}: {e}"));
        match flag {
            "--error-rate" => {
                let rate = number(value)?;
                if !(0.0..=1.0).contains(&rate) {
                    return Err("--error-rate: must be from 0 to 1".into());
                }
                p.set(|b| b.error_rate = Some(rate));
            }
            "--error-status" => {
                let status = number(value)? as u16;
                p.set(|b| b.error_status = status);
            }
            "--delay-ms" => {
                let ms = number(value)?;
                p.set(|b| b.delay = Duration::from_secs_f64(ms / 1000.0));
            }
            "--chunks" => {
                let n = number(value)? as u32;
                p.set(|b| b.chunks = n);
            }
            "--cached-tokens" => {
                let n = value.parse::<u32>().map_err(|e| format!("{flag}: {e}"))?;
                p.set(|b| b.cached_tokens = n);
            }
            "--chunk-delay-ms" => {
                let ms = number(value)?;
                p.set(|b| b.chunk_delay = Duration::from_secs_f64(ms / 1000.0));
            }
            "--mode" => {
                let mode = Mode::parse(value).ok_or_else(|| {
                    let names: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
                    format!("--mode: must be one of {}", names.join(", "))
                })?;
                p.set(|b| b.mode = Some(mode));
            }
            other => return Err(format!("unknown flag {other}")),
        }
        Ok(())
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let mut settings = Vec::new();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            eprintln!("mock-provider: {} needs a value", pair[0]);
            return ExitCode::from(2);
        };
        match flag.as_str() {
            "--listen" => match value.parse() {
                Ok(a) => listen = a,
                Err(e) => {
                    eprintln!("mock-provider: --listen: {e}");
                    return ExitCode::from(2);
                }
            },
            "--name" => name = value.clone(),
            "--api" => match Api::parse(value) {
                Some(a) => api = Some(a),
                None => {
                    eprintln!("mock-provider: --api: must be openai or anthropic");
                    return ExitCode::from(2);
                }
            },
            _ => settings.push((flag.clone(), value.clone())),
        }
    }
    let provider = MockProvider::serving(&name, api);
    for (flag, value) in &settings {
        if let Err(e) = provider_settings(&provider, flag, value) {
            eprintln!("mock-provider: {e}");
            return ExitCode::from(2);
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mock-provider: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("mock-provider: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().map_or(listen, |a| a);
        println!("mock-provider {name} listening on {addr}");
        tokio::select! {
            () = provider.serve_listener(listener) => ExitCode::SUCCESS,
            _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
        }
    })
}
