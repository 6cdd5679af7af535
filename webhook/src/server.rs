//! HTTP layer: the `/mutate` router (served over TLS by `main`) and the plain-HTTP health router.
//!
//! Both are plain `axum::Router`s, so tests drive them with `tower::ServiceExt::oneshot` and no
//! socket. The handler only times the request, calls [`Review::parse`] and [`Review::answer`]
//! (what [`crate::review::mutate`] answers, read in one pass), logs in the request's span and
//! records the outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::metrics::Metrics;
use crate::namespaces::NamespaceStore;
use crate::review::{Context, NamespaceView, Outcome, Review};

/// Largest accepted request body. The API server caps objects at 1.5 MiB; a review carries at most
/// the object and the old object.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Longest time a request may take to arrive and be answered (a slow body is cut off here); the
/// API server's own webhook timeout is at most 30 s, so nothing useful is lost.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest time a connection may take to send a request's headers, idle keep-alive included.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub ctx: Context,
    pub metrics: Arc<Metrics>,
    /// Readiness: set once the HTTPS listener is serving.
    pub ready: AtomicBool,
    /// Namespaces as the watch sees them; `None` when no Kubernetes API is used.
    pub namespaces: Option<NamespaceStore>,
}

impl AppState {
    pub fn new(ctx: Context, metrics: Arc<Metrics>, namespaces: Option<NamespaceStore>) -> Self {
        AppState {
            ctx,
            metrics,
            ready: AtomicBool::new(false),
            namespaces,
        }
    }
}

/// The admission router: `POST /mutate`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

/// The health router: `/livez`, `/readyz`, `/metrics`.
pub fn health_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let serving = state.ready.load(Ordering::Relaxed);
    let synced = state.namespaces.as_ref().is_none_or(NamespaceStore::is_ready);
    match (serving, synced) {
        (true, true) => (StatusCode::OK, "ok\n").into_response(),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "not serving yet\n").into_response(),
        (true, false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "namespace watch not synced yet\n",
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn mutate(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let (outcome, response) = answer(&state, &body);
    state.metrics.observe(outcome, started.elapsed());
    response
}

fn answer(state: &AppState, body: &[u8]) -> (Outcome, Response) {
    let result = Review::parse(body).and_then(|review| {
        let guard;
        let view = match &state.namespaces {
            None => NamespaceView::Unknown,
            Some(store) => {
                guard = store.get(review.namespace().unwrap_or_default());
                NamespaceView::Known(guard.as_ref())
            }
        };
        review.answer(&state.ctx, view)
    });
    // The request's span is opened once everything in it is known: filling in the fields of an
    // open span one by one costs a re-serialization of all of them per field with the JSON log
    // format. Nothing is logged before this point.
    match result {
        Ok(r) => {
            let span = tracing::info_span!(
                "admission",
                uid = r.info.uid.as_str(),
                namespace = r.info.namespace.as_str(),
                pod = r.info.pod.as_str(),
                operation = r.info.operation.as_str(),
                dry_run = r.info.dry_run,
                outcome = r.outcome.as_str(),
            );
            let _entered = span.enter();
            match r.outcome {
                Outcome::Denied => tracing::info!(reason = %r.reason, "admission denied"),
                _ => tracing::info!(reason = %r.reason, "admission answered"),
            }
            let json = [(header::CONTENT_TYPE, "application/json")];
            (r.outcome, (json, r.to_body()).into_response())
        }
        Err(e) => {
            let span = tracing::info_span!("admission", outcome = Outcome::Invalid.as_str());
            let _entered = span.enter();
            tracing::warn!(error = %e, "invalid admission request");
            (
                Outcome::Invalid,
                (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
            )
        }
    }
}
