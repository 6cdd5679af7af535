//! Reference-model test: random operation sequences, including puts and deletes made directly on
//! the bucket by "another client", applied to the filesystem core (on the in-memory store, TTL 0)
//! and to a plain model of files and directories, compared after every step.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use s3mount_sidecar::fs::inode::{Ino, Kind};
use s3mount_sidecar::fs::{Fs, FsConfig, OpenMode};
use s3mount_sidecar::mem_store::MemStore;
use s3mount_sidecar::store::ObjectStore;

const DIRS: [&str; 2] = ["d1", "d2"];
const FILES: [&str; 5] = ["f1", "f2", "d1/f3", "d1/f4", "d2/f5"];

#[derive(Debug, Clone)]
enum Step {
    Write(usize, Vec<u8>),
    Append(usize, Vec<u8>),
    Truncate(usize, u64),
    Unlink(usize),
    Mkdir(usize),
    Rmdir(usize),
    Rename(usize, usize),
    RemotePut(usize, Vec<u8>),
    RemoteDelete(usize),
    Read(usize),
    List(Option<usize>),
}

fn step() -> impl Strategy<Value = Step> {
    let file = 0..FILES.len();
    let dir = 0..DIRS.len();
    let data = proptest::collection::vec(any::<u8>(), 0..40);
    prop_oneof![
        (file.clone(), data.clone()).prop_map(|(f, d)| Step::Write(f, d)),
        (file.clone(), data.clone()).prop_map(|(f, d)| Step::Append(f, d)),
        (file.clone(), 0..50u64).prop_map(|(f, n)| Step::Truncate(f, n)),
        file.clone().prop_map(Step::Unlink),
        dir.clone().prop_map(Step::Mkdir),
        dir.clone().prop_map(Step::Rmdir),
        (file.clone(), file.clone()).prop_map(|(a, b)| Step::Rename(a, b)),
        (file.clone(), data).prop_map(|(f, d)| Step::RemotePut(f, d)),
        file.clone().prop_map(Step::RemoteDelete),
        file.prop_map(Step::Read),
        proptest::option::of(dir).prop_map(Step::List),
    ]
}

/// The model: file contents by path, and directories made with mkdir (markers).
#[derive(Debug, Default)]
struct Model {
    files: BTreeMap<String, Vec<u8>>,
    markers: BTreeSet<String>,
}

impl Model {
    fn dir_exists(&self, dir: &str) -> bool {
        dir.is_empty()
            || self.markers.contains(dir)
            || self.files.keys().any(|f| f.starts_with(&format!("{dir}/")))
    }
    fn parent_exists(&self, path: &str) -> bool {
        self.dir_exists(path.rsplit_once('/').map_or("", |(p, _)| p))
    }
    fn entries(&self, dir: &str) -> BTreeSet<(String, Kind)> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut out = BTreeSet::new();
        for f in self.files.keys().filter_map(|f| f.strip_prefix(&prefix)) {
            match f.split_once('/') {
                Some((d, _)) => out.insert((d.to_string(), Kind::Dir)),
                None => out.insert((f.to_string(), Kind::File)),
            };
        }
        for m in self.markers.iter().filter_map(|m| m.strip_prefix(&prefix)) {
            if !m.contains('/') {
                out.insert((m.to_string(), Kind::Dir));
            }
        }
        out
    }
}

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

