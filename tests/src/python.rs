//! The official Python SDKs, run against an agent from scripts in
//! `tests/sdk`.

/// Runs `tests/sdk/SCRIPT` with `args` under `python3`; returns its standard
/// output. Fails the test, saying how to install them, when a package in
/// `packages` is missing, and with both outputs when the script fails.
pub async fn run_sdk_script(script: &str, args: &[&str], packages: &str) -> String {
    let path = format!("{}/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .await
        .expect("python3 is needed");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "{packages} needed: pip install {packages} (tests/run installs them)\n{stderr}"
    );
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    stdout
}
