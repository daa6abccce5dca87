//! Apps moving between API families, through a real agent in front of
//! strict mock providers (each serves one API, as a real provider does):
//! the official openai SDK on an Anthropic backend and the official
//! anthropic SDK on an OpenAI backend (tests/sdk/translation_check.py);
//! fallback chains and the shadow across APIs; what cannot be translated is
//! refused (a rejection that falls back) or dropped and counted; APIs a
//! backend cannot serve stay on the baseline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use shepherd_agent::telemetry::shadow_counter as c;
use shepherd_tests::agent::TestAgent;
use shepherd_tests::fixtures::merge_json;
use shepherd_tests::mock::{Fail, MockProvider, Mode};

const CHAT: &str = "/v1/chat/completions";
const MESSAGES: &str = "/v1/messages";
const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;

/// A key file for a backend's credentials.
fn key_file(dir: &tempfile::TempDir, name: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("sk-{name}-key\n")).unwrap();
    format!("file:{}", path.display())
}

fn line(name: &str, backend: &str) -> String {
    format!("{name}{{policy=\"chat\",backend=\"{backend}\"")
}

/// An OpenAI backend "gpt" and an Anthropic backend "claude" (strict mock
/// providers whose answers say `names`), and an agent running a policy
/// over them with `extra` merged in.
async fn two_families(
    names: (&str, &str),
    extra: Value,
) -> (MockProvider, MockProvider, TestAgent, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let gpt = MockProvider::openai(names.0);
    let claude = MockProvider::anthropic(names.1);
    let (ga, ca) = (gpt.serve_tcp().await, claude.serve_tcp().await);
    let mut p = json!({
        "name": "chat", "match": {"path_prefix": "/v1/"},
        "backends": [
            {"name": "gpt", "base_url": format!("http://{ga}"), "credentials": key_file(&dir, "gpt")},
            {"name": "claude", "base_url": format!("http://{ca}"), "protocol": "PROTOCOL_ANTHROPIC",
             "credentials": key_file(&dir, "claude")}
        ]
    });
    merge_json(&mut p, extra);
    let agent = TestAgent::start(&p.to_string()).await;
    (gpt, claude, agent, dir)
}

/// The official openai SDK, on a backend that speaks only Anthropic's
/// Messages API: plain, streamed, tool calls, an image, usage with cached
/// tokens, errors and a broken stream all behave as OpenAI's own would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_on_an_anthropic_backend() {
    let dir = tempfile::tempdir().unwrap();
    let claude = MockProvider::anthropic("claude");
    claude.set(|b| b.cached_tokens = 4);
    let addr = claude.serve_tcp().await;
    let p = json!({
        "name": "chat", "match": {"path_prefix": "/v1/"},
        "backends": [{"name": "claude", "base_url": format!("http://{addr}"),
                      "protocol": "PROTOCOL_ANTHROPIC", "credentials": key_file(&dir, "claude"),
                      "model_map": {"gpt-4o": "claude-sonnet-4-5"}}],
        "traffic": {"baseline": "claude"}
    });
    let agent = TestAgent::start(&p.to_string()).await;
    let base = format!("http://{}", agent.addr);
    let stdout = shepherd_tests::python::run_sdk_script(
        "translation_check.py",
        &["openai", &base],
        "openai",
    )
    .await;
    let cases: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ok: "))
        .collect();
    assert_eq!(
        cases,
        [
            "plain",
            "usage",
            "stream",
            "tool round trip",
            "streamed tool call",
            "image",
            "4xx",
            "5xx",
            "refused parameter",
            "broken stream"
        ],
        "{stdout}"
    );
    // What the backend received: Anthropic requests, with its own headers.
    let received = claude.received();
    for r in &received {
        assert_eq!(r.path, MESSAGES);
        assert_eq!(r.headers["x-api-key"], "sk-claude-key");
        assert_eq!(r.headers["anthropic-version"], "2023-06-01");
        assert!(r.headers.get("authorization").is_none());
        assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5"));
    }
    let body = |i: usize| serde_json::from_slice::<Value>(&received[i].body).unwrap();
    assert_eq!(body(0)["system"], "Be brief.");
    assert_eq!(body(0)["max_tokens"], 50);
    assert_eq!(body(1)["max_tokens"], 4096, "the default");
    assert_eq!(body(2)["tool_choice"], json!({"type": "any"}));
    let results = &body(3)["messages"][2]["content"][0];
    assert_eq!(results["type"], "tool_result");
    assert_eq!(results["content"], "Sunny, 21C");
    assert_eq!(body(3)["messages"][1]["content"][0]["type"], "tool_use");
    let image = &body(5)["messages"][0]["content"][1];
    assert_eq!(image["source"]["type"], "base64");
    assert_eq!(image["source"]["media_type"], "image/png");
    // The refused request (n=2) never reached the backend.
    assert_eq!(received.len(), 9, "every case but the refused one");
    assert_eq!(
        agent
            .metric(&line("shepherd_agent_translation_refused_total", "claude"))
            .await,
        1
    );
    agent.stop().await;
}

