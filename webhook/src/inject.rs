//! Builds the JSON patch that injects the sidecar, from the raw JSON of the pod.
//!
//! The patch is computed on `serde_json::Value` rather than on typed Kubernetes objects, so that
//! fields this crate's types do not know survive untouched: the patch only adds, it never rewrites
//! what is there. Its operations are ordered so that every index they use is an index of the pod as
//! it was sent: mounts are added to existing containers first, the sidecar is inserted last.
//!
//! What is added (see docs/interfaces.md): an emptyDir per mount and one for the cache, the sidecar
//! (an init container with `restartPolicy: Always` in native mode, the first regular container with
//! a blocking postStart hook in legacy mode), a `HostToContainer` volumeMount per mount in each
//! chosen app container, and `kubectl.kubernetes.io/default-container` when absent.

use std::collections::BTreeMap;

use json_patch::{AddOperation, PatchOperation};
use jsonptr::PointerBuf;
use serde_json::{Value, json};

use crate::annotations::{self, CacheMedium, Mount, PodMounts};
use crate::quantity;

/// Sidecar flag of legacy-mode Jobs: stop once the app processes are gone.
pub const STOP_WHEN_APPS_EXIT_FLAG: &str = "--stop-when-apps-exit";
/// Name of the injected container; a pod that has a container of this name is left alone.
pub const SIDECAR_NAME: &str = "s3mount-sidecar";
/// The sidecar binary inside its image.
pub const SIDECAR_BINARY: &str = "/usr/local/bin/s3mount-sidecar";
/// Where the sidecar sees the mount volumes (`<dir>/<mount name>`).
pub const SIDECAR_MOUNT_DIR: &str = "/s3mount/mnt";
/// The node's pod directory (`<kubelet root>/pods`), a hostPath volume in the sidecar.
///
/// The sidecar mounts FUSE on the emptyDir *through this path*, so that its mount's parent is the
/// node's shared kubelet tree: only then can a restarted sidecar remove the dead mount a killed
/// predecessor left on the node (an unmount propagates through the parent's peer group), and stack
/// its new mount where the app containers' copies will receive it. See sidecar/src/mountsys.rs.
pub const KUBELET_PODS_VOLUME: &str = "s3mount-kubelet-pods";
/// Default kubelet root directory (`kubelet --root-dir`).
pub const DEFAULT_KUBELET_ROOT: &str = "/var/lib/kubelet";
/// Where the sidecar sees the node's pod directory.
pub const KUBELET_PODS_DIR: &str = "/s3mount/kubelet-pods";
/// Env var holding the pod's uid (downward API); the kubelet expands `$(S3MOUNT_POD_UID)` in args.
pub const POD_UID_ENV: &str = "S3MOUNT_POD_UID";
/// Name and path of the cache volume in the sidecar.
pub const CACHE_VOLUME: &str = "s3mount-cache";
pub const CACHE_DIR: &str = "/s3mount/cache";
/// Prefix of the mount volume names (`s3mount-<mount name>`).
pub const VOLUME_PREFIX: &str = "s3mount-";
/// Annotation kubectl reads to pick the container of `kubectl logs/exec`.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
/// Init containers of service meshes that must run before the sidecar (its S3 traffic goes through
/// them).
pub const MESH_INIT_CONTAINERS: &[&str] = &[
    "istio-init",
    "istio-validation",
    "istio-proxy",
    "linkerd-init",
    "linkerd-network-validator",
    "linkerd-proxy",
];
/// Pod grace period when the pod sets none (the Kubernetes default).
pub const DEFAULT_GRACE_PERIOD_SECONDS: i64 = 30;
/// Cache size when `s3.mount/cache-size` is absent (the sidecar's default).
pub const DEFAULT_CACHE_SIZE: u64 = 512 * 1024 * 1024;
/// Sidecar resources when the annotations set none.
pub const DEFAULT_CPU_REQUEST: &str = "50m";
pub const DEFAULT_MEMORY_REQUEST: u64 = 64 * 1024 * 1024;
pub const DEFAULT_MEMORY_LIMIT: u64 = 512 * 1024 * 1024;
/// How long the legacy postStart hook waits for the mount.
pub const LEGACY_WAIT: &str = "120s";
/// Environment variables of the pod's own cloud identity (IRSA, EKS Pod Identity) copied to the
/// sidecar when no Secret is named.
pub const IDENTITY_ENV: &[&str] = &[
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_SESSION_NAME",
    "AWS_STS_REGIONAL_ENDPOINTS",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
];
const TOKEN_FILE_ENV: &[&str] = &[
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
];

