//! `S3Store` against a scripted HTTP server on loopback that answers what each test needs:
//! throttling, 5xx, cut bodies, 200s carrying errors, and the 4xx mapping.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_credential_types::Credentials;
use bytes::Bytes;
use s3mount_sidecar::s3::{Op, RetryConfig, S3Config, S3Store};
use s3mount_sidecar::store::{ObjectStore, StoreError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Starts a server that answers the n-th request with `answers[n]` (the last one repeats) and
/// closes the connection; returns the endpoint and the request lines it saw.
async fn scripted(answers: Vec<Vec<u8>>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            // Read the head, then as much body as Content-Length says.
            while let Ok(k) = sock.read(&mut tmp).await {
                if k == 0 {
                    break;
                }
                buf.extend_from_slice(&tmp[..k]);
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
                    let cl = head
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0usize);
                    if buf.len() >= p + 4 + cl {
                        break;
                    }
                }
            }
            let line = String::from_utf8_lossy(&buf)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            log.lock().unwrap().push(line);
            let answer = answers[n.min(answers.len() - 1)].clone();
            n += 1;
            let _ = sock.write_all(&answer).await;
            let _ = sock.shutdown().await;
        }
    });
    (endpoint, seen)
}

fn answer(status: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A path-style client of `endpoint` with quick retries, `attempts` of them.
fn config(endpoint: &str, attempts: u32) -> S3Config {
    let mut cfg = S3Config::new("bkt", "us-east-1");
    cfg.endpoint = Some(endpoint.to_string());
    cfg.path_style = true;
    cfg.credentials = Some(Credentials::new("AK", "SK", None, None, "test"));
    cfg.retry = RetryConfig {
        max_attempts: attempts,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        ..RetryConfig::default()
    };
    cfg.use_env_proxy = false;
    cfg
}

fn store(endpoint: &str, attempts: u32) -> S3Store {
    S3Store::new(config(endpoint, attempts)).unwrap()
}

const SLOW_DOWN: &str =
    "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";

#[tokio::test]
async fn throttling_is_retried_with_backoff_and_then_succeeds() {
    let ok = answer(
        "206 Partial Content",
        "Content-Range: bytes 0-4/5\r\nETag: \"e\"\r\n",
        "hello",
    );
    let (ep, seen) = scripted(vec![
        answer("503 Slow Down", "", SLOW_DOWN),
        answer("500 Internal Server Error", "", ""),
        ok,
    ])
    .await;
    let s = store(&ep, 5);
    assert_eq!(&s.get_range("k", 0..5, None).await.unwrap()[..], b"hello");
    assert_eq!(seen.lock().unwrap().len(), 3);
    assert_eq!(s.request_count(Op::Get), 3, "every attempt is counted");
}

#[tokio::test]
async fn persistent_throttling_is_unavailable_after_bounded_attempts_never_not_found() {
    let (ep, seen) = scripted(vec![answer("503 Slow Down", "", SLOW_DOWN)]).await;
    let s = store(&ep, 4);
    let err = s.get_range("k", 0..1, None).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable { attempts: 4, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("SlowDown"), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_an_error_never_short_data() {
    let cut = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-9/10\r\nContent-Length: 10\r\n\
                Connection: close\r\n\r\nhello"
        .to_vec();
    let (ep, seen) = scripted(vec![cut]).await;
    let s = store(&ep, 2);
    let err = s.get_range("k", 0..10, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::InvalidResponse { .. } | StoreError::Transport { .. }
        ),
        "{err:?}"
    );
    assert_eq!(seen.lock().unwrap().len(), 2, "a cut body is retried");
}

#[tokio::test]
async fn connection_errors_are_retried_then_transport() {
    // Bind then drop: nothing listens on the port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = store(&format!("http://127.0.0.1:{port}"), 3);
    let err = s.delete("k").await.unwrap_err();
    assert!(matches!(err, StoreError::Transport { .. }), "{err:?}");
    assert_eq!(s.request_count(Op::Delete), 3);
}

#[tokio::test]
async fn a_200_carrying_an_error_document_for_copy_and_complete_is_invalid_response() {
    let err_doc = "<?xml version=\"1.0\"?><Error><Code>InternalError</Code><Message>oops</Message></Error>";
    let (ep, _) = scripted(vec![answer("200 OK", "", err_doc)]).await;
    let s = store(&ep, 1);
    let err = s.copy("a", "b", 10).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidResponse { .. }), "{err:?}");
    let parts = [s3mount_sidecar::store::CompletedPart {
        part_number: 1,
        etag: "\"e\"".into(),
    }];
    let err = s.complete_multipart("b", "id", &parts).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidResponse { .. }), "{err:?}");
}

