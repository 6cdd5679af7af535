//! A fault-injecting HTTP proxy for S3, placed between s3mount and a real test server.
//!
//! Every request is classified by S3 operation ([`S3Op`]) and counted. Rules, set through
//! [`FaultProxy::set_rules`] (in-process) or `PUT /__faults/rules` on the control port (from a
//! script), say which fault to inject into which occurrence of an operation: the `nth` matching
//! request (1-based, counted from when the rule was set) and the `count` following ones. Faults:
//! a `503 SlowDown` or `500 InternalError` answer, a connection reset in the middle of the body,
//! a body shorter than its Content-Length, a slow first byte, and a `200 OK` carrying an S3 error
//! document (what CopyObject and CompleteMultipartUpload do when they fail late).
//!
//! Requests are forwarded unchanged, Host header included, so SigV4 signatures stay valid.
//! The proxy only ever connects to the upstream it was given, which must be a loopback address.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// The S3 operation of a request, from its method, query and headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum S3Op {
    /// ListObjectsV2 (or V1).
    List,
    /// HeadObject / HeadBucket.
    Head,
    /// GetObject.
    Get,
    /// PutObject.
    Put,
    /// CopyObject.
    Copy,
    /// DeleteObject.
    Delete,
    /// DeleteObjects (POST ?delete).
    DeleteMulti,
    /// CreateMultipartUpload.
    MpuCreate,
    /// UploadPart.
    MpuPart,
    /// UploadPartCopy.
    MpuPartCopy,
    /// CompleteMultipartUpload.
    MpuComplete,
    /// AbortMultipartUpload.
    MpuAbort,
    /// Anything else (bucket-level calls).
    Other,
}

impl S3Op {
    /// Classifies a request.
    pub fn classify(method: &http::Method, query: &str, headers: &http::HeaderMap) -> S3Op {
        let has = |k: &str| {
            query
                .split('&')
                .any(|p| p == k || p.starts_with(&format!("{k}=")))
        };
        let copy = headers.contains_key("x-amz-copy-source");
        match *method {
            http::Method::GET if has("list-type") || has("prefix") || has("delimiter") => S3Op::List,
            http::Method::GET => S3Op::Get,
            http::Method::HEAD => S3Op::Head,
            http::Method::PUT if has("partNumber") && copy => S3Op::MpuPartCopy,
            http::Method::PUT if has("partNumber") => S3Op::MpuPart,
            http::Method::PUT if copy => S3Op::Copy,
            http::Method::PUT => S3Op::Put,
            http::Method::POST if has("uploads") => S3Op::MpuCreate,
            http::Method::POST if has("uploadId") => S3Op::MpuComplete,
            http::Method::POST if has("delete") => S3Op::DeleteMulti,
            http::Method::DELETE if has("uploadId") => S3Op::MpuAbort,
            http::Method::DELETE => S3Op::Delete,
            _ => S3Op::Other,
        }
    }
}

/// What to do to a matching request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// Answer `503 SlowDown` without forwarding.
    SlowDown,
    /// Answer `500 InternalError` without forwarding.
    InternalError,
    /// Answer `403 AccessDenied` without forwarding.
    AccessDenied,
    /// Forward, then cut the connection after `after_bytes` bytes of the body.
    ResetMidBody {
        /// Bytes of the body sent before the reset.
        after_bytes: u64,
    },
    /// Forward, keep the Content-Length, and end the body after half of it.
    ShortBody,
    /// Wait before forwarding.
    SlowFirstByte {
        /// Delay in milliseconds.
        millis: u64,
    },
    /// Forward, then replace the answer with `200 OK` and an S3 `<Error>` document.
    ErrorDocument200,
}

/// One scripted fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Which operation it applies to.
    pub op: S3Op,
    /// First matching request (1-based) that gets the fault.
    #[serde(default = "one")]
    pub nth: u64,
    /// How many consecutive matching requests get it (0 = every one from `nth` on).
    #[serde(default = "one")]
    pub count: u64,
    /// The fault.
    pub fault: Fault,
    /// Only requests whose path contains this string (e.g. a key), when set.
    #[serde(default)]
    pub path_contains: Option<String>,
}

