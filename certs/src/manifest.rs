//! Kubernetes artefacts that carry the certificates: the TLS Secret the webhook Deployment
//! mounts, and the base64 `caBundle` string.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Serialize;

use crate::ca::{Ca, ServingCert};

/// Secret key holding the CA certificate (PEM), as cert-manager names it too.
pub const CA_CERT_KEY: &str = "ca.crt";
/// Secret key holding the CA private key; only the webhook's `--self-signed` CA Secret has it.
pub const CA_KEY_KEY: &str = "ca.key";
/// Secret key holding the serving certificate (PEM), per the `kubernetes.io/tls` type.
pub const TLS_CERT_KEY: &str = "tls.crt";
/// Secret key holding the serving private key (PEM), per the `kubernetes.io/tls` type.
pub const TLS_KEY_KEY: &str = "tls.key";

/// What can go wrong while writing a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{what} {value:?} is not a valid Kubernetes object name (DNS-1123 subdomain)")]
    InvalidName { what: &'static str, value: String },
    #[error("could not serialise the manifest: {0}")]
    Serialize(#[from] serde_yaml::Error),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Secret<'a> {
    api_version: &'a str,
    kind: &'a str,
    metadata: Metadata<'a>,
    #[serde(rename = "type")]
    type_: &'a str,
    data: BTreeMap<&'a str, String>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    name: &'a str,
    namespace: &'a str,
    labels: BTreeMap<&'a str, &'a str>,
}

/// Base64 of a PEM document, the form `caBundle` fields take.
pub fn ca_bundle(pem: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(pem.as_bytes())
}

/// A `kubernetes.io/tls` Secret (YAML) with `tls.crt`, `tls.key` and `ca.crt`; the CA's private
/// key is not included, so the Secret can only serve, never issue.
pub fn tls_secret_manifest(
    name: &str,
    namespace: &str,
    ca: &Ca,
    serving: &ServingCert,
) -> Result<String, ManifestError> {
    check_name("Secret name", name)?;
    check_name("namespace", namespace)?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let secret = Secret {
        api_version: "v1",
        kind: "Secret",
        metadata: Metadata {
            name,
            namespace,
            labels: BTreeMap::from([
                ("app.kubernetes.io/name", "s3mount"),
                ("app.kubernetes.io/component", "webhook"),
            ]),
        },
        type_: "kubernetes.io/tls",
        data: BTreeMap::from([
            (CA_CERT_KEY, b64(ca.cert_pem())),
            (TLS_CERT_KEY, b64(serving.cert_pem())),
            (TLS_KEY_KEY, b64(serving.key_pem())),
        ]),
    };
    Ok(serde_yaml::to_string(&secret)?)
}

fn check_name(what: &'static str, value: &str) -> Result<(), ManifestError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if value.len() <= 253 && value.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(ManifestError::InvalidName {
            what,
            value: value.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DEFAULT_CA_VALIDITY, DEFAULT_SERVING_VALIDITY, generate_ca};

    #[test]
    fn tls_secret_manifest_carries_the_pair_and_ca_but_not_the_ca_key() {
        let ca = generate_ca("test-ca", DEFAULT_CA_VALIDITY).unwrap();
        let leaf = ca
            .issue_serving("web", "ns", &[], DEFAULT_SERVING_VALIDITY)
            .unwrap();
        let yaml = tls_secret_manifest("web-tls", "ns", &ca, &leaf).unwrap();
        let doc: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(doc["kind"], "Secret");
        assert_eq!(doc["type"], "kubernetes.io/tls");
        assert_eq!(doc["metadata"]["namespace"], "ns");
        let decode = |key: &str| {
            let text = doc["data"][key].as_str().unwrap();
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(text).unwrap()).unwrap()
        };
        assert_eq!(decode(TLS_CERT_KEY), leaf.cert_pem());
        assert_eq!(decode(TLS_KEY_KEY), leaf.key_pem());
        assert_eq!(decode(CA_CERT_KEY), ca.cert_pem());
        assert!(doc["data"][CA_KEY_KEY].is_null());
        assert!(!yaml.contains(ca.key_pem()));
    }

    #[test]
    fn tls_secret_manifest_rejects_invalid_object_names() {
        let ca = generate_ca("test-ca", DEFAULT_CA_VALIDITY).unwrap();
        let leaf = ca
            .issue_serving("web", "ns", &[], DEFAULT_SERVING_VALIDITY)
            .unwrap();
        for (name, ns) in [("Web", "ns"), ("web", ""), ("web_tls", "ns"), ("web", "ns/x")] {
            let err = tls_secret_manifest(name, ns, &ca, &leaf).unwrap_err();
            assert!(
                matches!(err, ManifestError::InvalidName { .. }),
                "{name:?} {ns:?}: {err}"
            );
        }
    }
}
