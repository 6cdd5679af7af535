//! The health server: `/livez`, `/readyz` and `/metrics` over plain HTTP.
//!
//! `/livez` answers 200 while the process serves HTTP. `/readyz` answers 200 only once the bucket
//! is mounted (and 503 again when shutdown begins). `/metrics` is Prometheus text: FUSE requests
//! and their failures by operation, and readiness.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// What the health server reports, shared with the rest of the sidecar.
#[derive(Debug)]
pub struct Health {
    ready: AtomicBool,
    registry: Registry,
    ready_gauge: Gauge,
    requests: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
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
        Health {
            ready: AtomicBool::new(false),
            registry,
            ready_gauge,
            requests,
            errors,
        }
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
