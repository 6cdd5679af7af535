//! The FUSE adapter: turns each kernel request into a call on the [`Fs`] core.
//!
//! It is thin on purpose. Every callback converts its arguments, spawns a tokio task that awaits
//! the core and sends the reply from there, so that many requests are in flight at once while the
//! fuser session thread goes on reading the next one. Errors are logged here, once, at the level
//! [`FsError::level`] gives, with the errno [`FsError::errno`] chose (failed S3 requests are
//! logged by the S3 client instead, so they are only traced here).

use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;
use tracing::{Instrument, Level, Span};

use crate::fs::error::{FsError, FsResult};
use crate::fs::inode::{Fh, Ino, Kind};
use crate::fs::{Attr, Fs, OpenMode, SetAttr};
use crate::health::Health;
use crate::store::ObjectStore;

/// Largest read and write the kernel sends.
pub const MAX_IO_SIZE: u32 = 1024 * 1024;
/// The kernel read-ahead of the mount, in KiB (see [`crate::mountsys::set_read_ahead`]): random
/// reads up to this size reach the filesystem as one request.
pub const KERNEL_READ_AHEAD_KIB: u32 = 256;
/// Name of the filesystem type shown in `/proc/mounts` (`fuse.s3mount`).
pub const FS_SUBTYPE: &str = "s3mount";

/// The fuser filesystem over a core.
#[derive(Debug)]
pub struct FuseAdapter<S> {
    fs: Arc<Fs<S>>,
    runtime: Handle,
    health: Arc<Health>,
}

impl<S: ObjectStore> FuseAdapter<S> {
    /// An adapter running the core's futures on `runtime` and counting requests in `health`.
    pub fn new(fs: Arc<Fs<S>>, runtime: Handle, health: Arc<Health>) -> Self {
        FuseAdapter { fs, runtime, health }
    }

    /// Runs `op` on the runtime, inside `span`, and hands its result to `reply`.
    fn spawn<T, F, Fut>(
        &self,
        name: &'static str,
        span: Span,
        op: F,
        reply: impl FnOnce(FsResult<T>) + Send + 'static,
    ) where
        T: Send + 'static,
        F: FnOnce(Arc<Fs<S>>) -> Fut,
        Fut: Future<Output = FsResult<T>> + Send + 'static,
    {
        let future = op(self.fs.clone());
        let health = self.health.clone();
        self.runtime.spawn(
            async move {
                let result = future.await;
                if let Err(e) = &result {
                    log_error(e);
                }
                health.record(name, result.as_ref().err().map(FsError::errno));
                reply(result);
            }
            .instrument(span),
        );
    }

    fn ttl(&self) -> Duration {
        self.fs.config().metadata_ttl
    }
}

