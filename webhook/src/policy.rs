//! Per-namespace rules: the opt-in label, Pod Security levels, and the policy annotations a
//! cluster admin puts on a Namespace (allowed buckets, forced read-only, maximum cache size).
//!
//! Everything here works on plain Namespace objects, so it is tested without a cluster; the
//! watch that keeps them current lives in `namespaces`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;

use crate::annotations::{PodMounts, mount_key};
use crate::inject::DEFAULT_CACHE_SIZE;

/// Label that turns Pod Security admission's enforcement on for a namespace.
pub const POD_SECURITY_ENFORCE: &str = "pod-security.kubernetes.io/enforce";
/// Pod Security labels that report a pod without refusing it, with their mode's name.
const POD_SECURITY_REPORT: [(&str, &str); 2] = [
    ("warn", "pod-security.kubernetes.io/warn"),
    ("audit", "pod-security.kubernetes.io/audit"),
];
/// Namespace annotation: comma-separated glob patterns of buckets pods may mount.
pub const ALLOWED_BUCKETS: &str = "s3.mount/allowed-buckets";
/// Namespace annotation: `"true"` requires every mount to be read-only.
pub const FORCE_READ_ONLY: &str = "s3.mount/force-read-only";
/// Namespace annotation: the largest `s3.mount/cache-size` allowed (e.g. `2GiB`).
pub const MAX_CACHE_SIZE: &str = "s3.mount/max-cache-size";

/// Why a namespace policy annotation cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("namespace annotation {key}: {value:?} is not valid: expected {expected}")]
    InvalidValue {
        key: String,
        value: String,
        expected: &'static str,
    },
}

/// What the webhook keeps of a Namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl NamespaceInfo {
    /// From label and annotation pairs.
    pub fn from_pairs(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> NamespaceInfo {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        NamespaceInfo {
            labels: map(labels),
            annotations: map(annotations),
        }
    }
}

impl From<&Namespace> for NamespaceInfo {
    fn from(ns: &Namespace) -> Self {
        NamespaceInfo {
            labels: ns.metadata.labels.clone().unwrap_or_default(),
            annotations: ns.metadata.annotations.clone().unwrap_or_default(),
        }
    }
}

/// The policy a namespace's annotations state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamespacePolicy {
    pub allowed_buckets: Option<Vec<glob::Pattern>>,
    pub force_read_only: bool,
    pub max_cache_size: Option<u64>,
}

impl NamespacePolicy {
    /// Reads the policy annotations; a malformed one is an error (and the pod is refused, since
    /// the admin's intent is unknown).
    pub fn from_annotations(a: &BTreeMap<String, String>) -> Result<Self, Vec<PolicyError>> {
        let mut errors = Vec::new();
        let allowed_buckets = a.get(ALLOWED_BUCKETS).map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .filter_map(|p| match glob::Pattern::new(p) {
                    Ok(pat) => Some(pat),
                    Err(_) => {
                        errors.push(PolicyError::InvalidValue {
                            key: ALLOWED_BUCKETS.into(),
                            value: v.clone(),
                            expected: "comma-separated glob patterns such as \"team-a-*,shared\"",
                        });
                        None
                    }
                })
                .collect()
        });
        let force_read_only = match a.get(FORCE_READ_ONLY).map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => {
                errors.push(PolicyError::InvalidValue {
                    key: FORCE_READ_ONLY.into(),
                    value: v.into(),
                    expected: "\"true\" or \"false\"",
                });
                false
            }
        };
        let max_cache_size = a
            .get(MAX_CACHE_SIZE)
            .and_then(|v| match v.parse::<bytesize::ByteSize>() {
                Ok(b) => Some(b.as_u64()),
                Err(_) => {
                    errors.push(PolicyError::InvalidValue {
                        key: MAX_CACHE_SIZE.into(),
                        value: v.clone(),
                        expected: "a size such as \"2GiB\"",
                    });
                    None
                }
            });
        if errors.is_empty() {
            Ok(NamespacePolicy {
                allowed_buckets,
                force_read_only,
                max_cache_size,
            })
        } else {
            Err(errors)
        }
    }
}

