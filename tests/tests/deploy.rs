//! The deploy files as far as this machine can check them (no Docker, no
//! cluster): every YAML file parses; the compose file has the services it
//! promises, and what they refer to (services, secrets, volumes) exists;
//! the Kubernetes manifests are well-formed objects whose Secret references
//! resolve and whose app runs the agent as a sidecar; the systemd units have
//! their sections; and every flag and SHEPHERD_* variable the files give a
//! Shepherd binary is one that binary has.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(deploy().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every YAML document of a file, with merge keys (`<<`) applied.
fn documents(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            let mut v: Value = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{rel}: not YAML: {e}"));
            v.apply_merge().unwrap();
            v
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn files(dir: &Path, ext: &[&str], out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, ext, out);
        } else if p.extension().is_some_and(|x| ext.iter().any(|e| x == *e)) {
            out.push(p);
        }
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// What each binary accepts: its `--help` text (the control plane's
/// `serve --help` too).
struct Binaries(BTreeMap<&'static str, String>);

impl Binaries {
    fn load() -> Binaries {
        let dir = Path::new(env!("CARGO_BIN_EXE_mock-provider"))
            .parent()
            .unwrap()
            .to_path_buf();
        let help = |bin: &str, args: &[&str]| {
            let path = dir.join(bin);
            let out = Command::new(&path).args(args).output().unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (run the workspace's tests: cargo test --workspace)",
                    path.display()
                )
            });
            assert!(out.status.success(), "{bin} {args:?} failed");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let mut m = BTreeMap::new();
        m.insert(
            "shepherd-control-plane",
            help("shepherd-control-plane", &["--help"])
                + &help("shepherd-control-plane", &["serve", "--help"]),
        );
        m.insert("shepherd-agent", help("shepherd-agent", &["--help"]));
        m.insert("shepherdctl", help("shepherdctl", &["--help"]));
        m.insert("mock-provider", help("mock-provider", &["--help"]));
        Binaries(m)
    }

    /// Checks the flags of one command line (`bin --flag value ...`).
    fn check_command(&self, words: &[String], place: &str) {
        let Some(first) = words.first() else { return };
        let bin = first.rsplit('/').next().unwrap_or(first);
        let Some(help) = self.0.get(bin) else { return };
        for w in words.iter().skip(1) {
            if let Some(flag) = w.strip_prefix("--") {
                let flag = flag.split('=').next().unwrap();
                assert!(
                    help.contains(&format!("--{flag} "))
                        || help.contains(&format!("--{flag}\n"))
                        || help.contains(&format!("[--{flag}")),
                    "{place}: {bin} has no flag --{flag}"
                );
            }
        }
    }

    /// Checks that a SHEPHERD_* variable is one some binary reads.
    fn check_env(&self, name: &str, place: &str) {
        if !name.starts_with("SHEPHERD_") {
            return;
        }
        assert!(
            self.0
                .values()
                .any(|h| h.contains(&format!("env: {name}]"))
                    || h.contains(&format!("env: {name}="))),
            "{place}: no binary reads {name}"
        );
    }

    /// Checks every SHEPHERD_* name in a text.
    fn check_env_names_in(&self, text: &str, place: &str) {
        for (i, _) in text.match_indices("SHEPHERD_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            self.check_env(&name, place);
        }
    }
}

#[test]
fn every_yaml_file_parses() {
    let mut all = Vec::new();
    files(&deploy(), &["yaml", "yml"], &mut all);
    assert!(all.len() >= 4, "{all:?}");
    for p in all {
        let rel = p.strip_prefix(deploy()).unwrap().display().to_string();
        assert!(!documents(&rel).is_empty(), "{rel}: empty");
    }
}

