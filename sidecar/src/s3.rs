//! The S3 client behind [`ObjectStore`]: reqwest for HTTP, aws-sigv4 for signing, quick-xml for
//! the XML documents.
//!
//! # Design
//!
//! Every trait method is one logical S3 request, sent by `S3Store::execute`, which owns the retry
//! policy: connection failures, bodies cut short, and 500/502/503/504 answers are retried with
//! exponential backoff and full jitter (a random sleep in `[0, min(max_delay, base * 2^n))`) up to
//! [`RetryConfig::max_attempts`]; every other answer goes back to the method, which maps it to a
//! [`StoreError`]. Each attempt is signed afresh (the signature covers the time), and each attempt
//! counts as one request in [`S3Store::request_counts`], because each costs money.
//!
//! Keys are exact: every byte outside the unreserved set (`A-Z a-z 0-9 - . _ ~`) and `/` is
//! percent-encoded in the path, and the signer is told to take that path as it is (no second
//! encoding, no normalisation), which is how S3 computes the canonical URI. Listings are asked for
//! with `encoding-type=url` and decoded, so keys with bytes XML cannot carry survive. One
//! limitation remains: a key with a `.` or `..` path segment (`a/./b`) cannot be sent, because the
//! URL parser under reqwest removes such segments (even percent-encoded); such keys are refused
//! with a clear error instead of silently addressing another object.
//!
//! Every error is logged once, where it is made, with the request, the key and the reason, at the
//! level [`StoreError::log_level`] gives it. A HEAD of a missing key is an answer, not an error.

mod xml;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use reqwest::header::HeaderMap;

use crate::store::{CompletedPart, ListPage, ObjectMeta, ObjectStore, StoreError, StoreResult};

/// S3's limit for a single CopyObject: 5 GiB.
pub const SINGLE_COPY_LIMIT: u64 = 5 * 1024 * 1024 * 1024;
/// Default part size of a multipart copy: 512 MiB (a 5 TiB object needs 10,240 parts at 512 MiB,
/// so the part size grows automatically to stay within 10,000 parts).
pub const DEFAULT_COPY_PART_SIZE: u64 = 512 * 1024 * 1024;
/// S3's limit on the number of parts of one upload.
pub const MAX_PARTS: u64 = 10_000;

/// Bytes that stay literal in a key's path: unreserved characters and `/`.
const PATH_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');
/// Bytes that stay literal in a query value: unreserved characters only.
const QUERY_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How transient failures are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryConfig {
    /// Attempts in total, the first included (at least 1).
    pub max_attempts: u32,
    /// Backoff base: the n-th retry sleeps a random time below `base_delay * 2^n`.
    pub base_delay: Duration,
    /// Upper bound of one sleep.
    pub max_delay: Duration,
    /// No new attempt starts this long after the first one began. With the client's read
    /// timeout this bounds how long an app waits on an endpoint that stopped answering (each
    /// attempt may wait that timeout): the app gets EIO instead of hanging, unkillable, in the
    /// kernel for `max_attempts` timeouts.
    pub max_elapsed: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(20),
        }
    }
}

impl RetryConfig {
    /// The longest sleep before the `retry`-th retry (1 for the first): `base_delay * 2^(retry-1)`,
    /// at most `max_delay`.
    pub fn backoff_cap(&self, retry: u32) -> Duration {
        self.base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max_delay)
    }

    /// The sleep before the `retry`-th retry: uniformly random in `0..=backoff_cap(retry)` ("full
    /// jitter"), so that clients throttled together do not come back together.
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self.backoff_cap(retry).as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(rand::random_range(0..=cap))
    }
}

/// Where and how to talk to S3.
#[derive(Clone)]
pub struct S3Config {
    /// Endpoint URL such as `http://127.0.0.1:9000`; `None` is AWS for the region.
    pub endpoint: Option<String>,
    /// Signing region.
    pub region: String,
    /// Bucket name.
    pub bucket: String,
    /// Path-style addressing (`endpoint/bucket/key`) instead of virtual-hosted (`bucket.endpoint/key`).
    pub path_style: bool,
    /// Send unsigned requests (public buckets).
    pub anonymous: bool,
    /// Credentials for signing; required unless `anonymous`.
    pub credentials: Option<Credentials>,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Objects larger than this are copied by multipart UploadPartCopy (S3 requires it above 5 GiB).
    pub multipart_copy_threshold: u64,
    /// Part size of a multipart copy (grown if the object would need more than 10,000 parts).
    pub multipart_copy_part_size: u64,
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Time allowed between two reads of an answer.
    pub read_timeout: Duration,
    /// Honour `HTTP(S)_PROXY`/`NO_PROXY` from the environment.
    pub use_env_proxy: bool,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("path_style", &self.path_style)
            .field("anonymous", &self.anonymous)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|c| c.access_key_id().to_string()),
            )
            .field("retry", &self.retry)
            .field("multipart_copy_threshold", &self.multipart_copy_threshold)
            .field("multipart_copy_part_size", &self.multipart_copy_part_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("use_env_proxy", &self.use_env_proxy)
            .finish()
    }
}

