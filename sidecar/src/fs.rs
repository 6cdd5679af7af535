//! The filesystem core: POSIX operations on inodes, implemented with S3 requests.
//!
//! It knows nothing of the kernel. [`Fs`] is generic over [`ObjectStore`], so the same code runs
//! on the in-memory store in tests and on S3 in production; the FUSE adapter only converts
//! arguments and replies.
//!
//! How the tree is made from keys (see SEMANTICS.md for every promise):
//! - a file is the object `prefix + path`; a directory is the prefix `prefix + path + "/"`, shown
//!   when any key is below it or when its marker object (the key ending in `/`) exists; a symbolic
//!   link is the object `prefix + path + ".rclonelink"` holding its target;
//! - `readdir` is one ListObjectsV2 walk with delimiter `/` over all pages, and the attributes of
//!   the entries come from that listing (no HEAD per entry);
//! - `lookup` of a name asks, at once, for a HEAD of the file key and a one-key listing of the
//!   directory prefix; a directory wins over an object of the same name, which is logged hidden;
//! - what S3 said is trusted for the metadata TTL, and every change made through the mount updates
//!   the table at once;
//! - reads of an uploaded object go through the read path ([`crate::reader`]: block cache,
//!   ranged GETs with `If-Match`, read-ahead), pinned to the version seen at open;
//! - writes go to a staging file (see [`staging`]) that flush, fsync and close upload.

pub mod error;
pub mod inode;
pub mod names;
pub mod staging;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tracing::{debug, info, warn};

use crate::cache::BlockCache;
use crate::fs::error::{FsError, FsResult};
use crate::fs::inode::{Fh, Ino, InodeTable, Kind, Stat};
use crate::fs::names::{
    LINK_SUFFIX, check_key, check_name, check_new_name, dir_key, file_key, join, link_key, unusable_segment,
};
use crate::fs::staging::{Staging, Stream};
use crate::reader::{ObjectReader, ReadConfig, ReadPath};
use crate::store::{CompletedPart, ObjectMeta, ObjectStore};

/// Default size of one part of a multipart upload, and the largest single PUT.
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
/// Most parts one multipart upload may have.
const MAX_PARTS: u64 = 10_000;
/// Size of the chunks an existing object is downloaded in when it is opened for writing.
const DOWNLOAD_CHUNK: u64 = 8 * 1024 * 1024;
/// Block size reported by statfs and stat.
pub const BLOCK_SIZE: u32 = 4096;

/// What the core needs to know from the configuration.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Key prefix of the root: empty or ending in `/`.
    pub prefix: String,
    /// Refuse every write with EROFS.
    pub read_only: bool,
    /// Owner shown for every inode.
    pub uid: u32,
    /// Group shown for every inode.
    pub gid: u32,
    /// Permission bits of files.
    pub file_mode: u16,
    /// Permission bits of directories.
    pub dir_mode: u16,
    /// How long S3's answers are trusted.
    pub metadata_ttl: Duration,
    /// Where staging files live.
    pub staging_dir: PathBuf,
    /// Multipart part size; files up to this size are uploaded with one PUT.
    pub part_size: usize,
}

impl FsConfig {
    /// The sidecar's defaults (whole bucket, read-write, root-owned, 0644/0755, 1 s TTL, 8 MiB
    /// parts), staging in `staging_dir`; change fields with struct update syntax.
    pub fn new(staging_dir: PathBuf) -> FsConfig {
        FsConfig {
            prefix: String::new(),
            read_only: false,
            uid: 0,
            gid: 0,
            file_mode: 0o644,
            dir_mode: 0o755,
            metadata_ttl: Duration::from_secs(1),
            staging_dir,
            part_size: DEFAULT_PART_SIZE,
        }
    }
}

/// Attributes of an inode, as the kernel is shown them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// File or directory.
    pub kind: Kind,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: SystemTime,
    /// Permission bits.
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode of the entry.
    pub ino: Ino,
    /// File or directory.
    pub kind: Kind,
    /// The name, exactly as in the key.
    pub name: String,
}

/// How a file is opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenMode {
    /// Opened for writing (`O_WRONLY` or `O_RDWR`).
    pub write: bool,
    /// `O_TRUNC`.
    pub truncate: bool,
}

impl OpenMode {
    /// From the `open(2)` flags.
    pub fn from_flags(flags: i32) -> OpenMode {
        let acc = flags & libc::O_ACCMODE;
        OpenMode {
            write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
            truncate: flags & libc::O_TRUNC != 0,
        }
    }
}

/// Attribute changes asked by setattr.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    /// New permission bits (with file-type bits).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New modification time.
    pub mtime: Option<SystemTime>,
}

/// Figures for statfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
}

#[derive(Debug)]
enum Handle<S> {
    File {
        ino: Ino,
        write: bool,
        etag: Option<String>,
        size: u64,
        /// The read path of the version opened (read-only handles of uploaded objects).
        reader: Option<Arc<ObjectReader<S>>>,
    },
    Dir {
        ino: Ino,
        entries: Option<Vec<DirEntry>>,
    },
}

/// The filesystem.
#[derive(Debug)]
pub struct Fs<S> {
    store: Arc<S>,
    config: FsConfig,
    table: Mutex<InodeTable>,
    handles: Mutex<HashMap<Fh, Handle<S>>>,
    reads: ReadPath<S>,
    next_fh: AtomicU64,
    next_staging: AtomicU64,
    /// Whether the server keeps directory markers: one of the `MARKERS_*` values.
    markers: AtomicU8,
    /// Keys already warned about (hidden or unusable), so that each is logged once.
    warned: Mutex<HashSet<String>>,
    /// Body bytes of uploads (PUT, UploadPart) being sent right now, for the metrics.
    sending: AtomicU64,
}

/// Counts body bytes as uploads in flight until dropped.
struct Sending<'a>(&'a AtomicU64, u64);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

const MARKERS_UNKNOWN: u8 = 0;
const MARKERS_SUPPORTED: u8 = 1;
const MARKERS_UNSUPPORTED: u8 = 2;

impl<S: ObjectStore> Fs<S> {
    /// A filesystem over `store` without a block cache; creates the staging directory.
    pub fn new(store: Arc<S>, config: FsConfig) -> FsResult<Fs<S>> {
        Self::with_cache(store, config, None, ReadConfig::default())
    }

