//! Times the pure admission path (parse + mutate + answer serialization) on one fixture, without
//! HTTP or TLS: `cargo run --release --example mutate_loop -- [FIXTURE] [ITERATIONS]`.

use std::time::Instant;

use s3mount_webhook::inject::{InjectConfig, Lifecycle};
use s3mount_webhook::review::{self, Context, NamespaceView};

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
    let started = Instant::now();
    for _ in 0..iterations {
        let v = review::parse_body(&body)?;
        let answer = review::mutate(&v, &ctx, NamespaceView::Unknown)?;
        std::hint::black_box(serde_json::to_vec(&answer.to_json())?);
    }
    let per = started.elapsed() / iterations;
    println!("{fixture}: {per:?} per request over {iterations} iterations");
    Ok(())
}
