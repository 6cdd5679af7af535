//! Every mutated fixture pod validates against the Kubernetes schema (`kubernetes-validate
//! --strict`) for the oldest and newest versions each sidecar mode supports.
//!
//! Needs the tool from `.venv` (installed by `make setup`), so it is `#[ignore]`d in a bare
//! `cargo test` and run by `make webhook-schema` (part of `make test`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{FIXTURES, apply, fixture, run};
use s3mount_webhook::inject::Lifecycle;

/// Oldest and newest Kubernetes version per mode: native sidecars need 1.29.
const VERSIONS: &[(Lifecycle, &[&str])] = &[
    (Lifecycle::Native, &["1.29.0", "1.37.0"]),
    (Lifecycle::Legacy, &["1.25.0", "1.37.0"]),
];

fn validator() -> PathBuf {
    std::env::var_os("KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/kubernetes-validate"))
}

fn validates(tool: &PathBuf, version: &str, file: &std::path::Path) -> (bool, String) {
    let out = Command::new(tool)
        .args(["--strict", "--no-warn", "-k", version])
        .arg(file)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.contains("passed"), text)
}

/// A fixture may use fields newer than the oldest version (native sidecars, schedulingGates): the
/// rule is that whenever the pod as sent validates, the mutated pod validates too, and that on the
/// newest version every one does.
#[test]
#[ignore = "needs .venv/bin/kubernetes-validate; run by `make webhook-schema`"]
fn mutated_pods_validate_strictly_for_oldest_and_newest_supported_kubernetes() {
    let tool = validator();
    assert!(tool.exists(), "{} missing: run `make setup`", tool.display());
    let dir = tempfile::tempdir().unwrap();
    let write = |name: String, mut pod: serde_json::Value| {
        // The tool names each resource by metadata.name; the API server fills it from generateName.
        if pod["metadata"].get("name").is_none()
            && let Some(g) = pod["metadata"]["generateName"].as_str()
        {
            pod["metadata"]["name"] = serde_json::Value::String(format!("{g}abcde"));
        }
        let path = dir.path().join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(&pod).unwrap()).unwrap();
        path
    };
    for (lifecycle, versions) in VERSIONS {
        for (i, version) in versions.iter().enumerate() {
            let newest = i + 1 == versions.len();
            let mut checked = 0;
            for name in FIXTURES {
                if *lifecycle == Lifecycle::Legacy && *name == "init-containers.json" {
                    continue;
                }
                let body = fixture(name);
                let original = write(format!("original-{name}"), body["request"]["object"].clone());
                let (original_ok, original_text) = validates(&tool, version, &original);
                assert!(
                    original_ok || !newest,
                    "fixture {name} is not a valid pod on {version}:\n{original_text}"
                );
                if !original_ok {
                    continue;
                }
                let mutated = write(
                    format!("{lifecycle:?}-{name}"),
                    apply(&body, &run(&body, *lifecycle)),
                );
                let (ok, text) = validates(&tool, version, &mutated);
                assert!(
                    ok,
                    "{lifecycle:?} mutation of {name} on Kubernetes {version}:\n{text}"
                );
                checked += 1;
            }
            assert!(
                checked >= 2,
                "{lifecycle:?} on {version}: only {checked} fixtures checked"
            );
        }
    }
}
