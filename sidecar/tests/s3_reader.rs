//! The read path over a real S3 server (moto and rclone), with request counts asserted.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use s3mount_sidecar::cache::BlockCache;
use s3mount_sidecar::reader::{RANDOM_ALIGN, ReadConfig, ReadPath};
use s3mount_sidecar::s3::{Op, S3Store};
use s3mount_sidecar::store::{ObjectMeta, ObjectStore, StoreError};
use support::{S3Server, ServerKind, wait_for_blocks};

const MIB: u64 = 1024 * 1024;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 7) as u8).wrapping_mul(13).wrapping_add(seed ^ (i as u8)))
        .collect()
}

fn config() -> ReadConfig {
    ReadConfig {
        namespace: "test".into(),
        part_size: 4 * MIB,
        ..ReadConfig::default()
    }
}

async fn put(store: &S3Store, key: &str, body: &[u8]) -> ObjectMeta {
    store.put(key, Bytes::from(body.to_vec())).await.unwrap();
    store.head(key).await.unwrap().unwrap()
}

#[tokio::test]
async fn a_small_file_costs_one_get_and_a_second_open_of_the_same_etag_costs_none() {
    for server in S3Server::both() {
        let kind = server.kind;
        let store = Arc::new(server.store());
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(BlockCache::open(dir.path(), 64 * MIB, 1024 * 1024).unwrap());
        let body = data(300_000, 1);
        let meta = put(&store, "small", &body).await;
        let path = ReadPath::new(store.clone(), Some(cache.clone()), config());

        let reader = path.open(&meta);
        let mut got = Vec::new();
        let mut off = 0u64;
        loop {
            let chunk = reader.read(off, 128 * 1024).await.unwrap();
            if chunk.is_empty() {
                break;
            }
            off += chunk.len() as u64;
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, body, "{kind:?}");
        assert_eq!(store.request_count(Op::Get), 1, "{kind:?}");
        wait_for_blocks(&cache, 1).await;

        let again = path.open(&meta);
        assert_eq!(&again.read(0, 300_000).await.unwrap()[..], &body[..]);
        assert_eq!(
            store.request_count(Op::Get),
            1,
            "{kind:?}: second open served from the cache"
        );
        assert!(cache.stats().hits >= 1);

        // A cache that survives a restart serves a new read path too.
        drop((path, again, reader));
        let reopened = Arc::new(BlockCache::open(dir.path(), 64 * MIB, 1024 * 1024).unwrap());
        let path = ReadPath::new(store.clone(), Some(reopened), config());
        assert_eq!(
            &path.open(&meta).read(1000, 5000).await.unwrap()[..],
            &body[1000..6000]
        );
        assert_eq!(
            store.request_count(Op::Get),
            1,
            "{kind:?}: restarted cache serves"
        );
    }
}

#[tokio::test]
async fn sequential_reads_return_exact_bytes_with_few_large_parallel_gets() {
    let server = S3Server::start(ServerKind::Moto);
    let store = Arc::new(server.store());
    let body = data(40 * MIB as usize + 12345, 2);
    let meta = put(&store, "big", &body).await;
    let path = ReadPath::new(store.clone(), None, config());
    let reader = path.open(&meta);
    let mut off = 0u64;
    while off < meta.size {
        let chunk = reader.read(off, 128 * 1024).await.unwrap();
        assert_eq!(
            &chunk[..],
            &body[off as usize..off as usize + chunk.len()],
            "at {off}"
        );
        assert!(!chunk.is_empty());
        off += chunk.len() as u64;
    }
    assert!(
        reader.read(off, 4096).await.unwrap().is_empty(),
        "EOF is an empty read"
    );
    let gets = store.request_count(Op::Get);
    // 41 blocks of 1 MiB; read-ahead merges them into parts of up to 4 MiB.
    assert!(gets <= 16, "{gets} GETs for 41 MiB");
    let (down, _) = store.bytes_transferred();
    assert!(down <= meta.size + MIB, "downloaded {down} for {}", meta.size);
}

