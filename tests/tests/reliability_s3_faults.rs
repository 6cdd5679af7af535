//! Faults from S3, injected by the fault proxy between the real sidecar binary and a real S3
//! server, observed through a real kernel mount (issue 6, "Faults from S3"):
//!
//! - reads after transient faults return the exact bytes, and each fault costs one retry;
//! - exhausted retries give EIO, the log names the failed request, and nothing is cached;
//! - throttled lookups are EIO, never ENOENT, and are not remembered as "not found";
//! - a failed upload is EIO at fsync and close, its data stays staged and goes out at the next
//!   fsync, by itself once S3 recovers, or at SIGTERM; what was acknowledged is in S3 with exact
//!   bytes.

mod support;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::time::Duration;

use s3mount_tests::faultproxy::{Fault, S3Op};
use support::{
    Proxy, Rclone, Site, Watchdog, assert_bytes, close_checked, errno_of, pattern, require_mount, rule,
};

const OBJECT: usize = 3 * 1024 * 1024 + 12_345;
/// The sidecar's retry policy: attempts per request, the first included (s3.rs `RetryConfig`).
const ATTEMPTS: u64 = 6;

fn read_all(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    File::open(path)?.read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn reads_after_transient_faults_return_exact_bytes_and_each_fault_costs_one_retry() {
    require_mount();
    let _dog = Watchdog::new("reads_after_transient_faults", Duration::from_secs(120));
    let server = Rclone::start();
    let proxy = Proxy::start(&server);
    let site = Site::new();
    let faults = [
        Fault::SlowDown,
        Fault::InternalError,
        Fault::ResetMidBody { after_bytes: 1000 },
        Fault::ShortBody,
        Fault::SlowFirstByte { millis: 1500 },
    ];
    server.put_direct("baseline.bin", &pattern(100, OBJECT));
    for i in 0..faults.len() {
        server.put_direct(&format!("fault-{i}.bin"), &pattern(i as u64, OBJECT));
    }
    // The S3 client's debug lines say each failed attempt ("retrying", with the key); here each
    // fault is followed by a successful attempt, so they count the retries.
    let sc = site.start(&proxy.endpoint(), &["--log-level=info,s3mount_sidecar::s3=debug"]);
    let retries_of = |key: &str| {
        sc.log()
            .lines()
            .filter(|l| l.contains("retrying") && l.contains(key))
            .count()
    };

    // The same read without faults: how many GETs a clean read of this size takes.
    proxy.reset();
    assert_bytes(
        "baseline",
        &read_all(&sc.path("baseline.bin")).expect("clean read"),
        &pattern(100, OBJECT),
    );
    let clean_gets = proxy.count(S3Op::Get);
    assert!(clean_gets > 0);

    let mut verified = OBJECT as u64;
    for (i, fault) in faults.iter().enumerate() {
        let key = format!("fault-{i}.bin");
        // Two faults on the first two GETs of this object (the first block, then its retry).
        proxy.set(vec![rule(S3Op::Get, 1, 2, fault.clone(), Some(&key))]);
        let before = proxy.injected();
        proxy.reset();
        let got =
            read_all(&sc.path(&key)).unwrap_or_else(|e| panic!("read after {fault:?}: {e}\n{}", sc.log()));
        assert_bytes(
            &format!("{key} after {fault:?}"),
            &got,
            &pattern(i as u64, OBJECT),
        );
        verified += got.len() as u64;
        let hit = proxy.injected() - before;
        let gets = proxy.count(S3Op::Get);
        // Retries are counted by the S3 client's own word, not from the total of GETs: how many
        // GETs a read takes varies a little with the kernel's read-ahead timing (a CI run under
        // load once needed one more for the same clean read), and a block whose cache write has
        // not landed yet can be fetched again by a late, reordered kernel read.
        let retried = retries_of(&key);
        assert_eq!(hit, 2, "{fault:?} was injected twice");
        if matches!(fault, Fault::SlowFirstByte { .. }) {
            assert_eq!(
                retried,
                0,
                "{fault:?}: a slow answer is not a failure and must not be retried\n{}",
                sc.log()
            );
        } else {
            assert_eq!(
                retried,
                2,
                "{fault:?}: each fault costs exactly one retry\n{}",
                sc.log()
            );
        }
        // And nothing else is fetched again: a loose bound on the whole read.
        assert!(
            gets <= clean_gets + 4,
            "{fault:?}: {gets} GETs, a clean read took {clean_gets}"
        );
        proxy.clear();
    }
    let (status, _, _) = sc.stop();
    assert!(status.success());
    support::summary(
        "reads_after_transient_faults",
        proxy.injected(),
        verified,
        &format!("kinds=slowdown,500,reset-mid-body,short-body,slow-first-byte clean_gets={clean_gets}"),
    );
}

#[test]
fn exhausted_retries_give_eio_name_the_failed_request_and_are_not_cached() {
    require_mount();
    let _dog = Watchdog::new("exhausted_retries", Duration::from_secs(120));
    let server = Rclone::start();
    let proxy = Proxy::start(&server);
    let site = Site::new();
    let data = pattern(7, 1024 * 1024);
    server.put_direct("unreachable.bin", &data);
    let sc = site.start(&proxy.endpoint(), &[]);
    assert_eq!(
        std::fs::metadata(sc.path("unreachable.bin")).expect("stat").len(),
        data.len() as u64
    );

    proxy.set(vec![rule(
        S3Op::Get,
        1,
        0,
        Fault::SlowDown,
        Some("unreachable.bin"),
    )]);
    proxy.reset();
    let err = errno_of(read_all(&sc.path("unreachable.bin")));
    assert_eq!(
        err,
        Some(libc::EIO),
        "a read whose GETs all fail is EIO\n{}",
        sc.log()
    );
    let gets = proxy.count(S3Op::Get);
    assert!(
        gets >= ATTEMPTS && gets.is_multiple_of(ATTEMPTS) && gets <= 4 * ATTEMPTS,
        "retries must be bounded: {gets} GETs, expected a small multiple of {ATTEMPTS}"
    );
    let log = sc.log();
    let named = log.lines().any(|l| {
        l.contains("S3 request failed")
            && l.contains("GET")
            && l.contains("unreachable.bin")
            && l.contains("SlowDown")
    });
    assert!(
        named,
        "the log must name the failed request, its key and why:\n{log}"
    );

    // The failure is not remembered: once S3 answers, the same read works.
    proxy.clear();
    assert_bytes(
        "read after recovery",
        &read_all(&sc.path("unreachable.bin")).expect("read"),
        &data,
    );
    let (status, _, _) = sc.stop();
    assert!(status.success());
    support::summary(
        "exhausted_retries",
        proxy.injected(),
        data.len() as u64,
        &format!("gets_when_down={gets}"),
    );
}

/// An S3 endpoint that accepts requests and never answers them (a hung load balancer, a frozen
/// server): a reader blocked on it can be killed at once (a pod can terminate), and a reader that
/// waits gets EIO after one read timeout (30 s, which outlasts the 20 s retry limit), never an
/// endless wait; the log names the request. Once S3 answers, the same read works.
#[test]
fn a_hung_endpoint_gives_eio_in_bounded_time_and_a_blocked_reader_can_be_killed() {
    require_mount();
    let _dog = Watchdog::new("hung_endpoint", Duration::from_secs(150));
    let server = Rclone::start();
    let proxy = Proxy::start(&server);
    let site = Site::new();
    let data = pattern(13, 200 * 1024 + 1);
    server.put_direct("hung.bin", &data);
    server.put_direct("hung-killed.bin", &data);
    let sc = site.start(&proxy.endpoint(), &[]);
    for name in ["hung.bin", "hung-killed.bin"] {
        assert_eq!(
            std::fs::metadata(sc.path(name)).expect("stat").len(),
            data.len() as u64
        );
    }
    // Every GET of these keys waits ten minutes before the proxy even forwards it.
    proxy.set(vec![rule(
        S3Op::Get,
        1,
        0,
        Fault::SlowFirstByte { millis: 600_000 },
        Some("hung"),
    )]);

    let mut blocked = std::process::Command::new("cat")
        .arg(sc.path("hung-killed.bin"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start cat");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        blocked.try_wait().expect("cat").is_none(),
        "cat is blocked in its read"
    );
    let killed = std::time::Instant::now();
    blocked.kill().expect("SIGKILL cat");
    let status = blocked.wait().expect("wait for cat");
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "a reader blocked on S3 dies at SIGKILL: took {:?} ({status})",
        killed.elapsed()
    );

    let started = std::time::Instant::now();
    let err = errno_of(read_all(&sc.path("hung.bin")));
    let took = started.elapsed();
    assert_eq!(
        err,
        Some(libc::EIO),
        "a read from a hung endpoint is EIO\n{}",
        sc.log()
    );
    // The first GET waits out the 30 s read timeout, which also uses up the 20 s retry limit.
    // Not twice: the kernel asks again at once for a failed read-ahead, and the reader answers
    // that from its memory of the failure.
    assert!(
        took < Duration::from_secs(30 + 12),
        "EIO after one read timeout, not more: took {took:?}"
    );
    let log = sc.log();
    assert!(
        log.lines()
            .any(|l| l.contains("S3 request failed") && l.contains("GET") && l.contains("hung.bin")),
        "the log must name the request that failed:\n{log}"
    );

    proxy.clear();
    assert_bytes(
        "hung.bin after the endpoint answers again",
        &read_all(&sc.path("hung.bin")).expect("read after recovery"),
        &data,
    );
    let (status, _, log) = sc.stop();
    assert!(status.success(), "{log}");
    support::summary(
        "hung_endpoint",
        proxy.injected(),
        data.len() as u64,
        &format!("eio_after_ms={}", took.as_millis()),
    );
}

#[test]
fn throttled_lookups_are_eio_never_enoent_and_not_cached_as_missing() {
    require_mount();
    let _dog = Watchdog::new("throttled_lookups", Duration::from_secs(120));
    let server = Rclone::start();
    let proxy = Proxy::start(&server);
    let site = Site::new();
    let data = pattern(8, 4096);
    server.put_direct("dir/present.txt", &data);
    server.put_direct("present.txt", &data);
    // A long TTL: a "not found" remembered by mistake would show for a minute.
    let sc = site.start(&proxy.endpoint(), &["--metadata-ttl=60s"]);

    proxy.set(vec![
        rule(S3Op::Head, 1, 0, Fault::SlowDown, None),
        rule(S3Op::List, 1, 0, Fault::SlowDown, None),
    ]);
    for name in ["present.txt", "absent.txt", "dir", "dir/present.txt"] {
        let err = errno_of(std::fs::metadata(sc.path(name)));
        assert_eq!(
            err,
            Some(libc::EIO),
            "stat {name} during a 503 storm must be EIO, not {err:?}\n{}",
            sc.log()
        );
    }
    let err = errno_of(File::open(sc.path("present.txt")));
    assert_eq!(err, Some(libc::EIO), "open during a 503 storm");
    let storm = proxy.injected();
    assert!(storm > 0);

    proxy.clear();
    for name in ["present.txt", "dir/present.txt"] {
        let meta =
            std::fs::metadata(sc.path(name)).unwrap_or_else(|e| panic!("stat {name} after the storm: {e}"));
        assert_eq!(meta.len(), data.len() as u64);
        assert_bytes(name, &read_all(&sc.path(name)).expect("read"), &data);
    }
    assert!(std::fs::metadata(sc.path("dir")).expect("stat dir").is_dir());
    assert_eq!(
        errno_of(std::fs::metadata(sc.path("absent.txt"))),
        Some(libc::ENOENT)
    );
    let (status, _, _) = sc.stop();
    assert!(status.success());
    support::summary(
        "throttled_lookups",
        storm,
        2 * data.len() as u64,
        "errno_during_storm=EIO",
    );
}

#[test]
fn a_failed_put_is_eio_at_fsync_and_close_and_goes_out_at_the_next_fsync() {
    require_mount();
    let _dog = Watchdog::new("failed_put", Duration::from_secs(120));
    let server = Rclone::start();
    let proxy = Proxy::start(&server);
    let site = Site::new();
    let sc = site.start(&proxy.endpoint(), &[]);
    let data = pattern(9, 200 * 1024 + 3);

    proxy.set(vec![rule(S3Op::Put, 1, 0, Fault::SlowDown, Some("kept.bin"))]);
    let mut f = File::create(sc.path("kept.bin")).expect("create");
    f.write_all(&data).expect("write");
    assert_eq!(
        errno_of(f.sync_all()),
        Some(libc::EIO),
        "fsync of an upload that fails\n{}",
        sc.log()
    );
    assert_eq!(
        errno_of(close_checked(f)),
        Some(libc::EIO),
        "close of an upload that fails"
    );
    assert!(server.get_direct("kept.bin").is_none(), "nothing reached S3");
    assert!(
        sc.log()
            .lines()
            .any(|l| l.contains("S3 request failed") && l.contains("PUT") && l.contains("kept.bin"))
    );

    // The data was kept: once S3 answers, the next fsync uploads it.
    proxy.clear();
    let f = OpenOptions::new()
        .write(true)
        .open(sc.path("kept.bin"))
        .expect("reopen for writing");
    f.sync_all().expect("fsync after recovery");
    assert_bytes(
        "kept.bin in S3 after fsync",
        &server.get_direct("kept.bin").expect("object"),
        &data,
    );
    close_checked(f).expect("close");
    assert_bytes(
        "kept.bin through the mount",
        &read_all(&sc.path("kept.bin")).expect("read"),
        &data,
    );
    let (status, _, _) = sc.stop();
    assert!(status.success());
    support::summary(
        "failed_put",
        proxy.injected(),
        2 * data.len() as u64,
        "eio_at=fsync,close uploaded_at=next-fsync",
    );
}

/// A file closed with EIO (its upload failed) is not left waiting for another fsync, close or
/// SIGTERM: the sidecar tries its upload again in the background (every 10 s) and, once S3
/// answers, the object reaches S3 with exact bytes while nobody touches the file.
#[test]
fn a_failed_upload_goes_out_by_itself_once_s3_recovers() {
    require_mount();
    let _dog = Watchdog::new("background_retry", Duration::from_secs(120));
    let server = Rclone::start();
    let proxy = Proxy::start(&server);
    let site = Site::new();
    let sc = site.start(&proxy.endpoint(), &[]);
    let data = pattern(12, 300 * 1024 + 5);

    // Every PUT of this key fails until the proxy is cleared.
    proxy.set(vec![rule(
        S3Op::Put,
        1,
        0,
        Fault::InternalError,
        Some("later.bin"),
    )]);
    let mut f = File::create(sc.path("later.bin")).expect("create");
    f.write_all(&data).expect("write");
    assert_eq!(
        errno_of(close_checked(f)),
        Some(libc::EIO),
        "close of an upload that fails\n{}",
        sc.log()
    );
    assert!(server.get_direct("later.bin").is_none(), "nothing reached S3");
    // While S3 still fails, a background round fails too and keeps the data.
    sc.wait_for_log("upload retry failed", 1, Duration::from_secs(40));
    assert!(server.get_direct("later.bin").is_none(), "still nothing in S3");

    proxy.clear();
    // Waits for the sidecar's word that S3 took it, not for the object to show: rclone writes an
    // object's file in place while the PUT runs, so a direct read could catch it half written.
    sc.wait_for_log(
        "upload that had failed at close succeeded on retry",
        1,
        Duration::from_secs(40),
    );
    assert_bytes(
        "later.bin in S3, uploaded in the background",
        &server.get_direct("later.bin").expect("object"),
        &data,
    );
    assert_bytes(
        "later.bin through the mount",
        &read_all(&sc.path("later.bin")).expect("read"),
        &data,
    );
    let (status, _, log) = sc.stop();
    assert!(status.success(), "{log}");
    support::summary(
        "background_retry",
        proxy.injected(),
        2 * data.len() as u64,
        "eio_at=close uploaded_at=background-retry",
    );
}

#[test]
fn failed_multipart_uploads_are_eio_at_close_and_go_out_at_sigterm() {
    require_mount();
    let _dog = Watchdog::new("failed_multipart", Duration::from_secs(180));
    let server = Rclone::start();
    let proxy = Proxy::start(&server);
    let site = Site::new();
    let sc = site.start(&proxy.endpoint(), &["--grace-period=30s"]);
    // Larger than one part (8 MiB), so both go as multipart uploads.
    let size = 9 * 1024 * 1024 + 777;
    let late = pattern(10, size);
    let parts = pattern(11, size);

    // CompleteMultipartUpload answering 200 with an <Error> document, and every part failing.
    proxy.set(vec![
        rule(
            S3Op::MpuComplete,
            1,
            0,
            Fault::ErrorDocument200,
            Some("late-error.bin"),
        ),
        rule(S3Op::MpuPart, 1, 0, Fault::InternalError, Some("parts-down.bin")),
    ]);
    let writers: Vec<_> = [
        ("late-error.bin", late.clone()),
        ("parts-down.bin", parts.clone()),
    ]
    .into_iter()
    .map(|(name, data)| {
        let path = sc.path(name);
        std::thread::spawn(move || {
            let mut f = File::create(&path).expect("create");
            f.write_all(&data).expect("write");
            errno_of(close_checked(f))
        })
    })
    .collect();
    for (w, name) in writers.into_iter().zip(["late-error.bin", "parts-down.bin"]) {
        assert_eq!(
            w.join().expect("writer"),
            Some(libc::EIO),
            "close of {name} must report the failed upload\n{}",
            sc.log()
        );
    }
    // What rclone holds on disk for an upload whose parts all failed is not checked here: with its
    // default `--vfs-cache-mode off` rclone streams multipart uploads into the target file, and under
    // load a direct read of that file caught such in-progress state. The guarantees that matter are
    // checked: close reported EIO above, and after recovery the object has exactly the data (below).
    let log = sc.log();
    assert!(
        log.lines()
            .any(|l| l.contains("MPU_COMPLETE") && l.contains("late-error.bin")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("MPU_PART") && l.contains("parts-down.bin")),
        "{log}"
    );

    // S3 recovers; the staged data goes out at shutdown.
    proxy.clear();
    proxy.reset();
    let (status, took, log) = sc.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM after recovery uploads everything\n{log}"
    );
    assert!(
        proxy.count(S3Op::MpuComplete) >= 2,
        "both files were uploaded again at SIGTERM"
    );
    assert_bytes(
        "late-error.bin",
        &server.get_direct("late-error.bin").expect("object"),
        &late,
    );
    assert_bytes(
        "parts-down.bin",
        &server.get_direct("parts-down.bin").expect("object"),
        &parts,
    );
    support::summary(
        "failed_multipart",
        proxy.injected(),
        2 * size as u64,
        &format!(
            "kinds=mpu-complete-200-error,mpu-part-500 uploaded_at=sigterm shutdown_ms={}",
            took.as_millis()
        ),
    );
}

