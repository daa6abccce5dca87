//! Traces of the `shepherd-agent` binary, exported over OTLP/gRPC to a
//! receiver: the request span continues the app's `traceparent`, each
//! upstream attempt is a child span, and the upstream gets the attempt's
//! context as its `traceparent`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use shepherd_tests::http::Client;
use shepherd_tests::mock::MockProvider;
use shepherd_tests::otlp::{Collector, Received};
use shepherd_tests::process::{Spawned, logged_addr};

const BIN: &str = env!("CARGO_BIN_EXE_shepherd-agent");
const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_SPAN: &str = "00f067aa0ba902b7";

/// Starts the agent on `policy` (written to a file in `dir`); returns it and
/// a client of its proxy.
fn start(
    dir: &tempfile::TempDir,
    policy: serde_json::Value,
    envs: &[(&str, &str)],
) -> (Spawned, Client) {
    let file = dir.path().join("policy.json");
    std::fs::write(&file, policy.to_string()).unwrap();
    let agent = Spawned::start(
        BIN,
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--policy-file",
            file.to_str().unwrap(),
        ],
        envs,
    );
    let line = agent.wait_for_line("agent listening", 0);
    let proxy = logged_addr(&line, "proxy");
    (agent, Client::tcp(&format!("http://{proxy}")))
}

/// A chat completion carrying `traceparent`.
async fn chat(c: &Client, traceparent: &str) -> shepherd_tests::http::Reply {
    c.post(
        "/v1/chat/completions",
        BODY,
        &[("traceparent", traceparent)],
    )
    .await
}

/// The request spans (by their policy attribute) or the attempt spans.
fn named<'a>(spans: &'a [Received], kind: &str) -> Vec<&'a Received> {
    let key = match kind {
        "request" => "shepherd.split.weight",
        _ => "shepherd.attempt",
    };
    spans.iter().filter(|s| s.attr(key).is_some()).collect()
}

/// The candidate's connection is refused, so the request falls back to the
/// baseline: one request span under the app's span, two attempt spans under
/// it, and the baseline saw the second attempt's context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_attempt_spans_reach_the_collector() {
    let collector = Collector::start().await;
    let provider = MockProvider::new("baseline");
    let addr = provider.serve_tcp().await;
    let dead = shepherd_tests::net::RefusedPort::new();
    let dir = tempfile::tempdir().unwrap();
    let policy = json!({
        "name": "chat", "match": {"path_prefix": "/v1/"},
        "currency": "EUR",
        "backends": [
            {"name": "baseline", "base_url": format!("http://{addr}"),
             "prices": {"input_per_million": 2.5, "output_per_million": 8.0}},
            {"name": "candidate", "base_url": format!("http://{}", dead.addr), "model_map": {"gpt-4o": "open-model"}}
        ],
        "traffic": {"baseline": "baseline", "candidate": "candidate", "candidate_weight": 10000},
        "fallback": ["baseline"]
    });
    let endpoint = collector.endpoint();
    let (agent, c) = start(
        &dir,
        policy,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "chat-sidecar"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    );
    agent.wait_for_line("trace export on", 0);

    let traceparent = format!("00-{TRACE_ID}-{APP_SPAN}-01");
    let r = chat(&c, &traceparent).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), "baseline");

    let spans = collector
        .wait_until(|s| named(s, "request").len() == 1 && named(s, "attempt").len() == 2)
        .await;
    let request = named(&spans, "request")[0];
    assert_eq!(request.service, "chat-sidecar");
    assert_eq!(request.span.name, "chat gpt-4o");
    assert_eq!(request.trace_id(), TRACE_ID);
    assert_eq!(request.parent_span_id(), APP_SPAN);
    for (key, value) in [
        ("shepherd.policy", "chat"),
        ("shepherd.backend.selected", "candidate"),
        ("shepherd.backend", "baseline"),
        ("shepherd.split.weight", "10000"),
        ("shepherd.attempts", "2"),
        ("shepherd.shadow", "false"),
        ("http.response.status_code", "200"),
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.request.model", "gpt-4o"),
        ("gen_ai.usage.input_tokens", "10"),
        ("gen_ai.usage.output_tokens", "5"),
        // 10 × 2.50 + 5 × 8.00 per million tokens.
        ("shepherd.cost", "0.000065"),
        ("shepherd.cost.currency", "EUR"),
    ] {
        assert_eq!(
            request.attr(key).as_deref(),
            Some(value),
            "{key} of {request:#?}"
        );
    }
    let decision = request.attr("shepherd.split.decision").unwrap();
    assert!(
        decision.starts_with("candidate: random bucket"),
        "{decision}"
    );

    let mut attempts = named(&spans, "attempt");
    attempts.sort_by_key(|s| s.attr("shepherd.attempt"));
    for a in &attempts {
        assert_eq!(a.trace_id(), TRACE_ID);
        assert_eq!(a.parent_span_id(), request.span_id());
    }
    let (first, second) = (attempts[0], attempts[1]);
    assert_eq!(first.span.name, "attempt candidate");
    assert_eq!(first.attr("shepherd.backend").as_deref(), Some("candidate"));
    assert_eq!(first.attr("shepherd.outcome").as_deref(), Some("connect"));
    assert_eq!(first.attr("shepherd.fallback").as_deref(), Some("false"));
    assert_eq!(second.attr("shepherd.backend").as_deref(), Some("baseline"));
    assert_eq!(second.attr("shepherd.fallback").as_deref(), Some("true"));
    assert_eq!(
        second.attr("http.response.status_code").as_deref(),
        Some("200")
    );

    // The upstream continues the trace under the attempt that reached it.
    let received = provider.received();
    let sent = received[0].headers["traceparent"].to_str().unwrap();
    assert_eq!(sent, format!("00-{TRACE_ID}-{}-01", second.span_id()));

    // A trace the app does not sample is not recorded here either: its
    // traceparent reaches the upstream as it came.
    let unsampled = format!("00-{TRACE_ID}-{APP_SPAN}-00");
    provider.clear();
    let r = chat(&c, &unsampled).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        provider.received()[0].headers["traceparent"],
        unsampled.as_str()
    );
    agent.terminate();
}

/// With no OTLP endpoint, tracing is off: nothing is said about it, and the
/// app's `traceparent` reaches the upstream untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_traceparent_passes_through() {
    let provider = MockProvider::new("baseline");
    let addr = provider.serve_tcp().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = json!({
        "name": "chat", "match": {"path_prefix": "/v1/"},
        "backends": [{"name": "baseline", "base_url": format!("http://{addr}")}],
        "traffic": {"baseline": "baseline"}
    });
    let (agent, c) = start(&dir, policy, &[]);
    let traceparent = format!("00-{TRACE_ID}-{APP_SPAN}-01");
    let r = chat(&c, &traceparent).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        provider.received()[0].headers["traceparent"],
        traceparent.as_str()
    );
    let (_, log) = agent.terminate();
    assert!(!log.contains("trace export"), "{log}");
    assert!(!log.to_lowercase().contains("opentelemetry"), "{log}");
}
