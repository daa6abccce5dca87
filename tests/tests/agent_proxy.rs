//! The agent over real TCP, in front of mock providers on real sockets:
//! routing, the split, retries and fallback, credentials and model rewrite,
//! streaming, faults, limits, reload under load and shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use shepherd_agent::proxy::Limits;
use shepherd_agent::server::ServerSettings;
use shepherd_tests::agent::{AgentOptions, TestAgent};
use shepherd_tests::fixtures::merge_json;
use shepherd_tests::http::{StreamEnd, read_stream};
use shepherd_tests::mock::{Fail, MockProvider};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHAT: &str = "/v1/chat/completions";
const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
const MESSAGES_BODY: &str =
    r#"{"model":"gpt-4o","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#;
const MESSAGES_STREAM_BODY: &str = r#"{"model":"gpt-4o","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const STREAM_BODY: &str =
    r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// Two mock providers on TCP and a policy over them: baseline "a", candidate
/// "b" at `weight`, with `extra` merged into the policy.
async fn two_backends(weight: u32, extra: Value) -> (MockProvider, MockProvider, String) {
    let a = MockProvider::new("a");
    let b = MockProvider::new("b");
    let (aa, ba) = (a.serve_tcp().await, b.serve_tcp().await);
    (a, b, policy(aa, ba, weight, extra))
}

fn policy(a: SocketAddr, b: SocketAddr, weight: u32, extra: Value) -> String {
    let mut p = json!({
        "name": "chat",
        "match": {"path_prefix": "/v1/"},
        "backends": [
            {"name": "a", "base_url": format!("http://{a}")},
            {"name": "b", "base_url": format!("http://{b}")}
        ],
        "traffic": {"baseline": "a", "candidate": "b", "candidate_weight": weight}
    });
    merge_json(&mut p, extra);
    p.to_string()
}

/// An agent running `policy` with the listener `settings`.
async fn start_with_settings(policy: &str, settings: ServerSettings) -> TestAgent {
    let options = AgentOptions {
        settings,
        ..AgentOptions::default()
    };
    TestAgent::start_with(policy, options).await
}

/// A JSON POST to the agent.
fn json_request(path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// OpenAI-compatible paths pass through (Anthropic's /v1/messages is translated for an OpenAI backend); a
/// request no policy matches gets a clear 404 JSON error.
#[tokio::test]
async fn passes_api_paths_and_refuses_unmatched() {
    let (a, _b, p) = two_backends(0, json!({})).await;
    let agent = TestAgent::start(&p).await;
    let c = agent.client();
    for path in [CHAT, "/v1/completions", "/v1/embeddings"] {
        let r = c.post(path, BODY, &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.backend(), "a");
        assert_eq!(r.header("x-shepherd-policy"), Some("chat"));
        assert_eq!(r.header("x-shepherd-attempts"), Some("1"));
    }
    let models = c.get("/v1/models").await;
    assert_eq!(models.status, 200);
    assert_eq!(a.count(), 4);
    let paths: Vec<String> = a.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        [CHAT, "/v1/completions", "/v1/embeddings", "/v1/models"]
    );
    // Anthropic's API on an OpenAI backend is translated: it reaches the
    // backend as a chat completion and comes back as a message.
    let r = c.post("/v1/messages", MESSAGES_BODY, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["type"], "message");
    assert_eq!(a.received().last().unwrap().path, CHAT);

    let none = c.post("/other/thing", BODY, &[]).await;
    assert_eq!(none.status, 404);
    let e = none.json();
    assert_eq!(e["error"]["type"], "shepherd_no_route");
    assert_eq!(e["error"]["message"], "no policy matches POST /other/thing");
    agent.stop().await;
}

/// A model call whose body is not a JSON object, or whose `stream` is not a
/// boolean, is answered with a 400 in the app's API and sent nowhere;
/// other requests pass as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_refused_before_any_backend() {
    let (a, b, p) = two_backends(5000, json!({})).await;
    let agent = TestAgent::start(&p).await;
    let c = agent.client();
    for (path, body, says) in [
        (CHAT, "not json", "must be a JSON object"),
        (CHAT, "[1, 2]", "must be a JSON object"),
        (
            CHAT,
            r#"{"model":"gpt-4o","messages":[]"#,
            "not valid JSON at byte",
        ),
        (
            CHAT,
            r#"{"model":"gpt-4o"} trailing"#,
            "not valid JSON at byte",
        ),
        (
            CHAT,
            r#"{"model":"gpt-4o","stream":"yes"}"#,
            "stream: must be a boolean",
        ),
        ("/v1/embeddings", "", "must be a JSON object"),
        (
            "/v1/messages",
            r#"{"model":"m","stream":1}"#,
            "stream: must be a boolean",
        ),
    ] {
        let r = c.post(path, body, &[]).await;
        assert_eq!(r.status, 400, "{path} {body}: {}", r.text());
        let e = r.json();
        assert_eq!(e["error"]["type"], "shepherd_bad_request", "{e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
        // Anthropic's error envelope on its own path.
        assert_eq!(e.get("type").is_some(), path == "/v1/messages", "{e}");
    }
    assert_eq!((a.count(), b.count()), (0, 0), "nothing was sent");
    assert_eq!(agent.metric("shepherd_agent_bad_request_total").await, 7);
    // A null stream is absent to the providers; other paths are not read.
    let ok = r#"{"model":"gpt-4o","stream":null,"messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(c.post(CHAT, ok, &[]).await.status, 200);
    let before = a.count();
    let files = c.post("/v1/files", "not json", &[]).await;
    assert_ne!(files.status, 400, "{}", files.text());
    assert_eq!(a.count(), before + 1, "the baseline got it as it was");
    agent.stop().await;
}

