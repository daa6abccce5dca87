//! The store's fleet half, on SQLite and on Postgres: generations, the
//! catalog, change notices, agent records and telemetry windows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use chrono::Utc;
use shepherd_control_plane::policy::PolicySpec;
use shepherd_control_plane::store::{self, AgentRecord, Author, StoreOptions, TelemetryRow};
use shepherd_proto::v1;
use shepherd_tests::fixtures::minimal_policy;
use shepherd_tests::on_both_stores;
use shepherd_tests::stores::TestStore;

fn spec(name: &str) -> PolicySpec {
    PolicySpec::validate(minimal_policy(name), SystemTime::now()).unwrap()
}

fn agent(id: &str, replica: &str, session: i64) -> AgentRecord {
    AgentRecord {
        agent_id: id.into(),
        hostname: "host".into(),
        labels: BTreeMap::from([("app".into(), "chat".into())]),
        build_version: "1.0".into(),
        replica: replica.into(),
        session,
        connected: true,
        since: Utc::now(),
        applied_version: 3,
        nack_version: 0,
        nack_reason: String::new(),
        last_report_time: None,
        reports_lost: 0,
    }
}

on_both_stores!(
    every_write_takes_the_next_generation,
    catalog_holds_live_policies_at_a_generation,
    writes_are_noticed,
    agent_records_follow_the_latest_stream,
    stale_replicas_lose_their_agents,
    telemetry_windows_add_up_and_are_pruned,
    urgent_telemetry_is_announced,
);

/// Creates, updates and deletes each take the next generation, recorded on
/// the policy and its revision.
async fn every_write_takes_the_next_generation(t: TestStore) {
    let a = t
        .store
        .create_policy(&spec("a"), Author::default(), Utc::now())
        .await
        .unwrap();
    let b = t
        .store
        .create_policy(&spec("b"), Author::default(), Utc::now())
        .await
        .unwrap();
    let a2 = t
        .store
        .update_policy(&spec("a"), 1, Author::default(), Utc::now())
        .await
        .unwrap();
    assert_eq!((a.generation, b.generation, a2.generation), (1, 2, 3));
    assert_eq!(t.store.get_policy("a").await.unwrap().generation, 3);
    assert_eq!(t.store.get_revision("a", 1).await.unwrap().generation, 1);
    // A failed write takes no generation.
    assert!(
        t.store
            .update_policy(&spec("a"), 1, Author::default(), Utc::now())
            .await
            .is_err()
    );
    t.store
        .delete_policy("b", None, Author::default(), Utc::now())
        .await
        .unwrap();
    assert_eq!(t.store.load_catalog().await.unwrap().generation, 4);
}

/// The catalog is every live policy as of one generation.
async fn catalog_holds_live_policies_at_a_generation(t: TestStore) {
    let empty = t.store.load_catalog().await.unwrap();
    assert_eq!((empty.generation, empty.policies.len()), (0, 0));
    t.store
        .create_policy(&spec("b"), Author::default(), Utc::now())
        .await
        .unwrap();
    t.store
        .create_policy(&spec("a"), Author::default(), Utc::now())
        .await
        .unwrap();
    t.store
        .create_policy(&spec("c"), Author::default(), Utc::now())
        .await
        .unwrap();
    t.store
        .delete_policy("c", None, Author::default(), Utc::now())
        .await
        .unwrap();
    let catalog = t.store.load_catalog().await.unwrap();
    assert_eq!(catalog.generation, 4);
    let names: Vec<_> = catalog.policies.iter().map(|p| p.spec.name()).collect();
    assert_eq!(names, vec!["a", "b"]);
    assert_eq!(catalog.policies[0].generation, 2);
}

/// A write is noticed by a feed of the same store and, with Postgres, by a
/// feed of another connection pool (another replica).
async fn writes_are_noticed(t: TestStore) {
    let mut here = t.store.changes();
    let other = store::open(&t.url, &StoreOptions::default()).await.unwrap();
    let mut there = other.changes();
    if t.url.starts_with("postgres") {
        // The listener's first connection counts as a notice; wait for it so
        // the write below is heard as a NOTIFY.
        tokio::time::timeout(Duration::from_secs(30), there.changed())
            .await
            .unwrap();
    }
    t.store
        .create_policy(&spec("a"), Author::default(), Utc::now())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), here.changed())
        .await
        .expect("the writing store notices");
    if t.url.starts_with("postgres") {
        tokio::time::timeout(Duration::from_secs(30), there.changed())
            .await
            .expect("another replica notices through NOTIFY");
        assert_eq!(other.load_catalog().await.unwrap().generation, 1);
    }
}

/// An urgent telemetry write is announced to the feed of the same store
/// and, with Postgres, to another connection pool's (the analysis leader
/// on another replica); a plain write is not.
async fn urgent_telemetry_is_announced(t: TestStore) {
    let mut here = t.store.urgent_telemetry();
    let other = store::open(&t.url, &StoreOptions::default()).await.unwrap();
    let mut there = other.urgent_telemetry();
    let postgres = t.url.starts_with("postgres");
    if postgres {
        // The listener's first connection counts as a notice.
        tokio::time::timeout(Duration::from_secs(30), there.changed())
            .await
            .unwrap();
    }
    t.store
        .write_telemetry(&[window(5, "a", 1_000, 3)], false)
        .await
        .unwrap();
    t.store
        .write_telemetry(&[window(5, "a", 2_000, 3)], true)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), here.changed())
        .await
        .expect("the writing store announces it");
    if !postgres {
        // (With Postgres the feed's own listener connection adds notices.)
        assert_eq!(here.seen(), 1, "the plain write was not announced");
    }
    if postgres {
        tokio::time::timeout(Duration::from_secs(30), there.changed())
            .await
            .expect("another replica hears of it through NOTIFY");
        let rows = other.read_telemetry("chat", 0, 10_000).await.unwrap();
        assert_eq!(rows.len(), 2, "written before the notice");
    }
}

