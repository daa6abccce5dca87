//! The official openai and anthropic Python SDKs at their default settings
//! (two retries of their own) through a real agent, counting upstream
//! attempts per app call (tests/sdk/sdk_retries_check.py): after the agent
//! retried and fell back, its `x-should-retry: false` stops the SDK from
//! multiplying the attempts; after a single attempt the SDK retries as
//! usual.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use shepherd_tests::agent::TestAgent;
use shepherd_tests::mock::{Fail, MockProvider};

/// Requests the agent has taken for policy "chat".
async fn agent_requests(agent: &TestAgent) -> u64 {
    let line = "shepherd_agent_requests_total{policy=\"chat\"} ";
    agent
        .admin()
        .get("/metrics")
        .await
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .map_or(0, |v| v.parse().unwrap())
}

/// Runs one failing SDK call through `agent`; returns the status the SDK
/// ended with and how many requests it sent to the agent.
async fn sdk_call(sdk: &str, agent: &TestAgent) -> (u16, u64) {
    let before = agent_requests(agent).await;
    let base = format!("http://{}", agent.addr);
    let stdout = shepherd_tests::python::run_sdk_script(
        "sdk_retries_check.py",
        &[sdk, &base],
        "openai anthropic",
    )
    .await;
    let status = stdout
        .trim()
        .strip_prefix("status=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no status in {stdout:?}"));
    (status, agent_requests(agent).await - before)
}

fn failing(m: &MockProvider) {
    m.set(|x| {
        x.fail = Some(Fail {
            status: 500,
            retry_after: None,
            times: None,
        })
    });
}

/// With both SDKs: a call the agent already retried (2 attempts) and fell
/// back from (2 more) reaches the upstreams 4 times, not 3 x 4; a call the
/// agent answered after one attempt is retried by the SDK as it would be
/// without the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdks_do_not_multiply_the_agents_retries() {
    let a = MockProvider::new("a");
    let b = MockProvider::new("b");
    let (aa, ba) = (a.serve_tcp().await, b.serve_tcp().await);
    failing(&a);
    failing(&b);
    let policy = |retries: serde_json::Value| {
        let mut p = json!({
            "name": "chat", "match": {"path_prefix": "/v1/"},
            "backends": [
                {"name": "a", "base_url": format!("http://{aa}")},
                {"name": "b", "base_url": format!("http://{ba}")}
            ],
            "traffic": {"baseline": "a", "candidate": "b", "candidate_weight": 10000}
        });
        shepherd_tests::fixtures::merge_json(&mut p, retries);
        p.to_string()
    };
    let retried = TestAgent::start(&policy(json!({
        "fallback": ["a"],
        "retry": {"max_attempts": 2, "backoff_base": "0.001s", "backoff_max": "0.001s"}
    })))
    .await;
    let single = TestAgent::start(&policy(json!({}))).await;
    for sdk in ["openai", "anthropic"] {
        let upstream = || a.count() + b.count();
        let before = upstream();
        let (status, requests) = sdk_call(sdk, &retried).await;
        assert_eq!(status, 500, "{sdk}");
        assert_eq!(
            requests, 1,
            "{sdk}: x-should-retry stopped the SDK's retries"
        );
        assert_eq!(upstream() - before, 4, "{sdk}: 2 attempts on b, 2 on a");

        let before = upstream();
        let (status, requests) = sdk_call(sdk, &single).await;
        assert_eq!(status, 500, "{sdk}");
        assert_eq!(
            requests, 3,
            "{sdk}: one attempt each, so the SDK retries twice"
        );
        assert_eq!(upstream() - before, 3, "{sdk}");
    }
    retried.stop().await;
    single.stop().await;
}