/// Without a sticky key the split sends the weight's share to the candidate
/// (20 % here, within five standard deviations over 2000 requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_ratio_matches_the_weight() {
    let (_a, b, p) = two_backends(2000, json!({})).await;
    let agent = TestAgent::start(&p).await;
    let c = Arc::new(agent.client());
    let n = 2000;
    let to_b = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (c, to_b) = (c.clone(), to_b.clone());
            tokio::spawn(async move {
                for _ in 0..n / 8 {
                    let r = c.post(CHAT, BODY, &[]).await;
                    assert_eq!(r.status, 200);
                    if r.backend() == "b" {
                        to_b.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let share = to_b.load(Ordering::Relaxed) as f64 / f64::from(n);
    assert!((share - 0.20).abs() < 0.045, "candidate share {share}");
    assert_eq!(b.count() as u64, to_b.load(Ordering::Relaxed));
    agent.stop().await;
}

/// With a sticky header every key stays on its side, and raising the weight
/// keeps every key that was on the candidate there.
#[tokio::test]
async fn sticky_keys_stay_and_survive_weight_increases() {
    let (_a, _b, p) = two_backends(1000, json!({"traffic": {"sticky_header": "x-user-id"}})).await;
    let agent = TestAgent::start(&p).await;
    let c = agent.client();
    let users: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    let mut side = BTreeMap::new();
    for u in &users {
        let r = c.post(CHAT, BODY, &[("x-user-id", u)]).await;
        side.insert(u.clone(), r.backend().to_string());
    }
    for u in &users {
        let r = c.post(CHAT, BODY, &[("x-user-id", u)]).await;
        assert_eq!(r.backend(), side[u], "{u} moved at the same weight");
    }
    let on_candidate = side.values().filter(|s| *s == "b").count();
    assert!(
        (10..=60).contains(&on_candidate),
        "{on_candidate} of 300 on the candidate at 10%"
    );

    let raised = p.replace("\"candidate_weight\":1000", "\"candidate_weight\":4000");
    assert_ne!(raised, p);
    agent.reload(&raised).unwrap();
    let mut moved_up = 0;
    for u in &users {
        let r = c.post(CHAT, BODY, &[("x-user-id", u)]).await;
        if side[u] == "b" {
            assert_eq!(r.backend(), "b", "{u} was moved back to the baseline");
        } else if r.backend() == "b" {
            moved_up += 1;
        }
    }
    assert!(
        moved_up > 30,
        "only {moved_up} keys moved to the candidate at 40%"
    );
    agent.stop().await;
}

/// A retryable failure is retried on the same backend and succeeds; a
/// client error is not retried.
#[tokio::test]
async fn retries_retryable_failures_only() {
    let (a, _b, p) = two_backends(
        0,
        json!({"retry": {"max_attempts": 3, "backoff_base": "0.001s"}}),
    )
    .await;
    let agent = TestAgent::start(&p).await;
    let c = agent.client();
    a.set(|m| {
        m.fail = Some(Fail {
            status: 503,
            retry_after: None,
            times: Some(1),
        })
    });
    let r = c.post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-shepherd-attempts"), Some("2"));
    assert_eq!(a.count(), 2);
    assert_eq!(
        agent
            .metric("shepherd_agent_retries_total{policy=\"chat\",backend=\"a\"}")
            .await,
        1
    );

    a.clear();
    a.set(|m| {
        m.fail = Some(Fail {
            status: 400,
            retry_after: None,
            times: Some(1),
        })
    });
    let r = c.post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["message"], "a failed on purpose");
    assert_eq!(a.count(), 1, "a 400 was retried");
    agent.stop().await;
}

/// When the chosen backend keeps failing, the fallback answers; when all
/// fail, the app gets the last upstream answer.
#[tokio::test]
async fn falls_back_in_policy_order() {
    let (a, b, p) = two_backends(
        10_000,
        json!({"retry": {"max_attempts": 2, "backoff_base": "0.001s"}, "fallback": ["a"]}),
    )
    .await;
    let agent = TestAgent::start(&p).await;
    let c = agent.client();
    b.set(|m| {
        m.fail = Some(Fail {
            status: 503,
            retry_after: None,
            times: None,
        })
    });
    let r = c.post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), "a");
    assert_eq!(r.header("x-shepherd-attempts"), Some("3"));
    assert_eq!((b.count(), a.count()), (2, 1));
    assert_eq!(
        agent
            .metric("shepherd_agent_fallbacks_total{policy=\"chat\",backend=\"a\"}")
            .await,
        1
    );

    a.set(|m| {
        m.fail = Some(Fail {
            status: 502,
            retry_after: None,
            times: None,
        })
    });
    let r = c.post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.backend(), "a");
    assert_eq!(r.json()["error"]["message"], "a failed on purpose");
    agent.stop().await;
}

/// A backend that cannot be reached gets a 502 naming what failed.
#[tokio::test]
async fn unreachable_backend_is_502_with_reason() {
    let closed = shepherd_tests::net::RefusedPort::new();
    let p = json!({
        "name": "chat", "match": {"path_prefix": "/v1/"},
        "backends": [{"name": "gone", "base_url": format!("http://{}", closed.addr)}],
        "traffic": {"baseline": "gone"}
    });
    let agent = TestAgent::start(&p.to_string()).await;
    let r = agent.client().post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 502);
    let e = r.json();
    assert_eq!(e["error"]["type"], "shepherd_upstream_unavailable");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("no backend could take the request (gone: cannot connect"),
        "{message}"
    );
    assert_eq!(
        agent.metric("shepherd_agent_attempts_total{policy=\"chat\",backend=\"gone\",outcome=\"connect\"}"
        )
        .await,
        1
    );
    agent.stop().await;
}