impl S3Config {
    /// A configuration with defaults for everything but the bucket and region.
    pub fn new(bucket: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            endpoint: None,
            region: region.into(),
            bucket: bucket.into(),
            path_style: false,
            anonymous: false,
            credentials: None,
            retry: RetryConfig::default(),
            multipart_copy_threshold: SINGLE_COPY_LIMIT,
            multipart_copy_part_size: DEFAULT_COPY_PART_SIZE,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            use_env_proxy: true,
        }
    }

    /// Credentials from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
    /// `Ok(None)` when neither key is set; an error when only one of the two is.
    pub fn credentials_from_env() -> Result<Option<Credentials>, S3ConfigError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (None, None) => Ok(None),
            (Some(id), Some(secret)) => Ok(Some(Credentials::new(
                id,
                secret,
                var("AWS_SESSION_TOKEN"),
                None,
                "environment",
            ))),
            (Some(_), None) => Err(S3ConfigError::PartialCredentials("AWS_SECRET_ACCESS_KEY")),
            (None, Some(_)) => Err(S3ConfigError::PartialCredentials("AWS_ACCESS_KEY_ID")),
        }
    }
}

/// Why an [`S3Store`] cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum S3ConfigError {
    /// One of the two credential variables is set, the other is not.
    #[error("{0} is not set (both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are needed)")]
    PartialCredentials(&'static str),
    /// Neither credentials nor `anonymous`.
    #[error("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use anonymous access")]
    NoCredentials,
    /// The endpoint is not an http(s) URL with a host.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The value given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Empty bucket name.
    #[error("the bucket name is empty")]
    EmptyBucket,
    /// A bad retry or copy setting.
    #[error("invalid setting: {0}")]
    InvalidSetting(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

impl S3ConfigError {
    /// Configuration errors stop the sidecar: always logged as errors.
    pub fn log_level(&self) -> tracing::Level {
        tracing::Level::ERROR
    }
}

/// The kinds of S3 request, as counted by [`S3Store::request_counts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// ListObjectsV2.
    List,
    /// HeadObject.
    Head,
    /// GetObject.
    Get,
    /// PutObject.
    Put,
    /// DeleteObject.
    Delete,
    /// CopyObject.
    Copy,
    /// CreateMultipartUpload.
    MpuCreate,
    /// UploadPart and UploadPartCopy.
    MpuPart,
    /// CompleteMultipartUpload.
    MpuComplete,
    /// AbortMultipartUpload.
    MpuAbort,
}

impl Op {
    /// Every kind, in counter order.
    pub const ALL: [Op; 10] = [
        Op::List,
        Op::Head,
        Op::Get,
        Op::Put,
        Op::Delete,
        Op::Copy,
        Op::MpuCreate,
        Op::MpuPart,
        Op::MpuComplete,
        Op::MpuAbort,
    ];

    /// The name used in counters and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Op::List => "LIST",
            Op::Head => "HEAD",
            Op::Get => "GET",
            Op::Put => "PUT",
            Op::Delete => "DELETE",
            Op::Copy => "COPY",
            Op::MpuCreate => "MPU_CREATE",
            Op::MpuPart => "MPU_PART",
            Op::MpuComplete => "MPU_COMPLETE",
            Op::MpuAbort => "MPU_ABORT",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One request, before signing.
struct Request<'a> {
    op: Op,
    method: Method,
    key: &'a str,
    /// `true`: the object URL of `key`; `false`: the bucket URL.
    object: bool,
    query: Vec<(&'static str, String)>,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
}

/// A final answer (after retries) with its whole body.
struct Response {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Why one attempt failed in a way that is worth another.
enum Transient {
    Status(u16, String),
    Transport(String),
    ShortBody(String),
}

/// An S3 bucket as an [`ObjectStore`].
pub struct S3Store {
    client: reqwest::Client,
    cfg: S3Config,
    identity: Option<Identity>,
    /// `scheme://host[:port]/bucket` (path style) or `scheme://bucket.host[:port]` (virtual host).
    bucket_base: String,
    counts: [AtomicU64; Op::ALL.len()],
    status_counts: Mutex<BTreeMap<(Op, u16), u64>>,
    bytes_down: AtomicU64,
    bytes_up: AtomicU64,
    /// Sizes of the parts uploaded per upload id, so that completing an upload needs no HEAD.
    part_sizes: Mutex<HashMap<String, BTreeMap<u32, u64>>>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("cfg", &self.cfg)
            .field("bucket_base", &self.bucket_base)
            .finish()
    }
}

impl S3Store {
    /// Builds the client. Installs rustls' ring provider for the process if none is installed.
    pub fn new(cfg: S3Config) -> Result<Self, S3ConfigError> {
        if cfg.bucket.is_empty() {
            return Err(S3ConfigError::EmptyBucket);
        }
        if cfg.retry.max_attempts == 0 {
            return Err(S3ConfigError::InvalidSetting(
                "retry.max_attempts must be at least 1".into(),
            ));
        }
        if cfg.multipart_copy_part_size < 5 * 1024 * 1024 && cfg.multipart_copy_threshold >= SINGLE_COPY_LIMIT
        {
            return Err(S3ConfigError::InvalidSetting(
                "multipart_copy_part_size below 5 MiB".into(),
            ));
        }
        if cfg.multipart_copy_part_size == 0 {
            return Err(S3ConfigError::InvalidSetting(
                "multipart_copy_part_size is 0".into(),
            ));
        }
        let identity = match (&cfg.credentials, cfg.anonymous) {
            (_, true) => None,
            (Some(c), false) => Some(Identity::from(c.clone())),
            (None, false) => return Err(S3ConfigError::NoCredentials),
        };
        let bucket_base = bucket_base(&cfg)?;
        // Ignoring the error is deliberate: it only says another provider is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.read_timeout)
            .pool_max_idle_per_host(64);
        if !cfg.use_env_proxy {
            builder = builder.no_proxy();
        }
        let client = builder
            .build()
            .map_err(|e| S3ConfigError::Client(e.to_string()))?;
        Ok(Self {
            client,
            cfg,
            identity,
            bucket_base,
            counts: Default::default(),
            status_counts: Mutex::new(BTreeMap::new()),
            bytes_down: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            part_sizes: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration this store was built with.
    pub fn config(&self) -> &S3Config {
        &self.cfg
    }

    /// Requests sent so far (retries included), by kind name (`LIST`, `HEAD`, `GET`, `PUT`,
    /// `DELETE`, `COPY`, `MPU_CREATE`, `MPU_PART`, `MPU_COMPLETE`, `MPU_ABORT`); every kind is present.
    pub fn request_counts(&self) -> BTreeMap<&'static str, u64> {
        Op::ALL
            .iter()
            .map(|op| (op.name(), self.counts[op.index()].load(Ordering::Relaxed)))
            .collect()
    }

    /// Requests sent so far of one kind.
    pub fn request_count(&self, op: Op) -> u64 {
        self.counts[op.index()].load(Ordering::Relaxed)
    }

    /// Requests by kind name and HTTP status (0 for a request that got no answer).
    pub fn request_status_counts(&self) -> BTreeMap<(&'static str, u16), u64> {
        let map = self.status_counts.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|((op, status), n)| ((op.name(), *status), *n))
            .collect()
    }

    /// Body bytes received (all answers) and sent (all requests) so far.
    pub fn bytes_transferred(&self) -> (u64, u64) {
        (
            self.bytes_down.load(Ordering::Relaxed),
            self.bytes_up.load(Ordering::Relaxed),
        )
    }

    fn count(&self, op: Op, status: u16) {
        self.counts[op.index()].fetch_add(1, Ordering::Relaxed);
        let mut map = self.status_counts.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((op, status)).or_insert(0) += 1;
    }

    fn url(&self, req: &Request<'_>) -> String {
        let mut url = self.bucket_base.clone();
        url.push('/');
        if req.object {
            url.extend(utf8_percent_encode(req.key, PATH_KEEP));
        }
        for (i, (name, value)) in req.query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(name);
            if !value.is_empty() || !matches!(*name, "uploads") {
                url.push('=');
                url.extend(utf8_percent_encode(value, QUERY_KEEP));
            }
        }
        url
    }

    /// Logs `err` once at its level, with the request and key, and returns it.
    fn fail(&self, op: Op, key: &str, err: StoreError) -> StoreError {
        log_store_error(op.name(), key, &err);
        err
    }

    fn sign(
        &self,
        method: &Method,
        url: &str,
        headers: &[(&'static str, String)],
        body: &[u8],
    ) -> Result<Vec<(&'static str, String)>, String> {
        let Some(identity) = &self.identity else {
            return Ok(Vec::new());
        };
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let params = v4::SigningParams::builder()
            .identity(identity)
            .region(&self.cfg.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| format!("signing parameters: {e}"))?
            .into();
        let body = if body.is_empty() {
            SignableBody::Bytes(&[])
        } else {
            SignableBody::UnsignedPayload
        };
        let signable = SignableRequest::new(
            method.as_str(),
            url,
            headers.iter().map(|(k, v)| (*k, v.as_str())),
            body,
        )
        .map_err(|e| format!("cannot sign: {e}"))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| format!("cannot sign: {e}"))?
            .into_parts();
        let (signed, _params) = instructions.into_parts();
        Ok(signed
            .into_iter()
            .map(|h| (h.name(), h.value().to_string()))
            .collect())
    }

    /// Sends `req`, retrying transient failures; returns the first non-transient answer.
    async fn execute(&self, req: Request<'_>) -> StoreResult<Response> {
        if req.object {
            check_key(req.key).map_err(|e| self.fail(req.op, req.key, e))?;
        }
        let url = self.url(&req);
        let retry = &self.cfg.retry;
        let mut last = Transient::Transport(String::new());
        let started = tokio::time::Instant::now();
        let mut attempts = 0;
        for attempt in 0..retry.max_attempts {
            if attempt > 0 {
                let sleep = retry.backoff(attempt);
                if started.elapsed() + sleep >= retry.max_elapsed {
                    tracing::debug!(
                        request = req.op.name(),
                        key = req.key,
                        attempt,
                        "retry time used up"
                    );
                    break;
                }
                tokio::time::sleep(sleep).await;
            }
            attempts += 1;
            match self.attempt(&req, &url).await {
                Ok(resp) => return Ok(resp),
                Err(t) => {
                    let reason = match &t {
                        Transient::Status(s, m) => format!("HTTP {s} {m}"),
                        Transient::Transport(m) | Transient::ShortBody(m) => m.clone(),
                    };
                    tracing::debug!(request = req.op.name(), key = req.key, attempt, %reason, "retrying");
                    last = t;
                }
            }
        }
        let err = match last {
            Transient::Status(status, message) => StoreError::Unavailable {
                attempts,
                message: format!("HTTP {status} {message}"),
            },
            Transient::Transport(message) => StoreError::Transport {
                request: req.op.name().to_string(),
                message: format!("{message} (after {attempts} attempts)"),
            },
            Transient::ShortBody(message) => StoreError::InvalidResponse {
                request: req.op.name().to_string(),
                message: format!("{message} (after {attempts} attempts)"),
            },
        };
        Err(self.fail(req.op, req.key, err))
    }

    async fn attempt(&self, req: &Request<'_>, url: &str) -> Result<Response, Transient> {
        let signed = self
            .sign(&req.method, url, &req.headers, &req.body)
            .map_err(Transient::Transport)?;
        let mut builder = self.client.request(req.method.clone(), url);
        for (name, value) in req.headers.iter().chain(signed.iter()) {
            builder = builder.header(*name, value.as_str());
        }
        if !req.body.is_empty() || matches!(req.method, Method::PUT | Method::POST) {
            // An empty body must still say `Content-Length: 0`: servers answer 411
            // MissingContentLength otherwise (directory markers, empty files).
            if req.body.is_empty() {
                builder = builder.header(http::header::CONTENT_LENGTH, "0");
            }
            builder = builder.body(req.body.clone());
        }
        self.bytes_up.fetch_add(req.body.len() as u64, Ordering::Relaxed);
        let resp = match builder.send().await {
            Ok(r) => r,
            Err(e) => {
                self.count(req.op, 0);
                return Err(Transient::Transport(error_chain(&e)));
            }
        };
        let status = resp.status().as_u16();
        self.count(req.op, status);
        let headers = resp.headers().clone();
        let expected_len = if req.method == Method::HEAD {
            None
        } else {
            resp.content_length()
        };
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return Err(Transient::ShortBody(format!(
                    "reading the body: {}",
                    error_chain(&e)
                )));
            }
        };
        self.bytes_down.fetch_add(body.len() as u64, Ordering::Relaxed);
        if let Some(expected) = expected_len
            && body.len() as u64 != expected
        {
            return Err(Transient::ShortBody(format!(
                "body of {} bytes but Content-Length {expected}",
                body.len()
            )));
        }
        if matches!(status, 500 | 502 | 503 | 504) {
            let detail = xml::parse_error(&body)
                .map(|e| format!("{} {}", e.code, e.message))
                .unwrap_or_default();
            return Err(Transient::Status(status, detail));
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// Maps a non-success answer to an error (logged).
    fn status_error(&self, op: Op, key: &str, resp: &Response) -> StoreError {
        let parsed = xml::parse_error(&resp.body);
        let (code, message) = parsed.map(|e| (e.code, e.message)).unwrap_or_default();
        let what = if message.is_empty() {
            format!("{key} ({code})")
        } else {
            format!("{key}: {code} {message}")
        };
        let err = match resp.status {
            404 => StoreError::NotFound(what),
            403 => StoreError::AccessDenied(what),
            412 => StoreError::PreconditionFailed(what),
            416 => StoreError::InvalidRange(what),
            status => StoreError::Http {
                request: format!("{} {key}", op.name()),
                status,
                code,
                message,
            },
        };
        self.fail(op, key, err)
    }

    fn invalid(&self, op: Op, key: &str, message: String) -> StoreError {
        self.fail(
            op,
            key,
            StoreError::InvalidResponse {
                request: format!("{} {key}", op.name()),
                message,
            },
        )
    }

    fn meta_from_headers(&self, key: &str, resp: &Response, size: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.to_string(),
            size,
            etag: resp.header("etag").unwrap_or_default().to_string(),
            last_modified: resp
                .header("last-modified")
                .and_then(|v| httpdate::parse_http_date(v).ok()),
        }
    }

    async fn copy_single(&self, src_key: &str, dst_key: &str, src_size: u64) -> StoreResult<ObjectMeta> {
        let resp = self
            .execute(Request {
                op: Op::Copy,
                method: Method::PUT,
                key: dst_key,
                object: true,
                query: Vec::new(),
                headers: vec![("x-amz-copy-source", self.copy_source(src_key))],
                body: Bytes::new(),
            })
            .await?;
        if resp.status != 200 {
            return Err(self.status_error(Op::Copy, dst_key, &resp));
        }
        let (etag, last_modified) =
            xml::parse_etag_result(&resp.body).map_err(|m| self.invalid(Op::Copy, dst_key, m))?;
        Ok(ObjectMeta {
            key: dst_key.to_string(),
            size: src_size,
            etag,
            last_modified,
        })
    }

    async fn copy_multipart(&self, src_key: &str, dst_key: &str, src_size: u64) -> StoreResult<ObjectMeta> {
        let part_size = self
            .cfg
            .multipart_copy_part_size
            .max(src_size.div_ceil(MAX_PARTS));
        let upload_id = self.create_multipart(dst_key).await?;
        let result = async {
            let mut parts = Vec::new();
            let mut start = 0u64;
            let mut number = 1u32;
            while start < src_size {
                let end = (start + part_size).min(src_size);
                let resp = self
                    .execute(Request {
                        op: Op::MpuPart,
                        method: Method::PUT,
                        key: dst_key,
                        object: true,
                        query: vec![
                            ("partNumber", number.to_string()),
                            ("uploadId", upload_id.clone()),
                        ],
                        headers: vec![
                            ("x-amz-copy-source", self.copy_source(src_key)),
                            ("x-amz-copy-source-range", format!("bytes={start}-{}", end - 1)),
                        ],
                        body: Bytes::new(),
                    })
                    .await?;
                if resp.status != 200 {
                    return Err(self.status_error(Op::MpuPart, dst_key, &resp));
                }
                let (etag, _) =
                    xml::parse_etag_result(&resp.body).map_err(|m| self.invalid(Op::MpuPart, dst_key, m))?;
                self.record_part(&upload_id, number, end - start);
                parts.push(CompletedPart {
                    part_number: number,
                    etag,
                });
                start = end;
                number += 1;
            }
            self.complete_multipart(dst_key, &upload_id, &parts).await
        }
        .await;
        if result.is_err() {
            // Best effort: a failed abort is logged by abort_multipart itself.
            let _ = self.abort_multipart(dst_key, &upload_id).await;
        }
        result
    }

    fn copy_source(&self, src_key: &str) -> String {
        let key: String = utf8_percent_encode(src_key, PATH_KEEP).collect();
        format!("/{}/{key}", self.cfg.bucket)
    }

    fn record_part(&self, upload_id: &str, number: u32, size: u64) {
        let mut map = self.part_sizes.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(upload_id.to_string()).or_default().insert(number, size);
    }
}

/// Logs a store error once, at its level, with the request and key.
fn log_store_error(request: &str, key: &str, err: &StoreError) {
    match err.log_level() {
        tracing::Level::ERROR => tracing::error!(request, key, error = %err, "S3 request failed"),
        tracing::Level::WARN => tracing::warn!(request, key, error = %err, "S3 request failed"),
        tracing::Level::INFO => tracing::info!(request, key, error = %err, "S3 request failed"),
        tracing::Level::DEBUG => tracing::debug!(request, key, error = %err, "S3 request failed"),
        tracing::Level::TRACE => tracing::trace!(request, key, error = %err, "S3 request failed"),
    }
}

/// Refuses keys that cannot be addressed exactly (see the module doc).
fn check_key(key: &str) -> StoreResult<()> {
    let reason = if key.is_empty() {
        "the key is empty"
    } else if key.split('/').any(|s| s == "." || s == "..") {
        "keys with `.` or `..` path segments cannot be addressed exactly"
    } else if key.len() > 1024 {
        "the key is longer than 1024 bytes"
    } else {
        return Ok(());
    };
    Err(StoreError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{reason}: {key:?}"),
    )))
}

