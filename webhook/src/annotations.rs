//! The `s3.mount/*` annotation contract: parses and validates a pod's annotations into a [`PodMounts`].
//!
//! Keys are `s3.mount/<setting>` for the default mount and `s3.mount/<setting>.<mount>` for a named
//! one (`s3.mount/bucket.models`, `s3.mount/path.models`). Settings of the sidecar process itself
//! (credentials, cache, owner, resources) are per pod and take no mount name. Every key and value
//! is checked and every problem is collected, so that one denial names all of them.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::quantity;

/// Prefix of every annotation key this webhook reads.
pub const PREFIX: &str = "s3.mount/";
/// Name of the mount configured by keys without a `.<mount>` suffix.
pub const DEFAULT_MOUNT: &str = "default";
/// Mount path in app containers of the default mount.
pub const DEFAULT_PATH: &str = "/mnt/s3";
/// Longest mount name: `s3mount-<name>` must stay a valid volume name and `path-style.<name>`
/// a valid annotation key name.
pub const MAX_MOUNT_NAME: usize = 40;

/// Settings that exist once per mount.
pub const MOUNT_KEYS: &[&str] = &[
    "bucket",
    "prefix",
    "path",
    "read-only",
    "endpoint",
    "region",
    "path-style",
    "anonymous",
];
/// Settings that exist once per pod (they configure the one sidecar process).
pub const POD_KEYS: &[&str] = &[
    "secret",
    "containers",
    "uid",
    "gid",
    "file-mode",
    "dir-mode",
    "metadata-ttl",
    "cache-size",
    "cache-medium",
    "sidecar-cpu-request",
    "sidecar-cpu-limit",
    "sidecar-memory-request",
    "sidecar-memory-limit",
    "log-level",
];

/// Words that mark a key as an attempt to pass credentials in an annotation.
const CREDENTIAL_WORDS: &[&str] = &[
    "access-key",
    "secret-key",
    "secret-access",
    "session-token",
    "password",
    "credential",
    "token",
];

/// One problem with one annotation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    /// A key under `s3.mount/` that this webhook does not know.
    #[error("unknown annotation {key}{}", suggestion.as_ref().map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
    UnknownKey { key: String, suggestion: Option<String> },
    /// A value that does not have the accepted form.
    #[error("annotation {key}: {value:?} is not valid: expected {expected}")]
    InvalidValue {
        key: String,
        value: String,
        expected: String,
    },
    /// A per-pod setting given with a mount name.
    #[error("annotation {key}: {setting} is set once per pod; use {PREFIX}{setting}")]
    PerPodSetting { key: String, setting: String },
    /// The mount-name part of a key is not a valid name.
    #[error(
        "annotation {key}: mount name {name:?} must be 1-{MAX_MOUNT_NAME} lowercase letters, digits or '-', \
         starting and ending with a letter or digit"
    )]
    InvalidMountName { key: String, name: String },
    /// Settings given for a mount that has no bucket.
    #[error("annotation {key} is set but {PREFIX}{} is missing", bucket_key(name))]
    MissingBucket { key: String, name: String },
    /// A credential passed in an annotation.
    #[error(
        "annotation {key}: credentials are not accepted in annotations; put them in a Secret and name it in {PREFIX}secret"
    )]
    Credential { key: String },
    /// The same mount configured twice (`bucket` and `bucket.default`).
    #[error("annotations {first} and {second} configure the same setting")]
    Duplicate { first: String, second: String },
    /// Two mounts at the same or nested paths.
    #[error("mounts {first} and {second} use overlapping paths {first_path} and {second_path}")]
    OverlappingPaths {
        first: String,
        second: String,
        first_path: String,
        second_path: String,
    },
    /// A request larger than its limit.
    #[error("annotation {request_key} ({request}) is larger than {limit_key} ({limit})")]
    RequestAboveLimit {
        request_key: String,
        request: String,
        limit_key: String,
        limit: String,
    },
    /// `secret` and `anonymous` together.
    #[error("annotations {PREFIX}secret and {anonymous_key} exclude each other")]
    SecretAndAnonymous { anonymous_key: String },
}

