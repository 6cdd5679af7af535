//! A small kubelet stand-in: runs one Pod on this machine with real processes and real mounts.
//!
//! What it models, because s3mount depends on it:
//! - **Volumes.** Each `emptyDir` is a directory under the node directory
//!   (`<state>/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`); `medium: Memory` is a tmpfs
//!   there. The node directory is a shared mount of its own peer group, like `/var/lib/kubelet`
//!   on a node whose root is `rshared`.
//! - **Containers.** Every container is a process in its own mount namespace (`unshare`), with
//!   each volume recursively bind-mounted at its `mountPath` and the propagation its
//!   `volumeMount` asks for: `Bidirectional` -> rshared, `HostToContainer` -> rslave,
//!   none -> rprivate. The container shares the machine's root filesystem (there is no image);
//!   the image's entrypoint and absolute paths inside commands are resolved through maps given
//!   on the command line.
//! - **Order and gates.** Init containers run in order; one with `restartPolicy: Always` (a
//!   native sidecar) is started and the next container waits until its `startupProbe` (exec)
//!   succeeds; it is restarted whenever it exits while the pod runs. Regular containers start in
//!   order; a `postStart` exec hook blocks the next start, and a failing hook kills the container.
//! - **Stopping.** On SIGTERM/SIGINT (pod deletion), or when every regular container has exited
//!   (a finished Job), regular containers get SIGTERM first, then native sidecars in reverse
//!   order, all within `terminationGracePeriodSeconds`; SIGKILL after that. Then it reports any
//!   mount still left under the pod's directory (the cause of pods stuck Terminating).
//! - **hostPath** volumes below `/var/lib/kubelet` map to the state directory (the node's
//!   kubelet root), so `<hostPath>/pods/<uid>` is the pod directory; any other hostPath is refused.
//! - **Secrets** for `secretKeyRef` / `envFrom` come from Secret manifests given as files.
//!
//! What it does not model: images and root filesystems, networking, resource limits, readiness
//! and liveness probes (ignored with a warning), httpGet/tcpSocket probes (refused), and every
//! volume type but emptyDir and kubelet hostPath (refused).
//!
//! The node itself is a private mount namespace of its own, so nothing it mounts can leak into
//! the machine's namespace even if it is killed.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, Probe};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::{Gid, Pid, Uid, execvpe, setgid, setgroups, setuid};
use serde_json::Value;

/// The command line of `s3mount-podrun`.
#[derive(Debug, Parser)]
#[command(
    name = "s3mount-podrun",
    about = "Run a Pod on this machine the way a kubelet would"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a pod until it finishes or is stopped with SIGTERM.
    Run(RunArgs),
    /// Print an AdmissionReview (v1, CREATE) for a pod manifest.
    Review {
        /// Pod manifest (YAML or JSON).
        #[arg(long)]
        pod: PathBuf,
        /// Namespace of the request.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Request uid.
        #[arg(long, default_value = "00000000-0000-4000-8000-000000000001")]
        uid: String,
    },
    /// Apply the patch of an AdmissionReview response to a pod; prints the mutated pod as JSON.
    ApplyReview {
        /// Pod manifest (YAML or JSON).
        #[arg(long)]
        pod: PathBuf,
        /// AdmissionReview response (JSON).
        #[arg(long)]
        review: PathBuf,
    },
    /// Run a command in the mount namespace of a running container (like `kubectl exec`).
    Exec {
        /// The state directory given to `run`.
        #[arg(long)]
        state_dir: PathBuf,
        /// Container name.
        #[arg(long)]
        container: String,
        /// Command and arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print the host pid of a running container.
    Pid {
        /// The state directory given to `run`.
        #[arg(long)]
        state_dir: PathBuf,
        /// Container name.
        #[arg(long)]
        container: String,
    },
    /// Internal: set up a container's mount namespace, then exec its command.
    #[command(hide = true)]
    ContainerInit {
        /// `SRC:DST:PROPAGATION` with PROPAGATION one of shared, slave, private.
        #[arg(long = "bind")]
        binds: Vec<String>,
        #[arg(long)]
        uid: Option<u32>,
        #[arg(long)]
        gid: Option<u32>,
        #[arg(long)]
        workdir: Option<PathBuf>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Internal: enter the mount namespace of a pid, then exec a command.
    #[command(hide = true)]
    NsExec {
        #[arg(long)]
        pid: i32,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Pod manifest (YAML or JSON), usually the webhook-mutated pod.
    #[arg(long)]
    pod: PathBuf,
    /// Node directory: volumes, logs, pids and the final status go below it.
    #[arg(long)]
    state_dir: PathBuf,
    /// `IMAGE=PATH`: the entrypoint of an image (used when a container has no `command`).
    #[arg(long = "image")]
    images: Vec<String>,
    /// `PATH_IN_IMAGE=PATH_ON_HOST`: rewrites the program of commands, probes and hooks.
    #[arg(long = "path-map")]
    path_maps: Vec<String>,
    /// A Secret manifest (YAML); may be repeated.
    #[arg(long = "secret")]
    secrets: Vec<PathBuf>,
    /// Namespace used when the pod has none.
    #[arg(long, default_value = "default")]
    namespace: String,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(args) => run(args),
        Cmd::Review { pod, namespace, uid } => review(&pod, &namespace, &uid),
        Cmd::ApplyReview { pod, review } => apply_review(&pod, &review),
        Cmd::Exec {
            state_dir,
            container,
            command,
        } => container_pid(&state_dir, &container).and_then(|pid| ns_exec(pid, &command)),
        Cmd::Pid { state_dir, container } => container_pid(&state_dir, &container).map(|pid| {
            println!("{pid}");
            0
        }),
        Cmd::ContainerInit {
            binds,
            uid,
            gid,
            workdir,
            command,
        } => container_init(&binds, uid, gid, workdir.as_deref(), &command),
        Cmd::NsExec { pid, command } => ns_exec(pid, &command),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("s3mount-podrun: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Reads a YAML or JSON manifest.
pub fn read_manifest(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).with_context(|| format!("parsing {} as JSON", path.display()))?
    } else {
        serde_yaml::from_str(&text).with_context(|| format!("parsing {} as YAML", path.display()))?
    };
    Ok(value)
}

fn review(pod: &Path, namespace: &str, uid: &str) -> Result<u8> {
    let pod = read_manifest(pod)?;
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": name,
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    });
    println!("{}", serde_json::to_string_pretty(&review)?);
    Ok(0)
}

