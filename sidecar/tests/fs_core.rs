//! The filesystem core on the in-memory store: each test is named after the promise of
//! SEMANTICS.md it backs.

mod support;

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use s3mount_sidecar::fs::error::FsError;
use s3mount_sidecar::fs::inode::{Ino, Kind};
use s3mount_sidecar::fs::{Fs, FsConfig, OpenMode, SetAttr};
use s3mount_sidecar::mem_store::{MemStore, Op};
use s3mount_sidecar::store::ObjectStore;

struct Setup {
    fs: Fs<MemStore>,
    store: Arc<MemStore>,
    _dir: tempfile::TempDir,
}

fn config(dir: &tempfile::TempDir) -> FsConfig {
    FsConfig {
        uid: 1000,
        gid: 1000,
        metadata_ttl: Duration::from_secs(60),
        part_size: 1024,
        ..FsConfig::new(dir.path().join("staging"))
    }
}

fn setup_with(store: MemStore, change: impl FnOnce(&mut FsConfig)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir);
    change(&mut cfg);
    let store = Arc::new(store);
    Setup {
        fs: Fs::new(store.clone(), cfg).unwrap(),
        store,
        _dir: dir,
    }
}

fn setup() -> Setup {
    setup_with(MemStore::new(), |_| {})
}

/// A metadata TTL for checks that something expires, and a wait surely past it. Checks that
/// something is still cached use the 60 s TTL of [`config`] instead, so no stall of a loaded
/// machine can expire it first.
const EXPIRING_TTL: Duration = Duration::from_secs(1);
const PAST_EXPIRING_TTL: Duration = Duration::from_millis(1200);

async fn put(store: &MemStore, key: &str, data: &[u8]) {
    store.put(key, Bytes::copy_from_slice(data)).await.unwrap();
}

fn n(s: &str) -> &OsStr {
    OsStr::new(s)
}

async fn write_file(fs: &Fs<MemStore>, parent: Ino, name: &str, data: &[u8]) -> Ino {
    let (attr, fh) = fs.create(parent, n(name)).await.unwrap();
    fs.write(fh, 0, data).await.unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    attr.ino
}