/// How the sidecar is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Init container with `restartPolicy: Always` (Kubernetes >= 1.29).
    Native,
    /// First regular container with a postStart hook that blocks until the mount serves.
    Legacy,
}

/// What the injection needs besides the pod.
#[derive(Debug, Clone)]
pub struct InjectConfig {
    pub sidecar_image: String,
    pub lifecycle: Lifecycle,
    /// `imagePullPolicy` of the sidecar; `None` leaves the Kubernetes default.
    pub image_pull_policy: Option<String>,
}

/// Why a pod cannot be injected; each variant names what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error(transparent)]
    Annotation(#[from] annotations::AnnotationError),
    #[error("pod is malformed: {0}")]
    Malformed(String),
    #[error(
        "annotation s3.mount/containers names {name:?}, which is not a container of this pod (containers: {known})"
    )]
    UnknownContainer { name: String, known: String },
    #[error(
        "annotation s3.mount/containers names init container {name:?}, which runs before the sidecar (legacy \
         mode, or a service-mesh init container) and cannot see the mount"
    )]
    InitContainerBeforeSidecar { name: String },
    #[error(
        "container {container:?} already mounts something at {existing}, where s3.mount wants to mount {path}"
    )]
    MountPathTaken {
        container: String,
        existing: String,
        path: String,
    },
    #[error("pod already has a volume named {0:?}, which s3mount needs")]
    VolumeNameTaken(String),
    #[error(
        "the container name {SIDECAR_NAME:?} is reserved for the injected sidecar, but this pod has one with \
         image {image:?}; rename that container"
    )]
    SidecarNameTaken { image: String },
}

/// The result of looking at one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// No `s3.mount/` annotation.
    NotRequested,
    /// The sidecar is already there (a second pass, or a reinvocation).
    AlreadyInjected,
    /// The operations to send back, plus findings worth a warning.
    Patch {
        ops: Vec<PatchOperation>,
        warnings: Vec<String>,
    },
}

