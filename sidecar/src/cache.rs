//! The on-disk block cache: fixed-size blocks of objects, keyed by bucket, key, ETag and index.
//!
//! # Design
//!
//! Each block is one file, `blocks/<2 hex>/<sha256 of bucket, key, etag>-<index>.blk`, in the
//! [`format`] that starts with a header naming the block (bucket, key, ETag, index, offset,
//! length, and which ranges of it the file holds) and a CRC32C over header and data. A block is
//! usually stored whole ([`BlockCache::put`]); a random read stores only the bytes it fetched
//! ([`BlockCache::put_range`]), merged with what the file held, under a per-block lock so that
//! two merges never lose one another. A read checks all of it, so a block of another
//! object version, a truncated file or a flipped bit is never served: the file is deleted and the
//! read is a miss. A write goes to `tmp/` first and is renamed into place, so readers see either
//! no file or a whole one. There is no fsync: after a crash a renamed file may be empty or short,
//! which the checksum catches, and a cache may lose blocks, which only costs a GET.
//!
//! The index (size and recency of every file) lives in memory behind one mutex that is never
//! held during file I/O. The total size is bounded by `max_bytes`; inserting past it evicts the
//! least recently used blocks. [`BlockCache::open`] rebuilds the index from the directory (oldest
//! modification time first, so recency across a restart is approximate), removes leftover
//! temporary files and evicts down to the bound, so a restarted sidecar serves what it cached.
//!
//! Limitations: one process per cache directory (two sidecars sharing one would each bound only
//! their own view); eviction by recency only, not by cost.

pub mod format;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use sha2::{Digest, Sha256};

pub use self::format::{BlockId, FORMAT_VERSION};

/// Default block size: 1 MiB.
pub const DEFAULT_BLOCK_SIZE: u32 = 1024 * 1024;
/// Largest accepted block size: 64 MiB.
pub const MAX_BLOCK_SIZE: u32 = 64 * 1024 * 1024;
/// Locks that serialise writers of one block (chosen by a hash of the block id).
const MERGE_STRIPES: usize = 64;

/// Why the cache failed. Cache failures never fail a read: the caller fetches from S3 instead.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A bad setting.
    #[error("invalid cache setting: {0}")]
    InvalidConfig(String),
    /// The cache directory cannot be used.
    #[error("cache directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// Writing a block failed.
    #[error("cannot write block {path}: {source}")]
    Write {
        /// The block file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

impl CacheError {
    /// A bad setting stops the sidecar (error); a failed write only loses a cache fill (warning).
    pub fn log_level(&self) -> tracing::Level {
        match self {
            CacheError::InvalidConfig(_) | CacheError::Dir { .. } => tracing::Level::ERROR,
            CacheError::Write { .. } => tracing::Level::WARN,
        }
    }
}

/// Counters of a cache, as returned by [`BlockCache::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found a valid block.
    pub hits: u64,
    /// Lookups that found nothing (or a block that failed its checks, or lacked the bytes asked).
    pub misses: u64,
    /// Data bytes served from the cache.
    pub bytes_hit: u64,
    /// Data bytes written into the cache.
    pub bytes_written: u64,
    /// Blocks evicted to stay within the bound.
    pub evictions: u64,
    /// Block files discarded because they failed their checks.
    pub corrupt: u64,
    /// Bytes (files, headers included) currently in the cache.
    pub size_bytes: u64,
    /// Blocks currently in the cache.
    pub blocks: u64,
}

#[derive(Debug)]
struct Entry {
    size: u64,
    tick: u64,
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<String, Entry>,
    /// Recency order: tick -> file name.
    order: BTreeMap<u64, String>,
    total: u64,
    tick: u64,
}

impl Index {
    fn touch(&mut self, name: &str) -> bool {
        self.tick += 1;
        let tick = self.tick;
        match self.entries.get_mut(name) {
            Some(e) => {
                self.order.remove(&e.tick);
                e.tick = tick;
                self.order.insert(tick, name.to_string());
                true
            }
            None => false,
        }
    }

    fn insert(&mut self, name: String, size: u64) {
        self.remove(&name);
        self.tick += 1;
        self.order.insert(self.tick, name.clone());
        self.entries.insert(
            name,
            Entry {
                size,
                tick: self.tick,
            },
        );
        self.total += size;
    }

    fn remove(&mut self, name: &str) -> bool {
        match self.entries.remove(name) {
            Some(e) => {
                self.order.remove(&e.tick);
                self.total -= e.size;
                true
            }
            None => false,
        }
    }

    /// Removes least recently used entries until `total <= max`; returns their names.
    fn evict_to(&mut self, max: u64) -> Vec<String> {
        let mut out = Vec::new();
        while self.total > max {
            let Some((_, name)) = self.order.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&name) {
                self.total -= e.size;
            }
            out.push(name);
        }
        out
    }
}

