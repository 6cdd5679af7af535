//! An in-memory [`ObjectStore`] for tests of the filesystem core.
//!
//! It behaves like a small S3 bucket: keys sort byte-wise, listings honour prefix, delimiter,
//! `start_after`, `max_keys` and continuation tokens, ranged reads honour `If-Match`, and every
//! write gets a fresh ETag. Tests use it also as "another client" (calling [`ObjectStore::put`] or
//! [`MemStore::remove`] directly) and to inject failures ([`MemStore::fail_next`]).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};

use crate::store::{CompletedPart, ListPage, ObjectMeta, ObjectStore, StoreError, StoreResult};

/// Default page size of a listing, as S3's.
pub const DEFAULT_PAGE_SIZE: u32 = 1000;

/// Which kind of request an injected failure applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// Create, Complete and Abort of a multipart upload.
    Multipart,
    /// UploadPart.
    UploadPart,
}

#[derive(Debug, Clone)]
struct Object {
    data: Bytes,
    etag: String,
    last_modified: SystemTime,
}

#[derive(Debug, Default)]
struct Upload {
    key: String,
    parts: BTreeMap<u32, (String, Bytes)>,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, Object>,
    uploads: HashMap<String, Upload>,
    failures: HashMap<Op, u32>,
    requests: HashMap<Op, u64>,
}

/// The in-memory bucket.
#[derive(Debug)]
pub struct MemStore {
    state: Mutex<State>,
    next_etag: AtomicU64,
    page_size: u32,
    flatten_markers: bool,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    /// An empty bucket with S3's page size.
    pub fn new() -> Self {
        Self::with_page_size(DEFAULT_PAGE_SIZE)
    }

    /// An empty bucket whose listings return at most `page_size` entries per page.
    pub fn with_page_size(page_size: u32) -> Self {
        MemStore {
            state: Mutex::new(State::default()),
            next_etag: AtomicU64::new(1),
            page_size,
            flatten_markers: false,
        }
    }

    /// A bucket that, like `rclone serve s3` over a directory, stores a PUT of `dir/` as an empty
    /// object `dir`.
    pub fn flattening_markers() -> Self {
        MemStore {
            flatten_markers: true,
            ..Self::new()
        }
    }

    /// Makes the next `count` requests of kind `op` fail with a persistent 503.
    pub fn fail_next(&self, op: Op, count: u32) {
        self.lock().failures.insert(op, count);
    }

    /// How many requests of kind `op` were made so far.
    pub fn request_count(&self, op: Op) -> u64 {
        self.lock().requests.get(&op).copied().unwrap_or(0)
    }

    /// The whole body of `key`, when it exists.
    pub fn object(&self, key: &str) -> Option<Bytes> {
        self.lock().objects.get(key).map(|o| o.data.clone())
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.lock().objects.keys().cloned().collect()
    }

    /// Removes `key` as another client would; returns whether it existed.
    pub fn remove(&self, key: &str) -> bool {
        self.lock().objects.remove(key).is_some()
    }

    /// Number of multipart uploads begun and neither completed nor aborted.
    pub fn pending_uploads(&self) -> usize {
        self.lock().uploads.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts the request and consumes an injected failure, if any.
    fn begin(&self, op: Op) -> StoreResult<std::sync::MutexGuard<'_, State>> {
        let mut state = self.lock();
        *state.requests.entry(op).or_default() += 1;
        if let Some(left) = state.failures.get_mut(&op)
            && *left > 0
        {
            *left -= 1;
            return Err(StoreError::Unavailable {
                attempts: 1,
                message: format!("injected failure of {op:?}"),
            });
        }
        Ok(state)
    }

    fn new_etag(&self) -> String {
        format!("\"mem-{}\"", self.next_etag.fetch_add(1, Ordering::Relaxed))
    }

    fn store_object(&self, state: &mut State, key: &str, data: Bytes) -> ObjectMeta {
        let object = Object {
            data,
            etag: self.new_etag(),
            last_modified: SystemTime::now(),
        };
        let meta = meta_of(key, &object);
        state.objects.insert(key.to_string(), object);
        meta
    }
}

fn meta_of(key: &str, object: &Object) -> ObjectMeta {
    ObjectMeta {
        key: key.to_string(),
        size: object.data.len() as u64,
        etag: object.etag.clone(),
        last_modified: Some(object.last_modified),
    }
}

