//! Property tests over generated pods: the patch applies with a strict RFC 6902 implementation,
//! every pre-existing field (including ones no Kubernetes type knows) is deep-equal afterwards,
//! existing init containers are byte-for-byte unchanged, and a second pass yields no patch; and
//! the one-pass reading the server uses answers every generated pod, odd values anywhere
//! included, exactly like the full parse.

mod common;

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use common::{apply, context, fixture, preserved, run, same_answer, with_object};
use s3mount_webhook::inject::{Lifecycle, SIDECAR_NAME};
use s3mount_webhook::policy::NamespaceInfo;
use s3mount_webhook::review::{NamespaceView, Outcome};

fn unknown_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        "[a-z~/ ]{0,8}".prop_map(Value::from),
        Just(json!({"nested": {"a/b": [1, {"c~d": null}]}})),
        Just(json!([])),
    ]
}

fn container(name: String, extra: Option<Value>, mounts: Option<Vec<String>>, native: bool) -> Value {
    let mut c = json!({"name": name, "image": "registry.example.com/app:1"});
    if let Some(m) = mounts {
        c["volumeMounts"] = m
            .into_iter()
            .map(|p| json!({"name": "data", "mountPath": p}))
            .collect();
    }
    if let Some(v) = extra {
        c["x-future-field"] = v;
    }
    if native {
        c["restartPolicy"] = json!("Always");
    }
    c
}

prop_compose! {
    fn containers(prefix: &'static str, min: usize, max: usize)(
        n in min..=max,
        extras in prop::collection::vec(prop::option::of(unknown_value()), max),
        mounts in prop::collection::vec(
            prop::option::of(prop::collection::vec(prop::sample::select(vec!["/data", "/etc/cfg", "/mnt", "/var/x~y"]), 0..3)),
            max,
        ),
        native in prop::collection::vec(any::<bool>(), max),
    ) -> Vec<Value> {
        (0..n).map(|i| {
            let m = mounts[i].clone().map(|v| v.into_iter().map(str::to_owned).collect::<Vec<_>>());
            container(format!("{prefix}{i}"), extras[i].clone(), m, prefix == "init" && native[i])
        }).collect()
    }
}

fn s3_annotations() -> impl Strategy<Value = Vec<(String, String)>> {
    let optional = prop::collection::vec(
        prop::sample::select(vec![
            ("s3.mount/prefix", "data/"),
            ("s3.mount/path", "/s3/data"),
            ("s3.mount/read-only", "true"),
            ("s3.mount/endpoint", "http://127.0.0.1:9000"),
            ("s3.mount/region", "eu-west-1"),
            ("s3.mount/path-style", "true"),
            ("s3.mount/secret", "creds"),
            ("s3.mount/uid", "1000"),
            ("s3.mount/file-mode", "0640"),
            ("s3.mount/cache-size", "1GiB"),
            ("s3.mount/cache-medium", "memory"),
            ("s3.mount/sidecar-cpu-limit", "1"),
            ("s3.mount/bucket.models", "models-bucket"),
            ("kubectl.kubernetes.io/default-container", "app0"),
            ("example.com/a~b/c", "escaped"),
        ]),
        0..8,
    );
    optional.prop_map(|v| {
        let mut out = vec![("s3.mount/bucket".to_owned(), "demo-bucket".to_owned())];
        out.extend(v.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())));
        if out.iter().any(|(k, _)| k == "s3.mount/bucket.models") {
            out.push(("s3.mount/read-only.models".to_owned(), "true".to_owned()));
        }
        out
    })
}

prop_compose! {
    fn pod()(
        apps in containers("app", 1, 3),
        inits in prop::option::of(containers("init", 0, 3)),
        mesh in any::<bool>(),
        volumes in prop_oneof![Just(None), Just(Some(Value::Null)), Just(Some(json!([{"name": "data", "emptyDir": {}}])))],
        annotations in s3_annotations(),
        grace in prop::option::of(0i64..3600),
        unknown in prop::option::of(unknown_value()),
        named in any::<bool>(),
    ) -> Value {
        let mut inits = inits;
        if mesh {
            let list = inits.get_or_insert_with(Vec::new);
            list.insert(0, container("istio-proxy".into(), None, None, true));
            list.insert(0, container("istio-init".into(), None, None, false));
        }
        let mut spec = Map::new();
        spec.insert("containers".into(), Value::Array(apps));
        if let Some(i) = inits {
            spec.insert("initContainers".into(), Value::Array(i));
        }
        if let Some(v) = volumes {
            spec.insert("volumes".into(), v);
        }
        if let Some(g) = grace {
            spec.insert("terminationGracePeriodSeconds".into(), json!(g));
        }
        if let Some(u) = unknown.clone() {
            spec.insert("x-unknown-spec-field".into(), u);
        }
        let ann: Map<String, Value> = annotations.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        let mut meta = json!({"annotations": ann, "labels": {"app": "x"}});
        if named { meta["name"] = json!("p"); } else { meta["generateName"] = json!("p-"); }
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec});
        if let Some(u) = unknown {
            pod["x-unknown-top-field"] = u;
        }
        pod
    }
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::from),
        Just(json!("s3mount-sidecar")),
        Just(json!("AWS_ROLE_ARN")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "name",
                    "image",
                    "env",
                    "value",
                    "volumeMounts",
                    "mountPath",
                    "x"
                ]),
                inner,
                0..4,
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