/// Decides what to do with `pod` (the raw JSON object of the AdmissionRequest).
pub fn plan(pod: &Value, cfg: &InjectConfig) -> Result<Plan, Vec<InjectError>> {
    let annotations = read_annotations(pod).map_err(|e| vec![e])?;
    let Some(wanted) = annotations::parse(&annotations)
        .map_err(|errs| errs.into_iter().map(InjectError::from).collect::<Vec<_>>())?
    else {
        return Ok(Plan::NotRequested);
    };
    let spec = pod
        .get("spec")
        .and_then(Value::as_object)
        .ok_or_else(|| vec![malformed("spec is not an object")])?;
    let containers = list(spec.get("containers"), "spec.containers")?;
    let init_containers = list(spec.get("initContainers"), "spec.initContainers")?;
    if containers.is_empty() {
        return Err(vec![malformed("spec.containers is empty")]);
    }
    let names = |l: &[Value]| -> Result<Vec<String>, InjectError> {
        l.iter()
            .map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| malformed("a container has no name"))
    };
    let (app_names, init_names) = (
        names(containers).map_err(|e| vec![e])?,
        names(init_containers).map_err(|e| vec![e])?,
    );
    if let Some(existing) = containers
        .iter()
        .chain(init_containers.iter())
        .find(|c| c.get("name").and_then(Value::as_str) == Some(SIDECAR_NAME))
    {
        // Ours (a second pass, a reinvocation): nothing to add. Someone else's container under
        // our name would leave the pod silently without a mount: refuse it.
        let image = existing.get("image").and_then(Value::as_str).unwrap_or_default();
        if image != cfg.sidecar_image {
            return Err(vec![InjectError::SidecarNameTaken {
                image: image.to_owned(),
            }]);
        }
        return Ok(resync_identity(&wanted, containers, init_containers));
    }

    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let sidecar_at = init_names
        .iter()
        .rposition(|n| MESH_INIT_CONTAINERS.contains(&n.as_str()))
        .map_or(0, |i| i + 1);
    let (app_targets, init_targets) = choose_targets(
        &wanted,
        &app_names,
        &init_names,
        cfg.lifecycle,
        sidecar_at,
        &mut errors,
    );
    let volumes = list(spec.get("volumes"), "spec.volumes")?;
    for v in volumes {
        let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
        if name == CACHE_VOLUME
            || name == KUBELET_PODS_VOLUME
            || wanted.mounts.iter().any(|m| volume_name(m) == name)
        {
            errors.push(InjectError::VolumeNameTaken(name.to_owned()));
        }
    }
    for &i in &app_targets {
        check_mount_paths(&containers[i], &wanted.mounts, &mut errors);
    }
    for &i in &init_targets {
        check_mount_paths(&init_containers[i], &wanted.mounts, &mut errors);
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    let mut ops = Vec::new();
    let mut new_volumes: Vec<Value> = wanted
        .mounts
        .iter()
        .map(|m| json!({"name": volume_name(m), "emptyDir": {}}))
        .collect();
    new_volumes.push(cache_volume(&wanted));
    new_volumes.push(json!({
        "name": KUBELET_PODS_VOLUME,
        "hostPath": {"path": format!("{DEFAULT_KUBELET_ROOT}/pods"), "type": "Directory"},
    }));
    append_all(&mut ops, &["spec", "volumes"], spec.get("volumes"), new_volumes);
    for (field, targets, list) in [
        ("containers", &app_targets, &containers),
        ("initContainers", &init_targets, &init_containers),
    ] {
        for &i in targets {
            let app_mounts = wanted.mounts.iter().map(|m| {
                json!({"name": volume_name(m), "mountPath": m.path, "mountPropagation": "HostToContainer"})
            });
            let idx = i.to_string();
            append_all(
                &mut ops,
                &["spec", field, &idx, "volumeMounts"],
                list[i].get("volumeMounts"),
                app_mounts.collect(),
            );
        }
    }

    let grace = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_GRACE_PERIOD_SECONDS);
    let identity = if wanted.settings.secret.is_none() && !wanted.mounts.iter().all(|m| m.anonymous) {
        pod_identity(containers)
    } else {
        Identity::default()
    };
    if wanted.settings.secret.is_none()
        && identity.env.is_empty()
        && !wanted.mounts.iter().all(|m| m.anonymous)
    {
        warnings.push(
            "s3.mount: no s3.mount/secret and no pod identity (IRSA) found: the sidecar will use whatever \
             credentials its environment provides"
                .to_owned(),
        );
    }
    let job_like = matches!(
        spec.get("restartPolicy").and_then(Value::as_str),
        Some("Never" | "OnFailure")
    );
    // Legacy mode in a pod that must complete: the sidecar stops itself once the app processes
    // are gone, which it can see only in a shared process namespace (sidecar/src/apps.rs).
    let share_pids = cfg.lifecycle == Lifecycle::Legacy
        && job_like
        && spec.get("shareProcessNamespace").and_then(Value::as_bool) != Some(false);
    let mut sidecar = sidecar_container(&wanted, cfg, grace, identity);
    if share_pids {
        if let Some(args) = sidecar.get_mut("args").and_then(Value::as_array_mut) {
            args.push(json!(STOP_WHEN_APPS_EXIT_FLAG));
        }
        if spec.get("shareProcessNamespace").is_none() {
            ops.push(add(&["spec", "shareProcessNamespace"], json!(true)));
        }
    }
    match cfg.lifecycle {
        Lifecycle::Native => {
            let at = sidecar_at;
            insert(
                &mut ops,
                "initContainers",
                spec.get("initContainers"),
                at,
                sidecar,
            );
        }
        Lifecycle::Legacy => insert(&mut ops, "containers", spec.get("containers"), 0, sidecar),
    }
    if !annotations.contains_key(DEFAULT_CONTAINER_ANNOTATION) {
        ops.push(add(
            &["metadata", "annotations", DEFAULT_CONTAINER_ANNOTATION],
            json!(app_names[0]),
        ));
    }
    if cfg.lifecycle == Lifecycle::Legacy && job_like {
        warnings.push(if share_pids {
            "s3.mount: legacy sidecar mode: shareProcessNamespace is set so that the sidecar sees the app exit \
             and the pod can complete; the app containers can see the sidecar's processes"
                .to_owned()
        } else {
            "s3.mount: legacy sidecar mode with shareProcessNamespace: false: the sidecar cannot see the app \
             exit, so this pod does not complete on its own; use native sidecars (Kubernetes >= 1.29)"
                .to_owned()
        });
    }
    Ok(Plan::Patch { ops, warnings })
}

