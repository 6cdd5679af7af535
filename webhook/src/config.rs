//! Command line of `s3mount-webhook`; every flag also reads `S3MOUNT_WEBHOOK_<FLAG>` (`--namespace`:
//! `POD_NAMESPACE`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Default HTTPS address of `/mutate`.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
/// Default plain-HTTP address of `/livez`, `/readyz` and `/metrics`.
pub const DEFAULT_HEALTH_LISTEN: &str = "0.0.0.0:8080";
/// Default sidecar image.
pub const DEFAULT_SIDECAR_IMAGE: &str = "s3mount-sidecar:latest";
/// Default namespace opt-in label.
pub const DEFAULT_OPT_IN_LABEL: &str = "s3.mount/inject=enabled";
/// Default Secret holding the CA that `--self-signed` replicas share.
pub const DEFAULT_SELF_SIGNED_SECRET: &str = "s3mount-webhook-ca";
/// Default MutatingWebhookConfiguration whose caBundle `--self-signed` sets.
pub const DEFAULT_WEBHOOK_CONFIGURATION: &str = "s3mount";
/// Default Service the serving certificate is issued for.
pub const DEFAULT_SERVICE_NAME: &str = "s3mount-webhook";
/// Default namespace of that Service and of the CA Secret.
pub const DEFAULT_NAMESPACE: &str = "s3mount";

/// Mutating admission webhook that injects the s3mount FUSE sidecar into annotated pods.
#[derive(Debug, Clone, Parser)]
#[command(name = "s3mount-webhook", version)]
pub struct Config {
    /// HTTPS address serving POST /mutate.
    #[arg(long, env = "S3MOUNT_WEBHOOK_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// PEM certificate chain of the serving certificate (re-read when it changes).
    #[arg(long, env = "S3MOUNT_WEBHOOK_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key of the serving certificate (re-read when it changes).
    #[arg(long, env = "S3MOUNT_WEBHOOK_TLS_KEY")]
    pub tls_key: PathBuf,
    /// How often the certificate and key files are checked for changes.
    #[arg(long, env = "S3MOUNT_WEBHOOK_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = positive_duration)]
    pub tls_reload_interval: Duration,
    /// Plain-HTTP address serving /livez, /readyz and /metrics.
    #[arg(long, env = "S3MOUNT_WEBHOOK_HEALTH_LISTEN", default_value = DEFAULT_HEALTH_LISTEN)]
    pub health_listen: SocketAddr,
    /// Image of the injected sidecar.
    #[arg(long, env = "S3MOUNT_WEBHOOK_SIDECAR_IMAGE", default_value = DEFAULT_SIDECAR_IMAGE, value_parser = non_empty)]
    pub sidecar_image: String,
    /// imagePullPolicy of the injected sidecar (default: the Kubernetes default for the image).
    #[arg(long, env = "S3MOUNT_WEBHOOK_SIDECAR_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub sidecar_image_pull_policy: Option<String>,
    /// How the sidecar runs: native init-container sidecar, legacy regular container, or auto
    /// (native when the API server is >= 1.29).
    #[arg(long, env = "S3MOUNT_WEBHOOK_SIDECAR_MODE", value_enum, default_value_t = SidecarMode::Auto)]
    pub sidecar_mode: SidecarMode,
    /// The mode `auto` uses when the API server's version cannot be read.
    #[arg(long, env = "S3MOUNT_WEBHOOK_SIDECAR_MODE_FALLBACK", value_enum, default_value_t = FixedMode::Native)]
    pub sidecar_mode_fallback: FixedMode,
    /// Whether to use the Kubernetes API (version detection, namespace watch): `auto` uses it when
    /// a configuration is found, `off` never does.
    #[arg(long, env = "S3MOUNT_WEBHOOK_KUBE_API", value_enum, default_value_t = KubeApi::Auto)]
    pub kube_api: KubeApi,
    /// `--self-signed` and the names it works on.
    #[command(flatten)]
    pub self_signed: SelfSignedConfig,
    /// Namespace label (`key=value`) that opts a namespace in; checked when namespaces are watched.
    #[arg(long, env = "S3MOUNT_WEBHOOK_OPT_IN_LABEL", default_value = DEFAULT_OPT_IN_LABEL, value_parser = parse_label)]
    pub opt_in_label: (String, String),
    /// Time given to in-flight requests after SIGTERM.
    #[arg(long, env = "S3MOUNT_WEBHOOK_DRAIN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Log format.
    #[arg(long, env = "S3MOUNT_WEBHOOK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Tracing filter, e.g. `info` or `s3mount_webhook=debug,info`.
    #[arg(long, env = "S3MOUNT_WEBHOOK_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// `--sidecar-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SidecarMode {
    Auto,
    Native,
    Legacy,
}

