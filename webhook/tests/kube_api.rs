//! The Kubernetes-API paths over the wire: a stand-in API server on 127.0.0.1 speaks exactly what
//! the webhook uses (`GET /version`, the Namespace list and its streamed watch of JSON lines), a
//! real `kube::Client` talks to it, and the checks go through the webhook's own code: the
//! [`NamespaceStore`] reflector, `/readyz`, and `POST /mutate` through the admission router.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::watch;
use tower::ServiceExt;

use common::{context, fixture};
use s3mount_webhook::inject::Lifecycle;
use s3mount_webhook::metrics::Metrics;
use s3mount_webhook::namespaces::{self, NamespaceStore};
use s3mount_webhook::policy::{ALLOWED_BUCKETS, FORCE_READ_ONLY, MAX_CACHE_SIZE, POD_SECURITY_ENFORCE};
use s3mount_webhook::server::{self, AppState};

const OPT_IN: (&str, &str) = ("s3.mount/inject", "enabled");
/// Upper bound for anything the tests wait for; the polls return as soon as it happened.
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The stand-in API server.

/// What the stand-in holds: the Namespaces, their change history (what a watch from a
/// resourceVersion replays), the `/version` answer, and what was asked of it.
#[derive(Debug, Default)]
struct World {
    rv: u64,
    namespaces: BTreeMap<String, Value>,
    /// Watch events in order, with the resourceVersion each one carries.
    events: Vec<(u64, Value)>,
    version: (String, String),
    lists: usize,
    /// The `resourceVersion` of every watch request.
    watches: Vec<String>,
}

#[derive(Debug)]
struct Fake {
    world: Mutex<World>,
    /// Bumped on every new event; open watches wait on it.
    changed: watch::Sender<u64>,
    /// Lists wait until this is true (so that "not synced yet" can be observed).
    list_open: watch::Sender<bool>,
    /// Bumped on every request of the list, before it waits for `list_open`.
    list_seen: watch::Sender<usize>,
}

impl Fake {
    fn new(major: &str, minor: &str) -> Arc<Self> {
        let world = World {
            version: (major.to_owned(), minor.to_owned()),
            ..World::default()
        };
        Arc::new(Fake {
            world: Mutex::new(world),
            changed: watch::channel(0).0,
            list_open: watch::channel(true).0,
            list_seen: watch::channel(0).0,
        })
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }

    /// Creates or replaces a Namespace, as an ADDED or MODIFIED watch event.
    fn put(&self, name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) {
        let pairs = |p: &[(&str, &str)]| -> serde_json::Map<String, Value> {
            p.iter()
                .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
                .collect()
        };
        let mut w = self.world();
        w.rv += 1;
        let rv = w.rv;
        let object = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "uid": format!("00000000-0000-0000-0000-{rv:012}"),
                "resourceVersion": rv.to_string(),
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": pairs(labels),
                "annotations": pairs(annotations),
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        let kind = if w.namespaces.contains_key(name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        w.namespaces.insert(name.to_owned(), object.clone());
        w.events.push((rv, json!({"type": kind, "object": object})));
        drop(w);
        self.changed.send_replace(rv);
    }

    fn delete(&self, name: &str) {
        let mut w = self.world();
        let Some(mut object) = w.namespaces.remove(name) else {
            return;
        };
        w.rv += 1;
        let rv = w.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        object["status"]["phase"] = json!("Terminating");
        w.events.push((rv, json!({"type": "DELETED", "object": object})));
        drop(w);
        self.changed.send_replace(rv);
    }

    /// A BOOKMARK at the current resourceVersion (what the API server sends to idle watches).
    fn bookmark(&self) {
        let mut w = self.world();
        w.rv += 1;
        let rv = w.rv;
        w.events.push((
            rv,
            json!({"type": "BOOKMARK", "object": {
                "kind": "Namespace",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": rv.to_string()},
            }}),
        ));
        drop(w);
        self.changed.send_replace(rv);
    }

    fn watch_requests(&self) -> usize {
        self.world().watches.len()
    }
}

fn router(fake: Arc<Fake>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/api/v1/namespaces", get(namespaces_list_or_watch))
        .fallback(|| async {
            status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            )
        })
        .with_state(fake)
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    (code, [("content-type", "application/json")], body.to_string()).into_response()
}

async fn version(State(fake): State<Arc<Fake>>) -> Response {
    let (major, minor) = fake.world().version.clone();
    let body = json!({
        "major": major,
        "minor": minor,
        "gitVersion": format!("v{major}.{}.3", minor.trim_end_matches('+')),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.22.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    });
    ([("content-type", "application/json")], body.to_string()).into_response()
}