fn apply_review(pod: &Path, review: &Path) -> Result<u8> {
    let mut pod = read_manifest(pod)?;
    let review = read_manifest(review)?;
    let response = review
        .get("response")
        .ok_or_else(|| anyhow!("the review has no response"))?;
    if response.get("allowed").and_then(Value::as_bool) != Some(true) {
        let message = response
            .pointer("/status/message")
            .and_then(Value::as_str)
            .unwrap_or("");
        bail!("the webhook denied the pod: {message}");
    }
    if let Some(patch) = response.get("patch").and_then(Value::as_str) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .context("patch is not base64")?;
        let patch: json_patch::Patch = serde_json::from_slice(&raw).context("patch is not a JSON patch")?;
        json_patch::patch(&mut pod, &patch).context("the patch does not apply to the pod")?;
    }
    println!("{}", serde_json::to_string_pretty(&pod)?);
    Ok(0)
}

fn container_pid(state_dir: &Path, container: &str) -> Result<i32> {
    let pod_dir = fs::read_to_string(state_dir.join("current-pod"))
        .with_context(|| format!("no pod is running under {}", state_dir.display()))?;
    let pid_file = Path::new(pod_dir.trim())
        .join("containers")
        .join(container)
        .join("pid");
    let pid = fs::read_to_string(&pid_file)
        .with_context(|| format!("container {container} is not running ({})", pid_file.display()))?;
    pid.trim()
        .parse()
        .with_context(|| format!("bad pid in {}", pid_file.display()))
}

fn ns_exec(pid: i32, command: &[String]) -> Result<u8> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/mnt")).with_context(|| format!("no process {pid}"))?;
    setns(&ns, CloneFlags::CLONE_NEWNS).context("entering the container's mount namespace")?;
    std::env::set_current_dir("/").context("chdir /")?;
    exec(command, &std::env::vars().collect::<Vec<_>>())
}

fn exec(command: &[String], env: &[(String, String)]) -> Result<u8> {
    let args: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("NUL in command")?;
    let env: Vec<CString> = env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")))
        .collect::<Result<_, _>>()
        .context("NUL in environment")?;
    let Some(program) = args.first() else {
        bail!("empty command")
    };
    let err = execvpe(program, &args, &env).unwrap_err();
    bail!("exec {}: {err}", command[0])
}

