//! Time-dependent behaviour of the agent under a paused clock: the agent and
//! its mock providers talk over in-process pipes, so tokio's clock moves only
//! when every task waits on a timer, and waits are exact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};
use shepherd_tests::agent::{PipeAgent, PipeNet};
use shepherd_tests::fixtures::merge_json;
use shepherd_tests::http::{StreamEnd, read_stream};
use shepherd_tests::mock::{Fail, MockProvider};
use tokio::time::Instant;

const CHAT: &str = "/v1/chat/completions";
const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;

/// Mocks "a" (baseline) and "b" (candidate at `weight`) on a pipe network,
/// and an agent running the policy with `extra` merged in.
fn setup(weight: u32, extra: Value) -> (MockProvider, MockProvider, PipeAgent) {
    let net = PipeNet::default();
    let a = MockProvider::new("a");
    let b = MockProvider::new("b");
    net.add("a.test", &a);
    net.add("b.test", &b);
    let mut p = json!({
        "name": "chat",
        "match": {"path_prefix": "/v1/"},
        "backends": [
            {"name": "a", "base_url": "http://a.test"},
            {"name": "b", "base_url": "http://b.test"}
        ],
        "traffic": {"baseline": "a", "candidate": "b", "candidate_weight": weight}
    });
    merge_json(&mut p, extra);
    let agent = PipeAgent::start(&p.to_string(), &net);
    (a, b, agent)
}

fn fail(status: u16, retry_after: Option<&str>, times: Option<u32>) -> Fail {
    Fail {
        status,
        retry_after: retry_after.map(str::to_string),
        times,
    }
}

/// A 429 with Retry-After is retried after exactly that wait.
#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let (a, _b, agent) = setup(
        0,
        json!({"retry": {"max_attempts": 3, "retry_after_max": "5s"}}),
    );
    a.set(|m| m.fail = Some(fail(429, Some("3"), Some(1))));
    let r = agent.client().post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-shepherd-attempts"), Some("2"));
    let got = a.received();
    assert_eq!(got[1].at - got[0].at, Duration::from_secs(3));
}

/// A Retry-After above the cap ends the retries; with no fallback the app
/// gets the 429 as the provider sent it.
#[tokio::test(start_paused = true)]
async fn retry_after_above_the_cap_is_not_waited_for() {
    let (a, _b, agent) = setup(
        0,
        json!({"retry": {"max_attempts": 3, "retry_after_max": "5s"}}),
    );
    a.set(|m| m.fail = Some(fail(429, Some("30"), None)));
    let started = Instant::now();
    let r = agent.client().post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("30"));
    assert_eq!(a.count(), 1);
    assert_eq!(started.elapsed(), Duration::ZERO);
}

/// Backoff between retries is exponential with full jitter: each wait is at
/// most base * 2^n.
#[tokio::test(start_paused = true)]
async fn backoff_stays_under_its_ceiling() {
    let (a, _b, agent) = setup(
        0,
        json!({"retry": {"max_attempts": 4, "backoff_base": "1s", "backoff_max": "3s"}}),
    );
    a.set(|m| m.fail = Some(fail(503, None, Some(3))));
    let r = agent.client().post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 200);
    let got = a.received();
    let waits: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert_eq!(waits.len(), 3);
    for (wait, ceiling) in waits.iter().zip([1, 2, 3]) {
        assert!(*wait <= Duration::from_secs(ceiling), "{waits:?}");
    }
}

