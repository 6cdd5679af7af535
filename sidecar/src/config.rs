//! The sidecar's command line: flags, their environment variables, defaults and validation.
//!
//! Every flag of `docs/interfaces.md` is here, each also read from `S3MOUNT_<FLAG>`. Clap only
//! collects strings; [`parse_from`] then validates every value and reports all bad ones at once,
//! so that one run of the sidecar names every mistake in a pod spec. Bad configuration exits with
//! [`EXIT_BAD_CONFIG`].

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Parser, Subcommand};

/// Exit code for a bad command line or environment (EX_USAGE).
pub const EXIT_BAD_CONFIG: i32 = 64;
/// Default signing region.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Default bound of the block cache.
pub const DEFAULT_CACHE_SIZE: &str = "512MiB";
/// Default permission bits of files.
pub const DEFAULT_FILE_MODE: &str = "0644";
/// Default permission bits of directories.
pub const DEFAULT_DIR_MODE: &str = "0755";
/// Default time listings and attributes are trusted.
pub const DEFAULT_METADATA_TTL: &str = "1s";
/// Default address of the health server.
pub const DEFAULT_HEALTH_LISTEN: &str = "127.0.0.1:9810";
/// Default time given to flushing after SIGTERM.
pub const DEFAULT_GRACE_PERIOD: &str = "30s";
/// Default tracing filter.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default largest ranged GET of the read-ahead.
pub const DEFAULT_READ_PART_SIZE: &str = "8MiB";
/// Default read-ahead GETs in flight per open file.
pub const DEFAULT_READ_CONCURRENCY: &str = "8";
/// Default largest read-ahead window of one open file.
pub const DEFAULT_READ_AHEAD: &str = "64MiB";
/// Default bound of read-ahead bytes in flight across a mount's open files.
pub const DEFAULT_READ_MEMORY: &str = "96MiB";
/// Smallest accepted read-ahead size (part, window, memory).
pub const MIN_READ_PART_SIZE: u64 = 64 * 1024;
/// Largest accepted read-ahead size.
pub const MAX_READ_SIZE: u64 = 4 * 1024 * 1024 * 1024;
/// Most read-ahead GETs in flight per open file.
pub const MAX_READ_CONCURRENCY: usize = 64;
/// Smallest accepted block-cache bound.
pub const MIN_CACHE_SIZE: u64 = 1024 * 1024;
/// Largest `--cache-size` (1 PiB): anything larger is a typo (and would not fit in a u64 of bytes
/// for long: the size parser saturates instead of failing).
pub const MAX_CACHE_SIZE: u64 = 1 << 50;
/// Longest S3 key, and so the longest accepted prefix.
pub const MAX_KEY_LEN: usize = 1024;

/// The raw command line, as clap sees it.
#[derive(Debug, Parser)]
#[command(
    name = "s3mount-sidecar",
    version,
    about = "Mount an S3 bucket as a directory with FUSE"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<CliCommand>,
    #[command(flatten)]
    mount: MountArgs,
}

#[derive(Debug, Subcommand)]
enum CliCommand {
    /// Exit 0 when every mountpoint is a serving s3mount FUSE mount.
    Probe(ProbeArgs),
}

#[derive(Debug, Args)]
struct ProbeArgs {
    /// Mountpoint to check (repeatable).
    #[arg(long = "mountpoint", required = true)]
    mountpoints: Vec<String>,
    /// Keep trying up to this long (e.g. `30s`).
    #[arg(long, env = "S3MOUNT_PROBE_WAIT")]
    wait: Option<String>,
}

