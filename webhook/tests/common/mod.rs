//! Helpers shared by the webhook's integration tests: fixtures, contexts, patch application and
//! the "every pre-existing field survives" check.

#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;

use s3mount_webhook::inject::{InjectConfig, Lifecycle};
use s3mount_webhook::review::{self, Context, NamespaceView, Reviewed};

pub const FIXTURES: &[&str] = &[
    "basic-pod.json",
    "deployment-generatename.json",
    "init-containers.json",
    "mesh-injected.json",
    "native-sidecars.json",
    "no-volumes.json",
];

/// The bytes of `tests/fixtures/NAME`.
pub fn fixture_bytes(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn fixture(name: &str) -> Value {
    serde_json::from_slice(&fixture_bytes(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub fn context(lifecycle: Lifecycle) -> Context {
    Context {
        inject: InjectConfig {
            sidecar_image: "s3mount-sidecar:test".to_owned(),
            lifecycle,
            image_pull_policy: None,
        },
        opt_in_label: ("s3.mount/inject".to_owned(), "enabled".to_owned()),
    }
}

pub fn run(body: &Value, lifecycle: Lifecycle) -> Reviewed {
    let parsed =
        review::parse_body(&serde_json::to_vec(body).unwrap()).expect("fixture is an AdmissionReview");
    review::mutate(&parsed, &context(lifecycle), NamespaceView::Unknown).expect("fixture is answerable")
}

/// Applies the answer's patch to the request's pod with the strict RFC 6902 implementation.
pub fn apply(body: &Value, answer: &Reviewed) -> Value {
    let mut pod = body["request"]["object"].clone();
    let patch = answer.patch().expect("answer has a patch");
    json_patch::patch(&mut pod, &patch).expect("patch applies strictly");
    pod
}

/// The same review with `pod` as its object.
pub fn with_object(body: &Value, pod: Value) -> Value {
    let mut b = body.clone();
    b["request"]["object"] = pod;
    b
}

/// Whether everything in `before` is still in `after`: objects keep every key, arrays keep every
/// element in order (new elements may be inserted between them), scalars are equal. A `null`
/// field means "unset" to Kubernetes, so the patch may fill it.
pub fn preserved(before: &Value, after: &Value) -> bool {
    match (before, after) {
        (Value::Null, _) => true,
        (Value::Object(b), Value::Object(a)) => {
            b.iter().all(|(k, v)| a.get(k).is_some_and(|av| preserved(v, av)))
        }
        (Value::Array(b), Value::Array(a)) => {
            let mut it = a.iter();
            b.iter().all(|bv| it.any(|av| preserved(bv, av)))
        }
        _ => before == after,
    }
}

/// Checks that the one-pass reading of `body` ([`review::Review`], what the server uses) answers
/// exactly what the full parse ([`review::parse_body`] + [`review::mutate`]) answers: the same
/// error, or the same outcome, log fields, reason and answer, and that [`Reviewed::to_body`] is
/// byte for byte the serialized [`Reviewed::to_json`]. Returns the answer's outcome, if any.
pub fn same_answer(body: &[u8], ctx: &Context, view: NamespaceView<'_>) -> Option<review::Outcome> {
    let full = review::parse_body(body);
    let one = review::Review::parse(body);
    let (full, one) = match (full, one) {
        (Ok(f), Ok(o)) => {
            assert_eq!(
                review::request_namespace(&f),
                o.namespace(),
                "namespace of {}",
                String::from_utf8_lossy(body)
            );
            (review::mutate(&f, ctx, view), o.answer(ctx, view))
        }
        (Err(f), Err(o)) => {
            assert_eq!(f.to_string(), o.to_string());
            return None;
        }
        (f, o) => panic!(
            "full parse {:?}, one pass {:?} for {}",
            f.map(|_| ()),
            o.map(|_| ()),
            String::from_utf8_lossy(body)
        ),
    };
    match (full, one) {
        (Ok(f), Ok(o)) => {
            assert_eq!(
                (f.outcome, &f.info, &f.reason),
                (o.outcome, &o.info, &o.reason),
                "{}",
                String::from_utf8_lossy(body)
            );
            let json = f.to_json();
            assert_eq!(json, o.to_json(), "{}", String::from_utf8_lossy(body));
            assert_eq!(
                String::from_utf8(o.to_body()).unwrap(),
                serde_json::to_string(&json).unwrap()
            );
            Some(f.outcome)
        }
        (Err(f), Err(o)) => {
            assert_eq!(f.to_string(), o.to_string());
            None
        }
        (f, o) => panic!(
            "full parse {:?}, one pass {:?} for {}",
            f.map(|r| r.outcome),
            o.map(|r| r.outcome),
            String::from_utf8_lossy(body)
        ),
    }
}
