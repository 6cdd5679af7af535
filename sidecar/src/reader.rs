//! The read path: serves reads of one object version from the block cache and from ranged GETs,
//! with read-ahead for sequential readers.
//!
//! # Design
//!
//! An object is seen as blocks of the cache's block size. Each open file gets an
//! [`ObjectReader`] that keeps a map of *slots*: block index -> a shared future of that block's
//! bytes. A read looks up (or creates) the slots of the blocks it touches and awaits them, then
//! cuts its range out of them. Slots are created in *parts*: a run of up to `part_size` bytes of
//! consecutive missing blocks becomes one spawned task, which first asks the cache for each block
//! and then sends one ranged GET per run of blocks the cache lacks, splits the answer into
//! blocks, and writes them to the cache in the background.
//!
//! Sequential detection: a read that starts no more than one block before the end of the
//! previous read and no further than the current window after it is sequential (so the small
//! reorderings of parallel kernel reads and forward seeks inside the window keep the stream).
//! Each sequential read doubles the window, up to `max_window`, and makes sure every block up to
//! `end + window` has a slot: the read-ahead, fetched by parallel parts. Any other read is random:
//! it resets the window and drops (and so cancels) the slots it does not need. Once a reader
//! went random, only a read that starts next to where the last one ended (within its own length)
//! is sequential again, so scattered reads that happen to land near each other start no
//! read-ahead.
//!
//! Random reads bypass the slots (unless every block they touch already has one): they ask the
//! cache for exactly the bytes they want ([`BlockCache::get_range`], which also serves blocks
//! stored whole), and otherwise send one ranged GET for the missing blocks' share of the read,
//! widened to [`RANDOM_ALIGN`] and kept inside those blocks. The fetched bytes go to the cache as
//! block ranges ([`BlockCache::put_range`]), so a repeated random read is served by the cache
//! with no request, and a later sequential read of a partly cached block fetches it whole.
//!
//! Consistency: every GET carries `If-Match` with the ETag of the [`ObjectMeta`] the reader was
//! opened with, and cached blocks are keyed by that ETag, so a replaced object gives
//! `PreconditionFailed` to the reader, never a mix of old and new bytes. A failed part's slots are
//! dropped (read-ahead blocks not read yet included) once the failure is returned, so a transient
//! failure does not stick.
//!
//! Failures: a read that failed after every retry is remembered by its reader for a short time
//! ([`FAILURE_MEMORY`]), so the kernel's immediate second try of a failed read-ahead gets the
//! error at once instead of waiting out the retries again (see [`ObjectReader::read`]).
//!
//! Memory: read-ahead parts take their size from a budget shared by all readers of a
//! [`ReadPath`] (`max_inflight_bytes`) and are only started when the budget and the per-reader
//! `max_concurrency` allow; the blocks a read needs right now are always fetched. A reader keeps
//! at most its window of fetched blocks (blocks behind a sequential reader are dropped).
//!
//! Known shortcoming: without a cache a repeated random read is fetched again (the reader keeps
//! no memory of random reads).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use crate::cache::{BlockCache, BlockId, DEFAULT_BLOCK_SIZE};
use crate::store::{ObjectMeta, ObjectStore, StoreError, StoreResult};

/// Read-path settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadConfig {
    /// Names the store in cache keys (e.g. the endpoint and bucket), so two buckets never share
    /// cached blocks.
    pub namespace: String,
    /// Block size when there is no cache; with a cache, the cache's block size is used.
    pub block_size: u32,
    /// Largest ranged GET of the read-ahead.
    pub part_size: u64,
    /// Read-ahead parts in flight per open file.
    pub max_concurrency: usize,
    /// Read-ahead window after the first read.
    pub initial_window: u64,
    /// Largest read-ahead window.
    pub max_window: u64,
    /// Bytes of read-ahead in flight across all open files.
    pub max_inflight_bytes: u64,
    /// How long an open file remembers a read that failed after every retry (see
    /// [`ObjectReader::read`]).
    pub failure_memory: std::time::Duration,
}

