//! Baseline for `make bench-webhook`: a bare axum + rustls endpoint that answers every POST with a
//! fixed AdmissionReview body, served with the same TLS configuration as the webhook. Like any real
//! endpoint (and like the webhook) it takes in the whole request body before answering; it does
//! nothing else with it.
//!
//! `bench_bare --cert-dir DIR --listen ADDR`: writes a self-signed `DIR/cert.pem` and
//! `DIR/key.pem` for localhost/127.0.0.1 when they are absent (the webhook under test then uses
//! the same files), and serves until killed.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use clap::Parser;

use s3mount_webhook::tls;

const FIXED: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"00000000-0000-0000-0000-000000000000","allowed":true,"status":{}}}"#;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    cert_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:18444")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (cert, key) = (args.cert_dir.join("cert.pem"), args.cert_dir.join("key.pem"));
    if !cert.exists() || !key.exists() {
        std::fs::create_dir_all(&args.cert_dir)?;
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        std::fs::write(&key, ck.signing_key.serialize_pem())?;
        std::fs::write(&cert, ck.cert.pem())?;
    }
    let (config, _) = tls::load(&cert, &key)?;
    let app = Router::new().route(
        "/mutate",
        post(|body: Bytes| async move {
            std::hint::black_box(body);
            ([("content-type", "application/json")], FIXED)
        }),
    );
    eprintln!("bench_bare serving on https://{}", args.listen);
    axum_server::bind_rustls(args.listen, config)
        .serve(app.into_make_service())
        .await?;
    Ok(())
}