/// An agent's row follows its latest stream: an older stream's news (from a
/// replica that has not noticed the agent left) does not overwrite it.
async fn agent_records_follow_the_latest_stream(t: TestStore) {
    let now = Utc::now();
    t.store
        .save_agents("r1", now, &[agent("a1", "r1", 100), agent("a2", "r1", 100)])
        .await
        .unwrap();
    // a1 reconnects to r2.
    let mut moved = agent("a1", "r2", 200);
    moved.applied_version = 9;
    t.store.save_agents("r2", now, &[moved]).await.unwrap();
    // r1 finally writes that its old stream of a1 ended: ignored.
    let mut stale = agent("a1", "r1", 100);
    stale.connected = false;
    t.store.save_agents("r1", now, &[stale]).await.unwrap();
    let listed = t.store.list_agents(None, 10).await.unwrap();
    assert_eq!(listed.len(), 2);
    let a1 = &listed[0];
    assert_eq!(a1.record.agent_id, "a1");
    assert_eq!(
        (a1.record.replica.as_str(), a1.record.connected),
        ("r2", true)
    );
    assert_eq!(a1.record.applied_version, 9);
    assert!(a1.replica_heartbeat.is_some());
    assert_eq!(a1.record.labels["app"], "chat");
    // News of the current stream lands.
    let mut nack = agent("a1", "r2", 200);
    nack.nack_version = 10;
    nack.nack_reason = "policy \"chat\": bad".into();
    t.store.save_agents("r2", now, &[nack]).await.unwrap();
    let a1 = t.store.list_agents(None, 1).await.unwrap().remove(0);
    assert_eq!(a1.record.nack_reason, "policy \"chat\": bad");
    // Paging by id.
    let page = t.store.list_agents(Some("a1"), 10).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].record.agent_id, "a2");
}

/// A replica that stops (or stops heartbeating) leaves its agents listed as
/// disconnected.
async fn stale_replicas_lose_their_agents(t: TestStore) {
    let then = Utc::now() - chrono::Duration::seconds(60);
    t.store
        .save_agents("old", then, &[agent("a1", "old", 1)])
        .await
        .unwrap();
    t.store
        .save_agents("gone", Utc::now(), &[agent("a2", "gone", 1)])
        .await
        .unwrap();
    t.store.release_replica("gone", Utc::now()).await.unwrap();
    let alive_after = Utc::now() - chrono::Duration::seconds(15);
    let listed: Vec<AgentRecord> = t
        .store
        .list_agents(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.effective(alive_after))
        .collect();
    assert!(!listed[0].connected, "stale heartbeat: {:?}", listed[0]);
    assert!(!listed[1].connected, "released: {:?}", listed[1]);
    // Disconnected agents are pruned after the retention.
    let (_, pruned) = t
        .store
        .prune(0, Utc::now() + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(pruned, 2);
}

fn window(version: i64, backend: &str, start_ms: i64, success: u64) -> TelemetryRow {
    TelemetryRow {
        policy: "chat".into(),
        snapshot_version: version,
        backend: backend.into(),
        window_start_ms: start_ms,
        replica: "r1".into(),
        reports: 1,
        data: v1::BackendTelemetry {
            backend: backend.into(),
            outcomes: Some(v1::Outcomes {
                success,
                ..Default::default()
            }),
            latency: Some(v1::Histogram {
                buckets: vec![40],
                counts: vec![success],
                sum_us: success * 1000,
            }),
            ..Default::default()
        },
    }
}

/// Windows written by several replicas add up when read; old ones are
/// pruned.
async fn telemetry_windows_add_up_and_are_pruned(t: TestStore) {
    t.store
        .write_telemetry(
            &[
                window(5, "a", 1_000, 3),
                window(5, "b", 1_000, 1),
                window(6, "a", 2_000, 7),
            ],
            false,
        )
        .await
        .unwrap();
    let mut other = window(5, "a", 1_000, 2);
    other.replica = "r2".into();
    t.store.write_telemetry(&[other], false).await.unwrap();
    let rows = t.store.read_telemetry("chat", 0, 10_000).await.unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0].data.latency.as_ref().unwrap().buckets, vec![40]);
    let sums = shepherd_control_plane::fleet::telemetry::sum_rows(&rows);
    let (version, a5, reports) = &sums[0];
    assert_eq!((*version, a5.backend.as_str(), *reports), (5, "a", 2));
    assert_eq!(a5.outcomes.as_ref().unwrap().success, 5);
    assert_eq!(a5.latency.as_ref().unwrap().counts, vec![5]);
    assert!(
        t.store
            .read_telemetry("chat", 1_500, 10_000)
            .await
            .unwrap()
            .len()
            == 1
    );
    assert!(
        t.store
            .read_telemetry("other", 0, 10_000)
            .await
            .unwrap()
            .is_empty()
    );
    let (windows, _) = t
        .store
        .prune(2_000, Utc::now() - chrono::Duration::days(1))
        .await
        .unwrap();
    assert_eq!(windows, 3);
    assert_eq!(
        t.store
            .read_telemetry("chat", 0, 10_000)
            .await
            .unwrap()
            .len(),
        1
    );
}