/// The backend's model map rewrites the model; its own credentials replace
/// the app's, which never reach a provider; extra headers are added.
#[tokio::test]
async fn rewrites_model_and_injects_credentials() {
    let a = MockProvider::new("a");
    let b = MockProvider::new("b");
    let (aa, ba) = (a.serve_tcp().await, b.serve_tcp().await);
    let dir = tempfile::tempdir().unwrap();
    let key_a = dir.path().join("a.key");
    let key_b = dir.path().join("b.key");
    std::fs::write(&key_a, "sk-provider-a-0001\n").unwrap();
    std::fs::write(&key_b, "sk-ant-provider-b-0002").unwrap();
    let p = json!({
        "name": "chat", "match": {"path_prefix": "/v1/"},
        "backends": [
            {"name": "a", "base_url": format!("http://{aa}/proxy"), "credentials": format!("file:{}", key_a.display()),
             "headers": {"openai-organization": "org-team"}},
            {"name": "b", "base_url": format!("http://{ba}"), "protocol": "PROTOCOL_ANTHROPIC",
             "credentials": format!("file:{}", key_b.display()),
             "model_map": {"gpt-4o": "claude-sonnet-4-5", "*": "claude-haiku-4-5"}}
        ],
        "traffic": {"baseline": "a", "candidate": "b", "candidate_weight": 0}
    });
    let agent = TestAgent::start(&p.to_string()).await;
    let c = agent.client();
    let app_headers = [
        ("authorization", "Bearer sk-app-own-key"),
        ("x-api-key", "sk-app-own-key"),
        ("x-shepherd-backend", "forged"),
    ];
    let r = c.post(CHAT, BODY, &app_headers).await;
    assert_eq!(r.status, 200);
    let got = &a.received()[0];
    assert_eq!(got.path, "/proxy/v1/chat/completions");
    assert_eq!(got.headers["authorization"], "Bearer sk-provider-a-0001");
    assert!(got.headers.get("x-api-key").is_none());
    assert!(got.headers.get("x-shepherd-backend").is_none());
    assert_eq!(got.headers["openai-organization"], "org-team");
    assert_eq!(got.headers["accept-encoding"], "identity");
    assert_eq!(
        got.model.as_deref(),
        Some("gpt-4o"),
        "the baseline has no model map"
    );

    agent
        .reload(
            &p.to_string()
                .replace("\"candidate_weight\":0", "\"candidate_weight\":10000"),
        )
        .unwrap();
    c.post(CHAT, BODY, &app_headers).await;
    c.post(CHAT, &BODY.replace("gpt-4o", "gpt-4o-mini"), &app_headers)
        .await;
    let got = b.received();
    assert_eq!(got[0].headers["x-api-key"], "sk-ant-provider-b-0002");
    assert!(got[0].headers.get("authorization").is_none());
    assert_eq!(got[0].model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(got[1].model.as_deref(), Some("claude-haiku-4-5"));
    let sent: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(
        sent["messages"][0]["content"], "hi",
        "the rest of the body is kept"
    );
    for r in a.received().iter().chain(got.iter()) {
        for v in r.headers.values() {
            assert!(!v.to_str().unwrap_or("").contains("sk-app-own-key"));
        }
    }
    agent.stop().await;
}

/// Answers name the model that served them unless the backend's
/// answer_model asks for the app's own: then plain answers and every event
/// of a stream name the requested model.
#[tokio::test]
async fn the_answer_names_the_served_or_the_requested_model() {
    let b = MockProvider::new("b");
    let ba = b.serve_tcp().await;
    let policy = |answer_model: &str| {
        json!({
            "name": "chat", "match": {"path_prefix": "/v1/"},
            "backends": [{"name": "b", "base_url": format!("http://{ba}"),
                          "model_map": {"gpt-4o": "mistral-large"}, "answer_model": answer_model}],
            "traffic": {"baseline": "b"}
        })
        .to_string()
    };
    let agent = TestAgent::start(&policy("ANSWER_MODEL_SERVED")).await;
    let c = agent.client();
    assert_eq!(
        c.post(CHAT, BODY, &[]).await.json()["model"],
        "mistral-large"
    );
    agent.reload(&policy("ANSWER_MODEL_REQUESTED")).unwrap();
    let plain = c.post(CHAT, BODY, &[]).await;
    assert_eq!(plain.json()["model"], "gpt-4o");
    assert_eq!(
        plain.json()["choices"][0]["message"]["content"],
        "reply from b"
    );
    let (text, end) = read_stream(c.send(json_request(CHAT, STREAM_BODY)).await).await;
    assert_eq!(end, StreamEnd::Clean);
    assert!(text.contains("\"model\":\"gpt-4o\""), "{text}");
    assert!(!text.contains("mistral-large"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    // Across APIs too: an Anthropic app's stream from this OpenAI backend.
    let (text, _) = read_stream(
        c.send(json_request("/v1/messages", MESSAGES_STREAM_BODY))
            .await,
    )
    .await;
    assert!(text.contains("event: message_stop"), "{text}");
    assert!(
        text.contains("\"model\":\"gpt-4o\"") && !text.contains("mistral"),
        "{text}"
    );
    assert_eq!(b.received()[1].model.as_deref(), Some("mistral-large"));
    agent.stop().await;
}

/// A policy whose secret cannot be read is refused with the field named;
/// the running policies stay.
#[tokio::test]
async fn unresolvable_secret_refuses_the_policy() {
    let (_a, _b, p) = two_backends(0, json!({})).await;
    let agent = TestAgent::start(&p).await;
    let mut broken: Value = serde_json::from_str(&p).unwrap();
    broken["backends"][1]["credentials"] = json!("env:SHEPHERD_TEST_SURELY_UNSET_KEY");
    let broken = broken.to_string();
    let err = agent.reload(&broken).unwrap_err();
    assert_eq!(
        err,
        "policy \"chat\": backends[1].credentials: environment variable SHEPHERD_TEST_SURELY_UNSET_KEY is not set (or not UTF-8) on this agent"
    );
    let r = agent.client().post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 200, "the running policy stayed");
    assert_eq!(
        agent
            .metric("shepherd_agent_policy_reloads_total{result=\"failed\"}")
            .await,
        1
    );
    agent.stop().await;
}

/// A body over the limit gets 413, whether its length is declared or not.
#[tokio::test]
async fn too_large_bodies_get_413() {
    let (a, _b, p) = two_backends(0, json!({})).await;
    let limits = Limits {
        max_request_body: 1024,
        ..Limits::default()
    };
    let agent = TestAgent::start_with(
        &p,
        AgentOptions {
            limits,
            ..AgentOptions::default()
        },
    )
    .await;
    let c = agent.client();
    let big = format!(r#"{{"model":"gpt-4o","pad":"{}"}}"#, "x".repeat(2000));
    let r = c.post(CHAT, &big, &[]).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["type"], "shepherd_request_too_large");

    // Chunked, no length declared.
    let stream = tokio_stream::iter((0..4).map(|_| {
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![b' '; 600])))
    }));
    let req = Request::post(format!("http://{}{CHAT}", agent.addr))
        .body(http_body_util::StreamBody::new(stream))
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(a.count(), 0);
    agent.stop().await;
}