fn bucket_key(name: &str) -> String {
    if name == DEFAULT_MOUNT {
        "bucket".to_owned()
    } else {
        format!("bucket.{name}")
    }
}

/// Where the sidecar keeps its block cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMedium {
    /// The node's disk (an emptyDir without a medium).
    #[default]
    Disk,
    /// Memory (an emptyDir with `medium: Memory`, counted against the sidecar's memory limit).
    Memory,
}

/// One bucket mounted into the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Mount name: `default`, or the suffix of `s3.mount/bucket.<name>`.
    pub name: String,
    pub bucket: String,
    pub prefix: Option<String>,
    /// Mount path in the app containers.
    pub path: String,
    pub read_only: bool,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    pub anonymous: bool,
}

/// Per-pod sidecar settings, each kept in the form the sidecar flag takes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodSettings {
    pub secret: Option<String>,
    /// Names of the containers that get the mounts; `None` means every app container.
    pub containers: Option<Vec<String>>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub file_mode: Option<String>,
    pub dir_mode: Option<String>,
    pub metadata_ttl: Option<String>,
    /// Cache size as written (e.g. `512MiB`) and in bytes.
    pub cache_size: Option<(String, u64)>,
    pub cache_medium: CacheMedium,
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
    pub log_level: Option<String>,
}

/// Everything the annotations of one pod ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMounts {
    /// Mounts sorted by name, `default` first.
    pub mounts: Vec<Mount>,
    pub settings: PodSettings,
}

/// Reads the `s3.mount/*` annotations. `Ok(None)`: no `s3.mount/` key at all (the pod opted out).
pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Option<PodMounts>, Vec<AnnotationError>> {
    let ours: Vec<(&str, &str, &str)> = annotations
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(PREFIX).map(|rest| (k.as_str(), rest, v.as_str())))
        .collect();
    if ours.is_empty() {
        return Ok(None);
    }
    let mut errors = Vec::new();
    // mount name -> setting -> (full key, value)
    let mut per_mount: BTreeMap<String, BTreeMap<&'static str, (&str, &str)>> = BTreeMap::new();
    let mut per_pod: BTreeMap<&'static str, (&str, &str)> = BTreeMap::new();

    for (key, rest, value) in ours {
        if looks_like_access_key(value) {
            errors.push(AnnotationError::Credential { key: key.to_owned() });
            continue;
        }
        let (setting, name) = match rest.split_once('.') {
            Some((s, n)) => (s, Some(n)),
            None => (rest, None),
        };
        if let Some(known) = MOUNT_KEYS.iter().find(|k| **k == setting) {
            let name = name.unwrap_or(DEFAULT_MOUNT);
            if !valid_mount_name(name) {
                errors.push(AnnotationError::InvalidMountName {
                    key: key.to_owned(),
                    name: name.to_owned(),
                });
                continue;
            }
            let slot = per_mount.entry(name.to_owned()).or_default();
            if let Some((first, _)) = slot.insert(known, (key, value)) {
                errors.push(AnnotationError::Duplicate {
                    first: first.to_owned(),
                    second: key.to_owned(),
                });
            }
        } else if let Some(known) = POD_KEYS.iter().find(|k| **k == setting) {
            if name.is_some() {
                errors.push(AnnotationError::PerPodSetting {
                    key: key.to_owned(),
                    setting: setting.to_owned(),
                });
                continue;
            }
            per_pod.insert(known, (key, value));
        } else if is_credential_key(setting) {
            errors.push(AnnotationError::Credential { key: key.to_owned() });
        } else {
            errors.push(AnnotationError::UnknownKey {
                key: key.to_owned(),
                suggestion: suggest(setting, name),
            });
        }
    }

    let mut mounts = Vec::new();
    for (name, keys) in &per_mount {
        match parse_mount(name, keys, &mut errors) {
            Some(m) => mounts.push(m),
            None if !keys.contains_key("bucket") => {
                for (key, _) in keys.values() {
                    errors.push(AnnotationError::MissingBucket {
                        key: (*key).to_owned(),
                        name: name.clone(),
                    });
                }
            }
            None => {}
        }
    }
    mounts.sort_by(|a, b| (a.name != DEFAULT_MOUNT, &a.name).cmp(&(b.name != DEFAULT_MOUNT, &b.name)));
    check_paths(&mounts, &mut errors);

    let settings = parse_settings(&per_pod, &mut errors);
    if let Some(m) = mounts.iter().find(|m| m.anonymous)
        && settings.secret.is_some()
    {
        errors.push(AnnotationError::SecretAndAnonymous {
            anonymous_key: mount_key("anonymous", &m.name),
        });
    }
    if mounts.is_empty() && errors.is_empty() {
        // Only per-pod keys: nothing to mount, which is a mistake worth naming.
        let key = per_pod
            .values()
            .next()
            .map(|(k, _)| (*k).to_owned())
            .unwrap_or_default();
        errors.push(AnnotationError::MissingBucket {
            key,
            name: DEFAULT_MOUNT.to_owned(),
        });
    }
    if errors.is_empty() {
        Ok(Some(PodMounts { mounts, settings }))
    } else {
        Err(errors)
    }
}