async fn namespaces_list_or_watch(
    State(fake): State<Arc<Fake>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
        return watch_namespaces(fake, q.get("resourceVersion").cloned().unwrap_or_default());
    }
    fake.list_seen.send_modify(|n| *n += 1);
    let mut open = fake.list_open.subscribe();
    if open.wait_for(|o| *o).await.is_err() {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "shutting down",
        );
    }
    let mut w = fake.world();
    w.lists += 1;
    let items: Vec<Value> = w
        .namespaces
        .values()
        .map(|o| {
            // List items come without kind and apiVersion, like the real API server's.
            let mut o = o.clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            o
        })
        .collect();
    let body = json!({
        "kind": "NamespaceList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": w.rv.to_string()},
        "items": items,
    });
    ([("content-type", "application/json")], body.to_string()).into_response()
}

/// A watch from `from` (a resourceVersion): every later event, then new ones as they happen, one
/// JSON object per line, until the connection goes away.
fn watch_namespaces(fake: Arc<Fake>, from: String) -> Response {
    let start: u64 = from.parse().unwrap_or(0);
    let next = {
        let mut w = fake.world();
        w.watches.push(from);
        w.events.partition_point(|(rv, _)| *rv <= start)
    };
    let changed = fake.changed.subscribe();
    let lines = futures::stream::unfold((fake, next, changed), |(fake, next, mut changed)| async move {
        loop {
            let event = fake.world().events.get(next).map(|(_, e)| e.to_string());
            if let Some(e) = event {
                let line = Bytes::from(format!("{e}\n"));
                return Some((Ok::<_, Infallible>(line), (fake, next + 1, changed)));
            }
            changed.changed().await.ok()?;
        }
    });
    ([("content-type", "application/json")], Body::from_stream(lines)).into_response()
}

/// The stand-in on a loopback port. [`Server::stop`] drops every open connection and then closes
/// each new one as soon as it is accepted (the API server going away); [`Server::start`] serves
/// again. The listener stays bound throughout, so the port cannot be taken by another test in the
/// meantime.
struct Server {
    fake: Arc<Fake>,
    listener: Arc<tokio::net::TcpListener>,
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    async fn spawn(fake: Arc<Fake>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut s = Server {
            fake,
            listener: Arc::new(listener),
            addr,
            task: None,
        };
        s.serve();
        s
    }

    fn serve(&mut self) {
        let app = router(self.fake.clone());
        let listener = self.listener.clone();
        self.task = Some(tokio::spawn(async move {
            // Connections live in this set: aborting the accept task drops them all.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                connections.spawn(async move {
                    let _ =
                        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                });
                while connections.try_join_next().is_some() {}
            }
        }));
    }

    async fn halt(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Drops every open connection; from now on each new one is closed right after it is accepted.
    async fn stop(&mut self) {
        self.halt().await;
        let listener = self.listener.clone();
        self.task = Some(tokio::spawn(async move {
            loop {
                // Dropping the accepted stream closes it before any byte is answered.
                let _ = listener.accept().await;
            }
        }));
    }

    async fn start(&mut self) {
        self.halt().await;
        self.serve();
    }

    fn client(&self) -> kube::Client {
        let url = format!("http://{}", self.addr).parse().unwrap();
        kube::Client::try_from(kube::Config::new(url)).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Logs, the webhook's state, and requests through its router.

/// Everything logged in this test binary (one global subscriber: the reflector's tasks run
/// wherever the runtime puts them).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn logs() -> &'static Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("s3mount_webhook=info,warn")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        logs
    })
}

fn state(store: NamespaceStore) -> Arc<AppState> {
    let state = AppState::new(context(Lifecycle::Native), Arc::new(Metrics::new()), Some(store));
    state.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    Arc::new(state)
}

