//! `--self-signed` without a Kubernetes API: the binary exits with a clear error and the documented
//! exit code, never a panic. The only API it is pointed at is a closed loopback port.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A kubeconfig whose server is `https://127.0.0.1:1`, where nothing listens.
const CLOSED_KUBECONFIG: &str = "\
apiVersion: v1
kind: Config
clusters:
  - name: closed
    cluster:
      server: https://127.0.0.1:1
      insecure-skip-tls-verify: true
users:
  - name: nobody
    user:
      token: not-a-token
contexts:
  - name: closed
    context: {cluster: closed, user: nobody}
current-context: closed
";

fn run(dir: &Path, kubeconfig: Option<&Path>, extra: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_s3mount-webhook"));
    cmd.args([
        "--listen=127.0.0.1:0",
        "--health-listen=127.0.0.1:0",
        "--self-signed",
    ])
    .arg(format!("--tls-cert={}", dir.join("tls.crt").display()))
    .arg(format!("--tls-key={}", dir.join("tls.key").display()))
    .args(extra)
    // Nothing but the kubeconfig below may tell it where an API is, and no proxy may carry it.
    .env_remove("KUBERNETES_SERVICE_HOST")
    .env_remove("KUBERNETES_SERVICE_PORT")
    .env("HOME", dir)
    .env("NO_PROXY", "127.0.0.1")
    .env("RUST_BACKTRACE", "0");
    for proxy in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(proxy);
    }
    match kubeconfig {
        Some(k) => cmd.env("KUBECONFIG", k),
        None => cmd.env_remove("KUBECONFIG"),
    };
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_unreachable_api_is_a_clear_error_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, CLOSED_KUBECONFIG).unwrap();
    let started = Instant::now();
    let out = run(dir.path(), Some(&kubeconfig), &["--namespace=ns1"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("cannot provide the serving certificate"), "{err}");
    assert!(err.contains("GET Secret ns1/s3mount-webhook-ca"), "{err}");
    assert!(err.contains("is the Kubernetes API reachable?"), "{err}");
    assert!(!dir.path().join("tls.crt").exists() && !dir.path().join("tls.key").exists());
}

#[test]
fn no_kube_configuration_and_kube_api_off_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), None, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("no in-cluster or kubeconfig configuration was found"),
        "{err}"
    );

    let out = run(
        dir.path(),
        Some(&dir.path().join("kubeconfig")),
        &["--kube-api=off"],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("--self-signed needs the Kubernetes API, but --kube-api=off"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
