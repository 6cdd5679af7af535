//! Support for the reliability and security tests: a real S3 server, the fault proxy in front of
//! it, and the real `s3mount-sidecar` binary mounted through the kernel.
//!
//! - [`Rclone::start`]: `rclone serve s3` over a fresh directory on a free `127.0.0.1` port, with
//!   the bucket [`BUCKET`]; [`Rclone::put_direct`] / [`Rclone::get_direct`] write and read objects
//!   in the served directory, without s3mount.
//! - [`Proxy::start`]: a [`FaultProxy`] in front of a server, on its own tokio runtime.
//! - [`Sidecar::start`]: the built binary with the proxy as its endpoint; waits for `probe`.
//!   [`Sidecar::stop`] sends SIGTERM and returns the exit status and log.
//! - [`Watchdog`]: bounds a test's time. When it fires it SIGKILLs every sidecar still running,
//!   detaches their mounts (so that a blocked filesystem call returns) and exits the test binary.
//! - [`summary`]: the one `reliability:` line every test prints.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use s3mount_tests::faultproxy::{Fault, FaultProxy, Rule, S3Op};

/// The bucket the server is started with.
pub const BUCKET: &str = "rel-bucket";
/// Access key the server accepts.
pub const ACCESS_KEY: &str = "s3mount-rel-access";
/// Secret key the server accepts; no log may contain it.
pub const SECRET_KEY: &str = "s3mount-rel-secret-5f1c9a";

/// Directory of the built binaries (the sidecar is another package's binary: found next to ours).
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_s3mount-podrun"))
        .parent()
        .expect("binary has a directory")
        .to_path_buf()
}

/// The built `s3mount-sidecar`.
pub fn sidecar_bin() -> PathBuf {
    let bin = bin_dir().join("s3mount-sidecar");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p s3mount-sidecar, or cargo build --workspace --bins)",
        bin.display()
    );
    bin
}

/// Whether this machine can run kernel-mount tests; they are required, so a missing
/// capability fails the test rather than skipping it.
pub fn require_mount() {
    assert!(
        nix::unistd::geteuid().is_root() && Path::new("/dev/fuse").exists(),
        "reliability tests mount through the kernel: run them as root with /dev/fuse (make test does)"
    );
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port on 127.0.0.1")
        .local_addr()
        .expect("local address")
        .port()
}

/// `rclone serve s3` on loopback, killed on drop.
#[derive(Debug)]
pub struct Rclone {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Rclone {
    /// Starts the server with the bucket [`BUCKET`] and waits until it answers.
    pub fn start() -> Rclone {
        let rclone = workspace().join(".venv/bin/rclone");
        assert!(
            rclone.exists(),
            "{} is missing: run scripts/install-python.sh",
            rclone.display()
        );
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::create_dir_all(dir.path().join("root").join(BUCKET)).expect("bucket directory");
        let port = free_port();
        let log = File::create(dir.path().join("server.log")).expect("server log");
        let child = Command::new(rclone)
            .args(["serve", "s3", "--addr", &format!("127.0.0.1:{port}")])
            .args(["--auth-key", &format!("{ACCESS_KEY},{SECRET_KEY}")])
            // Objects written into the directory by the test must show at once.
            .args(["--dir-cache-time", "0s"])
            .arg(dir.path().join("root"))
            .env("RCLONE_CONFIG", "/dev/null")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start rclone");
        let mut server = Rclone { port, child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.child.try_wait().expect("poll rclone") {
                panic!("rclone exited with {status}: {}", server.log());
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut head = [0u8; 8];
                if s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    .is_ok()
                    && s.read_exact(&mut head).is_ok()
                    && head.starts_with(b"HTTP/1.")
                {
                    return server;
                }
            }
            assert!(
                Instant::now() < deadline,
                "rclone not ready after 30 s: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn object(&self, key: &str) -> PathBuf {
        self.dir.path().join("root").join(BUCKET).join(key)
    }

    /// Writes an object without going through s3mount.
    pub fn put_direct(&self, key: &str, data: &[u8]) {
        let path = self.object(key);
        std::fs::create_dir_all(path.parent().expect("key has a parent")).expect("mkdir");
        std::fs::write(&path, data).expect("write object file");
    }

    /// Reads an object without going through s3mount; `None` when it does not exist.
    pub fn get_direct(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.object(key)).ok()
    }
}

impl Drop for Rclone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fault proxy in front of a server, with the runtime that drives it.
pub struct Proxy {
    pub proxy: FaultProxy,
    _rt: tokio::runtime::Runtime,
}

impl Proxy {
    /// Starts a proxy forwarding to `server`.
    pub fn start(server: &Rclone) -> Proxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let proxy = rt
            .block_on(FaultProxy::start(
                "127.0.0.1:0".parse().expect("address"),
                server.addr(),
            ))
            .expect("start the fault proxy");
        Proxy { proxy, _rt: rt }
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.proxy.addr)
    }