/// `--sidecar-mode-fallback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FixedMode {
    Native,
    Legacy,
}

/// `--self-signed` (see [`crate::bootstrap`]).
#[derive(Debug, Clone, clap::Args)]
pub struct SelfSignedConfig {
    /// When --tls-cert/--tls-key are not readable at start-up, make them: load (or, first of all
    /// replicas, create) the CA in --self-signed-secret, issue a certificate for
    /// --service-name.--namespace.svc, set the caBundle of --webhook-configuration, write the files.
    /// Needs the Kubernetes API.
    #[arg(long = "self-signed", env = "S3MOUNT_WEBHOOK_SELF_SIGNED")]
    pub enabled: bool,
    /// With --self-signed: the Secret (in --namespace) holding the CA all replicas share.
    #[arg(long = "self-signed-secret", env = "S3MOUNT_WEBHOOK_SELF_SIGNED_SECRET", default_value = DEFAULT_SELF_SIGNED_SECRET)]
    pub secret: String,
    /// With --self-signed: the MutatingWebhookConfiguration whose caBundle is set.
    #[arg(long, env = "S3MOUNT_WEBHOOK_WEBHOOK_CONFIGURATION", default_value = DEFAULT_WEBHOOK_CONFIGURATION)]
    pub webhook_configuration: String,
    /// With --self-signed: the webhook's Service, named in the serving certificate.
    #[arg(long, env = "S3MOUNT_WEBHOOK_SERVICE_NAME", default_value = DEFAULT_SERVICE_NAME)]
    pub service_name: String,
    /// With --self-signed: the namespace of the Service and the Secret (the manifests set
    /// POD_NAMESPACE from the downward API; this flag alone reads no S3MOUNT_WEBHOOK_ variable).
    #[arg(long, env = "POD_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
}

/// `--kube-api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KubeApi {
    Auto,
    Off,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not a label selector of the form key=value")),
    }
}

/// A duration greater than zero (a zero reload period would make the file watch spin).
fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be greater than 0, e.g. 10s".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e}; expected a duration such as 10s")),
    }
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = Config::try_parse_from(["w", "--tls-cert=c.pem", "--tls-key=k.pem"]).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.sidecar_mode, SidecarMode::Auto);
        assert_eq!(c.sidecar_mode_fallback, FixedMode::Native);
        assert_eq!(
            c.opt_in_label,
            ("s3.mount/inject".to_owned(), "enabled".to_owned())
        );
        assert!(!c.self_signed.enabled);
        assert_eq!(c.self_signed.secret, DEFAULT_SELF_SIGNED_SECRET);
        assert_eq!(c.self_signed.webhook_configuration, DEFAULT_WEBHOOK_CONFIGURATION);
        assert_eq!(c.self_signed.service_name, DEFAULT_SERVICE_NAME);
    }

    #[test]
    fn bad_flag_values_are_refused() {
        assert!(Config::try_parse_from(["w", "--tls-cert=c", "--tls-key=k", "--sidecar-mode=new"]).is_err());
        assert!(Config::try_parse_from(["w", "--tls-cert=c", "--tls-key=k", "--opt-in-label=x"]).is_err());
        assert!(Config::try_parse_from(["w", "--tls-cert=c", "--tls-key=k", "--listen=nope"]).is_err());
        assert!(Config::try_parse_from(["w"]).is_err(), "TLS files are required");
    }
}
