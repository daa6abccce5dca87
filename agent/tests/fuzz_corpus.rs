//! Every input kept for the fuzz targets, replayed through its target's
//! entry point on stable Rust: the corpus (`fuzz/corpus/<target>/`: what
//! fuzzing found worth keeping, seeds included) and every input that once
//! broke a rule (`fuzz/regressions/<target>/`, added when the bug was
//! mended). `tests/fuzz` runs the coverage-guided fuzzers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use shepherd_agent::fuzzing;

/// Runs every input of `fuzz/corpus/<target>` and `fuzz/regressions/<target>`.
fn replay(target: &str, run: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for kind in ["corpus", "regressions"] {
        let dir = fuzz.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            assert_eq!(kind, "regressions", "{}: no corpus", dir.display());
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{} breaks a rule", path.display());
            n += 1;
        }
    }
    assert!(n > 100, "{target}: a corpus of {n} inputs");
}

#[test]
fn policy_corpus() {
    replay("policy", fuzzing::policy);
}

#[test]
fn request_corpus() {
    replay("request", fuzzing::request);
}

#[test]
fn sse_corpus() {
    replay("sse", fuzzing::sse);
}

#[test]
fn answer_corpus() {
    replay("answer", fuzzing::answer);
}

/// The rules hold on inputs made to break them: not JSON, cut short,
/// deeply nested, invalid UTF-8, and frames cut inside a CRLF.
#[test]
fn rules_hold_on_hostile_inputs() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        b"{".to_vec(),
        b"{\"model\":\"\xff\xfe\",\"messages\":[]}".to_vec(),
        b"{\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}"
            .to_vec(),
        deep.clone().into_bytes(),
        format!("{{\"messages\":{deep}}}").into_bytes(),
        b"\x03data: {\"a\":1}\r\n\r\ndata: [DONE]\r".to_vec(),
        b"\x00event: message_start\ndata: {}\n\n".to_vec(),
        b"{\"name\":\"p\",\"backends\":[{\"name\":\"b\",\"base_url\":\"http://x\"}],\"traffic\":{\"baseline\":\"b\",\"candidate_weight\":4294967295}}".to_vec(),
    ];
    for data in &inputs {
        fuzzing::policy(data);
        fuzzing::request(data);
        fuzzing::sse(data);
        fuzzing::answer(data);
    }
}
