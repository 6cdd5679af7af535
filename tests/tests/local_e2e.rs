//! The main job end to end on real parts (issue: walking skeleton): `scripts/demo.sh` run as a
//! test. It starts a real S3 server, the webhook over TLS, sends a real AdmissionReview, runs the
//! mutated pod with real mount namespaces and a real FUSE mount, and checks bytes both ways, the
//! recovery after SIGKILL, the clean stop, and the negative control without propagation.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_s3mount-podrun"))
        .parent()
        .expect("binary has a directory")
        .to_path_buf()
}

#[test]
fn example_pod_reads_and_writes_the_bucket_through_the_injected_sidecar() {
    let top = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let bins = bin_dir();
    for b in ["s3mount-webhook", "s3mount-sidecar", "s3mount-certs"] {
        assert!(
            bins.join(b).exists(),
            "{} is missing: build every binary first (cargo build --workspace --bins, as make test does)",
            bins.join(b).display()
        );
    }
    let out = Command::new("bash")
        .arg(top.join("scripts/demo.sh"))
        .env("S3MOUNT_BIN_DIR", &bins)
        .current_dir(top)
        .output()
        .expect("running scripts/demo.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for expected in [
        "sending the mutated pod again yields no patch",
        "written-by-app.txt is in the bucket with exact bytes",
        "app reads hello.txt again",
        "no mount left under the node directory or on the machine",
        "without HostToContainer the app does not see the remounted bucket",
        "DEMO PASSED",
    ] {
        assert!(
            stdout.contains(expected),
            "demo output lacks {expected:?}:\n{stdout}"
        );
    }
}