fn bucket_base(cfg: &S3Config) -> Result<String, S3ConfigError> {
    let endpoint = match &cfg.endpoint {
        Some(e) => e.trim_end_matches('/').to_string(),
        None => format!("https://s3.{}.amazonaws.com", cfg.region),
    };
    let bad = |reason: &str| S3ConfigError::InvalidEndpoint {
        endpoint: endpoint.clone(),
        reason: reason.into(),
    };
    let url = url::Url::parse(&endpoint).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    let Some(host) = url.host_str() else {
        return Err(bad("no host"));
    };
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("an endpoint takes no query or fragment"));
    }
    let path = url.path().trim_end_matches('/');
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let bucket: String = utf8_percent_encode(&cfg.bucket, PATH_KEEP).collect();
    if cfg.path_style {
        Ok(format!("{}://{host}{port}{path}/{bucket}", url.scheme()))
    } else {
        if cfg.bucket.contains('.') && url.scheme() == "https" {
            tracing::warn!(bucket = %cfg.bucket, "a bucket with dots in virtual-hosted style breaks TLS names");
        }
        Ok(format!("{}://{}.{host}{port}{path}", url.scheme(), cfg.bucket))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Parses `bytes START-END/TOTAL` into `(START, END)`.
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, _total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

impl ObjectStore for S3Store {
    async fn list_page(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        continuation: Option<&str>,
        start_after: Option<&str>,
        max_keys: Option<u32>,
    ) -> StoreResult<ListPage> {
        let mut query = vec![
            ("list-type", "2".to_string()),
            ("encoding-type", "url".to_string()),
        ];
        query.push(("prefix", prefix.to_string()));
        if let Some(d) = delimiter {
            query.push(("delimiter", d.to_string()));
        }
        if let Some(c) = continuation {
            query.push(("continuation-token", c.to_string()));
        }
        if let Some(s) = start_after {
            query.push(("start-after", s.to_string()));
        }
        if let Some(m) = max_keys {
            query.push(("max-keys", m.to_string()));
        }
        let req = Request {
            op: Op::List,
            method: Method::GET,
            key: prefix,
            object: false,
            query,
            headers: Vec::new(),
            body: Bytes::new(),
        };
        let resp = self.execute(req).await?;
        if resp.status != 200 {
            return Err(self.status_error(Op::List, prefix, &resp));
        }
        xml::parse_list(&resp.body).map_err(|m| self.invalid(Op::List, prefix, m))
    }

    async fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        let req = Request {
            op: Op::Head,
            method: Method::HEAD,
            key,
            object: true,
            query: Vec::new(),
            headers: Vec::new(),
            body: Bytes::new(),
        };
        let resp = self.execute(req).await?;
        match resp.status {
            200 => {
                let size = resp.header("content-length").and_then(|v| v.trim().parse().ok());
                let Some(size) = size else {
                    return Err(self.invalid(Op::Head, key, "HEAD answer without Content-Length".into()));
                };
                Ok(Some(self.meta_from_headers(key, &resp, size)))
            }
            404 => Ok(None),
            _ => Err(self.status_error(Op::Head, key, &resp)),
        }
    }

    async fn get_range(&self, key: &str, range: Range<u64>, if_match: Option<&str>) -> StoreResult<Bytes> {
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        let mut headers = vec![("range", format!("bytes={}-{}", range.start, range.end - 1))];
        if let Some(etag) = if_match {
            headers.push(("if-match", etag.to_string()));
        }
        let req = Request {
            op: Op::Get,
            method: Method::GET,
            key,
            object: true,
            query: Vec::new(),
            headers,
            body: Bytes::new(),
        };
        let resp = self.execute(req).await?;
        if !matches!(resp.status, 200 | 206) {
            return Err(self.status_error(Op::Get, key, &resp));
        }
        // Some servers ignore If-Match; the ETag of the answer tells the same thing.
        if let (Some(expected), Some(got)) = (if_match, resp.header("etag"))
            && expected != got
        {
            let msg = format!("{key}: ETag is {got}, expected {expected}");
            return Err(self.fail(Op::Get, key, StoreError::PreconditionFailed(msg)));
        }
        let wanted = range.end - range.start;
        let len = resp.body.len() as u64;
        match resp.header("content-range").map(parse_content_range) {
            Some(Some((first, last))) => {
                if first != range.start || last < first || last - first + 1 != len || len > wanted {
                    let (a, b) = (range.start, range.end - 1);
                    let msg =
                        format!("asked bytes {a}-{b}, got Content-Range {first}-{last} with {len} bytes");
                    return Err(self.invalid(Op::Get, key, msg));
                }
                Ok(resp.body)
            }
            Some(None) => Err(self.invalid(Op::Get, key, "unparsable Content-Range".into())),
            None if resp.status == 206 => {
                Err(self.invalid(Op::Get, key, "206 answer without Content-Range".into()))
            }
            None => {
                // A 200 without Content-Range is the whole object: the server ignored the range.
                if range.start >= len {
                    let msg = format!("{key}: starts at or after {len}");
                    return Err(self.fail(Op::Get, key, StoreError::InvalidRange(msg)));
                }
                Ok(resp.body.slice(range.start as usize..range.end.min(len) as usize))
            }
        }
    }

    async fn put(&self, key: &str, body: Bytes) -> StoreResult<ObjectMeta> {
        let size = body.len() as u64;
        let req = Request {
            op: Op::Put,
            method: Method::PUT,
            key,
            object: true,
            query: Vec::new(),
            headers: Vec::new(),
            body,
        };
        let resp = self.execute(req).await?;
        if resp.status != 200 {
            return Err(self.status_error(Op::Put, key, &resp));
        }
        if resp.header("etag").is_none() {
            return Err(self.invalid(Op::Put, key, "PUT answer without ETag".into()));
        }
        Ok(self.meta_from_headers(key, &resp, size))
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let req = Request {
            op: Op::Delete,
            method: Method::DELETE,
            key,
            object: true,
            query: Vec::new(),
            headers: Vec::new(),
            body: Bytes::new(),
        };
        let resp = self.execute(req).await?;
        match resp.status {
            200 | 204 | 404 => Ok(()),
            _ => Err(self.status_error(Op::Delete, key, &resp)),
        }
    }

    async fn copy(&self, src_key: &str, dst_key: &str, src_size: u64) -> StoreResult<ObjectMeta> {
        check_key(src_key).map_err(|e| self.fail(Op::Copy, src_key, e))?;
        if src_size > self.cfg.multipart_copy_threshold {
            self.copy_multipart(src_key, dst_key, src_size).await
        } else {
            self.copy_single(src_key, dst_key, src_size).await
        }
    }

    async fn create_multipart(&self, key: &str) -> StoreResult<String> {
        let req = Request {
            op: Op::MpuCreate,
            method: Method::POST,
            key,
            object: true,
            query: vec![("uploads", String::new())],
            headers: Vec::new(),
            body: Bytes::new(),
        };
        let resp = self.execute(req).await?;
        if resp.status != 200 {
            return Err(self.status_error(Op::MpuCreate, key, &resp));
        }
        let id = xml::parse_initiate(&resp.body).map_err(|m| self.invalid(Op::MpuCreate, key, m))?;
        self.part_sizes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), BTreeMap::new());
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> StoreResult<CompletedPart> {
        let size = body.len() as u64;
        let req = Request {
            op: Op::MpuPart,
            method: Method::PUT,
            key,
            object: true,
            query: vec![
                ("partNumber", part_number.to_string()),
                ("uploadId", upload_id.to_string()),
            ],
            headers: Vec::new(),
            body,
        };
        let resp = self.execute(req).await?;
        if resp.status != 200 {
            return Err(self.status_error(Op::MpuPart, key, &resp));
        }
        let Some(etag) = resp.header("etag") else {
            return Err(self.invalid(Op::MpuPart, key, "UploadPart answer without ETag".into()));
        };
        self.record_part(upload_id, part_number, size);
        Ok(CompletedPart {
            part_number,
            etag: etag.to_string(),
        })
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> StoreResult<ObjectMeta> {
        let req = Request {
            op: Op::MpuComplete,
            method: Method::POST,
            key,
            object: true,
            query: vec![("uploadId", upload_id.to_string())],
            headers: vec![("content-type", "application/xml".to_string())],
            body: Bytes::from(xml::complete_body(parts)),
        };
        let resp = self.execute(req).await?;
        if resp.status != 200 {
            return Err(self.status_error(Op::MpuComplete, key, &resp));
        }
        let (etag, last_modified) =
            xml::parse_etag_result(&resp.body).map_err(|m| self.invalid(Op::MpuComplete, key, m))?;
        let sizes = self
            .part_sizes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(upload_id);
        let size = sizes.and_then(|s| {
            parts
                .iter()
                .map(|p| s.get(&p.part_number).copied())
                .sum::<Option<u64>>()
        });
        let size = match size {
            Some(s) => s,
            // Parts uploaded by another process: only a HEAD knows the size.
            None => match self.head(key).await? {
                Some(meta) => meta.size,
                None => return Err(self.invalid(Op::MpuComplete, key, "completed object not found".into())),
            },
        };
        Ok(ObjectMeta {
            key: key.to_string(),
            size,
            etag,
            last_modified,
        })
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        self.part_sizes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(upload_id);
        let req = Request {
            op: Op::MpuAbort,
            method: Method::DELETE,
            key,
            object: true,
            query: vec![("uploadId", upload_id.to_string())],
            headers: Vec::new(),
            body: Bytes::new(),
        };
        let resp = self.execute(req).await?;
        match resp.status {
            200 | 204 | 404 => Ok(()),
            _ => Err(self.status_error(Op::MpuAbort, key, &resp)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(path_style: bool, endpoint: Option<&str>) -> S3Store {
        let mut cfg = S3Config::new("bkt", "us-east-1");
        cfg.endpoint = endpoint.map(str::to_string);
        cfg.path_style = path_style;
        cfg.anonymous = true;
        S3Store::new(cfg).unwrap()
    }

    fn get(key: &str) -> Request<'_> {
        Request {
            op: Op::Get,
            method: Method::GET,
            key,
            object: true,
            query: Vec::new(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    #[test]
    fn every_key_byte_outside_the_unreserved_set_is_percent_encoded() {
        let s = store(true, Some("http://127.0.0.1:9000/"));
        let url = s.url(&get("a b/%+#?\"'é~._-x"));
        assert_eq!(
            url,
            "http://127.0.0.1:9000/bkt/a%20b/%25%2B%23%3F%22%27%C3%A9~._-x"
        );
        // The URL parser under reqwest keeps the path as we wrote it.
        assert_eq!(reqwest::Url::parse(&url).unwrap().as_str(), url);
    }

    #[test]
    fn virtual_hosted_style_puts_the_bucket_in_the_host() {
        let s = store(false, None);
        assert_eq!(s.url(&get("k")), "https://bkt.s3.us-east-1.amazonaws.com/k");
    }

    #[test]
    fn query_values_encode_plus_and_slash() {
        let s = store(true, Some("http://127.0.0.1:1"));
        let mut req = get("");
        req.object = false;
        req.query = vec![
            ("list-type", "2".into()),
            ("prefix", "a+b c/".into()),
            ("uploads", String::new()),
        ];
        assert_eq!(
            s.url(&req),
            "http://127.0.0.1:1/bkt/?list-type=2&prefix=a%2Bb%20c%2F&uploads"
        );
    }

    #[test]
    fn dot_segments_and_empty_keys_are_refused_not_rewritten() {
        assert!(check_key("a/./b").is_err());
        assert!(check_key("..").is_err());
        assert!(check_key("").is_err());
        assert!(check_key("a..b/.c").is_ok());
    }

    #[test]
    fn bad_endpoints_and_partial_config_are_clear_errors() {
        let mut cfg = S3Config::new("b", "r");
        cfg.anonymous = true;
        cfg.endpoint = Some("ftp://x".into());
        assert!(matches!(
            S3Store::new(cfg.clone()),
            Err(S3ConfigError::InvalidEndpoint { .. })
        ));
        cfg.endpoint = Some("not a url".into());
        assert!(matches!(
            S3Store::new(cfg.clone()),
            Err(S3ConfigError::InvalidEndpoint { .. })
        ));
        cfg.endpoint = None;
        cfg.anonymous = false;
        assert!(matches!(S3Store::new(cfg), Err(S3ConfigError::NoCredentials)));
    }

    #[test]
    fn content_range_parses() {
        assert_eq!(parse_content_range("bytes 10-19/100"), Some((10, 19)));
        assert_eq!(parse_content_range("bytes 10-19/*"), Some((10, 19)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