/// During an outage the budget keeps retries to a fraction of requests (plus
/// the floor per second) instead of multiplying the load.
#[tokio::test(start_paused = true)]
async fn budget_caps_retries_during_an_outage() {
    let (a, _b, agent) = setup(
        0,
        json!({"retry": {"max_attempts": 5, "backoff_base": "0.001s", "backoff_max": "0.001s",
                         "budget_percent": 10, "budget_min_per_second": 1}}),
    );
    a.set(|m| m.fail = Some(fail(503, None, None)));
    let requests = 200;
    for _ in 0..requests {
        let r = agent.client().post(CHAT, BODY, &[]).await;
        assert_eq!(r.status, 503);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let retries = a.count() - requests;
    // 10 s of traffic: 10 % of 200 requests, plus at most one a second.
    assert!(retries >= 10, "{retries} retries");
    assert!(
        retries <= 20 + 10,
        "{retries} retries: the budget did not hold"
    );
}

/// The breaker opens after consecutive failures and requests go to the
/// fallback at once; after the open time one probe reaches the backend, and
/// its success closes the breaker.
#[tokio::test(start_paused = true)]
async fn breaker_opens_falls_back_half_opens_and_closes() {
    let (_a, b, agent) = setup(
        10_000,
        json!({"circuit_breaker": {"consecutive_failures": 3, "open_time": "10s"}, "fallback": ["a"]}),
    );
    b.set(|m| m.fail = Some(fail(500, None, None)));
    let c = agent.client();
    for _ in 0..3 {
        let r = c.post(CHAT, BODY, &[]).await;
        assert_eq!(
            (r.status.as_u16(), r.backend()),
            (200, "a"),
            "fallback answers"
        );
    }
    assert_eq!(b.count(), 3);
    // Open: the candidate is skipped without being tried.
    for _ in 0..5 {
        let r = c.post(CHAT, BODY, &[]).await;
        assert_eq!(r.backend(), "a");
        assert_eq!(r.header("x-shepherd-attempts"), Some("1"));
    }
    assert_eq!(b.count(), 3);
    b.set(|m| m.fail = None);
    tokio::time::advance(Duration::from_secs(10)).await;
    // Half-open: one probe goes to the candidate and succeeds.
    let r = c.post(CHAT, BODY, &[]).await;
    assert_eq!(r.backend(), "b");
    assert_eq!(b.count(), 4);
    // Closed: the candidate takes traffic again.
    for _ in 0..3 {
        assert_eq!(c.post(CHAT, BODY, &[]).await.backend(), "b");
    }
    let metrics = agent.agent.render_metrics();
    assert!(metrics.contains("shepherd_agent_attempts_total{policy=\"chat\",backend=\"b\",outcome=\"breaker_rejected\"} 5"));
    assert!(metrics.contains("shepherd_agent_breaker_state{policy=\"chat\",backend=\"b\"} 0"));
}

/// A backend whose quota is exhausted trips its breaker at once and stays
/// skipped for quota_open_time, not the short open time; then a probe goes.
#[tokio::test(start_paused = true)]
async fn exhausted_quota_keeps_the_breaker_open_for_long() {
    let (a, b, agent) = setup(
        10_000,
        json!({
            "circuit_breaker": {"consecutive_failures": 5, "open_time": "1s", "quota_open_time": "120s"},
            "fallback": ["a"]
        }),
    );
    b.set(|m| m.mode = Some(shepherd_tests::mock::Mode::QuotaExhausted));
    let c = agent.client();
    assert_eq!(c.post(CHAT, BODY, &[]).await.backend(), "a");
    assert_eq!(b.count(), 1);
    tokio::time::advance(Duration::from_secs(119)).await;
    assert_eq!(c.post(CHAT, BODY, &[]).await.backend(), "a");
    assert_eq!(b.count(), 1, "still open after 119s");
    tokio::time::advance(Duration::from_secs(1)).await;
    b.set(|m| m.mode = None);
    assert_eq!(c.post(CHAT, BODY, &[]).await.backend(), "b", "the probe");
    assert_eq!((a.count(), b.count()), (2, 2));
}

/// An attempt with no response head within the per-try timeout is retried;
/// the overall deadline bounds all attempts.
#[tokio::test(start_paused = true)]
async fn per_try_timeout_and_overall_deadline() {
    let (a, _b, agent) = setup(
        0,
        json!({
            "backends": [{"name": "a", "base_url": "http://a.test", "timeouts": {"per_try": "2s", "overall": "5s"}},
                         {"name": "b", "base_url": "http://b.test"}],
            "retry": {"max_attempts": 5, "backoff_base": "0.001s", "backoff_max": "0.001s"}
        }),
    );
    a.set(|m| {
        m.delay = Duration::from_secs(60);
        m.delay_times = Some(1);
    });
    let started = Instant::now();
    let r = agent.client().post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-shepherd-attempts"), Some("2"));
    assert!(started.elapsed() >= Duration::from_secs(2));

    a.set(|m| {
        m.delay = Duration::from_secs(60);
        m.delay_times = None;
    });
    let started = Instant::now();
    let r = agent.client().post(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"]["type"], "shepherd_upstream_timeout");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed < Duration::from_millis(5010),
        "{elapsed:?}"
    );
}

/// A stream that stalls past the idle timeout ends with an error event.
#[tokio::test(start_paused = true)]
async fn stalled_stream_ends_with_an_idle_timeout_event() {
    let (a, _b, agent) = setup(
        0,
        json!({"backends": [{"name": "a", "base_url": "http://a.test", "timeouts": {"stream_idle": "7s"}},
                            {"name": "b", "base_url": "http://b.test"}]}),
    );
    a.set(|m| m.stall_after = Some(2));
    let req = Request::post(CHAT)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )))
        .unwrap();
    let started = Instant::now();
    let (text, end) = read_stream(agent.client().send(req).await).await;
    assert_eq!(end, StreamEnd::Aborted);
    assert!(
        text.contains("\"type\":\"shepherd_stream_idle_timeout\""),
        "{text}"
    );
    assert!(text.contains("stalled for 7s"), "{text}");
    assert_eq!(started.elapsed(), Duration::from_secs(7));
}
