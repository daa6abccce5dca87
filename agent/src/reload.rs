//! Hot reload of the policy file: on SIGHUP, and when the file changes (its
//! size, modification time or inode, checked every poll interval, which also
//! catches Kubernetes ConfigMap symlink swaps). A file that cannot be used is
//! refused with a logged reason and the running policies stay.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::Agent;
use crate::policy::load_file;

/// What identifies a version of the file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    })
}

/// Loads the file at start and applies it (the caller reports a failure).
pub fn load(agent: &Agent, path: &Path) -> Result<u64, String> {
    let version = apply(agent, path)?;
    agent.stats.reloads_ok.fetch_add(1, Ordering::Relaxed);
    info!(file = %path.display(), version, "policies applied");
    Ok(version)
}

fn apply(agent: &Agent, path: &Path) -> Result<u64, String> {
    load_file(path)
        .map_err(|e| e.to_string())
        .and_then(|policies| agent.apply_file(policies).map_err(|e| e.to_string()))
}

/// Loads the file again and applies it; on failure the running policies
/// stay.
pub fn reload(agent: &Agent, path: &Path) -> Result<u64, String> {
    let outcome = apply(agent, path);
    match &outcome {
        Ok(version) => {
            agent.stats.reloads_ok.fetch_add(1, Ordering::Relaxed);
            info!(file = %path.display(), version, "policies applied");
        }
        Err(e) => {
            agent.stats.reloads_failed.fetch_add(1, Ordering::Relaxed);
            error!(file = %path.display(), error = %e, "policy file refused; the running policies stay");
        }
    }
    outcome
}

/// Reloads on SIGHUP and on change (checked every `poll`; zero turns polling
/// off) until `shutdown`.
pub async fn watch(agent: Arc<Agent>, path: PathBuf, poll: Duration, shutdown: CancellationToken) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut last = stamp(&path);
    let mut ticker = tokio::time::interval(if poll.is_zero() {
        Duration::from_secs(3600)
    } else {
        poll
    });
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = hangup => {
                info!("SIGHUP: reloading the policy file");
                last = stamp(&path);
                let _ = reload(&agent, &path);
            }
            _ = ticker.tick(), if !poll.is_zero() => {
                let now = stamp(&path);
                if now.is_some() && now != last {
                    last = now;
                    let _ = reload(&agent, &path);
                }
            }
        }
    }
}
