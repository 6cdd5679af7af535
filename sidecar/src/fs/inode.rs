//! The inode table: which inode number stands for which path, and what is known about it.
//!
//! Invariants:
//! - An inode number is never reused. A path maps to at most one live inode; when the object at a
//!   path changes kind (file <-> directory), or is removed or renamed over, the old inode is
//!   *detached* (it keeps its number for the kernel but has no path, and every operation on it
//!   answers ESTALE or ENOENT) and a new inode is made for the path.
//! - What a node knows (size, mtime, ETag) came from one listing, HEAD or upload at `validated`;
//!   it is trusted for the metadata TTL, except that a node with a staging file is always
//!   current (the local file is the truth until it is uploaded).
//! - The negative cache remembers paths found missing; an entry is ignored as soon as a live
//!   node exists at or below it, so it never hides a directory this mount knows about.
//! - A *complete listing* of a directory (every page, or one page that was not truncated) is
//!   remembered with the time it was asked: within the TTL a name it lacks is missing, without a
//!   request. Every path this table learns (a lookup, a create, a rename target) adds its name to
//!   its parent's listing, so the mount's own changes keep it true. A listing is recorded only
//!   when no node was forgotten while it was in flight (a name created here, uploaded and
//!   forgotten meanwhile could otherwise be missing from both the answer and the table).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::fs::staging::Staging;

/// An inode number as the kernel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

impl Ino {
    /// The root directory.
    pub const ROOT: Ino = Ino(1);
}

/// A file handle as the kernel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fh(pub u64);

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A regular file: one object.
    File,
    /// A directory: a key prefix, with or without a marker object.
    Dir,
    /// A symbolic link: the object `name.rclonelink` holding the target (see [`crate::fs::names`]).
    Symlink,
}

/// What a listing, HEAD or upload said about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Last-Modified, or the time it was seen.
    pub mtime: SystemTime,
    /// The object's ETag; `None` for directories and files not uploaded yet.
    pub etag: Option<String>,
}

impl Stat {
    /// The stat of a directory or of a file with nothing uploaded.
    pub fn empty() -> Stat {
        Stat {
            size: 0,
            mtime: SystemTime::now(),
            etag: None,
        }
    }
}

/// One inode.
#[derive(Debug)]
pub struct Node {
    /// Path inside the mount; `None` once detached.
    pub path: Option<String>,
    /// File or directory.
    pub kind: Kind,
    /// Last known attributes.
    pub stat: Stat,
    /// When `stat` was last confirmed by S3.
    pub validated: Instant,
    /// The kernel's lookup count.
    pub lookups: u64,
    /// The local copy, while the file is open for writing or its upload is pending.
    pub staging: Option<Arc<Staging>>,
    /// A directory made here on a server that cannot store directory markers: it exists only in
    /// this table until a file is written below it.
    pub local_dir: bool,
    /// The object version (ETag) whose bytes the kernel's page cache may hold for this inode:
    /// set by a read-only open, cleared by an open for writing. See [`crate::fs::Fs::keep_page_cache`].
    pub kernel_etag: Option<String>,
}

impl Node {
    /// Whether this mount holds the truth about the node (staged data or a local directory).
    pub fn is_local(&self) -> bool {
        self.staging.is_some() || self.local_dir
    }
}

/// Every inode the kernel may refer to.
#[derive(Debug)]
pub struct InodeTable {
    nodes: HashMap<Ino, Node>,
    /// Sorted, so that everything below a path is one range.
    by_path: BTreeMap<String, Ino>,
    negative: HashMap<String, Instant>,
    listings: HashMap<String, Listing>,
    /// Directories whose first listing page was truncated, with when that was seen.
    large: HashMap<String, Instant>,
    /// Counts nodes dropped by `forget`, so that a listing knows whether one went meanwhile.
    forgotten: u64,
    next: u64,
}

/// The names of a directory from a complete listing, kept current with this mount's changes.
#[derive(Debug)]
struct Listing {
    asked: Instant,
    names: HashSet<String>,
}

/// How long a directory is remembered as too large for a one-page listing on lookup.
const LARGE_DIR_MEMORY: Duration = Duration::from_secs(300);

impl Default for InodeTable {
    fn default() -> Self {
        Self::new()
    }
}