/// The full annotation key of `setting` for mount `name`.
pub fn mount_key(setting: &str, name: &str) -> String {
    if name == DEFAULT_MOUNT {
        format!("{PREFIX}{setting}")
    } else {
        format!("{PREFIX}{setting}.{name}")
    }
}

fn parse_mount(
    name: &str,
    keys: &BTreeMap<&'static str, (&str, &str)>,
    errors: &mut Vec<AnnotationError>,
) -> Option<Mount> {
    let before = errors.len();
    let get = |s: &str| keys.get(s).copied();
    let bucket = get("bucket").map(|(k, v)| check(k, v, valid_bucket, BUCKET_FORM, errors));
    let prefix = get("prefix").map(|(k, v)| check(k, v, valid_prefix, PREFIX_FORM, errors));
    let default_path = if name == DEFAULT_MOUNT {
        DEFAULT_PATH.to_owned()
    } else {
        format!("{DEFAULT_PATH}-{name}")
    };
    let path = get("path")
        .map(|(k, v)| check(k, v, valid_path, PATH_FORM, errors))
        .unwrap_or(default_path);
    let read_only = get("read-only")
        .map(|(k, v)| boolean(k, v, errors))
        .unwrap_or(false);
    let endpoint = get("endpoint").map(|(k, v)| check(k, v, valid_endpoint, ENDPOINT_FORM, errors));
    let region = get("region").map(|(k, v)| check(k, v, valid_region, REGION_FORM, errors));
    let path_style = get("path-style")
        .map(|(k, v)| boolean(k, v, errors))
        .unwrap_or(false);
    let anonymous = get("anonymous")
        .map(|(k, v)| boolean(k, v, errors))
        .unwrap_or(false);
    let bucket = bucket?;
    if errors.len() != before {
        return None;
    }
    Some(Mount {
        name: name.to_owned(),
        bucket,
        prefix: prefix.filter(|p| !p.is_empty()),
        path: path.trim_end_matches('/').to_owned(),
        read_only,
        endpoint,
        region,
        path_style,
        anonymous,
    })
}

