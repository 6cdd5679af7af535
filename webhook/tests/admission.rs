//! The admission contract over real AdmissionReview fixtures, through the router without a socket.

mod common;

use std::sync::Arc;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use common::{FIXTURES, apply, context, fixture, preserved, run, with_object};
use s3mount_webhook::inject::{Lifecycle, SIDECAR_NAME};
use s3mount_webhook::metrics::Metrics;
use s3mount_webhook::review::Outcome;
use s3mount_webhook::server::{self, AppState};

fn state(lifecycle: Lifecycle) -> Arc<AppState> {
    Arc::new(AppState::new(context(lifecycle), Arc::new(Metrics::new()), None))
}

async fn post(state: Arc<AppState>, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let req = Request::post("/mutate")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = server::router(state).oneshot(req).await.unwrap();
    let status = resp.status();
    (
        status,
        resp.into_body().collect().await.unwrap().to_bytes().to_vec(),
    )
}

fn sidecar(pod: &Value, lifecycle: Lifecycle) -> (usize, Value) {
    let field = if lifecycle == Lifecycle::Native {
        "initContainers"
    } else {
        "containers"
    };
    let list = pod["spec"][field].as_array().unwrap();
    let i = list
        .iter()
        .position(|c| c["name"] == SIDECAR_NAME)
        .expect("sidecar injected");
    (i, list[i].clone())
}

#[test]
fn every_fixture_is_patched_strictly_keeps_its_fields_and_is_idempotent() {
    for lifecycle in [Lifecycle::Native, Lifecycle::Legacy] {
        for name in FIXTURES {
            if lifecycle == Lifecycle::Legacy && *name == "init-containers.json" {
                continue; // mounts into an init container: refused in legacy mode, tested below
            }
            let body = fixture(name);
            let answer = run(&body, lifecycle);
            assert_eq!(answer.outcome, Outcome::Patched, "{name}: {}", answer.reason);
            let before = &body["request"]["object"];
            let after = apply(&body, &answer);
            assert!(preserved(before, &after), "{name}: a pre-existing field changed");
            let again = run(&with_object(&body, after), lifecycle);
            assert_eq!(again.outcome, Outcome::Skipped, "{name}: second pass");
            assert!(again.patch().is_none(), "{name}: second pass has a patch");
        }
    }
}

#[test]
fn response_echoes_uid_and_version_and_sets_patch_type_only_with_a_patch() {
    for name in FIXTURES {
        let body = fixture(name);
        let out = run(&body, Lifecycle::Native).to_json();
        assert_eq!(out["apiVersion"], body["apiVersion"], "{name}");
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(out["response"]["uid"], body["request"]["uid"], "{name}");
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        assert!(
            out["response"]["patch"].is_string(),
            "patch must be base64 text: {name}"
        );
    }
    let mut plain = fixture("basic-pod.json");
    plain["request"]["object"]["metadata"]["annotations"] = json!({"team": "a"});
    let out = run(&plain, Lifecycle::Native).to_json();
    assert_eq!(out["response"]["allowed"], true);
    assert!(out["response"].get("patchType").is_none() && out["response"].get("patch").is_none());
}

#[test]
fn mesh_init_sidecars_stay_first_and_every_init_container_is_untouched() {
    let body = fixture("mesh-injected.json");
    let pod = apply(&body, &run(&body, Lifecycle::Native));
    let inits = pod["spec"]["initContainers"].as_array().unwrap();
    let names: Vec<&str> = inits.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["istio-init", "istio-proxy", SIDECAR_NAME]);
    let original = body["request"]["object"]["spec"]["initContainers"]
        .as_array()
        .unwrap();
    assert_eq!(&inits[..2], &original[..]);
    assert_eq!(
        pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
        "web"
    );
}

