//! `S3Store` against real servers: rclone's and moto's, both started by the test.

mod support;

use bytes::Bytes;
use s3mount_sidecar::s3::{Op, S3Store};
use s3mount_sidecar::store::{ObjectStore, StoreError};
use support::{S3Server, ServerKind};

/// Keys whose every byte must survive the path, the signature and the listing.
const ODD_KEYS: &[&str] = &[
    "odd/with space.txt",
    "odd/percent%25and%literal",
    "odd/plus+sign",
    "odd/hash#and?question",
    "odd/quotes\"double'single",
    "odd/non-ascii é ü 日本語",
    "odd/amp&eq=semi;colon,comma",
    "odd/tilde~star*bang!(paren)",
];

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn list_all(store: &S3Store, prefix: &str, max_keys: Option<u32>) -> (Vec<String>, usize) {
    let mut keys = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let page = store
            .list_page(prefix, None, token.as_deref(), None, max_keys)
            .await
            .unwrap();
        pages += 1;
        keys.extend(page.objects.into_iter().map(|o| o.key));
        match page.next_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    (keys, pages)
}

#[tokio::test]
async fn every_store_method_works_on_both_servers() {
    for server in S3Server::both() {
        let kind = server.kind;
        let store = server.store();
        let body = data(3000, 7);
        let meta = store
            .put("dir/file.bin", Bytes::from(body.clone()))
            .await
            .unwrap();
        assert_eq!(meta.size, 3000, "{kind:?}");
        assert!(!meta.etag.is_empty());
        assert_eq!(
            server.get_direct("dir/file.bin").as_deref(),
            Some(&body[..]),
            "{kind:?}"
        );

        let head = store
            .head("dir/file.bin")
            .await
            .unwrap()
            .expect("head finds the object");
        assert_eq!((head.size, &head.etag), (3000, &meta.etag), "{kind:?}");
        assert!(head.last_modified.is_some());
        assert_eq!(store.head("dir/missing").await.unwrap(), None);

        let all = store
            .get_range("dir/file.bin", 0..3000, Some(&meta.etag))
            .await
            .unwrap();
        assert_eq!(&all[..], &body[..]);
        let mid = store.get_range("dir/file.bin", 1000..1010, None).await.unwrap();
        assert_eq!(&mid[..], &body[1000..1010]);
        // A range past the end is short at EOF, not an error.
        let tail = store.get_range("dir/file.bin", 2990..5000, None).await.unwrap();
        assert_eq!(&tail[..], &body[2990..]);

        store.put("dir/sub/x", Bytes::from_static(b"x")).await.unwrap();
        let page = store
            .list_page("dir/", Some("/"), None, None, None)
            .await
            .unwrap();
        let keys: Vec<_> = page.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, vec!["dir/file.bin"], "{kind:?}");
        assert_eq!(page.common_prefixes, vec!["dir/sub/".to_string()], "{kind:?}");
        assert_eq!(page.objects[0].size, 3000);

        let copied = store.copy("dir/file.bin", "dir/copy.bin", 3000).await.unwrap();
        assert_eq!(copied.size, 3000);
        assert_eq!(
            server.get_direct("dir/copy.bin").as_deref(),
            Some(&body[..]),
            "{kind:?}"
        );

        store.delete("dir/copy.bin").await.unwrap();
        assert_eq!(store.head("dir/copy.bin").await.unwrap(), None, "{kind:?}");
        // Deleting a missing key is not an error.
        store.delete("dir/copy.bin").await.unwrap();

        let counts = store.request_counts();
        assert_eq!(counts["PUT"], 2, "{kind:?} {counts:?}");
        assert_eq!(counts["COPY"], 1);
        assert_eq!(counts["LIST"], 1);
        assert_eq!(counts["DELETE"], 2);
    }
}