#[derive(Debug, Args)]
struct MountArgs {
    /// Bucket name (required).
    #[arg(long, env = "S3MOUNT_BUCKET")]
    bucket: Option<String>,
    /// Key prefix mounted as the root (a trailing `/` is implied).
    #[arg(long, env = "S3MOUNT_PREFIX", default_value = "")]
    prefix: String,
    /// Where to mount (required).
    #[arg(long, env = "S3MOUNT_MOUNTPOINT")]
    mountpoint: Option<String>,
    /// S3 endpoint, e.g. `http://127.0.0.1:9000` (default: AWS for the region).
    #[arg(long, env = "S3MOUNT_ENDPOINT")]
    endpoint: Option<String>,
    /// Signing region.
    #[arg(long, env = "S3MOUNT_REGION", default_value = DEFAULT_REGION)]
    region: String,
    /// Path-style addressing (`endpoint/bucket/key`).
    #[arg(long, env = "S3MOUNT_PATH_STYLE", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    path_style: bool,
    /// Every write gets EROFS.
    #[arg(long, env = "S3MOUNT_READ_ONLY", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    read_only: bool,
    /// Unsigned requests (public buckets).
    #[arg(long, env = "S3MOUNT_ANONYMOUS", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    anonymous: bool,
    /// Block cache and write staging (default: a temporary directory).
    #[arg(long, env = "S3MOUNT_CACHE_DIR")]
    cache_dir: Option<String>,
    /// Bound of the block cache, e.g. `512MiB`.
    #[arg(long, env = "S3MOUNT_CACHE_SIZE", default_value = DEFAULT_CACHE_SIZE)]
    cache_size: String,
    /// Owner uid shown for every inode (default: the process's).
    #[arg(long, env = "S3MOUNT_UID")]
    uid: Option<String>,
    /// Owner gid shown for every inode (default: the process's).
    #[arg(long, env = "S3MOUNT_GID")]
    gid: Option<String>,
    /// Permission bits shown for files (octal).
    #[arg(long, env = "S3MOUNT_FILE_MODE", default_value = DEFAULT_FILE_MODE)]
    file_mode: String,
    /// Permission bits shown for directories (octal).
    #[arg(long, env = "S3MOUNT_DIR_MODE", default_value = DEFAULT_DIR_MODE)]
    dir_mode: String,
    /// How long listings and attributes are trusted (`0` allowed).
    #[arg(long, env = "S3MOUNT_METADATA_TTL", default_value = DEFAULT_METADATA_TTL)]
    metadata_ttl: String,
    /// Largest ranged GET of the read-ahead, e.g. `8MiB`.
    #[arg(long, env = "S3MOUNT_READ_PART_SIZE", default_value = DEFAULT_READ_PART_SIZE)]
    read_part_size: String,
    /// Read-ahead GETs in flight per open file.
    #[arg(long, env = "S3MOUNT_READ_CONCURRENCY", default_value = DEFAULT_READ_CONCURRENCY)]
    read_concurrency: String,
    /// Largest read-ahead window of one open file.
    #[arg(long, env = "S3MOUNT_READ_AHEAD", default_value = DEFAULT_READ_AHEAD)]
    read_ahead: String,
    /// Bytes of read-ahead in flight across all open files of a mount.
    #[arg(long, env = "S3MOUNT_READ_MEMORY", default_value = DEFAULT_READ_MEMORY)]
    read_memory: String,
    /// Plain HTTP `/livez`, `/readyz`, `/metrics`.
    #[arg(long, env = "S3MOUNT_HEALTH_LISTEN", default_value = DEFAULT_HEALTH_LISTEN)]
    health_listen: String,
    /// Time the pod gives us after SIGTERM to flush.
    #[arg(long, env = "S3MOUNT_GRACE_PERIOD", default_value = DEFAULT_GRACE_PERIOD)]
    grace_period: String,
    /// Flush, unmount and exit once the app containers' processes are gone (legacy sidecar mode
    /// in a Job: needs `shareProcessNamespace: true`, see `apps`).
    #[arg(long, env = "S3MOUNT_STOP_WHEN_APPS_EXIT")]
    stop_when_apps_exit: bool,
    /// Tracing filter, e.g. `info` or `s3mount_sidecar=debug`.
    #[arg(long, env = "S3MOUNT_LOG_LEVEL", default_value = DEFAULT_LOG_LEVEL)]
    log_level: String,
    /// `text` or `json`.
    #[arg(long, env = "S3MOUNT_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

/// What the sidecar was asked to do.
#[derive(Debug, Clone)]
pub enum Command {
    /// Mount and serve until SIGTERM/SIGINT.
    Mount(Box<MountConfig>),
    /// Check mountpoints and exit.
    Probe(ProbeConfig),
    /// Several mounts served by one process (more than one `--bucket` group); the process-wide
    /// settings (cache, health, grace period, logging) are the same in each.
    MountMany(Vec<MountConfig>),
}

/// Read-ahead settings of a mount (see `reader`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadTuning {
    /// Largest ranged GET of the read-ahead.
    pub part_size: u64,
    /// Read-ahead GETs in flight per open file.
    pub concurrency: usize,
    /// Largest read-ahead window of one open file.
    pub max_window: u64,
    /// Bytes of read-ahead in flight across all open files.
    pub memory: u64,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated configuration of a mount.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix of the root, empty or ending in `/`.
    pub prefix: String,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// S3 endpoint; `None` means AWS for the region.
    pub endpoint: Option<url::Url>,
    /// Signing region.
    pub region: String,
    /// Path-style addressing.
    pub path_style: bool,
    /// Refuse every write with EROFS.
    pub read_only: bool,
    /// Send unsigned requests.
    pub anonymous: bool,
    /// Block cache and staging directory; `None` means a temporary directory.
    pub cache_dir: Option<PathBuf>,
    /// Bound of the block cache in bytes.
    pub cache_size: u64,
    /// Owner uid of every inode.
    pub uid: u32,
    /// Owner gid of every inode.
    pub gid: u32,
    /// Permission bits of files.
    pub file_mode: u16,
    /// Permission bits of directories.
    pub dir_mode: u16,
    /// How long listings and attributes are trusted.
    pub metadata_ttl: Duration,
    /// Read-ahead settings.
    pub read: ReadTuning,
    /// Address of the health server.
    pub health_listen: SocketAddr,
    /// Time given to flushing after SIGTERM.
    pub grace_period: Duration,
    /// Stop on our own once every app process has exited (legacy mode Jobs).
    pub stop_when_apps_exit: bool,
    /// Tracing filter.
    pub log_level: String,
    /// Log line format.
    pub log_format: LogFormat,
}

