//! `/metrics` of the real binary through a kernel mount: S3 requests by operation and status,
//! bytes from S3 and from the block cache, cache hits and size, dirty and in-flight upload bytes.

mod mount_common;
mod support;

use std::io::Write;
use std::time::Duration;

use mount_common::{Sidecar, can_mount};
use support::{BUCKET, S3Server, ServerKind};

const MIB: usize = 1024 * 1024;

/// The value of the sample `name{labels}` whose labels include every `want` pair; the sum when
/// several match (e.g. every status of one operation).
fn sample(metrics: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, labels) = series.split_once('{').unwrap_or((series, "}"));
        if n != name || !want.iter().all(|(k, v)| labels.contains(&format!("{k}=\"{v}\""))) {
            continue;
        }
        *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
    }
    found
}

fn wait_for(sc: &Sidecar, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let (_, metrics) = sc.health_until("/metrics", Duration::from_secs(10), |(_, t)| ok(t));
    assert!(ok(&metrics), "{what}; metrics:\n{metrics}");
    metrics
}

/// Drops the kernel's cached pages of one file, so its next read goes through FUSE. Only that
/// file: the tests of this binary run in parallel, and a global drop (`/proc/sys/vm/drop_caches`)
/// once evicted pages another test had just read ahead, which the kernel then asked for again as
/// a second, adjoining FUSE read (one GET more, and a sequential read-ahead, in a CI run).
fn drop_page_cache(path: &std::path::Path) {
    use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
    let f = std::fs::File::open(path).unwrap();
    posix_fadvise(&f, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)
        .unwrap_or_else(|e| panic!("posix_fadvise DONTNEED on {}: {e}", path.display()));
}

#[test]
fn metrics_follow_s3_requests_cache_hits_and_staged_writes_by_mount() {
    if !can_mount() {
        return;
    }
    let server = S3Server::start(ServerKind::Rclone);
    let body: Vec<u8> = (0..24 * MIB).map(|i| (i * 31 / 7) as u8).collect();
    server.put_direct("big.bin", &body);
    let sc = Sidecar::start(&server, &[]);
    let mnt = sc.mountpoint.display().to_string();
    let mount = [("bucket", BUCKET), ("mountpoint", mnt.as_str())];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        mount.iter().copied().chain(extra.iter().copied()).collect()
    };
    let m = |metrics: &str, name: &str, extra: &[(&'static str, &'static str)]| {
        sample(metrics, name, &with(extra)).unwrap_or_else(|| panic!("no {name} {extra:?} in:\n{metrics}"))
    };

    let before = sc.health_get("/metrics").1;
    assert_eq!(m(&before, "s3mount_cache_served_bytes_total", &[]), 0.0);
    drop_page_cache(&sc.path("big.bin"));
    assert!(std::fs::read(sc.path("big.bin")).unwrap() == body, "first read");
    // The cache fills in the background; wait until it holds the whole file.
    let cold = wait_for(&sc, "cache fill", |t| {
        sample(t, "s3mount_cache_size_bytes", &with(&[])).is_some_and(|v| v >= body.len() as f64)
    });
    let get_ok = |t: &str| {
        m(
            t,
            "s3mount_s3_requests_total",
            &[("op", "GET"), ("status", "200")],
        )
        .max(0.0)
            + sample(
                t,
                "s3mount_s3_requests_total",
                &with(&[("op", "GET"), ("status", "206")]),
            )
            .unwrap_or(0.0)
    };
    let gets_cold = get_ok(&cold);
    assert!(
        gets_cold > 0.0,
        "GETs answered 200/206 after a cold read:\n{cold}"
    );
    assert!(m(&cold, "s3mount_s3_received_bytes_total", &[]) >= body.len() as f64);
    assert!(m(&cold, "s3mount_cache_misses_total", &[]) > 0.0);
    // FUSE requests are counted for the process, by operation.
    assert!(sample(&cold, "s3mount_fuse_requests_total", &[("op", "read")]).is_some_and(|v| v > 0.0));

    drop_page_cache(&sc.path("big.bin"));
    assert!(std::fs::read(sc.path("big.bin")).unwrap() == body, "second read");
    let warm = sc.health_get("/metrics").1;
    assert_eq!(get_ok(&warm), gets_cold, "the second read costs no GET:\n{warm}");
    let served = m(&warm, "s3mount_cache_served_bytes_total", &[]);
    assert!(served >= body.len() as f64, "served {served} from the cache");
    assert!(m(&warm, "s3mount_cache_hits_total", &[]) >= 24.0);
    let ratio = m(&warm, "s3mount_cache_hit_ratio", &[]);
    assert!(ratio > 0.4 && ratio <= 1.0, "hit ratio {ratio}");

    // A file written and not yet closed is dirty; closing uploads it.
    let mut f = std::fs::File::create(sc.path("new.bin")).unwrap();
    f.write_all(&vec![7u8; 300_000]).unwrap();
    let staged = wait_for(&sc, "dirty bytes", |t| {
        sample(t, "s3mount_dirty_bytes", &with(&[])) == Some(300_000.0)
    });
    assert_eq!(m(&staged, "s3mount_upload_inflight_bytes", &[]), 0.0);
    drop(f);
    // close() returns after FLUSH; the kernel sends RELEASE asynchronously, so wait for it.
    let done = wait_for(&sc, "dirty bytes back to 0 after close", |t| {
        sample(t, "s3mount_dirty_bytes", &with(&[])) == Some(0.0)
    });
    assert!(
        m(
            &done,
            "s3mount_s3_requests_total",
            &[("op", "PUT"), ("status", "200")]
        ) >= 1.0
    );
    assert!(m(&done, "s3mount_s3_sent_bytes_total", &[]) >= 300_000.0);
    sc.stop();
}