impl ObjectStore for MemStore {
    async fn list_page(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        continuation: Option<&str>,
        start_after: Option<&str>,
        max_keys: Option<u32>,
    ) -> StoreResult<ListPage> {
        let state = self.begin(Op::List)?;
        let limit = max_keys.unwrap_or(self.page_size).min(self.page_size).max(1) as usize;
        // The continuation token is the last key (or common prefix) of the previous page.
        let after = continuation.or(start_after).unwrap_or("");
        let mut page = ListPage::default();
        let mut last: Option<String> = None;
        for (key, object) in state.objects.range(prefix.to_string()..) {
            if !key.starts_with(prefix) {
                break;
            }
            if key.as_str() <= after {
                continue;
            }
            let rest = &key[prefix.len()..];
            let entry = match delimiter.and_then(|d| rest.find(d).map(|i| (d, i))) {
                Some((d, i)) => {
                    let common = format!("{prefix}{}", &rest[..i + d.len()]);
                    if last.as_deref() == Some(common.as_str()) || common.as_str() <= after {
                        continue;
                    }
                    Err(common)
                }
                None => Ok(meta_of(key, object)),
            };
            if page.objects.len() + page.common_prefixes.len() == limit {
                page.next_token = last.clone();
                return Ok(page);
            }
            match entry {
                Ok(meta) => {
                    last = Some(meta.key.clone());
                    page.objects.push(meta);
                }
                Err(common) => {
                    // Later pages skip this prefix: its keys all produce a common prefix that
                    // is not after the token.
                    last = Some(common.clone());
                    page.common_prefixes.push(common);
                }
            }
        }
        Ok(page)
    }

    async fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        let state = self.begin(Op::Head)?;
        Ok(state.objects.get(key).map(|o| meta_of(key, o)))
    }

    async fn get_range(&self, key: &str, range: Range<u64>, if_match: Option<&str>) -> StoreResult<Bytes> {
        let state = self.begin(Op::Get)?;
        let object = state
            .objects
            .get(key)
            .ok_or_else(|| StoreError::NotFound(key.to_string()))?;
        if let Some(etag) = if_match
            && etag != object.etag
        {
            return Err(StoreError::PreconditionFailed(key.to_string()));
        }
        let len = object.data.len() as u64;
        if range.start >= len && !(range.start == 0 && len == 0) {
            return Err(StoreError::InvalidRange(format!("{key} {range:?} of {len}")));
        }
        let end = range.end.min(len);
        Ok(object
            .data
            .slice(range.start as usize..end.max(range.start) as usize))
    }

    async fn put(&self, key: &str, body: Bytes) -> StoreResult<ObjectMeta> {
        let mut state = self.begin(Op::Put)?;
        let key = match key.strip_suffix('/') {
            Some(dir) if self.flatten_markers => dir,
            _ => key,
        };
        Ok(self.store_object(&mut state, key, body))
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let mut state = self.begin(Op::Delete)?;
        state.objects.remove(key);
        Ok(())
    }

    async fn copy(&self, src_key: &str, dst_key: &str, _src_size: u64) -> StoreResult<ObjectMeta> {
        let mut state = self.begin(Op::Copy)?;
        let data = state
            .objects
            .get(src_key)
            .ok_or_else(|| StoreError::NotFound(src_key.to_string()))?
            .data
            .clone();
        Ok(self.store_object(&mut state, dst_key, data))
    }

    async fn create_multipart(&self, key: &str) -> StoreResult<String> {
        let mut state = self.begin(Op::Multipart)?;
        let id = format!("upload-{}", self.next_etag.fetch_add(1, Ordering::Relaxed));
        state.uploads.insert(
            id.clone(),
            Upload {
                key: key.to_string(),
                parts: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> StoreResult<CompletedPart> {
        let etag = self.new_etag();
        let mut state = self.begin(Op::UploadPart)?;
        let upload = state
            .uploads
            .get_mut(upload_id)
            .filter(|u| u.key == key)
            .ok_or_else(|| StoreError::NotFound(format!("upload {upload_id}")))?;
        upload.parts.insert(part_number, (etag.clone(), body));
        Ok(CompletedPart { part_number, etag })
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> StoreResult<ObjectMeta> {
        let mut state = self.begin(Op::Multipart)?;
        let upload = state
            .uploads
            .remove(upload_id)
            .filter(|u| u.key == key)
            .ok_or_else(|| StoreError::NotFound(format!("upload {upload_id}")))?;
        let mut body = BytesMut::new();
        for part in parts {
            match upload.parts.get(&part.part_number) {
                Some((etag, data)) if *etag == part.etag => body.extend_from_slice(data),
                _ => {
                    return Err(StoreError::InvalidResponse {
                        request: format!("CompleteMultipartUpload {key}"),
                        message: format!("InvalidPart {}", part.part_number),
                    });
                }
            }
        }
        Ok(self.store_object(&mut state, key, body.freeze()))
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> StoreResult<()> {
        let mut state = self.begin(Op::Multipart)?;
        state.uploads.remove(upload_id);
        Ok(())
    }
}
