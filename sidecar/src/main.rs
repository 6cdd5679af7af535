//! `s3mount-sidecar`: mounts an S3 bucket with FUSE and serves it until SIGTERM/SIGINT, or probes
//! mounts (`probe`). See docs/interfaces.md for the command line.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{error, info, warn};

use s3mount_sidecar::cache::{BlockCache, DEFAULT_BLOCK_SIZE};
use s3mount_sidecar::config::{self, Command, LogFormat, MountConfig};
use s3mount_sidecar::fs::{DEFAULT_PART_SIZE, Fs, FsConfig};
use s3mount_sidecar::health::{self, Health};
use s3mount_sidecar::reader::ReadConfig;
use s3mount_sidecar::s3::{S3Config, S3Store};
use s3mount_sidecar::store::ObjectStore;
use s3mount_sidecar::{fuse, probe, shutdown};

/// How often the main task checks that the FUSE session is still running.
const SESSION_POLL: Duration = Duration::from_millis(500);

/// glibc gives each thread that allocates its own arena (up to eight per core) and keeps what
/// is freed in it. The read path allocates block-sized buffers on tokio's worker and blocking
/// threads, so the peak resident memory of a 1 GiB read was twice the data in flight (about
/// 240 MiB against 114 MiB with one arena, and no slower; see bench/RESULTS.md). Must run before
/// any thread starts. `MALLOC_ARENA_MAX` in the environment still wins.
#[allow(unsafe_code)] // one libc call with no memory handed over; see the SAFETY note
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; no thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let command = match config::parse_from(std::env::args_os()) {
        Ok(command) => command,
        Err(config::ConfigError::Usage(e)) => {
            let code = if e.use_stderr() {
                config::EXIT_BAD_CONFIG
            } else {
                0
            };
            let _ = e.print();
            return exit(code);
        }
        Err(e) => {
            eprintln!("s3mount-sidecar: {e}");
            return exit(e.exit_code());
        }
    };
    match command {
        Command::Probe(probe) => exit(probe::run(&probe)),
        Command::Mount(config) => serve(vec![*config]),
        Command::MountMany(configs) => serve(configs),
    }
}

/// Runs every mount of the command line in one process until a signal.
fn serve(configs: Vec<MountConfig>) -> ExitCode {
    let Some(config) = configs.first() else {
        eprintln!("s3mount-sidecar: no mount given");
        return exit(config::EXIT_BAD_CONFIG);
    };
    init_logging(config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return exit(1);
        }
    };
    match runtime.block_on(run(configs)) {
        Ok(()) => exit(0),
        Err(e) => {
            error!(error = format!("{e:#}"), "s3mount-sidecar failed");
            exit(1)
        }
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn init_logging(config: &MountConfig) {
    let filter = tracing_subscriber::EnvFilter::new(&config.log_level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// How often uploads that failed at close are tried again while the sidecar runs.
const UPLOAD_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// One mount being served.
struct Running {
    config: MountConfig,
    fs: Arc<Fs<S3Store>>,
    session: fuser::BackgroundSession,
    /// Retries uploads that failed at close; stopped before the final flush.
    retry: tokio::task::JoinHandle<()>,
    cache_dir: std::path::PathBuf,
    temporary: bool,
}

/// Mount everything, serve, and on a signal: flush, unmount.
async fn run(configs: Vec<MountConfig>) -> anyhow::Result<()> {
    let first = configs.first().context("no mount given")?.clone();
    for config in &configs {
        info!(config = %config, version = env!("CARGO_PKG_VERSION"), "s3mount-sidecar starting");
    }
    let health = Arc::new(Health::new());
    let bound = health::serve(first.health_listen, health.clone())
        .await
        .with_context(|| format!("cannot listen on --health-listen {}", first.health_listen))?;
    info!(address = %bound, "health server listening (/livez, /readyz, /metrics)");

    let count = configs.len();
    let mut running: Vec<Running> = Vec::new();
    for (index, config) in configs.into_iter().enumerate() {
        match start(config, index, count, &health).await {
            Ok(r) => running.push(r),
            Err(e) => {
                // Leave nothing half-mounted behind when a later mount cannot start.
                for r in &running {
                    let _ = s3mount_sidecar::mountsys::unmount_all(&r.config.mountpoint);
                }
                return Err(e);
            }
        }
    }
    health.set_ready(true);

    tokio::select! {
        signal = shutdown::wait_for_signal() => {
            info!(signal = signal.context("cannot install signal handlers")?, "shutting down");
        }
        () = wait_any_session_end(&running) => {
            warn!("a FUSE session ended (unmounted from outside?); stopping every mount");
        }
        () = async {
            if first.stop_when_apps_exit {
                s3mount_sidecar::apps::wait_until_apps_exit().await
            } else {
                std::future::pending().await
            }
        } => {
            info!("the app containers have exited (--stop-when-apps-exit): shutting down");
        }
    }
    health.set_ready(false);
    let deadline = tokio::time::Instant::now() + first.grace_period;
    let results = futures::future::join_all(running.into_iter().map(|r| stop(r, deadline))).await;
    let upload_failures: usize = results.into_iter().sum();
    if upload_failures > 0 {
        anyhow::bail!("{upload_failures} pending upload(s) not durable at exit");
    }
    Ok(())
}

/// Sets up the store, cache and filesystem of one mount, checks the bucket answers, and mounts.
///
/// With several mounts, each gets its own subdirectory of the cache directory and an equal share
/// of `--cache-size`, so the total stays within what the pod's cache volume was sized for.
async fn start(
    config: MountConfig,
    index: usize,
    count: usize,
    health: &Arc<Health>,
) -> anyhow::Result<Running> {
    let (base_dir, temporary) = match &config.cache_dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("s3mount-{}", std::process::id())),
            true,
        ),
    };
    let (cache_dir, cache_size) = if count > 1 {
        (
            base_dir.join(format!("mount-{index}")),
            (config.cache_size / count as u64).max(u64::from(DEFAULT_BLOCK_SIZE) * 4),
        )
    } else {
        (base_dir.clone(), config.cache_size)
    };
    let started = start_at(config, cache_dir.clone(), cache_size, temporary, health).await;
    if started.is_err() && temporary {
        // A cache directory this process made for itself goes with a failed start; the parent
        // shared by several mounts goes once empty.
        let _ = std::fs::remove_dir_all(&cache_dir);
        let _ = std::fs::remove_dir(&base_dir);
    }
    started
}

