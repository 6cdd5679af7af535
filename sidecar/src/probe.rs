//! `s3mount-sidecar probe`: is every given directory a serving s3mount FUSE mount?
//!
//! A mountpoint passes when `statfs` reports the FUSE magic, `/proc/self/mountinfo` lists it as
//! an s3mount mount, and `stat` of its root answers within [`STAT_TIMEOUT`] (a dead FUSE connection
//! answers ENOTCONN, a hung one does not answer; both fail). `--wait` retries until a deadline.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::config::ProbeConfig;
use crate::fuse::FS_SUBTYPE;

/// How long `stat` of a mount root may take.
pub const STAT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two attempts under `--wait`.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// Why a mountpoint is not serving.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// statfs failed (missing directory, dead connection).
    #[error("{path}: statfs failed: {source}")]
    Statfs {
        /// The mountpoint.
        path: PathBuf,
        /// The errno.
        source: nix::Error,
    },
    /// Not a FUSE filesystem (nothing mounted yet).
    #[error("{path}: not a FUSE mount")]
    NotFuse {
        /// The mountpoint.
        path: PathBuf,
    },
    /// A FUSE mount, but not ours.
    #[error("{path}: FUSE mount is not of type fuse.{FS_SUBTYPE}")]
    NotS3mount {
        /// The mountpoint.
        path: PathBuf,
    },
    /// stat of the root failed.
    #[error("{path}: stat of the mount root failed: {source}")]
    Stat {
        /// The mountpoint.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// stat of the root did not answer in time.
    #[error("{path}: stat of the mount root did not answer within {STAT_TIMEOUT:?}")]
    Hung {
        /// The mountpoint.
        path: PathBuf,
    },
}

/// Checks one mountpoint once.
pub fn check(path: &Path) -> Result<(), ProbeError> {
    let fs = nix::sys::statfs::statfs(path).map_err(|source| ProbeError::Statfs {
        path: path.to_path_buf(),
        source,
    })?;
    if fs.filesystem_type() != nix::sys::statfs::FUSE_SUPER_MAGIC {
        return Err(ProbeError::NotFuse {
            path: path.to_path_buf(),
        });
    }
    if !is_s3mount(path) {
        return Err(ProbeError::NotS3mount {
            path: path.to_path_buf(),
        });
    }
    let (tx, rx) = mpsc::channel();
    let target = path.to_path_buf();
    // A hung FUSE server blocks stat forever, so it runs on a thread we may abandon.
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::metadata(&target));
    });
    match rx.recv_timeout(STAT_TIMEOUT) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(ProbeError::Stat {
            path: path.to_path_buf(),
            source,
        }),
        Err(_) => Err(ProbeError::Hung {
            path: path.to_path_buf(),
        }),
    }
}

/// Whether `/proc/self/mountinfo` lists `path` as an s3mount FUSE mount (type `fuse.s3mount`, or
/// type `fuse` with a source named `s3mount:BUCKET`).
fn is_s3mount(path: &Path) -> bool {
    let wanted = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let Ok(mounts) = crate::mountsys::own_mounts() else {
        return false;
    };
    mounts.iter().any(|m| {
        // fuser's own mount code does not set the subtype; the source name tells it then.
        let ours = m.fstype == format!("fuse.{FS_SUBTYPE}")
            || (m.fstype == "fuse" && m.source.starts_with(&format!("{FS_SUBTYPE}:")));
        m.mount_point == wanted.to_string_lossy() && ours
    })
}

/// Runs the probe: 0 when every mountpoint passes (within `--wait`, if given), else 1; each
/// failure is printed to stderr.
pub fn run(config: &ProbeConfig) -> i32 {
    let deadline = config.wait.map(|w| Instant::now() + w);
    loop {
        let failures: Vec<ProbeError> = config.mountpoints.iter().filter_map(|m| check(m).err()).collect();
        if failures.is_empty() {
            return 0;
        }
        if deadline.is_none_or(|d| Instant::now() + RETRY_INTERVAL > d) {
            for f in failures {
                eprintln!("s3mount-sidecar probe: {f}");
            }
            return 1;
        }
        std::thread::sleep(RETRY_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_fails_on_a_plain_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(check(dir.path()), Err(ProbeError::NotFuse { .. })));
    }

    #[test]
    fn probe_fails_on_a_missing_directory() {
        assert!(matches!(
            check(Path::new("/nonexistent/s3mount")),
            Err(ProbeError::Statfs { .. })
        ));
    }

    #[test]
    fn probe_wait_gives_up_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let config = ProbeConfig {
            mountpoints: vec![dir.path().to_path_buf()],
            wait: Some(Duration::from_millis(500)),
        };
        let start = Instant::now();
        assert_eq!(run(&config), 1);
        assert!(start.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(crate::mountsys::unescape_mountinfo("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(crate::mountsys::unescape_mountinfo("/plain"), "/plain");
    }
}
