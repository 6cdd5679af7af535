//! The health server: `/livez`, `/readyz` and `/metrics` over plain HTTP.
//!
//! `/livez` answers 200 while the process serves HTTP. `/readyz` answers 200 only once the bucket
//! is mounted (and 503 again when shutdown begins). `/metrics` is Prometheus text: readiness,
//! FUSE requests and their failures by operation, and per mount (labels `bucket` and
//! `mountpoint`) the S3 requests by operation and status, bytes received from and sent to S3,
//! the block cache's hits, misses, hit ratio, bytes served and size, and the bytes of uploads in
//! flight and of staged data not yet uploaded. The per-mount figures are read from the live
//! store, cache and filesystem at every scrape (a [`Collector`]), so nothing is copied on the
//! data path.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::fs::Fs;
use crate::s3::S3Store;

type Labels = Vec<(String, String)>;

/// What the health server reports, shared with the rest of the sidecar.
#[derive(Debug)]
pub struct Health {
    ready: AtomicBool,
    registry: Registry,
    ready_gauge: Gauge,
    requests: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    mounts: Arc<Mounts>,
}

/// Figures of one mount at one instant, as [`MountMetrics::snapshot`] returns them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MountSnapshot {
    /// S3 requests sent (retries included) by operation name and HTTP status (0: no answer).
    pub s3_requests: Vec<(&'static str, u16, u64)>,
    /// Body bytes received from S3.
    pub s3_bytes_received: u64,
    /// Body bytes sent to S3.
    pub s3_bytes_sent: u64,
    /// The block cache's counters, when the mount has a cache.
    pub cache: Option<crate::cache::CacheStats>,
    /// Body bytes of uploads being sent.
    pub upload_bytes_in_flight: u64,
    /// Bytes staged and not yet uploaded.
    pub dirty_bytes: u64,
}

/// A mount whose figures `/metrics` reports.
pub trait MountMetrics: Send + Sync + 'static {
    /// The figures now.
    fn snapshot(&self) -> MountSnapshot;
}

impl MountMetrics for Fs<S3Store> {
    fn snapshot(&self) -> MountSnapshot {
        let store = self.store();
        let (down, up) = store.bytes_transferred();
        MountSnapshot {
            s3_requests: store
                .request_status_counts()
                .into_iter()
                .map(|((op, status), n)| (op, status, n))
                .collect(),
            s3_bytes_received: down,
            s3_bytes_sent: up,
            cache: self.cache().map(|c| c.stats()),
            upload_bytes_in_flight: self.upload_bytes_in_flight(),
            dirty_bytes: self.dirty_bytes(),
        }
    }
}

/// The mounts `/metrics` reports, read at every scrape.
#[derive(Default)]
struct Mounts(Mutex<Vec<(Labels, Arc<dyn MountMetrics>)>>);

impl std::fmt::Debug for Mounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |m| m.len());
        f.debug_struct("Mounts").field("mounts", &n).finish()
    }
}

fn label(k: &str, v: impl ToString) -> (String, String) {
    (k.to_string(), v.to_string())
}

/// Encodes one family under `name`.
fn emit<M: EncodeMetric + prometheus_client::metrics::TypedMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    family: &Family<Labels, M>,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, family.metric_type())?;
    family.encode(metric)
}