fn container_init(
    binds: &[String],
    uid: Option<u32>,
    gid: Option<u32>,
    workdir: Option<&Path>,
    command: &[String],
) -> Result<u8> {
    SigSet::all().thread_unblock().context("unblocking signals")?;
    unshare(CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    for bind in binds {
        let mut parts = bind.rsplitn(3, ':');
        let (Some(prop), Some(dst), Some(src)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("bad --bind {bind}");
        };
        let flag = match prop {
            "shared" => MsFlags::MS_SHARED,
            "slave" => MsFlags::MS_SLAVE,
            "private" => MsFlags::MS_PRIVATE,
            other => bail!("bad propagation {other}"),
        };
        fs::create_dir_all(dst).with_context(|| format!("creating mount point {dst}"))?;
        mount(
            Some(src),
            dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("bind {src} -> {dst}"))?;
        mount(
            None::<&str>,
            dst,
            None::<&str>,
            flag | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("propagation {prop} on {dst}"))?;
    }
    if let Some(gid) = gid {
        setgroups(&[Gid::from_raw(gid)]).context("setgroups")?;
        setgid(Gid::from_raw(gid)).context("setgid")?;
    }
    if let Some(uid) = uid {
        setuid(Uid::from_raw(uid)).context("setuid")?;
    }
    if let Some(dir) = workdir {
        std::env::set_current_dir(dir).with_context(|| format!("chdir {}", dir.display()))?;
    }
    exec(command, &std::env::vars().collect::<Vec<_>>())
}

/// How a container is run: everything resolved up front.
#[derive(Debug, Clone)]
struct Spec {
    name: String,
    command: Vec<String>,
    env: Vec<(String, String)>,
    binds: Vec<String>,
    uid: Option<u32>,
    gid: Option<u32>,
    workdir: Option<String>,
    startup_probe: Option<ProbeSpec>,
    post_start: Option<Vec<String>>,
    restartable: bool,
}

#[derive(Debug, Clone)]
struct ProbeSpec {
    command: Vec<String>,
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    failure_threshold: u32,
}

/// Live state of one container.
#[derive(Debug, Default)]
struct Live {
    pid: Option<i32>,
    restarts: u32,
    last_exit: Option<i32>,
    running: bool,
}

struct Node {
    pod_dir: PathBuf,
    exe: PathBuf,
    stopping: AtomicBool,
    live: Mutex<BTreeMap<String, Live>>,
    log: Mutex<()>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("pod_dir", &self.pod_dir)
            .finish_non_exhaustive()
    }
}

impl Node {
    fn say(&self, line: &str) {
        let _guard = self.log.lock().unwrap_or_else(|e| e.into_inner());
        println!("[podrun] {line}");
        let _ = std::io::stdout().flush();
    }
}