fn one() -> u64 {
    1
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<(Rule, u64)>,
    counts: BTreeMap<S3Op, u64>,
    injected: BTreeMap<String, u64>,
}

/// A running proxy.
#[derive(Debug, Clone)]
pub struct FaultProxy {
    /// Address clients use as their S3 endpoint.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

type ProxyBody = BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

impl FaultProxy {
    /// Starts a proxy on `listen` (port 0 for any) forwarding to `upstream` (`host:port`, loopback).
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        if !upstream.ip().is_loopback() || !listen.ip().is_loopback() {
            return Err(std::io::Error::other(
                "the fault proxy only works on loopback addresses",
            ));
        }
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build_http();
        let proxy = FaultProxy {
            addr,
            state: state.clone(),
        };
        let this = proxy.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let this = this.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let this = this.clone();
                        let client = client.clone();
                        async move { Ok::<_, Infallible>(this.handle(req, upstream, client).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(proxy)
    }

    /// Replaces the rules; occurrence counters restart from zero for the new rules.
    pub fn set_rules(&self, rules: Vec<Rule>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.rules = rules.into_iter().map(|r| (r, 0)).collect();
    }

    /// Requests seen so far, by operation.
    pub fn counts(&self) -> BTreeMap<S3Op, u64> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counts
            .clone()
    }

    /// Resets the request counters.
    pub fn reset_counts(&self) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counts
            .clear();
    }

    /// Faults injected so far, by `OP fault-kind`.
    pub fn injected(&self) -> BTreeMap<String, u64> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .injected
            .clone()
    }

    /// Total faults injected so far.
    pub fn injected_total(&self) -> u64 {
        self.injected().values().sum()
    }

    fn pick(&self, op: S3Op, path: &str) -> Option<Fault> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *st.counts.entry(op).or_default() += 1;
        let mut chosen = None;
        for (rule, seen) in st.rules.iter_mut() {
            if rule.op != op || rule.path_contains.as_deref().is_some_and(|p| !path.contains(p)) {
                continue;
            }
            *seen += 1;
            let hit = *seen >= rule.nth && (rule.count == 0 || *seen < rule.nth + rule.count);
            if hit && chosen.is_none() {
                chosen = Some(rule.fault.clone());
            }
        }
        if let Some(f) = &chosen {
            let name = serde_json::to_value(f)
                .ok()
                .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
                .unwrap_or_default();
            *st.injected.entry(format!("{op:?} {name}")).or_default() += 1;
        }
        chosen
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        upstream: SocketAddr,
        client: Client<HttpConnector, Incoming>,
    ) -> Response<ProxyBody> {
        let path = req.uri().path().to_string();
        if path.starts_with("/__faults/") {
            return self.control(req).await;
        }
        let query = req.uri().query().unwrap_or("").to_string();
        let op = S3Op::classify(req.method(), &query, req.headers());
        let fault = self.pick(op, &path);
        match &fault {
            Some(Fault::SlowDown) => return s3_error(503, "SlowDown", "Please reduce your request rate."),
            Some(Fault::InternalError) => return s3_error(500, "InternalError", "Injected internal error."),
            Some(Fault::AccessDenied) => return s3_error(403, "AccessDenied", "Injected access denied."),
            Some(Fault::SlowFirstByte { millis }) => tokio::time::sleep(Duration::from_millis(*millis)).await,
            _ => {}
        }
        let (mut parts, body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        parts.uri = match format!("http://{upstream}{pq}").parse() {
            Ok(u) => u,
            Err(_) => return s3_error(400, "InvalidURI", "bad request URI"),
        };
        let resp = match client.request(Request::from_parts(parts, body)).await {
            Ok(r) => r,
            Err(e) => return s3_error(502, "BadGateway", &format!("upstream: {e}")),
        };
        let (parts, body) = resp.into_parts();
        match fault {
            Some(Fault::ErrorDocument200) => {
                let _ = body.collect().await;
                let doc = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError</Code>\
                           <Message>We encountered an internal error. Please try again.</Message></Error>";
                let mut r = Response::new(full(doc));
                r.headers_mut()
                    .insert("content-type", http::HeaderValue::from_static("application/xml"));
                r
            }
            Some(Fault::ResetMidBody { after_bytes }) => cut_body(parts, body, Some(after_bytes)).await,
            Some(Fault::ShortBody) => cut_body(parts, body, None).await,
            _ => Response::from_parts(parts, body.map_err(std::io::Error::other).boxed()),
        }
    }

    async fn control(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        match (method, path.as_str()) {
            (http::Method::PUT, "/__faults/rules") => {
                let body = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return plain(400, &format!("reading body: {e}")),
                };
                match serde_json::from_slice::<Vec<Rule>>(&body) {
                    Ok(rules) => {
                        self.set_rules(rules);
                        plain(200, "ok")
                    }
                    Err(e) => plain(400, &format!("rules must be a JSON array of rules: {e}")),
                }
            }
            (http::Method::GET, "/__faults/counts") => {
                let body = serde_json::json!({"requests": self.counts(), "injected": self.injected()});
                plain(200, &body.to_string())
            }
            (http::Method::DELETE, "/__faults/counts") => {
                self.reset_counts();
                plain(200, "ok")
            }
            _ => plain(404, "unknown control path"),
        }
    }
}