    /// A filesystem over `store` whose reads go through `cache` (when given) with read-ahead.
    pub fn with_cache(
        store: Arc<S>,
        config: FsConfig,
        cache: Option<Arc<BlockCache>>,
        read_config: ReadConfig,
    ) -> FsResult<Fs<S>> {
        std::fs::create_dir_all(&config.staging_dir).map_err(|source| FsError::Staging {
            path: config.staging_dir.display().to_string(),
            source,
        })?;
        Ok(Fs {
            reads: ReadPath::new(store.clone(), cache, read_config),
            store,
            config,
            table: Mutex::new(InodeTable::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            next_staging: AtomicU64::new(1),
            markers: AtomicU8::new(MARKERS_UNKNOWN),
            warned: Mutex::new(HashSet::new()),
            sending: AtomicU64::new(0),
        })
    }

    /// The store under the filesystem.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    fn table(&self) -> MutexGuard<'_, InodeTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handles(&self) -> MutexGuard<'_, HashMap<Fh, Handle<S>>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Warns about a key the tree cannot show, once per key and reason (listings repeat).
    fn warn_key_once(&self, key: &str, what: &str) {
        let fresh = self
            .warned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(format!("{what}\0{key}"));
        if fresh {
            warn!(key = %key, "{what}");
        }
    }

    fn ensure_writable(&self) -> FsResult<()> {
        if self.config.read_only {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    fn attr_of(&self, ino: Ino, kind: Kind, stat: &Stat) -> Attr {
        let perm = match kind {
            Kind::File => self.config.file_mode,
            Kind::Dir => self.config.dir_mode,
            Kind::Symlink => 0o777,
        };
        Attr {
            ino,
            kind,
            size: stat.size,
            mtime: stat.mtime,
            perm,
            uid: self.config.uid,
            gid: self.config.gid,
        }
    }

    /// The path of a live inode.
    fn path_of(&self, ino: Ino) -> FsResult<String> {
        match self.table().get(ino) {
            Some(node) => node
                .path
                .clone()
                .ok_or_else(|| FsError::Stale(format!("inode {}", ino.0))),
            None => Err(FsError::Stale(format!("inode {} unknown", ino.0))),
        }
    }

    /// The attributes of `ino` when the table's knowledge is still fresh.
    fn fresh_attr(&self, ino: Ino) -> FsResult<Option<Attr>> {
        let table = self.table();
        let node = table
            .get(ino)
            .ok_or_else(|| FsError::Stale(format!("inode {} unknown", ino.0)))?;
        if node.path.is_none() && !node.is_local() {
            return Err(FsError::Stale(format!("inode {} was removed", ino.0)));
        }
        let fresh = ino == Ino::ROOT
            || node.is_local()
            || node.path.is_none()
            || node.validated.elapsed() < self.config.metadata_ttl;
        if !fresh {
            return Ok(None);
        }
        let mut stat = node.stat.clone();
        if let Some(staging) = &node.staging {
            stat.size = staging.size()?;
        }
        Ok(Some(self.attr_of(ino, node.kind, &stat)))
    }

    /// Asks S3 what is at `path`: a directory (any key below it), a file, a link, or nothing.
    async fn resolve(&self, path: &str) -> FsResult<Option<(Kind, Stat)>> {
        let key = file_key(&self.config.prefix, path);
        let dir = dir_key(&self.config.prefix, path);
        let link = link_key(&self.config.prefix, path);
        let (head, listing, link_head) = futures::join!(
            self.store.head(&key),
            self.store.list_page(&dir, Some("/"), None, None, Some(1)),
            self.store.head(&link)
        );
        let listing = listing.map_err(FsError::store("list", path))?;
        let head = head.map_err(FsError::store("head", path))?;
        let link_head = link_head.map_err(FsError::store("head", path))?;
        if !listing.objects.is_empty() || !listing.common_prefixes.is_empty() {
            if head.is_some() {
                self.warn_key_once(&key, "object hidden by a directory of the same name");
            }
            let mtime = listing
                .objects
                .iter()
                .find(|o| o.key == dir)
                .and_then(|o| o.last_modified)
                .unwrap_or_else(SystemTime::now);
            return Ok(Some((
                Kind::Dir,
                Stat {
                    size: 0,
                    mtime,
                    etag: None,
                },
            )));
        }
        match (head, link_head) {
            (Some(meta), link_meta) => {
                if link_meta.is_some() {
                    self.warn_key_once(&link, "link hidden by a file of the same name");
                }
                Ok(Some((Kind::File, stat_of(&meta))))
            }
            (None, Some(meta)) => Ok(Some((Kind::Symlink, stat_of(&meta)))),
            (None, None) => Ok(None),
        }
    }

    /// Looks up `name` in `parent` and counts one kernel lookup on the result.
    pub async fn lookup(&self, parent: Ino, name: &OsStr) -> FsResult<Attr> {
        let name = check_name(name)?;
        let parent_path = self.dir_path(parent)?;
        let path = join(&parent_path, name);
        check_key(&file_key(&self.config.prefix, &path))?;
        let known = self.table().at(&path);
        if let Some(ino) = known
            && let Some(attr) = self.fresh_attr(ino)?
        {
            self.table().add_lookup(ino);
            return Ok(attr);
        }
        let ttl = self.config.metadata_ttl;
        if self.known_missing(&parent_path, name, &path) {
            return Err(FsError::NotFound(path));
        }
        let list_first = !ttl.is_zero() && {
            let table = self.table();
            !table.has_listing(&parent_path, ttl) && !table.is_large(&parent_path)
        };
        if list_first {
            let complete = self.list_small_dir(&parent_path).await?;
            // The page may hold the name even when it does not hold the whole directory.
            let known = self.table().at(&path);
            if let Some(ino) = known
                && let Some(attr) = self.fresh_attr(ino)?
            {
                self.table().add_lookup(ino);
                return Ok(attr);
            }
            if complete && self.known_missing(&parent_path, name, &path) {
                return Err(FsError::NotFound(path));
            }
        }
        let attr = self.refresh(&path).await?;
        self.table().add_lookup(attr.ino);
        Ok(attr)
    }

    /// Whether `path` (the entry `name` of `parent`) is known missing: found missing, or absent
    /// from a complete listing of its parent, within the TTL.
    fn known_missing(&self, parent: &str, name: &str, path: &str) -> bool {
        let ttl = self.config.metadata_ttl;
        let table = self.table();
        table.is_missing(path, ttl) || table.listing_lacks(parent, name, ttl)
    }

    /// Lists the directory at `path` with one page, for a lookup in it: a directory that fits
    /// one page is then known whole, so later lookups in it cost no request within the TTL (the
    /// files an app creates one after another, say). A larger one is remembered as such and its
    /// lookups go back to asking for the one name. Returns whether the listing was complete.
    async fn list_small_dir(&self, path: &str) -> FsResult<bool> {
        let (asked, mark) = (Instant::now(), self.table().listing_mark());
        let (found, complete) = self.fetch_listing(path, Some(1)).await?;
        let mut table = self.table();
        if complete {
            let names = found.keys().cloned().collect();
            table.record_listing(path, asked, mark, names, self.config.metadata_ttl);
        } else {
            table.set_large(path);
        }
        for (name, (kind, stat)) in found {
            table.upsert(&join(path, &name), kind, stat);
        }
        Ok(complete)
    }

    /// Resolves `path` with S3 and records the answer.
    async fn refresh(&self, path: &str) -> FsResult<Attr> {
        match self.resolve(path).await? {
            Some((kind, stat)) => {
                let mut table = self.table();
                let ino = table.upsert(path, kind, stat);
                let node = table.get(ino).expect("just upserted");
                let mut stat = node.stat.clone();
                let kind = node.kind;
                if let Some(staging) = &node.staging {
                    stat.size = staging.size()?;
                }
                Ok(self.attr_of(ino, kind, &stat))
            }
            None => {
                let mut table = self.table();
                // A file created here and not uploaded yet, or a local directory, exists only here.
                if let Some(ino) = table.at(path)
                    && let Some(node) = table.get(ino)
                    && node.is_local()
                {
                    let mut stat = node.stat.clone();
                    if let Some(staging) = &node.staging {
                        stat.size = staging.size()?;
                    }
                    return Ok(self.attr_of(ino, node.kind, &stat));
                }
                table.detach(path);
                table.set_missing(path);
                Err(FsError::NotFound(path.to_string()))
            }
        }
    }

    fn dir_path(&self, ino: Ino) -> FsResult<String> {
        let table = self.table();
        let node = table
            .get(ino)
            .ok_or_else(|| FsError::Stale(format!("inode {} unknown", ino.0)))?;
        let path = node
            .path
            .clone()
            .ok_or_else(|| FsError::Stale(format!("inode {}", ino.0)))?;
        if node.kind != Kind::Dir {
            return Err(FsError::NotADirectory(path));
        }
        Ok(path)
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        self.table().forget(ino, n);
    }

    /// Current attributes of `ino`, from the table while fresh, else from S3.
    pub async fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        if let Some(attr) = self.fresh_attr(ino)? {
            return Ok(attr);
        }
        let path = self.path_of(ino)?;
        let attr = self.refresh(&path).await?;
        if attr.ino != ino {
            return Err(FsError::Stale(format!("{path:?} was replaced")));
        }
        Ok(attr)
    }

    /// Opens a directory.
    pub fn opendir(&self, ino: Ino) -> FsResult<Fh> {
        self.dir_path(ino)?;
        Ok(self.add_handle(Handle::Dir { ino, entries: None }))
    }

    /// Entries of an open directory from `offset` (0 lists afresh; `.` and `..` come first).
    pub async fn readdir(&self, fh: Fh, offset: u64) -> FsResult<Vec<(u64, DirEntry)>> {
        let (ino, cached) = match self.handles().get(&fh) {
            Some(Handle::Dir { ino, entries }) => (*ino, if offset == 0 { None } else { entries.clone() }),
            _ => return Err(FsError::BadHandle(fh.0)),
        };
        let entries = match cached {
            Some(entries) => entries,
            None => {
                let entries = self.list_dir(ino).await?;
                if let Some(Handle::Dir { entries: slot, .. }) = self.handles().get_mut(&fh) {
                    *slot = Some(entries.clone());
                }
                entries
            }
        };
        Ok(entries
            .into_iter()
            .enumerate()
            .skip(offset as usize)
            .map(|(i, e)| (i as u64 + 1, e))
            .collect())
    }

    /// Like [`Fs::readdir`], with each entry's attributes (from the listing just made). The caller
    /// counts a kernel lookup, with [`Fs::add_lookups`], on each entry the kernel accepted.
    pub async fn readdirplus(&self, fh: Fh, offset: u64) -> FsResult<Vec<(u64, DirEntry, Attr)>> {
        let entries = self.readdir(fh, offset).await?;
        let table = self.table();
        let mut out = Vec::with_capacity(entries.len());
        for (next, entry) in entries {
            let Some(node) = table.get(entry.ino) else {
                continue;
            };
            let mut stat = node.stat.clone();
            if let Some(staging) = &node.staging {
                stat.size = staging.size()?;
            }
            let attr = self.attr_of(entry.ino, node.kind, &stat);
            out.push((next, entry, attr));
        }
        Ok(out)
    }

    /// The kernel took one reference to each of `inos` (entries of a readdirplus reply).
    pub fn add_lookups(&self, inos: &[Ino]) {
        let mut table = self.table();
        for ino in inos {
            table.add_lookup(*ino);
        }
    }

    /// What S3 lists in the directory at `path`: every page, or at most `max_pages`; with
    /// whether the answer is complete. Unusable keys and hidden objects are skipped and logged.
    async fn fetch_listing(
        &self,
        path: &str,
        max_pages: Option<usize>,
    ) -> FsResult<(BTreeMap<String, (Kind, Stat)>, bool)> {
        let dir = dir_key(&self.config.prefix, path);
        let mut pages = 0;
        let mut found: BTreeMap<String, (Kind, Stat)> = BTreeMap::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .store
                .list_page(&dir, Some("/"), token.as_deref(), None, None)
                .await
                .map_err(FsError::store("list", path))?;
            pages += 1;
            for prefix in &page.common_prefixes {
                let Some(name) = prefix
                    .strip_prefix(dir.as_str())
                    .and_then(|n| n.strip_suffix('/'))
                else {
                    warn!(prefix = %prefix, "listing returned a prefix outside the directory");
                    continue;
                };
                if let Some(why) = unusable_segment(name) {
                    self.warn_key_once(prefix, &format!("key prefix cannot be a path ({why}); skipped"));
                    continue;
                }
                if let Some((Kind::File, _)) = found.get(name) {
                    self.warn_key_once(
                        &format!("{dir}{name}"),
                        "object hidden by a directory of the same name",
                    );
                }
                found.insert(name.to_string(), (Kind::Dir, Stat::empty()));
            }
            for object in &page.objects {
                let Some(name) = object.key.strip_prefix(dir.as_str()) else {
                    warn!(key = %object.key, "listing returned a key outside the directory");
                    continue;
                };
                if name.is_empty() {
                    continue; // this directory's own marker
                }
                if let Some(why) = unusable_segment(name) {
                    self.warn_key_once(&object.key, &format!("key cannot be a path ({why}); skipped"));
                    continue;
                }
                let (name, kind) = match name.strip_suffix(LINK_SUFFIX) {
                    Some(link) if unusable_segment(link).is_none() => (link, Kind::Symlink),
                    _ => (name, Kind::File),
                };
                match found.get(name) {
                    Some((Kind::Dir, _)) => {
                        self.warn_key_once(&object.key, "object hidden by a directory of the same name");
                        continue;
                    }
                    Some(_) if kind == Kind::Symlink => {
                        self.warn_key_once(&object.key, "link hidden by a file of the same name");
                        continue;
                    }
                    _ => {}
                }
                found.insert(name.to_string(), (kind, stat_of(object)));
            }
            match page.next_token {
                None => return Ok((found, true)),
                Some(_) if max_pages.is_some_and(|max| pages >= max) => return Ok((found, false)),
                Some(next) => token = Some(next),
            }
        }
    }

    /// Lists the directory `ino`: every page, attributes from the listing.
    async fn list_dir(&self, ino: Ino) -> FsResult<Vec<DirEntry>> {
        let path = self.dir_path(ino)?;
        let (asked, mark) = (Instant::now(), self.table().listing_mark());
        let (found, _) = self.fetch_listing(&path, None).await?;
        let mut table = self.table();
        let names = found.keys().cloned().collect();
        table.record_listing(&path, asked, mark, names, self.config.metadata_ttl);
        let mut entries = vec![
            DirEntry {
                ino,
                kind: Kind::Dir,
                name: ".".into(),
            },
            DirEntry {
                ino: self.parent_ino(&table, &path),
                kind: Kind::Dir,
                name: "..".into(),
            },
        ];
        let mut seen: BTreeMap<String, DirEntry> = BTreeMap::new();
        for (name, (kind, stat)) in found {
            let child = table.upsert(&join(&path, &name), kind, stat);
            seen.insert(
                name.clone(),
                DirEntry {
                    ino: child,
                    kind,
                    name,
                },
            );
        }
        for (name, child, kind) in table.local_children(&path) {
            seen.entry(name.clone()).or_insert(DirEntry {
                ino: child,
                kind,
                name,
            });
        }
        entries.extend(seen.into_values());
        Ok(entries)
    }

    fn parent_ino(&self, table: &InodeTable, path: &str) -> Ino {
        if path.is_empty() {
            return Ino::ROOT;
        }
        table.at(names::split(path).0).unwrap_or(Ino::ROOT)
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, fh: Fh) {
        self.handles().remove(&fh);
    }

    fn add_handle(&self, handle: Handle<S>) -> Fh {
        let fh = Fh(self.next_fh.fetch_add(1, Ordering::Relaxed));
        self.handles().insert(fh, handle);
        fh
    }

    fn new_staging(&self, ino: Ino) -> FsResult<Arc<Staging>> {
        let n = self.next_staging.fetch_add(1, Ordering::Relaxed);
        let name = format!("ino{}-{}-{n}", ino.0, std::process::id());
        Ok(Arc::new(Staging::create(self.config.staging_dir.join(name))?))
    }

    /// Whether the kernel may keep the page cache it holds for the file behind `fh` (the FUSE
    /// open flag `FOPEN_KEEP_CACHE`), asked once right after [`Fs::open`]. Yes only for a
    /// read-only handle of the same uploaded version (ETag) that the last read-only open of the
    /// inode saw: the kernel then serves a re-read from memory with no FUSE read and no S3
    /// request. Any other open (a new version, staged data, a handle for writing) drops the
    /// kernel's pages, so a new open never sees bytes of an older version.
    pub fn keep_page_cache(&self, fh: Fh) -> bool {
        let (ino, version) = match self.handles().get(&fh) {
            Some(Handle::File {
                ino,
                write: false,
                etag: Some(etag),
                reader: Some(_),
                ..
            }) => (*ino, Some(etag.clone())),
            Some(Handle::File { ino, .. }) => (*ino, None),
            _ => return false,
        };
        let mut table = self.table();
        let Some(node) = table.get_mut(ino) else {
            return false;
        };
        let keep = version.is_some() && node.kernel_etag == version;
        node.kernel_etag = version;
        keep
    }

    /// Opens a file. Opening for writing copies the object into a staging file (unless truncated).
    pub async fn open(&self, ino: Ino, mode: OpenMode) -> FsResult<Fh> {
        if mode.write || mode.truncate {
            self.ensure_writable()?;
        }
        let attr = self.getattr(ino).await?;
        match attr.kind {
            Kind::Dir => return Err(FsError::IsADirectory(self.path_of(ino)?)),
            Kind::Symlink => return Err(FsError::InvalidArgument("open of a symbolic link".into())),
            Kind::File => {}
        }
        let (mut etag, staged) = {
            let table = self.table();
            let node = table
                .get(ino)
                .ok_or_else(|| FsError::Stale(format!("inode {}", ino.0)))?;
            let staged = node.staging.clone();
            // Taken under the table lock, where `drop_staging` looks: a staging file is never
            // deleted between being found here and being used by this handle.
            if let Some(staging) = &staged {
                staging.acquire();
            }
            (node.stat.etag.clone(), staged)
        };
        let mut size = attr.size;
        if etag.is_none() && staged.is_none() {
            // After a multipart upload the version is unknown (servers differ in the ETag they
            // give it): ask, so that this handle reads one version only.
            (etag, size) = self.current_version(ino).await?;
        }
        if !(mode.write || mode.truncate) {
            let reader = match (&etag, &staged) {
                (Some(etag), None) => {
                    let key = file_key(&self.config.prefix, &self.path_of(ino)?);
                    let meta = ObjectMeta {
                        key,
                        size,
                        etag: etag.clone(),
                        last_modified: None,
                    };
                    Some(Arc::new(self.reads.open(&meta)))
                }
                _ => None,
            };
            return Ok(self.add_handle(Handle::File {
                ino,
                write: false,
                etag,
                size,
                reader,
            }));
        }
        // The staging file this handle writes to: found under the lock above (its handle count
        // taken there), or made here and inserted, with its count, under the lock below.
        match staged {
            Some(staging) => {
                if mode.truncate {
                    self.cancel_stream(&staging).await;
                    if let Err(e) = staging.set_len(0) {
                        staging.release();
                        return Err(e);
                    }
                }
            }
            None => {
                let staging = self.new_staging(ino)?;
                if mode.truncate {
                    staging.mark_dirty();
                    staging.allow_streaming();
                } else if let Err(e) = self.download(ino, &staging, etag.as_deref(), size).await {
                    // The object was replaced since its attributes were cached: a new open sees
                    // the new object, so ask S3 for its version once and download that.
                    let retried = if e.is_changed_object() {
                        match self.current_version(ino).await {
                            Ok(fresh) => {
                                (etag, size) = fresh;
                                staging.set_len(0)?;
                                self.download(ino, &staging, etag.as_deref(), size).await
                            }
                            Err(e) => Err(e),
                        }
                    } else {
                        Err(e)
                    };
                    if let Err(e) = retried {
                        staging.remove();
                        return Err(e);
                    }
                }
                let mut table = self.table();
                let node = table
                    .get_mut(ino)
                    .ok_or_else(|| FsError::Stale(format!("inode {}", ino.0)))?;
                // Another open may have staged the file while we downloaded: use that one.
                match &node.staging {
                    Some(existing) => {
                        staging.remove();
                        existing.acquire();
                    }
                    None => {
                        staging.acquire();
                        node.staging = Some(staging);
                    }
                }
            }
        }
        Ok(self.add_handle(Handle::File {
            ino,
            write: true,
            etag,
            size,
            reader: None,
        }))
    }

    /// Asks S3 for the object's current version (HEAD) and records it; returns its ETag and size.
    async fn current_version(&self, ino: Ino) -> FsResult<(Option<String>, u64)> {
        let path = self.path_of(ino)?;
        let key = file_key(&self.config.prefix, &path);
        let meta = self
            .store
            .head(&key)
            .await
            .map_err(FsError::store("open", &path))?;
        let meta = meta.ok_or_else(|| FsError::NotFound(path.clone()))?;
        let stat = stat_of(&meta);
        let version = (stat.etag.clone(), stat.size);
        if let Some(node) = self.table().get_mut(ino) {
            node.stat = stat;
            node.validated = Instant::now();
        }
        Ok(version)
    }

    /// Copies the object into a fresh staging file, one chunk at a time.
    async fn download(&self, ino: Ino, staging: &Staging, etag: Option<&str>, size: u64) -> FsResult<()> {
        let path = self.path_of(ino)?;
        let key = file_key(&self.config.prefix, &path);
        let mut offset = 0;
        while offset < size {
            let end = (offset + DOWNLOAD_CHUNK).min(size);
            let data = self
                .read_remote(&key, offset..end, etag)
                .await
                .map_err(FsError::store("read", &path))?;
            if data.is_empty() {
                return Err(FsError::Stale(format!("{path:?} shrank while being opened")));
            }
            staging.write_at(offset, &data)?;
            offset += data.len() as u64;
        }
        staging.take_dirty();
        Ok(())
    }

    /// Reads object bytes directly (downloads for writing, and reads of an unknown version).
    async fn read_remote(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
        etag: Option<&str>,
    ) -> crate::store::StoreResult<Bytes> {
        self.store.get_range(key, range, etag).await
    }

    /// Reads up to `len` bytes at `offset`. A handle keeps reading the object version it opened;
    /// when that object was replaced the read fails with ESTALE rather than mixing versions.
    pub async fn read(&self, fh: Fh, offset: u64, len: u32) -> FsResult<Bytes> {
        let (ino, etag, size, reader) = match self.handles().get(&fh) {
            Some(Handle::File {
                ino,
                etag,
                size,
                reader,
                ..
            }) => (*ino, etag.clone(), *size, reader.clone()),
            _ => return Err(FsError::BadHandle(fh.0)),
        };
        let staging = self.table().get(ino).and_then(|n| n.staging.clone());
        if let Some(staging) = staging {
            return Ok(Bytes::from(staging.read_at(offset, len as usize)?));
        }
        if let Some(reader) = reader {
            let path = || self.path_of(ino).unwrap_or_else(|_| format!("inode {}", ino.0));
            return reader
                .read(offset, len)
                .await
                .map_err(|e| FsError::store("read", &path())(e));
        }
        if offset >= size {
            return Ok(Bytes::new());
        }
        let path = self.path_of(ino)?;
        let key = file_key(&self.config.prefix, &path);
        let end = (offset + u64::from(len)).min(size);
        self.read_remote(&key, offset..end, etag.as_deref())
            .await
            .map_err(FsError::store("read", &path))
    }

    fn writable_staging(&self, fh: Fh) -> FsResult<(Ino, Arc<Staging>)> {
        let ino = match self.handles().get(&fh) {
            Some(Handle::File { ino, write: true, .. }) => *ino,
            Some(Handle::File { write: false, .. }) => return Err(FsError::NotWritable(fh.0)),
            _ => return Err(FsError::BadHandle(fh.0)),
        };
        let staging = self.table().get(ino).and_then(|n| n.staging.clone());
        staging
            .map(|s| (ino, s))
            .ok_or_else(|| FsError::Stale(format!("inode {} has no staging file", ino.0)))
    }

    /// Writes `data` at `offset` into the staging file.
    pub async fn write(&self, fh: Fh, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.ensure_writable()?;
        let (ino, staging) = self.writable_staging(fh)?;
        if staging.is_sequential() && offset != staging.size()? {
            self.cancel_stream(&staging).await;
        }
        staging.write_at(offset, data)?;
        if let Some(node) = self.table().get_mut(ino) {
            node.stat.mtime = SystemTime::now();
        }
        let part = self.config.part_size as u64;
        if staging.is_sequential() && staging.size()? >= staging.streamed() + part {
            self.stream_parts(ino, &staging).await;
        }
        Ok(data.len() as u32)
    }

    /// Uploads every complete part of a sequentially written file that is not uploaded yet. A
    /// failure only ends streaming: the data is staged and goes out whole at the next flush.
    async fn stream_parts(&self, ino: Ino, staging: &Staging) {
        let _serial = staging.upload_lock.lock().await;
        let Some(path) = self.table().get(ino).and_then(|n| n.path.clone()) else {
            return;
        };
        let key = file_key(&self.config.prefix, &path);
        let part = self.config.part_size as u64;
        let mut stream = match staging.take_stream() {
            Some(stream) => stream,
            None => match self.store.create_multipart(&key).await {
                Ok(upload_id) => Stream {
                    key: key.clone(),
                    upload_id,
                    parts: Vec::new(),
                    uploaded: 0,
                },
                Err(e) => {
                    warn!(key = %key, error = %e, "cannot start streaming upload; the file goes out at close");
                    staging.stop_streaming();
                    return;
                }
            },
        };
        loop {
            let size = match staging.size() {
                Ok(size) => size,
                Err(e) => {
                    warn!(error = %e, "staging file unreadable");
                    break;
                }
            };
            if !staging.is_sequential() || size < stream.uploaded + part {
                staging.put_stream(stream);
                return;
            }
            if stream.parts.len() as u64 + 1 >= MAX_PARTS {
                // Too large to stream in parts of this size: it goes out whole, in larger parts.
                break;
            }
            let body = match staging.read_at(stream.uploaded, part as usize) {
                Ok(body) => Bytes::from(body),
                Err(e) => {
                    warn!(error = %e, "staging file unreadable");
                    break;
                }
            };
            let number = stream.parts.len() as u32 + 1;
            let _sending = self.sending(body.len());
            match self
                .store
                .upload_part(&stream.key, &stream.upload_id, number, body)
                .await
            {
                Ok(done) => {
                    stream.parts.push(done);
                    stream.uploaded += part;
                }
                Err(e) => {
                    warn!(key = %key, error = %e, "streaming upload failed; the file goes out at close");
                    break;
                }
            }
        }
        staging.stop_streaming();
        self.abort_stream(stream).await;
    }

    /// Ends streaming of `staging` (a write that is not an append, a truncate, an unlink).
    async fn cancel_stream(&self, staging: &Staging) {
        let _serial = staging.upload_lock.lock().await;
        if let Some(stream) = staging.stop_streaming() {
            self.abort_stream(stream).await;
        }
    }

    async fn abort_stream(&self, stream: Stream) {
        if let Err(e) = self.store.abort_multipart(&stream.key, &stream.upload_id).await {
            warn!(key = %stream.key, error = %e, "cannot abort multipart upload");
        }
    }

    /// Sends the tail of a streamed file and completes its upload.
    async fn finish_stream(
        &self,
        key: &str,
        path: &str,
        staging: &Staging,
        mut stream: Stream,
    ) -> FsResult<ObjectMeta> {
        let size = staging.size()?;
        let result = async {
            if size > stream.uploaded || stream.parts.is_empty() {
                let tail = Bytes::from(staging.read_at(stream.uploaded, (size - stream.uploaded) as usize)?);
                let number = stream.parts.len() as u32 + 1;
                let _sending = self.sending(tail.len());
                let done = self
                    .store
                    .upload_part(&stream.key, &stream.upload_id, number, tail)
                    .await
                    .map_err(FsError::store("upload", path))?;
                stream.parts.push(done);
            }
            self.store
                .complete_multipart(key, &stream.upload_id, &stream.parts)
                .await
                .map_err(FsError::store("upload", path))
        }
        .await;
        if result.is_err() {
            self.abort_stream(stream).await;
        }
        result
    }

    /// Makes the file behind `fh` durable in S3 (flush and fsync); a no-op for clean files.
    pub async fn flush(&self, fh: Fh) -> FsResult<()> {
        let ino = match self.handles().get(&fh) {
            Some(Handle::File { ino, write: true, .. }) => *ino,
            Some(Handle::File { write: false, .. }) => return Ok(()),
            _ => return Err(FsError::BadHandle(fh.0)),
        };
        self.upload(ino).await
    }

    /// Closes a file handle: uploads pending data, and drops the staging file once the last
    /// handle is gone and the data is in S3. A failed upload keeps the staging file.
    pub async fn release(&self, fh: Fh) -> FsResult<()> {
        let handle = self.handles().remove(&fh);
        let Some(Handle::File { ino, write, .. }) = handle else {
            return Err(FsError::BadHandle(fh.0));
        };
        let staging = self.table().get(ino).and_then(|n| n.staging.clone());
        let Some(staging) = staging else { return Ok(()) };
        let result = if write { self.upload(ino).await } else { Ok(()) };
        let remaining = staging.release();
        if remaining == 0 && !staging.is_dirty() {
            self.drop_staging(ino, &staging);
        } else if staging.is_dirty() {
            warn!(staging = %staging.path().display(), "upload pending; staged data kept");
        }
        result
    }

    /// Forgets and deletes the staging file of `ino` once its data is in S3 and no handle uses it.
    fn drop_staging(&self, ino: Ino, staging: &Arc<Staging>) {
        let mut table = self.table();
        // Handles are taken under this lock (`open`): checked here, none can appear meanwhile.
        if staging.open_handles() > 0 || staging.is_dirty() {
            return;
        }
        if let Some(node) = table.get_mut(ino)
            && node.staging.as_ref().is_some_and(|s| Arc::ptr_eq(s, staging))
        {
            node.staging = None;
            node.validated = Instant::now();
        }
        staging.remove();
    }

    /// Tries again the uploads that failed at close: closed files whose staged data is not in S3
    /// yet. Run every few seconds by the sidecar (and once more at shutdown by
    /// [`Fs::flush_all`]), so a transient S3 outage does not leave acknowledged-as-failed data
    /// waiting for the pod to stop. Files still open are left to their own flush and close.
    /// Returns how many uploads succeeded and how many failed again.
    pub async fn retry_failed_uploads(&self) -> (usize, usize) {
        let closed_dirty: Vec<(Ino, Arc<Staging>)> = {
            let table = self.table();
            table
                .staged()
                .into_iter()
                .filter_map(|ino| {
                    let staging = table.get(ino)?.staging.clone()?;
                    // Only files whose upload failed: a staging that is merely dirty may belong
                    // to an open that has not taken its handle yet.
                    let retry = staging.upload_failed() && staging.is_dirty() && staging.open_handles() == 0;
                    retry.then_some((ino, staging))
                })
                .collect()
        };
        let (mut uploaded, mut failed) = (0, 0);
        for (ino, staging) in closed_dirty {
            match self.upload(ino).await {
                Ok(()) => {
                    uploaded += 1;
                    let path = self.table().get(ino).and_then(|n| n.path.clone());
                    info!(path = ?path.unwrap_or_default(), "upload that had failed at close succeeded on retry");
                    self.drop_staging(ino, &staging);
                }
                Err(e) => {
                    failed += 1;
                    warn!(error = %e, "upload retry failed; staged data kept, tried again later");
                }
            }
        }
        (uploaded, failed)
    }

    /// Uploads the staging file of `ino` when it is dirty.
    async fn upload(&self, ino: Ino) -> FsResult<()> {
        let staging = self.table().get(ino).and_then(|n| n.staging.clone());
        let Some(staging) = staging else { return Ok(()) };
        let _serial = staging.upload_lock.lock().await;
        let path = match self.table().get(ino).and_then(|n| n.path.clone()) {
            Some(path) => path,
            None => return Ok(()), // unlinked: nothing to upload to
        };
        if !staging.take_dirty() {
            return Ok(());
        }
        let key = file_key(&self.config.prefix, &path);
        let result = match staging.stop_streaming() {
            Some(stream) if stream.key == key => self
                .finish_stream(&key, &path, &staging, stream)
                .await
                .map(|meta| (meta, true)),
            Some(stream) => {
                self.abort_stream(stream).await; // renamed meanwhile: the old key is no use
                self.upload_file(&key, &path, &staging).await
            }
            None => self.upload_file(&key, &path, &staging).await,
        };
        match result {
            Ok((meta, multipart)) => {
                let mut table = self.table();
                if let Some(node) = table.get_mut(ino) {
                    node.stat = stat_of(&meta);
                    if multipart {
                        node.stat.etag = None; // learnt by HEAD at the next open
                    }
                    node.validated = Instant::now();
                }
                table.clear_missing(&path);
                staging.set_upload_failed(false);
                debug!(key = %key, size = meta.size, "uploaded");
                Ok(())
            }
            Err(e) => {
                staging.mark_dirty();
                staging.set_upload_failed(true);
                Err(e)
            }
        }
    }

    /// Uploads the staging file; says whether it went as a multipart upload.
    async fn upload_file(&self, key: &str, path: &str, staging: &Staging) -> FsResult<(ObjectMeta, bool)> {
        let size = staging.size()?;
        let part = self.config.part_size as u64;
        if size <= part {
            let body = Bytes::from(staging.read_at(0, size as usize)?);
            let _sending = self.sending(body.len());
            let meta = self
                .store
                .put(key, body)
                .await
                .map_err(FsError::store("upload", path))?;
            return Ok((meta, false));
        }
        let id = self
            .store
            .create_multipart(key)
            .await
            .map_err(FsError::store("upload", path))?;
        let result = self.upload_parts(key, path, &id, staging, size).await;
        if result.is_err()
            && let Err(e) = self.store.abort_multipart(key, &id).await
        {
            warn!(key = %key, error = %e, "cannot abort multipart upload");
        }
        result.map(|meta| (meta, true))
    }

    async fn upload_parts(
        &self,
        key: &str,
        path: &str,
        id: &str,
        staging: &Staging,
        size: u64,
    ) -> FsResult<ObjectMeta> {
        // S3 allows 10,000 parts: very large files get larger parts.
        let part = (self.config.part_size as u64).max(size.div_ceil(MAX_PARTS));
        let mut parts: Vec<CompletedPart> = Vec::new();
        let mut offset = 0;
        while offset < size {
            let body = Bytes::from(staging.read_at(offset, part.min(size - offset) as usize)?);
            let number = parts.len() as u32 + 1;
            let _sending = self.sending(body.len());
            let done = self
                .store
                .upload_part(key, id, number, body)
                .await
                .map_err(FsError::store("upload", path))?;
            parts.push(done);
            offset += part;
        }
        self.store
            .complete_multipart(key, id, &parts)
            .await
            .map_err(FsError::store("upload", path))
    }

    /// Creates and opens a new empty file (uploaded on flush or close).
    pub async fn create(&self, parent: Ino, name: &OsStr) -> FsResult<(Attr, Fh)> {
        self.ensure_writable()?;
        let name = check_new_name(name)?;
        let path = join(&self.dir_path(parent)?, name);
        check_key(&file_key(&self.config.prefix, &path))?;
        if let Some(ino) = self.table().at(&path)
            && self.table().get(ino).is_some_and(|n| n.kind == Kind::Dir)
        {
            return Err(FsError::IsADirectory(path));
        }
        let ino = {
            let mut table = self.table();
            let ino = table.upsert(&path, Kind::File, Stat::empty());
            if let Some(node) = table.get_mut(ino) {
                node.kernel_etag = None;
            }
            ino
        };
        let staging = self.new_staging(ino)?;
        staging.mark_dirty();
        staging.allow_streaming();
        staging.acquire();
        let replaced = {
            let mut table = self.table();
            let node = table.get_mut(ino).expect("just upserted");
            node.staging.replace(staging)
        };
        if let Some(old) = replaced {
            self.cancel_stream(&old).await;
            old.remove();
        }
        {
            let mut table = self.table();
            let node = table.get_mut(ino).expect("just upserted");
            node.stat = Stat::empty();
            node.lookups += 1;
        }
        let attr = self.attr_of(ino, Kind::File, &Stat::empty());
        let fh = self.add_handle(Handle::File {
            ino,
            write: true,
            etag: None,
            size: 0,
            reader: None,
        });
        Ok((attr, fh))
    }

    /// Removes a file.
    pub async fn unlink(&self, parent: Ino, name: &OsStr) -> FsResult<()> {
        self.ensure_writable()?;
        let name = check_name(name)?;
        let path = join(&self.dir_path(parent)?, name);
        let attr = self.lookup_uncounted(&path).await?;
        let key = match attr.kind {
            Kind::Dir => return Err(FsError::IsADirectory(path)),
            Kind::File => file_key(&self.config.prefix, &path),
            Kind::Symlink => link_key(&self.config.prefix, &path),
        };
        self.store
            .delete(&key)
            .await
            .map_err(FsError::store("delete", &path))?;
        let removed = {
            let mut table = self.table();
            let ino = table.at(&path);
            let staging = ino
                .and_then(|ino| table.get_mut(ino))
                .and_then(|node| node.staging.take());
            table.detach(&path);
            table.set_missing(&path);
            staging
        };
        if let Some(staging) = removed {
            self.cancel_stream(&staging).await;
            staging.remove();
        }
        Ok(())
    }

    /// What is at `path` now (from the table while fresh), without counting a kernel lookup.
    async fn lookup_uncounted(&self, path: &str) -> FsResult<Attr> {
        let known = self.table().at(path);
        if let Some(ino) = known
            && let Some(attr) = self.fresh_attr(ino)?
        {
            return Ok(attr);
        }
        self.refresh(path).await
    }

    /// Whether anything exists at `path`.
    async fn exists(&self, path: &str) -> FsResult<Option<Attr>> {
        match self.lookup_uncounted(path).await {
            Ok(attr) => Ok(Some(attr)),
            Err(FsError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes a directory: a marker object `dir/`.
    pub async fn mkdir(&self, parent: Ino, name: &OsStr) -> FsResult<Attr> {
        self.ensure_writable()?;
        let name = check_new_name(name)?;
        let path = join(&self.dir_path(parent)?, name);
        let marker = dir_key(&self.config.prefix, &path);
        check_key(&marker)?;
        if self.exists(&path).await?.is_some() {
            return Err(FsError::Exists(path));
        }
        let local = match self.markers.load(Ordering::Relaxed) {
            MARKERS_UNSUPPORTED => true,
            known => {
                self.store
                    .put(&marker, Bytes::new())
                    .await
                    .map_err(FsError::store("mkdir", &path))?;
                known == MARKERS_UNKNOWN && self.markers_flattened(&path).await?
            }
        };
        let mut table = self.table();
        let ino = table.upsert(&path, Kind::Dir, Stat::empty());
        table.add_lookup(ino);
        let node = table.get_mut(ino).expect("just upserted");
        node.local_dir = local;
        let stat = node.stat.clone();
        Ok(self.attr_of(ino, Kind::Dir, &stat))
    }

    /// After the first marker PUT: did the server store `dir/` as a file `dir` (rclone serve s3
    /// over a local directory does)? Then it is removed again, and from now on directories made
    /// here live only in this mount until a file is written below them.
    async fn markers_flattened(&self, path: &str) -> FsResult<bool> {
        let key = file_key(&self.config.prefix, path);
        let flattened = self
            .store
            .head(&key)
            .await
            .map_err(FsError::store("mkdir", path))?
            .is_some();
        if flattened {
            self.store
                .delete(&key)
                .await
                .map_err(FsError::store("mkdir", path))?;
            warn!(
                "the server stores directory markers as files: empty directories made here are kept \
                 only by this mount until a file is written below them"
            );
            self.markers.store(MARKERS_UNSUPPORTED, Ordering::Relaxed);
        } else {
            self.markers.store(MARKERS_SUPPORTED, Ordering::Relaxed);
        }
        Ok(flattened)
    }

    /// Removes an empty directory (its marker object).
    pub async fn rmdir(&self, parent: Ino, name: &OsStr) -> FsResult<()> {
        self.ensure_writable()?;
        let name = check_name(name)?;
        let path = join(&self.dir_path(parent)?, name);
        let attr = self.lookup_uncounted(&path).await?;
        if attr.kind != Kind::Dir {
            return Err(FsError::NotADirectory(path));
        }
        self.ensure_empty(&path).await?;
        let marker = dir_key(&self.config.prefix, &path);
        self.store
            .delete(&marker)
            .await
            .map_err(FsError::store("rmdir", &path))?;
        let mut table = self.table();
        table.detach(&path);
        table.set_missing(&path);
        Ok(())
    }

    async fn ensure_empty(&self, path: &str) -> FsResult<()> {
        let marker = dir_key(&self.config.prefix, path);
        let page = self
            .store
            .list_page(&marker, None, None, None, Some(2))
            .await
            .map_err(FsError::store("list", path))?;
        if page.objects.iter().any(|o| o.key != marker) || !self.table().local_children(path).is_empty() {
            return Err(FsError::NotEmpty(path.to_string()));
        }
        Ok(())
    }

    /// Renames a file (copy, then delete) or a directory (every key below it, one by one: not
    /// atomic, see SEMANTICS.md).
    pub async fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        self.ensure_writable()?;
        if flags & libc::RENAME_EXCHANGE != 0 {
            return Err(FsError::Unsupported("rename with RENAME_EXCHANGE"));
        }
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(FsError::InvalidArgument(format!("rename flags {flags:#x}")));
        }
        let from = join(&self.dir_path(parent)?, check_name(name)?);
        let to = join(&self.dir_path(new_parent)?, check_new_name(new_name)?);
        check_key(&dir_key(&self.config.prefix, &to))?;
        let src = self.lookup_uncounted(&from).await?;
        if from == to {
            return Ok(());
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(FsError::InvalidArgument(format!(
                "cannot move {from:?} into itself"
            )));
        }
        let dst = self.exists(&to).await?;
        if dst.is_some() && flags & libc::RENAME_NOREPLACE != 0 {
            return Err(FsError::Exists(to));
        }
        let dst_kind = dst.as_ref().map(|d| d.kind);
        match (src.kind, dst_kind) {
            (Kind::File | Kind::Symlink, Some(Kind::Dir)) => return Err(FsError::IsADirectory(to)),
            (Kind::Dir, Some(Kind::File | Kind::Symlink)) => return Err(FsError::NotADirectory(to)),
            (Kind::Dir, Some(Kind::Dir)) => self.ensure_empty(&to).await?,
            _ => {}
        }
        match src.kind {
            Kind::File => self.rename_file(src.ino, &from, &to).await?,
            Kind::Symlink => self.rename_link(&from, &to).await?,
            Kind::Dir => self.rename_dir(&from, &to).await?,
        }
        // A file replaced by a link (or a link by a file) is stored under the other key: remove it.
        let replaced = match (src.kind, dst_kind) {
            (Kind::File, Some(Kind::Symlink)) => Some(link_key(&self.config.prefix, &to)),
            (Kind::Symlink, Some(Kind::File)) => Some(file_key(&self.config.prefix, &to)),
            _ => None,
        };
        if let Some(key) = replaced {
            self.store
                .delete(&key)
                .await
                .map_err(FsError::store("rename", &to))?;
        }
        self.table().rename(&from, &to);
        Ok(())
    }

    async fn rename_file(&self, ino: Ino, from: &str, to: &str) -> FsResult<()> {
        // Staged data goes out first (a new file too), so the object at `from` is current.
        self.upload(ino).await?;
        let size = {
            let staging = self.table().get(ino).and_then(|n| n.staging.clone());
            match staging {
                Some(staging) => staging.size()?,
                None => self.table().get(ino).map_or(0, |n| n.stat.size),
            }
        };
        let src_key = file_key(&self.config.prefix, from);
        let dst_key = file_key(&self.config.prefix, to);
        let meta = self
            .store
            .copy(&src_key, &dst_key, size)
            .await
            .map_err(FsError::store("rename", from))?;
        self.store
            .delete(&src_key)
            .await
            .map_err(FsError::store("rename", from))?;
        if let Some(node) = self.table().get_mut(ino) {
            node.stat = stat_of(&meta);
        }
        Ok(())
    }

    async fn rename_link(&self, from: &str, to: &str) -> FsResult<()> {
        let (src, dst) = (
            link_key(&self.config.prefix, from),
            link_key(&self.config.prefix, to),
        );
        check_key(&dst)?;
        self.store
            .copy(&src, &dst, 0)
            .await
            .map_err(FsError::store("rename", from))?;
        self.store
            .delete(&src)
            .await
            .map_err(FsError::store("rename", from))
    }

    /// Makes a symbolic link `name` in `parent` pointing at `target` (stored as `name.rclonelink`).
    pub async fn symlink(&self, parent: Ino, name: &OsStr, target: &std::path::Path) -> FsResult<Attr> {
        self.ensure_writable()?;
        let name = check_new_name(name)?;
        let path = join(&self.dir_path(parent)?, name);
        let key = link_key(&self.config.prefix, &path);
        check_key(&key)?;
        let Some(target) = target.to_str() else {
            return Err(FsError::InvalidName(format!(
                "link target {target:?} is not UTF-8"
            )));
        };
        if target.is_empty() || target.len() > libc::PATH_MAX as usize {
            return Err(FsError::InvalidArgument(format!(
                "link target of {} bytes",
                target.len()
            )));
        }
        if self.exists(&path).await?.is_some() {
            return Err(FsError::Exists(path));
        }
        let meta = self
            .store
            .put(&key, Bytes::copy_from_slice(target.as_bytes()))
            .await
            .map_err(FsError::store("symlink", &path))?;
        let mut table = self.table();
        let ino = table.upsert(&path, Kind::Symlink, stat_of(&meta));
        table.add_lookup(ino);
        let stat = table.get(ino).expect("just upserted").stat.clone();
        Ok(self.attr_of(ino, Kind::Symlink, &stat))
    }

    /// The target of the symbolic link `ino`.
    pub async fn readlink(&self, ino: Ino) -> FsResult<Bytes> {
        let attr = self.getattr(ino).await?;
        let path = self.path_of(ino)?;
        if attr.kind != Kind::Symlink {
            return Err(FsError::InvalidArgument(format!(
                "{path:?} is not a symbolic link"
            )));
        }
        if attr.size == 0 {
            return Ok(Bytes::new());
        }
        let key = link_key(&self.config.prefix, &path);
        self.read_remote(&key, 0..attr.size, None)
            .await
            .map_err(FsError::store("readlink", &path))
    }

    async fn rename_dir(&self, from: &str, to: &str) -> FsResult<()> {
        // Pending uploads below the directory go out first, so that the copy sees them.
        let dirty: Vec<Ino> = {
            let table = self.table();
            let below = format!("{from}/");
            table
                .staged()
                .into_iter()
                .filter(|i| {
                    table
                        .get(*i)
                        .and_then(|n| n.path.as_deref())
                        .is_some_and(|p| p.starts_with(&below))
                })
                .collect()
        };
        for ino in dirty {
            self.upload(ino).await?;
        }
        let src = dir_key(&self.config.prefix, from);
        let dst = dir_key(&self.config.prefix, to);
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .store
                .list_page(&src, None, token.as_deref(), None, None)
                .await
                .map_err(FsError::store("rename", from))?;
            keys.extend(page.objects.into_iter().map(|o| (o.key, o.size)));
            match page.next_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        for (key, _) in &keys {
            check_key(&format!("{dst}{}", &key[src.len()..]))?;
        }
        for (key, size) in &keys {
            let target = format!("{dst}{}", &key[src.len()..]);
            self.store
                .copy(key, &target, *size)
                .await
                .map_err(FsError::store("rename", from))?;
        }
        for (key, _) in &keys {
            self.store
                .delete(key)
                .await
                .map_err(FsError::store("rename", from))?;
        }
        Ok(())
    }

    /// Changes attributes: size through the staging file, mtime in the table only; mode, uid and
    /// gid are fixed by the mount options and can only be "changed" to what they already are.
    pub async fn setattr(&self, ino: Ino, changes: SetAttr) -> FsResult<Attr> {
        let attr = self.getattr(ino).await?;
        if let Some(mode) = changes.mode
            && (mode & 0o7777) as u16 != attr.perm
        {
            return Err(FsError::Unsupported(
                "chmod (permissions are fixed by --file-mode/--dir-mode)",
            ));
        }
        if changes.uid.is_some_and(|u| u != attr.uid) || changes.gid.is_some_and(|g| g != attr.gid) {
            return Err(FsError::Unsupported("chown (owners are fixed by --uid/--gid)"));
        }
        if let Some(size) = changes.size {
            self.ensure_writable()?;
            if attr.kind == Kind::Dir {
                return Err(FsError::IsADirectory(self.path_of(ino)?));
            }
            self.truncate(ino, size).await?;
        }
        if let Some(mtime) = changes.mtime
            && let Some(node) = self.table().get_mut(ino)
        {
            node.stat.mtime = mtime;
        }
        match self.fresh_attr(ino)? {
            Some(attr) => Ok(attr),
            None => self.getattr(ino).await,
        }
    }

    async fn truncate(&self, ino: Ino, size: u64) -> FsResult<()> {
        let staged = self.table().get(ino).and_then(|n| n.staging.clone());
        if let Some(staging) = staged {
            // An open file: the size changes locally and goes out with the next flush or close.
            self.cancel_stream(&staging).await;
            return staging.set_len(size);
        }
        // A closed file: stage it, change the size and upload at once.
        let fh = self
            .open(
                ino,
                OpenMode {
                    write: true,
                    truncate: size == 0,
                },
            )
            .await?;
        let (_, staging) = self.writable_staging(fh)?;
        let result = match staging.set_len(size) {
            Ok(()) => self.flush(fh).await,
            Err(e) => Err(e),
        };
        let released = self.release(fh).await;
        result.and(released)
    }

    /// Uploads every pending staging file, waiting for uploads under way (shutdown); returns how
    /// many failed.
    pub async fn flush_all(&self) -> usize {
        let dirty = self.table().staged();
        let mut failed = 0;
        for ino in dirty {
            if let Err(e) = self.upload(ino).await {
                warn!(error = %e, "pending upload failed at shutdown; staged data kept");
                failed += 1;
            }
        }
        failed
    }

    /// Paths whose data is not known to be in S3: staged and written since the last upload, or
    /// with an upload under way. Added for issue 6 (tests/tests/reliability_shutdown.rs): when the
    /// grace period ends first, the shutdown log names each of them.
    pub fn pending_uploads(&self) -> Vec<String> {
        let table = self.table();
        let mut paths: Vec<String> = table
            .staged()
            .into_iter()
            .filter_map(|ino| {
                let node = table.get(ino)?;
                let staging = node.staging.as_ref()?;
                let pending = staging.is_dirty() || staging.upload_lock.try_lock().is_err();
                if pending { node.path.clone() } else { None }
            })
            .collect();
        paths.sort();
        paths
    }

    /// Body bytes of uploads being sent right now.
    pub fn upload_bytes_in_flight(&self) -> u64 {
        self.sending.load(Ordering::Relaxed)
    }

    fn sending(&self, bytes: usize) -> Sending<'_> {
        self.sending.fetch_add(bytes as u64, Ordering::Relaxed);
        Sending(&self.sending, bytes as u64)
    }

    /// Bytes staged and not yet in S3: the size of every staging file written since its last
    /// upload (or being uploaded), less what a streaming upload has already sent.
    pub fn dirty_bytes(&self) -> u64 {
        let stagings: Vec<Arc<Staging>> = {
            let table = self.table();
            table
                .staged()
                .into_iter()
                .filter_map(|ino| table.get(ino)?.staging.clone())
                .collect()
        };
        stagings
            .iter()
            .filter(|s| s.is_dirty() || s.upload_lock.try_lock().is_err())
            .map(|s| s.size().unwrap_or(0).saturating_sub(s.streamed()))
            .sum()
    }

    /// The block cache reads go through, if any.
    pub fn cache(&self) -> Option<&Arc<BlockCache>> {
        self.reads.cache()
    }

    /// Figures for statfs: S3 has no bound, so "very large" and "mostly free".
    pub fn statfs(&self) -> StatFs {
        StatFs {
            blocks: u64::MAX / 2 / u64::from(BLOCK_SIZE),
            bfree: u64::MAX / 4 / u64::from(BLOCK_SIZE),
            files: u64::MAX / 2,
            ffree: u64::MAX / 4,
            bsize: BLOCK_SIZE,
            namelen: names::MAX_NAME_LEN as u32,
        }
    }
}

fn stat_of(meta: &ObjectMeta) -> Stat {
    Stat {
        size: meta.size,
        mtime: meta.last_modified.unwrap_or_else(SystemTime::now),
        etag: Some(quoted_etag(&meta.etag)),
    }
}

/// Some servers (rclone) send listing ETags without the quotes their GET answers carry; the
/// quoted form is what `If-Match` compares against.
fn quoted_etag(etag: &str) -> String {
    if etag.starts_with('"') || etag.starts_with("W/") {
        etag.to_string()
    } else {
        format!("\"{etag}\"")
    }
}
