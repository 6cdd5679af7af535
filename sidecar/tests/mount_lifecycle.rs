//! Life of the real binary: probe and readiness, SIGTERM and SIGINT with pending data, and a stale
//! mount left by a killed predecessor.

mod mount_common;
mod support;

use std::io::Write;
use std::time::Duration;

use mount_common::{BIN, Sidecar, can_mount, is_mounted};
use support::{S3Server, ServerKind};

#[test]
fn probe_passes_only_on_a_serving_mount() {
    if !can_mount() {
        return;
    }
    let server = S3Server::start(ServerKind::Rclone);
    let outer = tempfile::tempdir().unwrap();
    let mountpoint = outer.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let sc = Sidecar::start_at(&server, tempfile::tempdir().unwrap(), mountpoint.clone(), &[]);
    let ok = std::process::Command::new(BIN)
        .arg("probe")
        .arg("--mountpoint")
        .arg(&sc.mountpoint)
        .status()
        .unwrap();
    assert!(ok.success());
    sc.stop();
    assert!(mountpoint.is_dir());
    let after = std::process::Command::new(BIN)
        .arg("probe")
        .arg("--mountpoint")
        .arg(&mountpoint)
        .status()
        .unwrap();
    assert_eq!(after.code(), Some(1), "an unmounted directory fails the probe");
}

#[test]
fn sigterm_flushes_a_file_still_open_then_unmounts_and_exits_0() {
    if !can_mount() {
        return;
    }
    let server = S3Server::start(ServerKind::Rclone);
    let sc = Sidecar::start(&server, &[]);
    let mut f = std::fs::File::create(sc.path("open-at-shutdown")).unwrap();
    f.write_all(b"pending bytes").unwrap();
    // The file stays open while the sidecar is told to stop.
    sc.signal(nix::sys::signal::Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    drop(f);
    let mut sc = sc;
    let status = sc.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", sc.log());
    assert!(!sc.is_mounted());
    assert_eq!(
        server.get_direct("open-at-shutdown").as_deref(),
        Some(&b"pending bytes"[..]),
        "{}",
        sc.log()
    );
}

#[test]
fn sigint_unmounts_and_exits_0() {
    if !can_mount() {
        return;
    }
    let server = S3Server::start(ServerKind::Rclone);
    let mut sc = Sidecar::start(&server, &[]);
    sc.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(sc.wait(Duration::from_secs(30)).code(), Some(0));
    assert!(!sc.is_mounted());
}

#[test]
fn a_stale_mount_from_a_killed_predecessor_is_replaced() {
    if !can_mount() {
        return;
    }
    let server = S3Server::start(ServerKind::Rclone);
    server.put_direct("f", b"still here");
    let sc = Sidecar::start(&server, &[]);
    let (dir, mountpoint) = sc.kill_hard();
    assert!(is_mounted(&mountpoint), "SIGKILL leaves the mount behind");
    let err = std::fs::read_dir(&mountpoint).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOTCONN),
        "a dead mount: transport endpoint is not connected"
    );
    let sc = Sidecar::start_at(&server, dir, mountpoint, &[]);
    assert_eq!(std::fs::read(sc.path("f")).unwrap(), b"still here");
    // stop() also checks that no layer, dead or alive, is left at the mountpoint.
    sc.stop();
}

#[test]
fn readiness_is_false_before_the_mount_and_true_after() {
    if !can_mount() {
        return;
    }
    let server = S3Server::start(ServerKind::Rclone);
    let sc = Sidecar::start(&server, &[]);
    let ready = sc.health_until("/readyz", Duration::from_secs(5), |(code, _)| *code == 200);
    assert_eq!(ready, (200, "ready\n".to_string()));
    let metrics = sc
        .health_until("/metrics", Duration::from_secs(5), |(_, body)| {
            body.contains("s3mount_ready 1")
        })
        .1;
    assert!(metrics.contains("s3mount_ready 1"), "{metrics}");
    sc.stop();
}

