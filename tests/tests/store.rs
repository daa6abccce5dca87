//! The store suite: every test runs against SQLite and against Postgres.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::SystemTime;

use chrono::{Duration, SubsecRound, Utc};
use shepherd_control_plane::policy::{Change, PolicySpec};
use shepherd_control_plane::store::{Author, Store, StoreError};
use shepherd_tests::fixtures::{chat_policy, minimal_policy};
use shepherd_tests::on_both_stores;
use shepherd_tests::stores::TestStore;

fn spec(policy: shepherd_proto::v1::Policy) -> PolicySpec {
    PolicySpec::validate(policy, SystemTime::now()).unwrap()
}

fn changed(name: &str, weight: u32) -> PolicySpec {
    let mut p = chat_policy(name);
    p.traffic.as_mut().unwrap().candidate_weight = weight;
    spec(p)
}

/// Stores "chat" at weight 0 (revision 1), then at weight 100 (revision 2).
async fn chat_at_revision_2(t: &TestStore) {
    t.store
        .create_policy(&changed("chat", 0), Author::default(), Utc::now())
        .await
        .unwrap();
    t.store
        .update_policy(&changed("chat", 100), 1, Author::default(), Utc::now())
        .await
        .unwrap();
}

async fn revision_count(t: &TestStore, name: &str) -> usize {
    t.store.list_revisions(name, None, 100).await.unwrap().len()
}

on_both_stores!(
    create_then_get_round_trips_every_field,
    duplicate_name_is_already_exists,
    update_needs_the_latest_revision,
    stale_update_changes_nothing,
    delete_keeps_history_and_frees_the_name,
    stale_delete_changes_nothing,
    unknown_names_are_not_found,
    old_revisions_stay_readable,
    list_pages_by_name_without_deleted,
    concurrent_updates_have_one_winner,
    concurrent_creates_have_one_winner,
    migrations_are_idempotent,
    an_unreadable_policy_hides_nothing_else,
);

/// A created policy reads back with every field as written, at revision 1.
async fn create_then_get_round_trips_every_field(t: TestStore) {
    let now = Utc::now();
    let written = spec(chat_policy("chat"));
    let created = t
        .store
        .create_policy(&written, Author::default(), now)
        .await
        .unwrap();
    assert_eq!(created.revision, 1);
    let read = t.store.get_policy("chat").await.unwrap();
    assert_eq!(read.spec, written);
    assert_eq!(read.revision, 1);
    // Stored times keep microsecond precision on both engines.
    assert_eq!(read.create_time, now.trunc_subsecs(6));
    assert_eq!(created.create_time, read.create_time);
    assert_eq!(read.create_time, read.update_time);
}

/// Creating a name that is taken fails and leaves the policy alone.
async fn duplicate_name_is_already_exists(t: TestStore) {
    t.store
        .create_policy(&changed("chat", 0), Author::default(), Utc::now())
        .await
        .unwrap();
    let err = t
        .store
        .create_policy(&changed("chat", 500), Author::default(), Utc::now())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists { ref name } if name == "chat"),
        "{err}"
    );
    let read = t.store.get_policy("chat").await.unwrap();
    assert_eq!(read.revision, 1);
    assert_eq!(read.spec, changed("chat", 0));
}

/// An update at the latest revision stores the next one and keeps the
/// creation time.
async fn update_needs_the_latest_revision(t: TestStore) {
    let created = t
        .store
        .create_policy(&changed("chat", 0), Author::default(), Utc::now())
        .await
        .unwrap();
    let later = Utc::now() + Duration::seconds(5);
    let updated = t
        .store
        .update_policy(&changed("chat", 100), 1, Author::default(), later)
        .await
        .unwrap();
    assert_eq!(updated.revision, 2);
    assert_eq!(updated.create_time, created.create_time);
    let read = t.store.get_policy("chat").await.unwrap();
    assert_eq!(read.revision, 2);
    assert_eq!(read.spec, changed("chat", 100));
    assert_eq!(read.create_time, created.create_time);
    assert!(read.update_time > read.create_time);
}

/// An update with a stale revision fails with both revisions named, and
/// stores nothing.
async fn stale_update_changes_nothing(t: TestStore) {
    chat_at_revision_2(&t).await;
    let err = t
        .store
        .update_policy(&changed("chat", 9000), 1, Author::default(), Utc::now())
        .await
        .unwrap_err();
    match err {
        StoreError::RevisionMismatch {
            expected, actual, ..
        } => assert_eq!((expected, actual), (1, 2)),
        other => panic!("expected a revision mismatch, got {other}"),
    }
    let read = t.store.get_policy("chat").await.unwrap();
    assert_eq!((read.revision, read.spec), (2, changed("chat", 100)));
    assert_eq!(revision_count(&t, "chat").await, 2);
}

