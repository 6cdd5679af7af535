//! Crashes and shutdown of the real sidecar binary (issue 6, "Crashes and shutdown"):
//!
//! - SIGTERM with data not uploaded yet (uploads that failed earlier, a file still open) uploads
//!   it within the grace period and exits 0;
//! - SIGTERM while S3 is down, or too slow for the grace period, exits non-zero and logs every
//!   file that was not uploaded; the staged bytes stay in the cache directory;
//! - SIGKILL leaves a dead mount; the next start on the same mountpoint serves again, with the
//!   block cache of the first one, and the final stop leaves no mount layer at all.

mod support;

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use s3mount_tests::faultproxy::{Fault, S3Op};
use support::{
    Proxy, Rclone, Site, Watchdog, assert_bytes, close_checked, detach_all, errno_of, mount_layers, pattern,
    require_mount, rule,
};

/// Writes `data` to `name` in parallel threads and returns what each close said.
fn write_all_closing(mnt: &Path, files: &[(String, Vec<u8>)]) -> Vec<Option<i32>> {
    let threads: Vec<_> = files
        .iter()
        .map(|(name, data)| {
            let (path, data) = (mnt.join(name), data.clone());
            std::thread::spawn(move || {
                let mut f = File::create(&path).expect("create");
                f.write_all(&data).expect("write");
                errno_of(close_checked(f))
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("writer thread"))
        .collect()
}

/// Files under `dir` (recursively).
fn file_count(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() { file_count(&p) } else { 1 }
        })
        .sum()
}

/// Files under `dir` (recursively) whose content is exactly `data`.
fn staged_copies(dir: &Path, data: &[u8]) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                staged_copies(&p, data)
            } else {
                usize::from(std::fs::read(&p).is_ok_and(|b| b == data))
            }
        })
        .sum()
}

#[test]
fn sigterm_uploads_pending_data_within_the_grace_period_and_exits_0() {
    require_mount();
    let _dog = Watchdog::new("sigterm_uploads_pending", Duration::from_secs(120));
    let server = Rclone::start();
    let proxy = Proxy::start(&server);
    let site = Site::new();
    let grace = Duration::from_secs(10);
    let sc = site.start(&proxy.endpoint(), &["--grace-period=10s"]);
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                format!("staged-{i}.bin"),
                pattern(20 + i, 300 * 1024 + i as usize),
            )
        })
        .collect();

    // Their uploads fail now: close reports it, the data stays staged.
    proxy.set(vec![rule(S3Op::Put, 1, 0, Fault::SlowDown, Some("staged-"))]);
    for (errno, (name, _)) in write_all_closing(&sc.mountpoint, &files).into_iter().zip(&files) {
        assert_eq!(errno, Some(libc::EIO), "close of {name} while PUT fails");
    }
    // close returns after FLUSH; RELEASE retries the upload in the background. Wait until every
    // release has given up and kept its staging file, so that only SIGTERM can upload them.
    sc.wait_for_log(
        "upload pending; staged data kept",
        files.len(),
        Duration::from_secs(60),
    );
    for (name, _) in &files {
        assert!(
            server.get_direct(name).is_none(),
            "{name} is not in S3 before SIGTERM"
        );
    }
    // S3 recovers just before SIGTERM (the background retry, every 10 s, may rarely catch them
    // first: either way they must all be in S3 once the sidecar has exited).
    proxy.clear();
    // And one file is still open, written but never flushed, when SIGTERM comes.
    let open_data = pattern(30, 123_456);
    let mut open = File::create(sc.path("open-at-sigterm.bin")).expect("create");
    open.write_all(&open_data).expect("write");

    sc.signal(nix::sys::signal::Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    let app_close = close_checked(open);
    let mut sc = sc;
    let (status, took) = sc.wait(Duration::from_secs(60));
    let log = sc.log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        took < grace,
        "shutdown took {took:?}, more than the grace period {grace:?}"
    );
    assert!(
        app_close.is_ok(),
        "the app's close during shutdown: {app_close:?}"
    );
    assert_eq!(mount_layers(&site.mnt()), 0, "no mount left");
    let mut verified = 0;
    for (name, data) in files
        .iter()
        .chain([&("open-at-sigterm.bin".to_string(), open_data)])
    {
        assert_bytes(
            name,
            &server
                .get_direct(name)
                .unwrap_or_else(|| panic!("{name} not in S3\n{log}")),
            data,
        );
        verified += data.len() as u64;
    }
    support::summary(
        "sigterm_uploads_pending",
        proxy.injected(),
        verified,
        &format!("files_flushed_at_sigterm=4 shutdown_ms={}", took.as_millis()),
    );
}

#[test]
fn sigterm_with_s3_down_exits_nonzero_and_logs_every_file_not_uploaded() {
    require_mount();
    let _dog = Watchdog::new("sigterm_with_s3_down", Duration::from_secs(150));
    let server = Rclone::start();
    let proxy = Proxy::start(&server);
    let site = Site::new();
    let sc = site.start(&proxy.endpoint(), &["--grace-period=40s"]);
    let files: Vec<(String, Vec<u8>)> = ["down-a.bin", "down-b.bin", "down-c.bin"]
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), pattern(40 + i as u64, 64 * 1024)))
        .collect();
    proxy.set(vec![rule(S3Op::Put, 1, 0, Fault::SlowDown, None)]);
    for errno in write_all_closing(&sc.mountpoint, &files) {
        assert_eq!(errno, Some(libc::EIO));
    }
    let (status, took, log) = sc.stop();
    assert_ne!(
        status.code(),
        Some(0),
        "uploads failed: the exit must say so\n{log}"
    );
    assert!(
        took < Duration::from_secs(40),
        "exit within the grace period, took {took:?}"
    );
    assert_eq!(mount_layers(&site.mnt()), 0, "no mount left");
    for (name, data) in &files {
        let named = log
            .lines()
            .any(|l| l.contains(name.as_str()) && (l.contains("shutdown") || l.contains("not uploaded")));
        assert!(named, "the shutdown log must name {name}:\n{log}");
        assert!(server.get_direct(name).is_none());
        let tree = std::process::Command::new("find")
            .arg(site.dir.path())
            .arg("-ls")
            .output()
            .expect("find");
        assert_eq!(
            staged_copies(&site.dir.path().join("cache"), data),
            1,
            "{name} is kept staged on disk:\n{}\n{log}",
            String::from_utf8_lossy(&tree.stdout)
        );
    }
    support::summary(
        "sigterm_with_s3_down",
        proxy.injected(),
        files.iter().map(|(_, d)| d.len() as u64).sum(),
        &format!("files_reported=3 shutdown_ms={}", took.as_millis()),
    );
}