/// Past the concurrency limit requests are shed at once with 503 JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sheds_load_past_the_concurrency_limit() {
    let (a, _b, p) = two_backends(0, json!({})).await;
    a.set(|m| m.gated = true);
    let limits = Limits {
        max_concurrent: 2,
        ..Limits::default()
    };
    let agent = TestAgent::start_with(
        &p,
        AgentOptions {
            limits,
            ..AgentOptions::default()
        },
    )
    .await;
    let c = Arc::new(agent.client());
    let held: Vec<_> = (0..2)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.post(CHAT, BODY, &[]).await })
        })
        .collect();
    a.wait_for(2).await;
    let shed = c.post(CHAT, BODY, &[]).await;
    assert_eq!(shed.status, 503);
    assert_eq!(shed.json()["error"]["type"], "shepherd_overloaded");
    assert_eq!(shed.header("retry-after"), Some("1"));
    a.release(2);
    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
    assert_eq!(agent.metric("shepherd_agent_shed_total").await, 1);
    agent.stop().await;
}

/// SSE passes through as it comes: the first event reaches the app while the
/// upstream stream is still open.
#[tokio::test]
async fn first_event_arrives_before_the_upstream_finishes() {
    let (a, _b, p) = two_backends(0, json!({})).await;
    a.set(|m| m.stall_after = Some(2));
    let agent = TestAgent::start(&p).await;
    let req = json_request(CHAT, STREAM_BODY);
    let resp = agent.client().send(req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first event was held back")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert!(first.starts_with(b"data: {"), "{first:?}");
    assert_eq!(
        a.streams_completed(),
        0,
        "the upstream stream is still open"
    );
    drop(body);
    agent.stop().await;
}

/// A stream cut after it started ends with an SSE error event and an abort,
/// never a clean end, and counts as broken.
#[tokio::test]
async fn cut_stream_ends_with_an_error_event() {
    let (a, _b, p) = two_backends(0, json!({"retry": {"max_attempts": 3}})).await;
    a.set(|m| m.cut_after = Some(2));
    let agent = TestAgent::start(&p).await;
    let req = json_request(CHAT, STREAM_BODY);
    let (text, end) = read_stream(agent.client().send(req).await).await;
    assert_eq!(end, StreamEnd::Aborted);
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 3, "{text}");
    assert!(events[0].starts_with("data: ") && events[1].starts_with("data: "));
    let error = events[2]
        .strip_prefix("event: error\ndata: ")
        .expect("an error event");
    let e: Value = serde_json::from_str(error).unwrap();
    assert_eq!(e["error"]["type"], "shepherd_stream_broken");
    assert_eq!(
        a.count(),
        1,
        "no retry after the first byte reached the app"
    );
    assert_eq!(
        agent.metric("shepherd_agent_attempts_total{policy=\"chat\",backend=\"a\",outcome=\"stream_broken\"}"
        )
        .await,
        1
    );
    agent.stop().await;
}

/// A stream that ends without its final event is broken too.
#[tokio::test]
async fn stream_without_its_final_event_is_broken() {
    let (a, _b, p) = two_backends(0, json!({})).await;
    a.set(|m| m.omit_final_event = true);
    let agent = TestAgent::start(&p).await;
    // The Anthropic app's stream is translated from this OpenAI backend's,
    // and ends with an error in Anthropic's shape.
    for (path, body) in [(CHAT, STREAM_BODY), ("/v1/messages", MESSAGES_STREAM_BODY)] {
        let req = json_request(path, body);
        let (text, end) = read_stream(agent.client().send(req).await).await;
        assert_eq!(end, StreamEnd::Aborted, "{path}");
        assert!(text.contains("event: error\ndata: "), "{path}: {text}");
        assert!(text.contains("ended without its final event"), "{text}");
        assert!(!text.contains("message_stop"), "{text}");
        let error = text.rsplit("event: error\ndata: ").next().unwrap();
        let e: Value = serde_json::from_str(error.trim()).unwrap();
        assert_eq!(e["error"]["type"], "shepherd_stream_broken");
        // Anthropic's error envelope for /v1/messages.
        assert_eq!(e.get("type").is_some(), path != CHAT, "{e}");
    }
    agent.stop().await;
}

/// Complete streams end cleanly; usage from streamed chunks is counted, as
/// is time to first token.
#[tokio::test]
async fn complete_streams_end_cleanly_and_count_usage() {
    let (_a, _b, p) = two_backends(0, json!({})).await;
    let agent = TestAgent::start(&p).await;
    let body = r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let req = json_request(CHAT, body);
    let (text, end) = read_stream(agent.client().send(req).await).await;
    assert_eq!(end, StreamEnd::Clean);
    assert!(text.ends_with("data: [DONE]\n\n"));
    // Translated from the OpenAI backend, whose usage it asks for.
    let req = json_request("/v1/messages", MESSAGES_STREAM_BODY);
    let (text, end) = read_stream(agent.client().send(req).await).await;
    assert_eq!(end, StreamEnd::Clean);
    assert!(text.contains("event: message_stop"));
    // 10 + 10 input, 5 + 5 output tokens.
    assert_eq!(
        agent
            .metric("shepherd_agent_tokens_total{policy=\"chat\",backend=\"a\",kind=\"input\"}")
            .await,
        20
    );
    assert_eq!(
        agent
            .metric("shepherd_agent_tokens_total{policy=\"chat\",backend=\"a\",kind=\"output\"}")
            .await,
        10
    );
    assert_eq!(
        agent
            .metric(
                "shepherd_agent_time_to_first_token_seconds_count{policy=\"chat\",backend=\"a\"}"
            )
            .await,
        2
    );
    agent.stop().await;
}

/// Abort faults answer the configured share with the configured status and
/// Retry-After; the backend never sees those requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_fault_hits_its_percentage() {
    let expire = "2999-01-01T00:00:00Z";
    let (_a, b, p) = two_backends(
        10_000,
        json!({"faults": [{"backend": "b", "abort": {"percent": 30, "status": 429, "retry_after": "2s"}, "expire_time": expire}]}),
    )
    .await;
    let agent = TestAgent::start(&p).await;
    let c = Arc::new(agent.client());
    let n = 1000u64;
    let aborted = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (c, aborted) = (c.clone(), aborted.clone());
            tokio::spawn(async move {
                for _ in 0..n / 4 {
                    let r = c.post(CHAT, BODY, &[]).await;
                    if r.status == 429 {
                        assert_eq!(r.json()["error"]["type"], "shepherd_fault_injected");
                        assert_eq!(r.header("retry-after"), Some("2"));
                        aborted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        assert_eq!(r.status, 200);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let aborted = aborted.load(Ordering::Relaxed);
    let share = aborted as f64 / n as f64;
    assert!((share - 0.30).abs() < 0.073, "aborted share {share}"); // 5 sd
    assert_eq!(b.count() as u64, n - aborted);
    assert_eq!(
        agent
            .metric(
                "shepherd_agent_faults_injected_total{policy=\"chat\",backend=\"b\",kind=\"abort\"}"
            )
            .await,
        aborted
    );
    agent.stop().await;
}

/// Delay faults hold their share; cut faults end streams after N events;
/// expired faults do nothing.
#[tokio::test]
async fn delay_and_stream_cut_faults_and_expiry() {
    let expire = "2999-01-01T00:00:00Z";
    let (_a, _b, p) = two_backends(
        10_000,
        json!({"faults": [{"backend": "b", "delay": {"percent": 50, "duration": "0.001s"},
                           "stream_cut": {"percent": 100, "after_chunks": 2}, "expire_time": expire}]}),
    )
    .await;
    let agent = TestAgent::start(&p).await;
    let c = agent.client();
    for _ in 0..400 {
        c.post(CHAT, BODY, &[]).await;
    }
    let delayed = agent
        .metric(
            "shepherd_agent_faults_injected_total{policy=\"chat\",backend=\"b\",kind=\"delay\"}",
        )
        .await;
    assert!(
        (delayed as f64 / 400.0 - 0.5).abs() < 0.125,
        "{delayed} of 400 delayed"
    );
    let req = json_request(CHAT, STREAM_BODY);
    let (text, end) = read_stream(c.send(req).await).await;
    assert_eq!(end, StreamEnd::Aborted);
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 3, "{text}");
    assert!(events[2].contains("cut by an injected fault after 2 chunks"));

    agent
        .reload(&p.replace(expire, "2001-01-01T00:00:00Z"))
        .unwrap();
    let req = json_request(CHAT, STREAM_BODY);
    let (_, end) = read_stream(c.send(req).await).await;
    assert_eq!(end, StreamEnd::Clean, "an expired fault still applied");
    agent.stop().await;
}

/// Swapping the policy again and again under load fails no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_fails_nothing() {
    let (a, b, p) = two_backends(5000, json!({"traffic": {"sticky_header": "x-user-id"}})).await;
    let agent = TestAgent::start(&p).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let (c, stop, done) = (Arc::new(agent.client()), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = if i % 5 == 0 { STREAM_BODY } else { BODY };
                    let user = format!("u{w}-{i}");
                    let req = Request::post(CHAT)
                        .header("content-type", "application/json")
                        .header("x-user-id", user)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap();
                    let resp = c.send(req).await;
                    assert_eq!(resp.status(), 200);
                    let (_, end) = read_stream(resp).await;
                    assert_eq!(end, StreamEnd::Clean);
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    for round in 0..30u32 {
        let weight = (round * 997) % 10_001;
        let next = p.replace(
            "\"candidate_weight\":5000",
            &format!("\"candidate_weight\":{weight}"),
        );
        // Every third round also swaps the sides and changes the route.
        let next = if round % 3 == 0 {
            next.replace(
                "\"baseline\":\"a\",\"candidate\":\"b\"",
                "\"baseline\":\"b\",\"candidate\":\"a\"",
            )
            .replace("\"/v1/\"", "\"/v1\"")
        } else {
            next
        };
        agent.reload(&next).unwrap();
        let before = done.load(Ordering::Relaxed);
        while done.load(Ordering::Relaxed) < before + 5 {
            tokio::task::yield_now().await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(done.load(Ordering::Relaxed) >= 150);
    assert!(a.count() > 0 && b.count() > 0);
    agent.stop().await;
}

/// Policies apply only to agents whose labels their selector matches.
#[tokio::test]
async fn selectors_pick_agents_by_label() {
    let (_a, _b, p) =
        two_backends(0, json!({"selector": {"match_labels": {"app": "billing"}}})).await;
    let labels = BTreeMap::from([("app".to_string(), "support".to_string())]);
    let agent = TestAgent::start_with(
        &p,
        AgentOptions {
            labels,
            ..AgentOptions::default()
        },
    )
    .await;
    assert_eq!(agent.client().post(CHAT, BODY, &[]).await.status, 404);
    agent.stop().await;
    let labels = BTreeMap::from([("app".to_string(), "billing".to_string())]);
    let agent = TestAgent::start_with(
        &p,
        AgentOptions {
            labels,
            ..AgentOptions::default()
        },
    )
    .await;
    assert_eq!(agent.client().post(CHAT, BODY, &[]).await.status, 200);
    agent.stop().await;
}

/// Health, readiness and metrics on the admin listener.
#[tokio::test]
async fn admin_endpoints() {
    let (_a, _b, p) = two_backends(0, json!({})).await;
    let agent = TestAgent::start(&p).await;
    let admin = agent.admin();
    assert_eq!(admin.get("/healthz").await.status, 200);
    assert_eq!(admin.get("/readyz").await.status, 200);
    agent.client().post(CHAT, BODY, &[]).await;
    let m = admin.get("/metrics").await;
    assert_eq!(m.status, 200);
    assert!(
        m.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    assert!(
        m.text().contains(
            "shepherd_agent_attempts_total{policy=\"chat\",backend=\"a\",outcome=\"ok\"} 1"
        )
    );
    assert_eq!(admin.get("/nope").await.status, 404);
    agent.agent.set_stopping();
    let r = admin.get("/readyz").await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (503, "not ready: shutting down\n")
    );
    agent.stop().await;
}

/// At shutdown the listener closes and in-flight requests finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let (a, _b, p) = two_backends(0, json!({})).await;
    a.set(|m| m.gated = true);
    let agent = TestAgent::start(&p).await;
    let c = agent.client();
    let in_flight = tokio::spawn(async move { c.post(CHAT, BODY, &[]).await });
    a.wait_for(1).await;
    let addr = agent.addr;
    agent.begin_shutdown();
    // The listener closes: new connections are refused.
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(_) => break,
            Ok(_) => tokio::task::yield_now().await,
        }
    }
    a.release(1);
    assert_eq!(in_flight.await.unwrap().status, 200);
    agent.stop().await;
}

/// A client that does not finish its request head is disconnected.
#[tokio::test]
async fn slow_headers_are_cut_off() {
    let (_a, _b, p) = two_backends(0, json!({})).await;
    let settings = ServerSettings {
        header_read_timeout: Duration::from_millis(200),
        ..ServerSettings::default()
    };
    let agent = start_with_settings(&p, settings).await;
    let mut s = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was left open");
    agent.stop().await;
}

/// A stream still running when the drain at shutdown runs out ends with the
/// SSE error event every other broken stream gets, in the app's API; the
/// backend is not blamed.
#[tokio::test]
async fn a_stream_cut_at_the_end_of_the_drain_gets_the_error_event() {
    let (a, _b, p) = two_backends(0, json!({})).await;
    a.set(|m| m.stall_after = Some(2));
    let settings = ServerSettings {
        shutdown_grace: Duration::from_millis(200),
        ..ServerSettings::default()
    };
    let agent = start_with_settings(&p, settings).await;
    // The head has arrived: the stream is running when the drain starts.
    let resp = agent.client().send(json_request(CHAT, STREAM_BODY)).await;
    assert_eq!(resp.status(), 200);
    agent.begin_shutdown();
    let (text, end) = read_stream(resp).await;
    assert_eq!(end, StreamEnd::Aborted);
    let error = text
        .rsplit("event: error\ndata: ")
        .next()
        .filter(|_| text.contains("event: error\ndata: "))
        .unwrap_or_else(|| panic!("no error event: {text}"));
    let e: Value = serde_json::from_str(error.trim()).unwrap();
    assert_eq!(e["error"]["type"], "shepherd_shutting_down", "{e}");
    let totals = agent.agent.registry.stats.totals();
    let a_counts = &totals[&("chat".to_string(), "a".to_string())];
    assert_eq!(
        a_counts.outcome(shepherd_agent::telemetry::Outcome::Cancelled),
        1
    );
    assert_eq!(
        a_counts.outcome(shepherd_agent::telemetry::Outcome::StreamBroken),
        0
    );
    agent.stop().await;
}

/// A candidate at 50% answering half its requests with 429 and
/// `Retry-After`, at 200 requests a second with the baseline as fallback:
/// each 429 cools the candidate down for every request of the agent, which
/// go to the baseline at once, free of the retry budget; the app sees no
/// failure, and the breaker counts the 429s as failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_candidate_cools_down_and_the_app_sees_no_failure() {
    let (a, b, p) = two_backends(
        5000,
        json!({"fallback": ["a"],
               "circuit_breaker": {"failure_rate_percent": 90.0, "min_requests": 1000}}),
    )
    .await;
    b.set(|m| {
        m.error_rate = Some(0.5);
        m.error_status = 429;
        m.error_retry_after = Some("1".into());
    });
    let agent = TestAgent::start(&p).await;
    let c = std::sync::Arc::new(agent.client());
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut sent = Vec::new();
    for _ in 0..400 {
        tick.tick().await;
        let c = c.clone();
        sent.push(tokio::spawn(
            async move { c.post(CHAT, BODY, &[]).await.status },
        ));
    }
    let mut failed = 0;
    for s in sent {
        failed += usize::from(s.await.unwrap() != 200);
    }
    assert_eq!(failed, 0, "requests the app saw fail");
    let metric = |name: &str| format!("{name}{{policy=\"chat\",backend=\"b\"}}");
    let cooldowns = agent
        .metric(&metric("shepherd_agent_rate_limit_cooldowns_total"))
        .await;
    let skipped = agent
        .metric(&metric("shepherd_agent_cooldown_skipped_total"))
        .await;
    assert!(cooldowns >= 1, "{cooldowns}");
    assert!(
        skipped > 100,
        "{skipped} requests went to the baseline at once"
    );
    // The candidate saw few requests: one 429 cools it down for a second.
    assert!(
        b.count() < 100,
        "{} requests reached the candidate",
        b.count()
    );
    assert!(a.count() >= 300);
    agent.stop().await;
}

/// 429s count as failures for the breaker, unless the policy says not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_count_for_the_breaker_unless_turned_off() {
    for (count, opens) in [(None, true), (Some(false), false)] {
        let mut breaker = json!({"consecutive_failures": 3});
        if let Some(count) = count {
            breaker["count_rate_limited"] = json!(count);
        }
        let (_a, b, p) = two_backends(
            10_000,
            json!({"fallback": ["a"], "circuit_breaker": breaker}),
        )
        .await;
        b.set(|m| {
            m.error_rate = Some(1.0);
            m.error_status = 429;
        });
        let agent = TestAgent::start(&p).await;
        for _ in 0..4 {
            assert_eq!(agent.client().post(CHAT, BODY, &[]).await.status, 200);
        }
        let state = agent
            .metric("shepherd_agent_breaker_state{policy=\"chat\",backend=\"b\"}")
            .await;
        assert_eq!(
            state == 1,
            opens,
            "count_rate_limited {count:?}: state {state}"
        );
        agent.stop().await;
    }
}

