//! Times the pure admission path without HTTP or TLS, stage by stage, on one fixture:
//! `cargo run --release --example mutate_loop -- [FIXTURE] [ITERATIONS]`.
//!
//! Two paths answer the same: the one the server takes (`Review::parse`, which keeps only the
//! parts of the pod the injection reads, `Review::answer`, `Reviewed::to_body`) and the full parse
//! (`parse_body` into a `serde_json::Value`, `mutate`, `to_json`, `serde_json::to_vec`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use s3mount_webhook::inject::{InjectConfig, Lifecycle};
use s3mount_webhook::review::{self, Context, NamespaceView, Review};

fn per(iterations: u32, mut f: impl FnMut()) -> Duration {
    let started = Instant::now();
    for _ in 0..iterations {
        f();
    }
    started.elapsed() / iterations
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let fixture = args
        .next()
        .unwrap_or_else(|| "webhook/tests/fixtures/deployment-generatename.json".to_owned());
    let iterations: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10_000);
    let body = std::fs::read(&fixture)?;
    let ctx = Context {
        inject: InjectConfig {
            sidecar_image: "s3mount-sidecar:bench".to_owned(),
            lifecycle: Lifecycle::Native,
            image_pull_policy: None,
        },
        opt_in_label: ("s3.mount/inject".to_owned(), "enabled".to_owned()),
    };
    let view = NamespaceView::Unknown;

    let server = per(iterations, || {
        let answer = Review::parse(&body).and_then(|r| r.answer(&ctx, view));
        black_box(answer.map(|a| a.to_body()).ok());
    });
    let full = per(iterations, || {
        let answer = review::parse_body(&body).and_then(|v| review::mutate(&v, &ctx, view));
        black_box(answer.map(|a| serde_json::to_vec(&a.to_json())).ok());
    });
    println!(
        "{fixture} ({} bytes), per request over {iterations} iterations:",
        body.len()
    );
    println!("  server path (one pass):  {server:?}");
    println!("  full parse into a Value: {full:?}");

    let parse = per(iterations, || drop(black_box(Review::parse(&body))));
    let parsed = Review::parse(&body)?;
    let answer = per(iterations, || drop(black_box(parsed.clone().answer(&ctx, view))));
    let clone = per(iterations, || drop(black_box(parsed.clone())));
    let reviewed = parsed.answer(&ctx, view)?;
    let encode = per(iterations, || drop(black_box(reviewed.to_body())));
    println!(
        "  server path stages: parse {parse:?}, answer {:?}, encode {encode:?} ({} bytes)",
        answer.saturating_sub(clone),
        reviewed.to_body().len()
    );
    Ok(())
}