#[tokio::test]
async fn odd_keys_round_trip_exactly_through_path_signature_and_listing() {
    for server in S3Server::both() {
        let kind = server.kind;
        let store = server.store();
        for (i, key) in ODD_KEYS.iter().enumerate() {
            server.put_direct(key, format!("direct {i}").as_bytes());
        }
        let (mut listed, _) = list_all(&store, "odd/", None).await;
        listed.sort();
        let mut expected: Vec<String> = ODD_KEYS.iter().map(|k| k.to_string()).collect();
        expected.sort();
        assert_eq!(listed, expected, "{kind:?}");
        for (i, key) in ODD_KEYS.iter().enumerate() {
            let got = store
                .get_range(key, 0..100, None)
                .await
                .unwrap_or_else(|e| panic!("{kind:?} {key:?}: {e}"));
            assert_eq!(&got[..], format!("direct {i}").as_bytes(), "{kind:?} {key:?}");
            let head = store
                .head(key)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{kind:?} head {key:?}"));
            assert_eq!(head.key, *key);
            store.put(key, Bytes::from(format!("ours {i}"))).await.unwrap();
            assert_eq!(
                server.get_direct(key),
                Some(format!("ours {i}").into_bytes()),
                "{kind:?} {key:?}"
            );
        }
        // A prefix with odd bytes in it is sent and matched exactly too.
        let (keys, _) = list_all(&store, "odd/hash#", None).await;
        assert_eq!(keys, vec!["odd/hash#and?question".to_string()], "{kind:?}");
        for key in ODD_KEYS {
            store.delete(key).await.unwrap();
            assert_eq!(server.get_direct(key), None, "{kind:?} {key:?}");
        }
    }
}

#[tokio::test]
async fn listing_of_more_than_1000_keys_follows_continuation_tokens() {
    let moto = S3Server::start(ServerKind::Moto);
    let store = moto.store();
    let mut expected: Vec<String> = (0..1105).map(|i| format!("many/key-{i:05}")).collect();
    for key in &expected {
        moto.put_direct(key, b"m");
    }
    let (keys, pages) = list_all(&store, "many/", None).await;
    expected.sort();
    assert_eq!(keys, expected);
    assert_eq!(pages, 2, "1105 keys in pages of 1000");
    assert_eq!(store.request_count(Op::List), 2);

    // rclone with small pages: the same protocol on the other server.
    let rclone = S3Server::start(ServerKind::Rclone);
    let store = rclone.store();
    let expected: Vec<String> = (0..25).map(|i| format!("few/k{i:03}")).collect();
    for key in &expected {
        rclone.put_direct(key, b"r");
    }
    let (keys, pages) = list_all(&store, "few/", Some(10)).await;
    assert_eq!(keys, expected);
    assert_eq!(pages, 3);
}

#[tokio::test]
async fn missing_key_is_not_found_and_a_changed_etag_is_precondition_failed() {
    for server in S3Server::both() {
        let kind = server.kind;
        let store = server.store();
        let err = store.get_range("nope", 0..10, None).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{kind:?}: {err:?}");

        let old = store
            .put("changing", Bytes::from_static(b"old contents"))
            .await
            .unwrap();
        let new = store
            .put("changing", Bytes::from_static(b"new contents!"))
            .await
            .unwrap();
        assert_ne!(old.etag, new.etag);
        let err = store
            .get_range("changing", 0..5, Some(&old.etag))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::PreconditionFailed(_)),
            "{kind:?}: {err:?}"
        );
        let ok = store.get_range("changing", 0..3, Some(&new.etag)).await.unwrap();
        assert_eq!(&ok[..], b"new");
    }
}

#[tokio::test]
async fn multipart_upload_and_complete_give_the_concatenated_object() {
    for server in S3Server::both() {
        let kind = server.kind;
        let store = server.store();
        let part1 = data(5 * 1024 * 1024, 1);
        let part2 = data(12345, 2);
        let id = store.create_multipart("mpu/obj").await.unwrap();
        let p1 = store
            .upload_part("mpu/obj", &id, 1, Bytes::from(part1.clone()))
            .await
            .unwrap();
        let p2 = store
            .upload_part("mpu/obj", &id, 2, Bytes::from(part2.clone()))
            .await
            .unwrap();
        let meta = store.complete_multipart("mpu/obj", &id, &[p1, p2]).await.unwrap();
        assert_eq!(meta.size, (part1.len() + part2.len()) as u64, "{kind:?}");
        let mut expected = part1.clone();
        expected.extend_from_slice(&part2);
        assert_eq!(server.get_direct("mpu/obj"), Some(expected), "{kind:?}");

        let id = store.create_multipart("mpu/aborted").await.unwrap();
        store
            .upload_part("mpu/aborted", &id, 1, Bytes::from_static(b"zz"))
            .await
            .unwrap();
        store.abort_multipart("mpu/aborted", &id).await.unwrap();
        assert_eq!(server.get_direct("mpu/aborted"), None, "{kind:?}");
        let counts = store.request_counts();
        assert_eq!(
            (counts["MPU_CREATE"], counts["MPU_PART"], counts["MPU_COMPLETE"]),
            (2, 3, 1),
            "{kind:?}"
        );
        assert_eq!(counts["MPU_ABORT"], 1);
        assert_eq!(counts["HEAD"], 0, "completing an upload needs no HEAD");
    }
}

