//! The last applied snapshot on disk, so an agent restarted while the
//! control plane is out of reach serves what it served before. Written
//! atomically (a temporary file in the same directory, synced, renamed over
//! the old one, directory synced): a crash leaves the old file or the new
//! one, never a torn one.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use shepherd_proto::v1;

const FILE: &str = "snapshot.json";

/// The snapshot file of a state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

/// A snapshot read back from disk, and when it was written.
#[derive(Debug, Clone)]
pub struct Saved {
    pub snapshot: v1::Snapshot,
    pub written: SystemTime,
}

impl StateDir {
    /// Uses `dir`, creating it if missing.
    pub fn open(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("state directory {}: {e}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Writes a snapshot, replacing the previous one atomically.
    pub fn save(&self, snapshot: &v1::Snapshot) -> Result<(), String> {
        let fail = |e: std::io::Error| format!("cannot write {}: {e}", self.path().display());
        let json = serde_json::to_vec(snapshot).map_err(|e| e.to_string())?;
        let mut tmp = tempfile_in(&self.dir).map_err(fail)?;
        tmp.1.write_all(&json).map_err(fail)?;
        tmp.1.sync_all().map_err(fail)?;
        std::fs::rename(&tmp.0, self.path()).map_err(fail)?;
        // The rename is durable once the directory is.
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Reads the saved snapshot; `Ok(None)` when there is none.
    pub fn load(&self) -> Result<Option<Saved>, String> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let snapshot: v1::Snapshot = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not a snapshot: {e}", path.display()))?;
        let written = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(Some(Saved { snapshot, written }))
    }
}

/// A new file with a unique name in `dir`, and its path.
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    for attempt in 0..16u32 {
        let path = dir.join(format!(
            ".{FILE}.{}.{}.tmp",
            std::process::id(),
            rand::random::<u32>().wrapping_add(attempt)
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("cannot create a temporary file"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A saved snapshot reads back equal; a missing one is None; a corrupt
    /// one is an error naming the file.
    #[test]
    fn saves_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        assert!(state.load().unwrap().is_none());
        let snapshot = v1::Snapshot {
            version: 42,
            content_hash: u64::MAX,
            policies: vec![v1::Policy {
                name: "chat".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        state.save(&snapshot).unwrap();
        state.save(&snapshot).unwrap();
        assert_eq!(state.load().unwrap().unwrap().snapshot, snapshot);
        let leftovers = std::fs::read_dir(dir.path().join("state")).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary files left behind");
        std::fs::write(state.path(), b"{not json").unwrap();
        assert!(state.load().unwrap_err().contains("snapshot.json"));
    }
}