async fn cut_body(parts: http::response::Parts, body: Incoming, after: Option<u64>) -> Response<ProxyBody> {
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return s3_error(502, "BadGateway", &format!("upstream body: {e}")),
    };
    let keep = match after {
        Some(n) => (n as usize).min(bytes.len().saturating_sub(1)),
        None => bytes.len() / 2,
    };
    let head = bytes.slice(..keep);
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
        Ok(Frame::data(head)),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "injected: connection cut mid-body",
        )),
    ];
    let mut resp = Response::from_parts(parts, StreamBody::new(futures::stream::iter(frames)).boxed());
    resp.headers_mut()
        .insert("content-length", http::HeaderValue::from(bytes.len()));
    resp
}

fn s3_error(status: u16, code: &str, message: &str) -> Response<ProxyBody> {
    let doc = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    let mut r = Response::new(full(doc));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert("content-type", http::HeaderValue::from_static("application/xml"));
    r
}

fn plain(status: u16, text: &str) -> Response<ProxyBody> {
    let mut r = Response::new(full(text.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_by_s3_operation() {
        let h = http::HeaderMap::new();
        let mut copy = http::HeaderMap::new();
        copy.insert("x-amz-copy-source", http::HeaderValue::from_static("/b/k"));
        assert_eq!(
            S3Op::classify(&http::Method::GET, "list-type=2&prefix=a%2F", &h),
            S3Op::List
        );
        assert_eq!(S3Op::classify(&http::Method::GET, "", &h), S3Op::Get);
        assert_eq!(
            S3Op::classify(&http::Method::PUT, "partNumber=1&uploadId=x", &h),
            S3Op::MpuPart
        );
        assert_eq!(
            S3Op::classify(&http::Method::PUT, "partNumber=1&uploadId=x", &copy),
            S3Op::MpuPartCopy
        );
        assert_eq!(S3Op::classify(&http::Method::PUT, "", &copy), S3Op::Copy);
        assert_eq!(
            S3Op::classify(&http::Method::POST, "uploads", &h),
            S3Op::MpuCreate
        );
        assert_eq!(
            S3Op::classify(&http::Method::POST, "uploadId=x", &h),
            S3Op::MpuComplete
        );
        assert_eq!(
            S3Op::classify(&http::Method::DELETE, "uploadId=x", &h),
            S3Op::MpuAbort
        );
    }

    #[test]
    fn rules_hit_exactly_the_scripted_occurrences() {
        let p = FaultProxy {
            addr: "127.0.0.1:1".parse().unwrap(),
            state: Default::default(),
        };
        p.set_rules(vec![Rule {
            op: S3Op::Get,
            nth: 2,
            count: 2,
            fault: Fault::SlowDown,
            path_contains: None,
        }]);
        let hits: Vec<bool> = (0..5).map(|_| p.pick(S3Op::Get, "/b/k").is_some()).collect();
        assert_eq!(hits, [false, true, true, false, false]);
        assert_eq!(p.counts()[&S3Op::Get], 5);
        assert_eq!(p.injected_total(), 2);
    }
}