#[test]
fn random_256_kib_reads_through_the_kernel_cost_one_get_each_and_no_more_bytes_than_asked() {
    if !can_mount() {
        return;
    }
    use std::os::unix::fs::FileExt;
    let server = S3Server::start(ServerKind::Rclone);
    let size = 64 * MIB;
    let body: Vec<u8> = (0..size).map(|i| (i * 13 / 5) as u8).collect();
    server.put_direct("big.bin", &body);
    let sc = Sidecar::start(&server, &[]);
    let f = std::fs::File::open(sc.path("big.bin")).unwrap();
    drop_page_cache(&sc.path("big.bin"));
    let before = sc.health_get("/metrics").1;
    let gets = |t: &str| {
        ["200", "206"]
            .iter()
            .filter_map(|s| sample(t, "s3mount_s3_requests_total", &[("op", "GET"), ("status", s)]))
            .sum::<f64>()
    };
    let received = |t: &str| sample(t, "s3mount_s3_received_bytes_total", &[]).unwrap_or(0.0);
    // Offsets 4 KiB-aligned, as a database or an index reader would ask, scattered (forwards
    // and backwards, never within a read-ahead window of the one before). Not at offset 0: the
    // kernel takes a read there for the start of a sequential one and reads ahead.
    const READ: usize = 256 * 1024;
    let reads = 24;
    let mut buf = vec![0u8; READ];
    for i in 0..reads {
        let slot = (i * 37 + 11) % 61;
        let off = ((slot + 1) * ((size - READ) / 62)) / 4096 * 4096;
        f.read_exact_at(&mut buf, off as u64).unwrap();
        assert!(buf == body[off..off + READ], "bytes at {off}");
    }
    let after = sc.health_get("/metrics").1;
    let (sent_gets, bytes) = (gets(&after) - gets(&before), received(&after) - received(&before));
    assert_eq!(
        sent_gets, reads as f64,
        "one GET per random read (the kernel read-ahead must not split them):\n{after}"
    );
    let amplification = bytes / (reads * READ) as f64;
    assert!(amplification <= 1.25, "read amplification {amplification:.2}");
    sc.stop();
}

/// A re-read of an unchanged object is served by the kernel's page cache, kept across opens
/// (FOPEN_KEEP_CACHE): no FUSE read reaches the sidecar. After another client replaces the
/// object (and the metadata TTL has passed) the next open drops the kernel's pages and reads the
/// new bytes.
#[test]
fn the_kernel_page_cache_serves_a_reread_until_the_object_changes() {
    if !can_mount() {
        return;
    }
    let server = S3Server::start(ServerKind::Rclone);
    let v1: Vec<u8> = (0..3 * MIB).map(|i| (i % 251) as u8).collect();
    server.put_direct("model.bin", &v1);
    let sc = Sidecar::start(&server, &["--metadata-ttl=300ms"]);
    let reads = |sc: &Sidecar| {
        sample(
            &sc.health_get("/metrics").1,
            "s3mount_fuse_requests_total",
            &[("op", "read")],
        )
        .unwrap_or(0.0)
    };
    assert!(std::fs::read(sc.path("model.bin")).unwrap() == v1, "first read");
    let after_first = reads(&sc);
    assert!(after_first > 0.0, "the first read goes through FUSE");
    assert!(std::fs::read(sc.path("model.bin")).unwrap() == v1, "re-read");
    assert_eq!(
        reads(&sc),
        after_first,
        "a re-read of the same version reaches no FUSE read"
    );

    let v2: Vec<u8> = (0..3 * MIB).map(|i| (i % 241) as u8).collect();
    server.put_direct("model.bin", &v2);
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        std::fs::read(sc.path("model.bin")).unwrap() == v2,
        "the new version after the TTL"
    );
    assert!(reads(&sc) > after_first, "the new version is read through FUSE");
}
