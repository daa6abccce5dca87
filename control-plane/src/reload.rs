//! Files re-read when they change: token files and TLS certificates, keys
//! and CAs. Each is polled (a mounted Kubernetes secret changes by a swap of
//! symbolic links, which file events report unreliably) and compared with
//! what was last read. A change that does not load is logged, and what was
//! in force stays in force until the files are mended.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// The files of one thing to reload, and what they held when last read.
#[derive(Debug)]
pub struct Watch {
    files: Vec<PathBuf>,
    seen: Vec<u64>,
}

/// A file's contents (or the error reading it), as a fingerprint.
fn fingerprint(path: &PathBuf) -> u64 {
    let mut h = DefaultHasher::new();
    match std::fs::read(path) {
        Ok(bytes) => bytes.hash(&mut h),
        Err(e) => e.kind().hash(&mut h),
    }
    h.finish()
}

impl Watch {
    /// Watches `files`, as they are now.
    pub fn new(files: Vec<PathBuf>) -> Self {
        let seen = files.iter().map(fingerprint).collect();
        Self { files, seen }
    }

    /// True when any file changed since the last call (or since `new`).
    pub fn changed(&mut self) -> bool {
        let now: Vec<u64> = self.files.iter().map(fingerprint).collect();
        let changed = now != self.seen;
        self.seen = now;
        changed
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Checks `watch` every `interval` until `shutdown`, calling `reload` after
/// each change; `reload` says what it loaded, or why it could not.
pub async fn run(
    what: &'static str,
    mut watch: Watch,
    interval: Duration,
    shutdown: CancellationToken,
    mut reload: impl FnMut() -> Result<String, String> + Send,
) {
    if watch.is_empty() {
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if !watch.changed() {
            continue;
        }
        match reload() {
            Ok(loaded) => info!(what, loaded = %loaded, "reloaded"),
            Err(e) => {
                error!(what, error = %e, "cannot reload; what was loaded before stays in force")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change of contents is seen once; an unchanged file is not; a
    /// removed file is a change.
    #[test]
    fn sees_changes_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "a").unwrap();
        let mut w = Watch::new(vec![file.clone()]);
        assert!(!w.changed());
        std::fs::write(&file, "b").unwrap();
        assert!(w.changed());
        assert!(!w.changed());
        std::fs::remove_file(&file).unwrap();
        assert!(w.changed());
        assert!(!w.changed());
    }
}