/// The validated configuration of `probe`.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Every mountpoint that must be serving.
    pub mountpoints: Vec<PathBuf>,
    /// How long to keep trying; `None` means one attempt.
    pub wait: Option<Duration>,
}

/// Why the command line was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Clap refused the command line (unknown flag, missing value), or help/version was asked.
    #[error("{0}")]
    Usage(#[from] clap::Error),
    /// One or more values are invalid; every one is listed.
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

impl ConfigError {
    /// The process exit code for this error: 0 for `--help`/`--version`, else [`EXIT_BAD_CONFIG`].
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Usage(e) if !e.use_stderr() => 0,
            ConfigError::Usage(_) | ConfigError::Invalid(_) => EXIT_BAD_CONFIG,
        }
    }
}

/// Parses and validates a command line (the first item is the program name); environment
/// variables `S3MOUNT_*` fill flags that are not given.
pub fn parse_from<I, T>(args: I) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    if let Some(groups) = mount_groups(&args) {
        return parse_groups(groups);
    }
    let cli = Cli::try_parse_from(args)?;
    match cli.command {
        Some(CliCommand::Probe(probe)) => validate_probe(probe).map(Command::Probe),
        None => validate_mount(cli.mount).map(|m| Command::Mount(Box::new(m))),
    }
}

/// Flags that describe one mount; every other flag is process-wide.
const MOUNT_FLAGS: &[&str] = &[
    "--bucket",
    "--prefix",
    "--mountpoint",
    "--endpoint",
    "--region",
    "--path-style",
    "--read-only",
    "--anonymous",
];
/// The mount flags that take a value.
const MOUNT_VALUE_FLAGS: &[&str] = &["--bucket", "--prefix", "--mountpoint", "--endpoint", "--region"];