/// On a reinvocation (another webhook ran after us), the pod's identity env and token mounts that
/// were added since must reach the sidecar too. Only what is missing is added, so a pass over an
/// up-to-date pod yields no patch.
fn resync_identity(wanted: &PodMounts, containers: &[Value], init_containers: &[Value]) -> Plan {
    if wanted.settings.secret.is_some() || wanted.mounts.iter().all(|m| m.anonymous) {
        return Plan::AlreadyInjected;
    }
    let found = [("initContainers", init_containers), ("containers", containers)]
        .into_iter()
        .find_map(|(f, l)| {
            l.iter()
                .position(|c| c["name"] == SIDECAR_NAME)
                .map(|i| (f, i, &l[i]))
        });
    let Some((field, index, sidecar)) = found else {
        return Plan::AlreadyInjected;
    };
    let apps: Vec<Value> = containers
        .iter()
        .filter(|c| c["name"] != SIDECAR_NAME)
        .cloned()
        .collect();
    let identity = pod_identity(&apps);
    let has = |list: &str, name: &Value| {
        sidecar
            .get(list)
            .and_then(Value::as_array)
            .is_some_and(|l| l.iter().any(|e| &e["name"] == name))
    };
    let env: Vec<Value> = identity
        .env
        .into_iter()
        .filter(|e| !has("env", &e["name"]))
        .collect();
    let mounts: Vec<Value> = identity
        .mounts
        .into_iter()
        .filter(|m| !has("volumeMounts", &m["name"]))
        .collect();
    if env.is_empty() && mounts.is_empty() {
        return Plan::AlreadyInjected;
    }
    let mut ops = Vec::new();
    let idx = index.to_string();
    append_all(&mut ops, &["spec", field, &idx, "env"], sidecar.get("env"), env);
    append_all(
        &mut ops,
        &["spec", field, &idx, "volumeMounts"],
        sidecar.get("volumeMounts"),
        mounts,
    );
    Plan::Patch {
        ops,
        warnings: Vec::new(),
    }
}

/// Volume name of a mount.
pub fn volume_name(m: &Mount) -> String {
    format!("{VOLUME_PREFIX}{}", m.name)
}

/// Where the sidecar mounts `m`.
pub fn sidecar_mountpoint(m: &Mount) -> String {
    format!("{SIDECAR_MOUNT_DIR}/{}", m.name)
}

/// Where the sidecar mounts FUSE: the node's directory of the mount's emptyDir, reached through the
/// kubelet pods hostPath (`$(S3MOUNT_POD_UID)` is expanded by the kubelet).
pub fn sidecar_fuse_target(m: &Mount) -> String {
    format!(
        "{KUBELET_PODS_DIR}/$({POD_UID_ENV})/volumes/kubernetes.io~empty-dir/{}",
        volume_name(m)
    )
}

fn malformed(what: &str) -> InjectError {
    InjectError::Malformed(what.to_owned())
}

/// The pod's annotations, empty when absent or malformed.
pub fn annotations_of(pod: &Value) -> BTreeMap<String, String> {
    read_annotations(pod).unwrap_or_default()
}

