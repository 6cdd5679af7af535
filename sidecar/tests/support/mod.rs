//! Test support: real S3 servers on loopback, started per test and killed on drop.
//!
//! Use it from an integration test with `mod support;`. The API:
//!
//! - [`S3Server::start`]`(`[`ServerKind`]`)`: starts `rclone serve s3` (serving a fresh temporary
//!   directory) or moto's server on a free `127.0.0.1` port, with credentials
//!   [`ACCESS_KEY`]/[`SECRET_KEY`], creates the bucket [`BUCKET`] and waits until it answers.
//!   Binaries come from the checkout's `.venv/bin` (installed by `scripts/install-python.sh`;
//!   `S3MOUNT_VENV` points elsewhere); a missing binary fails the test naming that script.
//! - [`S3Server::both`]: one of each, for tests that must hold on both servers.
//! - [`S3Server::endpoint`], [`S3Server::config`] (an [`S3Config`] for path-style, signed access,
//!   no proxy, fast retries), [`S3Server::store`] (an [`S3Store`] on it).
//! - [`S3Server::put_direct`] / [`S3Server::get_direct`]: write and read an object without the
//!   code under test: for rclone by writing the file in the served directory, for moto by a plain
//!   HTTP/1.1 request on a raw socket (moto does not check signatures).
//! - Dropping the server kills the process and removes its directory.
//!
//! Differences between the servers that tests must know: rclone is backed by a filesystem, so it
//! cannot hold both `a` and `a/b`, and it pages listings its own way; moto holds any key set.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_credential_types::Credentials;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use s3mount_sidecar::s3::{RetryConfig, S3Config, S3Store};

/// The bucket every server is started with.
pub const BUCKET: &str = "test-bucket";
/// Access key the servers accept.
pub const ACCESS_KEY: &str = "s3mount-test-access";
/// Secret key the servers accept.
pub const SECRET_KEY: &str = "s3mount-test-secret";

/// moto does not check signatures but gives anonymous requests no access to objects that signed
/// requests wrote; a well-formed header with our access key and a dummy signature is enough.
const AUTH: &str = "AWS4-HMAC-SHA256 Credential=s3mount-test-access/20240101/us-east-1/s3/aws4_request, \
                    SignedHeaders=host, Signature=0000000000000000000000000000000000000000000000000000000000000000";

const KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// `rclone serve s3` over a local directory.
    Rclone,
    /// moto's standalone server.
    Moto,
}

/// A running S3 server, killed on drop.
#[derive(Debug)]
pub struct S3Server {
    /// Which server this is.
    pub kind: ServerKind,
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

fn venv_bin(name: &str) -> PathBuf {
    let venv = match std::env::var_os("S3MOUNT_VENV") {
        Some(v) => PathBuf::from(v),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("sidecar has a parent")
            .join(".venv"),
    };
    let path = venv.join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `bash scripts/install-python.sh` (make test does it)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port on 127.0.0.1");
    listener.local_addr().expect("local address").port()
}

impl S3Server {
    /// Starts a server of `kind` with the bucket [`BUCKET`] created.
    pub fn start(kind: ServerKind) -> S3Server {
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).expect("server log file");
        let mut cmd = match kind {
            ServerKind::Rclone => {
                let root = dir.path().join("root");
                std::fs::create_dir_all(root.join(BUCKET)).expect("bucket directory");
                let mut c = Command::new(venv_bin("rclone"));
                c.arg("serve")
                    .arg("s3")
                    .arg("--addr")
                    .arg(format!("127.0.0.1:{port}"))
                    .arg("--auth-key")
                    .arg(format!("{ACCESS_KEY},{SECRET_KEY}"))
                    // Files written directly into the directory must show at once.
                    .arg("--dir-cache-time")
                    .arg("0s")
                    .arg(&root)
                    .env("RCLONE_CONFIG", "/dev/null");
                c
            }
            ServerKind::Moto => {
                let mut c = Command::new(venv_bin("moto_server"));
                c.arg("-H").arg("127.0.0.1").arg("-p").arg(port.to_string());
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        // Make sure no proxy setting sends loopback traffic elsewhere.
        for var in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            cmd.env_remove(var);
        }
        let child = cmd.spawn().expect("start the S3 server");
        let mut server = S3Server {
            kind,
            port,
            child,
            dir,
        };
        server.wait_ready();
        if kind == ServerKind::Moto {
            let (status, body) = server.raw("PUT", &format!("/{BUCKET}"), &[]);
            assert_eq!(
                status,
                200,
                "create bucket on moto: {}",
                String::from_utf8_lossy(&body)
            );
        }
        server
    }

