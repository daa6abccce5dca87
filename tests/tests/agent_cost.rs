//! What answers cost, through a running agent in front of mock providers
//! on TCP: plain, streamed (usage asked for on the app's behalf and kept
//! from it), cached-token, retried and fallen-back, translated and shadow
//! answers are priced exactly from the usage they report; answers that
//! cannot be priced are counted as unpriced, never as free.
//!
//! The mock reports 10 prompt and 5 completion tokens for a chat answer
//! (a stream reports one completion token per chunk, 5 by default), and
//! 11 input tokens for an Anthropic answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};
use shepherd_agent::proxy::Limits;
use shepherd_agent::telemetry::SpendKind;
use shepherd_proto::cost::Spend;
use shepherd_tests::agent::{AgentOptions, TestAgent};
use shepherd_tests::fixtures::merge_json;
use shepherd_tests::http::{StreamEnd, read_stream};
use shepherd_tests::mock::{Fail, MockProvider, Mode};

const CHAT: &str = "/v1/chat/completions";
const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM_BODY: &str =
    r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// GPT-4.1's prices ($2.50/$8.00, cached input $1.25), in millionths per
/// million tokens, that is pico-units per token.
const A_IN: u128 = 2_500_000;
const A_OUT: u128 = 8_000_000;
const A_CACHED: u128 = 1_250_000;
/// A cheap model's ($0.10/$0.42).
const B_IN: u128 = 100_000;
const B_OUT: u128 = 420_000;

fn prices(input: f64, output: f64) -> Value {
    json!({"input_per_million": input, "output_per_million": output})
}

/// Baseline "a" at GPT-4.1's prices (or as `a_backend` says) takes every
/// request; "b" is cheap.
fn policy(a: SocketAddr, b: SocketAddr, extra: Value, a_backend: Value) -> String {
    let mut backend_a = json!({"name": "a", "base_url": format!("http://{a}")});
    merge_json(&mut backend_a, a_backend);
    let mut p = json!({
        "name": "chat",
        "match": {"path_prefix": "/v1/"},
        "currency": "USD",
        "backends": [
            backend_a,
            {"name": "b", "base_url": format!("http://{b}"), "prices": prices(0.1, 0.42)}
        ],
        "traffic": {"baseline": "a", "candidate": "b", "candidate_weight": 0}
    });
    merge_json(&mut p, extra);
    p.to_string()
}

async fn setup(extra: Value) -> (MockProvider, MockProvider, TestAgent) {
    let a_backend = json!({"prices": {
        "input_per_million": 2.5, "output_per_million": 8.0, "cached_input_per_million": 1.25
    }});
    setup_with(extra, a_backend).await
}

async fn setup_with(extra: Value, a_backend: Value) -> (MockProvider, MockProvider, TestAgent) {
    let a = MockProvider::new("a");
    let b = MockProvider::new("b");
    let (aa, ba) = (a.serve_tcp().await, b.serve_tcp().await);
    let options = AgentOptions {
        limits: Limits {
            cost_header: true,
            ..Limits::default()
        },
        ..AgentOptions::default()
    };
    let agent = TestAgent::start_with(&policy(aa, ba, extra, a_backend), options).await;
    (a, b, agent)
}

/// What backend `backend` spent, by kind: pico-units, answers priced and
/// answers unpriced.
fn spend(agent: &TestAgent, backend: &str, kind: SpendKind) -> (u128, u64, u64) {
    let s = agent
        .agent
        .registry
        .stats
        .totals()
        .get(&("chat".to_string(), backend.to_string()))
        .map_or(Spend::default(), |t| t.cost[kind as usize]);
    (s.picos, s.priced, s.unpriced)
}

fn priced(picos: u128, priced: u64) -> (u128, u64, u64) {
    (picos, priced, 0)
}

const NOTHING: (u128, u64, u64) = (0, 0, 0);