#[test]
fn json_logs_open_with_the_effective_configuration_and_no_secret() {
    if !can_mount() {
        return;
    }
    let server = S3Server::start(ServerKind::Rclone);
    let sc = Sidecar::start(&server, &["--log-format=json"]);
    let log = sc.stop();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let start = lines
        .iter()
        .find(|l| l["fields"]["message"] == "s3mount-sidecar starting")
        .expect("a start-up line");
    let config = start["fields"]["config"].as_str().unwrap();
    assert!(
        config.contains(&format!("endpoint={}", server.endpoint())),
        "{config}"
    );
    assert!(
        config.contains("credentials=from environment (redacted)"),
        "{config}"
    );
    assert!(
        !log.contains(support::SECRET_KEY),
        "the secret never reaches the log"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "health server listening (/livez, /readyz, /metrics)")
    );
}

#[test]
fn many_requests_are_served_in_parallel() {
    if !can_mount() {
        return;
    }
    let server = S3Server::start(ServerKind::Moto);
    for i in 0..16 {
        server.put_direct(&format!("p/{i}"), &vec![i as u8; 3 << 20]);
    }
    let sc = Sidecar::start(&server, &[]);
    let start = std::time::Instant::now();
    std::thread::scope(|scope| {
        for i in 0..16 {
            let path = sc.path(&format!("p/{i}"));
            scope.spawn(move || {
                let data = std::fs::read(&path).unwrap();
                assert!(
                    data.len() == 3 << 20 && data.iter().all(|b| *b == i as u8),
                    "file {i}"
                );
            });
        }
    });
    eprintln!("16 parallel 3 MiB reads took {:?}", start.elapsed());
    sc.stop();
}

#[test]
fn a_close_whose_upload_fails_is_eio_and_the_staged_data_is_kept() {
    if !can_mount() {
        return;
    }
    let server = S3Server::start(ServerKind::Rclone);
    let mut sc = Sidecar::start(&server, &[]);
    let mut f = std::fs::File::create(sc.path("doomed")).unwrap();
    f.write_all(b"keep me").unwrap();
    drop(server); // the S3 server goes away before the close
    let err = f.sync_all().unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EIO),
        "fsync reports the failed upload"
    );
    drop(f);
    let staged: Vec<Vec<u8>> = std::fs::read_dir(sc.cache_dir().join("staging"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(
        staged,
        vec![b"keep me".to_vec()],
        "the staged data is kept on disk"
    );
    sc.signal(nix::sys::signal::Signal::SIGTERM);
    let status = sc.wait(Duration::from_secs(60));
    assert_eq!(
        status.code(),
        Some(1),
        "data not durable at exit is a failure exit; {}",
        sc.log()
    );
    assert!(!sc.is_mounted());
}

#[test]
fn wrong_credentials_stop_the_sidecar_before_it_mounts() {
    if !can_mount() {
        return;
    }
    let server = S3Server::start(ServerKind::Rclone);
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let out = std::process::Command::new(BIN)
        .arg(format!("--bucket={}", support::BUCKET))
        .arg(format!("--mountpoint={}", mountpoint.display()))
        .arg(format!("--endpoint={}", server.endpoint()))
        .arg("--path-style")
        .arg(format!("--cache-dir={}", dir.path().join("cache").display()))
        .arg("--health-listen=127.0.0.1:0")
        .env("AWS_ACCESS_KEY_ID", support::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach the bucket"), "{stderr}");
    assert!(!is_mounted(&mountpoint));
}

#[test]
fn one_process_serves_several_mounts_each_with_its_own_settings() {
    if !can_mount() {
        return;
    }
    let server = S3Server::start(ServerKind::Rclone);
    server.put_direct("top.txt", b"top");
    server.put_direct("sub/inner.txt", b"inner");
    let second = tempfile::tempdir().unwrap();
    let second_mnt = second.path().join("ro");
    std::fs::create_dir(&second_mnt).unwrap();
    let group = [
        format!("--bucket={}", support::BUCKET),
        format!("--mountpoint={}", second_mnt.display()),
        format!("--endpoint={}", server.endpoint()),
        "--path-style".to_string(),
        "--prefix=sub/".to_string(),
        "--read-only".to_string(),
    ];
    let extra: Vec<&str> = group.iter().map(String::as_str).collect();
    let sc = Sidecar::start(&server, &extra);
    let probe = std::process::Command::new(BIN)
        .args(["probe", "--wait", "10s", "--mountpoint"])
        .arg(&second_mnt)
        .status()
        .unwrap();
    assert!(probe.success(), "the second mount serves");
    assert_eq!(std::fs::read(sc.path("top.txt")).unwrap(), b"top");
    assert_eq!(
        std::fs::read(second_mnt.join("inner.txt")).unwrap(),
        b"inner",
        "the prefix applies"
    );
    let err = std::fs::write(second_mnt.join("new.txt"), b"x").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EROFS),
        "read-only applies to the second mount only"
    );
    std::fs::write(sc.path("new.txt"), b"rw").unwrap();
    assert_eq!(server.get_direct("new.txt").as_deref(), Some(&b"rw"[..]));
    sc.stop();
    assert!(!is_mounted(&second_mnt), "SIGTERM unmounts every mount");
}