#[test]
fn sidecar_goes_before_the_pods_own_init_containers_and_native_sidecars() {
    let body = fixture("native-sidecars.json");
    let pod = apply(&body, &run(&body, Lifecycle::Native));
    let inits = pod["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(inits[0]["name"], SIDECAR_NAME);
    assert_eq!(
        &inits[1..],
        body["request"]["object"]["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .as_slice()
    );
}

#[test]
fn native_sidecar_matches_the_interface_contract() {
    let body = fixture("basic-pod.json");
    let pod = apply(&body, &run(&body, Lifecycle::Native));
    let (_, s) = sidecar(&pod, Lifecycle::Native);
    assert_eq!(s["restartPolicy"], "Always");
    assert_eq!(s["image"], "s3mount-sidecar:test");
    assert!(s.get("command").is_none());
    assert_eq!(
        s["args"],
        json!([
            "--bucket=demo",
            "--mountpoint=/s3mount/kubelet-pods/$(S3MOUNT_POD_UID)/volumes/kubernetes.io~empty-dir/s3mount-default",
            "--endpoint=http://127.0.0.1:9000",
            "--region=us-east-1",
            "--path-style",
            "--cache-dir=/s3mount/cache",
            "--grace-period=30s"
        ])
    );
    assert_eq!(
        s["securityContext"],
        json!({"privileged": true, "runAsUser": 0, "runAsNonRoot": false, "readOnlyRootFilesystem": true})
    );
    assert_eq!(
        s["startupProbe"]["exec"]["command"],
        json!([
            "/usr/local/bin/s3mount-sidecar",
            "probe",
            "--mountpoint=/s3mount/mnt/default"
        ])
    );
    assert_eq!(
        s["volumeMounts"],
        json!([
            {"name": "s3mount-default", "mountPath": "/s3mount/mnt/default", "mountPropagation": "Bidirectional"},
            {"name": "s3mount-cache", "mountPath": "/s3mount/cache"},
            {"name": "s3mount-kubelet-pods", "mountPath": "/s3mount/kubelet-pods", "mountPropagation": "Bidirectional"}
        ])
    );
    let env = s["env"].as_array().unwrap();
    assert_eq!(
        env[0],
        json!({"name": "S3MOUNT_POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}})
    );
    assert_eq!(
        env[1]["valueFrom"]["secretKeyRef"],
        json!({"name": "s3-credentials", "key": "AWS_ACCESS_KEY_ID"})
    );
    assert_eq!(
        env[2]["valueFrom"]["secretKeyRef"]["key"],
        "AWS_SECRET_ACCESS_KEY"
    );
    assert_eq!(env[3]["valueFrom"]["secretKeyRef"]["optional"], true);
    let hostpath = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "s3mount-kubelet-pods");
    assert_eq!(
        hostpath.unwrap()["hostPath"],
        json!({"path": "/var/lib/kubelet/pods", "type": "Directory"})
    );
    let vols: Vec<&str> = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(vols.contains(&"s3mount-default") && vols.contains(&"s3mount-cache"));
    let app = &pod["spec"]["containers"][0];
    assert_eq!(
        app["volumeMounts"].as_array().unwrap().last().unwrap(),
        &json!({"name": "s3mount-default", "mountPath": "/mnt/s3", "mountPropagation": "HostToContainer"})
    );
}

#[test]
fn legacy_sidecar_is_the_first_container_with_a_blocking_post_start_hook() {
    let body = fixture("basic-pod.json");
    let pod = apply(&body, &run(&body, Lifecycle::Legacy));
    let (i, s) = sidecar(&pod, Lifecycle::Legacy);
    assert_eq!(i, 0);
    assert!(s.get("restartPolicy").is_none());
    assert_eq!(
        s["lifecycle"]["postStart"]["exec"]["command"],
        json!([
            "/usr/local/bin/s3mount-sidecar",
            "probe",
            "--mountpoint=/s3mount/mnt/default",
            "--wait=120s"
        ])
    );
    // The app container moved to index 1 and still got its mount; kubectl still defaults to it.
    assert_eq!(
        pod["spec"]["containers"][1]["volumeMounts"][1]["mountPath"],
        "/mnt/s3"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
        "app"
    );
}

#[test]
fn legacy_mode_refuses_init_containers_in_the_containers_annotation() {
    let answer = run(&fixture("init-containers.json"), Lifecycle::Legacy);
    assert_eq!(answer.outcome, Outcome::Denied);
    assert!(
        answer.reason.contains("init container \"prepare\""),
        "{}",
        answer.reason
    );
}

#[test]
fn chosen_containers_and_init_containers_get_the_mounts_in_native_mode() {
    let body = fixture("init-containers.json");
    let pod = apply(&body, &run(&body, Lifecycle::Native));
    let mounts = |c: &Value| -> Vec<String> {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap().to_owned())
            .collect()
    };
    let spec = &pod["spec"];
    assert_eq!(spec["initContainers"][0]["name"], SIDECAR_NAME);
    assert!(
        mounts(&spec["initContainers"][2]).contains(&"/out".to_owned()),
        "prepare gets the mounts"
    );
    assert_eq!(
        spec["initContainers"][1], body["request"]["object"]["spec"]["initContainers"][0],
        "migrate untouched"
    );
    assert!(mounts(&spec["containers"][0]).contains(&"/mnt/s3".to_owned()));
    assert_eq!(
        spec["containers"][1], body["request"]["object"]["spec"]["containers"][1],
        "metrics untouched"
    );
    let (_, s) = sidecar(&pod, Lifecycle::Native);
    let args: Vec<&str> = s["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        vec![
            "--bucket=raw-events",
            "--mountpoint=/s3mount/kubelet-pods/$(S3MOUNT_POD_UID)/volumes/kubernetes.io~empty-dir/s3mount-default",
            "--bucket=curated-events",
            "--mountpoint=/s3mount/kubelet-pods/$(S3MOUNT_POD_UID)/volumes/kubernetes.io~empty-dir/s3mount-out",
            "--cache-dir=/s3mount/cache",
            "--grace-period=120s",
            "--log-level=debug"
        ]
    );
    assert_eq!(
        s["startupProbe"]["exec"]["command"],
        json!([
            "/usr/local/bin/s3mount-sidecar",
            "probe",
            "--mountpoint=/s3mount/mnt/default",
            "--mountpoint=/s3mount/mnt/out"
        ])
    );
}

#[test]
fn pod_identity_reaches_the_sidecar_without_a_secret() {
    let body = fixture("deployment-generatename.json");
    let answer = run(&body, Lifecycle::Native);
    assert_eq!(answer.info.pod, "models-api-7d9c6b5f4-*");
    assert_eq!(answer.info.namespace, "ml");
    let pod = apply(&body, &answer);
    let (_, s) = sidecar(&pod, Lifecycle::Native);
    let env: Vec<&str> = s["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"AWS_ROLE_ARN") && env.contains(&"AWS_WEB_IDENTITY_TOKEN_FILE"),
        "{env:?}"
    );
    let token = s["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "aws-iam-token")
        .unwrap();
    assert_eq!(
        token["mountPath"],
        "/var/run/secrets/eks.amazonaws.com/serviceaccount"
    );
    let args = s["args"].as_array().unwrap();
    for want in [
        "--prefix=prod/",
        "--read-only",
        "--uid=1000",
        "--gid=1000",
        "--cache-size=2GiB",
    ] {
        assert!(args.contains(&json!(want)), "{want} in {args:?}");
    }
    // Pod-level runAsNonRoot: true stays, the sidecar overrides it for itself.
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(s["securityContext"]["runAsNonRoot"], false);
}

#[test]
fn memory_cache_gets_a_memory_volume_with_size_limit_and_fitting_resources() {
    let body = fixture("native-sidecars.json");
    let pod = apply(&body, &run(&body, Lifecycle::Native));
    let cache = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "s3mount-cache")
        .unwrap();
    assert_eq!(
        cache["emptyDir"],
        json!({"medium": "Memory", "sizeLimit": "512Mi"})
    );
    let (_, s) = sidecar(&pod, Lifecycle::Native);
    assert_eq!(s["resources"]["limits"]["memory"], "1Gi");
    assert_eq!(s["resources"]["requests"]["memory"], "576Mi");
    let env: Vec<&str> = s["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(env, vec!["S3MOUNT_POD_UID"], "anonymous: no credentials wired");
    assert!(s["args"].as_array().unwrap().contains(&json!("--anonymous")));
}

/// Ephemeral containers (debug containers) are never touched: no mount, no env, byte for byte
/// as they came, and naming one in `s3.mount/containers` is the unknown-container error.
#[test]
fn ephemeral_containers_are_left_untouched() {
    let body = fixture("deployment-generatename.json");
    let mut pod = body["request"]["object"].clone();
    let app = pod["spec"]["containers"][0]["name"].clone();
    pod["spec"]["ephemeralContainers"] = json!([
        {"name": "debugger", "image": "busybox:1.36", "targetContainerName": app,
         "stdin": true, "tty": true},
        {"name": "debugger-2", "image": "busybox:1.36",
         "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    ]);
    let body = with_object(&body, pod.clone());
    for lifecycle in [Lifecycle::Native, Lifecycle::Legacy] {
        let answer = run(&body, lifecycle);
        assert_eq!(answer.outcome, Outcome::Patched, "{}", answer.reason);
        let after = apply(&body, &answer);
        assert_eq!(
            after["spec"]["ephemeralContainers"],
            pod["spec"]["ephemeralContainers"]
        );
        assert!(preserved(&pod, &after));
        let again = run(&with_object(&body, after), lifecycle);
        assert_eq!(again.outcome, Outcome::Skipped, "second pass");
    }
    pod["metadata"]["annotations"]["s3.mount/containers"] = json!("debugger");
    let answer = run(&with_object(&body, pod), Lifecycle::Native);
    assert_eq!(answer.outcome, Outcome::Denied);
    assert!(answer.reason.contains("debugger"), "{}", answer.reason);
}

#[test]
fn pod_without_volumes_gets_the_lists_created() {
    let body = fixture("no-volumes.json");
    let answer = run(&body, Lifecycle::Native);
    assert!(answer.info.dry_run);
    let ops = serde_json::to_value(answer.patch().unwrap()).unwrap();
    let paths: Vec<&str> = ops
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        vec![
            "/spec/volumes",
            "/spec/containers/0/volumeMounts",
            "/spec/initContainers",
            "/metadata/annotations/kubectl.kubernetes.io~1default-container"
        ]
    );
}

#[test]
fn missing_annotations_map_is_not_opted_in() {
    let mut body = fixture("no-volumes.json");
    body["request"]["object"]["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    assert_eq!(run(&body, Lifecycle::Native).outcome, Outcome::Skipped);
}

#[test]
fn non_create_operations_and_other_kinds_are_allowed_without_patch() {
    for op in ["UPDATE", "DELETE", "CONNECT"] {
        let mut body = fixture("basic-pod.json");
        body["request"]["operation"] = json!(op);
        let answer = run(&body, Lifecycle::Native);
        assert_eq!(
            (answer.outcome, answer.patch().is_none()),
            (Outcome::Skipped, true),
            "{op}"
        );
    }
    let mut body = fixture("basic-pod.json");
    body["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    assert_eq!(run(&body, Lifecycle::Native).outcome, Outcome::Skipped);
}

#[test]
fn bad_annotations_are_denied_all_at_once_with_a_status() {
    let mut body = fixture("basic-pod.json");
    let ann = &mut body["request"]["object"]["metadata"]["annotations"];
    ann["s3.mount/read-only"] = json!("yes");
    ann["s3.mount/regoin"] = json!("eu-west-1");
    ann["s3.mount/aws-secret-access-key"] = json!("abc");
    let answer = run(&body, Lifecycle::Native);
    assert_eq!(answer.outcome, Outcome::Denied);
    let out = answer.to_json();
    assert_eq!(out["response"]["allowed"], false);
    assert_eq!(out["response"]["uid"], body["request"]["uid"]);
    assert_eq!(out["response"]["status"]["code"], 403);
    let msg = out["response"]["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("s3.mount/read-only") && msg.contains("\"true\" or \"false\""),
        "{msg}"
    );
    assert!(msg.contains("did you mean s3.mount/region?"), "{msg}");
    assert!(msg.contains("credentials are not accepted"), "{msg}");
}

#[test]
fn unknown_container_name_is_denied_with_the_known_ones() {
    let mut body = fixture("basic-pod.json");
    body["request"]["object"]["metadata"]["annotations"]["s3.mount/containers"] = json!("app,ghost");
    let answer = run(&body, Lifecycle::Native);
    assert_eq!(answer.outcome, Outcome::Denied);
    assert!(
        answer.reason.contains("\"ghost\"") && answer.reason.contains("containers: app"),
        "{}",
        answer.reason
    );
}

#[test]
fn existing_mount_at_the_mount_path_is_denied() {
    let mut body = fixture("basic-pod.json");
    body["request"]["object"]["spec"]["containers"][0]["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "kube-api-access-7xq2p", "mountPath": "/mnt/s3/x"}));
    let answer = run(&body, Lifecycle::Native);
    assert_eq!(answer.outcome, Outcome::Denied);
    assert!(answer.reason.contains("/mnt/s3/x"), "{}", answer.reason);
}

#[test]
fn legacy_job_pod_shares_its_process_namespace_with_a_warning() {
    let mut body = fixture("basic-pod.json");
    body["request"]["object"]["spec"]["restartPolicy"] = json!("Never");
    let out = run(&body, Lifecycle::Legacy).to_json();
    let warnings = out["response"]["warnings"].as_array().unwrap();
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .contains("shareProcessNamespace is set"),
        "{warnings:?}"
    );
}

#[test]
fn legacy_job_pod_that_refuses_a_shared_process_namespace_is_warned_it_will_not_complete() {
    let mut body = fixture("basic-pod.json");
    body["request"]["object"]["spec"]["restartPolicy"] = json!("Never");
    body["request"]["object"]["spec"]["shareProcessNamespace"] = json!(false);
    let out = run(&body, Lifecycle::Legacy).to_json();
    let warnings = out["response"]["warnings"].as_array().unwrap();
    assert!(
        warnings[0].as_str().unwrap().contains("does not complete"),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn router_answers_fixture_and_refuses_non_reviews_with_400() {
    let st = state(Lifecycle::Native);
    let (status, body) = post(
        st.clone(),
        serde_json::to_vec(&fixture("basic-pod.json")).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let out: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(out["response"]["allowed"], true);

    let cases: &[(&[u8], &str)] = &[
        (b"not json", "not JSON"),
        (br#"{"kind":"Pod","apiVersion":"v1"}"#, "not an AdmissionReview"),
        (
            br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v2"}"#,
            "unsupported AdmissionReview apiVersion",
        ),
        (
            br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#,
            "no request",
        ),
        (
            br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":1}}"#,
            "malformed",
        ),
    ];
    for (body, want) in cases {
        let (status, text) = post(st.clone(), body.to_vec()).await;
        let text = String::from_utf8(text).unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains(want), "{text:?} should contain {want:?}");
    }
    let metrics = st.metrics.encode();
    assert!(
        metrics.contains("admission_requests_total{outcome=\"invalid\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("admission_requests_total{outcome=\"patched\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn health_router_serves_livez_readyz_and_metrics() {
    let st = state(Lifecycle::Native);
    let get = |path: &str| {
        let app = server::health_router(st.clone());
        let req = Request::get(path).body(Body::empty()).unwrap();
        async move { app.oneshot(req).await.unwrap().status() }
    };
    assert_eq!(get("/livez").await, StatusCode::OK);
    assert_eq!(
        get("/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready before serving"
    );
    st.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(get("/readyz").await, StatusCode::OK);
    assert_eq!(get("/metrics").await, StatusCode::OK);
}

#[test]
fn identity_added_by_a_later_webhook_reaches_the_sidecar_on_reinvocation() {
    let body = fixture("deployment-generatename.json");
    let mut bare = body.clone();
    // The pod as first seen: no IRSA env or token yet.
    let app = &mut bare["request"]["object"]["spec"]["containers"][0];
    app.as_object_mut().unwrap().remove("env");
    app["volumeMounts"].as_array_mut().unwrap().truncate(1);
    let injected = apply(&bare, &run(&bare, Lifecycle::Native));
    let (_, s) = sidecar(&injected, Lifecycle::Native);
    assert!(
        !s["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "AWS_ROLE_ARN")
    );
    // Then the IRSA webhook adds its env and token mount to the app container; we are reinvoked.
    let mut later = injected.clone();
    later["spec"]["containers"][0] = body["request"]["object"]["spec"]["containers"][0].clone();
    let reinvoked = with_object(&body, later);
    let answer = run(&reinvoked, Lifecycle::Native);
    assert_eq!(answer.outcome, Outcome::Patched, "{}", answer.reason);
    let synced = apply(&reinvoked, &answer);
    let (_, s) = sidecar(&synced, Lifecycle::Native);
    let env: Vec<&str> = s["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"AWS_ROLE_ARN") && env.contains(&"AWS_WEB_IDENTITY_TOKEN_FILE"),
        "{env:?}"
    );
    assert!(
        s["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "aws-iam-token")
    );
    // And once synced, no further patch.
    let again = run(&with_object(&body, synced), Lifecycle::Native);
    assert_eq!((again.outcome, again.patch().is_none()), (Outcome::Skipped, true));
}

#[test]
fn mesh_init_container_named_in_containers_is_denied() {
    let mut body = fixture("mesh-injected.json");
    body["request"]["object"]["metadata"]["annotations"]["s3.mount/containers"] = json!("web,istio-proxy");
    let answer = run(&body, Lifecycle::Native);
    assert_eq!(answer.outcome, Outcome::Denied);
    assert!(
        answer
            .reason
            .contains("\"istio-proxy\", which runs before the sidecar"),
        "{}",
        answer.reason
    );
}