fn read_annotations(pod: &Value) -> Result<BTreeMap<String, String>, InjectError> {
    match pod.pointer("/metadata/annotations") {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(InjectError::Malformed(format!("annotation {k} is not a string"))),
            })
            .collect(),
        Some(_) => Err(malformed("metadata.annotations is not an object")),
    }
}

fn list<'a>(v: Option<&'a Value>, what: &str) -> Result<&'a [Value], Vec<InjectError>> {
    match v {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) if a.iter().all(Value::is_object) => Ok(a.as_slice()),
        Some(_) => Err(vec![InjectError::Malformed(format!(
            "{what} is not a list of objects"
        ))]),
    }
}

fn choose_targets(
    wanted: &PodMounts,
    app_names: &[String],
    init_names: &[String],
    lifecycle: Lifecycle,
    sidecar_at: usize,
    errors: &mut Vec<InjectError>,
) -> (Vec<usize>, Vec<usize>) {
    let Some(chosen) = &wanted.settings.containers else {
        return ((0..app_names.len()).collect(), Vec::new());
    };
    let (mut apps, mut inits) = (Vec::new(), Vec::new());
    for name in chosen {
        if let Some(i) = app_names.iter().position(|n| n == name) {
            if !apps.contains(&i) {
                apps.push(i);
            }
        } else if let Some(i) = init_names.iter().position(|n| n == name) {
            if lifecycle == Lifecycle::Legacy || i < sidecar_at {
                errors.push(InjectError::InitContainerBeforeSidecar { name: name.clone() });
            } else if !inits.contains(&i) {
                inits.push(i);
            }
        } else {
            let known = app_names
                .iter()
                .chain(init_names)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            errors.push(InjectError::UnknownContainer {
                name: name.clone(),
                known,
            });
        }
    }
    apps.sort_unstable();
    inits.sort_unstable();
    (apps, inits)
}

/// An existing mount at a mount path, or below one, would shadow the bucket or need a directory
/// created inside it. A mount above it (`/data` for `/data/s3`) is fine.
fn check_mount_paths(container: &Value, mounts: &[Mount], errors: &mut Vec<InjectError>) {
    let name = container.get("name").and_then(Value::as_str).unwrap_or_default();
    let existing = container
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for vm in existing {
        let Some(path) = vm.get("mountPath").and_then(Value::as_str) else {
            continue;
        };
        for m in mounts {
            let p = path.trim_end_matches('/');
            if p == m.path || p.starts_with(&format!("{}/", m.path)) {
                errors.push(InjectError::MountPathTaken {
                    container: name.to_owned(),
                    existing: path.to_owned(),
                    path: m.path.clone(),
                });
            }
        }
    }
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        value,
    })
}

/// Appends `items` to the list at `tokens`, creating the list when it is absent or null.
fn append_all(ops: &mut Vec<PatchOperation>, tokens: &[&str], current: Option<&Value>, items: Vec<Value>) {
    if items.is_empty() {
        return;
    }
    if matches!(current, Some(Value::Array(_))) {
        let mut t = tokens.to_vec();
        t.push("-");
        for item in items {
            ops.push(add(&t, item));
        }
    } else {
        ops.push(add(tokens, Value::Array(items)));
    }
}

fn insert(ops: &mut Vec<PatchOperation>, field: &str, current: Option<&Value>, at: usize, item: Value) {
    if matches!(current, Some(Value::Array(_))) {
        let idx = at.to_string();
        ops.push(add(&["spec", field, &idx], item));
    } else {
        ops.push(add(&["spec", field], Value::Array(vec![item])));
    }
}

fn cache_size(wanted: &PodMounts) -> u64 {
    wanted
        .settings
        .cache_size
        .as_ref()
        .map_or(DEFAULT_CACHE_SIZE, |(_, b)| *b)
}

/// Room on the cache volume: the block cache bound plus as much again for staged writes.
fn cache_volume_limit(wanted: &PodMounts) -> u64 {
    cache_size(wanted).saturating_mul(2)
}

