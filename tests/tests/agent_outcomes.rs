//! How the agent treats each class of answer, over real TCP in front of mock
//! providers: a candidate that rejects the app (wrong key, no access,
//! unknown model, unsupported parameter, exhausted quota) or answers
//! malformed JSON falls back at once, without a retry on it, and trips its
//! breaker; the app's own mistakes pass through unchanged; an error the
//! agent already retried says `x-should-retry: false`; requests that are
//! not model calls go to the baseline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use shepherd_tests::agent::TestAgent;
use shepherd_tests::fixtures::merge_json;
use shepherd_tests::http::{StreamEnd, read_stream};
use shepherd_tests::mock::{Fail, MockProvider, Mode};

const CHAT: &str = "/v1/chat/completions";
const MESSAGES: &str = "/v1/messages";
const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM_BODY: &str =
    r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const MESSAGES_BODY: &str =
    r#"{"model":"claude-x","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#;
/// A request the API refuses whatever the backend: no `messages`.
const BAD_BODY: &str = r#"{"model":"gpt-4o"}"#;

/// Baseline "a" and candidate "b" (at `weight`) on TCP, with `extra`
/// merged into the policy.
async fn setup(weight: u32, extra: Value) -> (MockProvider, MockProvider, TestAgent) {
    setup_speaking("PROTOCOL_OPENAI", weight, extra).await
}

/// The same, both backends speaking `protocol`.
async fn setup_speaking(
    protocol: &str,
    weight: u32,
    extra: Value,
) -> (MockProvider, MockProvider, TestAgent) {
    let a = MockProvider::new("a");
    let b = MockProvider::new("b");
    let (aa, ba) = (a.serve_tcp().await, b.serve_tcp().await);
    let mut p = json!({
        "name": "chat",
        "match": {"path_prefix": "/v1/"},
        "backends": [
            {"name": "a", "base_url": format!("http://{aa}"), "protocol": protocol},
            {"name": "b", "base_url": format!("http://{ba}"), "protocol": protocol}
        ],
        "traffic": {"baseline": "a", "candidate": "b", "candidate_weight": weight}
    });
    merge_json(&mut p, extra);
    let agent = TestAgent::start(&p.to_string()).await;
    (a, b, agent)
}

fn outcome_line(backend: &str, outcome: &str) -> String {
    format!(
        "shepherd_agent_attempts_total{{policy=\"chat\",backend=\"{backend}\",outcome=\"{outcome}\"}}"
    )
}

/// Every misconfiguration of a candidate, plain and streamed, OpenAI and
/// Anthropic: with a fallback, the app gets the baseline's answer; the
/// candidate is asked once (no retry on it) and its breaker opens at once,
/// so later requests do not reach it at all. A malformed stream has started
/// before it can be judged: the app gets that one, judged malformed at its
/// end, and every later request goes to the baseline.
#[tokio::test]
async fn rejected_and_malformed_answers_fall_back_at_once() {
    for mode in Mode::ALL {
        for (path, body) in [(CHAT, BODY), (CHAT, STREAM_BODY), (MESSAGES, MESSAGES_BODY)] {
            let protocol = if path == MESSAGES {
                "PROTOCOL_ANTHROPIC"
            } else {
                "PROTOCOL_OPENAI"
            };
            let (a, b, agent) = setup_speaking(
                protocol,
                10_000,
                json!({
                    "fallback": ["a"],
                    "retry": {"max_attempts": 3},
                    "circuit_breaker": {"consecutive_failures": 5, "open_time": "60s"}
                }),
            )
            .await;
            b.set(|x| x.mode = Some(mode));
            let c = agent.client();
            let malformed = matches!(mode, Mode::Malformed | Mode::EmptyChoices);
            let streamed = malformed && body == STREAM_BODY;
            for i in 0..10 {
                let r = c.send(json_request(path, body)).await;
                let status = r.status().as_u16();
                let backend = r.headers()["x-shepherd-backend"]
                    .to_str()
                    .unwrap()
                    .to_string();
                let (text, end) = read_stream(r).await;
                assert_eq!(status, 200, "{mode:?} {path} {body} #{i}: {text}");
                let expected = if streamed && i == 0 { "b" } else { "a" };
                assert_eq!(backend, expected, "{mode:?} {path} #{i}");
                assert_eq!(end, StreamEnd::Clean);
            }
            assert_eq!(
                b.count(),
                1,
                "{mode:?} {path}: asked once, then its breaker is open"
            );
            assert_eq!(a.count(), if streamed { 9 } else { 10 });
            let label = if malformed {
                "malformed"
            } else {
                "backend_rejected"
            };
            assert_eq!(agent.metric(&outcome_line("b", label)).await, 1, "{mode:?}");
            assert_eq!(
                agent.metric(&outcome_line("b", "breaker_rejected")).await,
                9
            );
            assert_eq!(
                agent
                    .metric("shepherd_agent_breaker_state{policy=\"chat\",backend=\"b\"}")
                    .await,
                1,
                "open"
            );
            agent.stop().await;
        }
    }
}

fn json_request(path: &str, body: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::post(path)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap()
}