/// A candidate that sends its answer's head and then stalls: the answer is
/// read whole before its head goes to the app, so the stall is a broken
/// answer that falls back, and the app sees no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_stalling_after_its_head_fails_no_request() {
    let (a, b, p) = two_backends(10_000, json!({"fallback": ["a"]})).await;
    let p = {
        let mut p: Value = serde_json::from_str(&p).unwrap();
        p["backends"][1]["timeouts"] = json!({"stream_idle": "0.2s"});
        p.to_string()
    };
    b.set(|m| m.stall_after_head = true);
    let agent = TestAgent::start(&p).await;
    for _ in 0..5 {
        let r = agent.client().post(CHAT, BODY, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.backend(), "a");
        assert_eq!(r.json()["object"], "chat.completion");
    }
    assert!(
        b.count() >= 1 && a.count() == 5,
        "{} {}",
        b.count(),
        a.count()
    );
    let totals = agent.agent.registry.stats.totals();
    let b_counts = &totals[&("chat".to_string(), "b".to_string())];
    assert!(b_counts.outcome(shepherd_agent::telemetry::Outcome::StreamBroken) >= 1);
    agent.stop().await;
}

/// A fresh agent starting into a candidate outage (connections refused)
/// falls back as a warm one would: over 20 cold starts, 100 requests sent
/// at once to each, with half of them split to the dead candidate, the app
/// sees no failure for lack of budget history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_starts_into_a_candidate_outage_fail_no_request() {
    let a = MockProvider::new("a");
    let aa = a.serve_tcp().await;
    let dead = shepherd_tests::net::RefusedPort::new();
    let p = policy(aa, dead.addr, 5000, json!({"fallback": ["a"]}));
    for start in 0..20 {
        let agent = TestAgent::start(&p).await;
        let c = std::sync::Arc::new(agent.client());
        let sent: Vec<_> = (0..100)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.post(CHAT, BODY, &[]).await.status })
            })
            .collect();
        let mut failed = 0;
        for s in sent {
            failed += usize::from(s.await.unwrap() != 200);
        }
        assert_eq!(failed, 0, "cold start {start}: requests the app saw fail");
        agent.stop().await;
    }
}

