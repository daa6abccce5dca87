//! Shadow traffic through a running agent, in front of mock providers on
//! TCP: the app's answer never waits for the shadow, mirroring follows the
//! percentage and is sticky, errors and malformed answers show up in the
//! divergence figures and the samples, the caps and the shedding hold, and
//! streamed requests are mirrored and compared.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use shepherd_agent::telemetry::shadow_counter as c;
use shepherd_tests::agent::TestAgent;
use shepherd_tests::fixtures::merge_json;
use shepherd_tests::http::{StreamEnd, read_stream};
use shepherd_tests::mock::{MockProvider, Mode};

const CHAT: &str = "/v1/chat/completions";
const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM_BODY: &str =
    r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// Baseline "a" takes every request; "b" is the shadow at `percent`.
fn policy(a: SocketAddr, b: SocketAddr, percent: f64, shadow: Value) -> String {
    let mut p = json!({
        "name": "chat",
        "match": {"path_prefix": "/v1/"},
        "backends": [
            {"name": "a", "base_url": format!("http://{a}")},
            {"name": "b", "base_url": format!("http://{b}"), "model_map": {"gpt-4o": "shadow-model"},
             "headers": {"x-backend-tag": "shadow-b"}}
        ],
        "traffic": {"baseline": "a", "candidate": "b", "candidate_weight": 0, "sticky_header": "x-user-id"},
        "shadow": {"percent": percent}
    });
    merge_json(&mut p, json!({ "shadow": shadow }));
    p.to_string()
}

async fn setup(percent: f64, shadow: Value) -> (MockProvider, MockProvider, TestAgent) {
    let a = MockProvider::new("a");
    let b = MockProvider::new("b");
    let (aa, ba) = (a.serve_tcp().await, b.serve_tcp().await);
    let agent = TestAgent::start(&policy(aa, ba, percent, shadow)).await;
    (a, b, agent)
}

/// A shadow counter of backend "b".
fn shadow(agent: &TestAgent, counter: usize) -> u64 {
    agent
        .agent
        .registry
        .stats
        .totals()
        .get(&("chat".to_string(), "b".to_string()))
        .map_or(0, |t| t.shadow.get(counter))
}

/// Waits (polling, for up to 30 s, a guard against hangs) until a shadow
/// counter reaches `n`.
async fn wait_shadow(agent: &TestAgent, counter: usize, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while shadow(agent, counter) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "shadow counter {} stayed at {} (wanted {n})",
            c::NAMES[counter],
            shadow(agent, counter)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The app's answer comes from the primary while the shadow request is
/// still held at the shadow backend; the comparison follows later.
#[tokio::test]
async fn the_app_never_waits_for_the_shadow() {
    let (a, b, agent) = setup(100.0, json!({})).await;
    b.set(|x| x.gated = true);
    let r = agent.client().post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), "a");
    assert_eq!(a.count(), 1);
    // The shadow request arrived and is still held: the answer above did
    // not wait for it.
    b.wait_for(1).await;
    assert_eq!(shadow(&agent, c::COMPARED), 0);
    b.release(1);
    wait_shadow(&agent, c::COMPARED, 1).await;
    // The shadow request was marked and used the shadow's own settings.
    let seen = &b.received()[0];
    assert_eq!(seen.headers["x-shepherd-shadow"], "1");
    assert_eq!(seen.headers["x-backend-tag"], "shadow-b");
    assert_eq!(seen.model.as_deref(), Some("shadow-model"));
    assert_eq!(shadow(&agent, c::STATUS_MISMATCH), 0);
    assert_eq!(shadow(&agent, c::SHADOW_SCHEMA_ERRORS), 0);
    // Primary and shadow usage are both counted.
    assert_eq!(shadow(&agent, c::PRIMARY_INPUT_TOKENS), 10);
    assert_eq!(shadow(&agent, c::INPUT_TOKENS), 10);
    agent.stop().await;
}

/// About the configured share of keys is mirrored, and a key is mirrored
/// every time or never.
#[tokio::test]
async fn mirrors_the_configured_share_sticky_by_key() {
    let (a, b, agent) = setup(25.0, json!({"max_concurrency": 1000})).await;
    let client = agent.client();
    for i in 0..400 {
        let user = format!("user-{i}");
        assert_eq!(
            client
                .post(CHAT, BODY, &[("x-user-id", &user)])
                .await
                .status,
            200
        );
    }
    wait_shadow(&agent, c::COMPARED, shadow(&agent, c::MIRRORED)).await;
    let first: std::collections::BTreeSet<String> = b
        .received()
        .iter()
        .map(|r| r.headers["x-user-id"].to_str().unwrap().to_string())
        .collect();
    assert!(
        (70..=130).contains(&first.len()),
        "{} of 400 keys mirrored",
        first.len()
    );
    assert_eq!(a.count(), 400, "every app request went to the primary");
    // The same keys again: exactly the same ones are mirrored.
    let mirrored_before = shadow(&agent, c::MIRRORED);
    for i in 0..400 {
        let user = format!("user-{i}");
        client.post(CHAT, BODY, &[("x-user-id", &user)]).await;
    }
    wait_shadow(&agent, c::MIRRORED, mirrored_before + first.len() as u64).await;
    wait_shadow(&agent, c::COMPARED, mirrored_before + first.len() as u64).await;
    assert_eq!(b.count(), 2 * first.len());
    agent.stop().await;
}