#[tokio::test]
async fn random_reads_fetch_only_their_aligned_bytes_without_a_cache() {
    let server = S3Server::start(ServerKind::Moto);
    let store = Arc::new(server.store());
    let body = data(32 * MIB as usize, 3);
    let meta = put(&store, "random", &body).await;
    let path = ReadPath::new(store.clone(), None, config());
    let reader = path.open(&meta);
    let (before, _) = store.bytes_transferred();
    let offsets = [20 * MIB + 5, 3 * MIB + 100, 27 * MIB, 9 * MIB + 999_000, MIB / 2];
    let mut expected = 0u64;
    for &o in &offsets {
        let got = reader.read(o, 256 * 1024).await.unwrap();
        assert_eq!(&got[..], &body[o as usize..o as usize + 256 * 1024]);
        let end = o + 256 * 1024;
        expected += end.div_ceil(RANDOM_ALIGN) * RANDOM_ALIGN - o / RANDOM_ALIGN * RANDOM_ALIGN;
    }
    let (after, _) = store.bytes_transferred();
    assert_eq!(
        after - before,
        expected,
        "each read fetches its bytes widened to the alignment"
    );
    assert_eq!(store.request_count(Op::Get), offsets.len() as u64);
}

/// Issue 7: read amplification <= 1.25x for 256 KiB random reads, and warm random reads are
/// served by the cache with no request.
#[tokio::test]
async fn random_256k_reads_amplify_at_most_1_25x_and_repeat_from_the_cache_with_no_get() {
    let server = S3Server::start(ServerKind::Moto);
    let store = Arc::new(server.store());
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(BlockCache::open(dir.path(), 256 * MIB, 1024 * 1024).unwrap());
    let body = data(64 * MIB as usize, 5);
    let meta = put(&store, "random64", &body).await;
    let path = ReadPath::new(store.clone(), Some(cache.clone()), config());
    // A fixed xorshift sequence of 4 KiB-aligned offsets, like the kernel sends.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let len = 256 * 1024u64;
    let offsets: Vec<u64> = (0..64)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (meta.size - len)) / 4096 * 4096
        })
        .collect();
    let reader = path.open(&meta);
    let (before, _) = store.bytes_transferred();
    let gets_before = store.request_count(Op::Get);
    for &o in &offsets {
        let got = reader.read(o, len as u32).await.unwrap();
        assert!(got[..] == body[o as usize..(o + len) as usize], "bytes at {o}");
    }
    let fetched = store.bytes_transferred().0 - before;
    let asked = len * offsets.len() as u64;
    let amplification = fetched as f64 / asked as f64;
    eprintln!("random 256 KiB reads: fetched {fetched} for {asked} read: {amplification:.3}x");
    assert!(amplification <= 1.25, "amplification {amplification:.3}x");
    assert!(store.request_count(Op::Get) > gets_before);

    // The fills run in the background: wait until every fetched byte is in the cache.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.stats().bytes_written < fetched {
        assert!(Instant::now() < deadline, "cache fill: {:?}", cache.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gets = store.request_count(Op::Get);
    let hit_before = cache.stats().bytes_hit;
    for reader in [reader, path.open(&meta)] {
        for &o in &offsets {
            let got = reader.read(o, len as u32).await.unwrap();
            assert!(
                got[..] == body[o as usize..(o + len) as usize],
                "warm bytes at {o}"
            );
        }
    }
    assert_eq!(
        store.request_count(Op::Get),
        gets,
        "warm random reads cost no GET"
    );
    assert!(cache.stats().bytes_hit - hit_before >= 2 * asked);

    // A sequential read over a block cached only in part fetches it and gets exact bytes.
    let o = offsets[0] / MIB * MIB;
    let seq = path.open(&meta);
    let got = seq.read(o, MIB as u32).await.unwrap();
    assert!(got[..] == body[o as usize..(o + MIB) as usize]);
}

