//! Staging files: the local copy of a file being written, kept in the cache directory.
//!
//! Every write, overwrite, append or truncate goes to a staging file; flush, fsync and close
//! upload it (one PUT up to the part size, else a multipart upload reading one part at a time, so
//! memory stays bounded by the part size). A new or truncated file written sequentially streams
//! out while it is written: each full part is uploaded as soon as it is complete, and close only
//! sends the tail and completes the upload. Any other write, or a truncate, aborts that stream and
//! the file goes out whole at the next flush. A staging file whose upload failed stays on disk and
//! stays attached to its inode, so the data is not lost and a later flush retries.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::fs::error::{FsError, FsResult};
use crate::store::CompletedPart;

/// A local file holding the current contents of one inode.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
    file: File,
    /// Written since the last successful upload.
    dirty: AtomicBool,
    /// The last upload of it failed (and none has succeeded since).
    upload_failed: AtomicBool,
    /// Open handles using it.
    handles: AtomicUsize,
    /// Serialises uploads of this file.
    pub(crate) upload_lock: tokio::sync::Mutex<()>,
    /// True while every write so far appended to a file that started empty: such a file streams
    /// out as a multipart upload while it is written.
    sequential: AtomicBool,
    /// The multipart upload fed by sequential writes, if one is under way.
    stream: Mutex<Option<Stream>>,
}

/// A multipart upload of a file being written sequentially.
#[derive(Debug)]
pub struct Stream {
    /// The key it uploads to.
    pub key: String,
    /// The upload id.
    pub upload_id: String,
    /// Parts uploaded so far, in order.
    pub parts: Vec<CompletedPart>,
    /// Bytes from the start of the file that the parts hold.
    pub uploaded: u64,
}

impl Staging {
    /// Creates an empty staging file at `path`.
    pub fn create(path: PathBuf) -> FsResult<Staging> {
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| FsError::Staging {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Staging {
            path,
            file,
            dirty: AtomicBool::new(false),
            upload_failed: AtomicBool::new(false),
            handles: AtomicUsize::new(0),
            upload_lock: tokio::sync::Mutex::new(()),
            sequential: AtomicBool::new(false),
            stream: Mutex::new(None),
        })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_err(&self) -> impl FnOnce(std::io::Error) -> FsError + '_ {
        |source| FsError::Staging {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Reads up to `len` bytes at `offset` (fewer at the end of the file).
    pub fn read_at(&self, offset: u64, len: usize) -> FsResult<Vec<u8>> {
        let size = self.size()?;
        let len = len.min(size.saturating_sub(offset) as usize);
        let mut buf = vec![0; len];
        self.file.read_exact_at(&mut buf, offset).map_err(self.io_err())?;
        Ok(buf)
    }

    /// Lets sequential writes to this (empty) file stream out while it is written.
    pub fn allow_streaming(&self) {
        self.sequential.store(true, Ordering::SeqCst);
    }

    /// Whether writes so far were sequential appends to an initially empty file.
    pub fn is_sequential(&self) -> bool {
        self.sequential.load(Ordering::SeqCst)
    }

    /// Ends streaming for good and hands back the upload under way, for the caller to abort.
    pub fn stop_streaming(&self) -> Option<Stream> {
        self.sequential.store(false, Ordering::SeqCst);
        self.take_stream()
    }

    /// Takes the upload under way out (to feed or finish it).
    pub fn take_stream(&self) -> Option<Stream> {
        self.stream.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Puts an upload under way back.
    pub fn put_stream(&self, stream: Stream) {
        *self.stream.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream);
    }

    /// Bytes already uploaded as parts of the upload under way.
    pub fn streamed(&self) -> u64 {
        self.stream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |s| s.uploaded)
    }

    /// Writes `data` at `offset` and marks the file dirty.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> FsResult<()> {
        self.dirty.store(true, Ordering::SeqCst);
        self.file.write_all_at(data, offset).map_err(self.io_err())
    }

    /// Sets the length and marks the file dirty.
    pub fn set_len(&self, size: u64) -> FsResult<()> {
        self.dirty.store(true, Ordering::SeqCst);
        self.file.set_len(size).map_err(self.io_err())
    }

    /// Current length.
    pub fn size(&self) -> FsResult<u64> {
        Ok(self.file.metadata().map_err(self.io_err())?.len())
    }

    /// Whether it was written since the last upload.
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::SeqCst)
    }

    /// Marks it dirty (a new file, or an upload that failed).
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// Takes the dirty flag before an upload begins; writes racing the upload set it again.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::SeqCst)
    }

    /// One more handle uses it.
    pub fn acquire(&self) {
        self.handles.fetch_add(1, Ordering::SeqCst);
    }

    /// Records how the last upload went.
    pub fn set_upload_failed(&self, failed: bool) {
        self.upload_failed.store(failed, Ordering::SeqCst);
    }

    /// Whether the last upload failed.
    pub fn upload_failed(&self) -> bool {
        self.upload_failed.load(Ordering::SeqCst)
    }

    /// How many open handles use it.
    pub fn open_handles(&self) -> usize {
        self.handles.load(Ordering::SeqCst)
    }

    /// One handle fewer; returns how many remain.
    pub fn release(&self) -> usize {
        self.handles.fetch_sub(1, Ordering::SeqCst).saturating_sub(1)
    }

    /// Deletes the file from disk.
    pub fn remove(&self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove staging file");
        }
    }
}
