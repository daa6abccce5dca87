//! The demo runs to its end on this machine: the healthy rollout succeeds,
//! the failing one is rolled back, and the summary says so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn demo_rolls_out_then_rolls_back() {
    let demo = Path::new(env!("CARGO_BIN_EXE_shepherd-demo"));
    let bin_dir = demo.parent().unwrap();
    for bin in ["shepherd-control-plane", "shepherd-agent", "shepherdctl"] {
        assert!(
            bin_dir.join(bin).is_file(),
            "{bin} is not built in {}: run the workspace's tests (cargo test --workspace)",
            bin_dir.display()
        );
    }
    let out = Command::new(demo)
        .args(["--fast", "--rate", "60"])
        .env_remove("SHEPHERD_SERVER")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout.split("== summary").nth(1).expect("a summary");
    assert!(
        summary.contains("rollout 1 (healthy candidate mistral):   SUCCEEDED"),
        "{stdout}"
    );
    assert!(summary.contains("ROLLED_BACK"), "{stdout}");
    assert!(
        summary.contains("0 failed (0 during rollout 1)"),
        "{stdout}"
    );
    // Not a TTY: the watch printed each event as a line.
    assert!(stdout.contains("PROMOTED"), "{stdout}");
    assert!(stdout.contains("ended: SUCCEEDED"), "{stdout}");
    assert!(stdout.contains("ended: ROLLED BACK"), "{stdout}");
}
