//! The `s3mount-certs` binary as the demo and the install docs use it.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

use base64::Engine as _;

use s3mount_certs::Ca;

const BIN: &str = env!("CARGO_BIN_EXE_s3mount-certs");

#[test]
fn cli_writes_the_pem_files_and_secret_and_prints_only_the_ca_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let secret = dir.path().join("secret.yaml");
    let output = Command::new(BIN)
        .args([
            "--service",
            "s3mount-webhook",
            "--namespace",
            "s3mount",
            "--out-dir",
        ])
        .arg(&out)
        .arg("--secret-manifest")
        .arg(&secret)
        .args(["--san", "127.0.0.1", "--san", "localhost"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let ca_pem = fs::read_to_string(out.join("ca.crt")).unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let bundle = base64::engine::general_purpose::STANDARD
        .decode(stdout.trim())
        .unwrap();
    assert_eq!(String::from_utf8(bundle).unwrap(), ca_pem);
    assert!(
        fs::read_to_string(out.join("tls.crt"))
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let key_mode = fs::metadata(out.join("tls.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600);
    assert!(
        !out.join("ca.key").exists(),
        "the CA key is kept only with --keep-ca-key"
    );
    let manifest = fs::read_to_string(&secret).unwrap();
    assert!(manifest.contains("name: s3mount-webhook-tls") && manifest.contains("namespace: s3mount"));
}

#[test]
fn cli_keep_ca_key_writes_a_ca_that_can_be_loaded_again() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(BIN)
        .arg("--out-dir")
        .arg(dir.path())
        .arg("--keep-ca-key")
        .output()
        .unwrap();
    assert!(status.status.success());
    let cert = fs::read_to_string(dir.path().join("ca.crt")).unwrap();
    let key = fs::read_to_string(dir.path().join("ca.key")).unwrap();
    Ca::from_pem(&cert, &key).unwrap();
}

#[test]
fn cli_bad_san_exits_64_with_a_message_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let output = Command::new(BIN)
        .arg("--out-dir")
        .arg(&out)
        .args(["--san", "not_a_name"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not_a_name"));
    assert!(output.stdout.is_empty());
    assert!(!out.exists());
}

#[test]
fn cli_unwritable_out_dir_exits_1_not_64() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    fs::write(&file, "x").unwrap();
    let output = Command::new(BIN)
        .arg("--out-dir")
        .arg(file.join("sub"))
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stdout.is_empty());
}