fn parse_settings(
    keys: &BTreeMap<&'static str, (&str, &str)>,
    errors: &mut Vec<AnnotationError>,
) -> PodSettings {
    let get = |s: &str| keys.get(s).copied();
    let mut out = PodSettings {
        secret: get("secret").map(|(k, v)| check(k, v, valid_dns_subdomain, SECRET_FORM, errors)),
        containers: get("containers").map(|(k, v)| {
            let names: Vec<String> = v.split(',').map(|s| s.trim().to_owned()).collect();
            if names.iter().any(|n| !valid_dns_label(n)) {
                errors.push(invalid(k, v, CONTAINERS_FORM));
            }
            names
        }),
        uid: get("uid").and_then(|(k, v)| id(k, v, errors)),
        gid: get("gid").and_then(|(k, v)| id(k, v, errors)),
        file_mode: get("file-mode").map(|(k, v)| check(k, v, valid_mode, MODE_FORM, errors)),
        dir_mode: get("dir-mode").map(|(k, v)| check(k, v, valid_mode, MODE_FORM, errors)),
        metadata_ttl: get("metadata-ttl").map(|(k, v)| check(k, v, valid_duration, DURATION_FORM, errors)),
        cache_size: get("cache-size").and_then(|(k, v)| match parse_size(v) {
            Some(bytes) => Some((v.to_owned(), bytes)),
            None => {
                errors.push(invalid(k, v, SIZE_FORM));
                None
            }
        }),
        cache_medium: match get("cache-medium") {
            None | Some((_, "disk")) => CacheMedium::Disk,
            Some((_, "memory")) => CacheMedium::Memory,
            Some((k, v)) => {
                errors.push(invalid(k, v, "\"disk\" or \"memory\""));
                CacheMedium::Disk
            }
        },
        cpu_request: get("sidecar-cpu-request")
            .map(|(k, v)| check(k, v, quantity::is_valid, QUANTITY_FORM, errors)),
        cpu_limit: get("sidecar-cpu-limit")
            .map(|(k, v)| check(k, v, quantity::is_valid, QUANTITY_FORM, errors)),
        memory_request: get("sidecar-memory-request")
            .map(|(k, v)| check(k, v, quantity::is_valid, QUANTITY_FORM, errors)),
        memory_limit: get("sidecar-memory-limit")
            .map(|(k, v)| check(k, v, quantity::is_valid, QUANTITY_FORM, errors)),
        log_level: get("log-level").map(|(k, v)| check(k, v, valid_log_level, LOG_LEVEL_FORM, errors)),
    };
    for (req, lim) in [
        ("sidecar-cpu-request", "sidecar-cpu-limit"),
        ("sidecar-memory-request", "sidecar-memory-limit"),
    ] {
        if let (Some((rk, rv)), Some((lk, lv))) = (get(req), get(lim))
            && let (Some(r), Some(l)) = (quantity::parse(rv), quantity::parse(lv))
            && r > l
        {
            errors.push(AnnotationError::RequestAboveLimit {
                request_key: rk.to_owned(),
                request: rv.to_owned(),
                limit_key: lk.to_owned(),
                limit: lv.to_owned(),
            });
        }
    }
    if out.secret.as_deref() == Some("") {
        out.secret = None;
    }
    out
}

const BUCKET_FORM: &str = "an S3 bucket name: 3-63 lowercase letters, digits, '.' or '-', starting and ending \
                           with a letter or digit, not an IP address, not starting with \"xn--\" or \"sthree-\" \
                           and not ending with \"-s3alias\" or \"--ol-s3\"";
const PREFIX_FORM: &str = "a key prefix such as \"data/2024/\" (no leading '/', no empty, '.' or '..' parts, \
                           no control characters, no \"$(\", at most 1023 bytes)";
const PATH_FORM: &str =
    "an absolute path such as \"/mnt/s3\" (not \"/\", no \"..\", \".\", \":\" or empty parts)";
const ENDPOINT_FORM: &str = "an http:// or https:// URL such as \"https://s3.example.com\"";
const REGION_FORM: &str = "a region such as \"eu-west-1\" (lowercase letters, digits and '-')";
const SECRET_FORM: &str = "the name of a Secret in the pod's namespace";
const CONTAINERS_FORM: &str = "a comma-separated list of container names such as \"app,worker\"";
const ID_FORM: &str = "a number from 0 to 2147483647";
const MODE_FORM: &str = "octal permission bits such as \"0644\" or \"755\"";
const DURATION_FORM: &str = "a duration up to 24h such as \"0\", \"500ms\", \"1s\" or \"5m\"";
const SIZE_FORM: &str = "a size from 1MiB to 1PiB such as \"512MiB\" or \"2GiB\"";
const QUANTITY_FORM: &str = "a Kubernetes quantity such as \"100m\", \"1\", \"256Mi\" or \"1Gi\"";
const LOG_LEVEL_FORM: &str = "a tracing filter such as \"info\", \"debug\" or \"s3mount=debug,info\"";

