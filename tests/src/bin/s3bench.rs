//! `s3mount-s3bench`: the direct S3 baselines `make bench` compares the FUSE clients with.
//!
//! Each subcommand runs one measurement with the sidecar's own S3 client
//! ([`s3mount_sidecar::s3::S3Store`]), so that a baseline costs what the sidecar would pay for the
//! same requests and nothing more, and prints one JSON line on stdout:
//! `{"op": ..., "bytes": N, "seconds": F, "requests": {"GET": n, ...}}`.
//! Set-up work (a HEAD for the size, building the client, filling a buffer) is not timed.
//! Endpoint and bucket come from flags, credentials from the standard `AWS_*` variables; the
//! endpoint must be a loopback server (the benchmark starts its own).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use s3mount_sidecar::s3::{S3Config, S3Store};
use s3mount_sidecar::store::{CompletedPart, ObjectStore};

#[derive(Debug, Parser)]
#[command(name = "s3mount-s3bench", about = "Direct S3 baselines for `make bench`")]
struct Args {
    /// S3 endpoint, e.g. `http://127.0.0.1:9000` (path-style addressing is used).
    #[arg(long)]
    endpoint: String,
    /// Bucket name.
    #[arg(long)]
    bucket: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Read a whole object: one GET (`--parallel 1`) or ranged GETs of `--part-size` with
    /// `--parallel` in flight.
    Get {
        #[arg(long)]
        key: String,
        #[arg(long, default_value_t = 1)]
        parallel: usize,
        #[arg(long, default_value = "8MiB", value_parser = parse_size)]
        part_size: u64,
    },
    /// Time to first byte: one ranged GET of the first `--bytes` of an object.
    Ttfb {
        #[arg(long)]
        key: String,
        #[arg(long, default_value = "4KiB", value_parser = parse_size)]
        bytes: u64,
    },
    /// Write one object of `--size`: a PUT when it fits in one part, else a multipart upload with
    /// `--parallel` parts in flight.
    Put {
        #[arg(long)]
        key: String,
        #[arg(long, value_parser = parse_size)]
        size: u64,
        #[arg(long, default_value = "8MiB", value_parser = parse_size)]
        part_size: u64,
        #[arg(long, default_value_t = 1)]
        parallel: usize,
    },
    /// Write `--count` objects of `--size` under `--prefix`, one PUT after another.
    PutMany {
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value = "4KiB", value_parser = parse_size)]
        size: u64,
    },
    /// List a prefix (with `/` as delimiter) to its last page.
    List {
        #[arg(long)]
        prefix: String,
    },
    /// HEAD the first `--count` objects of a listing of `--prefix`, one after another (the
    /// listing is not timed).
    HeadMany {
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        count: usize,
    },
}

/// Parses `123`, `4KiB`, `8MiB`, `1GiB` (binary units only; `K`, `M`, `G` mean the same).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        other => return Err(format!("unknown unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size {s:?} overflows"))
}