/// A CopyObject answered `200 OK` with an `<Error>` document (S3 does this when a copy fails after
/// it started) fails the rename with EIO, names the request in the log, and loses nothing: the
/// source is not deleted and reads back exactly; once S3 recovers the same rename succeeds.
#[test]
fn a_copy_answered_200_with_an_error_document_fails_the_rename_and_keeps_the_source() {
    require_mount();
    let _dog = Watchdog::new("copy_error_200", Duration::from_secs(120));
    let server = Rclone::start();
    let proxy = Proxy::start(&server);
    let site = Site::new();
    let sc = site.start(&proxy.endpoint(), &[]);
    let data = pattern(12, 300 * 1024 + 9);
    server.put_direct("orig.bin", &data);

    proxy.set(vec![rule(
        S3Op::Copy,
        1,
        0,
        Fault::ErrorDocument200,
        Some("moved.bin"),
    )]);
    let err = std::fs::rename(sc.path("orig.bin"), sc.path("moved.bin")).expect_err("rename must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}\n{}", sc.log());
    assert!(proxy.injected() >= 1, "the fault was injected");
    assert_bytes(
        "orig.bin (direct)",
        &server.get_direct("orig.bin").expect("source kept"),
        &data,
    );
    assert_bytes(
        "orig.bin (through the mount)",
        &std::fs::read(sc.path("orig.bin")).expect("source readable"),
        &data,
    );
    let log = sc.log();
    assert!(
        log.lines().any(|l| l.contains("COPY") && l.contains("moved.bin")),
        "{log}"
    );

    proxy.clear();
    std::fs::rename(sc.path("orig.bin"), sc.path("moved.bin")).expect("rename after recovery");
    assert_bytes(
        "moved.bin",
        &server.get_direct("moved.bin").expect("moved"),
        &data,
    );
    assert_eq!(
        server.get_direct("orig.bin"),
        None,
        "the source is gone after the rename"
    );
    let (status, _, log) = sc.stop();
    assert!(status.success(), "{log}");
    support::summary(
        "copy_error_200",
        proxy.injected(),
        2 * data.len() as u64,
        "kinds=copy-200-error rename=eio-then-ok",
    );
}
