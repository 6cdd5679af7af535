//! The object-store boundary: what the filesystem core needs from S3, as a trait.
//!
//! The filesystem is written against [`ObjectStore`] so that its core can be tested with the
//! in-memory store and run for real with the S3 client. Keys are exact byte-for-byte S3 keys
//! (UTF-8); no normalisation happens at this layer.

use std::future::Future;
use std::ops::Range;
use std::time::SystemTime;

use bytes::Bytes;

/// Metadata of one object, as given by a listing, a HEAD or a PUT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The full key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// The ETag exactly as the server sent it (quotes included).
    pub etag: String,
    /// Last-Modified, when the server sent one.
    pub last_modified: Option<SystemTime>,
}

/// One page of ListObjectsV2.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Objects directly in the page.
    pub objects: Vec<ObjectMeta>,
    /// Common prefixes (each ends with the delimiter) when a delimiter was given.
    pub common_prefixes: Vec<String>,
    /// Continuation token for the next page; `None` on the last page.
    pub next_token: Option<String>,
}

/// A completed part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedPart {
    /// 1-based part number.
    pub part_number: u32,
    /// ETag the server returned for the part.
    pub etag: String,
}

/// Why a store request failed. The errno is chosen from this at the FUSE boundary only.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// 404 NoSuchKey / NoSuchBucket.
    #[error("not found: {0}")]
    NotFound(String),
    /// 403.
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// 412: the object changed (If-Match failed).
    #[error("object changed while being read: {0}")]
    PreconditionFailed(String),
    /// 416: the range starts at or after the end of the object.
    #[error("range not satisfiable: {0}")]
    InvalidRange(String),
    /// Throttling or 5xx that persisted through every retry.
    #[error("service unavailable after {attempts} attempts: {message}")]
    Unavailable {
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        message: String,
    },
    /// The server answered something we cannot use (bad XML, a 200 carrying an error document,
    /// a body shorter than its Content-Length).
    #[error("invalid response to {request}: {message}")]
    InvalidResponse {
        /// Which request, e.g. `CompleteMultipartUpload key`.
        request: String,
        /// What was wrong.
        message: String,
    },
    /// Any other HTTP error status.
    #[error("{request} failed with HTTP {status} {code}: {message}")]
    Http {
        /// Which request.
        request: String,
        /// HTTP status.
        status: u16,
        /// S3 error code, if any.
        code: String,
        /// S3 error message, if any.
        message: String,
    },
    /// Connection-level failure that persisted through every retry.
    #[error("transport error on {request}: {message}")]
    Transport {
        /// Which request.
        request: String,
        /// What failed.
        message: String,
    },
    /// Local failure (staging file, cache file).
    #[error("local I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// What the filesystem needs from an S3-compatible store.
///
/// Every method is one logical S3 request (retried inside the implementation when transient).
pub trait ObjectStore: Send + Sync + 'static {
    /// ListObjectsV2 of one page.
    fn list_page(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        continuation: Option<&str>,
        start_after: Option<&str>,
        max_keys: Option<u32>,
    ) -> impl Future<Output = StoreResult<ListPage>> + Send;

    /// HeadObject; `Ok(None)` when the key does not exist.
    fn head(&self, key: &str) -> impl Future<Output = StoreResult<Option<ObjectMeta>>> + Send;

    /// Ranged GetObject. With `if_match`, a changed object gives `PreconditionFailed`.
    fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> impl Future<Output = StoreResult<Bytes>> + Send;

    /// PutObject of a whole body; returns the new metadata.
    fn put(&self, key: &str, body: Bytes) -> impl Future<Output = StoreResult<ObjectMeta>> + Send;

    /// DeleteObject (deleting a missing key is not an error).
    fn delete(&self, key: &str) -> impl Future<Output = StoreResult<()>> + Send;

    /// CopyObject (server side); handles the multipart copy above the single-copy limit.
    fn copy(
        &self,
        src_key: &str,
        dst_key: &str,
        src_size: u64,
    ) -> impl Future<Output = StoreResult<ObjectMeta>> + Send;

    /// CreateMultipartUpload; returns the upload id.
    fn create_multipart(&self, key: &str) -> impl Future<Output = StoreResult<String>> + Send;

    /// UploadPart.
    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> impl Future<Output = StoreResult<CompletedPart>> + Send;

    /// CompleteMultipartUpload (a 200 carrying an error document is an error).
    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> impl Future<Output = StoreResult<ObjectMeta>> + Send;

    /// AbortMultipartUpload.
    fn abort_multipart(&self, key: &str, upload_id: &str) -> impl Future<Output = StoreResult<()>> + Send;
}

impl StoreError {
    /// The level this error deserves in the log: an expected answer (a missing key, a range past
    /// the end) is debug, an object changed under a reader is info, a failure of the service or of
    /// the local disk is a warning.
    pub fn log_level(&self) -> tracing::Level {
        match self {
            StoreError::NotFound(_) | StoreError::InvalidRange(_) => tracing::Level::DEBUG,
            StoreError::PreconditionFailed(_) => tracing::Level::INFO,
            StoreError::AccessDenied(_)
            | StoreError::Unavailable { .. }
            | StoreError::InvalidResponse { .. }
            | StoreError::Http { .. }
            | StoreError::Transport { .. }
            | StoreError::Io(_) => tracing::Level::WARN,
        }
    }
}

/// A copy of an error, for handing one failure to several waiters (a shared prefetch). An `Io`
/// error keeps its kind and message but not its source chain.
impl Clone for StoreError {
    fn clone(&self) -> Self {
        match self {
            StoreError::NotFound(m) => StoreError::NotFound(m.clone()),
            StoreError::AccessDenied(m) => StoreError::AccessDenied(m.clone()),
            StoreError::PreconditionFailed(m) => StoreError::PreconditionFailed(m.clone()),
            StoreError::InvalidRange(m) => StoreError::InvalidRange(m.clone()),
            StoreError::Unavailable { attempts, message } => StoreError::Unavailable {
                attempts: *attempts,
                message: message.clone(),
            },
            StoreError::InvalidResponse { request, message } => StoreError::InvalidResponse {
                request: request.clone(),
                message: message.clone(),
            },
            StoreError::Http {
                request,
                status,
                code,
                message,
            } => StoreError::Http {
                request: request.clone(),
                status: *status,
                code: code.clone(),
                message: message.clone(),
            },
            StoreError::Transport { request, message } => StoreError::Transport {
                request: request.clone(),
                message: message.clone(),
            },
            StoreError::Io(e) => StoreError::Io(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}
