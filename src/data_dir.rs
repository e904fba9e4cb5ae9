//! The `--data-dir` directory, created on first use, and its lock: one bizra process per data
//! directory. Two processes writing the same archive shard would interleave its hash chain,
//! and both would write `summaries.xz`.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An exclusive lock on `DIR/lock`, held until dropped (or the process ends, even by kill -9:
/// the kernel releases it with the file descriptor).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    pub path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock of `dir` without waiting; fails with a clear error if another process
    /// holds it. The file keeps the holder's pid, for the error message of the next one.
    pub fn acquire(dir: &Path) -> anyhow::Result<DataDirLock> {
        create(dir)?;
        let path = dir.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open the lock file {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                anyhow::bail!(
                    "{} is in use by another bizra process{} (it holds {}); one process per data directory",
                    dir.display(),
                    if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {holder})")
                    },
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                anyhow::bail!("cannot lock {}: {e}", path.display())
            }
        }
        file.set_len(0)?;
        writeln!(file, "{}", std::process::id())?;
        Ok(DataDirLock { _file: file, path })
    }
}

/// Creates `dir` if it is missing, as other tools with a data directory do; its parent must
/// exist (a typo in a path should not grow a tree of directories).
fn create(dir: &Path) -> anyhow::Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => {
            tracing::info!(dir = %dir.display(), "created the data directory");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "cannot create the data directory {}: its parent directory does not exist",
            dir.display()
        ),
        Err(e) => anyhow::bail!("cannot create the data directory {}: {e}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_fails_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains("in use by another bizra process"), "{err}");
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(first);
        DataDirLock::acquire(dir.path()).expect("free again after the holder is gone");
        // Other directories are independent.
        let other = tempfile::tempdir().unwrap();
        let _a = DataDirLock::acquire(dir.path()).unwrap();
        let _b = DataDirLock::acquire(other.path()).unwrap();
    }

    #[test]
    fn a_missing_data_dir_is_created_but_not_a_missing_parent() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        let lock = DataDirLock::acquire(&dir).expect("created on first use");
        assert!(dir.is_dir() && lock.path.exists());
        let deep = root.path().join("no/such/parent");
        let err = DataDirLock::acquire(&deep).unwrap_err().to_string();
        assert!(err.contains("parent directory does not exist"), "{err}");
        assert!(!root.path().join("no").exists());
        let file = root.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = DataDirLock::acquire(&file).unwrap_err().to_string();
        assert!(err.contains("cannot create the data directory"), "{err}");
    }
}