/// A client of `server` whose single-copy limit is 6 MiB (S3's is 5 GiB), with 5 MiB parts.
fn small_copy_limit(server: &S3Server) -> S3Store {
    let mut cfg = server.config();
    cfg.multipart_copy_threshold = 6 * 1024 * 1024;
    cfg.multipart_copy_part_size = 5 * 1024 * 1024;
    S3Store::new(cfg).unwrap()
}

#[tokio::test]
async fn copy_above_the_threshold_uses_multipart_upload_part_copy() {
    // UploadPartCopy is an S3 feature rclone's server lacks; moto implements it.
    let server = S3Server::start(ServerKind::Moto);
    let store = small_copy_limit(&server);
    let body = data(11 * 1024 * 1024 + 17, 9);
    store.put("big/src", Bytes::from(body.clone())).await.unwrap();
    let meta = store
        .copy("big/src", "big/dst with space", body.len() as u64)
        .await
        .unwrap();
    assert_eq!(meta.size, body.len() as u64);
    assert_eq!(server.get_direct("big/dst with space"), Some(body));
    let counts = store.request_counts();
    assert_eq!(counts["COPY"], 0);
    assert_eq!(
        (counts["MPU_CREATE"], counts["MPU_PART"], counts["MPU_COMPLETE"]),
        (1, 3, 1),
        "{counts:?}"
    );
}

/// A rename through the filesystem of a file above the single-copy limit goes by multipart
/// UploadPartCopy, then deletes the old key; the new key has the exact bytes (the threshold is
/// lowered from S3's 5 GiB so that the test stays small).
#[tokio::test]
async fn rename_through_the_filesystem_above_the_copy_limit_uses_multipart_copy() {
    use std::ffi::OsStr;
    use std::sync::Arc;

    use s3mount_sidecar::fs::inode::Ino;
    use s3mount_sidecar::fs::{Fs, FsConfig};

    let server = S3Server::start(ServerKind::Moto);
    let store = Arc::new(small_copy_limit(&server));
    let body = data(12 * 1024 * 1024 + 5, 3);
    store
        .put("models/v1.bin", Bytes::from(body.clone()))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fs = Fs::new(
        store.clone(),
        FsConfig {
            metadata_ttl: std::time::Duration::from_secs(60),
            ..FsConfig::new(dir.path().join("staging"))
        },
    )
    .unwrap();
    let models = fs.lookup(Ino::ROOT, OsStr::new("models")).await.unwrap();
    fs.lookup(models.ino, OsStr::new("v1.bin")).await.unwrap();
    let before = store.request_counts();
    fs.rename(
        models.ino,
        OsStr::new("v1.bin"),
        models.ino,
        OsStr::new("v2 final.bin"),
        0,
    )
    .await
    .unwrap();
    assert_eq!(server.get_direct("models/v2 final.bin"), Some(body));
    assert_eq!(server.get_direct("models/v1.bin"), None, "the old key is deleted");
    let after = store.request_counts();
    let delta = |op: &str| after.get(op).copied().unwrap_or(0) - before.get(op).copied().unwrap_or(0);
    assert_eq!(delta("COPY"), 0, "no single CopyObject above the limit");
    assert_eq!(
        (delta("MPU_CREATE"), delta("MPU_PART"), delta("MPU_COMPLETE")),
        (1, 3, 1)
    );
}