fn json_request(path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// The value of a `/metrics` line that starts with `start`, as written.
async fn metric_text(agent: &TestAgent, start: &str) -> String {
    let metrics = agent.admin().get("/metrics").await;
    metrics
        .text()
        .lines()
        .find(|l| l.starts_with(start))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_else(|| panic!("no metric line starting {start:?}"))
        .to_string()
}

/// Plain, streamed and cached-token answers cost exactly what their usage
/// says; a stream that did not ask for usage is asked on the app's behalf
/// and the usage chunk is kept from it, while one that asked keeps it.
#[tokio::test]
async fn prices_plain_streamed_and_cached_answers_exactly() {
    let (a, _b, agent) = setup(json!({})).await;
    let c = agent.client();

    let r = c.post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let one = 10 * A_IN + 5 * A_OUT;
    assert_eq!(one, 65_000_000);
    assert_eq!(r.header("x-shepherd-cost"), Some("0.000065 USD"));
    assert_eq!(spend(&agent, "a", SpendKind::Served), priced(one, 1));

    // A stream that did not ask for usage.
    let resp = agent.client().send(json_request(CHAT, STREAM_BODY)).await;
    assert_eq!(resp.headers().get("x-shepherd-cost"), None);
    let (text, end) = read_stream(resp).await;
    assert_eq!(end, StreamEnd::Clean);
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        !text.contains("prompt_tokens"),
        "the usage chunk passed: {text}"
    );
    assert!(text.contains("\"finish_reason\":\"stop\""), "{text}");
    let sent: Value = serde_json::from_slice(&a.received().last().unwrap().body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(spend(&agent, "a", SpendKind::Served), priced(2 * one, 2));

    // A stream that asked gets its usage chunk.
    let asked = r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let (text, end) = read_stream(agent.client().send(json_request(CHAT, asked)).await).await;
    assert_eq!(end, StreamEnd::Clean);
    assert!(text.contains("\"prompt_tokens\":10"), "{text}");
    assert_eq!(spend(&agent, "a", SpendKind::Served), priced(3 * one, 3));

    // 8 of 18 prompt tokens read from the cache.
    a.set(|m| m.cached_tokens = 8);
    let r = c.post(CHAT, BODY, &[]).await;
    let cached = 10 * A_IN + 8 * A_CACHED + 5 * A_OUT;
    assert_eq!(cached, 75_000_000);
    assert_eq!(r.header("x-shepherd-cost"), Some("0.000075 USD"));
    assert_eq!(
        spend(&agent, "a", SpendKind::Served),
        priced(3 * one + cached, 4)
    );
    assert_eq!(
        metric_text(
            &agent,
            "shepherd_agent_cost_total{policy=\"chat\",backend=\"a\",kind=\"served\"}"
        )
        .await,
        "0.00027"
    );
    assert_eq!(
        metric_text(
            &agent,
            "shepherd_agent_unpriced_answers_total{policy=\"chat\",backend=\"a\",kind=\"served\"}"
        )
        .await,
        "0"
    );
    agent.stop().await;
}

/// A malformed 200 answer was billed: it counts as a failed spend of its
/// backend, apart from what the fallback served; an error answer is not
/// billed at all.
#[tokio::test]
async fn billed_failures_and_fallbacks_are_kept_apart() {
    let (a, _b, agent) = setup(json!({
        "retry": {"max_attempts": 2, "backoff_base": "0.001s"},
        "fallback": ["b"]
    }))
    .await;
    a.set(|m| m.mode = Some(Mode::EmptyChoices));
    let r = agent.client().post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.backend(), "b");
    let tried_a = a.count() as u64;
    assert!(tried_a >= 1);
    // Each empty answer reported 10 prompt tokens and none out.
    assert_eq!(
        spend(&agent, "a", SpendKind::Failed),
        priced(u128::from(tried_a) * 10 * A_IN, tried_a)
    );
    assert_eq!(spend(&agent, "a", SpendKind::Served), NOTHING);
    let cheap = 10 * B_IN + 5 * B_OUT;
    assert_eq!(cheap, 3_100_000);
    assert_eq!(spend(&agent, "b", SpendKind::Served), priced(cheap, 1));
    assert_eq!(r.header("x-shepherd-cost"), Some("0.0000031 USD"));

    // Server errors are not billed.
    a.set(|m| {
        m.mode = None;
        m.fail = Some(Fail {
            status: 503,
            retry_after: None,
            times: None,
        });
    });
    let r = agent.client().post(CHAT, BODY, &[]).await;
    assert_eq!(r.backend(), "b");
    assert_eq!(
        spend(&agent, "a", SpendKind::Failed),
        priced(u128::from(tried_a) * 10 * A_IN, tried_a)
    );
    assert_eq!(spend(&agent, "b", SpendKind::Served), priced(2 * cheap, 2));
    agent.stop().await;
}