fn cache_volume(wanted: &PodMounts) -> Value {
    let limit = quantity::bytes(cache_volume_limit(wanted));
    match wanted.settings.cache_medium {
        CacheMedium::Disk => json!({"name": CACHE_VOLUME, "emptyDir": {"sizeLimit": limit}}),
        CacheMedium::Memory => {
            json!({"name": CACHE_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": limit}})
        }
    }
}

/// The sidecar's command line, `--flag=value` items as docs/interfaces.md lists them. Each mount is
/// a group that starts with `--bucket=`; the process-wide flags follow the last group.
pub fn sidecar_args(wanted: &PodMounts, grace_seconds: i64) -> Vec<String> {
    let mut args = sidecar_args_unescaped(wanted, grace_seconds);
    // The kubelet expands `$(VAR)` in args with the container's env (which holds the credentials):
    // every value from an annotation is escaped (`$$(` stays a literal `$(`); only our own
    // `$(S3MOUNT_POD_UID)` in the mountpoint is meant to expand.
    for arg in &mut args {
        if !arg.starts_with("--mountpoint=") {
            *arg = arg.replace("$(", "$$(");
        }
    }
    args
}

fn sidecar_args_unescaped(wanted: &PodMounts, grace_seconds: i64) -> Vec<String> {
    let mut args = Vec::new();
    for m in &wanted.mounts {
        args.push(format!("--bucket={}", m.bucket));
        args.push(format!("--mountpoint={}", sidecar_fuse_target(m)));
        if let Some(p) = &m.prefix {
            args.push(format!("--prefix={p}"));
        }
        if let Some(e) = &m.endpoint {
            args.push(format!("--endpoint={e}"));
        }
        if let Some(r) = &m.region {
            args.push(format!("--region={r}"));
        }
        for (on, flag) in [
            (m.path_style, "--path-style"),
            (m.read_only, "--read-only"),
            (m.anonymous, "--anonymous"),
        ] {
            if on {
                args.push(flag.to_owned());
            }
        }
    }
    let s = &wanted.settings;
    args.push(format!("--cache-dir={CACHE_DIR}"));
    if let Some((size, _)) = &s.cache_size {
        args.push(format!("--cache-size={size}"));
    }
    let optional = [
        ("--uid", s.uid.map(|u| u.to_string())),
        ("--gid", s.gid.map(|g| g.to_string())),
        ("--file-mode", s.file_mode.clone()),
        ("--dir-mode", s.dir_mode.clone()),
        ("--metadata-ttl", s.metadata_ttl.clone()),
    ];
    for (flag, value) in optional {
        if let Some(v) = value {
            args.push(format!("{flag}={v}"));
        }
    }
    args.push(format!("--grace-period={}s", grace_seconds.max(0)));
    if let Some(l) = &s.log_level {
        args.push(format!("--log-level={l}"));
    }
    args
}

/// What of the pod's own cloud identity the sidecar gets.
#[derive(Debug, Default)]
struct Identity {
    env: Vec<Value>,
    mounts: Vec<Value>,
}

/// The identity env of the first app container that has one, with the volumeMounts that hold its
/// token files.
fn pod_identity(containers: &[Value]) -> Identity {
    for c in containers {
        let env: Vec<Value> = c
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|e| {
                e.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| IDENTITY_ENV.contains(&n))
            })
            .cloned()
            .collect();
        let has_identity = env.iter().any(|e| {
            matches!(
                e.get("name").and_then(Value::as_str),
                Some("AWS_ROLE_ARN" | "AWS_CONTAINER_CREDENTIALS_FULL_URI")
            )
        });
        if !has_identity {
            continue;
        }
        let token_files: Vec<&str> = env
            .iter()
            .filter(|e| {
                e.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| TOKEN_FILE_ENV.contains(&n))
            })
            .filter_map(|e| e.get("value").and_then(Value::as_str))
            .collect();
        let mounts = c
            .get("volumeMounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|vm| {
                vm.get("mountPath").and_then(Value::as_str).is_some_and(|p| {
                    let p = p.trim_end_matches('/');
                    token_files.iter().any(|f| f.starts_with(&format!("{p}/")))
                })
            })
            .map(|vm| {
                let mut vm = vm.clone();
                if let Some(o) = vm.as_object_mut() {
                    o.remove("mountPropagation");
                    o.insert("readOnly".into(), Value::Bool(true));
                }
                vm
            })
            .collect();
        return Identity { env, mounts };
    }
    Identity::default()
}