/// Several mounts in one process: the command line holds more than one `--bucket`, and each
/// `--bucket` starts a group of mount flags (mount flags before the first `--bucket` belong to the
/// first group). Returns one full command line per mount (program, process-wide flags, that
/// mount's flags), or `None` for the ordinary one-mount form.
fn mount_groups(args: &[OsString]) -> Option<Vec<Vec<OsString>>> {
    let flag_of = |a: &OsString| -> Option<String> {
        let s = a.to_str()?;
        let name = s.split_once('=').map_or(s, |(n, _)| n);
        MOUNT_FLAGS.contains(&name).then(|| name.to_string())
    };
    let buckets = args
        .iter()
        .filter(|a| flag_of(a).as_deref() == Some("--bucket"))
        .count();
    if buckets < 2 || args.get(1).is_some_and(|a| a == "probe") {
        return None;
    }
    let mut global: Vec<OsString> = Vec::new();
    let mut groups: Vec<Vec<OsString>> = Vec::new();
    let mut leading: Vec<OsString> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let Some(flag) = (i > 0).then(|| flag_of(arg)).flatten() else {
            global.push(arg.clone());
            i += 1;
            continue;
        };
        let mut item = vec![arg.clone()];
        let inline_value = arg.to_str().is_some_and(|s| s.contains('='));
        if MOUNT_VALUE_FLAGS.contains(&flag.as_str()) && !inline_value && i + 1 < args.len() {
            item.push(args[i + 1].clone());
            i += 1;
        }
        i += 1;
        if flag == "--bucket" {
            let mut group = std::mem::take(&mut leading);
            group.extend(item);
            groups.push(group);
        } else if let Some(group) = groups.last_mut() {
            group.extend(item);
        } else {
            leading.extend(item);
        }
    }
    Some(
        groups
            .into_iter()
            .map(|g| global.iter().cloned().chain(g).collect())
            .collect(),
    )
}

fn parse_groups(groups: Vec<Vec<OsString>>) -> Result<Command, ConfigError> {
    let mut mounts = Vec::new();
    let mut errors = Vec::new();
    for (n, argv) in groups.into_iter().enumerate() {
        let cli = Cli::try_parse_from(argv)?;
        match validate_mount(cli.mount) {
            Ok(m) => mounts.push(m),
            Err(ConfigError::Invalid(errs)) => {
                errors.extend(errs.into_iter().map(|e| format!("mount #{}: {e}", n + 1)));
            }
            Err(e) => return Err(e),
        }
    }
    for (i, a) in mounts.iter().enumerate() {
        for b in &mounts[i + 1..] {
            if a.mountpoint == b.mountpoint {
                errors.push(format!(
                    "two mounts use the same --mountpoint {}",
                    a.mountpoint.display()
                ));
            }
        }
    }
    if !errors.is_empty() {
        return Err(ConfigError::Invalid(errors));
    }
    Ok(Command::MountMany(mounts))
}

fn validate_probe(args: ProbeArgs) -> Result<ProbeConfig, ConfigError> {
    let mut errors = Vec::new();
    let wait = args
        .wait
        .as_deref()
        .and_then(|w| duration("--wait", w, &mut errors));
    for m in &args.mountpoints {
        if m.is_empty() {
            errors.push("--mountpoint: must not be empty".to_string());
        }
    }
    if !errors.is_empty() {
        return Err(ConfigError::Invalid(errors));
    }
    Ok(ProbeConfig {
        mountpoints: args.mountpoints.into_iter().map(PathBuf::from).collect(),
        wait,
    })
}

