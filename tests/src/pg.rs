//! A fresh Postgres database per test, so tests run in parallel and leave
//! nothing behind.
//!
//! The server comes from `SHEPHERD_TEST_POSTGRES_URL` (a URL to any database
//! of a role that may create databases), by default
//! `postgres://postgres@127.0.0.1:5432/postgres`. A test that needs Postgres
//! and cannot reach it fails and says so: it is never skipped.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{Connection, PgConnection};

/// Variable naming the Postgres server tests use.
pub const URL_VAR: &str = "SHEPHERD_TEST_POSTGRES_URL";
const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const PREFIX: &str = "shepherd_test_";

/// The server URL tests use.
pub fn server_url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| DEFAULT_URL.to_string())
}

/// A database created for one test and dropped (connections and all) when
/// this value is dropped.
#[derive(Debug)]
pub struct TestDb {
    /// URL of the new database.
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestDb {
    /// Creates an empty database with a unique name.
    pub async fn create() -> TestDb {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let admin_url = server_url();
        let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "Postgres tests need a server: cannot connect to {admin_url} ({e}). \
                 Start Postgres or set {URL_VAR}."
            )
        });
        drop_abandoned(&mut admin).await;
        let name = format!(
            "{PREFIX}{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            chrono::Utc::now().timestamp_micros() % 1_000_000
        );
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let url = with_database(&admin_url, &name);
        TestDb {
            url,
            name,
            admin_url,
        }
    }
}

impl TestDb {
    /// The server's address, for relaying to it.
    pub fn server_addr(&self) -> std::net::SocketAddr {
        use std::net::ToSocketAddrs;
        let options: sqlx::postgres::PgConnectOptions = self.url.parse().unwrap();
        (options.get_host(), options.get_port())
            .to_socket_addrs()
            .unwrap()
            .next()
            .unwrap()
    }

    /// The database's URL with the server at `addr` instead.
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        let options: sqlx::postgres::PgConnectOptions = self.url.parse().unwrap();
        let user = options.get_username();
        format!("postgres://{user}@{addr}/{}", self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee; use a thread of our own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut admin = PgConnection::connect(&admin_url).await.ok()?;
                drop_database(&mut admin, &name).await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

async fn drop_database(admin: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(admin)
    .await
    .map(|_| ())
}

/// Drops test databases left by test processes that no longer run (killed
/// before their `Drop` could run).
async fn drop_abandoned(admin: &mut PgConnection) {
    let names: Vec<(String,)> =
        sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'shepherd\\_test\\_%'")
            .fetch_all(&mut *admin)
            .await
            .unwrap_or_default();
    for (name,) in names {
        let pid = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = drop_database(admin, &name).await;
        }
    }
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
