//! The fleet end to end: control-plane processes (killed and restarted for
//! real) on Postgres or SQLite, agents connected over gRPC, mock providers on
//! TCP. Snapshots reach agents on every replica, ACKs and NACKs show in the
//! fleet view, agents keep serving without the control plane and restart
//! from their disk snapshot, and everything converges when it returns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use shepherd_control_plane::server::ServerOptions;
use shepherd_control_plane::store;
use shepherd_proto::v1;
use shepherd_tests::agent::{FleetAgent, FleetAgentOptions};
use shepherd_tests::control_plane::{AgentClient, TestControlPlane, update_latest};
use shepherd_tests::fleet_sim::SimAgent;
use shepherd_tests::mock::MockProvider;
use shepherd_tests::pg::TestDb;

use common::*;

async fn list_agents(api: &mut AgentClient) -> BTreeMap<String, v1::AgentInfo> {
    api.list_agents(v1::ListAgentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .agents
        .into_iter()
        .map(|a| (a.agent_id.clone(), a))
        .collect()
}

async fn status(api: &mut AgentClient, name: &str) -> v1::PolicyStatus {
    api.get_policy_status(v1::GetPolicyStatusRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
}

/// Waits until the fleet view (from `api`) shows each of `ids` connected and
/// running at least `version`.
async fn fleet_shows(
    api: &mut AgentClient,
    ids: &[&str],
    version: u64,
) -> BTreeMap<String, v1::AgentInfo> {
    eventually("the fleet view showing every ACK", || {
        let mut api = api.clone();
        async move {
            let agents = list_agents(&mut api).await;
            for id in ids {
                let a = agents
                    .get(*id)
                    .ok_or(format!("{id} not listed: {agents:?}"))?;
                if !a.connected || a.applied_version < version {
                    return Err(format!("{id}: {a:?}"));
                }
            }
            Ok(agents)
        }
    })
    .await
}

/// The suite: `cps` replicas on one database, three agents (two on the last
/// replica, one on the first).
async fn fleet_suite(database_url: String, replicas: usize) {
    let mock_a = MockProvider::new("a");
    let mock_b = MockProvider::new("b");
    let (a, b) = (mock_a.serve_tcp().await, mock_b.serve_tcp().await);
    let mut cps: Vec<Cp> = (0..replicas)
        .map(|i| Cp::start(&database_url, &format!("cp-{i}")))
        .collect();
    let (mut policies, mut api) = cps[0].clients().await;
    let (_, mut api_last) = cps[replicas - 1].clients().await;
    let first_url = vec![cps[0].url()];
    let last_url = vec![cps[replicas - 1].url()];
    let dir = tempfile::tempdir().unwrap();
    let state = |i: usize| dir.path().join(format!("agent-{i}"));

    // A policy written on the first replica...
    policies
        .create_policy(v1::CreatePolicyRequest {
            policy: Some(chat_policy(a, b, 5000, json!({}))),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut agents = vec![
        start_agent(&last_url, "agent-0", "chat", &state(0)).await,
        start_agent(&last_url, "agent-1", "chat", &state(1)).await,
        start_agent(&first_url, "agent-2", "chat", &state(2)).await,
    ];
    let ids = ["agent-0", "agent-1", "agent-2"];
    let v1 = status(&mut api, "chat").await.since_version;
    for agent in &agents {
        agent.wait_version(|v| v >= v1).await;
    }
    // ...and each ACK is in the fleet view of every replica.
    let view = fleet_shows(&mut api, &ids, v1).await;
    assert_eq!(view["agent-0"].replica, format!("cp-{}", replicas - 1));
    assert_eq!(view["agent-2"].replica, "cp-0");
    assert_eq!(view["agent-0"].labels, labels("chat"));
    fleet_shows(&mut api_last, &ids, v1).await;

    // An update on the first replica reaches agents on the last one.
    update_latest(&mut policies, chat_policy(a, b, 2000, json!({}))).await;
    let v2 = status(&mut api, "chat").await.since_version;
    assert!(v2 > v1);
    for agent in &agents {
        assert!(agent.wait_version(|v| v >= v2).await >= v2);
    }
    fleet_shows(&mut api, &ids, v2).await;
    let s = status(&mut api, "chat").await;
    assert_eq!(
        (s.selected_agents, s.current_agents, s.nacking_agents),
        (3, 3, 0),
        "{s:?}"
    );

    // A snapshot the agents cannot apply is NACKed with the reason; they
    // keep serving the previous one.
    update_latest(
        &mut policies,
        chat_policy(
            a,
            b,
            2000,
            json!({"backends": [
                {"name": "a", "base_url": format!("http://{a}")},
                {"name": "b", "base_url": format!("http://{b}"), "credentials": "env:SHEPHERD_FLEET_TEST_UNSET_KEY"}
            ]}),
        ),
    )
    .await;
    let nacked = eventually("every agent NACKing", || {
        let mut api = api.clone();
        async move {
            let s = status(&mut api, "chat").await;
            if s.nacking_agents == 3 {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        }
    })
    .await;
    assert_eq!(nacked.current_agents, 0);
    let view = list_agents(&mut api).await;
    for id in ids {
        let a = &view[id];
        assert!(
            a.nack_reason.contains("SHEPHERD_FLEET_TEST_UNSET_KEY")
                && a.nack_reason.contains("backends[1].credentials"),
            "{a:?}"
        );
        assert_eq!(a.applied_version, v2, "the previous snapshot stays");
    }
    for agent in &agents {
        assert_eq!(agent.version(), v2);
        assert_eq!(agent.client().post(CHAT, BODY, &[]).await.status, 200);
    }

    // Fixed: everyone converges, and the old refusal is gone from the
    // fleet view.
    update_latest(&mut policies, chat_policy(a, b, 5000, json!({}))).await;
    let v3 = status(&mut api, "chat").await.since_version;
    for agent in &agents {
        agent.wait_version(|v| v >= v3).await;
    }
    fleet_shows(&mut api, &ids, v3).await;
    let view = list_agents(&mut api).await;
    for id in ids {
        let a = &view[id];
        assert_eq!((a.nack_version, a.nack_reason.as_str()), (0, ""), "{a:?}");
    }

    // A policy for other agents disturbs nobody here: one "other" agent per
    // replica proves each replica has taken the change.
    let reloads: Vec<u64> = agents
        .iter()
        .map(|a| a.agent.stats.reloads_ok.load(Ordering::Relaxed))
        .collect();
    let mut others = Vec::new();
    for (i, cp) in cps.iter().enumerate() {
        others.push(start_agent(&[cp.url()], &format!("other-{i}"), "other", &state(10 + i)).await);
    }
    for o in &others {
        o.wait_version(|v| v >= v3).await;
    }
    let mut other = chat_policy(
        a,
        b,
        0,
        json!({"selector": {"match_labels": {"app": "other"}}}),
    );
    other.name = "other".into();
    policies
        .create_policy(v1::CreatePolicyRequest {
            policy: Some(other),
            ..Default::default()
        })
        .await
        .unwrap();
    let v_other = status(&mut api, "other").await.since_version;
    for o in &others {
        o.wait_version(|v| v >= v_other).await;
    }
    for (agent, before) in agents.iter().zip(&reloads) {
        assert_eq!(agent.version(), v3, "not disturbed");
        assert_eq!(
            agent.agent.stats.reloads_ok.load(Ordering::Relaxed),
            *before
        );
    }
    for o in others {
        o.stop().await;
    }

    // Kill every replica under load: agents keep serving the same split,
    // with no failed request.
    let load = Load::start(&agents.iter().collect::<Vec<_>>());
    load.run_for(30).await;
    let before_kill = (mock_a.count(), mock_b.count());
    for cp in &mut cps {
        cp.kill();
    }
    eventually("agents noticing the control plane is gone", || async {
        let up: u64 = agents
            .iter()
            .map(|a| {
                a.agent
                    .stats
                    .control_plane_connected
                    .load(Ordering::Relaxed)
            })
            .sum();
        if up == 0 {
            Ok(())
        } else {
            Err(format!("{up} still connected"))
        }
    })
    .await;
    load.run_for(200).await;
    let (sent, failed) = load.stop().await;
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed without the control plane"
    );
    let after = (
        mock_a.count() - before_kill.0,
        mock_b.count() - before_kill.1,
    );
    assert!(after.0 > 0 && after.1 > 0, "the split continues: {after:?}");
    for agent in &agents {
        assert_eq!(agent.version(), v3);
    }

    // An agent restarted while the control plane is down serves from disk.
    agents.remove(0).stop().await;
    let restarted = start_agent(&last_url, "agent-0", "chat", &state(0)).await;
    assert_eq!(restarted.wait_version(|v| v == v3).await, v3);
    assert_eq!(restarted.client().post(CHAT, BODY, &[]).await.status, 200);
    agents.insert(0, restarted);

    // Reports that could not be sent are counted.
    eventually("reports overflowing the queue", || async {
        let lost = agents[1].agent.stats.reports_lost.load(Ordering::Relaxed);
        if lost > 0 {
            Ok(())
        } else {
            Err("none lost yet".to_string())
        }
    })
    .await;

    // The control plane returns: everything reconnects and converges, and
    // telemetry reaches the database.
    for cp in &mut cps {
        cp.restart();
    }
    let (_, mut api) = cps[0].clients().await;
    fleet_shows(&mut api, &ids, v3).await;
    eventually("the lost reports in the fleet view", || {
        let mut api = api.clone();
        async move {
            let a = list_agents(&mut api).await.remove("agent-1").unwrap();
            if a.reports_lost > 0 {
                Ok(())
            } else {
                Err(format!("{a:?}"))
            }
        }
    })
    .await;
    let s = status(&mut api, "chat").await;
    assert_eq!((s.selected_agents, s.current_agents), (3, 3), "{s:?}");
    for agent in &agents {
        for _ in 0..5 {
            assert_eq!(agent.client().post(CHAT, BODY, &[]).await.status, 200);
        }
    }
    let store = store::open(&database_url, &store::StoreOptions::default())
        .await
        .unwrap();
    let v3_signed = i64::try_from(v3).unwrap();
    let success = eventually("telemetry windows in the database", || {
        let store = store.clone();
        async move {
            let rows = store
                .read_telemetry("chat", 0, i64::MAX)
                .await
                .map_err(|e| e.to_string())?;
            let success: u64 = rows
                .iter()
                .filter(|r| r.snapshot_version >= v3_signed)
                .map(|r| r.data.outcomes.as_ref().map_or(0, |o| o.success))
                .sum();
            if success >= 15 {
                Ok(success)
            } else {
                Err(format!("{success} successes so far"))
            }
        }
    })
    .await;
    assert!(success >= 15);
    let view = list_agents(&mut api).await;
    assert!(view["agent-1"].last_report_time.is_some());
    // Reconnecting with the same set cost no snapshot transfer.
    for agent in &agents {
        assert_eq!(agent.version(), v3);
    }
    for agent in agents {
        agent.stop().await;
    }
}

/// Two replicas on one Postgres, three agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_on_postgres_with_two_replicas() {
    let db = TestDb::create().await;
    fleet_suite(db.url.clone(), 2).await;
}

/// One replica on SQLite, three agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("fleet.db").display());
    fleet_suite(url, 1).await;
}

/// Without the control plane for longer than the loss TTL an agent stops
/// its faults (weights stay); when the control plane returns they resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_stop_when_the_control_plane_is_gone_too_long() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("fleet.db").display());
    let mock_a = MockProvider::new("a");
    let mock_b = MockProvider::new("b");
    let (a, b) = (mock_a.serve_tcp().await, mock_b.serve_tcp().await);
    let mut cp = Cp::start(&url, "cp-0");
    let (mut policies, _) = cp.clients().await;
    let expiry = chrono::Utc::now() + chrono::Duration::hours(1);
    policies
        .create_policy(v1::CreatePolicyRequest {
            policy: Some(chat_policy(
                a,
                b,
                10000,
                json!({"faults": [{"backend": "b", "abort": {"percent": 100.0, "status": 503}, "expire_time": expiry.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}]}),
            )),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut options = FleetAgentOptions::new(&[cp.url()], "agent-ttl", &dir.path().join("agent"));
    options.token = Some(AGENT.into());
    options.labels = labels("chat");
    options.loss_ttl = Duration::from_millis(300);
    let agent = FleetAgent::start(options).await;
    let version = agent.wait_version(|v| v > 0).await;
    assert_eq!(agent.client().post(CHAT, BODY, &[]).await.status, 503);

    cp.kill();
    let recovered = eventually("faults dropped after the loss TTL", || async {
        let r = agent.client().post(CHAT, BODY, &[]).await;
        if r.status == 200 {
            Ok(r)
        } else {
            Err(format!("status {}", r.status))
        }
    })
    .await;
    assert_eq!(
        recovered.header("x-shepherd-backend"),
        Some("b"),
        "weights stay"
    );
    assert_eq!(agent.version(), version);

    cp.restart();
    eventually("faults back with the control plane", || async {
        let r = agent.client().post(CHAT, BODY, &[]).await;
        if r.status == 503 {
            Ok(())
        } else {
            Err(format!("status {}", r.status))
        }
    })
    .await;
    agent.stop().await;
}

/// Agents need the agent token, operators the admin token; the wrong kind
/// is refused.
#[tokio::test]
async fn agent_service_auth() {
    let store = shepherd_tests::stores::TestStore::sqlite().await;
    let auth = shepherd_control_plane::auth::Authenticator::new(
        Some(shepherd_control_plane::auth::Token::new(ADMIN).unwrap()),
        Some(shepherd_control_plane::auth::Token::new(AGENT).unwrap()),
    );
    let cp = TestControlPlane::start(
        store.store.clone(),
        ServerOptions {
            auth,
            ..ServerOptions::default()
        },
    )
    .await;
    let channel = cp.channel().await;
    let labels = BTreeMap::new();
    let refused = |r: Result<SimAgent, tonic::Status>| r.err().map(|s| s.code());
    assert_eq!(
        refused(SimAgent::connect(channel.clone(), Some(ADMIN), "x".into(), labels.clone()).await),
        Some(tonic::Code::PermissionDenied)
    );
    assert_eq!(
        refused(SimAgent::connect(channel.clone(), None, "x".into(), labels.clone()).await),
        Some(tonic::Code::Unauthenticated)
    );
    assert!(
        SimAgent::connect(channel.clone(), Some(AGENT), "x".into(), labels)
            .await
            .is_ok()
    );
    let mut as_agent = cp.agent_client(Some(AGENT)).await;
    let err = as_agent
        .list_agents(v1::ListAgentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let mut as_admin = cp.agent_client(Some(ADMIN)).await;
    assert!(
        as_admin
            .list_agents(v1::ListAgentsRequest::default())
            .await
            .is_ok()
    );
    let err = as_admin
        .get_policy_status(v1::GetPolicyStatusRequest { name: "Bad".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("name:"), "{}", err.message());
    cp.stop().await;
}

/// A hello that breaks a rule ends the stream with the field and the rule.
#[tokio::test]
async fn bad_hello_is_refused_with_the_field() {
    let store = shepherd_tests::stores::TestStore::sqlite().await;
    let cp = TestControlPlane::start(store.store.clone(), ServerOptions::default()).await;
    let sim = SimAgent::connect(cp.channel().await, None, "bad id".into(), BTreeMap::new()).await;
    let err = match sim {
        Err(status) => status,
        Ok(mut sim) => sim.wait_closed().await.unwrap_err(),
    };
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("hello.agent_id"),
        "{}",
        err.message()
    );
    cp.stop().await;
}

/// A reconnect storm: many more agents than the admission limit connect at
/// once; all get their snapshot (they queue, none fails), and a burst of
/// writes reaches all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_is_absorbed() {
    let store = shepherd_tests::stores::TestStore::sqlite().await;
    let mut options = ServerOptions::default();
    options.fleet.max_connecting = 4;
    let cp = TestControlPlane::start(store.store.clone(), options).await;
    let mut policies = cp.policy_client(None).await;
    let mut policy = shepherd_tests::fixtures::minimal_policy("storm");
    policies
        .create_policy(v1::CreatePolicyRequest {
            policy: Some(policy.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let channels: Vec<_> = futures::future::join_all((0..4).map(|_| cp.channel())).await;
    let sims = futures::future::join_all((0..400).map(|i| {
        let channel = channels[i % channels.len()].clone();
        SimAgent::connect(channel, None, format!("sim-{i}"), BTreeMap::new())
    }))
    .await;
    let mut sims: Vec<SimAgent> = sims.into_iter().map(Result::unwrap).collect();
    for s in &mut sims {
        s.acked(1).await;
    }
    // A burst of writes: every agent ends on the last one.
    let mut last = 0;
    for weight in 1..=5 {
        policy.backends[0]
            .headers
            .insert("x-burst".into(), weight.to_string());
        last = update_latest(&mut policies, policy.clone()).await.revision;
    }
    assert_eq!(last, 6);
    let mut agents_api = cp.agent_client(None).await;
    let target = status(&mut agents_api, "storm").await.since_version;
    for s in &mut sims {
        s.acked(target).await;
    }
    cp.stop().await;
}

/// An urgent report is written at once (not at the next flush) and
/// announced to the analysis leader, and every other agent of the replica
/// is asked for a report at once; its requested report is written at once
/// too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_reports_are_written_at_once_and_ask_the_fleet() {
    let store = shepherd_tests::stores::TestStore::sqlite().await;
    let mut options = ServerOptions::default();
    // Nothing reaches the store by the regular flush during the test.
    options.fleet.flush_interval = Duration::from_secs(3600);
    let cp = TestControlPlane::start(store.store.clone(), options).await;
    let mut policies = cp.policy_client(None).await;
    policies
        .create_policy(v1::CreatePolicyRequest {
            policy: Some(shepherd_tests::fixtures::minimal_policy("urgent")),
            ..Default::default()
        })
        .await
        .unwrap();
    let channel = cp.channel().await;
    let mut noticing = SimAgent::connect(channel.clone(), None, "a".into(), BTreeMap::new())
        .await
        .unwrap();
    let mut other = SimAgent::connect(channel, None, "b".into(), BTreeMap::new())
        .await
        .unwrap();
    noticing.acked(1).await;
    other.acked(1).await;
    let report = |urgent: bool, requested: bool, failures: u64| v1::TelemetryReport {
        sequence: 1,
        urgent,
        requested,
        policies: vec![v1::PolicyTelemetry {
            policy: "urgent".into(),
            snapshot_version: 1,
            requests: failures,
            backends: vec![v1::BackendTelemetry {
                backend: "primary".into(),
                outcomes: Some(v1::Outcomes {
                    server_error: failures,
                    ..Default::default()
                }),
                ..Default::default()
            }],
        }],
        ..Default::default()
    };
    let mut written = store.store.urgent_telemetry();
    let errors = |rows: &[shepherd_control_plane::store::TelemetryRow]| -> u64 {
        rows.iter()
            .filter_map(|r| r.data.outcomes.as_ref())
            .map(|o| o.server_error)
            .sum()
    };
    assert!(noticing.report(report(true, false, 7)).await);
    tokio::time::timeout(Duration::from_secs(30), written.changed())
        .await
        .expect("the urgent report is written and announced");
    let rows = store
        .store
        .read_telemetry("urgent", 0, i64::MAX)
        .await
        .unwrap();
    assert_eq!(errors(&rows), 7);
    tokio::time::timeout(
        Duration::from_secs(30),
        other.report_requests.wait_for(|n| *n >= 1),
    )
    .await
    .expect("the other agent is asked for a report")
    .unwrap();
    assert!(other.report(report(false, true, 3)).await);
    tokio::time::timeout(Duration::from_secs(30), written.changed())
        .await
        .expect("the requested report is written at once");
    let rows = store
        .store
        .read_telemetry("urgent", 0, i64::MAX)
        .await
        .unwrap();
    assert_eq!(errors(&rows), 10);
    cp.stop().await;
}

/// Shadow figures travel from the agent to the control plane's telemetry
/// windows, where the shadow gates judge them: a healthy shadow passes, one
/// answering with malformed JSON fails the schema gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_figures_reach_the_control_plane_and_its_gates() {
    use shepherd_control_plane::analysis::{Check, judge_shadow};
    use shepherd_control_plane::rollout::leader::shadow_figures;
    let store = shepherd_tests::stores::TestStore::sqlite().await;
    let mut options = ServerOptions::default();
    options.fleet.flush_interval = Duration::from_millis(100);
    let cp = TestControlPlane::start(store.store.clone(), options).await;
    let mock_a = MockProvider::new("a");
    let mock_b = MockProvider::new("b");
    let (a, b) = (mock_a.serve_tcp().await, mock_b.serve_tcp().await);
    let mut policies = cp.policy_client(None).await;
    policies
        .create_policy(v1::CreatePolicyRequest {
            policy: Some(chat_policy(a, b, 0, json!({"shadow": {"percent": 100.0}}))),
            ..Default::default()
        })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut agent_options =
        FleetAgentOptions::new(&[format!("http://{}", cp.addr)], "shadow-agent", dir.path());
    agent_options.labels = labels("chat");
    let agent = FleetAgent::start(agent_options).await;
    let version = agent.wait_version(|v| v > 0).await;
    let gates = v1::Gates {
        max_shadow_schema_error_percent: Some(5.0),
        ..Default::default()
    };
    let judge = |store: Arc<dyn store::Store>, wanted: u64| async move {
        let rows = store
            .read_telemetry("chat", 0, i64::MAX)
            .await
            .map_err(|e| e.to_string())?;
        let figures = shadow_figures(&rows, "b", i64::try_from(version).unwrap());
        if figures.compared >= wanted {
            Ok((figures.compared, judge_shadow(&figures, &gates, wanted)))
        } else {
            Err(format!("{} compared so far", figures.compared))
        }
    };
    for _ in 0..20 {
        assert_eq!(agent.client().post(CHAT, BODY, &[]).await.status, 200);
    }
    let (_, check) = eventually("shadow figures in the telemetry windows", || {
        judge(store.store.clone(), 20)
    })
    .await;
    assert!(matches!(check, Check::Pass(_)), "{check:?}");

    mock_b.set(|x| x.mode = Some(shepherd_tests::mock::Mode::Malformed));
    for _ in 0..20 {
        assert_eq!(agent.client().post(CHAT, BODY, &[]).await.status, 200);
    }
    let (_, check) = eventually("the malformed answers in the windows", || {
        judge(store.store.clone(), 40)
    })
    .await;
    match check {
        Check::Fail(why) => assert!(
            why.contains("shadow schema errors 50.00% (20 of 40"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    agent.stop().await;
    cp.stop().await;
}