fn validate_mount(args: MountArgs) -> Result<MountConfig, ConfigError> {
    let mut errors = Vec::new();
    let bucket = match args.bucket {
        None => {
            errors.push("--bucket (S3MOUNT_BUCKET): required".to_string());
            String::new()
        }
        Some(b) => {
            if let Err(why) = check_bucket(&b) {
                errors.push(format!("--bucket {b:?}: {why}"));
            }
            b
        }
    };
    let prefix = match normalize_prefix(&args.prefix) {
        Ok(p) => p,
        Err(why) => {
            errors.push(format!("--prefix {:?}: {why}", args.prefix));
            String::new()
        }
    };
    let mountpoint = match args.mountpoint.as_deref() {
        None => {
            errors.push("--mountpoint (S3MOUNT_MOUNTPOINT): required".to_string());
            PathBuf::new()
        }
        Some("") => {
            errors.push("--mountpoint: must not be empty".to_string());
            PathBuf::new()
        }
        Some(m) => PathBuf::from(m),
    };
    let endpoint = args.endpoint.as_deref().and_then(|e| match url::Url::parse(e) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
        Ok(_) => {
            errors.push(format!(
                "--endpoint {e:?}: must be an http:// or https:// URL with a host"
            ));
            None
        }
        Err(why) => {
            errors.push(format!("--endpoint {e:?}: {why}"));
            None
        }
    });
    if args.region.is_empty() || !args.region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        errors.push(format!(
            "--region {:?}: expected letters, digits and '-', e.g. us-east-1",
            args.region
        ));
    }
    let cache_dir = match args.cache_dir.as_deref() {
        Some("") => {
            errors.push("--cache-dir: must not be empty".to_string());
            None
        }
        other => other.map(PathBuf::from),
    };
    let cache_size = match args.cache_size.parse::<bytesize::ByteSize>() {
        Ok(size) if (MIN_CACHE_SIZE..=MAX_CACHE_SIZE).contains(&size.as_u64()) => size.as_u64(),
        Ok(size) if size.as_u64() > MAX_CACHE_SIZE => {
            errors.push(format!(
                "--cache-size {:?}: must be at most 1PiB",
                args.cache_size
            ));
            0
        }
        Ok(_) => {
            errors.push(format!(
                "--cache-size {:?}: must be at least 1MiB",
                args.cache_size
            ));
            0
        }
        Err(_) => {
            errors.push(format!(
                "--cache-size {:?}: expected a size such as 512MiB or 2GiB",
                args.cache_size
            ));
            0
        }
    };
    let uid = id(
        "--uid",
        args.uid.as_deref(),
        nix::unistd::getuid().as_raw(),
        &mut errors,
    );
    let gid = id(
        "--gid",
        args.gid.as_deref(),
        nix::unistd::getgid().as_raw(),
        &mut errors,
    );
    let file_mode = mode("--file-mode", &args.file_mode, &mut errors);
    let dir_mode = mode("--dir-mode", &args.dir_mode, &mut errors);
    let metadata_ttl = duration("--metadata-ttl", &args.metadata_ttl, &mut errors).unwrap_or_default();
    let grace_period = duration("--grace-period", &args.grace_period, &mut errors).unwrap_or_default();
    let read = read_tuning(
        [&args.read_part_size, &args.read_ahead, &args.read_memory],
        &args.read_concurrency,
        &mut errors,
    );
    let health_listen = match args.health_listen.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            errors.push(format!(
                "--health-listen {:?}: expected IP:PORT, e.g. 127.0.0.1:9810",
                args.health_listen
            ));
            SocketAddr::from(([127, 0, 0, 1], 0))
        }
    };
    if let Err(why) = tracing_subscriber::EnvFilter::try_new(&args.log_level) {
        errors.push(format!("--log-level {:?}: {why}", args.log_level));
    }
    let log_format = match args.log_format.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            errors.push(format!("--log-format {other:?}: expected text or json"));
            LogFormat::Text
        }
    };
    if !errors.is_empty() {
        return Err(ConfigError::Invalid(errors));
    }
    Ok(MountConfig {
        bucket,
        prefix,
        mountpoint,
        endpoint,
        region: args.region,
        path_style: args.path_style,
        read_only: args.read_only,
        anonymous: args.anonymous,
        cache_dir,
        cache_size,
        uid,
        gid,
        file_mode,
        dir_mode,
        metadata_ttl,
        read,
        health_listen,
        grace_period,
        stop_when_apps_exit: args.stop_when_apps_exit,
        log_level: args.log_level,
        log_format,
    })
}