/// The official anthropic SDK, on a backend that speaks only OpenAI's
/// chat completions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_on_an_openai_backend() {
    let dir = tempfile::tempdir().unwrap();
    let gpt = MockProvider::openai("gpt");
    gpt.set(|b| b.cached_tokens = 4);
    let addr = gpt.serve_tcp().await;
    let p = json!({
        "name": "chat", "match": {"path_prefix": "/v1/"},
        "backends": [{"name": "gpt", "base_url": format!("http://{addr}"),
                      "credentials": key_file(&dir, "gpt"),
                      "model_map": {"claude-x": "gpt-4o"}}],
        "traffic": {"baseline": "gpt"}
    });
    let agent = TestAgent::start(&p.to_string()).await;
    let base = format!("http://{}", agent.addr);
    let stdout = shepherd_tests::python::run_sdk_script(
        "translation_check.py",
        &["anthropic", &base],
        "anthropic",
    )
    .await;
    let cases: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ok: "))
        .collect();
    assert_eq!(cases.len(), 10, "{stdout}");
    let received = gpt.received();
    for r in &received {
        assert_eq!(r.path, CHAT);
        assert_eq!(r.headers["authorization"], "Bearer sk-gpt-key");
        assert!(r.headers.get("anthropic-version").is_none());
        assert!(r.headers.get("x-api-key").is_none());
    }
    let body = |i: usize| serde_json::from_slice::<Value>(&received[i].body).unwrap();
    assert_eq!(
        body(0)["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(body(0)["max_completion_tokens"], 50);
    assert_eq!(body(1)["stream_options"], json!({"include_usage": true}));
    assert_eq!(body(2)["tool_choice"], "required");
    assert_eq!(body(3)["messages"][2]["role"], "tool");
    let image = &body(5)["messages"][0]["content"][1];
    assert!(
        image["image_url"]["url"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,iVBOR"),
        "{image}"
    );
    assert_eq!(received.len(), 9);
    agent.stop().await;
}

/// A fallback chain may cross APIs: an Anthropic candidate that rejects
/// the app falls back to the OpenAI baseline, and a request the candidate's
/// API cannot express (n = 2) falls back at once without reaching it,
/// counted as a rejection that leaves its breaker alone.
#[tokio::test]
async fn fallback_crosses_apis_and_untranslatable_requests_fall_back() {
    let (gpt, claude, agent, _dir) = two_families(
        ("gpt", "claude"),
        json!({
            "traffic": {"baseline": "gpt", "candidate": "claude", "candidate_weight": 10000},
            "fallback": ["gpt"],
            "circuit_breaker": {"consecutive_failures": 5, "open_time": "60s"}
        }),
    )
    .await;
    let c = agent.client();

    // Translated and served by the candidate.
    let r = c.post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.backend(), "claude");
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "reply from claude"
    );

    // No counterpart for n = 2: the baseline serves it; the candidate never
    // saw it and its breaker stays closed.
    let before = claude.count();
    let n2 = r#"{"model":"gpt-4o","n":2,"messages":[{"role":"user","content":"hi"}]}"#;
    for _ in 0..6 {
        let r = c.post(CHAT, n2, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.backend(), "gpt");
    }
    assert_eq!(claude.count(), before);
    assert_eq!(
        agent.metric("shepherd_agent_attempts_total{policy=\"chat\",backend=\"claude\",outcome=\"backend_rejected\"}").await,
        6
    );
    assert_eq!(
        agent
            .metric(&line("shepherd_agent_breaker_state", "claude"))
            .await,
        0,
        "closed"
    );
    let r = c.post(CHAT, BODY, &[]).await;
    assert_eq!(r.backend(), "claude");

    // An Anthropic app on the same policy: the candidate serves it as it
    // is; the baseline translates it when the candidate fails.
    let m = r#"{"model":"claude-x","max_tokens":20,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = c.post(MESSAGES, m, &[]).await;
    assert_eq!(r.backend(), "claude");
    assert_eq!(r.json()["content"][0]["text"], "reply from claude");
    claude.set(|b| {
        b.fail = Some(Fail {
            status: 500,
            retry_after: None,
            times: None,
        })
    });
    let r = c.post(MESSAGES, m, &[]).await;
    claude.set(|b| b.fail = None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.backend(), "gpt");
    assert_eq!(r.json()["type"], "message");
    assert_eq!(r.json()["content"][0]["text"], "reply from gpt");
    assert_eq!(gpt.received().last().unwrap().path, CHAT);

    // The candidate rejects the app (a wrong key; its breaker opens): the OpenAI
    // baseline
    // serves, in the app's API either way.
    claude.set(|b| b.mode = Some(Mode::Unauthorized));
    let r = c.post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.backend(), "gpt");
    assert_eq!(r.json()["object"], "chat.completion");
    claude.set(|b| b.mode = None);

    // With nothing left to try, the app gets the refusal in its API,
    // naming the field.
    let running = std::fs::read_to_string(&agent.policy_file).unwrap();
    let running: Value = serde_json::from_str(&running).unwrap();
    let solo = json!({
        "name": "chat", "match": {"path_prefix": "/v1/"},
        "backends": [running["backends"][1]],
        "traffic": {"baseline": "claude"}
    });
    agent.reload(&solo.to_string()).unwrap();
    let r = c.post(CHAT, n2, &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "n");
    assert_eq!(r.json()["error"]["code"], "unsupported_parameter");
    // The app's own mistake is answered as such.
    let r = c.post(CHAT, r#"{"model":"gpt-4o"}"#, &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["message"], "messages: required");
    agent.stop().await;
}