/// The h2 connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Reads until the agent closes the connection (a minute at most, a guard
/// against hangs); returns what it sent.
async fn until_closed(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was left open");
    buf
}

/// A connection that sends no request within the header-read timeout is
/// closed whatever its protocol: nothing at all, half an h2 preface, the
/// preface alone, the preface and SETTINGS, or half an HTTP/1.1 head. A
/// new connection is served.
#[tokio::test]
async fn connections_that_never_ask_are_closed() {
    let (_a, _b, p) = two_backends(0, json!({})).await;
    let settings = ServerSettings {
        header_read_timeout: Duration::from_millis(300),
        ..ServerSettings::default()
    };
    let agent = start_with_settings(&p, settings).await;
    let sends: Vec<Vec<u8>> = vec![
        vec![],
        PREFACE[..10].to_vec(),
        PREFACE.to_vec(),
        [PREFACE, SETTINGS].concat(),
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n".to_vec(),
    ];
    let mut open = Vec::new();
    for (i, bytes) in sends.iter().enumerate() {
        for _ in 0..4 {
            let mut s = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
            s.write_all(bytes).await.unwrap();
            open.push((i, s));
        }
    }
    for (i, s) in &mut open {
        let got = until_closed(s).await;
        if *i == 3 {
            // The h2 server's own SETTINGS (and GOAWAY) may come first.
            assert!(got.len() >= 9, "{got:?}");
        } else if *i == 4 {
            // HTTP/1.1's own timeout answers 408 or closes.
            let text = String::from_utf8_lossy(&got);
            assert!(got.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
        } else {
            assert!(got.is_empty() || *i == 2, "{got:?}");
        }
    }
    assert!(
        agent
            .metric("shepherd_agent_connections_closed_total{reason=\"first_request_timeout\"}")
            .await
            >= 16
    );
    assert_eq!(agent.client().post(CHAT, BODY, &[]).await.status, 200);
    agent.stop().await;
}

/// At the connection cap, a new connection closes the oldest one that has
/// sent no request and is served; once every open connection has asked,
/// a new one is closed at once, until one of them goes.
#[tokio::test]
async fn connection_cap_makes_room_from_the_oldest_silent_one() {
    let (_a, _b, p) = two_backends(0, json!({})).await;
    let settings = ServerSettings {
        max_connections: 4,
        ..ServerSettings::default()
    };
    let agent = start_with_settings(&p, settings).await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(tokio::net::TcpStream::connect(agent.addr).await.unwrap());
    }
    // Each served request evicts the oldest silent connection.
    let request = format!(
        "POST {CHAT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let mut busy = Vec::new();
    for (n, quiet) in silent.iter_mut().enumerate() {
        let mut s = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200", "request {n}");
        assert!(until_closed(quiet).await.is_empty());
        busy.push(s);
    }
    assert_eq!(
        agent
            .metric("shepherd_agent_connections_closed_total{reason=\"evicted\"}")
            .await,
        4
    );
    // Every open connection has asked: a new one is closed at once.
    let mut refused = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
    let _ = refused.write_all(request.as_bytes()).await;
    assert!(until_closed(&mut refused).await.is_empty());
    assert!(
        agent
            .metric("shepherd_agent_connections_closed_total{reason=\"refused\"}")
            .await
            >= 1
    );
    // One goes; its room serves a new connection.
    drop(busy.pop());
    let mut served = false;
    for _ in 0..600 {
        let mut s = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
        let _ = s.write_all(request.as_bytes()).await;
        let mut head = [0u8; 12];
        if s.read_exact(&mut head).await.is_ok() {
            assert_eq!(&head, b"HTTP/1.1 200");
            served = true;
            break;
        }
        // The agent has not seen the close yet: let it run.
        tokio::task::yield_now().await;
    }
    assert!(served, "the room of a closed connection was not given back");
    agent.stop().await;
}

/// `/healthz` answers while the proxy listener is at its cap with
/// connections that never speak, and while the admin listener itself is
/// full of them (the oldest makes room).
#[tokio::test]
async fn healthz_answers_while_listeners_are_flooded() {
    let (_a, _b, p) = two_backends(0, json!({})).await;
    let settings = ServerSettings {
        max_connections: 16,
        ..ServerSettings::default()
    };
    let agent = start_with_settings(&p, settings).await;
    let mut flood = Vec::new();
    for _ in 0..64 {
        flood.push(tokio::net::TcpStream::connect(agent.addr).await.unwrap());
    }
    for _ in 0..shepherd_observe::admin::MAX_CONNECTIONS + 8 {
        flood.push(
            tokio::net::TcpStream::connect(agent.admin_addr)
                .await
                .unwrap(),
        );
    }
    assert_eq!(agent.admin().get("/healthz").await.status, 200);
    assert_eq!(agent.client().post(CHAT, BODY, &[]).await.status, 200);
    agent.stop().await;
}

/// Apps may speak HTTP/2 without TLS (h2c).
#[tokio::test]
async fn serves_h2c() {
    let (_a, _b, p) = two_backends(0, json!({})).await;
    let agent = TestAgent::start(&p).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = Request::post(format!("http://{}{CHAT}", agent.addr))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(BODY)))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    agent.stop().await;
}