fn secret_env(secret: &str) -> Vec<Value> {
    let entry = |key: &str, optional: bool| {
        let mut r = json!({"name": secret, "key": key});
        if optional {
            r["optional"] = Value::Bool(true);
        }
        let mut e = json!({"name": key, "valueFrom": {}});
        e["valueFrom"]["secretKeyRef"] = r;
        e
    };
    vec![
        entry("AWS_ACCESS_KEY_ID", false),
        entry("AWS_SECRET_ACCESS_KEY", false),
        entry("AWS_SESSION_TOKEN", true),
    ]
}

fn resources(wanted: &PodMounts) -> Value {
    let s = &wanted.settings;
    let in_memory = if s.cache_medium == CacheMedium::Memory {
        cache_volume_limit(wanted)
    } else {
        0
    };
    let default_mem_request = quantity::bytes(DEFAULT_MEMORY_REQUEST.saturating_add(in_memory));
    let default_mem_limit = quantity::bytes(DEFAULT_MEMORY_LIMIT.saturating_add(in_memory));
    // A request given alone raises the default limit to it; a limit given alone caps the default
    // request, so the pair is always valid.
    let pick = |req: &Option<String>, lim: &Option<String>, dreq: Option<String>, dlim: Option<String>| {
        let num = |q: &str| quantity::parse(q).unwrap_or(0.0);
        let request = match (req, lim, dreq) {
            (Some(r), _, _) => Some(r.clone()),
            (None, Some(l), Some(d)) if num(&d) > num(l) => Some(l.clone()),
            (None, _, d) => d,
        };
        let limit = match (lim, &request, dlim) {
            (Some(l), _, _) => Some(l.clone()),
            (None, Some(r), Some(d)) if num(r) > num(&d) => Some(r.clone()),
            (None, _, d) => d,
        };
        (request, limit)
    };
    let (cpu_req, cpu_lim) = pick(
        &s.cpu_request,
        &s.cpu_limit,
        Some(DEFAULT_CPU_REQUEST.to_owned()),
        None,
    );
    let (mem_req, mem_lim) = pick(
        &s.memory_request,
        &s.memory_limit,
        Some(default_mem_request),
        Some(default_mem_limit),
    );
    let entries = |cpu: Option<String>, memory: Option<String>| {
        let mut map = serde_json::Map::new();
        for (key, v) in [("cpu", cpu), ("memory", memory)] {
            if let Some(v) = v {
                map.insert(key.to_owned(), Value::String(v));
            }
        }
        map
    };
    let requests = entries(cpu_req, mem_req);
    let limits = entries(cpu_lim, mem_lim);
    let mut out = Value::Object(serde_json::Map::from_iter([(
        "requests".to_owned(),
        Value::Object(requests),
    )]));
    if !limits.is_empty() {
        out["limits"] = Value::Object(limits);
    }
    out
}