fn invalid(key: &str, value: &str, expected: &str) -> AnnotationError {
    AnnotationError::InvalidValue {
        key: key.to_owned(),
        value: value.to_owned(),
        expected: expected.to_owned(),
    }
}

fn check(
    key: &str,
    value: &str,
    ok: fn(&str) -> bool,
    form: &str,
    errors: &mut Vec<AnnotationError>,
) -> String {
    if !ok(value) {
        errors.push(invalid(key, value, form));
    }
    value.to_owned()
}

fn boolean(key: &str, value: &str, errors: &mut Vec<AnnotationError>) -> bool {
    match value {
        "true" => true,
        "false" => false,
        _ => {
            errors.push(invalid(key, value, "\"true\" or \"false\""));
            false
        }
    }
}

fn id(key: &str, value: &str, errors: &mut Vec<AnnotationError>) -> Option<u32> {
    match value.parse::<u32>() {
        Ok(n) if n <= i32::MAX as u32 && !value.starts_with('+') => Some(n),
        _ => {
            errors.push(invalid(key, value, ID_FORM));
            None
        }
    }
}

fn valid_mount_name(name: &str) -> bool {
    name.len() <= MAX_MOUNT_NAME && valid_dns_label(name)
}

/// RFC 1123 label: lowercase letters, digits and '-', alphanumeric at both ends, at most 63.
pub fn valid_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn valid_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(valid_dns_label)
}

fn valid_bucket(s: &str) -> bool {
    (3..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
        && !s.contains("..")
        // S3's further rules: not an IP address, none of the reserved prefixes and suffixes.
        && s.parse::<std::net::Ipv4Addr>().is_err()
        && !["xn--", "sthree-", "amzn-s3-demo-"].iter().any(|p| s.starts_with(p))
        && !["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"].iter().any(|x| s.ends_with(x))
}

/// The sidecar's own rule (sidecar/src/config.rs `normalize_prefix`): what passes here, the sidecar
/// accepts. `$(` is refused because the kubelet would expand it in the sidecar's arguments.
fn valid_prefix(s: &str) -> bool {
    let trimmed = s.strip_suffix('/').unwrap_or(s);
    s.len() < 1024
        && !s.starts_with('/')
        && !s.chars().any(char::is_control)
        && !s.contains("$(")
        && (s.is_empty()
            || !trimmed
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == ".."))
}

