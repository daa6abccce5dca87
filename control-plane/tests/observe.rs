//! What operators watch: the control plane's traces (a span per RPC that
//! continues the caller's trace, a span per rollout decision) exported over
//! OTLP/gRPC, and its Prometheus metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use serde_json::json;
use shepherd_proto::v1;
use shepherd_tests::control_plane::rollout_client_of;
use shepherd_tests::http::Client;
use shepherd_tests::mock::MockProvider;
use shepherd_tests::otlp::{Collector, Received};

use common::*;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

fn with_traceparent<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CALLER_SPAN}-01").parse().unwrap(),
    );
    req
}

fn rpc<'a>(spans: &'a [Received], method: &str) -> Option<&'a Received> {
    spans
        .iter()
        .find(|s| s.attr("rpc.method").as_deref() == Some(method))
}

fn decision<'a>(spans: &'a [Received], event: &str) -> Option<&'a Received> {
    spans.iter().find(|s| {
        s.attr("shepherd.rollout.events")
            .is_some_and(|e| e.split(',').any(|k| k == event))
    })
}

/// One replica on SQLite with an agent: RPC spans continue the caller's
/// trace and carry the gRPC status; the rollout's decisions are spans; the
/// metrics show the agent, its ACK, the rollout's state and weight, and the
/// decisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_rpcs_and_decisions_and_serves_metrics() {
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cp.db").display());
    let admin_port = free_port();
    let admin_addr = format!("127.0.0.1:{admin_port}");
    let endpoint = collector.endpoint();
    let cp = Cp::start_with_env(
        &url,
        "r1",
        &["--analysis-interval", "50ms", "--admin-listen", &admin_addr],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    );
    let (a, b) = (MockProvider::new("a"), MockProvider::new("b"));
    let (a, b) = (a.serve_tcp().await, b.serve_tcp().await);
    let state = tempfile::tempdir().unwrap();
    let _agent = start_agent(&[cp.url()], "agent-1", "chat", state.path()).await;
    let (mut policies, _) = cp.clients().await;
    let mut rollouts = rollout_client_of(&cp.addr(), Some(ADMIN)).await;

    let rollout = json!({"rollout": {
        "stages": [
            {"weight": 2000, "min_bake_time": "60s", "min_requests": 10, "max_stage_time": "120s"},
            {"weight": 10000, "min_bake_time": "60s", "min_requests": 10, "max_stage_time": "120s"}
        ],
        "gates": {"max_error_rate_percent": 5.0},
        "ack_timeout": "10s"
    }});
    policies
        .create_policy(with_traceparent(v1::CreatePolicyRequest {
            policy: Some(chat_policy(a, b, 0, rollout)),
            validate_only: false,
        }))
        .await
        .unwrap();
    let missing = policies
        .get_policy(with_traceparent(v1::GetPolicyRequest {
            name: "missing".into(),
            revision: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    rollouts
        .start_rollout(v1::StartRolloutRequest {
            policy: "chat".into(),
            reason: "observe".into(),
        })
        .await
        .unwrap();

    let spans = collector
        .wait_until(|s| {
            rpc(s, "CreatePolicy").is_some()
                && rpc(s, "GetPolicy").is_some()
                && decision(s, "CLOCK_STARTED").is_some()
        })
        .await;
    let create = rpc(&spans, "CreatePolicy").unwrap();
    assert_eq!(create.service, "shepherd-control-plane");
    assert_eq!(create.trace_id(), TRACE_ID);
    assert_eq!(create.parent_span_id(), CALLER_SPAN);
    assert_eq!(create.span.name, "shepherd.v1.PolicyService/CreatePolicy");
    assert_eq!(create.attr("rpc.grpc.status_code").as_deref(), Some("0"));
    let get = rpc(&spans, "GetPolicy").unwrap();
    assert_eq!(get.trace_id(), TRACE_ID);
    assert_eq!(get.attr("rpc.grpc.status_code").as_deref(), Some("5"));
    let clock = decision(&spans, "CLOCK_STARTED").unwrap();
    assert_eq!(clock.attr("shepherd.policy").as_deref(), Some("chat"));
    assert_eq!(clock.attr("shepherd.rollout.number").as_deref(), Some("1"));
    assert_eq!(
        clock.attr("shepherd.rollout.state").as_deref(),
        Some("ROLLOUT_STATE_RUNNING")
    );
    assert_eq!(
        clock.attr("shepherd.rollout.weight").as_deref(),
        Some("2000")
    );
    // Agents' Connect streams are not traced.
    assert!(
        spans
            .iter()
            .all(|s| s.attr("rpc.service").as_deref() != Some("shepherd.v1.AgentService")),
        "{spans:#?}"
    );

    let admin = Client::tcp(&format!("http://{admin_addr}"));
    let metrics = eventually("metrics", || {
        let admin = &admin;
        async move {
            let text = admin.get("/metrics").await.text().to_string();
            let want = [
                "shepherd_control_plane_connected_agents 1",
                "shepherd_control_plane_agents_behind 0",
                "shepherd_rollout_state{policy=\"chat\",rollout=\"1\",state=\"running\"} 1",
                "shepherd_rollout_weight_basis_points{policy=\"chat\",rollout=\"1\"} 2000",
                "shepherd_rollout_stage{policy=\"chat\",rollout=\"1\"} 0",
                "shepherd_rollout_decisions_total{policy=\"chat\",kind=\"clock_started\"} 1",
                "shepherd_control_plane_store_up 1",
                "shepherd_control_plane_connections_closed_total{reason=\"refused\"} 0",
            ];
            match want.iter().find(|w| !text.lines().any(|l| l == **w)) {
                None => Ok(text),
                Some(w) => Err(format!("no line {w:?} in:\n{text}")),
            }
        }
    })
    .await;
    let acks = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("shepherd_control_plane_ack_lag_seconds_count{replica=\"r1\"} ")
        })
        .unwrap();
    assert!(acks.parse::<u64>().unwrap() >= 2, "{metrics}");
    let sent = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shepherd_control_plane_snapshots_sent_total "))
        .unwrap();
    assert!(sent.parse::<u64>().unwrap() >= 2, "{metrics}");
    assert!(metrics.contains("# TYPE shepherd_control_plane_ack_lag_seconds histogram"));
    assert_eq!(admin.get("/healthz").await.status, 200);
}