/// The on-disk block cache. Safe to share between threads (`Arc<BlockCache>`).
#[derive(Debug)]
pub struct BlockCache {
    dir: PathBuf,
    block_size: u32,
    max_bytes: u64,
    index: Mutex<Index>,
    hits: AtomicU64,
    misses: AtomicU64,
    bytes_hit: AtomicU64,
    bytes_written: AtomicU64,
    evictions: AtomicU64,
    corrupt: AtomicU64,
    tmp_seq: AtomicU64,
    merges: Vec<Mutex<()>>,
}

impl BlockCache {
    /// Opens (creating if needed) a cache in `dir` bounded by `max_bytes`, with blocks of
    /// `block_size` bytes, and rebuilds its index from the files already there.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64, block_size: u32) -> Result<BlockCache, CacheError> {
        if block_size == 0 || block_size > MAX_BLOCK_SIZE {
            return Err(CacheError::InvalidConfig(format!(
                "block size {block_size} must be between 1 and {MAX_BLOCK_SIZE}"
            )));
        }
        let dir = dir.into();
        let dir_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Dir { path, source }
        };
        for sub in ["blocks", "tmp"] {
            fs::create_dir_all(dir.join(sub)).map_err(dir_err(&dir.join(sub)))?;
        }
        // Leftover temporary files are half-written blocks of a previous run.
        for e in fs::read_dir(dir.join("tmp")).map_err(dir_err(&dir))?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        let mut found: Vec<(SystemTime, String, u64)> = Vec::new();
        let blocks = dir.join("blocks");
        for shard in fs::read_dir(&blocks).map_err(dir_err(&blocks))?.flatten() {
            let Ok(files) = fs::read_dir(shard.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().to_string();
                let Ok(md) = f.metadata() else { continue };
                if !md.is_file() || !name.ends_with(".blk") {
                    continue;
                }
                found.push((md.modified().unwrap_or(SystemTime::UNIX_EPOCH), name, md.len()));
            }
        }
        found.sort();
        let cache = BlockCache {
            dir,
            block_size,
            max_bytes,
            index: Mutex::new(Index::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            bytes_hit: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            tmp_seq: AtomicU64::new(0),
            merges: (0..MERGE_STRIPES).map(|_| Mutex::new(())).collect(),
        };
        let evicted = {
            let mut index = cache.lock();
            for (_, name, size) in found {
                index.insert(name, size);
            }
            index.evict_to(max_bytes)
        };
        cache.remove_files(&evicted);
        tracing::info!(dir = %cache.dir.display(), blocks = cache.stats().blocks, "block cache opened");
        Ok(cache)
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The bound on the total size.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn file_name(id: &BlockId) -> String {
        let mut h = Sha256::new();
        for part in [&id.bucket, &id.key, &id.etag] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        format!("{}-{}.blk", hex::encode(h.finalize()), id.index)
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join("blocks").join(&name[..2]).join(name)
    }

    fn remove_files(&self, names: &[String]) {
        for name in names {
            self.evictions.fetch_add(1, Ordering::Relaxed);
            let _ = fs::remove_file(self.path_of(name));
        }
    }

    /// The data of block `id`, if the whole block is cached and valid. Blocking file I/O: call
    /// from a blocking context (`spawn_blocking`) in async code.
    pub fn get(&self, id: &BlockId) -> Option<Bytes> {
        self.lookup(id, None)
    }

    /// The bytes `range` (offsets inside the block) of block `id`, if cached and valid, whether
    /// the block is cached whole or only in part. Blocking file I/O, like [`BlockCache::get`].
    pub fn get_range(&self, id: &BlockId, range: Range<u32>) -> Option<Bytes> {
        if range.is_empty() {
            return Some(Bytes::new());
        }
        self.lookup(id, Some(range))
    }

    fn lookup(&self, id: &BlockId, want: Option<Range<u32>>) -> Option<Bytes> {
        let name = Self::file_name(id);
        let path = self.path_of(&name);
        let miss = |cache: &Self| {
            cache.misses.fetch_add(1, Ordering::Relaxed);
            None
        };
        let buf = match fs::read(&path) {
            Ok(b) => b,
            Err(_) => {
                self.lock().remove(&name);
                return miss(self);
            }
        };
        match format::decode(&buf, id, self.offset_of(id)) {
            Ok(decoded) => {
                let found = match &want {
                    None => decoded
                        .is_complete()
                        .then(|| decoded.ranges.first().map_or(0..0, |(_, at)| at.clone())),
                    Some(want) => decoded.find(want),
                };
                if !self.lock().touch(&name) {
                    // A valid file the index lost track of (e.g. raced an eviction): adopt it.
                    self.lock().insert(name, buf.len() as u64);
                }
                let Some(range) = found else {
                    return miss(self);
                };
                self.hits.fetch_add(1, Ordering::Relaxed);
                self.bytes_hit.fetch_add(range.len() as u64, Ordering::Relaxed);
                Some(Bytes::from(buf).slice(range))
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, key = %id.key, "discarding a bad cache block");
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                self.lock().remove(&name);
                let _ = fs::remove_file(&path);
                miss(self)
            }
        }
    }

    fn offset_of(&self, id: &BlockId) -> u64 {
        id.index * u64::from(self.block_size)
    }

    /// Stores block `id`. `data` must be the whole block (shorter only for the last block of an
    /// object). Blocking file I/O, like [`BlockCache::get`].
    pub fn put(&self, id: &BlockId, data: &[u8]) -> Result<(), CacheError> {
        self.check_len(data.len())?;
        let _merge = self.merge_lock(id);
        let pieces: &[(u32, &[u8])] = if data.is_empty() { &[] } else { &[(0, data)] };
        let header = format::encode_header(id, self.offset_of(id), data.len() as u32, pieces);
        self.write_file(id, &header, pieces, data.len())
    }

    /// Stores the bytes at `start` of block `id`, whose whole length is `block_len`, next to
    /// what the cache already holds of that block. Blocking file I/O, like [`BlockCache::get`].
    pub fn put_range(&self, id: &BlockId, block_len: u32, start: u32, data: &[u8]) -> Result<(), CacheError> {
        self.check_len(block_len as usize)?;
        if data.is_empty() {
            return Ok(());
        }
        if start as usize + data.len() > block_len as usize {
            return Err(CacheError::InvalidConfig(format!(
                "range {start}+{} leaves a block of {block_len} bytes",
                data.len()
            )));
        }
        let _merge = self.merge_lock(id);
        let offset = self.offset_of(id);
        let old: Vec<(u32, Vec<u8>)> = match fs::read(self.path_of(&Self::file_name(id))) {
            Ok(buf) => match format::decode(&buf, id, offset) {
                Ok(d) if d.block_len == block_len => d
                    .ranges
                    .into_iter()
                    .map(|(r, at)| (r.start, buf[at].to_vec()))
                    .collect(),
                _ => Vec::new(),
            },
            Err(_) => Vec::new(),
        };
        let pieces = format::merge(old, (start, data.to_vec()));
        let refs: Vec<(u32, &[u8])> = pieces.iter().map(|(s, d)| (*s, &d[..])).collect();
        let header = format::encode_header(id, offset, block_len, &refs);
        self.write_file(id, &header, &refs, data.len())
    }

    fn check_len(&self, len: usize) -> Result<(), CacheError> {
        if len > self.block_size as usize {
            return Err(CacheError::InvalidConfig(format!(
                "block of {len} bytes exceeds the block size {}",
                self.block_size
            )));
        }
        Ok(())
    }

    /// Serialises writers of one block, so that two merges of ranges never lose one another.
    fn merge_lock(&self, id: &BlockId) -> std::sync::MutexGuard<'_, ()> {
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(id, &mut h);
        let stripe = (std::hash::Hasher::finish(&h) % MERGE_STRIPES as u64) as usize;
        self.merges[stripe].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes a block file (`header`, then the pieces' bytes) through `tmp/` and a rename;
    /// `data_len` new bytes for the counters.
    fn write_file(
        &self,
        id: &BlockId,
        header: &[u8],
        pieces: &[(u32, &[u8])],
        data_len: usize,
    ) -> Result<(), CacheError> {
        let size = (header.len() + pieces.iter().map(|(_, d)| d.len()).sum::<usize>()) as u64;
        if size > self.max_bytes {
            return Ok(());
        }
        let name = Self::file_name(id);
        let path = self.path_of(&name);
        let tmp = self.dir.join("tmp").join(format!(
            "{}-{}.tmp",
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let write_err = |source| CacheError::Write {
            path: path.clone(),
            source,
        };
        let result = (|| {
            fs::create_dir_all(path.parent().unwrap_or(&self.dir))?;
            let mut file = fs::File::create(&tmp)?;
            file.write_all(header)?;
            for (_, data) in pieces {
                file.write_all(data)?;
            }
            drop(file);
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(write_err(e));
        }
        self.bytes_written.fetch_add(data_len as u64, Ordering::Relaxed);
        let evicted = {
            let mut index = self.lock();
            index.insert(name, size);
            // The block just written is the most recent and fits alone, so it is never evicted.
            index.evict_to(self.max_bytes)
        };
        self.remove_files(&evicted);
        Ok(())
    }

    /// Whether block `id` is in the index (no file I/O, no counters).
    pub fn contains(&self, id: &BlockId) -> bool {
        self.lock().entries.contains_key(&Self::file_name(id))
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let index = self.lock();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes_hit: self.bytes_hit.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
            size_bytes: index.total,
            blocks: index.entries.len() as u64,
        }
    }

    /// The file that holds block `id` (whether or not it exists), for tests and tools.
    pub fn block_path(&self, id: &BlockId) -> PathBuf {
        self.path_of(&Self::file_name(id))
    }
}