/// Prices follow the model sent (after the model map), for requests in
/// the backend's own API and translated ones; a model with no price, and
/// an answer cut off before its usage, are unpriced, never free.
#[tokio::test]
async fn prices_follow_the_model_sent_and_unpriced_answers_are_counted() {
    let (a, _b, agent) = setup_with(
        json!({}),
        json!({"model_map": {"gpt-4o": "mini"},
               "model_prices": {"mini": prices(0.1, 0.42), "big": prices(2.5, 8.0)}}),
    )
    .await;
    let c = agent.client();
    let r = c.post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.received().last().unwrap().model.as_deref(), Some("mini"));
    let mini = 10 * B_IN + 5 * B_OUT;
    assert_eq!(r.header("x-shepherd-cost"), Some("0.0000031 USD"));
    // Translated from Anthropic's API: 10 prompt tokens, 5 out, at mini's.
    let messages =
        r#"{"model":"gpt-4o","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = c.post("/v1/messages", messages, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-shepherd-cost"), Some("0.0000031 USD"));
    let big = r#"{"model":"big","messages":[{"role":"user","content":"hi"}]}"#;
    let r = c.post(CHAT, big, &[]).await;
    assert_eq!(r.header("x-shepherd-cost"), Some("0.000065 USD"));
    assert_eq!(
        spend(&agent, "a", SpendKind::Served),
        priced(2 * mini + 10 * A_IN + 5 * A_OUT, 3)
    );

    // No price for this model: unpriced.
    let other = r#"{"model":"other","messages":[{"role":"user","content":"hi"}]}"#;
    let r = c.post(CHAT, other, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-shepherd-cost"), Some("unpriced"));
    // A stream broken before its usage came: billed, unpriced.
    a.set(|m| m.cut_after = Some(2));
    let (_, end) = read_stream(c.send(json_request(CHAT, STREAM_BODY)).await).await;
    assert_eq!(end, StreamEnd::Aborted);
    let (_, priced_answers, unpriced) = spend(&agent, "a", SpendKind::Served);
    assert_eq!((priced_answers, unpriced), (3, 2));
    assert_eq!(
        metric_text(
            &agent,
            "shepherd_agent_unpriced_answers_total{policy=\"chat\",backend=\"a\",kind=\"served\"}"
        )
        .await,
        "2"
    );
    agent.stop().await;
}

/// Shadow answers are priced as shadow spend of the shadow backend, at its
/// own prices.
#[tokio::test]
async fn shadow_spend_is_its_own() {
    let (_a, b, agent) = setup(json!({"shadow": {"percent": 100.0}})).await;
    let c = agent.client();
    for _ in 0..3 {
        assert_eq!(c.post(CHAT, BODY, &[]).await.status, 200);
    }
    let (_, end) = read_stream(c.send(json_request(CHAT, STREAM_BODY)).await).await;
    assert_eq!(end, StreamEnd::Clean);
    // The shadow finishes after the app's answer: wait for it (a guard
    // against hangs, not a timing).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while spend(&agent, "b", SpendKind::Shadow).1 < 4 {
        assert!(tokio::time::Instant::now() < deadline, "no shadow spend");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The shadow's stream was asked for its usage too.
    let bodies: Vec<Value> = b
        .received()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let streamed = bodies.iter().find(|v| v["stream"] == true).unwrap();
    assert_eq!(streamed["stream_options"]["include_usage"], true);
    assert_eq!(
        spend(&agent, "b", SpendKind::Shadow),
        priced(4 * (10 * B_IN + 5 * B_OUT), 4)
    );
    assert_eq!(spend(&agent, "b", SpendKind::Served), NOTHING);
    assert_eq!(
        spend(&agent, "a", SpendKind::Served),
        priced(4 * (10 * A_IN + 5 * A_OUT), 4)
    );
    agent.stop().await;
}

/// Past the candidate's hourly spend cap the agent sends its share to the
/// baseline, and counts the trip and the requests moved; past the shadow's,
/// it stops mirroring. (The cap opening again when the hour turns is tested
/// in `spend_cap`, with the time given.)
#[tokio::test]
async fn hourly_spend_caps_send_the_candidates_share_to_the_baseline() {
    // Each cheap answer costs 0.0000031: the fourth reaches 0.00001.
    let (a, b, agent) = setup(json!({
        "traffic": {"candidate_weight": 10000, "max_candidate_spend_per_hour": 0.00001}
    }))
    .await;
    let c = agent.client();
    let mut served_by = Vec::new();
    for _ in 0..10 {
        let r = c.post(CHAT, BODY, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        served_by.push(r.backend().to_string());
    }
    assert_eq!(served_by[..4], ["b", "b", "b", "b"]);
    assert!(served_by[4..].iter().all(|s| s == "a"), "{served_by:?}");
    assert_eq!((b.count(), a.count()), (4, 6));
    let metric = |name: &str| format!("{name}{{policy=\"chat\",backend=\"b\"}}");
    assert_eq!(
        agent
            .metric(&metric("shepherd_agent_spend_cap_trips_total"))
            .await,
        1
    );
    assert_eq!(
        agent
            .metric(&metric("shepherd_agent_spend_capped_total"))
            .await,
        6
    );
    agent.stop().await;

    // The shadow stops once its own cap is reached.
    let (_a, b, agent) = setup(json!({
        "shadow": {"percent": 100.0, "max_spend_per_hour": 0.00001}
    }))
    .await;
    let c = agent.client();
    for _ in 0..4 {
        assert_eq!(c.post(CHAT, BODY, &[]).await.status, 200);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while spend(&agent, "b", SpendKind::Shadow).1 < 4 {
        assert!(tokio::time::Instant::now() < deadline, "no shadow spend");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..5 {
        assert_eq!(c.post(CHAT, BODY, &[]).await.status, 200);
    }
    assert_eq!(b.count(), 4, "no mirroring past the cap");
    assert_eq!(
        agent
            .metric(&metric("shepherd_agent_spend_capped_total"))
            .await,
        5
    );
    agent.stop().await;
}