/// The read-ahead flags: sizes within sense, and a memory bound that holds at least one part.
fn read_tuning(sizes: [&str; 3], concurrency: &str, errors: &mut Vec<String>) -> ReadTuning {
    let [part, ahead, mem] = sizes;
    let mut size = |flag: &str, value: &str, min: u64| match value.parse::<bytesize::ByteSize>() {
        Ok(s) if s.as_u64() >= min && s.as_u64() <= MAX_READ_SIZE => s.as_u64(),
        Ok(_) => {
            errors.push(format!(
                "{flag} {value:?}: must be from {} to {}",
                bytesize::ByteSize(min).display().iec(),
                bytesize::ByteSize(MAX_READ_SIZE).display().iec()
            ));
            0
        }
        Err(_) => {
            errors.push(format!("{flag} {value:?}: expected a size such as 8MiB"));
            0
        }
    };
    let part_size = size("--read-part-size", part, MIN_READ_PART_SIZE);
    let max_window = size("--read-ahead", ahead, MIN_READ_PART_SIZE);
    let memory = size("--read-memory", mem, MIN_READ_PART_SIZE);
    let concurrency = match concurrency.parse::<usize>() {
        Ok(n) if (1..=MAX_READ_CONCURRENCY).contains(&n) => n,
        _ => {
            errors.push(format!(
                "--read-concurrency {concurrency:?}: expected a whole number from 1 to {MAX_READ_CONCURRENCY}"
            ));
            0
        }
    };
    if part_size > 0 && memory > 0 && memory < part_size {
        errors.push(format!(
            "--read-memory {mem:?} is less than --read-part-size {part:?}: no read-ahead part would fit"
        ));
    }
    ReadTuning {
        part_size,
        concurrency,
        max_window,
        memory,
    }
}

/// S3's bucket naming rules (3-63 of lowercase letters, digits, `.` and `-`, starting and ending
/// with a letter or digit). Legacy names with capitals or `_` are accepted too.
fn check_bucket(bucket: &str) -> Result<(), &'static str> {
    if !(3..=63).contains(&bucket.len()) {
        return Err("must be 3 to 63 characters long");
    }
    if !bucket
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err("may contain only letters, digits, '.', '-' and '_'");
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(bucket.chars().next()) || !edge_ok(bucket.chars().last()) {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

/// Turns `--prefix` into the form the filesystem uses: empty, or segments ending in `/`.
pub fn normalize_prefix(prefix: &str) -> Result<String, &'static str> {
    if prefix.is_empty() {
        return Ok(String::new());
    }
    if prefix.starts_with('/') {
        return Err("must not start with '/'");
    }
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    if trimmed.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err("must not contain empty, '.' or '..' segments");
    }
    if trimmed.len() + 1 > MAX_KEY_LEN {
        return Err("longer than an S3 key may be");
    }
    Ok(format!("{trimmed}/"))
}

fn id(flag: &str, value: Option<&str>, default: u32, errors: &mut Vec<String>) -> u32 {
    match value.map(str::parse::<u32>) {
        None => default,
        Some(Ok(v)) => v,
        Some(Err(_)) => {
            errors.push(format!(
                "{flag} {:?}: expected a number from 0 to 4294967295",
                value.unwrap_or("")
            ));
            default
        }
    }
}

fn mode(flag: &str, value: &str, errors: &mut Vec<String>) -> u16 {
    match u16::from_str_radix(value.strip_prefix("0o").unwrap_or(value), 8) {
        Ok(m) if m <= 0o7777 && !value.is_empty() => m,
        _ => {
            errors.push(format!(
                "{flag} {value:?}: expected octal permission bits such as 0644"
            ));
            0
        }
    }
}

