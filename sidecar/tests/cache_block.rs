//! The block cache on a real directory: bound, eviction, corruption, restart, concurrency.

use std::sync::Arc;

use s3mount_sidecar::cache::{BlockCache, BlockId};

const BS: u32 = 4096;

fn id(key: &str, etag: &str, index: u64) -> BlockId {
    BlockId {
        bucket: "b".into(),
        key: key.into(),
        etag: etag.into(),
        index,
    }
}

fn block(seed: u8) -> Vec<u8> {
    (0..BS as usize).map(|i| (i as u8).wrapping_add(seed)).collect()
}

#[test]
fn a_stored_block_is_served_only_for_the_same_key_etag_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlockCache::open(dir.path(), 1 << 20, BS).unwrap();
    cache.put(&id("k", "\"e1\"", 2), &block(1)).unwrap();
    assert_eq!(cache.get(&id("k", "\"e1\"", 2)).as_deref(), Some(&block(1)[..]));
    assert_eq!(
        cache.get(&id("k", "\"e2\"", 2)),
        None,
        "another ETag is another object version"
    );
    assert_eq!(cache.get(&id("k", "\"e1\"", 3)), None);
    assert_eq!(cache.get(&id("k2", "\"e1\"", 2)), None);
    let s = cache.stats();
    assert_eq!(
        (s.hits, s.misses, s.bytes_hit, s.blocks),
        (1, 3, u64::from(BS), 1)
    );
}

#[test]
fn total_size_stays_within_the_bound_by_evicting_the_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    // Room for three blocks with their headers, not four.
    let cache = BlockCache::open(dir.path(), 3 * (u64::from(BS) + 100), BS).unwrap();
    for i in 0..3 {
        cache.put(&id("k", "e", i), &block(i as u8)).unwrap();
    }
    // Touch block 0 so block 1 is the least recently used.
    assert!(cache.get(&id("k", "e", 0)).is_some());
    cache.put(&id("k", "e", 3), &block(3)).unwrap();
    let s = cache.stats();
    assert!(s.size_bytes <= cache.max_bytes(), "{s:?}");
    assert_eq!((s.blocks, s.evictions), (3, 1));
    assert!(cache.get(&id("k", "e", 1)).is_none(), "LRU block evicted");
    assert!(
        !cache.block_path(&id("k", "e", 1)).exists(),
        "evicted file removed"
    );
    for i in [0, 2, 3] {
        assert_eq!(cache.get(&id("k", "e", i)).as_deref(), Some(&block(i as u8)[..]));
    }
}

#[test]
fn a_corrupt_or_truncated_block_is_discarded_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlockCache::open(dir.path(), 1 << 20, BS).unwrap();
    let (a, b) = (id("k", "e", 0), id("k", "e", 1));
    cache.put(&a, &block(1)).unwrap();
    cache.put(&b, &block(2)).unwrap();
    let mut bytes = std::fs::read(cache.block_path(&a)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(cache.block_path(&a), &bytes).unwrap();
    let bytes = std::fs::read(cache.block_path(&b)).unwrap();
    std::fs::write(cache.block_path(&b), &bytes[..bytes.len() / 2]).unwrap();
    assert_eq!(cache.get(&a), None);
    assert_eq!(cache.get(&b), None);
    assert!(!cache.block_path(&a).exists() && !cache.block_path(&b).exists());
    let s = cache.stats();
    assert_eq!((s.corrupt, s.blocks, s.size_bytes), (2, 0, 0));
}

#[test]
fn a_reopened_cache_serves_the_blocks_of_the_previous_run() {
    let dir = tempfile::tempdir().unwrap();
    {
        let cache = BlockCache::open(dir.path(), 1 << 20, BS).unwrap();
        for i in 0..5 {
            cache.put(&id("obj", "e", i), &block(i as u8)).unwrap();
        }
    }
    // A half-written temporary file from a crash is cleaned up, never served.
    std::fs::write(dir.path().join("tmp/123-0.tmp"), b"partial").unwrap();
    let cache = BlockCache::open(dir.path(), 1 << 20, BS).unwrap();
    assert_eq!(cache.stats().blocks, 5);
    for i in 0..5 {
        assert_eq!(
            cache.get(&id("obj", "e", i)).as_deref(),
            Some(&block(i as u8)[..])
        );
    }
    assert!(!dir.path().join("tmp/123-0.tmp").exists());
    // Reopening with a smaller bound evicts down to it.
    drop(cache);
    let small = BlockCache::open(dir.path(), 2 * (u64::from(BS) + 100), BS).unwrap();
    assert_eq!(small.stats().blocks, 2);
}

#[test]
fn concurrent_readers_and_writers_never_see_a_wrong_or_partial_block() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(BlockCache::open(dir.path(), 20 * (u64::from(BS) + 100), BS).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                for round in 0..200u64 {
                    let i = (round * 7 + t) % 40;
                    let bid = id("shared", "e", i);
                    if let Some(data) = cache.get(&bid) {
                        assert_eq!(&data[..], &block(i as u8)[..], "block {i} served wrong bytes");
                    } else {
                        cache.put(&bid, &block(i as u8)).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = cache.stats();
    assert!(s.size_bytes <= cache.max_bytes(), "{s:?}");
    assert_eq!(s.corrupt, 0);
}

#[test]
fn bad_block_sizes_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(BlockCache::open(dir.path(), 1 << 20, 0).is_err());
    assert!(BlockCache::open(dir.path(), 1 << 20, u32::MAX).is_err());
    let cache = BlockCache::open(dir.path(), 1 << 20, BS).unwrap();
    assert!(cache.put(&id("k", "e", 0), &vec![0; BS as usize + 1]).is_err());
}