#[test]
fn compose_file_holds_the_promised_services() {
    let bins = Binaries::load();
    let doc = documents("compose/compose.yaml").remove(0);
    let services = doc["services"].as_mapping().expect("services");
    let names: BTreeSet<String> = services
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    let secrets = doc["secrets"].as_mapping().expect("secrets");
    for (name, s) in secrets {
        let file = s["file"].as_str().unwrap();
        assert!(
            deploy().join("compose").join(file).is_file(),
            "secret {name:?}: no file {file}"
        );
    }
    let volumes = doc["volumes"].as_mapping().cloned().unwrap_or_default();
    let mut running: BTreeMap<String, usize> = BTreeMap::new();
    for (name, s) in services {
        let name = name.as_str().unwrap();
        let place = format!("compose service {name}");
        assert!(
            s.get("image").is_some() || s.get("build").is_some(),
            "{place}: no image or build"
        );
        let depends: Vec<String> = match s.get("depends_on") {
            Some(Value::Sequence(_)) => strs(&s["depends_on"]),
            Some(Value::Mapping(m)) => m.keys().map(|k| k.as_str().unwrap().into()).collect(),
            _ => vec![],
        };
        for d in depends {
            assert!(names.contains(&d), "{place}: depends on unknown {d}");
        }
        for secret in strs(s.get("secrets").unwrap_or(&Value::Null)) {
            assert!(
                secrets.contains_key(secret.as_str()),
                "{place}: unknown secret {secret}"
            );
        }
        for v in strs(s.get("volumes").unwrap_or(&Value::Null)) {
            let source = v.split(':').next().unwrap();
            if !source.starts_with('.') && !source.starts_with('/') {
                assert!(
                    volumes.contains_key(source),
                    "{place}: unknown volume {source}"
                );
            }
        }
        let command = strs(s.get("command").unwrap_or(&Value::Null));
        bins.check_command(&command, &place);
        if let Some(first) = command.first() {
            *running.entry(first.clone()).or_default() += 1;
        }
        if let Some(env) = s.get("environment").and_then(Value::as_mapping) {
            for (k, _) in env {
                bins.check_env(k.as_str().unwrap(), &place);
            }
        }
    }
    assert_eq!(
        running.get("shepherd-control-plane"),
        Some(&2),
        "{running:?}"
    );
    assert_eq!(running.get("shepherd-agent"), Some(&2), "{running:?}");
    assert_eq!(running.get("mock-provider"), Some(&2), "{running:?}");
    assert!(names.contains("postgres"));
    assert_eq!(
        services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"].as_str(),
        Some("true")
    );
    // Both replicas share one database; every agent knows both replicas.
    let cp = &services["control-plane-1"]["environment"];
    assert!(
        cp["SHEPHERD_DATABASE_URL"]
            .as_str()
            .unwrap()
            .starts_with("postgres://")
    );
    let agent = &services["agent-2"]["environment"];
    assert_eq!(
        agent["SHEPHERD_AGENT_CONTROL_PLANE"].as_str(),
        Some("http://control-plane-1:4100,http://control-plane-2:4100")
    );
    bins.check_env_names_in(&read("compose/compose.yaml"), "compose.yaml");
}