async fn readyz(state: &Arc<AppState>) -> (StatusCode, String) {
    let req = Request::get("/readyz").body(Body::empty()).unwrap();
    let resp = server::health_router(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// What `POST /mutate` answered: allowed, the status message, and whether a patch came back.
#[derive(Debug)]
struct Answer {
    allowed: bool,
    message: String,
    patched: bool,
}

/// Sends `pod` (deployment-generatename.json with `edit` applied) for namespace `ns`.
async fn admit(state: &Arc<AppState>, ns: &str, edit: impl FnOnce(&mut Value)) -> Answer {
    let mut body = fixture("deployment-generatename.json");
    body["request"]["namespace"] = json!(ns);
    edit(&mut body["request"]["object"]);
    let req = Request::post("/mutate")
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap();
    let resp = server::router(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let out: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let r = &out["response"];
    assert_eq!(r["uid"], body["request"]["uid"]);
    let allowed = r["allowed"].as_bool().unwrap();
    if !allowed {
        assert_eq!(r["status"]["code"], 403, "{out}");
        assert_eq!(r["status"]["reason"], "Forbidden", "{out}");
    }
    Answer {
        allowed,
        message: r["status"]["message"].as_str().unwrap_or_default().to_owned(),
        patched: r["patch"].is_string(),
    }
}

fn unchanged(_: &mut Value) {}

/// Polls `cond` until it holds; panics naming `what` after [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn patched(state: &Arc<AppState>, ns: &str) -> bool {
    admit(state, ns, unchanged).await.patched
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test]
async fn version_endpoint_decides_native_sidecars() {
    for (major, minor, native) in [
        ("1", "29", true),
        ("1", "29+", true),
        ("1", "31", true),
        ("1", "28", false),
    ] {
        let server = Server::spawn(Fake::new(major, minor)).await;
        let got = namespaces::supports_native_sidecars(&server.client())
            .await
            .unwrap();
        assert_eq!(got, native, "{major}.{minor}");
    }
    let server = Server::spawn(Fake::new("1", "next")).await;
    let err = namespaces::supports_native_sidecars(&server.client())
        .await
        .unwrap_err();
    assert!(matches!(err, namespaces::KubeError::BadVersion { .. }), "{err}");
    let mut server = Server::spawn(Fake::new("1", "29")).await;
    server.stop().await;
    let err = namespaces::supports_native_sidecars(&server.client())
        .await
        .unwrap_err();
    assert!(matches!(err, namespaces::KubeError::Version(_)), "{err}");
}

/// `--sidecar-mode=auto`: the version decides; an unreadable or unreachable version falls back
/// to the configured mode with a warning that says the namespace checks stay on.
#[tokio::test]
async fn auto_mode_follows_the_version_and_falls_back_when_it_cannot_be_read() {
    let logs = logs();
    let quick = Duration::from_secs(5);
    for (minor, fallback, want) in [
        ("30", Lifecycle::Legacy, Lifecycle::Native),
        ("28", Lifecycle::Native, Lifecycle::Legacy),
        ("next", Lifecycle::Legacy, Lifecycle::Legacy),
        ("next", Lifecycle::Native, Lifecycle::Native),
    ] {
        let server = Server::spawn(Fake::new("1", minor)).await;
        let got = namespaces::auto_lifecycle(&server.client(), fallback, quick).await;
        assert_eq!(got, want, "1.{minor} with fallback {fallback:?}");
    }
    assert!(
        logs.text()
            .contains("API server version 1.next is not understood"),
        "{}",
        logs.text()
    );
    let mut server = Server::spawn(Fake::new("1", "30")).await;
    server.stop().await;
    let got = namespaces::auto_lifecycle(&server.client(), Lifecycle::Legacy, quick).await;
    assert_eq!(got, Lifecycle::Legacy, "unreachable API server");
    assert!(
        logs.text()
            .contains("namespace opt-in, Pod Security and namespace policy checks stay on"),
        "{}",
        logs.text()
    );
}

#[tokio::test]
async fn namespace_watch_drives_admission_and_survives_the_api_going_away() {
    let logs = logs();
    let fake = Fake::new("1", "30");
    fake.put("team", &[], &[]);
    fake.put("open", &[OPT_IN], &[]);
    fake.list_open.send_replace(false);
    let mut server = Server::spawn(fake.clone()).await;

    // Not ready before the first list has come back.
    let store = NamespaceStore::start(server.client());
    let state = state(store.clone());
    let mut seen = fake.list_seen.subscribe();
    tokio::time::timeout(WAIT, seen.wait_for(|n| *n > 0))
        .await
        .expect("the store lists namespaces")
        .unwrap();
    assert!(!store.is_ready());
    assert_eq!(
        readyz(&state).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "namespace watch not synced yet\n".to_owned()
        )
    );
    fake.list_open.send_replace(true);
    eventually("readiness after the first list", || async { store.is_ready() }).await;
    assert_eq!(readyz(&state).await, (StatusCode::OK, "ok\n".to_owned()));
    assert_eq!(fake.world().lists, 1);
    assert!(logs.text().contains("namespace watch synced"));

    // Opt-in label: refused without it, accepted once a MODIFIED event adds it.
    let a = admit(&state, "team", unchanged).await;
    assert!(!a.allowed && !a.patched, "{a:?}");
    assert!(
        a.message
            .contains("namespace \"team\" has not opted in: it needs the label s3.mount/inject=enabled"),
        "{a:?}"
    );
    let a = admit(&state, "open", unchanged).await;
    assert!(a.allowed && a.patched, "{a:?}");
    eventually("the watch to be open", || async { fake.watch_requests() > 0 }).await;
    fake.put("team", &[OPT_IN], &[]);
    eventually("the MODIFIED label to be seen", || patched(&state, "team")).await;

    // A namespace the watch has not seen, then one ADDED later, then DELETED.
    let a = admit(&state, "later", unchanged).await;
    assert!(
        !a.allowed
            && a.message
                .contains("namespace \"later\" is not known to the webhook yet"),
        "{a:?}"
    );
    fake.put("later", &[OPT_IN], &[]);
    eventually("the ADDED namespace", || patched(&state, "later")).await;
    fake.delete("later");
    eventually("the DELETED namespace", || async {
        !patched(&state, "later").await
    })
    .await;
    assert!(
        admit(&state, "later", unchanged)
            .await
            .message
            .contains("not known")
    );

    // Pod Security levels that never admit the privileged sidecar are denied, naming the level.
    for level in ["baseline", "restricted"] {
        let name = format!("psa-{level}");
        fake.put(&name, &[OPT_IN, (POD_SECURITY_ENFORCE, level)], &[]);
        let expected = format!(
            "namespace \"{name}\" enforces Pod Security \"{level}\" (pod-security.kubernetes.io/enforce)"
        );
        eventually(&name, || async {
            admit(&state, &name, unchanged).await.message.contains(&expected)
        })
        .await;
        assert!(!admit(&state, &name, unchanged).await.allowed);
    }
    fake.put(
        "psa-privileged",
        &[OPT_IN, (POD_SECURITY_ENFORCE, "privileged")],
        &[],
    );
    eventually("privileged Pod Security", || patched(&state, "psa-privileged")).await;

    // Policy annotations. The fixture mounts bucket "ml-models" read-only with a 2GiB cache.
    fake.put("buckets", &[OPT_IN], &[(ALLOWED_BUCKETS, "team-*, shared")]);
    let denied = "bucket \"ml-models\" (s3.mount/bucket) is not allowed in namespace \"buckets\" (rule \
                  s3.mount/allowed-buckets: team-*,shared)";
    eventually("allowed-buckets", || async {
        admit(&state, "buckets", unchanged).await.message.contains(denied)
    })
    .await;
    fake.put("buckets", &[OPT_IN], &[(ALLOWED_BUCKETS, "team-*,ml-*")]);
    eventually("a matching glob", || patched(&state, "buckets")).await;

    fake.put("readonly", &[OPT_IN], &[(FORCE_READ_ONLY, "true")]);
    eventually("force-read-only", || patched(&state, "readonly")).await;
    let writable = |pod: &mut Value| {
        pod["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove("s3.mount/read-only");
    };
    let a = admit(&state, "readonly", writable).await;
    assert!(!a.allowed, "{a:?}");
    assert!(
        a.message.contains(
            "namespace \"readonly\" requires read-only mounts (rule s3.mount/force-read-only); set \
             s3.mount/read-only: \"true\""
        ),
        "{a:?}"
    );

    fake.put("cache", &[OPT_IN], &[(MAX_CACHE_SIZE, "1GiB")]);
    let above = "above the namespace's maximum";
    eventually("max-cache-size", || async {
        admit(&state, "cache", unchanged).await.message.contains(above)
    })
    .await;
    let a = admit(&state, "cache", unchanged).await;
    assert!(
        !a.allowed && a.message.contains("(rule s3.mount/max-cache-size)"),
        "{a:?}"
    );
    let small = |pod: &mut Value| pod["metadata"]["annotations"]["s3.mount/cache-size"] = json!("512MiB");
    eventually("a cache within the maximum", || async {
        admit(&state, "cache", small).await.patched
    })
    .await;
    fake.put("cache", &[OPT_IN], &[(MAX_CACHE_SIZE, "4GiB")]);
    eventually("a raised maximum", || patched(&state, "cache")).await;

    fake.put("broken", &[OPT_IN], &[(FORCE_READ_ONLY, "yes")]);
    let bad = "namespace annotation s3.mount/force-read-only: \"yes\" is not valid";
    eventually("a malformed policy annotation", || async {
        admit(&state, "broken", unchanged).await.message.contains(bad)
    })
    .await;

    // A BOOKMARK moves the watch on without changing the view.
    fake.bookmark();
    fake.put("marked", &[OPT_IN], &[]);
    eventually("an event after a bookmark", || patched(&state, "marked")).await;

    // The API goes away mid-watch: the store keeps its view, the watch logs and retries.
    let watches_before = fake.watch_requests();
    server.stop().await;
    eventually("a warning about the broken watch", || async {
        logs.text().contains("namespace watch error; retrying")
    })
    .await;
    assert!(store.is_ready());
    assert!(patched(&state, "team").await, "the last view still serves");
    assert!(!admit(&state, "psa-baseline", unchanged).await.allowed);
    fake.put("back", &[OPT_IN], &[]);
    fake.put("team", &[], &[]);
    server.start().await;
    eventually("the watch to resume", || patched(&state, "back")).await;
    assert!(fake.watch_requests() > watches_before);
    assert!(
        !admit(&state, "team", unchanged).await.allowed,
        "the change made while away arrived"
    );
    assert!(patched(&state, "open").await);
    assert_eq!(readyz(&state).await.0, StatusCode::OK);
}