/// The measurement of one subcommand.
struct Outcome {
    op: &'static str,
    bytes: u64,
    seconds: f64,
    items: u64,
    /// Requests sent outside the store (the streaming GET), added to its counts.
    raw_gets: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut cfg = S3Config::new(args.bucket.clone(), "us-east-1");
    cfg.endpoint = Some(args.endpoint.clone());
    cfg.path_style = true;
    cfg.use_env_proxy = false;
    cfg.credentials = S3Config::credentials_from_env()?;
    let store = Arc::new(S3Store::new(cfg).context("building the S3 client")?);
    let out = match args.cmd {
        Cmd::Get {
            key,
            parallel,
            part_size,
        } => get(&store, &key, parallel, part_size).await?,
        Cmd::Ttfb { key, bytes } => {
            let start = Instant::now();
            let body = store.get_range(&key, 0..bytes, None).await?;
            Outcome {
                op: "ttfb",
                bytes: body.len() as u64,
                seconds: start.elapsed().as_secs_f64(),
                items: 1,
                raw_gets: 0,
            }
        }
        Cmd::Put {
            key,
            size,
            part_size,
            parallel,
        } => put(&store, &key, size, part_size, parallel).await?,
        Cmd::PutMany { prefix, count, size } => {
            let body = pattern(size as usize);
            let start = Instant::now();
            for i in 0..count {
                store.put(&format!("{prefix}{i:05}"), body.clone()).await?;
            }
            Outcome {
                op: "put-many",
                bytes: size * count as u64,
                seconds: start.elapsed().as_secs_f64(),
                items: count as u64,
                raw_gets: 0,
            }
        }
        Cmd::List { prefix } => {
            let start = Instant::now();
            let keys = list_all(&store, &prefix).await?;
            Outcome {
                op: "list",
                bytes: 0,
                seconds: start.elapsed().as_secs_f64(),
                items: keys.len() as u64,
                raw_gets: 0,
            }
        }
        Cmd::HeadMany { prefix, count } => {
            let keys = list_all(&store, &prefix).await?;
            let before = store.request_counts();
            let start = Instant::now();
            let mut n = 0;
            for key in keys.iter().take(count) {
                store
                    .head(key)
                    .await?
                    .with_context(|| format!("{key} vanished"))?;
                n += 1;
            }
            let seconds = start.elapsed().as_secs_f64();
            let mut counts = store.request_counts();
            for (op, c) in before {
                *counts.entry(op).or_default() -= c;
            }
            print_outcome(
                &Outcome {
                    op: "head-many",
                    bytes: 0,
                    seconds,
                    items: n,
                    raw_gets: 0,
                },
                &counts,
            );
            return Ok(());
        }
    };
    print_outcome(&out, &store.request_counts());
    Ok(())
}

fn print_outcome(out: &Outcome, counts: &std::collections::BTreeMap<&'static str, u64>) {
    let mut counts = counts.clone();
    *counts.entry("GET").or_default() += out.raw_gets;
    let requests: serde_json::Map<String, serde_json::Value> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(op, n)| (op.to_string(), (*n).into()))
        .collect();
    let line = serde_json::json!({
        "op": out.op,
        "bytes": out.bytes,
        "seconds": out.seconds,
        "items": out.items,
        "requests": requests,
    });
    println!("{line}");
}

/// Every key under `prefix` directly (delimiter `/`), following continuation tokens.
async fn list_all(store: &S3Store, prefix: &str) -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = store
            .list_page(prefix, Some("/"), token.as_deref(), None, None)
            .await?;
        keys.extend(page.objects.into_iter().map(|o| o.key));
        match page.next_token {
            Some(t) => token = Some(t),
            None => return Ok(keys),
        }
    }
}

async fn get(store: &Arc<S3Store>, key: &str, parallel: usize, part_size: u64) -> anyhow::Result<Outcome> {
    if parallel == 0 || part_size == 0 {
        bail!("--parallel and --part-size must be positive");
    }
    let size = store
        .head(key)
        .await?
        .with_context(|| format!("no object {key}"))?
        .size;
    let start = Instant::now();
    let bytes = if parallel == 1 {
        stream_get(store.config(), key).await?
    } else {
        // Workers take the next part from a shared counter, so `parallel` requests stay in flight
        // until the last part; each part is dropped as soon as it has arrived.
        let next = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::with_capacity(parallel);
        for _ in 0..parallel {
            let (store, next, key) = (store.clone(), next.clone(), key.to_string());
            workers.push(tokio::spawn(async move {
                let mut got = 0u64;
                loop {
                    let offset = next.fetch_add(part_size, Ordering::Relaxed);
                    if offset >= size {
                        return Ok::<u64, anyhow::Error>(got);
                    }
                    let end = (offset + part_size).min(size);
                    got += store.get_range(&key, offset..end, None).await?.len() as u64;
                }
            }));
        }
        let mut total = 0;
        for w in workers {
            total += w.await??;
        }
        total
    };
    let seconds = start.elapsed().as_secs_f64();
    if bytes != size {
        bail!("read {bytes} bytes of a {size}-byte object");
    }
    Ok(Outcome {
        op: "get",
        bytes,
        seconds,
        items: 1,
        raw_gets: u64::from(parallel == 1),
    })
}

