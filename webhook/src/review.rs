//! The pure admission function: an AdmissionReview body in, an AdmissionReview answer out.
//!
//! No I/O happens here: the HTTP layer hands over the body bytes and what it knows about the
//! namespace, and sends back what [`mutate`] returns. A body that is not an AdmissionReview is an
//! [`ReviewError`] (HTTP 400); everything else gets an AdmissionReview in the request's own version
//! with its `uid` echoed.

use std::fmt;

use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use kube::core::DynamicObject;
use kube::core::admission::{
    AdmissionRequest, AdmissionResponse, AdmissionReview, Operation, SerializePatchError,
};
use serde_json::Value;

use crate::inject::{self, InjectConfig, Plan};
use crate::policy::{self, NamespaceInfo};
use crate::prune::{self, Shape};

/// API versions of AdmissionReview this webhook answers.
pub const API_VERSIONS: &[&str] = &["admission.k8s.io/v1", "admission.k8s.io/v1beta1"];

/// Why a body is not an AdmissionReview this webhook can answer.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("request body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("request body is not an AdmissionReview: kind is {0:?}, expected \"AdmissionReview\"")]
    WrongKind(String),
    #[error(
        "unsupported AdmissionReview apiVersion {0:?}; supported: admission.k8s.io/v1, admission.k8s.io/v1beta1"
    )]
    WrongVersion(String),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("AdmissionReview request is malformed: {0}")]
    BadRequest(#[source] serde_json::Error),
    #[error("cannot serialize the patch: {0}")]
    Serialize(#[source] SerializePatchError),
}

/// How a request was answered; the label of the requests metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Allowed with a patch.
    Patched,
    /// Allowed without a patch.
    Skipped,
    /// Refused with a reason.
    Denied,
    /// Not an AdmissionReview (HTTP 400).
    Invalid,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Patched => "patched",
            Outcome::Skipped => "skipped",
            Outcome::Denied => "denied",
            Outcome::Invalid => "invalid",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the logs need to know about a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    pub uid: String,
    pub namespace: String,
    /// Pod name, or its generateName followed by `*`.
    pub pod: String,
    pub operation: String,
    pub dry_run: bool,
}

/// The answer to one request.
#[derive(Debug)]
pub struct Reviewed {
    pub review: AdmissionReview<DynamicObject>,
    pub outcome: Outcome,
    pub info: RequestInfo,
    /// Why it was skipped or denied, for the log.
    pub reason: String,
}

/// What the namespace of a request is known to be.
#[derive(Debug, Clone, Copy)]
pub enum NamespaceView<'a> {
    /// No Kubernetes API: namespace checks are off.
    Unknown,
    /// The namespace as the watch last saw it; `None` when it does not exist there.
    Known(Option<&'a NamespaceInfo>),
}

/// Everything [`mutate`] needs besides the body.
#[derive(Debug, Clone)]
pub struct Context {
    pub inject: InjectConfig,
    /// Namespace label that opts a namespace in (`key=value`), checked when namespaces are known.
    pub opt_in_label: (String, String),
}

/// Parses a request body into JSON, refusing what is not an AdmissionReview.
pub fn parse_body(body: &[u8]) -> Result<Value, ReviewError> {
    let v: Value = serde_json::from_slice(body).map_err(ReviewError::NotJson)?;
    check_review(&v)?;
    Ok(v)
}

fn check_review(v: &Value) -> Result<(), ReviewError> {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind != "AdmissionReview" {
        return Err(ReviewError::WrongKind(kind.to_owned()));
    }
    let version = v.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    if !API_VERSIONS.contains(&version) {
        return Err(ReviewError::WrongVersion(version.to_owned()));
    }
    if v.get("request").is_none_or(Value::is_null) {
        return Err(ReviewError::NoRequest);
    }
    Ok(())
}

/// The namespace a request concerns (the request's, else the object's).
pub fn request_namespace(body: &Value) -> Option<&str> {
    namespace_of(body, body.pointer("/request/object").unwrap_or(&Value::Null))
}

/// The request's namespace from the review (its objects may be stripped), else the object's.
fn namespace_of<'a>(review: &'a Value, object: &'a Value) -> Option<&'a str> {
    review
        .pointer("/request/namespace")
        .and_then(Value::as_str)
        .or_else(|| object.pointer("/metadata/namespace").and_then(Value::as_str))
        .filter(|s| !s.is_empty())
}