fn duration(flag: &str, value: &str, errors: &mut Vec<String>) -> Option<Duration> {
    if value.trim() == "0" {
        return Some(Duration::ZERO);
    }
    match humantime::parse_duration(value) {
        Ok(d) => Some(d),
        Err(_) => {
            errors.push(format!(
                "{flag} {value:?}: expected a duration such as 0, 500ms, 1s or 5m"
            ));
            None
        }
    }
}

impl fmt::Display for MountConfig {
    /// The effective configuration on one line, for the start-up log. It holds no secret: the
    /// credentials come from the environment and are only reported as present or absent.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoint = self
            .endpoint
            .as_ref()
            .map_or("aws".to_string(), |u| u.to_string());
        let cache_dir = self
            .cache_dir
            .as_ref()
            .map_or("<temporary>".to_string(), |d| d.display().to_string());
        let credentials = if self.anonymous {
            "anonymous"
        } else if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
            "from environment (redacted)"
        } else {
            "none found"
        };
        write!(
            f,
            "bucket={} prefix={:?} mountpoint={} endpoint={endpoint} region={} path_style={} \
             read_only={} credentials={credentials} cache_dir={cache_dir} cache_size={} uid={} gid={} \
             file_mode={:o} dir_mode={:o} metadata_ttl={:?} read_part_size={} read_concurrency={} \
             read_ahead={} read_memory={} health_listen={} grace_period={:?} log_level={} log_format={:?}",
            self.bucket,
            self.prefix,
            self.mountpoint.display(),
            self.region,
            self.path_style,
            self.read_only,
            self.cache_size,
            self.uid,
            self.gid,
            self.file_mode,
            self.dir_mode,
            self.metadata_ttl,
            self.read.part_size,
            self.read.concurrency,
            self.read.max_window,
            self.read.memory,
            self.health_listen,
            self.grace_period,
            self.log_level,
            self.log_format,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(args: &[&str]) -> Vec<String> {
        match parse_from(args) {
            Err(ConfigError::Invalid(errors)) => errors,
            other => panic!("expected invalid values, got {other:?}"),
        }
    }

    #[test]
    fn the_webhooks_generated_args_are_accepted() {
        let args = [
            "s3mount-sidecar",
            "--bucket=demo",
            "--mountpoint=/s3mount/mnt/default",
            "--cache-dir=/s3mount/cache",
            "--endpoint=http://127.0.0.1:9000",
            "--region=eu-west-1",
            "--path-style",
            "--prefix=team/data",
            "--metadata-ttl=0",
            "--cache-size=2GiB",
            "--file-mode=0640",
        ];
        let Ok(Command::Mount(config)) = parse_from(args) else {
            panic!("refused")
        };
        assert_eq!(config.prefix, "team/data/");
        assert_eq!(config.metadata_ttl, Duration::ZERO);
        assert_eq!(config.cache_size, 2 * 1024 * 1024 * 1024);
        assert_eq!(config.file_mode, 0o640);
        assert!(config.path_style);
        assert_eq!(config.health_listen.to_string(), DEFAULT_HEALTH_LISTEN);
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let errors = invalid(&[
            "s3mount-sidecar",
            "--mountpoint=/m",
            "--prefix=/abs",
            "--endpoint=ftp://x",
            "--cache-size=lots",
            "--uid=-1",
            "--file-mode=999",
            "--metadata-ttl=soon",
            "--health-listen=nowhere",
            "--grace-period=x",
            "--log-format=xml",
        ]);
        for flag in [
            "--bucket",
            "--prefix",
            "--endpoint",
            "--cache-size",
            "--uid",
            "--file-mode",
            "--metadata-ttl",
            "--health-listen",
            "--grace-period",
            "--log-format",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(flag)),
                "{flag} missing from {errors:?}"
            );
        }
        assert_eq!(ConfigError::Invalid(errors).exit_code(), EXIT_BAD_CONFIG);
    }

    #[test]
    fn read_ahead_flags_have_defaults_and_are_checked() {
        let Ok(Command::Mount(config)) = parse_from(["s3mount-sidecar", "--bucket=demo", "--mountpoint=/m"])
        else {
            panic!("refused")
        };
        let mib = 1024 * 1024;
        assert_eq!(
            config.read,
            ReadTuning {
                part_size: 8 * mib,
                concurrency: 8,
                max_window: 64 * mib,
                memory: 96 * mib
            }
        );
        let Ok(Command::Mount(config)) = parse_from([
            "s3mount-sidecar",
            "--bucket=demo",
            "--mountpoint=/m",
            "--read-part-size=4MiB",
            "--read-concurrency=16",
            "--read-ahead=32MiB",
            "--read-memory=48MiB",
        ]) else {
            panic!("refused")
        };
        assert_eq!((config.read.part_size, config.read.concurrency), (4 * mib, 16));
        assert_eq!((config.read.max_window, config.read.memory), (32 * mib, 48 * mib));
        let errors = invalid(&[
            "s3mount-sidecar",
            "--bucket=demo",
            "--mountpoint=/m",
            "--read-part-size=1KiB",
            "--read-concurrency=0",
            "--read-ahead=much",
        ]);
        for flag in ["--read-part-size", "--read-concurrency", "--read-ahead"] {
            assert!(
                errors.iter().any(|e| e.starts_with(flag)),
                "{flag} missing from {errors:?}"
            );
        }
        let errors = invalid(&[
            "s3mount-sidecar",
            "--bucket=demo",
            "--mountpoint=/m",
            "--read-part-size=16MiB",
            "--read-memory=8MiB",
        ]);
        assert!(errors[0].contains("no read-ahead part would fit"), "{errors:?}");
    }

    #[test]
    fn cache_sizes_outside_1mib_to_1pib_are_refused() {
        for (value, why) in [
            ("1KiB", "at least 1MiB"),
            ("2PiB", "at most 1PiB"),
            ("99999999999999999999GiB", "at most 1PiB"),
        ] {
            let errors = invalid(&[
                "s3mount-sidecar",
                "--bucket=demo",
                "--mountpoint=/m",
                &format!("--cache-size={value}"),
            ]);
            assert!(
                errors
                    .iter()
                    .any(|e| e.starts_with("--cache-size") && e.contains(why)),
                "{value}: {errors:?}"
            );
        }
        let Ok(Command::Mount(config)) = parse_from([
            "s3mount-sidecar",
            "--bucket=demo",
            "--mountpoint=/m",
            "--cache-size=1PiB",
        ]) else {
            panic!("1PiB is accepted");
        };
        assert_eq!(config.cache_size, 1 << 50);
    }

    #[test]
    fn an_unknown_flag_exits_64() {
        let err = parse_from(["s3mount-sidecar", "--bucket=demo", "--no-such-flag"]).unwrap_err();
        assert_eq!(err.exit_code(), EXIT_BAD_CONFIG);
    }

    #[test]
    fn prefixes_with_empty_or_dot_segments_are_refused() {
        for bad in ["a//b", "./a", "a/..", "/a"] {
            assert!(normalize_prefix(bad).is_err(), "{bad}");
        }
        assert_eq!(normalize_prefix("a/b/").unwrap(), "a/b/");
    }

    #[test]
    fn probe_takes_several_mountpoints_and_a_wait() {
        let args = [
            "s3mount-sidecar",
            "probe",
            "--mountpoint=/a",
            "--mountpoint",
            "/b",
            "--wait",
            "30s",
        ];
        let Ok(Command::Probe(probe)) = parse_from(args) else {
            panic!("refused")
        };
        assert_eq!(probe.mountpoints, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(probe.wait, Some(Duration::from_secs(30)));
    }
}
