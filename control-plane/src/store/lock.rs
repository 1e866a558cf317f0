//! The data directory's lock: one control plane per directory.
//!
//! Two control planes writing one directory would each keep their own view
//! of the registry and overwrite each other's files, so every write the
//! second one acknowledged would be lost. The first takes an exclusive
//! `flock(2)` on `<dir>/lock` and writes its pid into it; a second one fails
//! to start, naming that pid. The kernel drops the lock when the process
//! exits, however it exits, so a crash never leaves a stale lock behind.

use crate::error::Error;
use rustix::fs::{flock, FlockOperation};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, Write};
use std::path::Path;

/// File name of the lock inside the data directory.
pub const LOCK_FILE: &str = "lock";

/// An exclusive lock on a data directory, held until dropped.
#[derive(Debug)]
pub(super) struct DirLock {
    // Closing the file releases the lock.
    _file: File,
}

// === impl DirLock ===

impl DirLock {
    /// Locks `dir`, or fails naming the pid of the process holding it.
    pub(super) fn acquire(dir: &Path) -> Result<DirLock, Error> {
        let path = dir.join(LOCK_FILE);
        let io_err = |source| Error::StateWrite {
            path: path.clone(),
            source,
        };
        // Not truncated on open: the holder's pid must stay readable.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        if let Err(errno) = flock(&file, FlockOperation::NonBlockingLockExclusive) {
            let source = std::io::Error::from(errno);
            if source.kind() != ErrorKind::WouldBlock {
                return Err(io_err(source));
            }
            let mut holder = String::new();
            // Best effort: the holder may be between truncating and writing.
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "unknown".to_string(),
                pid => pid.to_string(),
            };
            return Err(Error::StateLocked {
                dir: dir.to_path_buf(),
                path,
                holder,
            });
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_fails_naming_the_holder_and_is_free_after_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let pid = std::process::id().to_string();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(LOCK_FILE))
                .unwrap()
                .trim(),
            pid
        );
        // flock conflicts between open files, even in one process.
        let err = DirLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(err, Error::StateLocked { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&format!("pid {pid}")), "{text}");
        assert!(text.contains("lock"), "{text}");
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }
}