/// What of a pod the admission reads: its names and annotations, and of its spec the container
/// lists (names, images, volumeMounts, env), the volume names and the fields the sidecar's
/// lifecycle depends on. [`inject::plan`] reads nothing else (the equivalence tests in
/// `tests/admission.rs` hold it to that).
const POD: Shape = Shape::Object(&[
    (
        "metadata",
        Shape::Object(&[
            ("name", Shape::All),
            ("generateName", Shape::All),
            ("namespace", Shape::All),
            ("annotations", Shape::All),
        ]),
    ),
    (
        "spec",
        Shape::Object(&[
            ("containers", Shape::Array(&CONTAINER)),
            ("initContainers", Shape::Array(&CONTAINER)),
            ("volumes", Shape::Array(&Shape::Object(&[("name", Shape::All)]))),
            ("terminationGracePeriodSeconds", Shape::All),
            ("restartPolicy", Shape::All),
            ("shareProcessNamespace", Shape::All),
        ]),
    ),
]);
const CONTAINER: Shape = Shape::Object(&[
    ("name", Shape::All),
    ("image", Shape::All),
    ("volumeMounts", Shape::All),
    ("env", Shape::All),
]);
/// The review as [`envelope`] keeps it (everything but `request.object` and `request.oldObject`),
/// with `request.object` cut to [`POD`].
static REVIEW: Shape = Shape::Rest(&[(
    "request",
    Shape::Rest(&[("object", POD), ("oldObject", Shape::Drop)]),
)]);

/// A request body parsed once into what the webhook reads: the review without its objects (what
/// kube's types are read from) and the pod with only the parts the injection looks at.
///
/// [`Review::parse`] accepts and refuses exactly what [`parse_body`] does, with the same errors,
/// and [`Review::answer`] answers exactly what [`mutate`] answers for the same body; it only
/// allocates much less (a pod's status, probes, resources and the like are checked, not kept).
#[derive(Debug, Clone)]
pub struct Review {
    envelope: Value,
    object: Value,
}

impl Review {
    /// Parses and checks a request body.
    pub fn parse(body: &[u8]) -> Result<Review, ReviewError> {
        match prune::from_slice(body, &REVIEW) {
            Some(Ok(mut envelope)) => {
                check_review(&envelope)?;
                let object = envelope
                    .get_mut("request")
                    .and_then(Value::as_object_mut)
                    .and_then(|r| r.remove("object"))
                    .unwrap_or(Value::Null);
                Ok(Review { envelope, object })
            }
            // Not JSON: the full parse names the error exactly as it always has.
            Some(Err(_)) | None => parse_body(body).map(|v| Review {
                envelope: envelope(&v),
                object: v.pointer("/request/object").cloned().unwrap_or(Value::Null),
            }),
        }
    }

    /// The namespace the request concerns, as [`request_namespace`] reads it.
    pub fn namespace(&self) -> Option<&str> {
        namespace_of(&self.envelope, &self.object)
    }

    /// Answers the review, as [`mutate`] does.
    pub fn answer(self, ctx: &Context, namespace: NamespaceView<'_>) -> Result<Reviewed, ReviewError> {
        answer(self.envelope, &self.object, ctx, namespace)
    }
}

/// Answers one AdmissionReview (already checked by [`parse_body`]).
pub fn mutate(body: &Value, ctx: &Context, namespace: NamespaceView<'_>) -> Result<Reviewed, ReviewError> {
    let raw = body.pointer("/request/object").unwrap_or(&Value::Null);
    answer(envelope(body), raw, ctx, namespace)
}