#[tokio::test]
async fn a_replaced_object_gives_precondition_failed_never_mixed_bytes() {
    for server in S3Server::both() {
        let kind = server.kind;
        let store = Arc::new(server.store());
        let old = data(6 * MIB as usize, 4);
        let meta = put(&store, "replaced", &old).await;
        let cfg = ReadConfig {
            initial_window: MIB,
            max_window: MIB,
            ..config()
        };
        let path = ReadPath::new(store.clone(), None, cfg);
        let reader = path.open(&meta);
        let first = reader.read(0, 4096).await.unwrap();
        assert_eq!(&first[..], &old[..4096]);
        store
            .put("replaced", Bytes::from(data(6 * MIB as usize, 99)))
            .await
            .unwrap();
        // Reads far from what was fetched must not mix in the new object.
        let err = reader.read(5 * MIB, 4096).await.unwrap_err();
        assert!(
            matches!(err, StoreError::PreconditionFailed(_)),
            "{kind:?}: {err:?}"
        );
        // A new open with the new metadata sees the new object.
        let new_meta = store.head("replaced").await.unwrap().unwrap();
        let fresh = path.open(&new_meta).read(5 * MIB, 4096).await.unwrap();
        assert_eq!(
            &fresh[..],
            &data(6 * MIB as usize, 99)[5 * MIB as usize..5 * MIB as usize + 4096]
        );
    }
}

/// A read that failed after every retry is answered again from the reader's memory for a short
/// time (the kernel asks again at once for a failed read-ahead: no second wait on a dead S3);
/// another reader, a read elsewhere, or the same read once the memory has passed asks S3 again,
/// and a success forgets every remembered failure. Read-ahead blocks of a failed part do not
/// keep the failure.
#[tokio::test]
async fn a_failed_read_is_remembered_briefly_by_its_reader_only() {
    use s3mount_sidecar::mem_store::{MemStore, Op as MemOp};
    let store = Arc::new(MemStore::new());
    let body = data(3 * MIB as usize + 5000, 9);
    store.put("flaky", Bytes::from(body.clone())).await.unwrap();
    let meta = store.head("flaky").await.unwrap().unwrap();
    let gets = || store.request_count(MemOp::Get);
    let fails = |r: &Result<Bytes, StoreError>| matches!(r, Err(StoreError::Unavailable { .. }));

    let remembering_for = |failure_memory| {
        ReadPath::new(
            store.clone(),
            None,
            ReadConfig {
                failure_memory,
                ..config()
            },
        )
    };
    // A memory long enough that no stall of this machine can outlast it.
    let long = remembering_for(Duration::from_secs(60));
    let reader = long.open(&meta);
    store.fail_next(MemOp::Get, 1);
    let first = reader.read(0, 128 * 1024).await;
    assert!(fails(&first), "{first:?}");
    let asked = gets();
    // The same range, and ranges overlapping it: the same error, no request.
    for (offset, len) in [(0, 128 * 1024), (64 * 1024, 128 * 1024), (127 * 1024, 4096)] {
        let again = reader.read(offset, len).await;
        assert!(fails(&again), "{offset}+{len}: {again:?}");
    }
    assert_eq!(gets(), asked, "remembered, not asked again");
    // Empty reads and reads at the end are not failures.
    assert!(reader.read(0, 0).await.unwrap().is_empty());
    assert!(reader.read(meta.size, 4096).await.unwrap().is_empty());
    // Another reader of the same object asks S3, and is served.
    assert_eq!(&long.open(&meta).read(0, 4096).await.unwrap()[..], &body[..4096]);
    // A read elsewhere asks S3 (the block after the failed read was in the same failed part:
    // it does not keep that failure); its success forgets the remembered failure.
    let next = reader.read(MIB, 4096).await;
    assert_eq!(&next.unwrap()[..], &body[MIB as usize..MIB as usize + 4096]);
    assert_eq!(&reader.read(0, 4096).await.unwrap()[..], &body[..4096]);

    // With a short memory, the failed range is asked again once the memory has passed.
    let short = remembering_for(Duration::from_millis(100));
    let reader = short.open(&meta);
    store.fail_next(MemOp::Get, 1);
    assert!(fails(&reader.read(2 * MIB, 4096).await));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        &reader.read(2 * MIB, 4096).await.unwrap()[..],
        &body[2 * MIB as usize..2 * MIB as usize + 4096]
    );
}
