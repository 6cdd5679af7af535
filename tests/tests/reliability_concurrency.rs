//! Concurrency on one real mount (issue 6, "Concurrency"): 16 readers and 4 writers for
//! `S3MOUNT_SOAK_SECS` seconds (10 by default; `make soak` runs 60). Readers check every byte of
//! seeded objects and of files the writers have closed; writers create files and check that close
//! succeeded. At the end every written file is read directly from S3, and the sidecar's peak
//! resident memory (VmHWM) must stay under a bound.

mod support;

use std::fs::File;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Proxy, Rclone, Site, Watchdog, assert_bytes, close_checked, pattern, require_mount};

const READERS: usize = 16;
const WRITERS: usize = 4;
const SEEDED: u64 = 12;
/// Bound of the sidecar's peak RSS: the block cache is on disk and uploads read one part (8 MiB)
/// at a time, so memory must not grow with the bytes moved.
const MAX_HWM_KIB: u64 = 256 * 1024;

fn seeded_size(i: u64) -> usize {
    [1, 4096, 70_000, 1_048_576, 3_000_017, 9 * 1024 * 1024 + 11][(i % 6) as usize]
}

fn written_size(w: usize, n: u64) -> usize {
    (((w as u64 + 1) * 7919 + n * 104_729) % (2 * 1024 * 1024)) as usize + 1
}

#[test]
fn sixteen_readers_and_four_writers_on_one_mount_see_no_error_and_no_corruption() {
    require_mount();
    let secs: u64 = std::env::var("S3MOUNT_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let _dog = Watchdog::new("concurrency", Duration::from_secs(secs + 240));
    let server = Rclone::start();
    let proxy = Proxy::start(&server);
    let site = Site::new();
    for i in 0..SEEDED {
        server.put_direct(&format!("seed/obj-{i}.bin"), &pattern(1000 + i, seeded_size(i)));
    }
    let sc = site.start(&proxy.endpoint(), &["--cache-size=64MiB"]);
    let mnt = sc.mountpoint.clone();
    std::fs::create_dir(mnt.join("out")).expect("mkdir out");

    let stop = Arc::new(AtomicBool::new(false));
    let written: Arc<Mutex<Vec<(String, u64, usize)>>> = Arc::new(Mutex::new(Vec::new()));
    let bytes_read = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for w in 0..WRITERS {
        let (stop, written, mnt) = (stop.clone(), written.clone(), mnt.clone());
        threads.push(std::thread::spawn(move || -> Result<u64, String> {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("out/w{w}-{n}.bin");
                let seed = (w as u64) << 32 | n;
                let data = pattern(seed, written_size(w, n));
                let mut f = File::create(mnt.join(&name)).map_err(|e| format!("create {name}: {e}"))?;
                // Several writes, as an app would do.
                for chunk in data.chunks(128 * 1024) {
                    f.write_all(chunk).map_err(|e| format!("write {name}: {e}"))?;
                }
                close_checked(f).map_err(|e| format!("close {name}: {e}"))?;
                written
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((name, seed, data.len()));
                n += 1;
            }
            Ok(n)
        }));
    }
    for r in 0..READERS {
        let (stop, written, mnt) = (stop.clone(), written.clone(), mnt.clone());
        let (bytes_read, reads) = (bytes_read.clone(), reads.clone());
        threads.push(std::thread::spawn(move || -> Result<u64, String> {
            let mut k = r as u64;
            while !stop.load(Ordering::Relaxed) {
                k = k
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Half the readers prefer seeded objects, half the writers' files.
                let pick = written
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(((k >> 33) as usize) % 4096)
                    .cloned();
                let (name, want) = match (r % 2, pick) {
                    (1, Some((name, seed, len))) => (name, pattern(seed, len)),
                    _ => {
                        let i = (k >> 40) % SEEDED;
                        (format!("seed/obj-{i}.bin"), pattern(1000 + i, seeded_size(i)))
                    }
                };
                let mut got = Vec::new();
                File::open(mnt.join(&name))
                    .and_then(|mut f| f.read_to_end(&mut got))
                    .map_err(|e| format!("read {name}: {e}"))?;
                if got != want {
                    return Err(format!(
                        "{name}: {} bytes differ from the {} written",
                        got.len(),
                        want.len()
                    ));
                }
                bytes_read.fetch_add(got.len() as u64, Ordering::Relaxed);
                reads.fetch_add(1, Ordering::Relaxed);
            }
            Ok(0)
        }));
    }
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let errors: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().expect("worker thread").err())
        .collect();
    let elapsed = start.elapsed();
    assert!(
        errors.is_empty(),
        "errors under load:\n{}\n{}",
        errors.join("\n"),
        sc.log()
    );

    let hwm = sc.vm_hwm_kib();
    let files = written.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(files.len() >= WRITERS, "every writer closed at least one file");
    let mut verified = bytes_read.load(Ordering::Relaxed);
    for (name, seed, len) in &files {
        let direct = server
            .get_direct(name)
            .unwrap_or_else(|| panic!("{name} acknowledged but not in S3"));
        assert_bytes(name, &direct, &pattern(*seed, *len));
        verified += *len as u64;
    }
    let (status, _, log) = sc.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    println!(
        "concurrency: VmHWM of the sidecar {} MiB (bound {} MiB)",
        hwm / 1024,
        MAX_HWM_KIB / 1024
    );
    assert!(
        hwm < MAX_HWM_KIB,
        "sidecar peak RSS {hwm} KiB over {MAX_HWM_KIB} KiB"
    );
    support::summary(
        "concurrency",
        proxy.injected(),
        verified,
        &format!(
            "secs={} readers={READERS} writers={WRITERS} reads={} files_written={} read_mib={} vmhwm_mib={}",
            elapsed.as_secs(),
            reads.load(Ordering::Relaxed),
            files.len(),
            bytes_read.load(Ordering::Relaxed) >> 20,
            hwm / 1024
        ),
    );
}