    /// Replaces the rules.
    pub fn set(&self, rules: Vec<Rule>) {
        self.proxy.set_rules(rules);
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.proxy.set_rules(Vec::new());
    }

    /// Requests of `op` seen since the last [`Proxy::reset`].
    pub fn count(&self, op: S3Op) -> u64 {
        self.proxy.counts().get(&op).copied().unwrap_or(0)
    }

    /// Restarts the request counters.
    pub fn reset(&self) {
        self.proxy.reset_counts();
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.proxy.injected_total()
    }

    /// Faults injected so far, by kind.
    pub fn injected_by_kind(&self) -> BTreeMap<String, u64> {
        self.proxy.injected()
    }
}

/// A rule for every request of `op` from the `nth` on, `count` of them (0 = all).
pub fn rule(op: S3Op, nth: u64, count: u64, fault: Fault, key: Option<&str>) -> Rule {
    Rule {
        op,
        nth,
        count,
        fault,
        path_contains: key.map(str::to_string),
    }
}

/// Sidecars started by this test binary: what the watchdog must kill and detach.
static RUNNING: Mutex<Vec<(u32, PathBuf)>> = Mutex::new(Vec::new());

/// A running `s3mount-sidecar`.
#[derive(Debug)]
pub struct Sidecar {
    child: Option<Child>,
    pub mountpoint: PathBuf,
    pub cache_dir: PathBuf,
    pub log_path: PathBuf,
}

/// Where a sidecar runs: mountpoint, cache and log, kept across restarts.
#[derive(Debug)]
pub struct Site {
    pub dir: tempfile::TempDir,
}

impl Site {
    /// A fresh directory holding `mnt/`, `cache/` and the logs.
    pub fn new() -> Site {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::create_dir(dir.path().join("mnt")).expect("mountpoint");
        Site { dir }
    }

    /// The mountpoint.
    pub fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt().join(rel)
    }

    /// Starts a sidecar here (log `sidecar-N.log`, N counting the starts).
    pub fn start(&self, endpoint: &str, extra: &[&str]) -> Sidecar {
        let n = (1..)
            .find(|n| !self.dir.path().join(format!("sidecar-{n}.log")).exists())
            .unwrap_or(1);
        Sidecar::start(
            endpoint,
            self.mnt(),
            self.dir.path().join("cache"),
            self.dir.path().join(format!("sidecar-{n}.log")),
            extra,
        )
    }
}