fn valid_path(s: &str) -> bool {
    let trimmed = s.trim_end_matches('/');
    s.starts_with('/')
        && !trimmed.is_empty()
        && !s.contains(':')
        && !s.chars().any(char::is_control)
        && trimmed[1..]
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

fn valid_endpoint(s: &str) -> bool {
    if s.contains("$(") {
        return false; // the kubelet would expand it in the sidecar's arguments
    }
    match url::Url::parse(s) {
        Ok(u) => {
            matches!(u.scheme(), "http" | "https")
                && u.host_str().is_some_and(|h| !h.is_empty())
                && u.username().is_empty()
                && u.password().is_none()
                && u.query().is_none()
                && u.fragment().is_none()
        }
        Err(_) => false,
    }
}

fn valid_region(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_mode(s: &str) -> bool {
    (3..=4).contains(&s.len()) && s.bytes().all(|b| (b'0'..=b'7').contains(&b))
}

fn valid_duration(s: &str) -> bool {
    s == "0" || humantime::parse_duration(s).is_ok_and(|d| d <= Duration::from_secs(24 * 3600))
}

/// The cache sizes the sidecar accepts (its `MIN_CACHE_SIZE` and `MAX_CACHE_SIZE`): at most
/// 1 PiB, also because the size parser saturates far larger values at u64::MAX instead of failing.
const MIN_CACHE_BYTES: u64 = 1 << 20;
const MAX_CACHE_BYTES: u64 = 1 << 50;

fn parse_size(s: &str) -> Option<u64> {
    if s.is_empty() || s.chars().any(char::is_whitespace) || !s.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    let size: bytesize::ByteSize = s.parse().ok()?;
    (MIN_CACHE_BYTES..=MAX_CACHE_BYTES)
        .contains(&size.as_u64())
        .then_some(size.as_u64())
}

fn valid_log_level(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_:=,.-".contains(&b))
        && tracing_subscriber::EnvFilter::builder().parse(s).is_ok()
}

/// An AWS access key id (`AKIA...`, `ASIA...`) pasted into a value.
fn looks_like_access_key(value: &str) -> bool {
    let v = value.trim();
    v.len() == 20
        && (v.starts_with("AKIA") || v.starts_with("ASIA"))
        && v.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

fn is_credential_key(setting: &str) -> bool {
    let s = setting.to_ascii_lowercase().replace('_', "-");
    CREDENTIAL_WORDS.iter().any(|w| s.contains(w)) || s == "aws-secret" || s.starts_with("aws-access")
}

/// The known key closest to an unknown `setting[.name]`, if it is close enough to be a typo.
fn suggest(setting: &str, name: Option<&str>) -> Option<String> {
    let (best, distance) = MOUNT_KEYS
        .iter()
        .chain(POD_KEYS)
        .map(|k| (*k, strsim::damerau_levenshtein(setting, k)))
        .min_by_key(|(_, d)| *d)?;
    if distance > (setting.len().max(best.len()) / 3).max(2) {
        return None;
    }
    let per_mount = MOUNT_KEYS.contains(&best);
    Some(match name {
        Some(n) if per_mount => format!("{PREFIX}{best}.{n}"),
        _ => format!("{PREFIX}{best}"),
    })
}

fn check_paths(mounts: &[Mount], errors: &mut Vec<AnnotationError>) {
    for (i, a) in mounts.iter().enumerate() {
        for b in &mounts[i + 1..] {
            if paths_overlap(&a.path, &b.path) {
                errors.push(AnnotationError::OverlappingPaths {
                    first: a.name.clone(),
                    second: b.name.clone(),
                    first_path: a.path.clone(),
                    second_path: b.path.clone(),
                });
            }
        }
    }
}

/// Whether one path equals the other or lies below it.
pub fn paths_overlap(a: &str, b: &str) -> bool {
    let a = a.trim_end_matches('/');
    let b = b.trim_end_matches('/');
    a == b || b.starts_with(&format!("{a}/")) || a.starts_with(&format!("{b}/"))
}

/// Test helper for this crate's modules: the mounts of a pod with these annotations.
#[cfg(test)]
pub(crate) fn parse_pairs(pairs: &[(&str, &str)]) -> PodMounts {
    let a = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    parse(&a)
        .expect("valid annotations")
        .expect("s3.mount/bucket is set")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn errors(pairs: &[(&str, &str)]) -> Vec<AnnotationError> {
        parse(&annotations(pairs)).expect_err("expected a denial")
    }

    #[test]
    fn pod_without_s3_mount_keys_is_not_opted_in() {
        let a = annotations(&[("example.com/x", "1"), ("s3.mountx/bucket", "b")]);
        assert_eq!(parse(&a), Ok(None));
    }

    #[test]
    fn bucket_alone_gives_default_mount_at_mnt_s3() {
        let got = parse(&annotations(&[("s3.mount/bucket", "demo")]))
            .unwrap()
            .unwrap();
        assert_eq!(got.mounts.len(), 1);
        let m = &got.mounts[0];
        assert_eq!(
            (m.name.as_str(), m.bucket.as_str(), m.path.as_str()),
            ("default", "demo", "/mnt/s3")
        );
        assert!(!m.read_only && !m.path_style && !m.anonymous);
        assert_eq!(got.settings, PodSettings::default());
    }

    #[test]
    fn every_issue_two_key_is_read() {
        let got = parse(&annotations(&[
            ("s3.mount/bucket", "demo"),
            ("s3.mount/path", "/data/"),
            ("s3.mount/prefix", "a/b/"),
            ("s3.mount/endpoint", "http://127.0.0.1:9000"),
            ("s3.mount/region", "eu-west-1"),
            ("s3.mount/path-style", "true"),
            ("s3.mount/read-only", "true"),
            ("s3.mount/secret", "s3-creds"),
        ]))
        .unwrap()
        .unwrap();
        let m = &got.mounts[0];
        assert_eq!(m.path, "/data");
        assert_eq!(m.prefix.as_deref(), Some("a/b/"));
        assert_eq!(m.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(m.region.as_deref(), Some("eu-west-1"));
        assert!(m.path_style && m.read_only);
        assert_eq!(got.settings.secret.as_deref(), Some("s3-creds"));
    }

    #[test]
    fn bad_value_names_the_annotation_and_the_accepted_form() {
        let errs = errors(&[("s3.mount/bucket", "demo"), ("s3.mount/read-only", "yes")]);
        let msg = errs[0].to_string();
        assert!(
            msg.contains("s3.mount/read-only") && msg.contains("\"true\" or \"false\""),
            "{msg}"
        );
    }

    #[test]
    fn unknown_key_gets_did_you_mean() {
        let errs = errors(&[("s3.mount/bucket", "demo"), ("s3.mount/read-onyl", "true")]);
        assert_eq!(
            errs,
            vec![AnnotationError::UnknownKey {
                key: "s3.mount/read-onyl".into(),
                suggestion: Some("s3.mount/read-only".into())
            }]
        );
        assert!(errs[0].to_string().contains("did you mean s3.mount/read-only?"));
        let errs = errors(&[("s3.mount/bucket.models", "m"), ("s3.mount/pth.models", "/m")]);
        assert!(
            errs[0].to_string().contains("did you mean s3.mount/path.models?"),
            "{}",
            errs[0]
        );
        let errs = errors(&[("s3.mount/bucket", "demo"), ("s3.mount/zzzzzzzzzz", "1")]);
        assert_eq!(
            errs[0],
            AnnotationError::UnknownKey {
                key: "s3.mount/zzzzzzzzzz".into(),
                suggestion: None
            }
        );
    }

    #[test]
    fn all_problems_of_one_pod_are_reported_together() {
        let errs = errors(&[
            ("s3.mount/bucket", "Bad_Bucket"),
            ("s3.mount/path", "relative"),
            ("s3.mount/uid", "-1"),
            ("s3.mount/cache-size", "lots"),
            ("s3.mount/bukcet.x", "b"),
        ]);
        assert_eq!(errs.len(), 5, "{errs:?}");
    }

    #[test]
    fn credentials_in_annotations_are_refused() {
        for key in [
            "s3.mount/access-key",
            "s3.mount/aws-secret-access-key",
            "s3.mount/session-token",
        ] {
            let errs = errors(&[("s3.mount/bucket", "demo"), (key, "x")]);
            assert_eq!(errs, vec![AnnotationError::Credential { key: key.into() }]);
        }
        let errs = errors(&[
            ("s3.mount/bucket", "demo"),
            ("s3.mount/region", "AKIAIOSFODNN7EXAMPLE"),
        ]);
        assert_eq!(
            errs,
            vec![AnnotationError::Credential {
                key: "s3.mount/region".into()
            }]
        );
    }

    #[test]
    fn named_mounts_get_their_own_settings_and_default_path() {
        let got = parse(&annotations(&[
            ("s3.mount/bucket", "demo"),
            ("s3.mount/bucket.models", "models"),
            ("s3.mount/read-only.models", "true"),
        ]))
        .unwrap()
        .unwrap();
        let names: Vec<_> = got
            .mounts
            .iter()
            .map(|m| (m.name.as_str(), m.path.as_str(), m.read_only))
            .collect();
        assert_eq!(
            names,
            vec![("default", "/mnt/s3", false), ("models", "/mnt/s3-models", true)]
        );
    }

    #[test]
    fn mount_settings_without_bucket_are_denied() {
        let errs = errors(&[("s3.mount/bucket", "demo"), ("s3.mount/path.models", "/models")]);
        assert_eq!(
            errs,
            vec![AnnotationError::MissingBucket {
                key: "s3.mount/path.models".into(),
                name: "models".into()
            }]
        );
        assert!(errs[0].to_string().contains("s3.mount/bucket.models is missing"));
        assert!(matches!(
            errors(&[("s3.mount/uid", "1000")])[0],
            AnnotationError::MissingBucket { .. }
        ));
    }

    #[test]
    fn per_pod_setting_with_mount_name_is_denied() {
        let errs = errors(&[("s3.mount/bucket.m", "demo"), ("s3.mount/secret.m", "s")]);
        assert!(matches!(&errs[0], AnnotationError::PerPodSetting { setting, .. } if setting == "secret"));
    }

    #[test]
    fn overlapping_mount_paths_are_denied() {
        let errs = errors(&[
            ("s3.mount/bucket", "demo"),
            ("s3.mount/bucket.sub", "other"),
            ("s3.mount/path.sub", "/mnt/s3/sub"),
        ]);
        assert!(
            matches!(errs[0], AnnotationError::OverlappingPaths { .. }),
            "{errs:?}"
        );
        assert!(!paths_overlap("/mnt/s3", "/mnt/s3-models"));
    }

    #[test]
    fn duplicate_default_mount_keys_are_denied() {
        let errs = errors(&[("s3.mount/bucket", "demo"), ("s3.mount/bucket.default", "other")]);
        assert!(matches!(errs[0], AnnotationError::Duplicate { .. }));
    }

    #[test]
    fn values_are_validated() {
        let bad: &[(&str, &str)] = &[
            ("s3.mount/bucket", "ab"),
            ("s3.mount/bucket", "192.168.1.1"),
            ("s3.mount/bucket", "xn--abc"),
            ("s3.mount/bucket", "abc-s3alias"),
            ("s3.mount/bucket", "data--ol-s3"),
            ("s3.mount/bucket", "a..b"),
            ("s3.mount/path", "/"),
            ("s3.mount/path", "/a/../b"),
            ("s3.mount/prefix", "/abs"),
            ("s3.mount/prefix", "a//b/"),
            ("s3.mount/prefix", "a/../b/"),
            ("s3.mount/prefix", "./x/"),
            ("s3.mount/prefix", ".."),
            ("s3.mount/prefix", "data/$(AWS_SECRET_ACCESS_KEY)/"),
            ("s3.mount/endpoint", "http://minio:9000/$(AWS_SECRET_ACCESS_KEY)"),
            ("s3.mount/endpoint", "ftp://x"),
            ("s3.mount/endpoint", "http://user:pw@host"),
            ("s3.mount/region", "EU"),
            ("s3.mount/secret", "Not_A_Name"),
            ("s3.mount/file-mode", "0999"),
            ("s3.mount/metadata-ttl", "soon"),
            ("s3.mount/cache-size", "1KiB"),
            ("s3.mount/cache-size", "512 MiB"),
            ("s3.mount/cache-size", "2PiB"),
            ("s3.mount/cache-size", "99999999999999999999GiB"),
            ("s3.mount/cache-medium", "ssd"),
            ("s3.mount/sidecar-cpu-limit", "lots"),
            ("s3.mount/log-level", "info;rm"),
            ("s3.mount/containers", "app,,x"),
            ("s3.mount/gid", "4294967295"),
        ];
        for (key, value) in bad {
            let mut pairs = vec![("s3.mount/bucket.x", "fine")];
            if *key != "s3.mount/bucket" {
                pairs.push(("s3.mount/bucket", "demo"));
            }
            pairs.push((key, value));
            let errs = errors(&pairs);
            assert!(
                matches!(&errs[0], AnnotationError::InvalidValue { key: k, .. } if k == key),
                "{key}={value}"
            );
        }
    }

    #[test]
    fn request_above_limit_is_denied() {
        let errs = errors(&[
            ("s3.mount/bucket", "demo"),
            ("s3.mount/sidecar-memory-request", "1Gi"),
            ("s3.mount/sidecar-memory-limit", "512Mi"),
        ]);
        assert!(matches!(errs[0], AnnotationError::RequestAboveLimit { .. }));
    }

    #[test]
    fn secret_and_anonymous_exclude_each_other() {
        let errs = errors(&[
            ("s3.mount/bucket", "demo"),
            ("s3.mount/secret", "s"),
            ("s3.mount/anonymous", "true"),
        ]);
        assert!(matches!(errs[0], AnnotationError::SecretAndAnonymous { .. }));
    }
}