/// The verdict of the namespace rules on one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Rules broken; any entry denies the pod.
    pub violations: Vec<String>,
    /// Findings that do not deny the pod; they go back as AdmissionResponse warnings.
    pub warnings: Vec<String>,
}

/// The Pod Security level the namespace's `label` sets, when it is set to anything but
/// `privileged` (every other level refuses privileged containers).
fn below_privileged<'a>(ns: &'a NamespaceInfo, label: &str) -> Option<&'a str> {
    ns.labels
        .get(label)
        .map(String::as_str)
        .filter(|level| *level != "privileged")
}

/// Checks a pod that asks for injection against its namespace. `ns` is `None` when the namespace
/// watch does not know the namespace.
pub fn check(
    name: &str,
    ns: Option<&NamespaceInfo>,
    opt_in: (&str, &str),
    pod: Option<&PodMounts>,
) -> Decision {
    let mut d = Decision::default();
    let Some(ns) = ns else {
        d.violations.push(format!(
            "namespace {name:?} is not known to the webhook yet; retry in a few seconds"
        ));
        return d;
    };
    let (key, value) = opt_in;
    if ns.labels.get(key).map(String::as_str) != Some(value) {
        d.violations.push(format!(
            "namespace {name:?} has not opted in: it needs the label {key}={value}"
        ));
    }
    if let Some(level) = below_privileged(ns, POD_SECURITY_ENFORCE) {
        d.violations.push(format!(
            "namespace {name:?} enforces Pod Security {level:?} ({POD_SECURITY_ENFORCE}), which never admits the \
             privileged s3mount sidecar; the namespace needs the \"privileged\" level"
        ));
    }
    // `warn` and `audit` do not refuse the pod, but every admission of it is then reported.
    for (mode, label) in POD_SECURITY_REPORT {
        if let Some(level) = below_privileged(ns, label) {
            d.warnings.push(format!(
                "namespace {name:?} has Pod Security {mode} level {level:?} ({label}): the privileged s3mount \
                 sidecar is admitted but reported every time"
            ));
        }
    }
    let policy = match NamespacePolicy::from_annotations(&ns.annotations) {
        Ok(p) => p,
        Err(errs) => {
            d.violations.extend(errs.iter().map(ToString::to_string));
            return d;
        }
    };
    let Some(pod) = pod else { return d };
    for m in &pod.mounts {
        if let Some(allowed) = &policy.allowed_buckets
            && !allowed.iter().any(|p| p.matches(&m.bucket))
        {
            d.violations.push(format!(
                "bucket {:?} ({}) is not allowed in namespace {name:?} (rule {ALLOWED_BUCKETS}: {})",
                m.bucket,
                mount_key("bucket", &m.name),
                allowed
                    .iter()
                    .map(glob::Pattern::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        if policy.force_read_only && !m.read_only {
            d.violations.push(format!(
                "namespace {name:?} requires read-only mounts (rule {FORCE_READ_ONLY}); set {}: \"true\"",
                mount_key("read-only", &m.name)
            ));
        }
    }
    if let Some(max) = policy.max_cache_size {
        let size = pod
            .settings
            .cache_size
            .as_ref()
            .map_or(DEFAULT_CACHE_SIZE, |(_, b)| *b);
        if size > max {
            d.violations.push(format!(
                "cache size {} is above the namespace's maximum {} (rule {MAX_CACHE_SIZE}); lower s3.mount/cache-size",
                bytesize::ByteSize::b(size).display().iec(),
                bytesize::ByteSize::b(max).display().iec()
            ));
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations;

    const OPT_IN: (&str, &str) = ("s3.mount/inject", "enabled");

    fn ns(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> NamespaceInfo {
        NamespaceInfo::from_pairs(labels, annotations)
    }

    fn pod(pairs: &[(&str, &str)]) -> PodMounts {
        annotations::parse_pairs(pairs)
    }

    #[test]
    fn namespace_without_opt_in_label_is_refused() {
        let d = check(
            "team",
            Some(&ns(&[], &[])),
            OPT_IN,
            Some(&pod(&[("s3.mount/bucket", "b1b")])),
        );
        assert_eq!(d.violations.len(), 1);
        assert!(d.violations[0].contains("s3.mount/inject=enabled"));
        let d = check(
            "team",
            Some(&ns(&[OPT_IN], &[])),
            OPT_IN,
            Some(&pod(&[("s3.mount/bucket", "b1b")])),
        );
        assert_eq!(d, Decision::default());
    }

    #[test]
    fn unknown_namespace_is_refused() {
        let d = check("new", None, OPT_IN, None);
        assert!(d.violations[0].contains("not known"));
    }

    #[test]
    fn baseline_or_restricted_pod_security_is_denied_early() {
        for level in ["baseline", "restricted"] {
            let d = check(
                "t",
                Some(&ns(&[OPT_IN, (POD_SECURITY_ENFORCE, level)], &[])),
                OPT_IN,
                None,
            );
            assert!(d.violations[0].contains(level), "{d:?}");
        }
        let d = check(
            "t",
            Some(&ns(&[OPT_IN, (POD_SECURITY_ENFORCE, "privileged")], &[])),
            OPT_IN,
            None,
        );
        assert!(d.violations.is_empty());
    }

    #[test]
    fn pod_security_warn_or_audit_below_privileged_is_a_warning_not_a_denial() {
        let d = check(
            "t",
            Some(&ns(
                &[
                    OPT_IN,
                    ("pod-security.kubernetes.io/warn", "restricted"),
                    ("pod-security.kubernetes.io/audit", "baseline"),
                ],
                &[],
            )),
            OPT_IN,
            None,
        );
        assert!(d.violations.is_empty(), "{d:?}");
        assert_eq!(d.warnings.len(), 2, "{d:?}");
        assert!(d.warnings[0].contains("warn level \"restricted\""), "{d:?}");
        assert!(d.warnings[1].contains("audit level \"baseline\""), "{d:?}");
        let d = check(
            "t",
            Some(&ns(
                &[OPT_IN, ("pod-security.kubernetes.io/warn", "privileged")],
                &[],
            )),
            OPT_IN,
            None,
        );
        assert!(d.warnings.is_empty(), "{d:?}");
    }

    #[test]
    fn bucket_outside_allowed_globs_is_denied_with_the_rule() {
        let n = ns(&[OPT_IN], &[(ALLOWED_BUCKETS, "team-a-*, shared")]);
        let ok = pod(&[
            ("s3.mount/bucket", "team-a-data"),
            ("s3.mount/bucket.s", "shared"),
        ]);
        assert!(check("t", Some(&n), OPT_IN, Some(&ok)).violations.is_empty());
        let bad = pod(&[("s3.mount/bucket", "team-b-data")]);
        let d = check("t", Some(&n), OPT_IN, Some(&bad));
        assert!(
            d.violations[0].contains(ALLOWED_BUCKETS) && d.violations[0].contains("team-b-data"),
            "{d:?}"
        );
    }

    #[test]
    fn forced_read_only_denies_writable_mounts() {
        let n = ns(&[OPT_IN], &[(FORCE_READ_ONLY, "true")]);
        let d = check("t", Some(&n), OPT_IN, Some(&pod(&[("s3.mount/bucket", "abc")])));
        assert!(d.violations[0].contains("s3.mount/read-only"));
        let ro = pod(&[("s3.mount/bucket", "abc"), ("s3.mount/read-only", "true")]);
        assert!(check("t", Some(&n), OPT_IN, Some(&ro)).violations.is_empty());
    }

    #[test]
    fn cache_above_namespace_maximum_is_denied() {
        let n = ns(&[OPT_IN], &[(MAX_CACHE_SIZE, "256MiB")]);
        let d = check("t", Some(&n), OPT_IN, Some(&pod(&[("s3.mount/bucket", "abc")])));
        assert!(d.violations[0].contains(MAX_CACHE_SIZE), "{d:?}");
        let small = pod(&[("s3.mount/bucket", "abc"), ("s3.mount/cache-size", "128MiB")]);
        assert!(check("t", Some(&n), OPT_IN, Some(&small)).violations.is_empty());
    }

    #[test]
    fn malformed_policy_annotation_refuses_the_pod() {
        let n = ns(&[OPT_IN], &[(FORCE_READ_ONLY, "maybe")]);
        let d = check("t", Some(&n), OPT_IN, Some(&pod(&[("s3.mount/bucket", "abc")])));
        assert!(d.violations[0].contains(FORCE_READ_ONLY));
    }
}