/// One plain GET of the whole object, its body consumed chunk by chunk as it arrives and dropped,
/// so that the single-stream baseline measures the transfer, not collecting a whole object in
/// memory (which is all [`ObjectStore::get_range`] can do). Signed here with aws-sigv4.
async fn stream_get(cfg: &S3Config, key: &str) -> anyhow::Result<u64> {
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b))
    {
        bail!("the streaming GET takes only keys of unreserved characters and '/': {key:?}");
    }
    let endpoint = cfg
        .endpoint
        .as_deref()
        .context("no endpoint")?
        .trim_end_matches('/');
    let url = format!("{endpoint}/{}/{key}", cfg.bucket);
    let host = reqwest::Url::parse(&url)?.authority().to_string();
    let creds = cfg
        .credentials
        .clone()
        .context("no credentials in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")?;
    let identity = creds.into();
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&cfg.region)
        .name("s3")
        .time(std::time::SystemTime::now())
        .settings(settings)
        .build()?
        .into();
    let unsigned = [("host", host.as_str())];
    let signable = SignableRequest::new("GET", &url, unsigned.into_iter(), SignableBody::Bytes(&[]))?;
    let (instructions, _) = sign(signable, &params)?.into_parts();
    let (headers, _) = instructions.into_parts();
    let client = reqwest::Client::builder().no_proxy().build()?;
    let mut req = client.get(&url);
    for h in &headers {
        req = req.header(h.name(), h.value());
    }
    let mut resp = req.send().await?;
    if !resp.status().is_success() {
        bail!("GET {key}: HTTP {}", resp.status());
    }
    let mut total = 0u64;
    while let Some(chunk) = resp.chunk().await? {
        total += chunk.len() as u64;
    }
    Ok(total)
}

async fn put(
    store: &Arc<S3Store>,
    key: &str,
    size: u64,
    part_size: u64,
    parallel: usize,
) -> anyhow::Result<Outcome> {
    if parallel == 0 || part_size == 0 {
        bail!("--parallel and --part-size must be positive");
    }
    // One part-sized buffer, shared by every part (a `Bytes` clone is a reference count), so the
    // upload is not slowed by producing data.
    let body = pattern(part_size.min(size) as usize);
    let start = Instant::now();
    if size <= part_size {
        store.put(key, body).await?;
    } else {
        let id = store.create_multipart(key).await?;
        let count = size.div_ceil(part_size);
        let next = Arc::new(AtomicU64::new(1));
        let mut workers = Vec::with_capacity(parallel);
        for _ in 0..parallel {
            let (store, next, key, id, body) = (
                store.clone(),
                next.clone(),
                key.to_string(),
                id.clone(),
                body.clone(),
            );
            workers.push(tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let number = next.fetch_add(1, Ordering::Relaxed);
                    if number > count {
                        return Ok::<Vec<CompletedPart>, anyhow::Error>(done);
                    }
                    let len = part_size.min(size - (number - 1) * part_size) as usize;
                    done.push(
                        store
                            .upload_part(&key, &id, number as u32, body.slice(..len))
                            .await?,
                    );
                }
            }));
        }
        let mut parts = Vec::new();
        for w in workers {
            parts.extend(w.await??);
        }
        parts.sort_by_key(|p| p.part_number);
        store.complete_multipart(key, &id, &parts).await?;
    }
    Ok(Outcome {
        op: "put",
        bytes: size,
        seconds: start.elapsed().as_secs_f64(),
        items: 1,
        raw_gets: 0,
    })
}

/// `len` bytes of a non-repeating-looking pattern (a cheap xorshift), so that nothing on the way
/// can shortcut zeros.
fn pattern(len: usize) -> Bytes {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = Vec::with_capacity(len + 8);
    while buf.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        buf.extend_from_slice(&state.to_le_bytes());
    }
    buf.truncate(len);
    Bytes::from(buf)
}
