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
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/sdk/openai_sdk_check.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(format!("http://{}", agent.addr))
        .output()
        .await
        .expect("python3 is needed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'openai'"),
        "the openai package is needed: pip install openai (tests/run installs it)"
    );
    assert!(
        out.status.success(),
        "SDK check failed:\n{stdout}\n{stderr}"
    );
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