/// Without a breaker, each request still tries the rejecting candidate
/// only once before falling back, whatever the retry settings; the example
/// of the rejection (status and code, never the message) goes into the
/// telemetry report.
#[tokio::test]
async fn rejections_are_never_retried_on_the_same_backend() {
    let (a, b, agent) = setup(
        10_000,
        json!({"fallback": ["a"], "retry": {"max_attempts": 5}}),
    )
    .await;
    b.set(|x| x.mode = Some(Mode::Unauthorized));
    let c = agent.client();
    for _ in 0..5 {
        let r = c.post(CHAT, BODY, &[]).await;
        assert_eq!((r.status.as_u16(), r.backend()), (200, "a"));
        assert_eq!(r.header("x-shepherd-attempts"), Some("2"));
    }
    assert_eq!((a.count(), b.count()), (5, 5));
    let reports = agent.agent.registry.stats.collect();
    let b_report = reports[0]
        .backends
        .iter()
        .find(|x| x.backend == "b")
        .unwrap();
    assert_eq!(b_report.outcomes.unwrap().backend_rejected, 5);
    assert_eq!(b_report.examples.len(), 1);
    let e = &b_report.examples[0];
    assert_eq!(
        (e.outcome.as_str(), e.status, e.detail.as_str()),
        ("backend_rejected", 401, "invalid_api_key")
    );
    agent.stop().await;
}

/// With nothing to fall back to, the app gets the backend's own answer as
/// it was (status and body), asked once.
#[tokio::test]
async fn without_a_fallback_the_rejection_reaches_the_app_unchanged() {
    let (_a, b, agent) = setup(10_000, json!({"retry": {"max_attempts": 3}})).await;
    b.set(|x| x.mode = Some(Mode::ModelNotFound));
    let r = agent.client().post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    assert_eq!(r.backend(), "b");
    assert_eq!(r.header("x-should-retry"), None, "nothing was retried");
    assert_eq!(b.count(), 1);
    agent.stop().await;
}

/// A request the app got wrong gets the chosen backend's 4xx as it is: no
/// retry, no fallback, and the backend's breaker learns nothing bad.
#[tokio::test]
async fn app_errors_pass_through_and_are_not_backend_failures() {
    let (a, b, agent) = setup(
        10_000,
        json!({
            "fallback": ["a"],
            "retry": {"max_attempts": 3},
            "circuit_breaker": {"consecutive_failures": 1}
        }),
    )
    .await;
    let c = agent.client();
    for _ in 0..3 {
        let r = c.post(CHAT, BAD_BODY, &[]).await;
        assert_eq!(r.status, 400);
        assert_eq!(r.json()["error"]["param"], "messages");
        assert_eq!(r.backend(), "b");
        assert_eq!(r.header("x-shepherd-attempts"), Some("1"));
        assert_eq!(r.header("x-should-retry"), None);
    }
    assert_eq!((a.count(), b.count()), (0, 3));
    assert_eq!(agent.metric(&outcome_line("b", "app_error")).await, 3);
    let ok = c.post(CHAT, BODY, &[]).await;
    assert_eq!(
        (ok.status.as_u16(), ok.backend()),
        (200, "b"),
        "the breaker stayed closed"
    );
    agent.stop().await;
}

/// An error the agent already retried or fell back from tells SDKs not to
/// retry it again; a first-attempt error does not.
#[tokio::test]
async fn retried_errors_say_should_not_retry() {
    let (a, b, agent) = setup(
        10_000,
        json!({"fallback": ["a"], "retry": {"max_attempts": 2, "backoff_base": "0.001s"}}),
    )
    .await;
    for m in [&a, &b] {
        m.set(|x| {
            x.fail = Some(Fail {
                status: 500,
                retry_after: None,
                times: None,
            })
        });
    }
    let r = agent.client().post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.header("x-shepherd-attempts"), Some("4"));
    assert_eq!(r.header("x-should-retry"), Some("false"));
    assert_eq!((a.count(), b.count()), (2, 2));
    agent.stop().await;

    let (_a, b, agent) = setup(10_000, json!({})).await;
    b.set(|x| {
        x.fail = Some(Fail {
            status: 503,
            retry_after: None,
            times: None,
        })
    });
    let r = agent.client().post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.header("x-should-retry"),
        None,
        "one attempt: SDKs may retry"
    );
    agent.stop().await;
}

/// Requests that are not model calls (a model list, a GET) go to the
/// baseline whatever the weight, and are not mirrored.
#[tokio::test]
async fn requests_that_are_not_inference_go_to_the_baseline() {
    let (a, b, agent) = setup(10_000, json!({"shadow": {"percent": 100}})).await;
    let c = agent.client();
    for _ in 0..5 {
        let r = c.get("/v1/models").await;
        assert_eq!((r.status.as_u16(), r.backend()), (200, "a"));
        let r = c.get("/v1/models/gpt-4o").await;
        assert_eq!(r.backend(), "a");
    }
    assert_eq!(c.post(CHAT, BODY, &[]).await.backend(), "b");
    assert_eq!(a.count(), 10);
    assert_eq!(b.count(), 1);
    agent.stop().await;
}