/// With drop_unsupported, fields with no counterpart are dropped and
/// counted, and the request is served.
#[tokio::test]
async fn drop_unsupported_drops_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let claude = MockProvider::anthropic("claude");
    let ca = claude.serve_tcp().await;
    let p = json!({
        "name": "chat", "match": {"path_prefix": "/v1/"},
        "backends": [{"name": "claude", "base_url": format!("http://{ca}"), "protocol": "PROTOCOL_ANTHROPIC",
                      "credentials": key_file(&dir, "claude"), "drop_unsupported": true,
                      "default_max_tokens": 300, "anthropic_version": "2024-01-01"}],
        "traffic": {"baseline": "claude"}
    });
    let agent = TestAgent::start(&p.to_string()).await;
    let body = r#"{"model":"gpt-4o","n":1,"seed":7,"logprobs":true,"frequency_penalty":0.5,"messages":[{"role":"user","content":"hi","name":"ann"}]}"#;
    let r = agent.client().post(CHAT, body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent: Value = serde_json::from_slice(&claude.received()[0].body).unwrap();
    assert_eq!(
        sent,
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 300})
    );
    assert_eq!(
        claude.received()[0].headers["anthropic-version"],
        "2024-01-01"
    );
    assert_eq!(
        agent
            .metric(&line(
                "shepherd_agent_translation_dropped_fields_total",
                "claude"
            ))
            .await,
        4
    );
    assert_eq!(
        agent
            .metric(&line("shepherd_agent_translated_requests_total", "claude"))
            .await,
        1
    );
    agent.stop().await;
}