async fn read_all(fs: &Fs<MemStore>, ino: Ino) -> Result<Vec<u8>, FsError> {
    let fh = fs.open(ino, OpenMode::default()).await?;
    let mut out = Vec::new();
    loop {
        let chunk = fs.read(fh, out.len() as u64, 1000).await?;
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    fs.release(fh).await?;
    Ok(out)
}

async fn names(fs: &Fs<MemStore>, dir: Ino) -> Vec<(String, Kind)> {
    let fh = fs.opendir(dir).unwrap();
    let entries = fs.readdir(fh, 0).await.unwrap();
    fs.releasedir(fh);
    entries
        .into_iter()
        .map(|(_, e)| (e.name, e.kind))
        .filter(|(n, _)| n != "." && n != "..")
        .collect()
}

fn errno<T: std::fmt::Debug>(r: Result<T, FsError>) -> i32 {
    r.expect_err("expected an error").errno()
}

#[tokio::test]
async fn readdir_lists_every_page_of_a_large_directory() {
    let s = setup_with(MemStore::with_page_size(7), |_| {});
    for i in 0..50 {
        put(&s.store, &format!("big/f{i:03}"), b"x").await;
    }
    for i in 0..9 {
        put(&s.store, &format!("big/sub{i}/inner"), b"y").await;
    }
    let big = s.fs.lookup(Ino::ROOT, n("big")).await.unwrap();
    let listed = names(&s.fs, big.ino).await;
    assert_eq!(listed.iter().filter(|(_, k)| *k == Kind::File).count(), 50);
    assert_eq!(listed.iter().filter(|(_, k)| *k == Kind::Dir).count(), 9);
}

/// `ls -l` of a large directory: the readdir costs its listing pages and nothing else, and the
/// stat of every entry listed costs no request within the TTL (issue 7's request economy).
#[tokio::test]
async fn ls_l_of_a_large_directory_costs_its_list_pages_and_no_head() {
    let s = setup_with(MemStore::with_page_size(10), |_| {});
    for i in 0..100 {
        put(&s.store, &format!("ls/f{i:03}"), &vec![1; i]).await;
    }
    let dir = s.fs.lookup(Ino::ROOT, n("ls")).await.unwrap();
    let (lists, heads) = (s.store.request_count(Op::List), s.store.request_count(Op::Head));
    let fh = s.fs.opendir(dir.ino).unwrap();
    let entries = s.fs.readdirplus(fh, 0).await.unwrap();
    assert_eq!(entries.len(), 102, "100 files, . and ..");
    for i in 0..100 {
        let attr = s.fs.lookup(dir.ino, n(&format!("f{i:03}"))).await.unwrap();
        assert_eq!(attr.size, i as u64);
    }
    assert_eq!(
        s.store.request_count(Op::List) - lists,
        10,
        "one LIST per page of 10"
    );
    assert_eq!(
        s.store.request_count(Op::Head) - heads,
        0,
        "no HEAD for listed entries"
    );
}

#[tokio::test]
async fn readdir_takes_attributes_from_the_listing_without_head() {
    let s = setup();
    for i in 0..20 {
        put(&s.store, &format!("f{i}"), &vec![7; i]).await;
    }
    let listed = names(&s.fs, Ino::ROOT).await;
    assert_eq!(listed.len(), 20);
    let heads = s.store.request_count(Op::Head);
    for i in 0..20 {
        let attr = s.fs.lookup(Ino::ROOT, n(&format!("f{i}"))).await.unwrap();
        assert_eq!(attr.size, i as u64);
    }
    assert_eq!(
        s.store.request_count(Op::Head),
        heads,
        "lookups after readdir must not HEAD"
    );
}

#[tokio::test]
async fn directories_come_from_common_prefixes_and_from_markers() {
    let s = setup();
    put(&s.store, "implicit/file", b"1").await;
    put(&s.store, "empty-marker/", b"").await;
    let listed = names(&s.fs, Ino::ROOT).await;
    assert_eq!(
        listed,
        vec![("empty-marker".into(), Kind::Dir), ("implicit".into(), Kind::Dir)]
    );
    let marker = s.fs.lookup(Ino::ROOT, n("empty-marker")).await.unwrap();
    assert_eq!(marker.kind, Kind::Dir);
    assert!(
        names(&s.fs, marker.ino).await.is_empty(),
        "the marker itself is not an entry"
    );
}

#[tokio::test]
async fn object_and_prefix_of_the_same_name_show_one_directory() {
    let s = setup();
    put(&s.store, "a", b"hidden object").await;
    put(&s.store, "a/b", b"child").await;
    put(&s.store, "m/", b"").await;
    put(&s.store, "m", b"hidden by marker").await;
    let listed = names(&s.fs, Ino::ROOT).await;
    assert_eq!(listed, vec![("a".into(), Kind::Dir), ("m".into(), Kind::Dir)]);
    let s2 = setup();
    put(&s2.store, "a", b"hidden object").await;
    put(&s2.store, "a/b", b"child").await;
    assert_eq!(
        s2.fs.lookup(Ino::ROOT, n("a")).await.unwrap().kind,
        Kind::Dir,
        "lookup agrees with readdir"
    );
}

#[tokio::test]
async fn keys_that_cannot_be_paths_are_skipped_without_failing_the_directory() {
    let s = setup();
    let long = "x".repeat(256);
    for key in ["d//b", "d/./c", "d/../e", &format!("d/{long}"), "d/good"] {
        put(&s.store, key, b"1").await;
    }
    let d = s.fs.lookup(Ino::ROOT, n("d")).await.unwrap();
    assert_eq!(names(&s.fs, d.ino).await, vec![("good".into(), Kind::File)]);
}

#[tokio::test]
async fn odd_characters_in_names_are_exact_and_usable() {
    let s = setup();
    let odd = [
        "with space",
        "100%",
        "a+b",
        "hash#",
        "what?",
        "quote\"s",
        "apos'",
        "é日本",
        "semi;colon",
        "~tilde",
    ];
    for name in odd {
        write_file(&s.fs, Ino::ROOT, name, name.as_bytes()).await;
        assert_eq!(s.store.object(name).as_deref(), Some(name.as_bytes()), "{name}");
    }
    let listed: Vec<String> = names(&s.fs, Ino::ROOT)
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut expected: Vec<String> = odd.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    for name in odd {
        let renamed = format!("{name} renamed");
        s.fs.rename(Ino::ROOT, n(name), Ino::ROOT, n(&renamed), 0)
            .await
            .unwrap();
        let attr = s.fs.lookup(Ino::ROOT, n(&renamed)).await.unwrap();
        assert_eq!(read_all(&s.fs, attr.ino).await.unwrap(), name.as_bytes());
        s.fs.unlink(Ino::ROOT, n(&renamed)).await.unwrap();
    }
    assert!(s.store.keys().is_empty());
}

#[tokio::test]
async fn names_over_255_bytes_and_keys_over_1024_bytes_are_enametoolong() {
    let s = setup();
    assert_eq!(
        errno(s.fs.create(Ino::ROOT, n(&"n".repeat(256))).await),
        libc::ENAMETOOLONG
    );
    let mut parent = Ino::ROOT;
    for _ in 0..4 {
        parent = s.fs.mkdir(parent, n(&"d".repeat(250))).await.unwrap().ino;
    }
    assert_eq!(
        errno(s.fs.create(parent, n(&"f".repeat(40))).await),
        libc::ENAMETOOLONG
    );
}

#[tokio::test]
async fn the_prefix_is_the_root_and_nothing_outside_it_shows() {
    let s = setup_with(MemStore::new(), |c| c.prefix = "team/data/".into());
    put(&s.store, "team/data/inside", b"in").await;
    put(&s.store, "team/other", b"out").await;
    put(&s.store, "outside", b"out").await;
    assert_eq!(names(&s.fs, Ino::ROOT).await, vec![("inside".into(), Kind::File)]);
    write_file(&s.fs, Ino::ROOT, "new", b"n").await;
    assert_eq!(s.store.object("team/data/new").as_deref(), Some(&b"n"[..]));
}

#[tokio::test]
async fn close_uploads_exact_bytes_and_returns_only_once_durable() {
    let s = setup();
    let (attr, fh) = s.fs.create(Ino::ROOT, n("out.bin")).await.unwrap();
    s.fs.write(fh, 0, b"hello ").await.unwrap();
    s.fs.write(fh, 6, b"world").await.unwrap();
    assert!(
        s.store.object("out.bin").is_none(),
        "nothing is uploaded before flush/close"
    );
    assert_eq!(
        s.fs.read(fh, 0, 100).await.unwrap(),
        &b"hello world"[..],
        "reads see staged writes"
    );
    s.fs.release(fh).await.unwrap();
    assert_eq!(s.store.object("out.bin").as_deref(), Some(&b"hello world"[..]));
    assert_eq!(s.fs.getattr(attr.ino).await.unwrap().size, 11);
}

#[tokio::test]
async fn a_new_empty_file_exists_after_close() {
    let s = setup();
    let (_, fh) = s.fs.create(Ino::ROOT, n("empty")).await.unwrap();
    s.fs.release(fh).await.unwrap();
    assert_eq!(s.store.object("empty").as_deref(), Some(&b""[..]));
}

#[tokio::test]
async fn files_above_the_part_size_upload_as_multipart() {
    let s = setup();
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let ino = write_file(&s.fs, Ino::ROOT, "big", &data).await;
    assert_eq!(
        s.store.request_count(Op::UploadPart),
        5,
        "5 parts of at most 1024 bytes"
    );
    assert_eq!(s.store.object("big").as_deref(), Some(&data[..]));
    assert_eq!(s.store.pending_uploads(), 0);
    assert_eq!(read_all(&s.fs, ino).await.unwrap(), data);
}

#[tokio::test]
async fn a_failed_upload_is_eio_and_keeps_the_staged_data() {
    let s = setup();
    let (_, fh) = s.fs.create(Ino::ROOT, n("precious")).await.unwrap();
    s.fs.write(fh, 0, b"do not lose me").await.unwrap();
    s.store.fail_next(Op::Put, 1);
    assert_eq!(errno(s.fs.flush(fh).await), libc::EIO);
    let staged: Vec<_> = std::fs::read_dir(&s.fs.config().staging_dir).unwrap().collect();
    assert_eq!(staged.len(), 1, "the staging file is kept");
    s.fs.release(fh).await.unwrap();
    assert_eq!(
        s.store.object("precious").as_deref(),
        Some(&b"do not lose me"[..]),
        "close retried it"
    );
    assert_eq!(std::fs::read_dir(&s.fs.config().staging_dir).unwrap().count(), 0);
}

/// An upload that failed at close is tried again in the background (the sidecar runs
/// `retry_failed_uploads` every few seconds), not only at shutdown; files still open are left
/// to their own close.
#[tokio::test]
async fn an_upload_that_failed_at_close_is_retried_while_running() {
    let s = setup();
    let (_, fh) = s.fs.create(Ino::ROOT, n("precious")).await.unwrap();
    s.fs.write(fh, 0, b"do not lose me").await.unwrap();
    let (_, open) = s.fs.create(Ino::ROOT, n("still-open")).await.unwrap();
    s.fs.write(open, 0, b"half").await.unwrap();
    s.store.fail_next(Op::Put, 2);
    assert_eq!(
        errno(s.fs.release(fh).await),
        libc::EIO,
        "close reports the failure"
    );
    assert_eq!(s.store.object("precious"), None);

    s.store.fail_next(Op::Put, 1);
    assert_eq!(
        s.fs.retry_failed_uploads().await,
        (0, 1),
        "S3 still failing: kept for later"
    );
    assert_eq!(s.store.object("precious"), None);
    assert_eq!(s.fs.pending_uploads(), vec!["precious", "still-open"]);

    assert_eq!(s.fs.retry_failed_uploads().await, (1, 0), "S3 back: uploaded");
    assert_eq!(
        s.store.object("precious").as_deref(),
        Some(&b"do not lose me"[..])
    );
    assert_eq!(
        s.store.object("still-open"),
        None,
        "an open file waits for its close"
    );
    assert_eq!(s.fs.pending_uploads(), vec!["still-open"]);
    assert_eq!(
        std::fs::read_dir(&s.fs.config().staging_dir).unwrap().count(),
        1,
        "the retried file's staging is gone, the open one's kept"
    );
    s.fs.release(open).await.unwrap();
    assert_eq!(s.store.object("still-open").as_deref(), Some(&b"half"[..]));
}

/// The background retry takes only closed files whose upload failed: never a file being opened
/// or written (a truncating open is dirty before its first write), and never a staging file a
/// handle holds (it was once deleted under a truncating open, which then failed with ESTALE).
#[tokio::test]
async fn the_upload_retry_leaves_files_in_use_alone() {
    let s = setup();
    write_file(&s.fs, Ino::ROOT, "f", b"old").await;
    let ino = s.fs.lookup(Ino::ROOT, n("f")).await.unwrap().ino;
    let truncating = OpenMode {
        write: true,
        truncate: true,
    };
    let fh = s.fs.open(ino, truncating).await.unwrap();
    assert_eq!(
        s.fs.retry_failed_uploads().await,
        (0, 0),
        "dirty but not failed: left alone"
    );
    assert_eq!(s.store.object("f").as_deref(), Some(&b"old"[..]));
    s.fs.write(fh, 0, b"new").await.unwrap();
    s.store.fail_next(Op::Put, 1);
    assert_eq!(errno(s.fs.release(fh).await), libc::EIO);
    // Reopened before the retry runs: the handle holds the staging, the retry leaves it.
    let fh = s.fs.open(ino, truncating).await.unwrap();
    assert_eq!(
        s.fs.retry_failed_uploads().await,
        (0, 0),
        "held by a handle: left alone"
    );
    s.fs.write(fh, 0, b"newest").await.unwrap();
    s.fs.release(fh).await.unwrap();
    assert_eq!(s.store.object("f").as_deref(), Some(&b"newest"[..]));
    assert_eq!(std::fs::read_dir(&s.fs.config().staging_dir).unwrap().count(), 0);
}

#[tokio::test]
async fn a_failed_multipart_upload_is_aborted_and_the_data_kept() {
    let s = setup();
    let (_, fh) = s.fs.create(Ino::ROOT, n("big")).await.unwrap();
    s.fs.write(fh, 0, &[1; 4000]).await.unwrap();
    s.store.fail_next(Op::UploadPart, 1);
    assert_eq!(errno(s.fs.flush(fh).await), libc::EIO);
    assert_eq!(s.store.pending_uploads(), 0, "the failed upload was aborted");
    s.fs.flush(fh).await.unwrap();
    s.fs.release(fh).await.unwrap();
    assert_eq!(s.store.object("big").map(|b| b.len()), Some(4000));
}

#[tokio::test]
async fn overwrite_append_random_write_and_truncate_work_through_staging() {
    let s = setup();
    put(&s.store, "f", b"0123456789").await;
    let ino = s.fs.lookup(Ino::ROOT, n("f")).await.unwrap().ino;
    let fh =
        s.fs.open(
            ino,
            OpenMode {
                write: true,
                truncate: false,
            },
        )
        .await
        .unwrap();
    s.fs.write(fh, 3, b"abc").await.unwrap();
    s.fs.write(fh, 10, b"XY").await.unwrap();
    s.fs.release(fh).await.unwrap();
    assert_eq!(s.store.object("f").as_deref(), Some(&b"012abc6789XY"[..]));
    s.fs.setattr(
        ino,
        SetAttr {
            size: Some(4),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(s.store.object("f").as_deref(), Some(&b"012a"[..]));
    s.fs.setattr(
        ino,
        SetAttr {
            size: Some(6),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(s.store.object("f").as_deref(), Some(&b"012a\0\0"[..]));
    let fh =
        s.fs.open(
            ino,
            OpenMode {
                write: true,
                truncate: true,
            },
        )
        .await
        .unwrap();
    s.fs.write(fh, 0, b"new").await.unwrap();
    s.fs.release(fh).await.unwrap();
    assert_eq!(s.store.object("f").as_deref(), Some(&b"new"[..]));
}

#[tokio::test]
async fn unlink_removes_the_object() {
    let s = setup();
    put(&s.store, "gone", b"1").await;
    s.fs.unlink(Ino::ROOT, n("gone")).await.unwrap();
    assert!(s.store.object("gone").is_none());
    assert_eq!(errno(s.fs.lookup(Ino::ROOT, n("gone")).await), libc::ENOENT);
    assert_eq!(errno(s.fs.unlink(Ino::ROOT, n("gone")).await), libc::ENOENT);
}

#[tokio::test]
async fn mkdir_makes_a_marker_so_empty_directories_persist() {
    let s = setup();
    let d = s.fs.mkdir(Ino::ROOT, n("newdir")).await.unwrap();
    assert_eq!(s.store.keys(), vec!["newdir/".to_string()]);
    assert_eq!(errno(s.fs.mkdir(Ino::ROOT, n("newdir")).await), libc::EEXIST);
    write_file(&s.fs, d.ino, "child", b"c").await;
    assert_eq!(s.store.object("newdir/child").as_deref(), Some(&b"c"[..]));
}

#[tokio::test]
async fn rmdir_removes_only_empty_directories() {
    let s = setup();
    let d = s.fs.mkdir(Ino::ROOT, n("d")).await.unwrap();
    write_file(&s.fs, d.ino, "f", b"1").await;
    assert_eq!(errno(s.fs.rmdir(Ino::ROOT, n("d")).await), libc::ENOTEMPTY);
    s.fs.unlink(d.ino, n("f")).await.unwrap();
    s.fs.rmdir(Ino::ROOT, n("d")).await.unwrap();
    assert!(s.store.keys().is_empty());
    put(&s.store, "file", b"1").await;
    assert_eq!(errno(s.fs.rmdir(Ino::ROOT, n("file")).await), libc::ENOTDIR);
}

#[tokio::test]
async fn rename_of_a_file_copies_then_deletes() {
    let s = setup();
    put(&s.store, "a", b"data").await;
    s.fs.mkdir(Ino::ROOT, n("d")).await.unwrap();
    let d = s.fs.lookup(Ino::ROOT, n("d")).await.unwrap();
    s.fs.rename(Ino::ROOT, n("a"), d.ino, n("b"), 0).await.unwrap();
    assert!(s.store.object("a").is_none());
    assert_eq!(s.store.object("d/b").as_deref(), Some(&b"data"[..]));
    put(&s.store, "c", b"other").await;
    assert_eq!(
        errno(
            s.fs.rename(Ino::ROOT, n("c"), d.ino, n("b"), libc::RENAME_NOREPLACE)
                .await
        ),
        libc::EEXIST
    );
    s.fs.rename(Ino::ROOT, n("c"), d.ino, n("b"), 0).await.unwrap();
    assert_eq!(
        s.store.object("d/b").as_deref(),
        Some(&b"other"[..]),
        "rename replaces the target"
    );
}

#[tokio::test]
async fn rename_of_a_directory_moves_every_key_below_it() {
    let s = setup_with(MemStore::with_page_size(3), |_| {});
    for key in ["src/", "src/1", "src/2", "src/sub/3", "src/sub/4", "src/x y"] {
        put(&s.store, key, key.as_bytes()).await;
    }
    s.fs.rename(Ino::ROOT, n("src"), Ino::ROOT, n("dst"), 0)
        .await
        .unwrap();
    assert_eq!(
        s.store.keys(),
        vec!["dst/", "dst/1", "dst/2", "dst/sub/3", "dst/sub/4", "dst/x y"]
    );
    assert_eq!(s.store.object("dst/sub/3").as_deref(), Some(&b"src/sub/3"[..]));
    let dst = s.fs.lookup(Ino::ROOT, n("dst")).await.unwrap();
    assert_eq!(names(&s.fs, dst.ino).await.len(), 4);
    s.fs.mkdir(Ino::ROOT, n("full")).await.unwrap();
    let full = s.fs.lookup(Ino::ROOT, n("full")).await.unwrap();
    write_file(&s.fs, full.ino, "f", b"1").await;
    assert_eq!(
        errno(s.fs.rename(Ino::ROOT, n("dst"), Ino::ROOT, n("full"), 0).await),
        libc::ENOTEMPTY
    );
}

#[tokio::test]
async fn a_read_only_mount_refuses_every_write_with_erofs() {
    let s = setup_with(MemStore::new(), |c| c.read_only = true);
    put(&s.store, "f", b"1").await;
    put(&s.store, "d/", b"").await;
    let f = s.fs.lookup(Ino::ROOT, n("f")).await.unwrap();
    assert_eq!(errno(s.fs.create(Ino::ROOT, n("new")).await), libc::EROFS);
    assert_eq!(errno(s.fs.mkdir(Ino::ROOT, n("nd")).await), libc::EROFS);
    assert_eq!(errno(s.fs.unlink(Ino::ROOT, n("f")).await), libc::EROFS);
    assert_eq!(errno(s.fs.rmdir(Ino::ROOT, n("d")).await), libc::EROFS);
    assert_eq!(
        errno(s.fs.rename(Ino::ROOT, n("f"), Ino::ROOT, n("g"), 0).await),
        libc::EROFS
    );
    assert_eq!(
        errno(
            s.fs.open(
                f.ino,
                OpenMode {
                    write: true,
                    truncate: false
                }
            )
            .await
        ),
        libc::EROFS
    );
    assert_eq!(
        errno(
            s.fs.setattr(
                f.ino,
                SetAttr {
                    size: Some(0),
                    ..Default::default()
                }
            )
            .await
        ),
        libc::EROFS
    );
    assert_eq!(read_all(&s.fs, f.ino).await.unwrap(), b"1");
    assert_eq!(s.store.keys(), vec!["d/", "f"]);
}

#[tokio::test]
async fn remote_changes_become_visible_after_the_metadata_ttl() {
    // Within the TTL: a TTL far longer than any stall of a loaded machine, so the cached answer
    // cannot have expired between the two lookups.
    let cached = setup();
    assert_eq!(errno(cached.fs.lookup(Ino::ROOT, n("late")).await), libc::ENOENT);
    put(&cached.store, "late", b"v1").await;
    assert_eq!(
        errno(cached.fs.lookup(Ino::ROOT, n("late")).await),
        libc::ENOENT,
        "negative entry trusted for the TTL"
    );
    // After the TTL: a short TTL and waits longer than it (a stall only makes them longer).
    let s = setup_with(MemStore::new(), |c| c.metadata_ttl = EXPIRING_TTL);
    assert_eq!(errno(s.fs.lookup(Ino::ROOT, n("late")).await), libc::ENOENT);
    put(&s.store, "late", b"v1").await;
    tokio::time::sleep(PAST_EXPIRING_TTL).await;
    let attr = s.fs.lookup(Ino::ROOT, n("late")).await.unwrap();
    assert_eq!(attr.size, 2);
    put(&s.store, "late", b"version 2").await;
    tokio::time::sleep(PAST_EXPIRING_TTL).await;
    assert_eq!(s.fs.getattr(attr.ino).await.unwrap().size, 9);
    assert_eq!(
        read_all(&s.fs, attr.ino).await.unwrap(),
        b"version 2",
        "size and data of one version"
    );
}

/// The kernel keeps its page cache across opens only while the version is the same: a re-read
/// of an unchanged object costs no FUSE read, and a new version or a local write drops it.
#[tokio::test]
async fn the_kernel_page_cache_is_kept_across_opens_only_for_the_same_version() {
    let s = setup_with(MemStore::new(), |c| c.metadata_ttl = Duration::ZERO);
    put(&s.store, "f", b"version 1").await;
    let ino = s.fs.lookup(Ino::ROOT, n("f")).await.unwrap().ino;
    let read = OpenMode {
        write: false,
        truncate: false,
    };
    let open_keep = |mode| {
        let fs = &s.fs;
        async move {
            let fh = fs.open(ino, mode).await.unwrap();
            let keep = fs.keep_page_cache(fh);
            fs.release(fh).await.unwrap();
            keep
        }
    };
    assert!(!open_keep(read).await, "first open: nothing cached yet");
    assert!(open_keep(read).await, "same version: keep");
    assert!(open_keep(read).await, "still the same version: keep");

    put(&s.store, "f", b"version 2").await;
    assert!(!open_keep(read).await, "another client replaced the object: drop");
    assert!(open_keep(read).await, "the new version, unchanged since: keep");

    let write = OpenMode {
        write: true,
        truncate: false,
    };
    assert!(!open_keep(write).await, "an open for writing never keeps");
    assert!(
        !open_keep(read).await,
        "after an open for writing the next read drops"
    );
    assert!(open_keep(read).await);
}

/// `touch -d` succeeds and shows the new mtime until the attributes are refreshed from S3;
/// it is not stored (S3's Last-Modified is the mtime), as SEMANTICS.md says.
#[tokio::test]
async fn setting_mtime_shows_until_the_next_refresh_and_is_not_stored() {
    let past = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    async fn set_mtime(s: &Setup, past: std::time::SystemTime) -> Ino {
        put(&s.store, "f", b"data").await;
        let attr = s.fs.lookup(Ino::ROOT, n("f")).await.unwrap();
        let set =
            s.fs.setattr(
                attr.ino,
                SetAttr {
                    mtime: Some(past),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(set.mtime, past);
        attr.ino
    }
    // Within the TTL: one far longer than any stall of a loaded machine.
    let cached = setup();
    let ino = set_mtime(&cached, past).await;
    assert_eq!(
        cached.fs.getattr(ino).await.unwrap().mtime,
        past,
        "within the TTL"
    );
    assert_eq!(cached.store.keys(), vec!["f"], "nothing written to S3");
    // After the TTL: a short TTL and a wait longer than it.
    let s = setup_with(MemStore::new(), |c| c.metadata_ttl = EXPIRING_TTL);
    let ino = set_mtime(&s, past).await;
    assert_eq!(s.store.keys(), vec!["f"], "nothing written to S3");
    tokio::time::sleep(PAST_EXPIRING_TTL).await;
    let refreshed = s.fs.getattr(ino).await.unwrap();
    assert_ne!(refreshed.mtime, past, "after the TTL S3's Last-Modified again");
    assert_eq!(refreshed.size, 4);
}

#[tokio::test]
async fn a_zero_ttl_sees_remote_changes_at_once() {
    let s = setup_with(MemStore::new(), |c| c.metadata_ttl = Duration::ZERO);
    put(&s.store, "f", b"1").await;
    let attr = s.fs.lookup(Ino::ROOT, n("f")).await.unwrap();
    put(&s.store, "f", b"22").await;
    assert_eq!(s.fs.getattr(attr.ino).await.unwrap().size, 2);
    s.store.remove("f");
    assert_eq!(errno(s.fs.lookup(Ino::ROOT, n("f")).await), libc::ENOENT);
}

#[tokio::test]
async fn the_negative_cache_never_hides_a_directory() {
    let s = setup();
    assert_eq!(errno(s.fs.lookup(Ino::ROOT, n("d")).await), libc::ENOENT);
    s.fs.mkdir(Ino::ROOT, n("d")).await.unwrap();
    assert_eq!(s.fs.lookup(Ino::ROOT, n("d")).await.unwrap().kind, Kind::Dir);
    assert_eq!(errno(s.fs.lookup(Ino::ROOT, n("e")).await), libc::ENOENT);
    put(&s.store, "e/child", b"1").await;
    // A listing that shows the directory clears the negative entry, even within the TTL.
    assert!(names(&s.fs, Ino::ROOT).await.contains(&("e".into(), Kind::Dir)));
    assert_eq!(s.fs.lookup(Ino::ROOT, n("e")).await.unwrap().kind, Kind::Dir);
}

#[tokio::test]
async fn own_changes_are_visible_at_once_whatever_the_ttl() {
    let s = setup();
    put(&s.store, "f", b"old").await;
    let f = s.fs.lookup(Ino::ROOT, n("f")).await.unwrap();
    let fh =
        s.fs.open(
            f.ino,
            OpenMode {
                write: true,
                truncate: true,
            },
        )
        .await
        .unwrap();
    s.fs.write(fh, 0, b"much newer").await.unwrap();
    s.fs.release(fh).await.unwrap();
    assert_eq!(s.fs.getattr(f.ino).await.unwrap().size, 10);
    assert_eq!(read_all(&s.fs, f.ino).await.unwrap(), b"much newer");
    write_file(&s.fs, Ino::ROOT, "g", b"g").await;
    assert!(names(&s.fs, Ino::ROOT).await.contains(&("g".into(), Kind::File)));
}

#[tokio::test]
async fn a_replaced_object_gives_an_open_reader_old_bytes_or_estale_never_mixed_bytes() {
    let s = setup_with(MemStore::new(), |c| c.metadata_ttl = Duration::ZERO);
    let old = vec![b'o'; 3 << 20];
    put(&s.store, "f", &old).await;
    let f = s.fs.lookup(Ino::ROOT, n("f")).await.unwrap();
    let fh = s.fs.open(f.ino, OpenMode::default()).await.unwrap();
    assert_eq!(s.fs.read(fh, 0, 3).await.unwrap(), &b"ooo"[..]);
    put(&s.store, "f", &vec![b'N'; 3 << 20]).await;
    // Bytes already fetched for this handle are the old version's...
    assert_eq!(s.fs.read(fh, 3, 8).await.unwrap(), &b"oooooooo"[..]);
    // ...and a read that needs the server again is refused rather than mixed.
    assert_eq!(errno(s.fs.read(fh, 5 << 19, 8).await), libc::ESTALE);
    s.fs.release(fh).await.unwrap();
    let fresh = read_all(&s.fs, f.ino).await.unwrap();
    assert!(
        fresh.iter().all(|b| *b == b'N') && fresh.len() == 3 << 20,
        "a new open sees the new object"
    );
}

#[tokio::test]
async fn store_errors_map_to_errno_and_unavailable_is_eio_not_enoent() {
    let s = setup();
    put(&s.store, "f", b"1").await;
    // A lookup in a directory not listed yet lists it first.
    s.store.fail_next(Op::List, 1);
    assert_eq!(errno(s.fs.lookup(Ino::ROOT, n("f")).await), libc::EIO);
    // With a zero TTL a lookup asks for the one name (HEADs and a one-key listing).
    let zero = setup_with(MemStore::new(), |c| c.metadata_ttl = Duration::ZERO);
    put(&zero.store, "f", b"1").await;
    zero.store.fail_next(Op::Head, 1);
    assert_eq!(errno(zero.fs.lookup(Ino::ROOT, n("f")).await), libc::EIO);
    assert_eq!(zero.fs.lookup(Ino::ROOT, n("f")).await.unwrap().size, 1);
    s.store.fail_next(Op::List, 1);
    let fh = s.fs.opendir(Ino::ROOT).unwrap();
    assert_eq!(errno(s.fs.readdir(fh, 0).await), libc::EIO);
    assert_eq!(
        s.fs.lookup(Ino::ROOT, n("f")).await.unwrap().size,
        1,
        "a failure is not cached"
    );
}

#[tokio::test]
async fn mode_and_owner_are_fixed_by_mount_options() {
    let s = setup();
    put(&s.store, "f", b"1").await;
    let f = s.fs.lookup(Ino::ROOT, n("f")).await.unwrap();
    assert_eq!((f.perm, f.uid, f.gid), (0o644, 1000, 1000));
    let chmod = SetAttr {
        mode: Some(0o100600),
        ..Default::default()
    };
    assert_eq!(errno(s.fs.setattr(f.ino, chmod).await), libc::ENOTSUP);
    let chown = SetAttr {
        uid: Some(0),
        ..Default::default()
    };
    assert_eq!(errno(s.fs.setattr(f.ino, chown).await), libc::ENOTSUP);
    let same = SetAttr {
        mode: Some(0o100644),
        uid: Some(1000),
        ..Default::default()
    };
    s.fs.setattr(f.ino, same).await.unwrap();
    let d = s.fs.mkdir(Ino::ROOT, n("d")).await.unwrap();
    assert_eq!(d.perm, 0o755);
}

#[tokio::test]
async fn rename_exchange_is_refused_with_enotsup() {
    let s = setup();
    put(&s.store, "a", b"1").await;
    put(&s.store, "b", b"2").await;
    assert_eq!(
        errno(
            s.fs.rename(Ino::ROOT, n("a"), Ino::ROOT, n("b"), libc::RENAME_EXCHANGE)
                .await
        ),
        libc::ENOTSUP
    );
}

#[tokio::test]
async fn shutdown_flushes_every_pending_upload() {
    let s = setup();
    let (_, fh) = s.fs.create(Ino::ROOT, n("pending")).await.unwrap();
    s.fs.write(fh, 0, b"unsaved").await.unwrap();
    assert_eq!(s.fs.flush_all().await, 0);
    assert_eq!(s.store.object("pending").as_deref(), Some(&b"unsaved"[..]));
}

#[tokio::test]
async fn on_a_server_without_markers_mkdir_keeps_the_directory_in_the_mount() {
    let s = setup_with(MemStore::flattening_markers(), |_| {});
    let d = s.fs.mkdir(Ino::ROOT, n("made")).await.unwrap();
    assert!(
        s.store.keys().is_empty(),
        "the flattened marker was removed again"
    );
    assert_eq!(names(&s.fs, Ino::ROOT).await, vec![("made".into(), Kind::Dir)]);
    assert_eq!(s.fs.lookup(Ino::ROOT, n("made")).await.unwrap().kind, Kind::Dir);
    let sub = s.fs.mkdir(d.ino, n("sub")).await.unwrap();
    write_file(&s.fs, sub.ino, "child", b"c").await;
    assert_eq!(s.store.keys(), vec!["made/sub/child".to_string()]);
    s.fs.unlink(sub.ino, n("child")).await.unwrap();
    s.fs.rmdir(d.ino, n("sub")).await.unwrap();
    s.fs.rmdir(Ino::ROOT, n("made")).await.unwrap();
    assert_eq!(errno(s.fs.lookup(Ino::ROOT, n("made")).await), libc::ENOENT);
}

#[tokio::test]
async fn reads_go_through_the_block_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = s3mount_sidecar::cache::BlockCache::open(dir.path().join("blocks"), 64 << 20, 4096).unwrap();
    let store = Arc::new(MemStore::new());
    let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    put(&store, "cached", &data).await;
    let read_config = s3mount_sidecar::reader::ReadConfig {
        namespace: "mem".into(),
        ..Default::default()
    };
    let fs = Fs::with_cache(store.clone(), config(&dir), Some(Arc::new(cache)), read_config).unwrap();
    let ino = fs.lookup(Ino::ROOT, n("cached")).await.unwrap().ino;
    assert_eq!(read_all(&fs, ino).await.unwrap(), data);
    // Cache writes happen in the background; wait until every block of the file is in the cache.
    let cache = fs.cache().unwrap();
    let blocks = (data.len() as u64).div_ceil(u64::from(cache.block_size()));
    support::wait_for_blocks(cache, blocks).await;
    let gets = store.request_count(Op::Get);
    assert_eq!(read_all(&fs, ino).await.unwrap(), data);
    assert_eq!(
        store.request_count(Op::Get),
        gets,
        "the second read is served from the cache"
    );
}

#[tokio::test]
async fn statfs_reports_plenty_of_room_and_name_max_255() {
    let s = setup();
    let st = s.fs.statfs();
    assert_eq!(st.namelen, 255);
    assert!(st.bfree > 0 && st.blocks >= st.bfree && st.ffree > 0);
}

#[tokio::test]
async fn readdirplus_carries_the_listing_attributes_without_head() {
    let s = setup();
    put(&s.store, "a", b"12345").await;
    put(&s.store, "d/x", b"1").await;
    let fh = s.fs.opendir(Ino::ROOT).unwrap();
    let entries = s.fs.readdirplus(fh, 0).await.unwrap();
    let got: Vec<(String, Kind, u64)> = entries
        .iter()
        .map(|(_, e, a)| (e.name.clone(), a.kind, a.size))
        .collect();
    assert_eq!(
        got,
        vec![
            (".".into(), Kind::Dir, 0),
            ("..".into(), Kind::Dir, 0),
            ("a".into(), Kind::File, 5),
            ("d".into(), Kind::Dir, 0)
        ]
    );
    assert_eq!(s.store.request_count(Op::Head), 0);
    let inos: Vec<Ino> = entries.iter().skip(2).map(|(_, e, _)| e.ino).collect();
    s.fs.add_lookups(&inos);
    s.fs.forget(inos[0], 1);
    assert_eq!(
        s.fs.getattr(inos[1]).await.unwrap().kind,
        Kind::Dir,
        "a counted entry stays known"
    );
}

#[tokio::test]
async fn sequential_writes_stream_out_as_multipart_while_written() {
    let s = setup();
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
    let (_, fh) = s.fs.create(Ino::ROOT, n("stream")).await.unwrap();
    for (i, chunk) in data.chunks(500).enumerate() {
        s.fs.write(fh, (i * 500) as u64, chunk).await.unwrap();
    }
    assert_eq!(
        s.store.request_count(Op::UploadPart),
        4,
        "every full 1024-byte part is already out"
    );
    assert!(s.store.object("stream").is_none(), "not visible before close");
    s.fs.release(fh).await.unwrap();
    assert_eq!(
        s.store.request_count(Op::UploadPart),
        5,
        "close sends only the tail"
    );
    assert_eq!(s.store.object("stream").as_deref(), Some(&data[..]));
    assert_eq!(s.store.pending_uploads(), 0);
}

#[tokio::test]
async fn a_write_behind_the_streamed_part_falls_back_to_a_whole_upload() {
    let s = setup();
    let (_, fh) = s.fs.create(Ino::ROOT, n("f")).await.unwrap();
    s.fs.write(fh, 0, &[1; 3000]).await.unwrap();
    assert_eq!(s.store.pending_uploads(), 1);
    s.fs.write(fh, 10, b"patched").await.unwrap();
    assert_eq!(s.store.pending_uploads(), 0, "the stream was aborted");
    s.fs.release(fh).await.unwrap();
    let mut expected = vec![1; 3000];
    expected[10..17].copy_from_slice(b"patched");
    assert_eq!(s.store.object("f").as_deref(), Some(&expected[..]));
}

#[tokio::test]
async fn a_failed_part_while_streaming_keeps_the_write_and_uploads_at_close() {
    let s = setup();
    let (_, fh) = s.fs.create(Ino::ROOT, n("f")).await.unwrap();
    s.store.fail_next(Op::UploadPart, 1);
    s.fs.write(fh, 0, &[7; 2500]).await.unwrap();
    assert_eq!(s.store.pending_uploads(), 0, "the failed stream was aborted");
    s.fs.write(fh, 2500, &[8; 100]).await.unwrap();
    s.fs.release(fh).await.unwrap();
    let mut expected = vec![7; 2500];
    expected.extend_from_slice(&[8; 100]);
    assert_eq!(s.store.object("f").as_deref(), Some(&expected[..]));
}

#[tokio::test]
async fn unlink_of_a_file_being_streamed_aborts_its_upload() {
    let s = setup();
    let (_, fh) = s.fs.create(Ino::ROOT, n("f")).await.unwrap();
    s.fs.write(fh, 0, &[1; 3000]).await.unwrap();
    s.fs.unlink(Ino::ROOT, n("f")).await.unwrap();
    assert_eq!(s.store.pending_uploads(), 0);
    let _ = s.fs.release(fh).await;
    assert!(s.store.keys().is_empty());
}

#[tokio::test]
async fn rename_of_a_file_still_open_for_writing_moves_its_current_data() {
    let s = setup();
    for (name, len) in [("small", 100usize), ("large", 5000)] {
        let (_, fh) = s.fs.create(Ino::ROOT, n(name)).await.unwrap();
        s.fs.write(fh, 0, &vec![3; len]).await.unwrap();
        let renamed = format!("{name}-moved");
        s.fs.rename(Ino::ROOT, n(name), Ino::ROOT, n(&renamed), 0)
            .await
            .unwrap();
        s.fs.write(fh, len as u64, b"end").await.unwrap();
        s.fs.release(fh).await.unwrap();
        let mut expected = vec![3; len];
        expected.extend_from_slice(b"end");
        assert!(s.store.object(name).is_none(), "{name}");
        assert_eq!(s.store.object(&renamed).as_deref(), Some(&expected[..]), "{name}");
    }
}

/// A name ending in `.rclonelink` would list as a link under another name: creating one, as a
/// file, directory, link or rename target, is EINVAL; nothing reaches S3.
#[tokio::test]
async fn names_ending_in_the_link_suffix_cannot_be_created() {
    let s = setup();
    assert_eq!(
        errno(s.fs.create(Ino::ROOT, n("note.rclonelink")).await),
        libc::EINVAL
    );
    assert_eq!(
        errno(s.fs.mkdir(Ino::ROOT, n("d.rclonelink")).await),
        libc::EINVAL
    );
    assert_eq!(
        errno(
            s.fs.symlink(Ino::ROOT, n("l.rclonelink"), std::path::Path::new("t"))
                .await
        ),
        libc::EINVAL
    );
    write_file(&s.fs, Ino::ROOT, "plain", b"x").await;
    assert_eq!(
        errno(
            s.fs.rename(Ino::ROOT, n("plain"), Ino::ROOT, n("plain.rclonelink"), 0)
                .await
        ),
        libc::EINVAL
    );
    assert_eq!(s.store.keys(), vec!["plain"]);
}

#[tokio::test]
async fn symbolic_links_are_stored_as_rclonelink_objects() {
    let s = setup();
    let link =
        s.fs.symlink(Ino::ROOT, n("l"), std::path::Path::new("../some/where"))
            .await
            .unwrap();
    assert_eq!(link.kind, Kind::Symlink);
    assert_eq!(
        s.store.object("l.rclonelink").as_deref(),
        Some(&b"../some/where"[..])
    );
    assert_eq!(s.fs.readlink(link.ino).await.unwrap(), &b"../some/where"[..]);
    assert_eq!(names(&s.fs, Ino::ROOT).await, vec![("l".into(), Kind::Symlink)]);
    assert_eq!(
        errno(s.fs.symlink(Ino::ROOT, n("l"), std::path::Path::new("x")).await),
        libc::EEXIST
    );
    s.fs.rename(Ino::ROOT, n("l"), Ino::ROOT, n("m"), 0)
        .await
        .unwrap();
    assert_eq!(s.store.keys(), vec!["m.rclonelink".to_string()]);
    s.fs.unlink(Ino::ROOT, n("m")).await.unwrap();
    assert!(s.store.keys().is_empty());
}

#[tokio::test]
async fn a_file_hides_a_link_of_the_same_name_and_replacing_one_removes_the_other() {
    let s = setup();
    put(&s.store, "x", b"file").await;
    put(&s.store, "x.rclonelink", b"target").await;
    assert_eq!(names(&s.fs, Ino::ROOT).await, vec![("x".into(), Kind::File)]);
    assert_eq!(s.fs.lookup(Ino::ROOT, n("x")).await.unwrap().kind, Kind::File);
    s.store.remove("x.rclonelink");
    s.fs.symlink(Ino::ROOT, n("l"), std::path::Path::new("t"))
        .await
        .unwrap();
    s.fs.rename(Ino::ROOT, n("l"), Ino::ROOT, n("x"), 0)
        .await
        .unwrap();
    assert_eq!(
        s.store.keys(),
        vec!["x.rclonelink".to_string()],
        "the replaced file is gone"
    );
    write_file(&s.fs, Ino::ROOT, "f", b"data").await;
    s.fs.rename(Ino::ROOT, n("f"), Ino::ROOT, n("x"), 0)
        .await
        .unwrap();
    assert_eq!(s.store.keys(), vec!["x".to_string()], "the replaced link is gone");
}

/// Every request the store saw, summed over the operations a lookup may send.
fn lookup_requests(store: &MemStore) -> u64 {
    store.request_count(Op::Head) + store.request_count(Op::List)
}

#[tokio::test]
async fn lookups_in_a_small_directory_cost_one_listing_then_nothing_within_the_ttl() {
    let s = setup();
    put(&s.store, "d/a", b"1").await;
    put(&s.store, "d/sub/x", b"2").await;
    let d = s.fs.lookup(Ino::ROOT, n("d")).await.unwrap();
    let before = lookup_requests(&s.store);
    assert_eq!(s.fs.lookup(d.ino, n("a")).await.unwrap().size, 1);
    assert_eq!(
        lookup_requests(&s.store),
        before + 1,
        "the first lookup in a directory lists it (one page)"
    );
    assert_eq!(s.fs.lookup(d.ino, n("sub")).await.unwrap().kind, Kind::Dir);
    assert_eq!(errno(s.fs.lookup(d.ino, n("nope")).await), libc::ENOENT);
    // The files an app creates one after another: a lookup (ENOENT) then a create, each free.
    for i in 0..20 {
        let name = format!("new{i}");
        assert_eq!(errno(s.fs.lookup(d.ino, n(&name)).await), libc::ENOENT);
        let (_, fh) = s.fs.create(d.ino, n(&name)).await.unwrap();
        s.fs.write(fh, 0, b"hello").await.unwrap();
        s.fs.release(fh).await.unwrap();
    }
    assert_eq!(
        lookup_requests(&s.store),
        before + 1,
        "lookups answered by the listing"
    );
    assert_eq!(
        s.store.request_count(Op::Put),
        2 + 20,
        "the two seeded, then one each"
    );
    // Names made here are in the listing: found again even once the kernel forgot them.
    let again = s.fs.lookup(d.ino, n("new7")).await.unwrap();
    s.fs.forget(again.ino, 2);
    assert_eq!(s.fs.lookup(d.ino, n("new7")).await.unwrap().size, 5);
    // Removed names are missing at once.
    s.fs.unlink(d.ino, n("new3")).await.unwrap();
    assert_eq!(errno(s.fs.lookup(d.ino, n("new3")).await), libc::ENOENT);
    // Renamed: the old name goes, the new one comes.
    s.fs.rename(d.ino, n("new4"), d.ino, n("moved"), 0).await.unwrap();
    assert_eq!(errno(s.fs.lookup(d.ino, n("new4")).await), libc::ENOENT);
    assert_eq!(s.fs.lookup(d.ino, n("moved")).await.unwrap().size, 5);
    let m = s.fs.mkdir(d.ino, n("made")).await.unwrap();
    s.fs.forget(m.ino, 1);
    assert_eq!(s.fs.lookup(d.ino, n("made")).await.unwrap().kind, Kind::Dir);
}

#[tokio::test]
async fn a_name_another_client_adds_to_a_listed_directory_shows_after_the_ttl() {
    // Within the TTL: one far longer than any stall of a loaded machine.
    let cached = setup();
    put(&cached.store, "d/a", b"1").await;
    let d = cached.fs.lookup(Ino::ROOT, n("d")).await.unwrap();
    assert_eq!(errno(cached.fs.lookup(d.ino, n("late")).await), libc::ENOENT);
    put(&cached.store, "d/late", b"22").await;
    put(&cached.store, "d/later/x", b"3").await;
    assert_eq!(
        errno(cached.fs.lookup(d.ino, n("late")).await),
        libc::ENOENT,
        "within the TTL the listing answers"
    );
    // After the TTL: a short TTL and a wait longer than it.
    let s = setup_with(MemStore::new(), |c| c.metadata_ttl = EXPIRING_TTL);
    put(&s.store, "d/a", b"1").await;
    let d = s.fs.lookup(Ino::ROOT, n("d")).await.unwrap();
    assert_eq!(errno(s.fs.lookup(d.ino, n("late")).await), libc::ENOENT);
    put(&s.store, "d/late", b"22").await;
    put(&s.store, "d/later/x", b"3").await;
    tokio::time::sleep(PAST_EXPIRING_TTL).await;
    assert_eq!(s.fs.lookup(d.ino, n("late")).await.unwrap().size, 2);
    assert_eq!(s.fs.lookup(d.ino, n("later")).await.unwrap().kind, Kind::Dir);
}

#[tokio::test]
async fn lookups_in_a_directory_larger_than_a_page_ask_for_the_one_name() {
    let s = setup_with(MemStore::with_page_size(4), |_| {});
    for i in 0..10 {
        put(&s.store, &format!("big/f{i}"), b"x").await;
    }
    let big = s.fs.lookup(Ino::ROOT, n("big")).await.unwrap();
    // f9 is past the first page: one listing page, then the lookup of the one name.
    assert_eq!(s.fs.lookup(big.ino, n("f9")).await.unwrap().size, 1);
    assert_eq!(errno(s.fs.lookup(big.ino, n("nope")).await), libc::ENOENT);
    let before = (s.store.request_count(Op::List), s.store.request_count(Op::Head));
    assert_eq!(s.fs.lookup(big.ino, n("f8")).await.unwrap().size, 1);
    assert_eq!(
        (s.store.request_count(Op::List), s.store.request_count(Op::Head)),
        (before.0 + 1, before.1 + 2),
        "a directory known to be large is not listed again on lookup"
    );
    // A full readdir makes it known whole, so missing names cost nothing.
    names(&s.fs, big.ino).await;
    let listed = lookup_requests(&s.store);
    assert_eq!(errno(s.fs.lookup(big.ino, n("absent")).await), libc::ENOENT);
    assert_eq!(lookup_requests(&s.store), listed);
}
