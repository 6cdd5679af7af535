//! The command line through the real binary: every flag is read from its environment variable,
//! and bad configuration exits 64 naming every bad value.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_s3mount-sidecar");

#[test]
fn every_flag_is_read_from_its_environment_variable() {
    let bad = [
        ("S3MOUNT_BUCKET", "x", "--bucket"),
        ("S3MOUNT_PREFIX", "/abs", "--prefix"),
        ("S3MOUNT_MOUNTPOINT", "", "--mountpoint"),
        ("S3MOUNT_ENDPOINT", "ftp://x", "--endpoint"),
        ("S3MOUNT_REGION", "us east", "--region"),
        ("S3MOUNT_CACHE_DIR", "", "--cache-dir"),
        ("S3MOUNT_CACHE_SIZE", "lots", "--cache-size"),
        ("S3MOUNT_UID", "root", "--uid"),
        ("S3MOUNT_GID", "wheel", "--gid"),
        ("S3MOUNT_FILE_MODE", "rw", "--file-mode"),
        ("S3MOUNT_DIR_MODE", "99999", "--dir-mode"),
        ("S3MOUNT_METADATA_TTL", "soon", "--metadata-ttl"),
        ("S3MOUNT_HEALTH_LISTEN", "here", "--health-listen"),
        ("S3MOUNT_GRACE_PERIOD", "later", "--grace-period"),
        ("S3MOUNT_LOG_LEVEL", "a=b=c", "--log-level"),
        ("S3MOUNT_LOG_FORMAT", "xml", "--log-format"),
    ];
    let mut cmd = Command::new(BIN);
    for (var, value, _) in bad {
        cmd.env(var, value);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for (var, _, flag) in bad {
        assert!(stderr.contains(flag), "{var} did not reach {flag}: {stderr}");
    }
}

#[test]
fn boolean_flags_are_read_from_the_environment() {
    // With S3MOUNT_READ_ONLY=true and a bad bucket, the only complaint is the bucket: the boolean
    // value was accepted.
    let out = Command::new(BIN)
        .env("S3MOUNT_BUCKET", "x")
        .env("S3MOUNT_MOUNTPOINT", "/m")
        .env("S3MOUNT_READ_ONLY", "true")
        .env("S3MOUNT_PATH_STYLE", "false")
        .env("S3MOUNT_ANONYMOUS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr.contains("--bucket") && !stderr.contains("read-only"),
        "{stderr}"
    );
}

#[test]
fn help_exits_0() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--metadata-ttl"));
}
