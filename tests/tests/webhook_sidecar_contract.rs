//! The command line the webhook writes for the sidecar is accepted by the sidecar's own parser
//! (docs/interfaces.md is the contract; this test is what keeps both sides to it).

use serde_json::{Value, json};

use s3mount_sidecar::config::{self, Command};
use s3mount_webhook::inject::{self, InjectConfig, Lifecycle, Plan};

const POD_UID: &str = "0b7d4f0e-1111-4222-8333-444455556666";

fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns", "annotations": annotations},
        "spec": {"terminationGracePeriodSeconds": 45, "containers": [{"name": "app", "image": "busybox"}]}
    })
}

/// The sidecar container the patch adds, whatever op carries it.
fn injected_sidecar(pod: &Value, lifecycle: Lifecycle) -> Value {
    let cfg = InjectConfig {
        sidecar_image: "s3mount/sidecar:test".into(),
        lifecycle,
        image_pull_policy: None,
    };
    let Plan::Patch { ops, .. } = inject::plan(pod, &cfg).expect("the pod is accepted") else {
        panic!("the pod was not patched");
    };
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &ops).expect("the patch applies");
    let lists = [
        patched.pointer("/spec/initContainers"),
        patched.pointer("/spec/containers"),
    ];
    lists
        .into_iter()
        .flatten()
        .flat_map(|l| l.as_array().cloned().unwrap_or_default())
        .find(|c| c["name"] == inject::SIDECAR_NAME)
        .expect("a sidecar container")
}

/// What the kubelet does to `$(VAR)` in args before the sidecar sees them.
fn kubelet_expand(s: &str) -> String {
    s.replace("$(S3MOUNT_POD_UID)", POD_UID)
}