/// A shadow of the other API family gets the request translated, and its
/// answer is compared with the primary's like with like: no status or
/// schema mismatch, the text's similarity measured, tokens counted.
#[tokio::test]
async fn a_cross_api_shadow_compares_like_with_like() {
    let (_gpt, claude, agent, _dir) = two_families(
        ("same", "same"),
        json!({
            "traffic": {"baseline": "gpt"},
            "shadow": {"backend": "claude", "percent": 100}
        }),
    )
    .await;
    let c = agent.client();
    let stream = r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    for body in [BODY, stream] {
        let r = c.post(CHAT, body, &[]).await;
        assert_eq!(r.status, 200);
    }
    // The comparisons run after both answers end (polled, with a deadline
    // against hangs).
    let counts = || {
        agent
            .agent
            .registry
            .stats
            .totals()
            .get(&("chat".to_string(), "claude".to_string()))
            .map(|t| t.shadow.clone())
            .unwrap_or_default()
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while counts().counters[c::COMPARED] < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", counts());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let shadow = counts();
    for kind in [c::STATUS_MISMATCH, c::SHADOW_SCHEMA_ERRORS, c::DIVERGED] {
        assert_eq!(shadow.counters[kind], 0, "{}", c::NAMES[kind]);
    }
    assert!(shadow.counters[c::INPUT_TOKENS] > 0);
    // The same words on both sides, whatever the API: full similarity.
    assert_eq!(shadow.similarity.iter().sum::<u64>(), 2);
    assert_eq!(
        *shadow.similarity.last().unwrap(),
        2,
        "{:?}",
        shadow.similarity
    );
    for r in claude.received() {
        assert_eq!(r.path, MESSAGES);
        assert_eq!(r.headers["x-shepherd-shadow"], "1");
    }
    agent.stop().await;
}

/// An Anthropic candidate serves chat only: embeddings and legacy
/// completions stay on the OpenAI baseline, and it is no fallback for them.
#[tokio::test]
async fn apis_a_backend_cannot_serve_stay_on_the_baseline() {
    let (_gpt, claude, agent, _dir) = two_families(
        ("gpt", "claude"),
        json!({
            "traffic": {"baseline": "gpt", "candidate": "claude", "candidate_weight": 10000},
            "fallback": ["claude"]
        }),
    )
    .await;
    let c = agent.client();
    let emb = r#"{"model":"text-embedding-3-small","input":"hi"}"#;
    for path in ["/v1/embeddings", "/v1/completions"] {
        let r = c.post(path, emb, &[]).await;
        assert_eq!(r.backend(), "gpt", "{path}");
    }
    let r = c
        .post("/v1/embeddings", emb, &[("x-mock-status", "500")])
        .await;
    assert_eq!(r.status, 500);
    assert_eq!(claude.count(), 0);
    agent.stop().await;
}

/// The README's worked example (deploy/examples/agent-cross-api.json),
/// with the mock providers' addresses and key files put in: alice's
/// requests go to the Claude candidate and come back as chat completions,
/// bob's stay on the OpenAI baseline.
#[tokio::test]
async fn the_readme_example_moves_an_openai_app_to_claude() {
    let dir = tempfile::tempdir().unwrap();
    let gpt = MockProvider::openai("gpt");
    let claude = MockProvider::anthropic("claude");
    let (ga, ca) = (gpt.serve_tcp().await, claude.serve_tcp().await);
    let mut p: Value =
        serde_json::from_str(include_str!("../../deploy/examples/agent-cross-api.json")).unwrap();
    p["backends"][0]["base_url"] = json!(format!("http://{ga}"));
    p["backends"][0]["credentials"] = json!(key_file(&dir, "gpt"));
    p["backends"][1]["base_url"] = json!(format!("http://{ca}"));
    p["backends"][1]["credentials"] = json!(key_file(&dir, "claude"));
    let agent = TestAgent::start(&p.to_string()).await;
    let c = agent.client();
    let body = r#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}"#;
    let r = c.post(CHAT, body, &[("x-user-id", "alice")]).await;
    assert_eq!(r.backend(), "claude");
    let a = r.json();
    assert_eq!(a["object"], "chat.completion");
    assert_eq!(a["model"], "claude-sonnet-4-5");
    assert_eq!(a["choices"][0]["message"]["content"], "reply from claude");
    assert_eq!(a["usage"]["prompt_tokens"], 11);
    let sent: Value = serde_json::from_slice(&claude.received()[0].body).unwrap();
    assert_eq!(sent["max_tokens"], 1024, "the backend's default_max_tokens");
    let r = c.post(CHAT, body, &[("x-user-id", "bob")]).await;
    assert_eq!(r.backend(), "gpt");
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "reply from gpt"
    );
    agent.stop().await;
}
