//! Certificates for the s3mount admission webhook: a private CA, a serving certificate for the
//! webhook's Service, and the Kubernetes artefacts that carry them (a TLS Secret and the base64
//! `caBundle` of the MutatingWebhookConfiguration).
//!
//! The same functions serve three callers:
//! - the `s3mount-certs` CLI, which writes PEM files and a Secret manifest for a manual install
//!   or a local demo;
//! - the webhook's `--self-signed` mode, which converges with its sibling replicas on one CA kept
//!   in a Secret ([`converge_ca`] over its [`CaStore`]), issues its own serving certificate
//!   ([`Ca::issue_serving`], [`ServingCert::write_files`]) and patches [`Ca::ca_bundle`] into its
//!   MutatingWebhookConfiguration ([`ca_bundle_patch`]);
//! - tests, which need a CA and a `127.0.0.1` certificate for a real TLS server.
//!
//! Keys are ECDSA P-256 (accepted by every supported kube-apiserver and by rustls).

mod bootstrap;
mod ca;
mod manifest;

pub use bootstrap::{
    BootstrapError, CaStore, CreateOutcome, NoStoreError, StoredCa, ca_bundle_patch, converge_ca,
};
pub use ca::{
    Ca, CertError, DEFAULT_CA_COMMON_NAME, DEFAULT_CA_VALIDITY, DEFAULT_SERVING_VALIDITY, ServingCert,
    generate_ca, service_dns_names, write_pem_file,
};
pub use manifest::{
    CA_CERT_KEY, CA_KEY_KEY, ManifestError, TLS_CERT_KEY, TLS_KEY_KEY, ca_bundle, tls_secret_manifest,
};