/// A delete is a revision; the name can be created again and continues the
/// history.
async fn delete_keeps_history_and_frees_the_name(t: TestStore) {
    chat_at_revision_2(&t).await;
    let deleted_at = t
        .store
        .delete_policy("chat", None, Author::default(), Utc::now())
        .await
        .unwrap();
    assert_eq!(deleted_at, 3);
    assert!(matches!(
        t.store.get_policy("chat").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(t.store.list_policies(None, 10).await.unwrap().is_empty());
    // Deleting again: not found.
    assert!(matches!(
        t.store
            .delete_policy("chat", None, Author::default(), Utc::now())
            .await,
        Err(StoreError::NotFound { .. })
    ));
    // Updating a deleted policy: not found.
    assert!(matches!(
        t.store
            .update_policy(&changed("chat", 5), 3, Author::default(), Utc::now())
            .await,
        Err(StoreError::NotFound { .. })
    ));

    let recreated_at = Utc::now() + Duration::seconds(1);
    let again = t
        .store
        .create_policy(&changed("chat", 42), Author::default(), recreated_at)
        .await
        .unwrap();
    assert_eq!(again.revision, 4);
    assert_eq!(again.create_time, recreated_at.trunc_subsecs(6));
    let history = t.store.list_revisions("chat", None, 100).await.unwrap();
    let kinds: Vec<(i64, Change)> = history.iter().map(|r| (r.revision, r.change)).collect();
    assert_eq!(
        kinds,
        vec![
            (4, Change::Created),
            (3, Change::Deleted),
            (2, Change::Updated),
            (1, Change::Created)
        ]
    );
    assert!(history[1].spec.is_none());
    assert_eq!(history[2].spec.as_ref(), Some(&changed("chat", 100)));
}

/// A delete conditioned on a stale revision fails and deletes nothing.
async fn stale_delete_changes_nothing(t: TestStore) {
    chat_at_revision_2(&t).await;
    let err = t
        .store
        .delete_policy("chat", Some(1), Author::default(), Utc::now())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::RevisionMismatch { actual: 2, .. }),
        "{err}"
    );
    assert_eq!(t.store.get_policy("chat").await.unwrap().revision, 2);
    assert_eq!(
        t.store
            .delete_policy("chat", Some(2), Author::default(), Utc::now())
            .await
            .unwrap(),
        3
    );
}