async fn start_at(
    config: MountConfig,
    cache_dir: std::path::PathBuf,
    cache_size: u64,
    temporary: bool,
    health: &Arc<Health>,
) -> anyhow::Result<Running> {
    let store = Arc::new(S3Store::new(s3_config(&config)?).context("cannot set up the S3 client")?);
    let fs_config = FsConfig {
        prefix: config.prefix.clone(),
        read_only: config.read_only,
        uid: config.uid,
        gid: config.gid,
        file_mode: config.file_mode,
        dir_mode: config.dir_mode,
        metadata_ttl: config.metadata_ttl,
        staging_dir: cache_dir.join("staging"),
        part_size: DEFAULT_PART_SIZE,
    };
    let cache = BlockCache::open(cache_dir.join("blocks"), cache_size, DEFAULT_BLOCK_SIZE)
        .context("cannot open the block cache")?;
    let endpoint = config
        .endpoint
        .as_ref()
        .map_or_else(|| format!("aws:{}", config.region), |u| u.to_string());
    let read_config = ReadConfig {
        namespace: format!("{endpoint} {}", config.bucket),
        part_size: config.read.part_size,
        max_concurrency: config.read.concurrency,
        max_window: config.read.max_window,
        max_inflight_bytes: config.read.memory,
        ..ReadConfig::default()
    };
    let fs = Fs::with_cache(store, fs_config, Some(Arc::new(cache)), read_config)
        .context("cannot prepare the cache directory")?;
    let fs = Arc::new(fs);
    // Fail early: wrong credentials or a missing bucket stop here, not in every app request.
    fs.store()
        .list_page(&config.prefix, Some("/"), None, None, Some(1))
        .await
        .with_context(|| format!("cannot reach the bucket {:?}", config.bucket))?;
    health.add_mount(&config.bucket, &config.mountpoint, fs.clone());
    let fsname = format!("s3mount:{}", config.bucket);
    let session = fuse::mount(
        fs.clone(),
        &config.mountpoint,
        &fsname,
        tokio::runtime::Handle::current(),
        health.clone(),
    )
    .with_context(|| format!("cannot mount at {}", config.mountpoint.display()))?;
    info!(mountpoint = %config.mountpoint.display(), bucket = %config.bucket, "mounted");
    let retry = tokio::spawn({
        let fs = fs.clone();
        async move {
            let mut every = tokio::time::interval(UPLOAD_RETRY_INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                fs.retry_failed_uploads().await;
            }
        }
    });
    Ok(Running {
        config,
        fs,
        session,
        retry,
        cache_dir,
        temporary,
    })
}