#[test]
fn with_stop_when_apps_exit_the_sidecar_stops_once_the_app_processes_are_gone() {
    if !can_mount() {
        return;
    }
    // A pod with shareProcessNamespace: one PID namespace whose PID 1 stands in for the pause
    // process, the sidecar, and an "app" that reads through the mount and then exits.
    let server = S3Server::start(ServerKind::Rclone);
    server.put_direct("job-input.txt", b"input");
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = format!(
        "{BIN} --bucket={bucket} --mountpoint={m} --endpoint={ep} --path-style --cache-dir={c} \
         --health-listen=127.0.0.1:{port} --stop-when-apps-exit 2>{log} & side=$!; \
         {BIN} probe --mountpoint={m} --wait=20s || exit 9; \
         (cat {m}/job-input.txt; echo; sleep 3; test -s {m}/job-input.txt && echo served-to-the-end); \
         wait $side; echo sidecar-exit=$?",
        bucket = support::BUCKET,
        m = mnt.display(),
        ep = server.endpoint(),
        c = dir.path().join("cache").display(),
        log = dir.path().join("sidecar.log").display(),
    );
    let started = std::time::Instant::now();
    let out = std::process::Command::new("timeout")
        .args([
            "60",
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-c",
            &script,
        ])
        .env("AWS_ACCESS_KEY_ID", support::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", support::SECRET_KEY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(dir.path().join("sidecar.log")).unwrap_or_default();
    assert!(
        stdout.contains("input"),
        "the app read through the mount: {stdout}\n{log}"
    );
    assert!(
        stdout.contains("served-to-the-end"),
        "the mount served for the app's whole life: {stdout}\n{log}"
    );
    assert!(
        stdout.contains("sidecar-exit=0"),
        "the sidecar stopped by itself with 0: {stdout}\n{log}"
    );
    assert!(log.contains("app containers have exited"), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_second_sidecar_refuses_a_live_mountpoint_and_leaves_the_first_serving() {
    if !can_mount() {
        return;
    }
    let server = S3Server::start(ServerKind::Rclone);
    server.put_direct("f.txt", b"one");
    let first = Sidecar::start(&server, &[]);
    let out = std::process::Command::new("timeout")
        .arg("20")
        .arg(BIN)
        .arg(format!("--bucket={}", support::BUCKET))
        .arg(format!("--mountpoint={}", first.mountpoint.display()))
        .arg(format!("--endpoint={}", server.endpoint()))
        .arg("--path-style")
        .arg("--health-listen=127.0.0.1:0")
        .env("AWS_ACCESS_KEY_ID", support::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", support::SECRET_KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "the second sidecar fails");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already a live FUSE mount"), "{stderr}");
    assert_eq!(
        std::fs::read(first.path("f.txt")).unwrap(),
        b"one",
        "the first mount still serves"
    );
    first.stop();
}