impl Default for ReadConfig {
    fn default() -> Self {
        Self {
            namespace: String::new(),
            block_size: DEFAULT_BLOCK_SIZE,
            part_size: 8 * 1024 * 1024,
            max_concurrency: 8,
            initial_window: 1024 * 1024,
            max_window: 64 * 1024 * 1024,
            max_inflight_bytes: 96 * 1024 * 1024,
            failure_memory: FAILURE_MEMORY,
        }
    }
}

/// Random reads fetch their bytes widened to this alignment (and never past their blocks), so
/// a 256 KiB random read costs at most 256 KiB + 16 KiB (about 1.06x) instead of whole blocks.
pub const RANDOM_ALIGN: u64 = 16 * 1024;

/// How long a reader remembers a read that failed after every retry, by default (see
/// [`ObjectReader::read`]).
pub const FAILURE_MEMORY: std::time::Duration = std::time::Duration::from_secs(2);

/// At most this many failed ranges are remembered per open file (the oldest is forgotten first).
const MAX_REMEMBERED_FAILURES: usize = 16;

/// Budget permits are counted in KiB so that large budgets fit a semaphore.
const PERMIT_UNIT: u64 = 1024;

#[derive(Debug)]
struct Inner<S> {
    store: Arc<S>,
    cache: Option<Arc<BlockCache>>,
    cfg: ReadConfig,
    block_size: u64,
    budget: Arc<Semaphore>,
}