fn run(args: RunArgs) -> Result<u8> {
    // Become the node: a mount namespace of our own, cut off from the machine's.
    unshare(CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS) for the node (are you root?)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making / private in the node namespace")?;
    // SIGTERM / SIGINT are taken by a thread of ours (pod deletion); children unblock them.
    let signals = {
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGINT);
        set
    };
    signals.thread_block().context("blocking signals")?;

    let pod_value = read_manifest(&args.pod)?;
    let pod: Pod = serde_json::from_value(pod_value.clone()).context("the manifest is not a valid Pod")?;
    let spec = pod.spec.clone().ok_or_else(|| anyhow!("the pod has no spec"))?;
    let meta = &pod.metadata;
    let uid = meta
        .uid
        .clone()
        .unwrap_or_else(|| format!("podrun-{}", std::process::id()));
    let name = meta
        .name
        .clone()
        .or_else(|| {
            meta.generate_name
                .as_ref()
                .map(|g| format!("{g}{:05x}", std::process::id() & 0xfffff))
        })
        .ok_or_else(|| anyhow!("the pod has neither name nor generateName"))?;
    let namespace = meta.namespace.clone().unwrap_or(args.namespace.clone());

    fs::create_dir_all(&args.state_dir)?;
    let state_dir = fs::canonicalize(&args.state_dir)?;
    let pod_dir = state_dir.join("pods").join(&uid);
    fs::create_dir_all(&pod_dir)?;
    // The node directory is a shared mount in a peer group of its own.
    mount(
        Some(&pod_dir),
        &pod_dir,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .context("bind-mounting the pod directory")?;
    mount(
        None::<&str>,
        &pod_dir,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .context("making the pod directory shared")?;
    fs::write(
        state_dir.join("current-pod"),
        pod_dir.to_string_lossy().as_bytes(),
    )?;
    fs::write(state_dir.join("podrun.pid"), std::process::id().to_string())?;

    let node = Arc::new(Node {
        pod_dir: pod_dir.clone(),
        exe: std::env::current_exe()?,
        stopping: AtomicBool::new(false),
        live: Mutex::new(BTreeMap::new()),
        log: Mutex::new(()),
    });
    node.say(&format!(
        "pod {namespace}/{name} (uid {uid}) on node dir {}",
        pod_dir.display()
    ));

    {
        let node = node.clone();
        thread::spawn(move || {
            if let Ok(sig) = signals.wait() {
                node.say(&format!("received {sig}: deleting the pod"));
                node.stopping.store(true, Ordering::SeqCst);
            }
        });
    }

    let volumes = make_volumes(&node, &spec)?;
    let secrets = load_secrets(&args.secrets)?;
    let images = parse_pairs(&args.images, "--image")?;
    let path_maps = parse_pairs(&args.path_maps, "--path-map")?;
    let ctx = Ctx {
        volumes,
        secrets,
        images,
        path_maps,
        name: name.clone(),
        namespace,
        uid: uid.clone(),
    };
    let grace = Duration::from_secs(spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64);

    let mut sidecars: Vec<String> = Vec::new();
    let mut apps: Vec<String> = Vec::new();
    let mut failed = false;
    let mut handles = Vec::new();

    for c in spec.init_containers.iter().flatten() {
        if node.stopping.load(Ordering::SeqCst) {
            break;
        }
        let s = resolve(&ctx, c, &pod_value)?;
        if s.restartable {
            node.say(&format!("starting native sidecar {}", s.name));
            sidecars.push(s.name.clone());
            handles.push(supervise(node.clone(), s.clone(), true));
            if let Some(probe) = &s.startup_probe {
                if !run_probe(&node, &s.name, probe)? {
                    node.say(&format!(
                        "startup probe of {} failed: the pod cannot start",
                        s.name
                    ));
                    failed = true;
                    break;
                }
                node.say(&format!("startup probe of {} succeeded", s.name));
            }
        } else {
            node.say(&format!("running init container {}", s.name));
            let code = run_to_completion(&node, &s)?;
            if code != 0 {
                node.say(&format!(
                    "init container {} exited {code}: the pod failed",
                    s.name
                ));
                failed = true;
                break;
            }
        }
    }

    if !failed {
        for c in &spec.containers {
            if node.stopping.load(Ordering::SeqCst) {
                break;
            }
            let s = resolve(&ctx, c, &pod_value)?;
            node.say(&format!("starting container {}", s.name));
            apps.push(s.name.clone());
            let restart = spec.restart_policy.as_deref() == Some("Always");
            handles.push(supervise(node.clone(), s.clone(), restart));
            if let Some(hook) = &s.post_start {
                wait_for_pid(&node, &s.name);
                node.say(&format!("running postStart hook of {}", s.name));
                let ok = exec_in(&node, &s.name, hook, None)?;
                if !ok {
                    node.say(&format!(
                        "postStart hook of {} failed: killing the container",
                        s.name
                    ));
                    signal_container(&node, &s.name, Signal::SIGKILL);
                }
            }
        }
    }

    // Run until deletion, or until every regular container has finished (Job semantics).
    loop {
        if node.stopping.load(Ordering::SeqCst) || failed {
            break;
        }
        let all_done = {
            let live = node.live.lock().unwrap_or_else(|e| e.into_inner());
            !apps.is_empty()
                && apps
                    .iter()
                    .all(|a| live.get(a).is_some_and(|l| !l.running && l.pid.is_none()))
        };
        if all_done && spec.restart_policy.as_deref() != Some("Always") {
            node.say("every regular container has exited: stopping the sidecars");
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }

    // Termination, the kubelet's way: apps first, then sidecars in reverse order.
    node.stopping.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + grace;
    node.say(&format!(
        "terminating with a grace period of {}s",
        grace.as_secs()
    ));
    for app in &apps {
        signal_container(&node, app, Signal::SIGTERM);
    }
    wait_exited(&node, &apps, deadline);
    for sc in sidecars.iter().rev() {
        signal_container(&node, sc, Signal::SIGTERM);
        wait_exited(&node, std::slice::from_ref(sc), deadline);
    }
    let all: Vec<String> = apps.iter().chain(sidecars.iter()).cloned().collect();
    let mut killed = Vec::new();
    for c in &all {
        if node
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(c)
            .is_some_and(|l| l.pid.is_some())
        {
            node.say(&format!("{c} outlived the grace period: SIGKILL"));
            signal_container(&node, c, Signal::SIGKILL);
            killed.push(c.clone());
        }
    }
    for h in handles {
        let _ = h.join();
    }

    // Tear down memory-backed volumes, then look for anything left mounted under the pod.
    for v in ctx.volumes.values() {
        if v.tmpfs {
            let _ = umount2(&v.path, MntFlags::MNT_DETACH);
        }
    }
    let left = mounts_under(&pod_dir)?;
    let statuses: serde_json::Map<String, Value> = {
        let live = node.live.lock().unwrap_or_else(|e| e.into_inner());
        live.iter()
            .map(|(k, l)| {
                (
                    k.clone(),
                    serde_json::json!({"exitCode": l.last_exit, "restarts": l.restarts}),
                )
            })
            .collect()
    };
    let app_ok = {
        let live = node.live.lock().unwrap_or_else(|e| e.into_inner());
        apps.iter()
            .all(|a| live.get(a).and_then(|l| l.last_exit) == Some(0))
    };
    let status = serde_json::json!({
        "pod": name, "uid": uid, "failed": failed, "appsSucceeded": app_ok && !failed,
        "containers": statuses, "killedAfterGrace": killed, "mountsLeft": left,
    });
    fs::write(
        pod_dir.join("status.json"),
        serde_json::to_string_pretty(&status)?,
    )?;
    let _ = umount2(&pod_dir, MntFlags::MNT_DETACH);
    let _ = fs::remove_file(state_dir.join("current-pod"));
    if left.is_empty() {
        node.say("no mount is left under the pod directory");
    } else {
        node.say(&format!("mounts left under the pod directory: {left:?}"));
    }
    node.say(&format!("pod finished: {}", serde_json::to_string(&status)?));
    Ok(if !left.is_empty() || !killed.is_empty() {
        3
    } else if app_ok && !failed {
        0
    } else {
        1
    })
}

/// The kubelet root a hostPath may point into; it maps to the state directory.
const KUBELET_ROOT: &str = "/var/lib/kubelet";

/// A resolved volume.
#[derive(Debug, Clone)]
struct Volume {
    path: PathBuf,
    tmpfs: bool,
}

struct Ctx {
    volumes: BTreeMap<String, Volume>,
    secrets: BTreeMap<String, BTreeMap<String, String>>,
    images: BTreeMap<String, String>,
    path_maps: BTreeMap<String, String>,
    name: String,
    namespace: String,
    uid: String,
}

fn make_volumes(node: &Node, spec: &k8s_openapi::api::core::v1::PodSpec) -> Result<BTreeMap<String, Volume>> {
    let mut out = BTreeMap::new();
    for v in spec.volumes.iter().flatten() {
        if let Some(hp) = &v.host_path {
            // The node's kubelet directory is our state directory; nothing else of the machine
            // is handed to a pod.
            let rest = hp
                .path
                .strip_prefix(KUBELET_ROOT)
                .filter(|r| r.is_empty() || r.starts_with('/'));
            let Some(rest) = rest else {
                bail!(
                    "volume {}: hostPath {} is outside {KUBELET_ROOT}, refused by s3mount-podrun",
                    v.name,
                    hp.path
                );
            };
            let state_dir = node
                .pod_dir
                .parent()
                .and_then(Path::parent)
                .context("pod dir has no state dir")?;
            let path = state_dir.join(rest.trim_start_matches('/'));
            fs::create_dir_all(&path)?;
            node.say(&format!(
                "volume {} -> {} (hostPath {})",
                v.name,
                path.display(),
                hp.path
            ));
            out.insert(v.name.clone(), Volume { path, tmpfs: false });
            continue;
        }
        let Some(ed) = &v.empty_dir else {
            bail!(
                "volume {}: only emptyDir and kubelet hostPath volumes are supported by s3mount-podrun",
                v.name
            );
        };
        let path = node
            .pod_dir
            .join("volumes")
            .join("kubernetes.io~empty-dir")
            .join(&v.name);
        fs::create_dir_all(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777))?;
        let tmpfs = ed.medium.as_deref() == Some("Memory");
        if tmpfs {
            let size = ed
                .size_limit
                .as_ref()
                .map(|q| format!("size={}", q.0.trim_end_matches('i')));
            mount(
                Some("tmpfs"),
                &path,
                Some("tmpfs"),
                MsFlags::empty(),
                size.as_deref(),
            )
            .with_context(|| format!("tmpfs for volume {}", v.name))?;
        }
        node.say(&format!(
            "volume {} -> {}{}",
            v.name,
            path.display(),
            if tmpfs { " (tmpfs)" } else { "" }
        ));
        out.insert(v.name.clone(), Volume { path, tmpfs });
    }
    Ok(out)
}

fn load_secrets(files: &[PathBuf]) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let mut out = BTreeMap::new();
    for f in files {
        let v = read_manifest(f)?;
        if v.get("kind").and_then(Value::as_str) != Some("Secret") {
            bail!("{} is not a Secret", f.display());
        }
        let name = v
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .context("secret without name")?;
        let mut data = BTreeMap::new();
        for (k, val) in v.get("data").and_then(Value::as_object).into_iter().flatten() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(val.as_str().unwrap_or(""))
                .with_context(|| format!("secret {name} key {k} is not base64"))?;
            data.insert(
                k.clone(),
                String::from_utf8(raw).context("secret value is not UTF-8")?,
            );
        }
        for (k, val) in v
            .get("stringData")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            data.insert(k.clone(), val.as_str().unwrap_or("").to_string());
        }
        out.insert(name.to_string(), data);
    }
    Ok(out)
}

