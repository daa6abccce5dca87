//! The official `openai` Python SDK, pointed at a real agent in front of the
//! mock provider, completes a normal and a streamed chat completion and sees
//! proper `APIError`s for failures (tests/sdk/openai_sdk_check.py).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use shepherd_tests::agent::TestAgent;
use shepherd_tests::mock::MockProvider;

/// The SDK works through the agent, normal, streamed and failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_through_the_agent() {
    let provider = MockProvider::new("primary");
    let addr = provider.serve_tcp().await;
    let p = json!({
        "name": "chat", "match": {"path_prefix": "/v1/"},
        "backends": [{"name": "primary", "base_url": format!("http://{addr}")}],
        "traffic": {"baseline": "primary"}
    });
    let agent = TestAgent::start(&p.to_string()).await;
    let base = format!("http://{}", agent.addr);
    let stdout =
        shepherd_tests::python::run_sdk_script("openai_sdk_check.py", &[&base], "openai").await;
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok: ")).count(),
        5,
        "{stdout}"
    );
    for r in provider.received() {
        let auth = r
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        assert_ne!(auth.as_deref(), Some("Bearer sk-app-key-never-forwarded"));
    }
    agent.stop().await;
}