async fn apply(model: &mut Model, real: &Real, step: &Step) {
    match step {
        Step::Write(f, data) | Step::Append(f, data) => {
            let path = FILES[*f];
            let append = matches!(step, Step::Append(..));
            let got = real.write(path, data, append).await;
            if model.parent_exists(path) {
                assert_eq!(got, Ok(()), "{step:?}");
                let entry = model.files.entry(path.to_string()).or_default();
                if !append {
                    entry.clear();
                }
                entry.extend_from_slice(data);
            } else {
                assert_eq!(got, Err(libc::ENOENT), "{step:?}");
            }
        }
        Step::Truncate(f, size) => {
            let path = FILES[*f];
            let got = match real.file(path).await {
                Ok(ino) => real
                    .fs
                    .setattr(
                        ino,
                        s3mount_sidecar::fs::SetAttr {
                            size: Some(*size),
                            ..Default::default()
                        },
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| e.errno()),
                Err(e) => Err(e),
            };
            match model.files.get_mut(path) {
                Some(data) => {
                    assert_eq!(got, Ok(()), "{step:?}");
                    data.resize(*size as usize, 0);
                }
                None => assert_eq!(got, Err(libc::ENOENT), "{step:?}"),
            }
        }
        Step::Unlink(f) => {
            let path = FILES[*f];
            let got = match real.parent_and_name(path).await {
                Ok((parent, name)) => real.fs.unlink(parent, name).await.map_err(|e| e.errno()),
                Err(e) => Err(e),
            };
            let expected = if model.files.remove(path).is_some() {
                Ok(())
            } else {
                Err(libc::ENOENT)
            };
            assert_eq!(got, expected, "{step:?}");
        }
        Step::Mkdir(d) => {
            let dir = DIRS[*d];
            let got = real
                .fs
                .mkdir(Ino::ROOT, OsStr::new(dir))
                .await
                .map(|_| ())
                .map_err(|e| e.errno());
            if model.dir_exists(dir) {
                assert_eq!(got, Err(libc::EEXIST), "{step:?}");
            } else {
                assert_eq!(got, Ok(()), "{step:?}");
                model.markers.insert(dir.to_string());
            }
        }
        Step::Rmdir(d) => {
            let dir = DIRS[*d];
            let got = real
                .fs
                .rmdir(Ino::ROOT, OsStr::new(dir))
                .await
                .map_err(|e| e.errno());
            if !model.dir_exists(dir) {
                assert_eq!(got, Err(libc::ENOENT), "{step:?}");
            } else if !model.entries(dir).is_empty() {
                assert_eq!(got, Err(libc::ENOTEMPTY), "{step:?}");
            } else {
                assert_eq!(got, Ok(()), "{step:?}");
                model.markers.remove(dir);
            }
        }
        Step::Rename(a, b) => {
            let (from, to) = (FILES[*a], FILES[*b]);
            let got = match (real.parent_and_name(from).await, real.parent_and_name(to).await) {
                (Ok((p1, n1)), Ok((p2, n2))) => {
                    real.fs.rename(p1, n1, p2, n2, 0).await.map_err(|e| e.errno())
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            if !model.files.contains_key(from) || !model.parent_exists(to) {
                assert_eq!(got, Err(libc::ENOENT), "{step:?}");
            } else {
                assert_eq!(got, Ok(()), "{step:?}");
                let data = model.files.remove(from).unwrap();
                model.files.insert(to.to_string(), data);
            }
        }
        Step::RemotePut(f, data) => {
            real.store
                .put(FILES[*f], Bytes::copy_from_slice(data))
                .await
                .unwrap();
            model.files.insert(FILES[*f].to_string(), data.clone());
        }
        Step::RemoteDelete(f) => {
            real.store.remove(FILES[*f]);
            model.files.remove(FILES[*f]);
        }
        Step::Read(f) => {
            let path = FILES[*f];
            let got = real.read(path).await;
            match model.files.get(path) {
                Some(data) => assert_eq!(got.as_ref(), Ok(data), "{step:?}"),
                None => assert_eq!(got, Err(libc::ENOENT), "{step:?}"),
            }
        }
        Step::List(d) => {
            let dir = d.map_or("", |d| DIRS[d]);
            let got = real.list(dir).await;
            if model.dir_exists(dir) {
                assert_eq!(got, Ok(model.entries(dir)), "{step:?}");
            } else {
                assert_eq!(got, Err(libc::ENOENT), "{step:?}");
            }
        }
    }
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
            .prop_map(|s| s.into_iter().filter(|s| !matches!(s, Step::RemotePut(..) | Step::RemoteDelete(_))).collect::<Vec<_>>())
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