fn parse_pairs(items: &[String], flag: &str) -> Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|i| {
            i.split_once('=')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| anyhow!("{flag} takes KEY=VALUE, got {i}"))
        })
        .collect()
}

fn resolve(ctx: &Ctx, c: &Container, pod: &Value) -> Result<Spec> {
    let env = resolve_env(ctx, c, pod)?;
    let image = c.image.clone().unwrap_or_default();
    let mut command: Vec<String> = match &c.command {
        Some(cmd) if !cmd.is_empty() => cmd.clone(),
        _ => vec![ctx.images.get(&image).cloned().ok_or_else(|| {
            anyhow!(
                "container {}: image {image} has no known entrypoint (pass --image {image}=PATH)",
                c.name
            )
        })?],
    };
    command.extend(c.args.iter().flatten().cloned());
    let command = map_program(ctx, command.iter().map(|a| expand(a, &env)).collect());

    let mut binds = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let vol = ctx
            .volumes
            .get(&m.name)
            .ok_or_else(|| anyhow!("container {}: no volume {}", c.name, m.name))?;
        let mut src = vol.path.clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            src = src.join(sub);
            fs::create_dir_all(&src)?;
        }
        let prop = match m.mount_propagation.as_deref() {
            Some("Bidirectional") => "shared",
            Some("HostToContainer") => "slave",
            None | Some("None") => "private",
            Some(other) => bail!("container {}: unknown mountPropagation {other}", c.name),
        };
        binds.push(format!("{}:{}:{prop}", src.display(), m.mount_path));
    }
    let sc = c.security_context.as_ref();
    let pod_sc = pod.pointer("/spec/securityContext");
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_sc.and_then(|p| p.get("runAsUser")).and_then(Value::as_i64))
        .map(|u| u as u32);
    let gid = sc
        .and_then(|s| s.run_as_group)
        .or_else(|| pod_sc.and_then(|p| p.get("runAsGroup")).and_then(Value::as_i64))
        .map(|g| g as u32);
    let startup_probe = c
        .startup_probe
        .as_ref()
        .map(|p| probe_spec(ctx, &c.name, p, &env))
        .transpose()?;
    if c.readiness_probe.is_some() || c.liveness_probe.is_some() {
        eprintln!(
            "[podrun] container {}: readiness/liveness probes are not modelled, ignored",
            c.name
        );
    }
    let post_start = c
        .lifecycle
        .as_ref()
        .and_then(|l| l.post_start.as_ref())
        .map(|h| {
            h.exec
                .as_ref()
                .and_then(|e| e.command.clone())
                .map(|cmd| map_program(ctx, cmd.iter().map(|a| expand(a, &env)).collect()))
                .ok_or_else(|| anyhow!("container {}: only exec postStart hooks are supported", c.name))
        })
        .transpose()?;
    Ok(Spec {
        name: c.name.clone(),
        command,
        env,
        binds,
        uid,
        gid,
        workdir: c.working_dir.clone(),
        startup_probe,
        post_start,
        restartable: c.restart_policy.as_deref() == Some("Always"),
    })
}

