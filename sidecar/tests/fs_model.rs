//! Reference-model test (the model: `model/mod.rs`) applied to the filesystem core on the
//! in-memory store, TTL 0, compared after every step. `mount_model` applies the same model to the
//! kernel mount of the real binary over a real S3 server.

mod model;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use model::{DIRS, FILES, Got, Kind, Model, Step, step};
use s3mount_sidecar::fs::error::FsResult;
use s3mount_sidecar::fs::inode::Ino;
use s3mount_sidecar::fs::{Fs, FsConfig, OpenMode, SetAttr};
use s3mount_sidecar::mem_store::MemStore;
use s3mount_sidecar::store::ObjectStore;

struct Real {
    fs: Fs<MemStore>,
    store: Arc<MemStore>,
    _dir: tempfile::TempDir,
}

impl Real {
    fn new(metadata_ttl: Duration) -> Real {
        let dir = tempfile::tempdir().unwrap();
        let cfg = FsConfig {
            metadata_ttl,
            part_size: 16,
            ..FsConfig::new(dir.path().join("staging"))
        };
        let store = Arc::new(MemStore::with_page_size(2));
        Real {
            fs: Fs::new(store.clone(), cfg).unwrap(),
            store,
            _dir: dir,
        }
    }

    /// The inode of a directory path, by lookups from the root.
    async fn dir(&self, dir: &str) -> Result<Ino, i32> {
        if dir.is_empty() {
            return Ok(Ino::ROOT);
        }
        self.fs
            .lookup(Ino::ROOT, OsStr::new(dir))
            .await
            .map(|a| a.ino)
            .map_err(|e| e.errno())
    }

    async fn parent_and_name<'a>(&self, path: &'a str) -> Result<(Ino, &'a OsStr), i32> {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        Ok((self.dir(parent).await?, OsStr::new(name)))
    }

    async fn file(&self, path: &str) -> Result<Ino, i32> {
        let (parent, name) = self.parent_and_name(path).await?;
        self.fs
            .lookup(parent, name)
            .await
            .map(|a| a.ino)
            .map_err(|e| e.errno())
    }

    async fn write(&self, path: &str, data: &[u8], append: bool) -> Result<(), i32> {
        let (parent, name) = self.parent_and_name(path).await?;
        let (fh, offset) = match self.fs.lookup(parent, name).await {
            Ok(attr) => {
                let mode = OpenMode {
                    write: true,
                    truncate: !append,
                };
                (
                    self.fs.open(attr.ino, mode).await.map_err(|e| e.errno())?,
                    if append { attr.size } else { 0 },
                )
            }
            Err(e) if e.errno() == libc::ENOENT => {
                (self.fs.create(parent, name).await.map_err(|e| e.errno())?.1, 0)
            }
            Err(e) => return Err(e.errno()),
        };
        self.fs.write(fh, offset, data).await.map_err(|e| e.errno())?;
        self.fs.release(fh).await.map_err(|e| e.errno())
    }

    async fn read(&self, path: &str) -> Result<Vec<u8>, i32> {
        let ino = self.file(path).await?;
        let fh = self
            .fs
            .open(ino, OpenMode::default())
            .await
            .map_err(|e| e.errno())?;
        let data = self.fs.read(fh, 0, 1 << 20).await.map_err(|e| e.errno())?;
        self.fs.release(fh).await.map_err(|e| e.errno())?;
        Ok(data.to_vec())
    }

    async fn list(&self, dir: &str) -> Result<BTreeSet<(String, Kind)>, i32> {
        let ino = self.dir(dir).await?;
        let fh = self.fs.opendir(ino).map_err(|e| e.errno())?;
        let entries = self.fs.readdir(fh, 0).await.map_err(|e| e.errno())?;
        self.fs.releasedir(fh);
        Ok(entries
            .into_iter()
            .map(|(_, e)| (e.name, e.kind))
            .filter(|(n, _)| n != "." && n != "..")
            .collect())
    }
}

/// A filesystem call's result as a step's result.
fn done<T>(result: FsResult<T>) -> Result<Got, i32> {
    result.map(|_| Got::Done).map_err(|e| e.errno())
}

async fn apply(model: &mut Model, real: &Real, step: &Step) {
    let got = match step {
        Step::Write(f, data) | Step::Append(f, data) => real
            .write(FILES[*f], data, matches!(step, Step::Append(..)))
            .await
            .map(|()| Got::Done),
        Step::Truncate(f, size) => match real.file(FILES[*f]).await {
            Ok(ino) => {
                let size = Some(*size);
                done(
                    real.fs
                        .setattr(
                            ino,
                            SetAttr {
                                size,
                                ..Default::default()
                            },
                        )
                        .await,
                )
            }
            Err(e) => Err(e),
        },
        Step::Unlink(f) => match real.parent_and_name(FILES[*f]).await {
            Ok((parent, name)) => done(real.fs.unlink(parent, name).await),
            Err(e) => Err(e),
        },
        Step::Mkdir(d) => done(real.fs.mkdir(Ino::ROOT, OsStr::new(DIRS[*d])).await),
        Step::Rmdir(d) => done(real.fs.rmdir(Ino::ROOT, OsStr::new(DIRS[*d])).await),
        Step::Rename(a, b) => {
            match (
                real.parent_and_name(FILES[*a]).await,
                real.parent_and_name(FILES[*b]).await,
            ) {
                (Ok((p1, n1)), Ok((p2, n2))) => done(real.fs.rename(p1, n1, p2, n2, 0).await),
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        Step::RemotePut(f, data) => {
            real.store
                .put(FILES[*f], Bytes::copy_from_slice(data))
                .await
                .unwrap();
            Ok(Got::Done)
        }
        Step::RemoteDelete(f) => {
            real.store.remove(FILES[*f]);
            Ok(Got::Done)
        }
        Step::Read(f) => real.read(FILES[*f]).await.map(Got::Data),
        Step::List(d) => real.list(d.map_or("", |d| DIRS[d])).await.map(Got::Entries),
    };
    model.check(step, got);
    // After every step the whole tree agrees.
    assert_eq!(real.list("").await, Ok(model.entries("")), "root after {step:?}");
    for (path, data) in &model.files {
        assert_eq!(
            real.store.object(path).as_deref(),
            Some(data.as_slice()),
            "{path} after {step:?}"
        );
    }
}

fn run(steps: &[Step], metadata_ttl: Duration) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut model = Model::default();
        let real = Real::new(metadata_ttl);
        for step in steps {
            apply(&mut model, &real, step).await;
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_filesystem_matches_the_reference_model(steps in proptest::collection::vec(step(), 1..40)) {
        run(&steps, Duration::ZERO);
    }

    /// With a long TTL and no other client, everything must come from the mount's own bookkeeping:
    /// this catches any own change that fails to update the caches.
    #[test]
    fn own_changes_match_the_model_under_a_long_ttl(
        steps in proptest::collection::vec(step(), 1..40)
            .prop_map(|s| s.into_iter().filter(|s| !s.is_remote()).collect::<Vec<_>>())
    ) {
        run(&steps, Duration::from_secs(3600));
    }
}

/// Minimised by proptest (the seed in fs_model.proptest-regressions): writing a file, then writing
/// it again with no bytes (open with O_TRUNC, close) must leave an empty object, not the old one.
#[test]
fn regression_rewriting_a_file_with_nothing_leaves_it_empty() {
    let steps = [Step::Write(0, vec![0]), Step::Write(0, vec![])];
    run(&steps, Duration::ZERO);
    run(&steps, Duration::from_secs(3600));
}