/// Flushes one mount within the deadline and unmounts it; returns how many uploads are not durable.
async fn stop(running: Running, deadline: tokio::time::Instant) -> usize {
    let Running {
        config,
        fs,
        session,
        retry,
        cache_dir,
        temporary,
    } = running;
    retry.abort();
    let (upload_failures, out_of_time) = flush_until(&fs, deadline, config.grace_period).await;
    // Every FUSE layer goes, including dead ones a killed predecessor left under ours. A busy
    // layer is detached lazily: the session goes on serving files still open (their close
    // uploads them) until the grace period ends.
    if let Err(e) = s3mount_sidecar::mountsys::unmount_all(&config.mountpoint) {
        warn!(error = %e, mountpoint = %config.mountpoint.display(), "cannot unmount");
    }
    while !session.guard.is_finished() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Issue 6 (tests/tests/reliability_shutdown.rs): this second pass was unbounded, so a slow S3
    // held the pod past its grace period; it now ends at the deadline too and names what is left.
    let upload_failures = upload_failures
        + if out_of_time {
            0 // the first pass already named every file left
        } else if tokio::time::Instant::now() < deadline {
            flush_until(&fs, deadline, config.grace_period).await.0
        } else {
            report_not_uploaded(&fs, config.grace_period)
        };
    if session.guard.is_finished() {
        match tokio::task::spawn_blocking(move || session.join()).await {
            Ok(Ok(())) => info!(mountpoint = %config.mountpoint.display(), "unmounted"),
            Ok(Err(e)) => warn!(error = %e, "FUSE session ended with an error"),
            Err(e) => warn!(error = %e, "FUSE session thread failed"),
        }
    } else {
        error!(
            mountpoint = %config.mountpoint.display(),
            "files still open at the end of the grace period; exiting with the mount detached"
        );
    }
    if temporary && upload_failures == 0 {
        let _ = std::fs::remove_dir_all(&cache_dir);
    }
    upload_failures
}

/// Uploads every pending file until `deadline`; returns how many failed or were left, and whether
/// time ran out. Each failure is logged with its path by `flush_all`; when time runs out the
/// uploads under way go on in their task and every file not uploaded is named (issue 6: the
/// grace-period timeout used to say only that something was left).
async fn flush_until(
    fs: &Arc<Fs<S3Store>>,
    deadline: tokio::time::Instant,
    grace: Duration,
) -> (usize, bool) {
    let task = tokio::spawn({
        let fs = fs.clone();
        async move { fs.flush_all().await }
    });
    match tokio::time::timeout_at(deadline, task).await {
        Ok(Ok(0)) => (0, false),
        Ok(Ok(n)) => {
            error!(
                failed = n,
                "pending uploads failed; their staged data is kept in the cache directory"
            );
            (n, false)
        }
        Ok(Err(e)) => {
            error!(error = %e, "the flush task failed");
            (report_not_uploaded(fs, grace).max(1), false)
        }
        Err(_) => (report_not_uploaded(fs, grace).max(1), true),
    }
}

/// Logs every file whose data is not in S3 at the end of the grace period; returns how many.
fn report_not_uploaded(fs: &Fs<S3Store>, grace: Duration) -> usize {
    let pending = fs.pending_uploads();
    for path in &pending {
        error!(path = %path, grace_period = ?grace, "not uploaded: the grace period ended first; staged data kept in the cache directory");
    }
    pending.len()
}

async fn wait_any_session_end(running: &[Running]) {
    while !running.iter().any(|r| r.session.guard.is_finished()) {
        tokio::time::sleep(SESSION_POLL).await;
    }
}

fn s3_config(config: &MountConfig) -> anyhow::Result<S3Config> {
    let mut s3 = S3Config::new(config.bucket.clone(), config.region.clone());
    s3.endpoint = config
        .endpoint
        .as_ref()
        .map(|u| u.as_str().trim_end_matches('/').to_string());
    s3.path_style = config.path_style;
    s3.anonymous = config.anonymous;
    if !config.anonymous {
        s3.credentials = S3Config::credentials_from_env().context("AWS credentials")?;
    }
    Ok(s3)
}