fn probe_spec(ctx: &Ctx, name: &str, p: &Probe, env: &[(String, String)]) -> Result<ProbeSpec> {
    let cmd = p
        .exec
        .as_ref()
        .and_then(|e| e.command.clone())
        .ok_or_else(|| anyhow!("container {name}: only exec probes are supported"))?;
    Ok(ProbeSpec {
        command: map_program(ctx, cmd.iter().map(|a| expand(a, env)).collect()),
        initial_delay: Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64),
        period: Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64),
        timeout: Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64),
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
    })
}

fn map_program(ctx: &Ctx, mut cmd: Vec<String>) -> Vec<String> {
    if let Some(first) = cmd.first_mut()
        && let Some(host) = ctx.path_maps.get(first.as_str())
    {
        *first = host.clone();
    }
    cmd
}

/// Kubernetes' `$(VAR)` expansion; `$$` escapes a dollar; unknown references stay as written.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(body) = tail.strip_prefix("$(")
            && let Some(end) = body.find(')')
        {
            let var = &body[..end];
            match env.iter().rev().find(|(k, _)| k == var) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&tail[..end + 3]),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn resolve_env(ctx: &Ctx, c: &Container, pod: &Value) -> Result<Vec<(String, String)>> {
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOSTNAME".into(), ctx.name.clone()),
        ("HOME".into(), "/root".into()),
    ];
    for ef in c.env_from.iter().flatten() {
        if let Some(sr) = &ef.secret_ref {
            let data = ctx.secrets.get(&sr.name);
            match data {
                Some(d) => {
                    let p = ef.prefix.clone().unwrap_or_default();
                    env.extend(d.iter().map(|(k, v)| (format!("{p}{k}"), v.clone())));
                }
                None if sr.optional == Some(true) => {}
                None => bail!("container {}: secret {} not found", c.name, sr.name),
            }
        }
    }
    for e in c.env.iter().flatten() {
        if let Some(v) = env_value(ctx, c, e, pod, &env)? {
            env.push((e.name.clone(), v));
        }
    }
    Ok(env)
}

