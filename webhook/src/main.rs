//! `s3mount-webhook`: set up logging, read the configuration, reach the Kubernetes API if there is
//! one, bind HTTPS and health, serve until SIGTERM/SIGINT, drain.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use clap::Parser;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use s3mount_webhook::bootstrap;
use s3mount_webhook::config::{Config, FixedMode, KubeApi, LogFormat, SidecarMode};
use s3mount_webhook::inject::{InjectConfig, Lifecycle};
use s3mount_webhook::metrics::Metrics;
use s3mount_webhook::namespaces::{self, NamespaceStore};
use s3mount_webhook::review::Context;
use s3mount_webhook::server::{self, AppState};
use s3mount_webhook::tls;

// A request allocates and frees many small JSON values; glibc's malloc spent about a third of
// the admission path's time on them (perf, `examples/mutate_loop.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a bad configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit code when an address cannot be bound or served.
const EXIT_SERVE: u8 = 1;

fn main() -> ExitCode {
    // Bad flags exit 64 like every other configuration error (clap's own code would be 2).
    let config = match Config::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_CONFIG } else { 0 });
        }
    };
    // Held until `main` returns: dropping it writes out the log lines still queued.
    let _log_writer = match init_logging(&config) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("s3mount-webhook: --log-level {:?}: {e}", config.log_level);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(EXIT_SERVE);
        }
    };
    runtime.block_on(run(config))
}

/// Logs go to stderr through a writer thread, so that a request never waits for a `write(2)` of
/// its log line. The queue blocks rather than drops when it is full: no log line is lost.
fn init_logging(config: &Config) -> Result<WorkerGuard, tracing_subscriber::filter::ParseError> {
    let filter = EnvFilter::builder().parse(&config.log_level)?;
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("s3mount-webhook-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
    Ok(guard)
}

async fn run(config: Config) -> ExitCode {
    // kube and the server both use rustls; ring is the one provider of this process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(Metrics::new());
    if let Err(e) = bootstrap::ensure_serving_cert(&config).await {
        tracing::error!(error = %e, "--self-signed: cannot provide the serving certificate");
        return ExitCode::from(if e.is_config() { EXIT_CONFIG } else { EXIT_SERVE });
    }
    let (rustls, pem) = match tls::load(&config.tls_cert, &config.tls_key) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "cannot load the serving certificate");
            return ExitCode::from(EXIT_CONFIG);
        }
    };

    let (lifecycle, namespaces) = connect_kube(&config).await;
    let ctx = Context {
        inject: InjectConfig {
            sidecar_image: config.sidecar_image.clone(),
            lifecycle,
            image_pull_policy: config.sidecar_image_pull_policy.clone(),
        },
        opt_in_label: config.opt_in_label.clone(),
    };
    let state = Arc::new(AppState::new(ctx, metrics.clone(), namespaces));

    let health = match tokio::net::TcpListener::bind(config.health_listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %config.health_listen, error = %e, "cannot bind the health address");
            return ExitCode::from(EXIT_SERVE);
        }
    };
    let listener =
        match std::net::TcpListener::bind(config.listen).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(addr = %config.listen, error = %e, "cannot bind the HTTPS address");
                return ExitCode::from(EXIT_SERVE);
            }
        };
    let https_addr = listener.local_addr().unwrap_or(config.listen);
    let health_addr = health.local_addr().unwrap_or(config.health_listen);

    let handle = axum_server::Handle::new();
    tokio::spawn(tls::watch(
        rustls.clone(),
        config.tls_cert.clone(),
        config.tls_key.clone(),
        pem,
        config.tls_reload_interval,
        metrics.clone(),
    ));
    let health_task = tokio::spawn({
        let app = server::health_router(state.clone());
        async move { axum::serve(health, app).await }
    });
    let https = match axum_server::from_tcp_rustls(listener, rustls) {
        Ok(mut s) => {
            // Slow or idle clients are bounded: headers (also of the next request on a kept-alive
            // connection) must arrive within HEADER_READ_TIMEOUT; bodies within REQUEST_TIMEOUT.
            s.http_builder()
                .http1()
                .header_read_timeout(Some(server::HEADER_READ_TIMEOUT));
            s.handle(handle.clone())
        }
        Err(e) => {
            tracing::error!(addr = %config.listen, error = %e, "cannot serve the HTTPS address");
            return ExitCode::from(EXIT_SERVE);
        }
    };
    let app = server::router(state.clone());
    let serve = tokio::spawn(async move { https.serve(app.into_make_service()).await });
    if handle.listening().await.is_none() {
        tracing::error!("HTTPS server stopped before listening");
        return ExitCode::from(EXIT_SERVE);
    }
    state.ready.store(true, Ordering::Relaxed);
    tracing::info!(
        https = %https_addr,
        health = %health_addr,
        sidecar_image = %config.sidecar_image,
        sidecar_mode = ?lifecycle,
        tls_cert = %config.tls_cert.display(),
        log_format = ?config.log_format,
        "s3mount-webhook serving POST /mutate over TLS"
    );

    shutdown_signal().await;
    tracing::info!(drain = ?config.drain_timeout, "shutting down: no new connections, draining in-flight requests");
    state.ready.store(false, Ordering::Relaxed);
    handle.graceful_shutdown(Some(config.drain_timeout));
    let code = match serve.await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "HTTPS server failed");
            ExitCode::from(EXIT_SERVE)
        }
        Err(e) => {
            tracing::error!(error = %e, "HTTPS server task failed");
            ExitCode::from(EXIT_SERVE)
        }
    };
    health_task.abort();
    tracing::info!("stopped");
    code
}

/// Resolves the sidecar mode and starts the namespace watch when an API is reachable; otherwise
/// logs once what is off.
async fn connect_kube(config: &Config) -> (Lifecycle, Option<NamespaceStore>) {
    let fallback = match config.sidecar_mode_fallback {
        FixedMode::Native => Lifecycle::Native,
        FixedMode::Legacy => Lifecycle::Legacy,
    };
    let fixed = match config.sidecar_mode {
        SidecarMode::Native => Some(Lifecycle::Native),
        SidecarMode::Legacy => Some(Lifecycle::Legacy),
        SidecarMode::Auto => None,
    };
    if config.kube_api == KubeApi::Off {
        tracing::info!(
            sidecar_mode = ?fixed.unwrap_or(fallback),
            "Kubernetes API off (--kube-api=off): namespace opt-in, Pod Security and namespace policy checks are off"
        );
        return (fixed.unwrap_or(fallback), None);
    }
    let client = match tokio::time::timeout(std::time::Duration::from_secs(5), namespaces::client()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            no_api(&e.to_string(), fixed.unwrap_or(fallback));
            return (fixed.unwrap_or(fallback), None);
        }
        Err(_) => {
            no_api("timed out", fixed.unwrap_or(fallback));
            return (fixed.unwrap_or(fallback), None);
        }
    };
    let lifecycle = match fixed {
        Some(l) => l,
        None => namespaces::auto_lifecycle(&client, fallback, std::time::Duration::from_secs(5)).await,
    };
    (lifecycle, Some(NamespaceStore::start(client)))
}

fn no_api(why: &str, mode: Lifecycle) {
    tracing::warn!(
        reason = why,
        sidecar_mode = ?mode,
        "no Kubernetes API reachable: sidecar mode is the fallback; namespace opt-in, Pod Security and namespace \
         policy checks are off"
    );
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