impl Sidecar {
    fn start(
        endpoint: &str,
        mountpoint: PathBuf,
        cache_dir: PathBuf,
        log_path: PathBuf,
        extra: &[&str],
    ) -> Sidecar {
        let bin = sidecar_bin();
        let log = File::create(&log_path).expect("sidecar log");
        let health = format!("127.0.0.1:{}", free_port());
        let child = Command::new(&bin)
            .arg(format!("--bucket={BUCKET}"))
            .arg(format!("--mountpoint={}", mountpoint.display()))
            .arg(format!("--endpoint={endpoint}"))
            .arg("--path-style")
            .arg(format!("--cache-dir={}", cache_dir.display()))
            .arg(format!("--health-listen={health}"))
            .args(extra)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env_remove("AWS_SESSION_TOKEN")
            .env("NO_PROXY", "127.0.0.1")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start s3mount-sidecar");
        RUNNING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((child.id(), mountpoint.clone()));
        let mut sidecar = Sidecar {
            child: Some(child),
            mountpoint,
            cache_dir,
            log_path,
        };
        let probe = Command::new(&bin)
            .args(["probe", "--wait", "30s", "--mountpoint"])
            .arg(&sidecar.mountpoint)
            .stdout(Stdio::null())
            .status()
            .expect("run probe");
        if !probe.success() {
            let log = sidecar.log();
            sidecar.kill_hard();
            panic!("sidecar did not come up; log:\n{log}");
        }
        sidecar
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("sidecar is running").id()
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// The sidecar's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log has `n` lines containing `text`; fails after `within`.
    pub fn wait_for_log(&self, text: &str, n: usize, within: Duration) {
        let start = std::time::Instant::now();
        while self.log().lines().filter(|l| l.contains(text)).count() < n {
            assert!(
                start.elapsed() < within,
                "no {n} lines {text:?} in the log within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Peak resident memory (`VmHWM`) in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    /// Sends a signal.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal the sidecar");
    }

    /// Waits up to `timeout` for the exit; returns the status and how long it took.
    pub fn wait(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        let child = self.child.as_mut().expect("sidecar is running");
        loop {
            if let Some(status) = child.try_wait().expect("poll the sidecar") {
                self.forget();
                return (status, start.elapsed());
            }
            if start.elapsed() > timeout {
                let log = self.log();
                self.kill_hard();
                panic!("sidecar did not exit within {timeout:?}; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait (up to 60 s); returns the status, the time to exit and the log.
    pub fn stop(mut self) -> (ExitStatus, Duration, String) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let (status, took) = self.wait(Duration::from_secs(60));
        let log = self.log();
        assert!(
            !log.contains(SECRET_KEY),
            "the sidecar log contains the secret key:\n{log}"
        );
        (status, took, log)
    }

    /// SIGKILL; the mount is left behind, dead.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.forget();
    }

    fn forget(&mut self) {
        self.child = None;
        let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|(_, m)| m != &self.mountpoint);
    }
}

impl Drop for Sidecar {
    /// A sidecar the test did not stop (it failed, or forgot): killed, and its dead mount
    /// removed, so no test leaves a mount behind.
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill_hard();
            detach_all(&self.mountpoint);
        }
    }
}

/// Removes every mount layer at `path` (test cleanup after a SIGKILL).
pub fn detach_all(path: &Path) {
    for _ in 0..8 {
        if mount_layers(path) == 0 {
            return;
        }
        let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// How many mounts `/proc/self/mountinfo` lists at `path`.
pub fn mount_layers(path: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let wanted = path.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .filter(|l| l.split(' ').nth(4) == Some(wanted.as_str()))
        .count()
}

/// Bounds a test's time; see the module doc.
pub struct Watchdog {
    done: Arc<AtomicBool>,
}

impl Watchdog {
    /// Fires after `limit` unless dropped first.
    pub fn new(test: &'static str, limit: Duration) -> Watchdog {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < limit {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("{test}: no result within {limit:?}; killing its sidecars and failing");
            let running = RUNNING.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for (pid, mnt) in running {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                detach_all(&mnt);
            }
            std::process::exit(101);
        });
        Watchdog { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so that every byte read can be checked.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Closes `f` and returns what close(2) said (dropping a `File` discards it).
pub fn close_checked(f: File) -> std::io::Result<()> {
    nix::unistd::close(f).map_err(std::io::Error::from)
}

/// The errno of a failed call, or `None` when it succeeded.
pub fn errno_of<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error().unwrap_or(-1))
}

/// Asserts two byte strings are equal without printing megabytes.
pub fn assert_bytes(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let first = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: {} bytes, want {}; first difference at byte {first}",
            got.len(),
            want.len()
        );
    }
}

/// Prints the test's summary line: `reliability: TEST faults=N bytes_verified=N EXTRA`.
pub fn summary(test: &str, faults: u64, bytes_verified: u64, extra: &str) {
    let line = format!(
        "reliability: {test} faults_injected={faults} faults_survived_or_reported={faults} bytes_verified={bytes_verified} {extra}"
    );
    println!("{line}");
    // Also kept for the summary `make test` prints at its end (see Makefile, test-summary).
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability-summary.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(file) {
        let _ = writeln!(f, "{line}");
    }
}
