//! The privileged sidecar is added only where it is asked for and only with the image the webhook
//! is configured with (issue 6, "Security"): a pod cannot choose the sidecar's image through
//! annotations or its own containers, a namespace that did not opt in gets nothing, and a pod
//! without `s3.mount/*` annotations gets nothing. Uses the webhook library's pure `mutate`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use s3mount_webhook::inject::{InjectConfig, Lifecycle};
use s3mount_webhook::policy::NamespaceInfo;
use s3mount_webhook::review::{self, Context, NamespaceView, Outcome};

const IMAGE: &str = "registry.internal/s3mount-sidecar:pinned";
const EVIL: &str = "evil.example/rootkit:latest";

fn context() -> Context {
    Context {
        inject: InjectConfig {
            sidecar_image: IMAGE.to_owned(),
            lifecycle: Lifecycle::Native,
            image_pull_policy: None,
        },
        opt_in_label: ("s3.mount/inject".to_owned(), "enabled".to_owned()),
    }
}

fn review_of(annotations: Value, init_containers: Value) -> Value {
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "0b6f7d1e-1111-4c43-9d3c-1c2f8c3b0a11",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": {
                "kind": "Pod", "apiVersion": "v1",
                "metadata": {"name": "p", "namespace": "team-a", "annotations": annotations},
                "spec": {
                    "initContainers": init_containers,
                    "containers": [{"name": "app", "image": "busybox:1.36"}]
                }
            }
        }
    })
}

/// Every container the patch adds or changes to be privileged, with its image.
fn privileged_images(body: &Value, ns: NamespaceView<'_>) -> (Outcome, Vec<String>, String) {
    let parsed = review::parse_body(&serde_json::to_vec(body).expect("json")).expect("a review");
    let answer = review::mutate(&parsed, &context(), ns).expect("answerable");
    if answer.outcome == Outcome::Denied {
        println!("denied: {}", answer.reason);
    }
    let Some(patch) = answer.patch() else {
        return (answer.outcome, Vec::new(), String::new());
    };
    let mut pod = body["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).expect("patch applies");
    let mut images = Vec::new();
    for list in ["initContainers", "containers"] {
        for c in pod["spec"][list].as_array().into_iter().flatten() {
            if c["securityContext"]["privileged"] == json!(true) {
                images.push(c["image"].as_str().unwrap_or("").to_owned());
            }
        }
    }
    (
        answer.outcome,
        images,
        serde_json::to_string(&patch).expect("patch json"),
    )
}

#[test]
fn a_pod_cannot_choose_the_sidecar_image_through_annotations() {
    let attempts = [
        json!({"s3.mount/secret": "creds", "s3.mount/bucket": "data-bucket", "s3.mount/image": EVIL}),
        json!({"s3.mount/secret": "creds", "s3.mount/bucket": "data-bucket", "s3.mount/sidecar-image": EVIL}),
        json!({"s3.mount/secret": "creds", "s3.mount/bucket": "data-bucket", "s3.mount/image.default": EVIL}),
        json!({"s3.mount/secret": "creds", "s3.mount/bucket": "data-bucket", "s3.mount/endpoint": format!("http://127.0.0.1:9000 --sidecar-image={EVIL}")}),
        json!({"s3.mount/secret": "creds", "s3.mount/bucket": "data-bucket", "s3.mount/prefix": format!("x\"image\":\"{EVIL}\"")}),
        json!({"s3.mount/secret": "creds", "s3.mount/bucket": "data-bucket", "s3.mount/log-level": format!("info\nimage: {EVIL}")}),
    ];
    let mut patched = 0;
    for a in attempts {
        let (outcome, images, patch) =
            privileged_images(&review_of(a.clone(), json!([])), NamespaceView::Unknown);
        assert!(
            images.iter().all(|i| i == IMAGE),
            "{a}: privileged containers with images {images:?}"
        );
        // The value may be echoed as an argument, never as an image.
        let p: Value = serde_json::from_str(if patch.is_empty() { "[]" } else { &patch }).expect("patch");
        let evil_image = p.as_array().into_iter().flatten().any(|op| {
            op["value"]["image"].as_str() == Some(EVIL)
                || op["path"].as_str().is_some_and(|x| x.ends_with("/image"))
        });
        assert!(!evil_image, "{a}: the patch sets an image: {patch}");
        patched += usize::from(outcome == Outcome::Patched);
        assert!(
            matches!(outcome, Outcome::Patched | Outcome::Denied),
            "{a}: {outcome:?}"
        );
    }
    assert!(
        patched >= 1,
        "at least the harmless-looking prefix must reach the patch path"
    );
    println!("reliability: security_sidecar_image attempts=6 patched={patched} foreign_images=0");
}

#[test]
fn a_pod_that_brings_its_own_s3mount_sidecar_container_gets_no_privileged_patch() {
    let own = json!([{"name": "s3mount-sidecar", "image": EVIL}]);
    let (outcome, images, _) = privileged_images(
        &review_of(
            json!({"s3.mount/secret": "creds", "s3.mount/bucket": "data-bucket"}),
            own,
        ),
        NamespaceView::Unknown,
    );
    assert!(
        images.is_empty(),
        "the webhook made a pod-chosen image privileged: {images:?}"
    );
    assert_ne!(outcome, Outcome::Patched);
}

#[test]
fn the_sidecar_is_added_only_in_opted_in_namespaces_and_only_to_pods_that_ask() {
    let asks = review_of(
        json!({"s3.mount/secret": "creds", "s3.mount/bucket": "data-bucket"}),
        json!([]),
    );
    let opted_in = NamespaceInfo {
        labels: BTreeMap::from([("s3.mount/inject".to_owned(), "enabled".to_owned())]),
        annotations: BTreeMap::new(),
    };
    let not_opted = NamespaceInfo {
        labels: BTreeMap::from([("s3.mount/inject".to_owned(), "disabled".to_owned())]),
        annotations: BTreeMap::new(),
    };
    let (o, images, _) = privileged_images(&asks, NamespaceView::Known(Some(&opted_in)));
    assert_eq!(
        (o, images),
        (Outcome::Patched, vec![IMAGE.to_owned()]),
        "opted in and asking: patched"
    );
    for (what, ns) in [
        ("not opted in", NamespaceView::Known(Some(&not_opted))),
        ("unknown namespace", NamespaceView::Known(None)),
    ] {
        let (o, images, _) = privileged_images(&asks, ns);
        assert!(
            images.is_empty() && o != Outcome::Patched,
            "{what}: {o:?} {images:?}"
        );
    }
    let (o, images, _) = privileged_images(
        &review_of(json!({"team": "a"}), json!([])),
        NamespaceView::Known(Some(&opted_in)),
    );
    assert!(
        images.is_empty() && o != Outcome::Patched,
        "a pod that does not ask: {o:?}"
    );
}
