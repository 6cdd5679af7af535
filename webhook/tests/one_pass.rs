//! The one-pass reading of a request body that the server answers with (`review::Review`, which
//! keeps only the parts of the pod the injection reads) against the full parse
//! (`review::parse_body` + `review::mutate`): the same errors, the same answers, byte for byte.
//! `tests/properties.rs` checks the same over generated pods.

mod common;

use serde_json::{Value, json};

use common::{FIXTURES, context, fixture, fixture_bytes, same_answer};
use s3mount_webhook::inject::Lifecycle;
use s3mount_webhook::policy::{
    ALLOWED_BUCKETS, FORCE_READ_ONLY, MAX_CACHE_SIZE, NamespaceInfo, POD_SECURITY_ENFORCE,
};
use s3mount_webhook::review::{NamespaceView, Outcome};

/// Namespaces that allow, refuse for each rule, and refuse for a malformed rule.
fn namespaces() -> Vec<NamespaceInfo> {
    const OPT_IN: (&str, &str) = ("s3.mount/inject", "enabled");
    vec![
        NamespaceInfo::from_pairs(&[OPT_IN], &[]),
        NamespaceInfo::from_pairs(&[], &[]),
        NamespaceInfo::from_pairs(&[OPT_IN, (POD_SECURITY_ENFORCE, "baseline")], &[]),
        NamespaceInfo::from_pairs(
            &[OPT_IN],
            &[
                (ALLOWED_BUCKETS, "team-*"),
                (FORCE_READ_ONLY, "true"),
                (MAX_CACHE_SIZE, "1MiB"),
            ],
        ),
        NamespaceInfo::from_pairs(&[OPT_IN], &[(MAX_CACHE_SIZE, "lots")]),
    ]
}

/// Every body in both lifecycles and every namespace view; returns the outcomes seen.
fn check_all(body: &[u8]) -> Vec<Option<Outcome>> {
    let mut seen = Vec::new();
    let infos = namespaces();
    for lifecycle in [Lifecycle::Native, Lifecycle::Legacy] {
        let ctx = context(lifecycle);
        seen.push(same_answer(body, &ctx, NamespaceView::Unknown));
        seen.push(same_answer(body, &ctx, NamespaceView::Known(None)));
        for info in &infos {
            seen.push(same_answer(body, &ctx, NamespaceView::Known(Some(info))));
        }
    }
    seen
}

#[test]
fn fixtures_are_answered_the_same_pretty_or_compact_in_every_mode_and_namespace() {
    for name in FIXTURES {
        let pretty = fixture_bytes(name);
        let compact = serde_json::to_vec(&fixture(name)).unwrap();
        for body in [pretty, compact] {
            let seen = check_all(&body);
            assert!(seen.contains(&Some(Outcome::Patched)), "{name}: {seen:?}");
            assert!(seen.contains(&Some(Outcome::Denied)), "{name}: {seen:?}");
        }
    }
}

