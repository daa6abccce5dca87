//! Real processes for binary tests: spawn with arguments and environment,
//! collect their log lines (stderr), wait for a line, send signals.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// A spawned process and the lines it has logged so far.
pub struct Spawned {
    child: Child,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Spawned {
    /// Starts `bin` with `args` and extra `envs` (the rest of the environment
    /// is inherited, minus variables starting with `SHEPHERD_` or `OTEL_`).
    pub fn start(bin: &str, args: &[&str], envs: &[(&str, &str)]) -> Spawned {
        let mut cmd = Command::new(bin);
        for (key, _) in std::env::vars() {
            if (key.starts_with("SHEPHERD_") && key != "SHEPHERD_TEST_POSTGRES_URL")
                || key.starts_with("OTEL_")
            {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .args(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let log = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let (lines, changed) = &*sink;
                lines.lock().unwrap().push(line);
                changed.notify_all();
            }
        });
        Spawned {
            child,
            log,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line logged so far.
    pub fn log(&self) -> String {
        self.log.0.lock().unwrap().join("\n")
    }

    /// Waits (up to a minute, a guard against hangs) for a line containing
    /// `needle` after the first `skip` lines; returns it.
    pub fn wait_for_line(&self, needle: &str, skip: usize) -> String {
        let (lines, changed) = &*self.log;
        let mut guard = lines.lock().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(line) = guard.iter().skip(skip).find(|l| l.contains(needle)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(
                !left.is_zero(),
                "no log line containing {needle:?}; log:\n{}",
                guard.join("\n")
            );
            guard = changed.wait_timeout(guard, left).unwrap().0;
        }
    }

    /// Number of lines logged so far.
    pub fn line_count(&self) -> usize {
        self.log.0.lock().unwrap().len()
    }

    /// Sends a signal by name (TERM, HUP, INT).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Sends SIGTERM and waits for the exit; returns the status and the log.
    pub fn terminate(self) -> (ExitStatus, String) {
        self.signal("TERM");
        self.wait()
    }

    /// Waits for the process to exit on its own; returns the status and the
    /// whole log.
    pub fn wait(mut self) -> (ExitStatus, String) {
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (status, self.log())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address logged after `key=` in a line.
pub fn logged_addr(line: &str, key: &str) -> String {
    let at = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"));
    line[at + key.len() + 1..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
