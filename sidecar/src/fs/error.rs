//! The filesystem core's error type, its errno and the log level each error deserves.
//!
//! This is the one place where an errno is chosen: [`FsError::errno`] is an exhaustive match over
//! this enum and over [`StoreError`], so a new failure cannot reach the kernel unmapped.

use tracing::Level;

use crate::store::StoreError;

/// Why a filesystem operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// No such file or directory (also: a key another client removed).
    #[error("no such file or directory: {0:?}")]
    NotFound(String),
    /// A directory operation on a file.
    #[error("not a directory: {0:?}")]
    NotADirectory(String),
    /// A file operation on a directory.
    #[error("is a directory: {0:?}")]
    IsADirectory(String),
    /// The name is taken.
    #[error("already exists: {0:?}")]
    Exists(String),
    /// rmdir or rename onto a directory that has entries.
    #[error("directory not empty: {0:?}")]
    NotEmpty(String),
    /// A name over 255 bytes or a key over 1024 bytes.
    #[error("name too long: {0}")]
    NameTooLong(String),
    /// A name that cannot be an S3 key segment (not UTF-8, contains `/`, `.` or `..`).
    #[error("invalid name: {0}")]
    InvalidName(String),
    /// A write on a read-only mount.
    #[error("read-only mount")]
    ReadOnly,
    /// An operation s3mount refuses; the text names it.
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// The inode or the object under an open handle is gone or was replaced.
    #[error("stale: {0}")]
    Stale(String),
    /// The kernel passed a handle that is not open (or of the wrong kind).
    #[error("bad file handle {0}")]
    BadHandle(u64),
    /// A write through a handle opened read-only.
    #[error("handle {0} is not open for writing")]
    NotWritable(u64),
    /// An argument the operation cannot take.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An S3 request failed.
    #[error("{op} {path:?}: {source}")]
    Store {
        /// The operation, e.g. `upload`.
        op: &'static str,
        /// The path it was for.
        path: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The local staging file failed.
    #[error("staging file {path}: {source}")]
    Staging {
        /// The staging file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Result of a filesystem operation.
pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    /// Whether this says the object changed under a cached version (412 on If-Match, or it
    /// shrank), as opposed to a failure of the request itself.
    pub fn is_changed_object(&self) -> bool {
        matches!(
            self,
            FsError::Stale(_)
                | FsError::Store {
                    source: StoreError::PreconditionFailed(_),
                    ..
                }
        )
    }

    /// Wraps a store error with the operation and path it failed for.
    pub fn store<'a>(op: &'static str, path: &'a str) -> impl FnOnce(StoreError) -> FsError + 'a {
        move |source| FsError::Store {
            op,
            path: path.to_string(),
            source,
        }
    }

    /// The errno the kernel gets for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound(_) => libc::ENOENT,
            FsError::NotADirectory(_) => libc::ENOTDIR,
            FsError::IsADirectory(_) => libc::EISDIR,
            FsError::Exists(_) => libc::EEXIST,
            FsError::NotEmpty(_) => libc::ENOTEMPTY,
            FsError::NameTooLong(_) => libc::ENAMETOOLONG,
            FsError::InvalidName(_) | FsError::InvalidArgument(_) => libc::EINVAL,
            FsError::ReadOnly => libc::EROFS,
            FsError::Unsupported(_) => libc::ENOTSUP,
            FsError::Stale(_) => libc::ESTALE,
            FsError::BadHandle(_) | FsError::NotWritable(_) => libc::EBADF,
            FsError::Staging { .. } => libc::EIO,
            FsError::Store { source, .. } => match source {
                StoreError::NotFound(_) => libc::ENOENT,
                StoreError::AccessDenied(_) => libc::EACCES,
                StoreError::PreconditionFailed(_) => libc::ESTALE,
                StoreError::InvalidRange(_)
                | StoreError::Unavailable { .. }
                | StoreError::InvalidResponse { .. }
                | StoreError::Http { .. }
                | StoreError::Transport { .. }
                | StoreError::Io(_) => libc::EIO,
            },
        }
    }

    /// How loudly this error is logged: expected answers at debug, refusals at info, failures of
    /// the store or the disk at warn or error.
    pub fn level(&self) -> Level {
        match self {
            FsError::NotFound(_)
            | FsError::NotADirectory(_)
            | FsError::IsADirectory(_)
            | FsError::Exists(_)
            | FsError::NotEmpty(_) => Level::DEBUG,
            FsError::NameTooLong(_)
            | FsError::InvalidName(_)
            | FsError::ReadOnly
            | FsError::Unsupported(_)
            | FsError::Stale(_)
            | FsError::InvalidArgument(_) => Level::INFO,
            FsError::BadHandle(_) | FsError::NotWritable(_) => Level::WARN,
            FsError::Staging { .. } => Level::ERROR,
            FsError::Store { source, .. } => match source {
                StoreError::NotFound(_) => Level::DEBUG,
                StoreError::PreconditionFailed(_) => Level::INFO,
                StoreError::AccessDenied(_)
                | StoreError::InvalidRange(_)
                | StoreError::Unavailable { .. }
                | StoreError::InvalidResponse { .. }
                | StoreError::Http { .. }
                | StoreError::Transport { .. } => Level::WARN,
                StoreError::Io(_) => Level::ERROR,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(source: StoreError) -> FsError {
        FsError::Store {
            op: "test",
            path: "p".into(),
            source,
        }
    }

    #[test]
    fn s3_errors_map_403_to_eacces_404_to_enoent_and_the_rest_to_eio() {
        assert_eq!(store(StoreError::AccessDenied("k".into())).errno(), libc::EACCES);
        assert_eq!(store(StoreError::NotFound("k".into())).errno(), libc::ENOENT);
        assert_eq!(
            store(StoreError::PreconditionFailed("k".into())).errno(),
            libc::ESTALE
        );
        let slow = StoreError::Unavailable {
            attempts: 6,
            message: "503 SlowDown".into(),
        };
        assert_eq!(store(slow).errno(), libc::EIO);
        let bad = StoreError::InvalidResponse {
            request: "Complete".into(),
            message: "error document".into(),
        };
        assert_eq!(store(bad).errno(), libc::EIO);
        assert_eq!(FsError::ReadOnly.errno(), libc::EROFS);
        assert_eq!(FsError::Unsupported("x").errno(), libc::ENOTSUP);
    }

    #[test]
    fn expected_answers_log_at_debug_and_failed_requests_at_warn() {
        assert_eq!(FsError::NotFound("x".into()).level(), Level::DEBUG);
        assert_eq!(store(StoreError::NotFound("k".into())).level(), Level::DEBUG);
        let slow = StoreError::Unavailable {
            attempts: 6,
            message: "503".into(),
        };
        assert_eq!(store(slow).level(), Level::WARN);
    }
}