/// Reading, updating or listing revisions of an unknown policy is not found.
async fn unknown_names_are_not_found(t: TestStore) {
    assert!(matches!(
        t.store.get_policy("nope").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        t.store.get_revision("nope", 1).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        t.store.list_revisions("nope", None, 10).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        t.store
            .update_policy(&changed("nope", 0), 1, Author::default(), Utc::now())
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

/// Every revision can be read back as it was written.
async fn old_revisions_stay_readable(t: TestStore) {
    let created = t
        .store
        .create_policy(
            &changed("chat", 0),
            Author::operator("operator:alice"),
            Utc::now(),
        )
        .await
        .unwrap();
    t.store
        .update_policy(
            &changed("chat", 100),
            1,
            Author {
                actor: "cp-0",
                reason: "rollout r1 promoted",
            },
            Utc::now(),
        )
        .await
        .unwrap();
    let first = t.store.get_revision("chat", 1).await.unwrap();
    assert_eq!(first.change, Change::Created);
    assert_eq!(first.spec, Some(changed("chat", 0)));
    assert_eq!(first.actor, "operator:alice");
    assert_eq!(first.to_proto().actor, "operator:alice");
    let second = t.store.get_revision("chat", 2).await.unwrap();
    assert_eq!(second.reason, "rollout r1 promoted");
    assert_eq!(second.actor, "cp-0");
    let as_policy = second.to_policy().unwrap();
    assert_eq!(as_policy.revision, 2);
    assert_eq!(as_policy.create_time, created.create_time);
    assert!(matches!(
        t.store.get_revision("chat", 3).await,
        Err(StoreError::RevisionNotFound { revision: 3, .. })
    ));
    // Pages of revisions, newest first.
    let page = t.store.list_revisions("chat", Some(2), 10).await.unwrap();
    assert_eq!(page.iter().map(|r| r.revision).collect::<Vec<_>>(), vec![1]);
}

/// Listing walks live policies in name order, page by page.
async fn list_pages_by_name_without_deleted(t: TestStore) {
    for name in ["delta", "alpha", "echo", "charlie", "bravo"] {
        t.store
            .create_policy(&spec(minimal_policy(name)), Author::default(), Utc::now())
            .await
            .unwrap();
    }
    t.store
        .delete_policy("charlie", None, Author::default(), Utc::now())
        .await
        .unwrap();
    let names = |page: Vec<shepherd_control_plane::policy::StoredPolicy>| {
        page.into_iter()
            .map(|p| p.spec.name().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(t.store.list_policies(None, 2).await.unwrap()),
        ["alpha", "bravo"]
    );
    assert_eq!(
        names(t.store.list_policies(Some("bravo"), 2).await.unwrap()),
        ["delta", "echo"]
    );
    assert!(
        t.store
            .list_policies(Some("echo"), 2)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Writers racing with the same revision: exactly one wins, the others are
/// told the revision moved, and one revision is stored.
async fn concurrent_updates_have_one_winner(t: TestStore) {
    t.store
        .create_policy(&changed("chat", 0), Author::default(), Utc::now())
        .await
        .unwrap();
    let store: Arc<dyn Store> = t.store.clone();
    let writers: Vec<_> = (1..=8u32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .update_policy(&changed("chat", i * 10), 1, Author::default(), Utc::now())
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for w in writers {
        match w.await.unwrap() {
            Ok(p) => {
                won += 1;
                assert_eq!(p.revision, 2);
            }
            Err(StoreError::RevisionMismatch { .. }) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(revision_count(&t, "chat").await, 2);
}

/// Creators racing on one name: exactly one wins.
async fn concurrent_creates_have_one_winner(t: TestStore) {
    let store: Arc<dyn Store> = t.store.clone();
    let creators: Vec<_> = (1..=8u32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create_policy(&changed("chat", i), Author::default(), Utc::now())
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for c in creators {
        match c.await.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(revision_count(&t, "chat").await, 1);
}

/// Migrating an up-to-date database again changes nothing and loses nothing.
async fn migrations_are_idempotent(t: TestStore) {
    t.store
        .create_policy(&changed("chat", 0), Author::default(), Utc::now())
        .await
        .unwrap();
    t.store.migrate().await.unwrap();
    assert_eq!(t.store.get_policy("chat").await.unwrap().revision, 1);
}

/// Sets the stored spec of `name`'s latest revision to `json`, as an older
/// version or a hand edit could have left it.
async fn corrupt(t: &TestStore, name: &str, json: &str) {
    if t.url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(&t.url).await.unwrap();
        sqlx::query("UPDATE policy_revisions SET spec = $1::jsonb WHERE name = $2")
            .bind(json)
            .bind(name)
            .execute(&pool)
            .await
            .unwrap();
    } else {
        let pool = sqlx::SqlitePool::connect(&t.url).await.unwrap();
        sqlx::query("UPDATE policy_revisions SET spec = ? WHERE name = ?")
            .bind(json)
            .bind(name)
            .execute(&pool)
            .await
            .unwrap();
    }
}

/// A stored policy that cannot be read is reported for itself only: reads
/// of it say which policy and revision, lists and the agents' catalog leave
/// it out, the others read as before, and writing it again repairs it.
async fn an_unreadable_policy_hides_nothing_else(t: TestStore) {
    for name in ["alpha", "bad", "chat"] {
        t.store
            .create_policy(&changed(name, 0), Author::default(), Utc::now())
            .await
            .unwrap();
    }
    let mut broken = serde_json::to_value(chat_policy("bad")).unwrap();
    broken["faults"] = serde_json::json!([{"backend": "openai", "abort": {"percent": 1, "status": 500},
                                           "expire_time": "10000-01-01T00:00:00Z"}]);
    corrupt(&t, "bad", &broken.to_string()).await;
    match t.store.get_policy("bad").await {
        Err(StoreError::Unreadable { name, revision, .. }) => {
            assert_eq!((name.as_str(), revision), ("bad", 1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.store.get_policy("chat").await.unwrap().revision, 1);
    let listed: Vec<String> = t
        .store
        .list_policies(None, 10)
        .await
        .unwrap()
        .iter()
        .map(|p| p.spec.name().to_string())
        .collect();
    assert_eq!(listed, ["alpha", "chat"]);
    let catalog = t.store.load_catalog().await.unwrap();
    assert_eq!(catalog.policies.len(), 2);
    t.store
        .update_policy(&changed("bad", 0), 1, Author::default(), Utc::now())
        .await
        .unwrap();
    assert_eq!(t.store.get_policy("bad").await.unwrap().revision, 2);
    assert_eq!(t.store.load_catalog().await.unwrap().policies.len(), 3);
}