/// Logs an error once. A failed S3 request was already logged by the S3 client, at the level it
/// deserves, with the request's details; here it is only traced at debug with its errno.
fn log_error(e: &FsError) {
    let errno = e.errno();
    let level = if matches!(e, FsError::Store { .. }) {
        Level::DEBUG
    } else {
        e.level()
    };
    match level {
        Level::ERROR => tracing::error!(errno, error = %e, "operation failed"),
        Level::WARN => tracing::warn!(errno, error = %e, "operation failed"),
        Level::INFO => tracing::info!(errno, error = %e, "operation refused"),
        Level::DEBUG => tracing::debug!(errno, error = %e, "operation failed"),
        Level::TRACE => tracing::trace!(errno, error = %e, "operation failed"),
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

/// The kernel's view of an inode's attributes.
pub fn file_attr(attr: &Attr) -> FileAttr {
    let (kind, nlink) = match attr.kind {
        Kind::File => (FileType::RegularFile, 1),
        Kind::Dir => (FileType::Directory, 2),
        Kind::Symlink => (FileType::Symlink, 1),
    };
    FileAttr {
        ino: INodeNo(attr.ino.0),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.mtime,
        crtime: attr.mtime,
        kind,
        perm: attr.perm,
        nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: crate::fs::BLOCK_SIZE,
        flags: 0,
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

fn time_of(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl<S: ObjectStore> Filesystem for FuseAdapter<S> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_IO_SIZE) {
            tracing::info!(max, "kernel caps max_write");
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_IO_SIZE) {
            let _ = config.set_max_readahead(max);
        }
        // Listings carry every entry's attributes, so `ls -l` needs no lookup per entry.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS) {
            tracing::info!(?missing, "kernel has no readdirplus; lookups follow readdir");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_owned();
        let ttl = self.ttl();
        let span = tracing::debug_span!("lookup", parent = parent.0, name = ?name);
        self.spawn(
            "lookup",
            span,
            move |fs| async move { fs.lookup(Ino(parent.0), &name).await },
            move |r| match r {
                Ok(attr) => reply.entry(&ttl, &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(Ino(ino.0), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ttl = self.ttl();
        let span = tracing::debug_span!("getattr", ino = ino.0);
        self.spawn(
            "getattr",
            span,
            move |fs| async move { fs.getattr(Ino(ino.0)).await },
            move |r| match r {
                Ok(attr) => reply.attr(&ttl, &file_attr(&attr)),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let ttl = self.ttl();
        let changes = SetAttr {
            mode,
            uid,
            gid,
            size,
            mtime: mtime.map(time_of),
        };
        let span = tracing::debug_span!("setattr", ino = ino.0, ?size, ?mode);
        self.spawn(
            "setattr",
            span,
            move |fs| async move { fs.setattr(Ino(ino.0), changes).await },
            move |r| match r {
                Ok(attr) => reply.attr(&ttl, &file_attr(&attr)),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let span = tracing::debug_span!("readlink", ino = ino.0);
        self.spawn(
            "readlink",
            span,
            move |fs| async move { fs.readlink(Ino(ino.0)).await },
            move |r| match r {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        log_error(&FsError::Unsupported("mknod (device files, FIFOs, sockets)"));
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let name = name.to_owned();
        let ttl = self.ttl();
        let span = tracing::debug_span!("mkdir", parent = parent.0, name = ?name);
        self.spawn(
            "mkdir",
            span,
            move |fs| async move { fs.mkdir(Ino(parent.0), &name).await },
            move |r| match r {
                Ok(attr) => reply.entry(&ttl, &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        let span = tracing::debug_span!("unlink", parent = parent.0, name = ?name);
        self.spawn(
            "unlink",
            span,
            move |fs| async move { fs.unlink(Ino(parent.0), &name).await },
            empty(reply),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        let span = tracing::debug_span!("rmdir", parent = parent.0, name = ?name);
        self.spawn(
            "rmdir",
            span,
            move |fs| async move { fs.rmdir(Ino(parent.0), &name).await },
            empty(reply),
        );
    }

    fn symlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, target: &Path, reply: ReplyEntry) {
        let (name, target) = (name.to_owned(), target.to_owned());
        let ttl = self.ttl();
        let span = tracing::debug_span!("symlink", parent = parent.0, name = ?name);
        self.spawn(
            "symlink",
            span,
            move |fs| async move { fs.symlink(Ino(parent.0), &name, &target).await },
            move |r| match r {
                Ok(attr) => reply.entry(&ttl, &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = (name.to_owned(), newname.to_owned());
        let span = tracing::debug_span!("rename", parent = parent.0, name = ?name, newparent = newparent.0,
            newname = ?newname);
        self.spawn(
            "rename",
            span,
            move |fs| async move {
                fs.rename(Ino(parent.0), &name, Ino(newparent.0), &newname, flags.bits())
                    .await
            },
            empty(reply),
        );
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        log_error(&FsError::Unsupported("hard links"));
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mode = OpenMode::from_flags(flags.0);
        let span = tracing::debug_span!("open", ino = ino.0, write = mode.write, truncate = mode.truncate);
        self.spawn(
            "open",
            span,
            move |fs| async move {
                let fh = fs.open(Ino(ino.0), mode).await?;
                Ok((fh, fs.keep_page_cache(fh)))
            },
            move |r| match r {
                Ok((fh, true)) => reply.opened(FileHandle(fh.0), FopenFlags::FOPEN_KEEP_CACHE),
                Ok((fh, false)) => reply.opened(FileHandle(fh.0), FopenFlags::empty()),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let span = tracing::debug_span!("read", ino = ino.0, fh = fh.0, offset, size);
        self.spawn(
            "read",
            span,
            move |fs| async move { fs.read(Fh(fh.0), offset, size).await },
            move |r| match r {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        let span = tracing::debug_span!("write", ino = ino.0, fh = fh.0, offset, size = data.len());
        self.spawn(
            "write",
            span,
            move |fs| async move { fs.write(Fh(fh.0), offset, &data).await },
            move |r| match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        let span = tracing::debug_span!("flush", ino = ino.0, fh = fh.0);
        self.spawn(
            "flush",
            span,
            move |fs| async move { fs.flush(Fh(fh.0)).await },
            empty(reply),
        );
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let span = tracing::debug_span!("release", ino = ino.0, fh = fh.0);
        self.spawn(
            "release",
            span,
            move |fs| async move { fs.release(Fh(fh.0)).await },
            empty(reply),
        );
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let span = tracing::debug_span!("fsync", ino = ino.0, fh = fh.0);
        self.spawn(
            "fsync",
            span,
            move |fs| async move { fs.flush(Fh(fh.0)).await },
            empty(reply),
        );
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(Ino(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh.0), FopenFlags::empty()),
            Err(e) => {
                log_error(&e);
                reply.error(errno(&e));
            }
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let span = tracing::debug_span!("readdir", ino = ino.0, fh = fh.0, offset);
        self.spawn(
            "readdir",
            span,
            move |fs| async move { fs.readdir(Fh(fh.0), offset).await },
            move |r| match r {
                Ok(entries) => {
                    for (next, entry) in entries {
                        if reply.add(INodeNo(entry.ino.0), next, file_type(entry.kind), &entry.name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.ttl();
        let span = tracing::debug_span!("readdirplus", ino = ino.0, fh = fh.0, offset);
        self.spawn(
            "readdirplus",
            span,
            move |fs| async move {
                let entries = fs.readdirplus(Fh(fh.0), offset).await?;
                Ok((fs, entries))
            },
            move |r| match r {
                Ok((fs, entries)) => {
                    let mut accepted = Vec::new();
                    for (next, entry, attr) in entries {
                        let ino = INodeNo(entry.ino.0);
                        if reply.add(ino, next, &entry.name, &ttl, &file_attr(&attr), Generation(0)) {
                            break;
                        }
                        // The kernel takes a reference on every entry but `.` and `..`.
                        if entry.name != "." && entry.name != ".." {
                            accepted.push(entry.ino);
                        }
                    }
                    fs.add_lookups(&accepted);
                    reply.ok();
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(Fh(fh.0));
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Every directory change is durable in S3 when its operation returns.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bfree, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
        );
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 { reply.size(0) } else { reply.data(&[]) }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name.to_owned();
        let ttl = self.ttl();
        let span = tracing::debug_span!("create", parent = parent.0, name = ?name);
        self.spawn(
            "create",
            span,
            move |fs| async move { fs.create(Ino(parent.0), &name).await },
            move |r| match r {
                Ok((attr, fh)) => reply.created(
                    &ttl,
                    &file_attr(&attr),
                    Generation(0),
                    FileHandle(fh.0),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }
}

fn empty(reply: ReplyEmpty) -> impl FnOnce(FsResult<()>) + Send + 'static {
    move |r| match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Mount options for a filesystem over `fs`: other uids may enter (app containers run as other
/// users), the kernel checks permissions against the fixed modes, and read-only mounts are `ro`.
pub fn mount_config(read_only: bool, fsname: &str) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(fsname.to_string()),
        fuser::MountOption::Subtype(FS_SUBTYPE.to_string()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        fuser::MountOption::CUSTOM(format!("max_read={MAX_IO_SIZE}")),
        if read_only {
            fuser::MountOption::RO
        } else {
            fuser::MountOption::RW
        },
    ];
    config.acl = fuser::SessionACL::All;
    config
}

/// Mounts `fs` at `mountpoint` and serves it from a background thread until unmounted.
pub fn mount<S: ObjectStore>(
    fs: Arc<Fs<S>>,
    mountpoint: &Path,
    fsname: &str,
    runtime: Handle,
    health: Arc<Health>,
) -> std::io::Result<fuser::BackgroundSession> {
    let read_only = fs.config().read_only;
    let adapter = FuseAdapter::new(fs, runtime, health);
    // We mount the device ourselves (see `mountsys`): that is what lets a restarted sidecar stack
    // its mount on a dead predecessor's, so app containers recover without a restart.
    let options = crate::mountsys::MountOptions {
        fsname: fsname.to_string(),
        subtype: FS_SUBTYPE.to_string(),
        read_only,
        allow_other: true,
        default_permissions: true,
        max_read: MAX_IO_SIZE,
    };
    let (fd, _placement) = crate::mountsys::mount(mountpoint, &options)?;
    let config = mount_config(read_only, fsname);
    let session = fuser::Session::from_fd(adapter, fd, config.acl, config).inspect_err(|_| {
        let _ = crate::mountsys::unmount_all(mountpoint);
    })?;
    let session = session.spawn()?;
    raise_read_ahead(mountpoint);
    Ok(session)
}

/// Sets the kernel read-ahead once the kernel has taken the FUSE_INIT answer (which resets it):
/// from a thread, as the first stat of the mount waits for that answer.
fn raise_read_ahead(mountpoint: &Path) {
    let mountpoint = mountpoint.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("read-ahead".into())
        .spawn(move || {
            if let Err(e) = std::fs::metadata(&mountpoint) {
                tracing::debug!(error = %e, "mount not answering; kernel read-ahead left as is");
                return;
            }
            match crate::mountsys::set_read_ahead(&mountpoint, KERNEL_READ_AHEAD_KIB) {
                Ok(knob) => tracing::debug!(knob, kib = KERNEL_READ_AHEAD_KIB, "kernel read-ahead set"),
                Err(e) => tracing::info!(
                    error = %e,
                    "cannot set the kernel read-ahead; random reads over 128 KiB arrive split in two"
                ),
            }
        });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "no thread to set the kernel read-ahead");
    }
}