/// Answers a review given as its envelope (the review without `request.object` and
/// `request.oldObject`) and its raw pod.
fn answer(
    envelope: Value,
    raw: &Value,
    ctx: &Context,
    namespace: NamespaceView<'_>,
) -> Result<Reviewed, ReviewError> {
    let ns_name = namespace_of(&envelope, raw).unwrap_or_default().to_owned();
    // The typed envelope is read without the objects: the pod is used raw (so unknown fields
    // survive), and not copying it into kube's types keeps a request cheap.
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(envelope).map_err(ReviewError::BadRequest)?;
    let req: AdmissionRequest<DynamicObject> = review.try_into().map_err(|_| ReviewError::NoRequest)?;
    let info = RequestInfo {
        uid: req.uid.clone(),
        namespace: ns_name,
        pod: pod_name(raw),
        operation: format!("{:?}", req.operation).to_uppercase(),
        dry_run: req.dry_run,
    };
    let allow = AdmissionResponse::from(&req);
    let skip = |reason: &str| Reviewed {
        review: allow.clone().into_review(),
        outcome: Outcome::Skipped,
        info: info.clone(),
        reason: reason.to_owned(),
    };
    let deny = |reason: String, warnings: Vec<String>| {
        let mut r = allow.clone().deny(&reason);
        r.result.code = 403;
        r.result.reason = "Forbidden".to_owned();
        if !warnings.is_empty() {
            r.warnings = Some(warnings);
        }
        Reviewed {
            review: r.into_review(),
            outcome: Outcome::Denied,
            info: info.clone(),
            reason,
        }
    };

    if req.kind.kind != "Pod" || !req.kind.group.is_empty() || req.sub_resource.is_some() {
        return Ok(skip("not a pod"));
    }
    if req.operation != Operation::Create {
        return Ok(skip("not a CREATE"));
    }
    if !raw.is_object() {
        return Ok(deny(
            "s3.mount: the request carries no pod object".to_owned(),
            Vec::new(),
        ));
    }
    let plan = match inject::plan(raw, &ctx.inject) {
        Ok(p) => p,
        Err(errors) => {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Ok(deny(format!("s3.mount: {}", list.join("; ")), Vec::new()));
        }
    };
    let (ops, mut warnings) = match plan {
        Plan::NotRequested => return Ok(skip("no s3.mount annotations")),
        Plan::AlreadyInjected => return Ok(skip("sidecar already present")),
        Plan::Patch { ops, warnings } => (ops, warnings),
    };
    if let NamespaceView::Known(ns) = namespace {
        let (key, value) = &ctx.opt_in_label;
        let name = info.namespace.as_str();
        let wanted = crate::annotations::parse(&inject::annotations_of(raw))
            .ok()
            .flatten();
        let decision = policy::check(name, ns, (key, value), wanted.as_ref());
        if !decision.violations.is_empty() {
            return Ok(deny(
                format!("s3.mount: {}", decision.violations.join("; ")),
                warnings,
            ));
        }
        warnings.extend(decision.warnings);
    }
    let mut response = allow.clone();
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    let response = response
        .with_patch(json_patch::Patch(ops))
        .map_err(ReviewError::Serialize)?;
    Ok(Reviewed {
        review: response.into_review(),
        outcome: Outcome::Patched,
        info,
        reason: "injected".to_owned(),
    })
}

impl Reviewed {
    /// The answer as JSON, with the patch as a base64 string (the form the Kubernetes API
    /// documents; kube's type would write it as an array of numbers).
    pub fn to_json(&self) -> Value {
        let mut review = self.review.clone();
        let patch = review.response.as_mut().and_then(|r| r.patch.take());
        let mut v = serde_json::to_value(&review).unwrap_or(Value::Null);
        if let (Some(patch), Some(response)) = (patch, v.get_mut("response").and_then(Value::as_object_mut)) {
            response.insert("patch".to_owned(), Value::String(BASE64_STANDARD.encode(patch)));
        }
        v
    }

    /// The answer as the HTTP body: [`Reviewed::to_json`] serialized.
    pub fn to_body(&self) -> Vec<u8> {
        // Serializing a `Value` cannot fail (its keys are strings).
        serde_json::to_vec(&self.to_json()).unwrap_or_default()
    }

    /// The JSON patch operations of the answer, if it has any.
    pub fn patch(&self) -> Option<json_patch::Patch> {
        let bytes = self.review.response.as_ref()?.patch.as_ref()?;
        serde_json::from_slice(bytes).ok()
    }
}

/// The review without `request.object` and `request.oldObject`.
fn envelope(body: &Value) -> Value {
    let strip = |v: &Value, drop: &[&str]| -> Value {
        match v.as_object() {
            Some(map) => Value::Object(
                map.iter()
                    .filter(|(k, _)| !drop.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            None => v.clone(),
        }
    };
    let mut out = strip(body, &["request"]);
    if let (Some(o), Some(req)) = (out.as_object_mut(), body.get("request")) {
        o.insert("request".to_owned(), strip(req, &["object", "oldObject"]));
    }
    out
}

fn pod_name(pod: &Value) -> String {
    let meta = pod.get("metadata");
    let get = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    match (get("name"), get("generateName")) {
        (Some(n), _) => n.to_owned(),
        (None, Some(g)) => format!("{g}*"),
        (None, None) => String::new(),
    }
}