fn env_value(
    ctx: &Ctx,
    c: &Container,
    e: &EnvVar,
    pod: &Value,
    so_far: &[(String, String)],
) -> Result<Option<String>> {
    if let Some(v) = &e.value {
        return Ok(Some(expand(v, so_far)));
    }
    let Some(from) = &e.value_from else {
        return Ok(Some(String::new()));
    };
    if let Some(sk) = &from.secret_key_ref {
        let v = ctx.secrets.get(&sk.name).and_then(|d| d.get(&sk.key)).cloned();
        return match v {
            Some(v) => Ok(Some(v)),
            None if sk.optional == Some(true) => Ok(None),
            None => bail!(
                "container {}: env {}: secret {} has no key {}",
                c.name,
                e.name,
                sk.name,
                sk.key
            ),
        };
    }
    if let Some(fr) = &from.field_ref {
        let v = match fr.field_path.as_str() {
            "metadata.name" => ctx.name.clone(),
            "metadata.namespace" => ctx.namespace.clone(),
            "metadata.uid" => ctx.uid.clone(),
            "spec.nodeName" => "podrun-node".into(),
            "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
            "spec.serviceAccountName" => pod
                .pointer("/spec/serviceAccountName")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .into(),
            other => bail!(
                "container {}: env {}: fieldRef {other} is not modelled",
                c.name,
                e.name
            ),
        };
        return Ok(Some(v));
    }
    bail!(
        "container {}: env {}: this valueFrom is not modelled",
        c.name,
        e.name
    )
}

fn spawn(node: &Node, s: &Spec) -> Result<Child> {
    let mut cmd = Command::new(&node.exe);
    cmd.arg("container-init");
    for b in &s.binds {
        cmd.arg(format!("--bind={b}"));
    }
    if let Some(u) = s.uid {
        cmd.arg(format!("--uid={u}"));
    }
    if let Some(g) = s.gid {
        cmd.arg(format!("--gid={g}"));
    }
    if let Some(w) = &s.workdir {
        cmd.arg(format!("--workdir={w}"));
    }
    cmd.arg("--").args(&s.command);
    cmd.env_clear().envs(s.env.iter().map(|(k, v)| (k, v)));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting container {}", s.name))?;
    let dir = node.pod_dir.join("containers").join(&s.name);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("pid"), child.id().to_string())?;
    let log_path = node.pod_dir.join("logs").join(format!("{}.log", s.name));
    fs::create_dir_all(log_path.parent().unwrap_or(Path::new("/")))?;
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let name = s.name.clone();
        let path = log_path.clone();
        thread::spawn(move || {
            let mut file = fs::OpenOptions::new().create(true).append(true).open(&path).ok();
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                println!("[{name}] {line}");
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
            }
        });
    }
    Ok(child)
}