/// Where a generated pod gets an odd value: replaced, or added under one of these keys.
const PLACES: &[&str] = &[
    "",
    "/metadata",
    "/metadata/annotations",
    "/spec",
    "/spec/containers",
    "/spec/containers/0",
    "/spec/containers/0/volumeMounts",
    "/spec/containers/0/env",
    "/spec/initContainers",
    "/spec/initContainers/0",
    "/spec/volumes",
    "/spec/volumes/0",
];
const KEYS: &[&str] = &[
    "metadata",
    "spec",
    "annotations",
    "name",
    "generateName",
    "namespace",
    "containers",
    "initContainers",
    "volumes",
    "image",
    "env",
    "volumeMounts",
    "mountPath",
    "terminationGracePeriodSeconds",
    "restartPolicy",
    "shareProcessNamespace",
    "status",
    "x-unknown",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn one_pass_reading_answers_generated_pods_like_the_full_parse(
        pod in pod(),
        odd in prop::collection::vec(
            (prop::sample::select(PLACES), prop::option::of(prop::sample::select(KEYS)), any_json()),
            0..3,
        ),
        restart in prop::option::of(prop::sample::select(vec!["Always", "Never", "OnFailure"])),
        legacy in any::<bool>(),
    ) {
        let mut pod = pod;
        if let Some(r) = restart {
            pod["spec"]["restartPolicy"] = json!(r);
        }
        for (place, key, value) in odd {
            let Some(target) = pod.pointer_mut(place) else { continue };
            match (key, target) {
                (Some(k), Value::Object(m)) => {
                    m.insert(k.to_owned(), value);
                }
                (_, t) => *t = value,
            }
        }
        let lifecycle = if legacy { Lifecycle::Legacy } else { Lifecycle::Native };
        let body = serde_json::to_vec(&with_object(&fixture("basic-pod.json"), pod)).unwrap();
        let ctx = context(lifecycle);
        let opted = NamespaceInfo::from_pairs(
            &[("s3.mount/inject", "enabled")],
            &[("s3.mount/force-read-only", "true")],
        );
        same_answer(&body, &ctx, NamespaceView::Unknown);
        same_answer(&body, &ctx, NamespaceView::Known(Some(&opted)));
    }

    #[test]
    fn generated_pods_patch_strictly_keep_every_field_and_are_idempotent(
        pod in pod(),
        legacy in any::<bool>(),
    ) {
        let lifecycle = if legacy { Lifecycle::Legacy } else { Lifecycle::Native };
        let body = with_object(&fixture("basic-pod.json"), pod.clone());
        let answer = run(&body, lifecycle);
        prop_assert_eq!(answer.outcome, Outcome::Patched, "{}", answer.reason);
        let after = apply(&body, &answer);
        prop_assert!(preserved(&pod, &after), "pre-existing field changed:\n{pod:#}\n{after:#}");
        if let Some(before) = pod["spec"]["initContainers"].as_array() {
            let now: Vec<&Value> = after["spec"]["initContainers"].as_array().unwrap().iter()
                .filter(|c| c["name"] != SIDECAR_NAME).collect();
            prop_assert_eq!(now, before.iter().collect::<Vec<_>>(), "init containers changed");
        }
        let again = run(&with_object(&body, after), lifecycle);
        prop_assert_eq!(again.outcome, Outcome::Skipped);
        prop_assert!(again.patch().is_none());
    }

    #[test]
    fn arbitrary_s3_mount_annotations_are_answered_never_invalid(
        keys in prop::collection::vec(("[a-z.~/-]{1,20}", "\\PC{0,30}"), 1..6),
    ) {
        let mut body = fixture("basic-pod.json");
        let ann = body["request"]["object"]["metadata"]["annotations"].as_object_mut().unwrap();
        for (k, v) in keys {
            ann.insert(format!("s3.mount/{k}"), Value::String(v));
        }
        let answer = run(&body, Lifecycle::Native);
        prop_assert!(matches!(answer.outcome, Outcome::Patched | Outcome::Denied));
        if answer.outcome == Outcome::Patched {
            let after = apply(&body, &answer);
            prop_assert!(preserved(&body["request"]["object"], &after));
        }
    }
}