#[test]
fn kubernetes_manifests_are_well_formed() {
    let bins = Binaries::load();
    let mut objects = Vec::new();
    let mut all = Vec::new();
    files(&deploy().join("k8s"), &["yaml"], &mut all);
    for p in &all {
        let rel = p.strip_prefix(deploy()).unwrap().display().to_string();
        for d in documents(&rel) {
            for key in ["apiVersion", "kind"] {
                assert!(d[key].as_str().is_some(), "{rel}: an object without {key}");
            }
            assert!(
                d["metadata"]["name"].as_str().is_some(),
                "{rel}: unnamed object"
            );
            objects.push((rel.clone(), d));
        }
        bins.check_env_names_in(&std::fs::read_to_string(p).unwrap(), &rel);
    }
    let mut secrets: BTreeMap<String, BTreeSet<String>> = objects
        .iter()
        .filter(|(_, d)| d["kind"] == "Secret")
        .map(|(_, d)| {
            let keys = d["stringData"]
                .as_mapping()
                .map(|m| m.keys().map(|k| k.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            (d["metadata"]["name"].as_str().unwrap().to_string(), keys)
        })
        .collect();
    // The Secrets cert-manager writes for its Certificates.
    for (_, d) in objects.iter().filter(|(_, d)| d["kind"] == "Certificate") {
        let name = d["spec"]["secretName"].as_str().expect("secretName");
        let keys = ["tls.crt", "tls.key", "ca.crt"].map(String::from);
        secrets.insert(name.to_string(), keys.into_iter().collect());
    }
    let mut sidecar = false;
    let mut control_plane = false;
    for (rel, d) in objects.iter().filter(|(_, d)| d["kind"] == "Deployment") {
        let spec = &d["spec"]["template"]["spec"];
        let selector = &d["spec"]["selector"]["matchLabels"];
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        for (k, v) in selector.as_mapping().expect("selector") {
            assert_eq!(
                &labels[k.as_str().unwrap()],
                v,
                "{rel}: selector does not match"
            );
        }
        let containers = spec["containers"].as_sequence().expect("containers");
        let volumes: BTreeSet<&str> = spec["volumes"]
            .as_sequence()
            .map(|v| v.iter().filter_map(|v| v["name"].as_str()).collect())
            .unwrap_or_default();
        for v in spec["volumes"].as_sequence().into_iter().flatten() {
            if let Some(name) = v["secret"]["secretName"].as_str() {
                assert!(secrets.contains_key(name), "{rel}: unknown Secret {name}");
            }
        }
        for c in containers {
            let place = format!("{rel} container {}", c["name"].as_str().unwrap());
            let args = strs(&c["args"]);
            bins.check_command(&args, &place);
            for e in c["env"].as_sequence().into_iter().flatten() {
                bins.check_env(e["name"].as_str().unwrap(), &place);
                let r = &e["valueFrom"]["secretKeyRef"];
                if let (Some(name), Some(key)) = (r["name"].as_str(), r["key"].as_str()) {
                    let keys = secrets
                        .get(name)
                        .unwrap_or_else(|| panic!("{place}: unknown Secret {name}"));
                    assert!(
                        keys.contains(key),
                        "{place}: Secret {name} has no key {key}"
                    );
                }
            }
            for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
                let name = m["name"].as_str().unwrap();
                assert!(volumes.contains(name), "{place}: unknown volume {name}");
            }
            match args.first().map(String::as_str) {
                Some("shepherd-agent") if containers.len() > 1 => sidecar = true,
                Some("shepherd-control-plane") => control_plane = true,
                _ => {}
            }
        }
    }
    assert!(
        sidecar,
        "no Deployment runs the agent beside an app container"
    );
    assert!(control_plane, "no Deployment runs the control plane");
    assert!(
        objects
            .iter()
            .any(|(_, d)| d["kind"] == "Service"
                && d["metadata"]["name"] == "shepherd-control-plane"),
        "no Service for the control plane"
    );
}

#[test]
fn systemd_units_and_their_settings() {
    let bins = Binaries::load();
    let mut all = Vec::new();
    files(&deploy().join("systemd"), &["service", "env"], &mut all);
    assert_eq!(all.len(), 4, "{all:?}");
    for p in all {
        let rel = p.strip_prefix(deploy()).unwrap().display().to_string();
        let text = std::fs::read_to_string(&p).unwrap();
        bins.check_env_names_in(&text, &rel);
        if rel.ends_with(".service") {
            for section in ["[Unit]", "[Service]", "[Install]"] {
                assert!(text.contains(section), "{rel}: no {section}");
            }
            let exec = text
                .lines()
                .find_map(|l| l.strip_prefix("ExecStart="))
                .unwrap_or_else(|| panic!("{rel}: no ExecStart"));
            let words: Vec<String> = exec.split_whitespace().map(str::to_string).collect();
            let words: Vec<String> = match words.get(1).map(String::as_str) {
                // A subcommand before the flags.
                Some("serve") => [words[0].clone()]
                    .into_iter()
                    .chain(words[2..].iter().cloned())
                    .collect(),
                _ => words,
            };
            bins.check_command(&words, &rel);
        } else {
            for line in text
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            {
                assert!(line.contains('='), "{rel}: not NAME=VALUE: {line}");
            }
        }
    }
}

#[test]
fn dockerfile_builds_every_binary_it_ships() {
    let text = read("Dockerfile");
    assert!(
        text.matches("\nFROM ").count() + usize::from(text.starts_with("FROM ")) >= 2,
        "not multi-stage"
    );
    for bin in [
        "shepherd-control-plane",
        "shepherd-agent",
        "shepherdctl",
        "mock-provider",
    ] {
        assert!(
            text.contains(&format!("target/release/{bin}")),
            "Dockerfile does not ship {bin}"
        );
    }
    assert!(text.contains("--locked"));
}

/// The mTLS compose override names only known services and settings, and
/// the certificates its script writes load in the control plane, each
/// agent's naming its agent id.
#[test]
fn compose_mtls_override_and_its_certificates() {
    use shepherd_control_plane::tls::{PeerNames, TlsFiles, TlsServer, read_certs};

    let bins = Binaries::load();
    let base = documents("compose/compose.yaml").remove(0);
    let doc = documents("compose/compose.mtls.yaml").remove(0);
    for (name, s) in doc["services"].as_mapping().expect("services") {
        let name = name.as_str().unwrap();
        assert!(
            base["services"].get(name).is_some(),
            "compose.mtls.yaml overrides unknown service {name}"
        );
        for (k, _) in s["environment"].as_mapping().expect("environment") {
            bins.check_env(k.as_str().unwrap(), &format!("compose.mtls.yaml {name}"));
        }
        let agent_url = s["environment"]["SHEPHERD_AGENT_CONTROL_PLANE"].as_str();
        assert!(
            agent_url.is_none_or(|u| u.starts_with("https://")),
            "{name}"
        );
    }
    bins.check_env_names_in(&read("compose/compose.mtls.yaml"), "compose.mtls.yaml");

    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        panic!("openssl is needed to check deploy/compose/certs.sh");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(deploy().join("compose/certs.sh"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = |n: &str| dir.path().join(n);
    TlsServer::load(TlsFiles {
        cert: file("control-plane.pem"),
        key: file("control-plane-key.pem"),
        client_ca: Some(file("ca.pem")),
    })
    .unwrap();
    for agent in ["agent-1", "agent-2"] {
        let cert = read_certs(&file(&format!("{agent}.pem")), "agent certificate").unwrap();
        assert_eq!(PeerNames::of_cert(&cert[0]).0, vec![agent.to_string()]);
    }
}