impl Collector for Mounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mounts: Vec<(Labels, Arc<dyn MountMetrics>)> =
            self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let counters = || Family::<Labels, Counter>::default();
        let gauges = || Family::<Labels, Gauge>::default();
        let (s3_requests, s3_down, s3_up) = (counters(), counters(), counters());
        let (hits, misses, hit_bytes, corrupt, evictions) =
            (counters(), counters(), counters(), counters(), counters());
        let ratio = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let (cache_size, inflight, dirty) = (gauges(), gauges(), gauges());
        for (labels, mount) in &mounts {
            let snap = mount.snapshot();
            for (op, status, n) in &snap.s3_requests {
                let mut l = labels.clone();
                l.push(label("op", op));
                l.push(label("status", status));
                s3_requests.get_or_create(&l).inc_by(*n);
            }
            s3_down.get_or_create(labels).inc_by(snap.s3_bytes_received);
            s3_up.get_or_create(labels).inc_by(snap.s3_bytes_sent);
            if let Some(c) = snap.cache {
                hits.get_or_create(labels).inc_by(c.hits);
                misses.get_or_create(labels).inc_by(c.misses);
                hit_bytes.get_or_create(labels).inc_by(c.bytes_hit);
                corrupt.get_or_create(labels).inc_by(c.corrupt);
                evictions.get_or_create(labels).inc_by(c.evictions);
                let lookups = c.hits + c.misses;
                let r = if lookups == 0 {
                    0.0
                } else {
                    c.hits as f64 / lookups as f64
                };
                ratio.get_or_create(labels).set(r);
                cache_size
                    .get_or_create(labels)
                    .set(i64::try_from(c.size_bytes).unwrap_or(i64::MAX));
            }
            inflight
                .get_or_create(labels)
                .set(i64::try_from(snap.upload_bytes_in_flight).unwrap_or(i64::MAX));
            dirty
                .get_or_create(labels)
                .set(i64::try_from(snap.dirty_bytes).unwrap_or(i64::MAX));
        }
        let e = &mut encoder;
        emit(
            e,
            "s3_requests",
            "S3 requests sent (retries included) by operation and HTTP status (0: no answer)",
            &s3_requests,
        )?;
        emit(e, "s3_received_bytes", "Body bytes received from S3", &s3_down)?;
        emit(e, "s3_sent_bytes", "Body bytes sent to S3", &s3_up)?;
        emit(
            e,
            "cache_hits",
            "Block cache lookups that found the bytes asked",
            &hits,
        )?;
        emit(
            e,
            "cache_misses",
            "Block cache lookups that did not find the bytes asked",
            &misses,
        )?;
        emit(
            e,
            "cache_hit_ratio",
            "Block cache hits / lookups since start",
            &ratio,
        )?;
        emit(
            e,
            "cache_served_bytes",
            "Bytes served from the block cache",
            &hit_bytes,
        )?;
        emit(
            e,
            "cache_corrupt_blocks",
            "Cache block files discarded because they failed their checks",
            &corrupt,
        )?;
        emit(
            e,
            "cache_evicted_blocks",
            "Cache block files evicted to stay within --cache-size",
            &evictions,
        )?;
        emit(
            e,
            "cache_size_bytes",
            "Bytes of block files in the cache",
            &cache_size,
        )?;
        emit(
            e,
            "upload_inflight_bytes",
            "Body bytes of uploads being sent",
            &inflight,
        )?;
        emit(
            e,
            "dirty_bytes",
            "Bytes written and staged but not yet uploaded",
            &dirty,
        )?;
        Ok(())
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Not ready, no requests counted.
    pub fn new() -> Health {
        let mut registry = Registry::with_prefix("s3mount");
        let ready_gauge = Gauge::default();
        let requests = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        registry.register("ready", "1 once the bucket is mounted", ready_gauge.clone());
        registry.register("fuse_requests", "FUSE requests by operation", requests.clone());
        registry.register(
            "fuse_errors",
            "FUSE requests answered with an error, by operation and errno",
            errors.clone(),
        );
        let mounts = Arc::new(Mounts::default());
        registry.register_collector(Box::new(mounts.clone()));
        Health {
            ready: AtomicBool::new(false),
            registry,
            ready_gauge,
            requests,
            errors,
            mounts,
        }
    }

    /// Reports the figures of `mount`, labelled with its bucket and mountpoint, from now on.
    pub fn add_mount(&self, bucket: &str, mountpoint: &std::path::Path, mount: Arc<dyn MountMetrics>) {
        let labels = vec![label("bucket", bucket), label("mountpoint", mountpoint.display())];
        self.mounts
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((labels, mount));
    }

    /// Sets readiness.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        self.ready_gauge.set(i64::from(ready));
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Counts one FUSE request, and its errno when it failed.
    pub fn record(&self, op: &'static str, errno: Option<i32>) {
        self.requests
            .get_or_create(&vec![("op".to_string(), op.to_string())])
            .inc();
        if let Some(errno) = errno {
            let labels = vec![
                ("op".to_string(), op.to_string()),
                ("errno".to_string(), errno.to_string()),
            ];
            self.errors.get_or_create(&labels).inc();
        }
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The routes, for tests without a socket.
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not mounted\n")
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        health.encode(),
    )
}

/// Binds `addr` and serves the health routes in a background task; returns the bound address.
pub async fn serve(addr: SocketAddr, health: Arc<Health>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(health)).await {
            tracing::error!(error = %e, "health server stopped");
        }
    });
    Ok(bound)
}
