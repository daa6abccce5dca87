//! The store engines a suite runs against: each test gets a fresh, migrated
//! store of its own.

use std::sync::Arc;

use shepherd_control_plane::store::{self, Store, StoreOptions};

use crate::pg::TestDb;

/// A fresh, migrated store and what keeps its database alive.
pub struct TestStore {
    pub store: Arc<dyn Store>,
    /// URL of its database.
    pub url: String,
    _guard: Guard,
}

#[allow(dead_code)]
enum Guard {
    Dir(tempfile::TempDir),
    Pg(TestDb),
}

impl TestStore {
    /// A SQLite file in a temporary directory.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("shepherd.db").display());
        Self::open(url, Guard::Dir(dir)).await
    }

    /// A database of its own on the test Postgres server.
    pub async fn postgres() -> Self {
        let db = TestDb::create().await;
        Self::open(db.url.clone(), Guard::Pg(db)).await
    }

    async fn open(url: String, guard: Guard) -> Self {
        let store = store::open(&url, &StoreOptions::default()).await.unwrap();
        store.migrate().await.unwrap();
        Self {
            store,
            url,
            _guard: guard,
        }
    }
}

/// Runs each named `async fn(TestStore)` as two tests, `sqlite::NAME` and
/// `postgres::NAME`, so one suite proves both engines.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::stores::TestStore::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::stores::TestStore::postgres().await).await
                }
            )*
        }
    };
}
