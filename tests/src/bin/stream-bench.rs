//! Time to first chunk of streamed chat completions.
//!
//!   stream-bench --url URL [--requests N] [--rate R] [--warmup N] [--no-stream true]
//!
//! Sends streaming requests one at a time over one keep-alive connection, at
//! a fixed rate, and measures for each the time from sending it to the first
//! chunk of its body. A request whose turn came while the previous stream was
//! still running is counted as late (the rate was too high to measure
//! cleanly). Every stream is read to its end and must end with
//! `data: [DONE]`. Prints p50/p90/p99/p99.9 in milliseconds. With
//! `--no-stream true` the requests are ordinary (non-streamed) completions and
//! the time is to the first byte of the body, for comparison.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

const PLAIN_BODY: &str = r#"{"model":"mock-gpt","messages":[{"role":"user","content":"In one short sentence, explain why a reverse proxy in front of an LLM API should add as little latency as possible."}],"max_tokens":64}"#;
const BODY: &str = r#"{"model":"mock-gpt","stream":true,"messages":[{"role":"user","content":"In one short sentence, explain why a reverse proxy in front of an LLM API should add as little latency as possible."}],"max_tokens":64}"#;

struct Args {
    url: http::Uri,
    requests: usize,
    rate: f64,
    warmup: usize,
    stream: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: "http://127.0.0.1:18000/v1/chat/completions"
            .parse()
            .map_err(|_| "default url")?,
        requests: 2000,
        rate: 200.0,
        warmup: 100,
        stream: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => args.url = value.parse().map_err(|e| format!("--url: {e}"))?,
            "--requests" => {
                args.requests = value.parse().map_err(|e| format!("--requests: {e}"))?
            }
            "--rate" => args.rate = value.parse().map_err(|e| format!("--rate: {e}"))?,
            "--warmup" => args.warmup = value.parse().map_err(|e| format!("--warmup: {e}"))?,
            "--no-stream" => {
                args.stream = !value
                    .parse::<bool>()
                    .map_err(|e| format!("--no-stream: {e}"))?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

async fn run(args: Args) -> Result<(Vec<Duration>, usize), String> {
    let host = args.url.host().ok_or("--url needs a host")?;
    let port = args.url.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut send, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let start = Instant::now();
    let mut samples = Vec::with_capacity(args.requests);
    let mut late = 0usize;
    for i in 0..args.warmup + args.requests {
        let scheduled = start + interval * i as u32;
        tokio::time::sleep_until(scheduled).await;
        let req = Request::post(args.url.path())
            .header("host", args.url.authority().map_or("", |a| a.as_str()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                if args.stream { BODY } else { PLAIN_BODY }.as_bytes(),
            )))
            .map_err(|e| e.to_string())?;
        send.ready().await.map_err(|e| e.to_string())?;
        let sent = Instant::now();
        if sent.duration_since(scheduled) > interval {
            late += 1;
        }
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        if resp.status() != 200 {
            return Err(format!("HTTP {}", resp.status()));
        }
        let mut body = resp.into_body();
        let mut first = None;
        let mut text = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("stream broke: {e}"))?;
            if let Ok(data) = frame.into_data() {
                if first.is_none() && !data.is_empty() {
                    first = Some(sent.elapsed());
                }
                text.extend_from_slice(&data);
            }
        }
        if args.stream && !text.ends_with(b"data: [DONE]\n\n") {
            return Err("a stream did not end with data: [DONE]".into());
        }
        if i >= args.warmup {
            samples.push(first.ok_or("an empty stream")?);
        }
    }
    Ok((samples, late))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("stream-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let label = args.url.to_string();
    let (requests, rate) = (args.requests, args.rate);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stream-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok((mut samples, late)) => {
            samples.sort();
            let pct = |p: f64| {
                let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
                samples[rank - 1].as_secs_f64() * 1000.0
            };
            println!(
                "stream-bench {label} | {requests} streams @{rate}/s, {late} late | first chunk p50={:.3} p90={:.3} p99={:.3} p99.9={:.3} ms",
                pct(0.5),
                pct(0.9),
                pct(0.99),
                pct(0.999)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stream-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