/// Shared state of the read path: the store, the cache and the read-ahead budget.
#[derive(Debug)]
pub struct ReadPath<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for ReadPath<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: ObjectStore> ReadPath<S> {
    /// A read path over `store`, with an optional block cache.
    pub fn new(store: Arc<S>, cache: Option<Arc<BlockCache>>, cfg: ReadConfig) -> Self {
        let block_size = u64::from(
            cache
                .as_ref()
                .map(|c| c.block_size())
                .unwrap_or(cfg.block_size)
                .max(1),
        );
        let permits = (cfg.max_inflight_bytes / PERMIT_UNIT).min(Semaphore::MAX_PERMITS as u64) as usize;
        let inner = Inner {
            store,
            cache,
            cfg,
            block_size,
            budget: Arc::new(Semaphore::new(permits)),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The block cache, if any.
    pub fn cache(&self) -> Option<&Arc<BlockCache>> {
        self.inner.cache.as_ref()
    }

    /// The block size reads are fetched in.
    pub fn block_size(&self) -> u64 {
        self.inner.block_size
    }

    /// A reader of the object version `meta` describes (no request is sent until a read).
    pub fn open(&self, meta: &ObjectMeta) -> ObjectReader<S> {
        let window = self.inner.cfg.initial_window.max(self.inner.block_size);
        ObjectReader {
            inner: self.inner.clone(),
            meta: meta.clone(),
            state: Mutex::new(State {
                last_end: 0,
                window,
                first: true,
                streaming: true,
                slots: BTreeMap::new(),
                failed: Vec::new(),
            }),
            parts_in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }
}

type BlockFuture = Shared<BoxFuture<'static, StoreResult<Bytes>>>;

/// Cancels a part's task when the last slot of the part is dropped.
#[derive(Debug)]
struct PartGuard(AbortHandle);

impl Drop for PartGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Slot {
    fut: BlockFuture,
    guard: Arc<PartGuard>,
}

struct State {
    last_end: u64,
    window: u64,
    first: bool,
    /// Whether the last read was sequential (false after a random read).
    streaming: bool,
    slots: BTreeMap<u64, Slot>,
    /// Recent reads that failed after every retry: when, their range, and why (oldest first).
    failed: Vec<(std::time::Instant, std::ops::Range<u64>, StoreError)>,
}

/// Reads of one open object version.
pub struct ObjectReader<S> {
    inner: Arc<Inner<S>>,
    meta: ObjectMeta,
    state: Mutex<State>,
    parts_in_flight: Arc<AtomicUsize>,
}

impl<S> std::fmt::Debug for ObjectReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader").field("meta", &self.meta).finish()
    }
}

/// Decrements the in-flight part counter when a part task ends (or is aborted).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S: ObjectStore> ObjectReader<S> {
    /// The object version this reader serves.
    pub fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    /// Reads up to `len` bytes at `offset`; shorter only at the end of the object.
    ///
    /// A read that failed after every retry (S3 unavailable or unreachable) is remembered for
    /// `failure_memory` (2 s by default): a read of this reader that overlaps it in that time
    /// fails at once with the same error, until a read of this reader succeeds again. The kernel
    /// asks again at once for pages whose read-ahead failed; without this an app reading from a
    /// hung endpoint would wait out the retries twice before its EIO. A new open (a new reader)
    /// always tries S3 again.
    pub async fn read(&self, offset: u64, len: u32) -> StoreResult<Bytes> {
        let size = self.meta.size;
        if len == 0 || offset >= size {
            return Ok(Bytes::new());
        }
        let end = offset.saturating_add(u64::from(len)).min(size);
        let remembering = {
            let mut st = self.state();
            let memory = self.inner.cfg.failure_memory;
            st.failed.retain(|(at, _, _)| at.elapsed() < memory);
            if let Some((_, _, err)) = st
                .failed
                .iter()
                .find(|(_, failed, _)| failed.start < end && offset < failed.end)
            {
                return Err(err.clone());
            }
            !st.failed.is_empty()
        };
        let result = self.read_now(offset, len, end).await;
        match &result {
            Ok(_) if remembering => self.state().failed.clear(),
            Err(err @ (StoreError::Unavailable { .. } | StoreError::Transport { .. })) => {
                let mut st = self.state();
                if st.failed.len() == MAX_REMEMBERED_FAILURES {
                    st.failed.remove(0);
                }
                st.failed
                    .push((std::time::Instant::now(), offset..end, err.clone()));
            }
            _ => {}
        }
        result
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads `offset..end` (non-empty, inside the object; `len` bytes were asked) from the slots,
    /// the cache or S3.
    async fn read_now(&self, offset: u64, len: u32, end: u64) -> StoreResult<Bytes> {
        let (size, bs) = (self.meta.size, self.inner.block_size);
        let (b0, b1) = (offset / bs, (end - 1) / bs);
        // `None`: a random read that goes around the slots.
        let plan: Option<Vec<(u64, BlockFuture, Arc<PartGuard>)>> = {
            let mut st = self.state();
            let sequential = if st.streaming {
                offset + bs >= st.last_end && offset <= st.last_end + st.window
            } else {
                // After a random read only a read that continues it starts a stream again.
                offset.abs_diff(st.last_end) <= u64::from(len).max(RANDOM_ALIGN)
            };
            let blocks = size.div_ceil(bs);
            if sequential {
                if !st.first && st.streaming {
                    st.window = (st.window * 2).min(self.inner.cfg.max_window.max(bs));
                }
                st.streaming = true;
                st.last_end = st.last_end.max(end);
                st.slots.retain(|&i, _| i >= b0);
                let fetch_end = (end + st.window).div_ceil(bs).min(blocks);
                st.first = false;
                self.schedule(&mut st, b0, fetch_end, b1);
            } else {
                st.window = self.inner.cfg.initial_window.max(bs);
                st.streaming = false;
                st.last_end = end;
                st.first = false;
                st.slots.retain(|&i, _| (b0..=b1).contains(&i));
            }
            let slotted = (b0..=b1).all(|i| st.slots.contains_key(&i));
            slotted.then(|| {
                (b0..=b1)
                    .map(|i| {
                        let slot = st
                            .slots
                            .get(&i)
                            .expect("schedule creates a slot for every demanded block");
                        (i, slot.fut.clone(), slot.guard.clone())
                    })
                    .collect()
            })
        };
        let Some(wanted) = plan else {
            return self.read_random(offset, end).await;
        };
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        let mut single = None;
        let mut failure = None;
        for (i, fut, _guard) in &wanted {
            match fut.clone().await {
                Ok(block) => {
                    let block_start = i * bs;
                    let from = offset.saturating_sub(block_start) as usize;
                    let to = ((end - block_start) as usize).min(block.len());
                    if from > to {
                        failure = Some(self.short_block(*i, block.len()));
                        break;
                    }
                    if wanted.len() == 1 {
                        single = Some(block.slice(from..to));
                    } else {
                        out.extend_from_slice(&block[from..to]);
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(err) = failure {
            // Drop the failed slots and every other slot of their parts (read-ahead blocks not
            // awaited yet would give the same failure), so that a transient failure does not
            // stick.
            let failed_parts: Vec<&Arc<PartGuard>> = wanted
                .iter()
                .filter(|(_, fut, _)| matches!(fut.peek(), Some(Err(_))))
                .map(|(_, _, guard)| guard)
                .collect();
            let mut st = self.state();
            st.slots.retain(|_, slot| {
                !matches!(slot.fut.peek(), Some(Err(_)))
                    && !failed_parts.iter().any(|g| Arc::ptr_eq(g, &slot.guard))
            });
            return Err(err);
        }
        let data = single.unwrap_or_else(|| out.freeze());
        if data.len() as u64 != end - offset {
            return Err(self.short_block(b1, data.len()));
        }
        Ok(data)
    }

    /// A random read: the cache's copy of exactly the bytes asked, else one ranged GET of the
    /// missing blocks' share of them, widened to [`RANDOM_ALIGN`]; what is fetched goes to the
    /// cache as block ranges, so the same read again costs no request.
    async fn read_random(&self, offset: u64, end: u64) -> StoreResult<Bytes> {
        let inner = &self.inner;
        let (bs, size) = (inner.block_size, self.meta.size);
        let (b0, b1) = (offset / bs, (end - 1) / bs);
        // The bytes of block `i` the read wants, as offsets inside the block.
        let want = |i: u64| {
            let base = i * bs;
            (offset.max(base) - base) as u32..(end.min(base + bs) - base) as u32
        };
        let mut pieces: Vec<Option<Bytes>> = vec![None; (b1 - b0 + 1) as usize];
        if let Some(cache) = &inner.cache {
            let cache = cache.clone();
            let asks: Vec<(BlockId, std::ops::Range<u32>)> = (b0..=b1)
                .map(|i| (block_id(inner, &self.meta, i), want(i)))
                .collect();
            pieces = tokio::task::spawn_blocking(move || {
                asks.into_iter()
                    .map(|(id, range)| cache.get_range(&id, range))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(format!("cache lookup task: {e}"))))?;
        }
        let missing: Vec<u64> = (b0..=b1)
            .filter(|i| pieces[(i - b0) as usize].is_none())
            .collect();
        if let (Some(&i0), Some(&i1)) = (missing.first(), missing.last()) {
            let start = (offset.max(i0 * bs) / RANDOM_ALIGN * RANDOM_ALIGN).max(i0 * bs);
            let stop = end
                .min((i1 + 1) * bs)
                .div_ceil(RANDOM_ALIGN)
                .saturating_mul(RANDOM_ALIGN)
                .min((i1 + 1) * bs)
                .min(size);
            let data = inner
                .store
                .get_range(&self.meta.key, start..stop, Some(&self.meta.etag))
                .await?;
            if data.len() as u64 != stop - start {
                let err = StoreError::InvalidResponse {
                    request: format!("GET {}", self.meta.key),
                    message: format!("asked {} bytes at {start}, got {}", stop - start, data.len()),
                };
                tracing::warn!(key = %self.meta.key, error = %err, "read failed");
                return Err(err);
            }
            let mut fills = Vec::new();
            for i in i0..=i1 {
                let base = i * bs;
                let (from, to) = (start.max(base), stop.min(base + bs));
                let block_len = (size - base).min(bs) as u32;
                let got = data.slice((from - start) as usize..(to - start) as usize);
                fills.push((
                    block_id(inner, &self.meta, i),
                    block_len,
                    (from - base) as u32,
                    got,
                ));
                let w = want(i);
                let at = (base + u64::from(w.start) - start) as usize;
                pieces[(i - b0) as usize] = Some(data.slice(at..at + (w.end - w.start) as usize));
            }
            if let Some(cache) = &inner.cache {
                let cache = cache.clone();
                // Off the read's critical path, like the fills of whole blocks.
                tokio::task::spawn_blocking(move || {
                    for (id, block_len, at, bytes) in fills {
                        if let Err(e) = cache.put_range(&id, block_len, at, &bytes) {
                            tracing::warn!(key = %id.key, error = %e, "cache fill failed");
                        }
                    }
                });
            }
        }
        let mut pieces = pieces.into_iter().map(|p| p.unwrap_or_default());
        if b0 == b1 {
            return Ok(pieces.next().unwrap_or_default());
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for p in pieces {
            out.extend_from_slice(&p);
        }
        Ok(out.freeze())
    }

    fn short_block(&self, index: u64, got: usize) -> StoreError {
        let err = StoreError::InvalidResponse {
            request: format!("GET {}", self.meta.key),
            message: format!("block {index} has {got} bytes, short of what the object size promises"),
        };
        tracing::warn!(key = %self.meta.key, error = %err, "read failed");
        err
    }

    /// Creates slots for every block in `from..to` that has none; blocks up to `demand_last` are
    /// needed now and always fetched, later ones only within the budget.
    fn schedule(&self, st: &mut State, from: u64, to: u64, demand_last: u64) {
        let bs = self.inner.block_size;
        let part_blocks = (self.inner.cfg.part_size / bs).max(1);
        let total_blocks = self.meta.size.div_ceil(bs);
        // Read-ahead waits until the missing run at the front of the window is a whole part (or
        // half the window while the window is still small, or reaches the end of the object):
        // topping up one block per read would turn a stream into many small GETs.
        let min_run = part_blocks.min((st.window / bs / 2).max(1));
        let mut i = from;
        while i < to {
            if st.slots.contains_key(&i) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < to && j - i < part_blocks && !st.slots.contains_key(&j) {
                j += 1;
            }
            let demand = i <= demand_last;
            if demand && j > demand_last + 1 {
                // Keep the demanded part small when the rest would exceed the budget.
                let extra = (j - demand_last - 1) * bs;
                if !self.prefetch_allowed(extra) {
                    j = demand_last + 1;
                }
            }
            if !demand && j - i < min_run && j < total_blocks {
                return;
            }
            let permit = if demand {
                None
            } else {
                let bytes = (j - i) * bs;
                if self.parts_in_flight.load(Ordering::Relaxed) >= self.inner.cfg.max_concurrency {
                    return;
                }
                let units = bytes.div_ceil(PERMIT_UNIT).min(u64::from(u32::MAX)) as u32;
                match self.inner.budget.clone().try_acquire_many_owned(units) {
                    Ok(p) => Some(p),
                    Err(_) => return,
                }
            };
            self.spawn_part(st, i, j, permit);
            i = j;
        }
    }

    fn prefetch_allowed(&self, bytes: u64) -> bool {
        self.parts_in_flight.load(Ordering::Relaxed) < self.inner.cfg.max_concurrency
            && (self.inner.budget.available_permits() as u64) * PERMIT_UNIT >= bytes
    }

    fn spawn_part(
        &self,
        st: &mut State,
        first: u64,
        end: u64,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        self.parts_in_flight.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight(self.parts_in_flight.clone());
        let inner = self.inner.clone();
        let meta = self.meta.clone();
        let task = async move {
            let _in_flight = in_flight;
            let _permit = permit;
            fetch_part(&inner, &meta, first, end).await.map(Arc::new)
        };
        let handle = tokio::spawn(task);
        let guard = Arc::new(PartGuard(handle.abort_handle()));
        let key = self.meta.key.clone();
        let part: Shared<BoxFuture<'static, StoreResult<Arc<Vec<Bytes>>>>> = handle
            .map(move |r| match r {
                Ok(res) => res,
                Err(e) => Err(StoreError::Io(std::io::Error::other(format!(
                    "read task for {key} ended: {e}"
                )))),
            })
            .boxed()
            .shared();
        for i in first..end {
            let idx = (i - first) as usize;
            let fut = part
                .clone()
                .map(move |r| r.map(|blocks| blocks[idx].clone()))
                .boxed()
                .shared();
            st.slots.insert(
                i,
                Slot {
                    fut,
                    guard: guard.clone(),
                },
            );
        }
    }
}

fn block_id<S>(inner: &Inner<S>, meta: &ObjectMeta, index: u64) -> BlockId {
    BlockId {
        bucket: inner.cfg.namespace.clone(),
        key: meta.key.clone(),
        etag: meta.etag.clone(),
        index,
    }
}

/// Fetches blocks `first..end`: from the cache where it has them, else by ranged GETs.
async fn fetch_part<S: ObjectStore>(
    inner: &Arc<Inner<S>>,
    meta: &ObjectMeta,
    first: u64,
    end: u64,
) -> StoreResult<Vec<Bytes>> {
    let bs = inner.block_size;
    let count = (end - first) as usize;
    let mut blocks: Vec<Option<Bytes>> = vec![None; count];
    if let Some(cache) = &inner.cache {
        let cache = cache.clone();
        let ids: Vec<BlockId> = (first..end).map(|i| block_id(inner, meta, i)).collect();
        let found =
            tokio::task::spawn_blocking(move || ids.iter().map(|id| cache.get(id)).collect::<Vec<_>>())
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(format!("cache lookup task: {e}"))))?;
        blocks = found;
    }
    let mut k = 0;
    while k < count {
        if blocks[k].is_some() {
            k += 1;
            continue;
        }
        let mut m = k + 1;
        while m < count && blocks[m].is_none() {
            m += 1;
        }
        let start = (first + k as u64) * bs;
        let stop = ((first + m as u64) * bs).min(meta.size);
        let data = inner
            .store
            .get_range(&meta.key, start..stop, Some(&meta.etag))
            .await?;
        if data.len() as u64 != stop - start {
            let err = StoreError::InvalidResponse {
                request: format!("GET {}", meta.key),
                message: format!("asked {} bytes at {start}, got {}", stop - start, data.len()),
            };
            tracing::warn!(key = %meta.key, error = %err, "read failed");
            return Err(err);
        }
        let mut fills = Vec::new();
        for (n, slot) in blocks[k..m].iter_mut().enumerate() {
            let from = n * bs as usize;
            let to = (from + bs as usize).min(data.len());
            let block = data.slice(from..to);
            fills.push((block_id(inner, meta, first + (k + n) as u64), block.clone()));
            *slot = Some(block);
        }
        if let Some(cache) = &inner.cache {
            let cache = cache.clone();
            // Filling the cache is off the read's critical path; a failed fill only costs a GET later.
            tokio::task::spawn_blocking(move || {
                for (id, block) in fills {
                    if let Err(e) = cache.put(&id, &block) {
                        tracing::warn!(key = %id.key, error = %e, "cache fill failed");
                    }
                }
            });
        }
        k = m;
    }
    Ok(blocks.into_iter().map(|b| b.unwrap_or_default()).collect())
}