    /// One server of each kind.
    pub fn both() -> Vec<S3Server> {
        vec![
            S3Server::start(ServerKind::Rclone),
            S3Server::start(ServerKind::Moto),
        ]
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("poll server") {
                panic!(
                    "{:?} server exited early with {status}; log:\n{}",
                    self.kind,
                    self.log()
                );
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                // Any HTTP answer means the server is serving.
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                if s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    .is_ok()
                {
                    let mut buf = [0u8; 12];
                    if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "{:?} server not ready after 30 s; log:\n{}",
                self.kind,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A signed, path-style configuration for this server with quick retries and no proxy.
    pub fn config(&self) -> S3Config {
        let mut cfg = S3Config::new(BUCKET, "us-east-1");
        cfg.endpoint = Some(self.endpoint());
        cfg.path_style = true;
        cfg.credentials = Some(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"));
        cfg.retry = RetryConfig {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            ..RetryConfig::default()
        };
        cfg.use_env_proxy = false;
        cfg
    }

    /// An [`S3Store`] on this server.
    pub fn store(&self) -> S3Store {
        S3Store::new(self.config()).expect("build S3Store")
    }

    /// Writes an object without going through the code under test.
    pub fn put_direct(&self, key: &str, data: &[u8]) {
        match self.kind {
            ServerKind::Rclone => {
                let path = self.dir.path().join("root").join(BUCKET).join(key);
                std::fs::create_dir_all(path.parent().expect("key path has a parent")).expect("mkdir");
                std::fs::write(&path, data).expect("write object file");
            }
            ServerKind::Moto => {
                let (status, body) = self.raw("PUT", &object_path(key), data);
                assert_eq!(
                    status,
                    200,
                    "direct PUT {key:?}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
    }

    /// Reads an object without going through the code under test; `None` if it does not exist.
    pub fn get_direct(&self, key: &str) -> Option<Vec<u8>> {
        match self.kind {
            ServerKind::Rclone => std::fs::read(self.dir.path().join("root").join(BUCKET).join(key)).ok(),
            ServerKind::Moto => {
                let (status, body) = self.raw("GET", &object_path(key), &[]);
                match status {
                    200 => Some(body),
                    404 => None,
                    s => panic!("direct GET {key:?}: HTTP {s}: {}", String::from_utf8_lossy(&body)),
                }
            }
        }
    }

    /// Deletes an object without going through the code under test (moto only: rclone's
    /// directory listings would not see a file removed behind its back at once).
    pub fn delete_direct(&self, key: &str) {
        assert_eq!(self.kind, ServerKind::Moto, "delete_direct needs moto");
        let (status, body) = self.raw("DELETE", &object_path(key), &[]);
        assert_eq!(
            status,
            204,
            "direct DELETE {key:?}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// One unsigned HTTP/1.1 request on a fresh connection; returns status and body.
    fn raw(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the server");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/octet-stream\r\n\
             Authorization: {AUTH}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        s.write_all(head.as_bytes())
            .and_then(|_| s.write_all(body))
            .expect("send request");
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).expect("read answer");
        parse_http_answer(&answer)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn object_path(key: &str) -> String {
    format!("/{BUCKET}/{}", utf8_percent_encode(key, KEEP))
}

/// Splits an HTTP/1.1 answer read to EOF into status and body (decoding chunked bodies).
fn parse_http_answer(answer: &[u8]) -> (u16, Vec<u8>) {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP answer has a header end");
    let head = String::from_utf8_lossy(&answer[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let mut body = answer[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size line");
            let size_text = String::from_utf8_lossy(&rest[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .expect("chunk size");
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    (status, body)
}

/// Waits (up to 10 s) until `cache` holds at least `n` blocks: cache writes happen in the
/// background, after the read that fetched them returned.
pub async fn wait_for_blocks(cache: &s3mount_sidecar::cache::BlockCache, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.stats().blocks < n {
        assert!(
            Instant::now() < deadline,
            "cache fill did not finish: {:?}",
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