/// Runs a container, restarting it while the pod runs when `restart` is set.
fn supervise(node: Arc<Node>, s: Spec, restart: bool) -> thread::JoinHandle<()> {
    node.live
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(s.name.clone(), Live::default());
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let handle = thread::spawn(move || {
        let mut started_tx = Some(started_tx);
        loop {
            let child = match spawn(&node, &s) {
                Ok(c) => c,
                Err(e) => {
                    node.say(&format!("{e:#}"));
                    record_exit(&node, &s.name, 127);
                    drop(started_tx.take());
                    return;
                }
            };
            {
                let mut live = node.live.lock().unwrap_or_else(|e| e.into_inner());
                let l = live.entry(s.name.clone()).or_default();
                l.pid = Some(child.id() as i32);
                l.running = true;
            }
            drop(started_tx.take());
            let code = wait_child(child);
            node.say(&format!("container {} exited with {code}", s.name));
            record_exit(&node, &s.name, code);
            if !restart || node.stopping.load(Ordering::SeqCst) {
                return;
            }
            thread::sleep(Duration::from_millis(500));
            if node.stopping.load(Ordering::SeqCst) {
                return;
            }
            node.live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(s.name.clone())
                .or_default()
                .restarts += 1;
            node.say(&format!("restarting container {} (restartPolicy Always)", s.name));
        }
    });
    let _ = started_rx.recv();
    handle
}

fn wait_child(mut child: Child) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match child.wait() {
        Ok(st) => st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)),
        Err(_) => 255,
    }
}

fn record_exit(node: &Node, name: &str, code: i32) {
    let mut live = node.live.lock().unwrap_or_else(|e| e.into_inner());
    let l = live.entry(name.to_string()).or_default();
    l.pid = None;
    l.running = false;
    l.last_exit = Some(code);
    let _ = fs::remove_file(node.pod_dir.join("containers").join(name).join("pid"));
}

fn run_to_completion(node: &Arc<Node>, s: &Spec) -> Result<i32> {
    let h = supervise(node.clone(), s.clone(), false);
    let _ = h.join();
    Ok(node
        .live
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&s.name)
        .and_then(|l| l.last_exit)
        .unwrap_or(255))
}

fn wait_for_pid(node: &Node, name: &str) -> Option<i32> {
    for _ in 0..100 {
        if let Some(pid) = node
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .and_then(|l| l.pid)
        {
            return Some(pid);
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

fn run_probe(node: &Node, name: &str, p: &ProbeSpec) -> Result<bool> {
    thread::sleep(p.initial_delay);
    let mut failures = 0;
    loop {
        if node.stopping.load(Ordering::SeqCst) {
            return Ok(false);
        }
        if exec_in(node, name, &p.command, Some(p.timeout))? {
            return Ok(true);
        }
        failures += 1;
        if failures >= p.failure_threshold {
            return Ok(false);
        }
        thread::sleep(p.period);
    }
}

/// Runs a command inside a container's mount namespace; true when it exits 0 in time.
fn exec_in(node: &Node, name: &str, command: &[String], timeout: Option<Duration>) -> Result<bool> {
    let Some(pid) = wait_for_pid(node, name) else {
        return Ok(false);
    };
    let mut child = Command::new(&node.exe)
        .arg("ns-exec")
        .arg(format!("--pid={pid}"))
        .arg("--")
        .args(command)
        .stdin(Stdio::null())
        .spawn()
        .context("starting ns-exec")?;
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st.success());
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(false);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn signal_container(node: &Node, name: &str, sig: Signal) {
    let pid = node
        .live
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
        .and_then(|l| l.pid);
    if let Some(pid) = pid {
        node.say(&format!("{sig} -> {name}"));
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

fn wait_exited(node: &Node, names: &[String], deadline: Instant) {
    while Instant::now() < deadline {
        let any = {
            let live = node.live.lock().unwrap_or_else(|e| e.into_inner());
            names.iter().any(|n| live.get(n).is_some_and(|l| l.pid.is_some()))
        };
        if !any {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Mount points at or below `dir` (excluding `dir` itself), from this process's mountinfo.
pub fn mounts_under(dir: &Path) -> Result<Vec<String>> {
    let prefix = format!("{}/", dir.display());
    Ok(s3mount_sidecar::mountsys::own_mounts()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(&prefix))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_follows_kubernetes_rules() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
    }

    #[test]
    fn mountinfo_octal_escapes_are_decoded() {
        assert_eq!(s3mount_sidecar::mountsys::unescape_mountinfo("/a\\040b"), "/a b");
    }
}