/// A shadow answering with errors, or with JSON that is not a completion,
/// shows in the divergence figures and in the samples (with the request id,
/// without the prompt).
#[tokio::test]
async fn errors_and_malformed_answers_diverge() {
    let (_a, b, agent) = setup(100.0, json!({})).await;
    b.set(|x| {
        x.fail = Some(shepherd_tests::mock::Fail {
            status: 503,
            retry_after: None,
            times: Some(2),
        });
    });
    let client = agent.client();
    for i in 0..2 {
        let id = format!("req-err-{i}");
        assert_eq!(
            client
                .post(CHAT, BODY, &[("x-request-id", &id)])
                .await
                .status,
            200
        );
    }
    wait_shadow(&agent, c::COMPARED, 2).await;
    b.set(|x| x.mode = Some(Mode::Malformed));
    for i in 0..3 {
        let id = format!("req-bad-{i}");
        assert_eq!(
            client
                .post(CHAT, BODY, &[("x-request-id", &id)])
                .await
                .status,
            200
        );
    }
    wait_shadow(&agent, c::COMPARED, 5).await;
    // Outcome classes differ for all five: server_error or malformed
    // against ok.
    assert_eq!(shadow(&agent, c::STATUS_MISMATCH), 5);
    assert_eq!(shadow(&agent, c::SHADOW_SCHEMA_ERRORS), 3);
    assert_eq!(shadow(&agent, c::PRIMARY_SCHEMA_ERRORS), 0);
    assert_eq!(shadow(&agent, c::DIVERGED), 5);

    let samples = agent.admin().get("/shadow/mismatches").await.json();
    let samples = samples.as_array().unwrap();
    assert_eq!(samples.len(), 5);
    assert_eq!(samples[0]["request_id"], "req-bad-2", "newest first");
    assert!(
        samples[0]["reason"]
            .as_str()
            .unwrap()
            .contains("choices: must be a non-empty list"),
        "{samples:?}"
    );
    assert_eq!(samples[4]["shadow_status"], 503);
    assert_eq!(samples[4]["primary_status"], 200);
    assert!(
        samples.iter().all(|s| s.get("request").is_none()),
        "no prompt text kept"
    );
    // The figures go into the reports, under the shadow backend.
    let reports = agent.agent.registry.stats.collect();
    let b_report = reports[0]
        .backends
        .iter()
        .find(|x| x.backend == "b")
        .unwrap();
    let sh = b_report.shadow.as_ref().unwrap();
    assert_eq!((sh.compared, sh.diverged), (5, 5));
    assert!(
        b_report.outcomes.as_ref().unwrap().success == 0,
        "shadow attempts are not primary ones"
    );
    let text = agent.admin().get("/metrics").await.text().to_string();
    assert!(text.contains(
        "shepherd_agent_shadow_total{policy=\"chat\",backend=\"b\",kind=\"diverged\"} 5"
    ));
    agent.stop().await;
}

/// With every slot and queue place taken, mirrored requests are shed (and
/// counted), never queued without bound; the token cap skips mirroring once
/// the shadow's answers used it up.
#[tokio::test]
async fn caps_and_shedding_hold() {
    let (_a, b, agent) = setup(100.0, json!({"max_concurrency": 1})).await;
    b.set(|x| x.gated = true);
    let client = agent.client();
    for _ in 0..5 {
        assert_eq!(client.post(CHAT, BODY, &[]).await.status, 200);
    }
    // One running, one waiting for the slot, three shed.
    assert_eq!(shadow(&agent, c::SHED), 3);
    b.wait_for(1).await;
    b.release(2);
    wait_shadow(&agent, c::COMPARED, 2).await;
    assert_eq!(b.count(), 2);
    agent.stop().await;

    // 15 tokens an answer, 20 a minute: the second request still fits
    // (15 used), the third does not (30).
    let (_a, b, agent) = setup(100.0, json!({"max_tokens_per_minute": 20})).await;
    let client = agent.client();
    for n in 1..=2 {
        client.post(CHAT, BODY, &[]).await;
        wait_shadow(&agent, c::COMPARED, n).await;
    }
    client.post(CHAT, BODY, &[]).await;
    assert_eq!(shadow(&agent, c::SKIPPED_TOKENS), 1);
    assert_eq!(b.count(), 2);
    agent.stop().await;
}

/// A streamed request is mirrored: the shadow stream is read to its end and
/// compared, while the app's stream comes from the primary.
#[tokio::test]
async fn streamed_requests_are_mirrored_and_compared() {
    let (_a, b, agent) = setup(100.0, json!({})).await;
    let resp = agent
        .client()
        .send(
            http::Request::post(CHAT)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(STREAM_BODY)))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.headers()["x-shepherd-backend"], "a");
    let (text, end) = read_stream(resp).await;
    assert_eq!(end, StreamEnd::Clean);
    assert!(text.contains("data: [DONE]"));
    wait_shadow(&agent, c::COMPARED, 1).await;
    assert_eq!(
        b.streams_completed(),
        1,
        "the shadow stream was read to its end"
    );
    assert_eq!(shadow(&agent, c::STATUS_MISMATCH), 0);
    assert_eq!(shadow(&agent, c::SHADOW_SCHEMA_ERRORS), 0);
    assert_eq!(shadow(&agent, c::PRIMARY_SCHEMA_ERRORS), 0);
    let totals = agent.agent.registry.stats.totals();
    let sh = &totals[&("chat".to_string(), "b".to_string())].shadow;
    assert_eq!(
        sh.similarity.iter().sum::<u64>(),
        1,
        "a similarity was recorded"
    );
    assert_eq!(sh.ttft.count(), 1, "the shadow's time to first token");
    agent.stop().await;
}
