//! The real binary over real TLS: serves /mutate with TLS 1.2 and 1.3, reloads a rotated
//! certificate without dropping an open connection, and on SIGTERM finishes the request in flight
//! and exits 0.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use common::fixture;

struct Webhook {
    child: Child,
    https: String,
    health: String,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn certificate(dir: &Path) -> CertificateDer<'static> {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    // Key first, then certificate: a watcher that sees only one of them must keep the old pair.
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    ck.cert.der().clone()
}

fn start(dir: &Path) -> Webhook {
    let mut child = Command::new(env!("CARGO_BIN_EXE_s3mount-webhook"))
        .args([
            "--listen=127.0.0.1:0",
            "--health-listen=127.0.0.1:0",
            "--kube-api=off",
            "--log-format=json",
        ])
        .args([
            "--sidecar-mode=native",
            "--tls-reload-interval=100ms",
            // Longer than any wait below: a server that keeps accepting after SIGTERM cannot pass
            // by reaching the drain timeout and exiting.
            "--drain-timeout=60s",
        ])
        .arg(format!("--tls-cert={}", dir.join("cert.pem").display()))
        .arg(format!("--tls-key={}", dir.join("key.pem").display()))
        .stderr(Stdio::piped())
        .spawn()
        .expect("start s3mount-webhook");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            let status = child.wait();
            panic!("webhook exited before serving: {status:?}");
        };
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if let (Some(https), Some(health)) = (v["fields"]["https"].as_str(), v["fields"]["health"].as_str()) {
            let (https, health) = (https.to_owned(), health.to_owned());
            // Keep draining stderr so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return Webhook { child, https, health };
        }
    }
}

fn connector(
    root: &CertificateDer<'static>,
    version: &'static rustls::SupportedProtocolVersion,
) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn connect(addr: &str, tls: &TlsConnector) -> std::io::Result<SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(addr).await?;
    let stream = tls
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let (send, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(send)
}

async fn post_review(send: &mut SendRequest<Full<Bytes>>) -> Value {
    let body = serde_json::to_vec(&fixture("basic-pod.json")).unwrap();
    let req = http::Request::post("/mutate")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

async fn metric(health: &str, needle: &str) -> bool {
    let Ok(mut tcp) = TcpStream::connect(health).await else {
        return false;
    };
    let req = format!("GET /metrics HTTP/1.1\r\nhost: {health}\r\nconnection: close\r\n\r\n");
    if tcp.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut out = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut out).await;
    String::from_utf8_lossy(&out).contains(needle)
}

#[tokio::test]
async fn serves_mutate_over_tls_12_and_13_and_reloads_rotated_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let first = certificate(dir.path());
    let hook = start(dir.path());
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut send = connect(&hook.https, &connector(&first, version))
            .await
            .expect("TLS handshake");
        let out = post_review(&mut send).await;
        assert_eq!(out["response"]["allowed"], true);
        assert_eq!(out["response"]["patchType"], "JSONPatch");
    }

    let mut open = connect(&hook.https, &connector(&first, &rustls::version::TLS13))
        .await
        .unwrap();
    post_review(&mut open).await;
    let second = certificate(dir.path());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metric(&hook.health, "s3mount_webhook_tls_reloads_total{result=\"ok\"} 1").await {
        assert!(Instant::now() < deadline, "certificate not reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection opened before the rotation keeps working.
    post_review(&mut open).await;
    // New connections get the new certificate: the old root no longer verifies, the new one does.
    assert!(
        connect(&hook.https, &connector(&first, &rustls::version::TLS13))
            .await
            .is_err()
    );
    let mut fresh = connect(&hook.https, &connector(&second, &rustls::version::TLS13))
        .await
        .unwrap();
    post_review(&mut fresh).await;
}

/// Reads from `stream` up to and including the first blank line: the head of one response.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::io::AsyncReadExt::read(stream, &mut byte)
            .await
            .expect("read a response head");
        assert!(
            n == 1,
            "connection closed inside a response head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let root = certificate(dir.path());
    let mut hook = start(dir.path());
    let tls = connector(&root, &rustls::version::TLS13);

    // Send the headers with `Expect: 100-continue`: hyper answers `100 Continue` only once it has
    // parsed them and the handler asks for the body, so the request is then surely in flight.
    // Then half the body, SIGTERM, and the rest once the server has stopped accepting.
    let body = serde_json::to_vec(&fixture("basic-pod.json")).unwrap();
    let tcp = TcpStream::connect(&hook.https).await.unwrap();
    let mut stream = tls
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let head = format!(
        "POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         expect: 100-continue\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    let interim = tokio::time::timeout(Duration::from_secs(10), read_head(&mut stream))
        .await
        .expect("no 100 Continue within 10 s");
    assert!(
        interim.starts_with("HTTP/1.1 100"),
        "expected 100 Continue: {interim}"
    );
    stream.write_all(&body[..body.len() / 2]).await.unwrap();
    stream.flush().await.unwrap();

    let pid = hook.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // New connections are refused (the listener is closed) while the old one drains. Connecting
    // may still succeed until the server has handled the signal, so poll.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = async {
            let tcp = TcpStream::connect(&hook.https).await?;
            tls.connect(ServerName::try_from("localhost").unwrap(), tcp).await
        };
        // Refused: connecting or the handshake fails. Accepted, or hanging for 2 s: not (yet).
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new connections were still accepted 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    stream.write_all(&body[body.len() / 2..]).await.unwrap();
    stream.flush().await.unwrap();
    let mut out = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut out)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "in-flight request answered: {text}"
    );
    assert!(text.contains("\"allowed\":true"), "{text}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = hook.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "webhook did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}