#[test]
fn sigterm_with_s3_too_slow_for_the_grace_period_exits_in_time_and_names_the_files() {
    require_mount();
    let _dog = Watchdog::new("sigterm_s3_too_slow", Duration::from_secs(150));
    let server = Rclone::start();
    let proxy = Proxy::start(&server);
    let site = Site::new();
    let grace = Duration::from_secs(3);
    let sc = site.start(&proxy.endpoint(), &["--grace-period=3s"]);
    let files: Vec<(String, Vec<u8>)> = (0..2)
        .map(|i| (format!("slow-{i}.bin"), pattern(50 + i, 10_000)))
        .collect();
    proxy.set(vec![rule(S3Op::Put, 1, 0, Fault::SlowDown, None)]);
    for errno in write_all_closing(&sc.mountpoint, &files) {
        assert_eq!(errno, Some(libc::EIO));
    }
    // S3 now answers, but slower than the grace period allows.
    proxy.set(vec![rule(
        S3Op::Put,
        1,
        0,
        Fault::SlowFirstByte { millis: 20_000 },
        None,
    )]);
    let (status, took, log) = sc.stop();
    assert_ne!(status.code(), Some(0), "{log}");
    assert!(
        took < grace + Duration::from_secs(5),
        "exit at the end of the {grace:?} grace period, took {took:?}"
    );
    for (name, _) in &files {
        let named = log
            .lines()
            .any(|l| l.contains(name.as_str()) && (l.contains("shutdown") || l.contains("not uploaded")));
        assert!(named, "the log must name {name} as not uploaded:\n{log}");
    }
    support::summary(
        "sigterm_s3_too_slow",
        proxy.injected(),
        0,
        &format!("files_reported=2 shutdown_ms={}", took.as_millis()),
    );
}

#[test]
fn after_sigkill_the_next_start_serves_the_same_mountpoint_with_the_block_cache_and_leaves_no_mount() {
    require_mount();
    let _dog = Watchdog::new("sigkill_restart", Duration::from_secs(120));
    let server = Rclone::start();
    let proxy = Proxy::start(&server);
    let site = Site::new();
    let data = pattern(60, 2 * 1024 * 1024 + 5);
    server.put_direct("cached.bin", &data);
    let mut first = site.start(&proxy.endpoint(), &[]);
    let mut got = Vec::new();
    File::open(first.path("cached.bin"))
        .expect("open")
        .read_to_end(&mut got)
        .expect("read");
    assert_bytes("first read", &got, &data);
    let first_gets = proxy.count(S3Op::Get);
    assert!(first_gets > 0);

    // Block-cache writes finish after the read returns: wait until every block is committed
    // (renamed into `blocks/`; a block still being written lives in `tmp/`).
    let committed = site.dir.path().join("cache/blocks/blocks");
    let blocks = data.len().div_ceil(1024 * 1024);
    let start = std::time::Instant::now();
    while file_count(&committed) < blocks && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        file_count(&committed),
        blocks,
        "the first read filled the block cache"
    );
    first.kill_hard();
    // read_dir, not stat: the kernel may answer a stat of the root from its attribute cache.
    assert_eq!(mount_layers(&site.mnt()), 1, "SIGKILL leaves the mount behind");
    let dead = errno_of(std::fs::read_dir(site.mnt()));
    assert_eq!(dead, Some(libc::ENOTCONN), "a killed sidecar leaves a dead mount");

    let second = site.start(&proxy.endpoint(), &[]);
    proxy.reset();
    let mut again = Vec::new();
    File::open(second.path("cached.bin"))
        .expect("open after restart")
        .read_to_end(&mut again)
        .expect("read");
    assert_bytes("read after restart", &again, &data);
    // Every block comes from the killed sidecar's cache.
    let gets_after = proxy.count(S3Op::Get);
    assert_eq!(
        gets_after, 0,
        "the block cache of the killed sidecar served the read ({first_gets} GETs the first time)"
    );
    let written = pattern(61, 5000);
    let mut f = File::create(second.path("after-restart.bin")).expect("create after restart");
    f.write_all(&written).expect("write");
    close_checked(f).expect("close after restart");
    assert_bytes(
        "after-restart.bin",
        &server.get_direct("after-restart.bin").expect("object"),
        &written,
    );

    let (status, _, log) = second.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    let left = mount_layers(&site.mnt());
    detach_all(&site.mnt());
    assert_eq!(
        left, 0,
        "the final stop removes every layer, the dead one included"
    );
    support::summary(
        "sigkill_restart",
        1,
        (2 * data.len() + written.len()) as u64,
        &format!("kills=1 restarts=1 gets_first_read={first_gets} gets_after_restart={gets_after}"),
    );
}