fn sidecar_accepts(sidecar: &Value) -> Command {
    let args: Vec<String> = sidecar["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| kubelet_expand(a.as_str().expect("string arg")))
        .collect();
    let argv = std::iter::once("s3mount-sidecar".to_string()).chain(args.iter().cloned());
    config::parse_from(argv)
        .unwrap_or_else(|e| panic!("the sidecar refuses the webhook's args {args:?}: {e}"))
}

#[test]
fn webhook_args_for_one_bucket_are_accepted_by_the_sidecar() {
    let p = pod(json!({
        "s3.mount/bucket": "demo",
        "s3.mount/prefix": "team/a/",
        "s3.mount/endpoint": "http://127.0.0.1:9000",
        "s3.mount/region": "eu-west-1",
        "s3.mount/path-style": "true",
        "s3.mount/read-only": "true",
        "s3.mount/secret": "creds",
        "s3.mount/uid": "1000",
        "s3.mount/gid": "2000",
        "s3.mount/file-mode": "0640",
        "s3.mount/dir-mode": "0750",
        "s3.mount/metadata-ttl": "5s",
        "s3.mount/cache-size": "256Mi",
        "s3.mount/log-level": "debug",
    }));
    let sidecar = injected_sidecar(&p, Lifecycle::Native);
    let Command::Mount(m) = sidecar_accepts(&sidecar) else {
        panic!("not a mount command")
    };
    assert_eq!(m.bucket, "demo");
    assert_eq!(m.prefix, "team/a/");
    assert_eq!(m.region, "eu-west-1");
    assert!(m.path_style && m.read_only);
    assert_eq!(
        (m.uid, m.gid, m.file_mode, m.dir_mode),
        (1000, 2000, 0o640, 0o750)
    );
    assert_eq!(m.metadata_ttl, std::time::Duration::from_secs(5));
    assert_eq!(m.cache_size, 256 * 1024 * 1024);
    assert_eq!(m.grace_period, std::time::Duration::from_secs(45));
    assert!(
        m.mountpoint.to_string_lossy().contains(POD_UID),
        "the mountpoint goes through the kubelet pods hostPath: {}",
        m.mountpoint.display()
    );
}

#[test]
fn webhook_probe_commands_are_accepted_by_the_sidecar() {
    let p = pod(json!({"s3.mount/bucket": "demo"}));
    for lifecycle in [Lifecycle::Native, Lifecycle::Legacy] {
        let sidecar = injected_sidecar(&p, lifecycle);
        let cmd = sidecar
            .pointer("/startupProbe/exec/command")
            .or_else(|| sidecar.pointer("/lifecycle/postStart/exec/command"))
            .and_then(Value::as_array)
            .expect("a probe or a postStart hook");
        let argv: Vec<String> = cmd
            .iter()
            .map(|a| a.as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(argv[0], inject::SIDECAR_BINARY);
        let parsed = config::parse_from(argv.iter().cloned())
            .unwrap_or_else(|e| panic!("the sidecar refuses its probe {argv:?}: {e}"));
        let Command::Probe(probe) = parsed else {
            panic!("not a probe: {argv:?}")
        };
        assert_eq!(probe.mountpoints.len(), 1);
    }
}

#[test]
fn webhook_args_for_several_buckets_are_accepted_by_the_sidecar() {
    let p = pod(json!({
        "s3.mount/bucket": "data",
        "s3.mount/bucket.models": "models",
        "s3.mount/path.models": "/models",
        "s3.mount/read-only.models": "true",
    }));
    let sidecar = injected_sidecar(&p, Lifecycle::Native);
    let Command::MountMany(mounts) = sidecar_accepts(&sidecar) else {
        panic!("not several mounts")
    };
    let by_bucket = |b: &str| {
        mounts
            .iter()
            .find(|m| m.bucket == b)
            .unwrap_or_else(|| panic!("no mount of {b}"))
    };
    assert_eq!(mounts.len(), 2);
    assert!(
        !by_bucket("data").read_only,
        "read-only.models must not leak into the default mount"
    );
    assert!(by_bucket("models").read_only);
    assert_ne!(by_bucket("data").mountpoint, by_bucket("models").mountpoint);
    // Process-wide settings reach every mount.
    assert!(
        mounts
            .iter()
            .all(|m| m.grace_period == std::time::Duration::from_secs(45))
    );
}

#[test]
fn a_legacy_mode_job_shares_its_process_namespace_and_its_sidecar_stops_with_the_apps() {
    let mut p = pod(json!({"s3.mount/bucket": "demo"}));
    p["spec"]["restartPolicy"] = json!("Never");
    let cfg = InjectConfig {
        sidecar_image: "s3mount/sidecar:test".into(),
        lifecycle: Lifecycle::Legacy,
        image_pull_policy: None,
    };
    let Plan::Patch { ops, .. } = inject::plan(&p, &cfg).expect("accepted") else {
        panic!("not patched")
    };
    let mut patched = p.clone();
    json_patch::patch(&mut patched, &ops).expect("the patch applies");
    assert_eq!(patched["spec"]["shareProcessNamespace"], json!(true));
    let sidecar = injected_sidecar(&p, Lifecycle::Legacy);
    let Command::Mount(m) = sidecar_accepts(&sidecar) else {
        panic!("not a mount command")
    };
    assert!(m.stop_when_apps_exit);
    // A long-running pod keeps its own process namespace and a sidecar that waits for SIGTERM.
    let long_running = pod(json!({"s3.mount/bucket": "demo"}));
    let Command::Mount(m) = sidecar_accepts(&injected_sidecar(&long_running, Lifecycle::Legacy)) else {
        panic!("not a mount command")
    };
    assert!(!m.stop_when_apps_exit);
}

#[test]
fn every_prefix_the_webhook_accepts_the_sidecar_accepts_and_the_rest_is_denied() {
    for prefix in ["", "a/", "a/b", "data/2024/", "sp ace/", "ü/", "a.b/", "x..y/"] {
        let p = pod(json!({"s3.mount/bucket": "demo", "s3.mount/prefix": prefix}));
        let cfg = InjectConfig {
            sidecar_image: "s".into(),
            lifecycle: Lifecycle::Native,
            image_pull_policy: None,
        };
        match inject::plan(&p, &cfg) {
            Ok(_) => {
                let Command::Mount(_) = sidecar_accepts(&injected_sidecar(&p, Lifecycle::Native)) else {
                    panic!("not a mount")
                };
            }
            Err(e) => panic!("prefix {prefix:?} denied: {e:?}"),
        }
    }
    for prefix in ["a//b/", "a/../b/", "./x/", "x/./y", "..", "/abs"] {
        let p = pod(json!({"s3.mount/bucket": "demo", "s3.mount/prefix": prefix}));
        let cfg = InjectConfig {
            sidecar_image: "s".into(),
            lifecycle: Lifecycle::Native,
            image_pull_policy: None,
        };
        assert!(
            inject::plan(&p, &cfg).is_err(),
            "prefix {prefix:?} must be denied: the sidecar refuses it"
        );
        let argv = [
            "s3mount-sidecar",
            "--bucket=demo",
            "--mountpoint=/m",
            &format!("--prefix={prefix}"),
        ];
        assert!(
            config::parse_from(argv).is_err(),
            "the sidecar refuses {prefix:?} too"
        );
    }
}

#[test]
fn a_pod_with_its_own_container_named_like_the_sidecar_is_denied_not_silently_skipped() {
    let mut p = pod(json!({"s3.mount/bucket": "demo"}));
    p["spec"]["containers"]
        .as_array_mut()
        .expect("containers")
        .push(json!({"name": inject::SIDECAR_NAME, "image": "example.com/not-ours:1"}));
    let cfg = InjectConfig {
        sidecar_image: "s3mount/sidecar:test".into(),
        lifecycle: Lifecycle::Native,
        image_pull_policy: None,
    };
    let errors = inject::plan(&p, &cfg).expect_err("denied");
    assert!(
        errors.iter().any(|e| e.to_string().contains("reserved")),
        "{errors:?}"
    );
}