/// `(JSON pointer, value)`: the value replaces (or adds) what is at the pointer in
/// deployment-generatename.json; `None` removes it.
fn edits() -> Vec<(&'static str, Option<Value>)> {
    let odd = || {
        vec![
            json!(null),
            json!("x"),
            json!(5),
            json!(2.5),
            json!(true),
            json!([]),
            json!({}),
            json!([1, "a", {"b": null}]),
        ]
    };
    let mut out: Vec<(&'static str, Option<Value>)> = Vec::new();
    for at in [
        "/request/object",
        "/request/object/metadata",
        "/request/object/metadata/annotations",
        "/request/object/metadata/name",
        "/request/object/metadata/generateName",
        "/request/object/metadata/namespace",
        "/request/object/spec",
        "/request/object/spec/containers",
        "/request/object/spec/containers/0",
        "/request/object/spec/containers/0/name",
        "/request/object/spec/containers/0/image",
        "/request/object/spec/containers/0/volumeMounts",
        "/request/object/spec/containers/0/volumeMounts/0",
        "/request/object/spec/containers/0/volumeMounts/0/mountPath",
        "/request/object/spec/containers/0/env",
        "/request/object/spec/containers/0/env/0",
        "/request/object/spec/initContainers",
        "/request/object/spec/volumes",
        "/request/object/spec/volumes/0",
        "/request/object/spec/volumes/0/name",
        "/request/object/spec/terminationGracePeriodSeconds",
        "/request/object/spec/restartPolicy",
        "/request/object/spec/shareProcessNamespace",
        "/request/object/status",
        "/request/oldObject",
        "/request/namespace",
        "/request/uid",
        "/request/kind",
        "/request/kind/kind",
        "/request/kind/group",
        "/request/subResource",
        "/request/operation",
        "/request/userInfo",
        "/request/dryRun",
        "/request/options",
        "/request/x-future",
        "/request",
        "/response",
        "/kind",
        "/apiVersion",
        "/x-future",
    ] {
        out.extend(odd().into_iter().map(|v| (at, Some(v))));
        out.push((at, None));
    }
    out.extend([
        (
            "/request/object/spec/containers/0/name",
            Some(json!("s3mount-sidecar")),
        ),
        (
            "/request/object/spec/containers/0/image",
            Some(json!("s3mount-sidecar:test")),
        ),
        (
            "/request/object/spec/volumes/0/name",
            Some(json!("s3mount-cache")),
        ),
        (
            "/request/object/spec/terminationGracePeriodSeconds",
            Some(json!(-5)),
        ),
        (
            "/request/object/spec/terminationGracePeriodSeconds",
            Some(json!(30.0)),
        ),
        ("/request/object/spec/restartPolicy", Some(json!("Never"))),
        ("/request/object/spec/shareProcessNamespace", Some(json!(false))),
        ("/request/object/metadata/namespace", Some(json!("other"))),
        ("/request/namespace", Some(json!(""))),
        ("/request/operation", Some(json!("UPDATE"))),
        ("/request/kind/kind", Some(json!("Deployment"))),
        ("/request/subResource", Some(json!("status"))),
        ("/request/dryRun", Some(json!(true))),
        ("/request/response", Some(json!({"uid": "u", "allowed": true}))),
        (
            "/response",
            Some(json!({"uid": "u", "allowed": false, "status": {"code": 5}})),
        ),
        ("/apiVersion", Some(json!("admission.k8s.io/v1beta1"))),
        (
            "/request/object/metadata/annotations/s3.mount~1bucket",
            Some(json!(7)),
        ),
        (
            "/request/object/metadata/annotations/s3.mount~1bucket",
            Some(json!("team-a")),
        ),
        (
            "/request/object/metadata/annotations/s3.mount~1read-only",
            Some(json!("false")),
        ),
        (
            "/request/object/metadata/annotations/s3.mount~1secret",
            Some(json!("creds")),
        ),
        (
            "/request/object/metadata/annotations/s3.mount~1bogus",
            Some(json!("1")),
        ),
    ]);
    out
}

fn edit(body: &mut Value, at: &str, value: Option<Value>) {
    let (parent, key) = at.rsplit_once('/').unwrap();
    let key = key.replace("~1", "/").replace("~0", "~");
    match (body.pointer_mut(parent), value) {
        (Some(Value::Object(m)), Some(v)) => {
            m.insert(key, v);
        }
        (Some(Value::Object(m)), None) => {
            m.remove(&key);
        }
        (Some(Value::Array(a)), v) => {
            let i: usize = key.parse().unwrap();
            match v {
                Some(v) if i < a.len() => a[i] = v,
                Some(v) => a.push(v),
                None if i < a.len() => {
                    a.remove(i);
                }
                None => {}
            }
        }
        _ => {}
    }
}

#[test]
fn unusual_shapes_and_values_anywhere_are_answered_the_same() {
    let base = fixture("deployment-generatename.json");
    // The same again as a pod that must complete (a Job's): legacy mode then reads more fields.
    let mut job = base.clone();
    edit(
        &mut job,
        "/request/object/spec/restartPolicy",
        Some(json!("Never")),
    );
    let mut outcomes = Vec::new();
    for base in [base, job] {
        for (at, value) in edits() {
            let mut body = base.clone();
            edit(&mut body, at, value);
            outcomes.extend(check_all(&serde_json::to_vec(&body).unwrap()));
        }
    }
    for expected in [
        None,
        Some(Outcome::Patched),
        Some(Outcome::Skipped),
        Some(Outcome::Denied),
    ] {
        assert!(outcomes.contains(&expected), "{expected:?} never seen");
    }
}

#[test]
fn bodies_that_are_not_json_or_only_just_json_get_the_same_answer() {
    let compact = serde_json::to_string(&fixture("deployment-generatename.json")).unwrap();
    // Raw text put into an object the one pass drops (the pod's status), into one it keeps
    // (a container) and at the top level.
    let inside = |raw: &str| -> Vec<Vec<u8>> {
        vec![
            compact
                .replacen("\"status\":{", &format!("\"status\":{{\"x\":{raw},"), 1)
                .into_bytes(),
            compact
                .replacen("\"containers\":[{", &format!("\"containers\":[{{\"x\":{raw},"), 1)
                .into_bytes(),
            compact
                .replacen("{\"apiVersion\"", &format!("{{\"x\":{raw},\"apiVersion\""), 1)
                .into_bytes(),
        ]
    };
    assert!(compact.contains("\"status\":{"));
    let mut bodies: Vec<Vec<u8>> = [
        "",
        " ",
        "{",
        "[]",
        "null",
        "5",
        "\"AdmissionReview\"",
        "{\"kind\":1}",
        "{\"kind\":\"AdmissionReview\"}",
        "{\"kind\":\"AdmissionReview\",\"apiVersion\":\"admission.k8s.io/v1\"}",
        "{\"kind\":\"AdmissionReview\",\"apiVersion\":\"admission.k8s.io/v1\",\"request\":null}",
        "{\"kind\":\"AdmissionReview\",\"apiVersion\":\"admission.k8s.io/v1\",\"request\":{}}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    bodies.push(format!("{compact} x").into_bytes());
    bodies.push(format!("{compact}}}").into_bytes());
    bodies.push(format!("\u{feff}{compact}").into_bytes());
    bodies.push(format!("  \n{compact}\n\t ").into_bytes());
    bodies.push(compact.as_bytes()[..compact.len() / 2].to_vec());
    for raw in [
        "1e400",
        "-1e400",
        "1e300",
        "18446744073709551616",
        "-9223372036854775809",
        "0.1e-400",
        "\"\\ud800\"",
        "\"\\udc00\\ud800\"",
        "\"\\ud83d\\ude00\"",
        "\"\\q\"",
        "\"\\u00e9\\n\\/\"",
        "\"tab\there\"",
        "[1,]",
        "{\"a\":1,}",
        "{\"\\ud800\":1}",
        "{\"k\":1,\"k\":2}",
        "tru",
        "nul",
        "01",
        "-",
        "1.",
        "[[[[[[[[[[]]]]]]]]]]",
    ] {
        bodies.extend(inside(raw));
    }
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    bodies.extend(inside(&deep));
    let mut bad_utf8 = compact
        .replacen("\"status\":{", "\"status\":{\"x\":\"\u{1}\",", 1)
        .into_bytes();
    let at = bad_utf8.iter().position(|b| *b == 1).unwrap();
    bad_utf8[at] = 0xff;
    bodies.push(bad_utf8);
    // Duplicate keys: the last one counts, in the parts kept and in the parts dropped.
    bodies.push(
        compact
            .replacen(
                "\"namespace\":\"ml\"",
                "\"namespace\":\"first\",\"namespace\":\"ml\"",
                1,
            )
            .into_bytes(),
    );
    bodies.push(
        compact
            .replacen("\"spec\":{", "\"spec\":{\"containers\":5,", 1)
            .into_bytes(),
    );
    // An escaped key is the same key.
    bodies.push(compact.replacen("\"spec\":", "\"sp\\u0065c\":", 1).into_bytes());
    bodies.push(
        compact
            .replacen("{\"apiVersion\":", "{\"\\u0061piVersion\":", 1)
            .into_bytes(),
    );
    for body in &bodies {
        check_all(body);
    }
}