impl InodeTable {
    /// A table holding only the root.
    pub fn new() -> InodeTable {
        let root = Node {
            path: Some(String::new()),
            kind: Kind::Dir,
            stat: Stat::empty(),
            validated: Instant::now(),
            lookups: 1,
            staging: None,
            local_dir: false,
            kernel_etag: None,
        };
        InodeTable {
            nodes: HashMap::from([(Ino::ROOT, root)]),
            by_path: BTreeMap::from([(String::new(), Ino::ROOT)]),
            negative: HashMap::new(),
            listings: HashMap::new(),
            large: HashMap::new(),
            forgotten: 0,
            next: Ino::ROOT.0 + 1,
        }
    }

    /// The node of `ino`.
    pub fn get(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    /// The node of `ino`, mutably.
    pub fn get_mut(&mut self, ino: Ino) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    /// The live inode at `path`.
    pub fn at(&self, path: &str) -> Option<Ino> {
        self.by_path.get(path).copied()
    }

    /// Records what S3 said about `path` and returns its inode: the existing one when the kind
    /// matches (its stat is kept when a staging file holds newer data), else a new one.
    pub fn upsert(&mut self, path: &str, kind: Kind, stat: Stat) -> Ino {
        self.negative.remove(path);
        self.note_name(path);
        if let Some(ino) = self.at(path) {
            let node = self.nodes.get_mut(&ino).expect("by_path points at a node");
            if node.kind == kind {
                if node.staging.is_none() {
                    node.stat = stat;
                }
                node.validated = Instant::now();
                return ino;
            }
            self.detach(path);
        }
        let ino = Ino(self.next);
        self.next += 1;
        let node = Node {
            path: Some(path.to_string()),
            kind,
            stat,
            validated: Instant::now(),
            lookups: 0,
            staging: None,
            local_dir: false,
            kernel_etag: None,
        };
        self.nodes.insert(ino, node);
        self.by_path.insert(path.to_string(), ino);
        ino
    }

    /// Detaches the inode at `path`, if any, and returns it.
    pub fn detach(&mut self, path: &str) -> Option<Ino> {
        self.drop_name(path);
        let ino = self.by_path.remove(path)?;
        let node = self.nodes.get_mut(&ino).expect("by_path points at a node");
        node.path = None;
        let forgotten = node.lookups == 0;
        if forgotten && ino != Ino::ROOT {
            self.nodes.remove(&ino);
        }
        Some(ino)
    }

    /// Moves `from` and every path below it to `to`, detaching whatever was at the new paths.
    pub fn rename(&mut self, from: &str, to: &str) {
        let below = format!("{from}/");
        let moved: Vec<(String, Ino)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.as_str() == from || p.starts_with(&below))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        let to_below = format!("{to}/");
        let replaced: Vec<String> = self
            .by_path
            .keys()
            .filter(|p| p.as_str() == to || p.starts_with(&to_below))
            .cloned()
            .collect();
        for path in replaced {
            self.detach(&path);
        }
        for (path, _) in &moved {
            self.by_path.remove(path);
        }
        // Listings of the moved trees no longer hold; the parents' listings gain and lose a name.
        self.listings.retain(|dir, _| {
            !(dir == from || dir.starts_with(&below) || dir == to || dir.starts_with(&to_below))
        });
        self.drop_name(from);
        self.note_name(to);
        for (path, ino) in moved {
            let new_path = format!("{to}{}", &path[from.len()..]);
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.path = Some(new_path.clone());
            }
            self.by_path.insert(new_path, ino);
        }
        self.negative.remove(to);
        self.negative.insert(from.to_string(), Instant::now());
    }

    /// The kernel looked `ino` up once more.
    pub fn add_lookup(&mut self, ino: Ino) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups += 1;
        }
    }

    /// The kernel forgot `n` lookups of `ino`; a node the kernel no longer refers to and that
    /// holds no staged data is dropped (a later lookup makes a new one).
    pub fn forget(&mut self, ino: Ino, n: u64) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 && !node.is_local() && ino != Ino::ROOT {
            if let Some(path) = node.path.take() {
                self.by_path.remove(&path);
                self.forgotten += 1;
            }
            self.nodes.remove(&ino);
        }
    }

    /// A mark to pass to [`InodeTable::record_listing`], taken before the listing is asked.
    pub fn listing_mark(&self) -> u64 {
        self.forgotten
    }

    /// Records that a listing of `dir` asked at `asked` (with `mark` from
    /// [`InodeTable::listing_mark`]) was complete and held `names`. Live nodes in `dir` count as
    /// listed too (they may have been made while the listing was in flight). Not recorded when a
    /// node was forgotten meanwhile; listings older than `ttl` are pruned.
    pub fn record_listing(
        &mut self,
        dir: &str,
        asked: Instant,
        mark: u64,
        names: HashSet<String>,
        ttl: Duration,
    ) {
        self.listings.retain(|_, l| l.asked.elapsed() < ttl);
        self.large.remove(dir);
        if mark != self.forgotten || asked.elapsed() >= ttl {
            return;
        }
        let mut names = names;
        let below = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        for path in self.by_path.range(below.clone()..).map(|(p, _)| p) {
            if !path.starts_with(&below) {
                break;
            }
            let rest = &path[below.len()..];
            if !rest.is_empty() && !rest.contains('/') {
                names.insert(rest.to_string());
            }
        }
        self.listings.insert(dir.to_string(), Listing { asked, names });
    }

    /// Whether a complete listing of `dir` younger than `ttl` is known.
    pub fn has_listing(&self, dir: &str, ttl: Duration) -> bool {
        self.listings.get(dir).is_some_and(|l| l.asked.elapsed() < ttl)
    }

    /// Whether a complete listing of `dir` younger than `ttl` lacks `name`.
    pub fn listing_lacks(&self, dir: &str, name: &str, ttl: Duration) -> bool {
        self.listings
            .get(dir)
            .is_some_and(|l| l.asked.elapsed() < ttl && !l.names.contains(name))
    }

    /// Remembers that one page did not hold all of `dir`.
    pub fn set_large(&mut self, dir: &str) {
        self.large.retain(|_, at| at.elapsed() < LARGE_DIR_MEMORY);
        self.large.insert(dir.to_string(), Instant::now());
    }

    /// Whether `dir` was seen recently to need more than one listing page.
    pub fn is_large(&self, dir: &str) -> bool {
        self.large
            .get(dir)
            .is_some_and(|at| at.elapsed() < LARGE_DIR_MEMORY)
    }

    fn note_name(&mut self, path: &str) {
        if path.is_empty() {
            return;
        }
        let (dir, name) = crate::fs::names::split(path);
        if let Some(listing) = self.listings.get_mut(dir)
            && !listing.names.contains(name)
        {
            listing.names.insert(name.to_string());
        }
    }

    fn drop_name(&mut self, path: &str) {
        if path.is_empty() {
            return;
        }
        let (dir, name) = crate::fs::names::split(path);
        if let Some(listing) = self.listings.get_mut(dir) {
            listing.names.remove(name);
        }
    }

    /// Remembers that `path` does not exist.
    pub fn set_missing(&mut self, path: &str) {
        self.negative.insert(path.to_string(), Instant::now());
    }

    /// Forgets that `path` was missing.
    pub fn clear_missing(&mut self, path: &str) {
        self.negative.remove(path);
    }

    /// Whether `path` is known missing within `ttl`; never while a live node is at or below it.
    pub fn is_missing(&self, path: &str, ttl: Duration) -> bool {
        let Some(at) = self.negative.get(path) else {
            return false;
        };
        if at.elapsed() >= ttl {
            return false;
        }
        let below = format!("{path}/");
        !self.by_path.contains_key(path)
            && !self
                .by_path
                .range(below.clone()..)
                .next()
                .is_some_and(|(p, _)| p.starts_with(&below))
    }

    /// Live nodes directly inside the directory at `dir` that exist only here (files whose upload
    /// is pending, local directories), as (name, inode, kind).
    pub fn local_children(&self, dir: &str) -> Vec<(String, Ino, Kind)> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.is_local())
            .filter_map(|(ino, n)| {
                let path = n.path.as_deref()?;
                let (parent, name) = crate::fs::names::split(path);
                (parent == dir && !path.is_empty()).then(|| (name.to_string(), *ino, n.kind))
            })
            .collect()
    }

    /// Every live node with a staging file: its data may still need uploading (it is dirty, or an
    /// upload of it is under way and may fail).
    pub fn staged(&self) -> Vec<Ino> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.path.is_some() && n.staging.is_some())
            .map(|(ino, _)| *ino)
            .collect()
    }
}
