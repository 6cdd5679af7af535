//! Running the real `s3mount-sidecar` binary against a test S3 server, through a kernel mount.
//!
//! [`Sidecar::start`] spawns the binary with the server's endpoint and credentials, waits for
//! `probe` to pass, and [`Sidecar::stop`] sends SIGTERM and checks the clean exit: code 0 and no
//! mount left. Dropping a sidecar that was not stopped kills it and detaches its mount.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};

pub const BIN: &str = env!("CARGO_BIN_EXE_s3mount-sidecar");

/// Whether this machine can run kernel-mount tests (root and /dev/fuse).
pub fn can_mount() -> bool {
    let ok = nix::unistd::geteuid().is_root() && Path::new("/dev/fuse").exists();
    if !ok {
        eprintln!("kernel-mount tests need root and /dev/fuse; `make test` runs them as root");
    }
    ok
}

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    child: Option<Child>,
    pub mountpoint: PathBuf,
    pub health: String,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sidecar {
    /// Starts a sidecar on `server` with `extra` flags, and waits until it serves.
    pub fn start(server: &S3Server, extra: &[&str]) -> Sidecar {
        let dir = tempfile::tempdir().unwrap();
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        Self::start_at(server, dir, mountpoint, extra)
    }

    /// Starts a sidecar mounting at `mountpoint` (inside `dir`, which it keeps).
    pub fn start_at(
        server: &S3Server,
        dir: tempfile::TempDir,
        mountpoint: PathBuf,
        extra: &[&str],
    ) -> Sidecar {
        let health = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("sidecar.log")).unwrap();
        let child = Command::new(BIN)
            .arg(format!("--bucket={BUCKET}"))
            .arg(format!("--mountpoint={}", mountpoint.display()))
            .arg(format!("--endpoint={}", server.endpoint()))
            .arg("--path-style")
            .arg(format!("--cache-dir={}", dir.path().join("cache").display()))
            .arg(format!("--health-listen={health}"))
            .arg("--grace-period=10s")
            .args(extra)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("NO_PROXY", "127.0.0.1")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut sidecar = Sidecar {
            child: Some(child),
            mountpoint,
            health,
            dir,
        };
        let probe = Command::new(BIN)
            .args(["probe", "--wait", "30s", "--mountpoint"])
            .arg(&sidecar.mountpoint)
            .status()
            .unwrap();
        if !probe.success() {
            let log = sidecar.log();
            sidecar.kill();
            panic!("sidecar did not come up; log:\n{log}");
        }
        sidecar
    }

    /// The sidecar's `--cache-dir`.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// The sidecar's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sidecar.log")).unwrap_or_default()
    }

    /// GETs `path` on the health server until `ok` holds of the answer or `within` has passed;
    /// returns the last answer. (`/readyz` turns ready just after the mount answers the probe.)
    pub fn health_until(
        &self,
        path: &str,
        within: Duration,
        ok: impl Fn(&(u16, String)) -> bool,
    ) -> (u16, String) {
        let deadline = Instant::now() + within;
        loop {
            let got = self.health_get(path);
            if ok(&got) || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Status code and body of a GET on the health server.
    pub fn health_get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(&self.health).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// Whether `/proc/self/mountinfo` lists the mountpoint.
    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.mountpoint)
    }

    /// Sends a signal to the sidecar.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.as_ref().unwrap().id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Waits up to `timeout` for the sidecar to exit.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                let log = self.log();
                self.kill();
                panic!("sidecar did not exit within {timeout:?}; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then checks exit code 0 and that no mount is left; returns the log.
    pub fn stop(mut self) -> String {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let status = self.wait(Duration::from_secs(30));
        let log = self.log();
        assert_eq!(status.code(), Some(0), "sidecar exit after SIGTERM; log:\n{log}");
        assert!(!self.is_mounted(), "mount left after SIGTERM");
        log
    }

    /// SIGKILL without cleanup (the mount is left behind, dead).
    pub fn kill_hard(mut self) -> (tempfile::TempDir, PathBuf) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let mountpoint = self.mountpoint.clone();
        self.mountpoint = self.dir.path().to_path_buf();
        (dir, mountpoint)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.is_mounted() {
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether `/proc/self/mountinfo` lists `path` as a mount point.
pub fn is_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let wanted = path.to_string_lossy().replace(' ', "\\040");
    info.lines().any(|l| l.split(' ').nth(4) == Some(wanted.as_str()))
}

/// Entry names of a directory, sorted.
pub fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
