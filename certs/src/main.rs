//! `s3mount-certs`: writes a CA and a webhook serving certificate as PEM files, optionally a TLS
//! Secret manifest, and prints the base64 `caBundle` on stdout (and nothing else there, so that
//! `CA_BUNDLE=$(s3mount-certs ...)` works).

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

use s3mount_certs::{
    CA_CERT_KEY, CA_KEY_KEY, DEFAULT_CA_COMMON_NAME, TLS_CERT_KEY, TLS_KEY_KEY, generate_ca,
    tls_secret_manifest, write_pem_file,
};

/// Exit code for bad command-line input (EX_USAGE).
const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "s3mount-certs",
    version,
    about = "Generate a CA and the s3mount webhook serving certificate"
)]
struct Args {
    /// Name of the webhook's Service.
    #[arg(long, default_value = "s3mount-webhook")]
    service: String,
    /// Namespace of the webhook's Service.
    #[arg(long, default_value = "s3mount")]
    namespace: String,
    /// Directory for ca.crt, tls.crt and tls.key (created if missing; tls.key is mode 0600).
    #[arg(long)]
    out_dir: PathBuf,
    /// Also write a kubernetes.io/tls Secret manifest (tls.crt, tls.key, ca.crt) to this file.
    #[arg(long)]
    secret_manifest: Option<PathBuf>,
    /// Name of the Secret in --secret-manifest.
    #[arg(long, default_value = "s3mount-webhook-tls")]
    secret_name: String,
    /// Extra subject alternative name (IP address or DNS name); repeat for more.
    #[arg(long = "san", value_name = "NAME_OR_IP")]
    sans: Vec<String>,
    /// Lifetime of the serving certificate in days.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=3650))]
    validity_days: u64,
    /// Lifetime of the CA in days (must be at least --validity-days).
    #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u64).range(1..=36500))]
    ca_validity_days: u64,
    /// Also write the CA private key as ca.key (only needed to issue more certificates later).
    #[arg(long)]
    keep_ca_key: bool,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            // Bad flags are usage errors, exit 64 like bad values.
            return ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
    match run(&args) {
        Ok(bundle) => {
            println!("{bundle}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("s3mount-certs: error: {err:#}");
            // Bad names, SANs or validity are usage errors; failing to write files is not.
            let usage = err.chain().any(|e| {
                e.downcast_ref::<s3mount_certs::CertError>()
                    .is_some_and(|c| !matches!(c, s3mount_certs::CertError::Write { .. }))
                    || e.downcast_ref::<s3mount_certs::ManifestError>().is_some()
            });
            ExitCode::from(if usage { EXIT_USAGE } else { 1 })
        }
    }
}

fn run(args: &Args) -> anyhow::Result<String> {
    const DAY: u64 = 24 * 3600;
    let ca = generate_ca(
        DEFAULT_CA_COMMON_NAME,
        Duration::from_secs(args.ca_validity_days * DAY),
    )?;
    let serving = ca.issue_serving(
        &args.service,
        &args.namespace,
        &args.sans,
        Duration::from_secs(args.validity_days * DAY),
    )?;
    let manifest = args
        .secret_manifest
        .as_ref()
        .map(|_| tls_secret_manifest(&args.secret_name, &args.namespace, &ca, &serving))
        .transpose()?;

    fs::create_dir_all(&args.out_dir).with_context(|| format!("creating {}", args.out_dir.display()))?;
    write_pem_file(&args.out_dir.join(CA_CERT_KEY), ca.cert_pem(), 0o644)?;
    serving.write_files(&args.out_dir.join(TLS_CERT_KEY), &args.out_dir.join(TLS_KEY_KEY))?;
    if args.keep_ca_key {
        write_pem_file(&args.out_dir.join(CA_KEY_KEY), ca.key_pem(), 0o600)?;
    }
    if let (Some(path), Some(manifest)) = (&args.secret_manifest, manifest) {
        write_pem_file(path, &manifest, 0o600)?;
    }
    eprintln!(
        "s3mount-certs: wrote {} (names: {}; IPs: {}; expires {})",
        args.out_dir.display(),
        serving.dns_names().join(", "),
        serving
            .ip_addresses()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        serving.not_after(),
    );
    Ok(ca.ca_bundle())
}