/// Upstreams over HTTPS: rustls verifies the provider's certificate against
/// the trusted roots (here an extra CA file) and HTTP/2 is negotiated.
#[tokio::test]
async fn https_upstreams_with_rustls() {
    let provider = MockProvider::new("tls");
    let (addr, cert_pem) = provider.serve_tls().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert_pem).unwrap();
    let p = json!({
        "name": "chat", "match": {"path_prefix": "/v1/"},
        "backends": [{"name": "tls", "base_url": format!("https://localhost:{}", addr.port())}],
        "traffic": {"baseline": "tls"}
    })
    .to_string();
    let agent = TestAgent::start_with(
        &p,
        AgentOptions {
            ca_file: Some(ca),
            ..AgentOptions::default()
        },
    )
    .await;
    let r = agent.client().post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "reply from tls"
    );
    assert_eq!(provider.count(), 1);
    assert_eq!(provider.received()[0].version, http::Version::HTTP_2);
    agent.stop().await;

    // Without the CA the certificate is refused and nothing is sent.
    let untrusted = TestAgent::start(&p).await;
    let r = untrusted.client().post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 502);
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("certificate"), "{message}");
    assert_eq!(provider.count(), 1);
    untrusted.stop().await;
}

/// Keep-alive: sequential requests, streamed or not, share one upstream
/// connection; a connection whose response broke is not reused.
#[tokio::test]
async fn upstream_connections_are_reused() {
    let (a, _b, p) = two_backends(0, json!({})).await;
    let agent = TestAgent::start(&p).await;
    let c = agent.client();
    for i in 0..20 {
        let body = if i % 2 == 0 { BODY } else { STREAM_BODY };
        let req = json_request(CHAT, body);
        let (_, end) = read_stream(c.send(req).await).await;
        assert_eq!(end, StreamEnd::Clean);
    }
    assert_eq!(a.count(), 20);
    assert_eq!(a.connections(), 1, "each request opened its own connection");

    a.set(|m| m.cut_after = Some(1));
    let req = json_request(CHAT, STREAM_BODY);
    let (_, end) = read_stream(c.send(req).await).await;
    assert_eq!(end, StreamEnd::Aborted);
    a.set(|m| m.cut_after = None);
    assert_eq!(c.post(CHAT, BODY, &[]).await.status, 200);
    assert_eq!(
        a.connections(),
        2,
        "the broken connection was reused or not replaced"
    );
    agent.stop().await;
}