fn sidecar_container(wanted: &PodMounts, cfg: &InjectConfig, grace: i64, identity: Identity) -> Value {
    let mountpoints: Vec<String> = wanted
        .mounts
        .iter()
        .map(|m| format!("--mountpoint={}", sidecar_mountpoint(m)))
        .collect();
    let mut probe_cmd = vec![SIDECAR_BINARY.to_owned(), "probe".to_owned()];
    probe_cmd.extend(mountpoints.iter().cloned());
    let mut volume_mounts: Vec<Value> = wanted
        .mounts
        .iter()
        .map(|m| json!({"name": volume_name(m), "mountPath": sidecar_mountpoint(m), "mountPropagation": "Bidirectional"}))
        .collect();
    volume_mounts.push(json!({"name": CACHE_VOLUME, "mountPath": CACHE_DIR}));
    volume_mounts.push(json!({
        "name": KUBELET_PODS_VOLUME,
        "mountPath": KUBELET_PODS_DIR,
        "mountPropagation": "Bidirectional",
    }));
    volume_mounts.extend(identity.mounts);
    let mut env = vec![json!({
        "name": POD_UID_ENV,
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}},
    })];
    env.extend(match &wanted.settings.secret {
        Some(secret) => secret_env(secret),
        None => identity.env,
    });
    env.retain(|e| e.is_object());

    // Values that are already JSON are moved in: `json!` would serialize them into a copy.
    let mut c = json!({
        "name": SIDECAR_NAME,
        "image": cfg.sidecar_image,
        "args": sidecar_args(wanted, grace),
        "securityContext": {
            "privileged": true,
            "runAsUser": 0,
            "runAsNonRoot": false,
            "readOnlyRootFilesystem": true,
        },
    });
    c["volumeMounts"] = Value::Array(volume_mounts);
    c["resources"] = resources(wanted);
    if !env.is_empty() {
        c["env"] = Value::Array(env);
    }
    if let Some(p) = &cfg.image_pull_policy {
        c["imagePullPolicy"] = Value::String(p.clone());
    }
    match cfg.lifecycle {
        Lifecycle::Native => {
            c["restartPolicy"] = json!("Always");
            c["startupProbe"] = json!({
                "exec": {"command": probe_cmd},
                "periodSeconds": 1,
                "timeoutSeconds": 5,
                "failureThreshold": 120,
            });
        }
        Lifecycle::Legacy => {
            let mut wait = probe_cmd.clone();
            wait.push(format!("--wait={LEGACY_WAIT}"));
            c["lifecycle"] = json!({"postStart": {"exec": {"command": wait}}});
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts(pairs: &[(&str, &str)]) -> PodMounts {
        annotations::parse_pairs(pairs)
    }

    #[test]
    fn request_given_alone_raises_the_default_limit_and_limit_alone_caps_the_request() {
        let r = resources(&mounts(&[
            ("s3.mount/bucket", "abc"),
            ("s3.mount/sidecar-memory-request", "1Gi"),
        ]));
        assert_eq!(r["requests"]["memory"], "1Gi");
        assert_eq!(r["limits"]["memory"], "1Gi");
        let r = resources(&mounts(&[
            ("s3.mount/bucket", "abc"),
            ("s3.mount/sidecar-memory-limit", "32Mi"),
        ]));
        assert_eq!(
            (r["requests"]["memory"].as_str(), r["limits"]["memory"].as_str()),
            (Some("32Mi"), Some("32Mi"))
        );
        let r = resources(&mounts(&[("s3.mount/bucket", "abc")]));
        assert!(r["limits"].get("cpu").is_none(), "no CPU limit by default");
    }

    #[test]
    fn grace_period_is_passed_in_seconds_and_never_negative() {
        let m = mounts(&[("s3.mount/bucket", "abc")]);
        assert!(sidecar_args(&m, 45).contains(&"--grace-period=45s".to_owned()));
        assert!(sidecar_args(&m, -1).contains(&"--grace-period=0s".to_owned()));
    }

    #[test]
    fn pointers_escape_tilde_and_slash() {
        assert_eq!(
            pointer(&["metadata", "annotations", "a~b/c"]).as_str(),
            "/metadata/annotations/a~0b~1c"
        );
    }

    #[test]
    fn non_object_containers_are_malformed_not_a_panic() {
        let cfg = InjectConfig {
            sidecar_image: "i".into(),
            lifecycle: Lifecycle::Native,
            image_pull_policy: None,
        };
        let pod =
            json!({"metadata": {"annotations": {"s3.mount/bucket": "abc"}}, "spec": {"containers": [1]}});
        assert!(matches!(
            &plan(&pod, &cfg).unwrap_err()[0],
            InjectError::Malformed(_)
        ));
        let pod = json!({"metadata": {"annotations": {"s3.mount/bucket": 5}}, "spec": {}});
        assert!(matches!(
            &plan(&pod, &cfg).unwrap_err()[0],
            InjectError::Malformed(_)
        ));
    }
}
