//! An executor's own directory below `--work-dir`: its shuffle files and its operators'
//! spill files. The executor holds a lock on it while it runs, so several executors can
//! share one `--work-dir`, and an executor starting removes the directories no running
//! executor holds any more (left by one that crashed).

use std::fs::File;
use std::path::{Path, PathBuf};

/// Name of the lock file in each executor's directory.
const LOCK_FILE: &str = ".lock";

/// Claims made by this process, for unique staging names.
static CLAIMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Errors of claiming a work directory.
#[derive(Debug, thiserror::Error)]
pub enum WorkDirError {
    /// The directory could not be created, locked or read.
    #[error("executor work dir {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A running executor of the same id holds it.
    #[error("executor work dir {0} is held by a running executor with the same id")]
    Held(PathBuf),
}

/// An executor's directory, locked while this lives and removed when it is dropped.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    _lock: File,
}

impl WorkDir {
    /// Removes stale executor directories below `parent`, then creates and locks
    /// `parent/executor_id`.
    pub fn claim(parent: &Path, executor_id: &str) -> Result<Self, WorkDirError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WorkDirError::Io { path, source }
        };
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        remove_stale(parent);
        let path = parent.join(executor_id);
        // Made and locked under a private name, then renamed into place: another
        // executor's stale-directory sweep never sees it unlocked.
        let staging = parent.join(format!(
            ".claim-{executor_id}-{}-{}",
            std::process::id(),
            CLAIMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        let lock_path = staging.join(LOCK_FILE);
        let lock = File::create(&lock_path).map_err(io(&lock_path))?;
        let _ = lock.try_lock();
        if let Err(e) = std::fs::rename(&staging, &path) {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(if path.exists() {
                WorkDirError::Held(path)
            } else {
                io(&path)(e)
            });
        }
        Ok(Self { path, _lock: lock })
    }

    /// Where shuffle partitions that do not fit in memory go.
    pub fn shuffle(&self) -> PathBuf {
        self.path.join("shuffle")
    }

    /// Where operators (sorts, aggregations, joins) spill.
    pub fn spill(&self) -> PathBuf {
        self.path.join("spill")
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes every directory below `parent` with a lock file nobody holds.
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let lock_path = entry.path().join(LOCK_FILE);
        let Ok(lock) = File::options().write(true).open(&lock_path) else {
            continue;
        };
        if lock.try_lock().is_ok() {
            tracing::info!(path = %entry.path().display(), "removing a stale executor work dir");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_executors_dir_is_kept_and_a_stale_one_removed() {
        let parent = tempfile::tempdir().unwrap();
        let running = WorkDir::claim(parent.path(), "a").unwrap();
        std::fs::create_dir_all(running.spill()).unwrap();
        std::fs::write(running.spill().join("x"), "spilled").unwrap();
        // A crashed executor: its directory and lock file remain, the lock is free.
        let crashed = parent.path().join("b");
        std::fs::create_dir_all(crashed.join("shuffle")).unwrap();
        std::fs::write(crashed.join(LOCK_FILE), "").unwrap();
        std::fs::write(crashed.join("shuffle/q-0-0-0-0.arrow"), "old").unwrap();
        // Something that is no executor's directory stays.
        std::fs::create_dir_all(parent.path().join("other")).unwrap();

        let second = WorkDir::claim(parent.path(), "c").unwrap();
        assert!(!crashed.exists(), "the stale directory was removed");
        assert!(
            running.spill().join("x").exists(),
            "the running one kept its files"
        );
        assert!(parent.path().join("other").exists());
        // The same id twice: refused while the first runs.
        assert!(matches!(
            WorkDir::claim(parent.path(), "a"),
            Err(WorkDirError::Held(_))
        ));
        drop(running);
        assert!(!parent.path().join("a").exists(), "removed when dropped");
        drop(second);
    }

    #[test]
    fn a_restart_under_the_same_id_starts_clean() {
        let parent = tempfile::tempdir().unwrap();
        // A crashed run of "a" left its files; its lock went with its process.
        let left = parent.path().join("a/shuffle/q-0-0-0-0.arrow");
        std::fs::create_dir_all(left.parent().unwrap()).unwrap();
        std::fs::write(&left, "old").unwrap();
        std::fs::write(parent.path().join("a").join(LOCK_FILE), "").unwrap();
        let again = WorkDir::claim(parent.path(), "a").unwrap();
        assert!(!left.exists());
        assert!(parent.path().join("a").join(LOCK_FILE).exists());
        drop(again);
    }
}