#[tokio::test]
async fn http_statuses_map_to_their_store_errors() {
    let cases = [
        ("404 Not Found", "NoSuchKey"),
        ("403 Forbidden", "AccessDenied"),
        ("412 Precondition Failed", "PreconditionFailed"),
        ("416 Range Not Satisfiable", "InvalidRange"),
        ("400 Bad Request", "InvalidArgument"),
    ];
    for (status, code) in cases {
        let body = format!("<Error><Code>{code}</Code><Message>m</Message></Error>");
        let (ep, _) = scripted(vec![answer(status, "", &body)]).await;
        let err = store(&ep, 3)
            .get_range("k", 0..1, Some("\"e\""))
            .await
            .unwrap_err();
        let ok = match status.split(' ').next().unwrap() {
            "404" => matches!(err, StoreError::NotFound(_)),
            "403" => matches!(err, StoreError::AccessDenied(_)),
            "412" => matches!(err, StoreError::PreconditionFailed(_)),
            "416" => matches!(err, StoreError::InvalidRange(_)),
            _ => matches!(err, StoreError::Http { status: 400, .. }),
        };
        assert!(ok, "{status}: {err:?}");
    }
    // A PUT answered 200 without an ETag is not a success.
    let (ep, _) = scripted(vec![answer("200 OK", "", "")]).await;
    let err = store(&ep, 1)
        .put("k", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidResponse { .. }), "{err:?}");
}

#[test]
fn retry_sleeps_are_random_below_a_doubling_cap() {
    let retry = RetryConfig {
        max_attempts: 10,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(1),
        ..RetryConfig::default()
    };
    let caps: Vec<u128> = (1..=6).map(|n| retry.backoff_cap(n).as_millis()).collect();
    assert_eq!(caps, [100, 200, 400, 800, 1000, 1000], "doubling, then capped");
    let cap = retry.backoff_cap(3);
    let sleeps: Vec<Duration> = (0..2000).map(|_| retry.backoff(3)).collect();
    assert!(sleeps.iter().all(|s| *s <= cap), "never above the cap");
    let distinct: std::collections::BTreeSet<_> = sleeps.iter().collect();
    assert!(
        distinct.len() > 1000,
        "jittered: {} distinct sleeps of 2000",
        distinct.len()
    );
    let (min, max) = (sleeps.iter().min().unwrap(), sleeps.iter().max().unwrap());
    assert!(
        *min < cap / 10 && *max > cap * 9 / 10,
        "spread over the whole range: {min:?}..{max:?}"
    );
}

/// An endpoint that accepts connections and never answers: the caller gets an error within the
/// retry time limit (plus one read timeout), not after `max_attempts` read timeouts.
#[tokio::test]
async fn an_endpoint_that_stops_answering_fails_within_the_retry_time_limit() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            keep.lock().unwrap().push(conn); // read nothing, answer nothing
        }
    });
    let mut cfg = config(&endpoint, 100);
    cfg.read_timeout = Duration::from_millis(300);
    cfg.retry.max_elapsed = Duration::from_secs(1);
    let store = S3Store::new(cfg).unwrap();
    let started = std::time::Instant::now();
    let err = store.head("k").await.unwrap_err();
    let took = started.elapsed();
    // About 1.2 s expected; the bug this guards against (max_attempts read timeouts) costs 30 s.
    assert!(took < Duration::from_secs(5), "gave up after {took:?}");
    assert!(
        took >= Duration::from_secs(1),
        "retried until the limit: {took:?}"
    );
    assert!(matches!(err, StoreError::Transport { .. }), "{err}");
    let attempts = held.lock().unwrap().len();
    assert!((2..100).contains(&attempts), "{attempts} connections");
}
