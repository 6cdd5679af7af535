//! The private CA and the webhook serving certificate it issues.
//!
//! A [`Ca`] is either generated ([`generate_ca`]) or loaded from PEM ([`Ca::from_pem`]); loading
//! is how several webhook replicas converge on one CA: the first stores the CA in a Secret, the
//! others read it back and issue their own serving certificates from it, so one `caBundle`
//! trusts every replica.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

/// Common name of the CA the CLI and the webhook's `--self-signed` mode generate.
pub const DEFAULT_CA_COMMON_NAME: &str = "s3mount-webhook-ca";
/// Lifetime of a generated CA: ten years, so that it is rotated by reinstalling, not by surprise.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a serving certificate: one year.
pub const DEFAULT_SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far `notBefore` is set in the past, so that a node whose clock lags a little still accepts.
const CLOCK_SKEW_ALLOWANCE: time::Duration = time::Duration::minutes(5);

/// What can go wrong while generating, loading or issuing certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(
        "{what} {value:?} is not a valid DNS-1123 label (lowercase letters, digits and '-', 1-63 characters)"
    )]
    InvalidLabel { what: &'static str, value: String },
    #[error("subject alternative name {0:?} is neither an IP address nor a valid DNS name")]
    InvalidSan(String),
    #[error("CA common name must not be empty")]
    EmptyCommonName,
    #[error("validity must be longer than zero and shorter than 100 years, got {0:?}")]
    InvalidValidity(Duration),
    #[error("the serving certificate would expire at {leaf}, after its CA ({ca}); shorten its validity")]
    OutlivesCa {
        leaf: OffsetDateTime,
        ca: OffsetDateTime,
    },
    #[error("could not parse the CA certificate PEM: {0}")]
    ParseCertificate(String),
    #[error("the certificate is not a CA certificate (basicConstraints CA:TRUE missing)")]
    NotACa,
    #[error("the CA certificate expired at {0}")]
    CaExpired(OffsetDateTime),
    #[error("the CA private key does not belong to the CA certificate")]
    KeyMismatch,
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// A certificate authority that can issue serving certificates.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    not_after: OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    // The private key is deliberately left out so that a `{:?}` can never leak it into a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A serving certificate and its private key, both PEM.
pub struct ServingCert {
    cert_pem: String,
    key_pem: String,
    dns_names: Vec<String>,
    ip_addresses: Vec<IpAddr>,
    not_after: OffsetDateTime,
}

impl fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCert")
            .field("dns_names", &self.dns_names)
            .field("ip_addresses", &self.ip_addresses)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Generates a new self-signed CA with an ECDSA P-256 key.
pub fn generate_ca(common_name: &str, validity: Duration) -> Result<Ca, CertError> {
    if common_name.trim().is_empty() {
        return Err(CertError::EmptyCommonName);
    }
    let (not_before, not_after) = validity_window(validity)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after,
        issuer: Issuer::new(params, key),
    })
}

impl Ca {
    /// Loads a CA from its certificate and private key (PEM), e.g. from a Secret another webhook
    /// replica created. Refuses a certificate that is not a CA, has expired, or does not match
    /// the key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, CertError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| CertError::ParseCertificate(e.to_string()))?;
        let x509 = pem
            .parse_x509()
            .map_err(|e| CertError::ParseCertificate(e.to_string()))?;
        if !x509.is_ca() {
            return Err(CertError::NotACa);
        }
        let not_after = x509.validity().not_after.to_datetime();
        if not_after <= OffsetDateTime::now_utc() {
            return Err(CertError::CaExpired(not_after));
        }
        let key = KeyPair::from_pem(key_pem)?;
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CertError::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&pem.contents.clone().into(), key)?;
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            not_after,
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM (PKCS#8). Store it only in a Secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// When the CA certificate expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The CA certificate as the MutatingWebhookConfiguration's `caBundle` wants it: base64 of
    /// the PEM text.
    pub fn ca_bundle(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.cert_pem.as_bytes())
    }

    /// Issues a serving certificate for the Service `service` in `namespace`, valid for every DNS
    /// form the API server may use ([`service_dns_names`]) plus `extra_sans` (IP addresses or DNS
    /// names, e.g. `127.0.0.1` and `localhost` for a local test).
    pub fn issue_serving(
        &self,
        service: &str,
        namespace: &str,
        extra_sans: &[String],
        validity: Duration,
    ) -> Result<ServingCert, CertError> {
        validate_label("service name", service)?;
        validate_label("namespace", namespace)?;
        let (not_before, not_after) = validity_window(validity)?;
        if not_after > self.not_after {
            return Err(CertError::OutlivesCa {
                leaf: not_after,
                ca: self.not_after,
            });
        }
        let mut dns_names = service_dns_names(service, namespace);
        let mut ip_addresses = Vec::new();
        for san in extra_sans {
            let san = san.trim();
            if let Ok(ip) = san.parse::<IpAddr>() {
                if !ip_addresses.contains(&ip) {
                    ip_addresses.push(ip);
                }
            } else if is_dns_name(san) {
                let san = san.to_ascii_lowercase();
                if !dns_names.contains(&san) {
                    dns_names.push(san);
                }
            } else {
                return Err(CertError::InvalidSan(san.to_owned()));
            }
        }

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{service}.{namespace}.svc"));
        params.distinguished_name = dn;
        params.subject_alt_names = dns_names
            .iter()
            .map(|name| Ok(SanType::DnsName(name.clone().try_into()?)))
            .chain(ip_addresses.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
            .collect::<Result<_, rcgen::Error>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServingCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            dns_names,
            ip_addresses,
            not_after,
        })
    }
}

impl ServingCert {
    /// The serving certificate, PEM (leaf only; the API server trusts it through the caBundle).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The serving private key, PEM (PKCS#8).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Every DNS name in the certificate.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// Every IP address in the certificate.
    pub fn ip_addresses(&self) -> &[IpAddr] {
        &self.ip_addresses
    }

    /// When the serving certificate expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Writes the certificate (mode 0644) and the key (mode 0600), each replaced atomically, key
    /// first, so that a reader watching the certificate file never pairs a new certificate with
    /// an old key. This is what the webhook's `--self-signed` mode does before loading them.
    pub fn write_files(&self, cert_path: &Path, key_path: &Path) -> Result<(), CertError> {
        write_pem_file(key_path, &self.key_pem, 0o600)?;
        write_pem_file(cert_path, &self.cert_pem, 0o644)
    }
}

/// Writes `contents` to `path` with `mode`, replacing any old file atomically (write a sibling
/// temporary file, sync, rename).
pub fn write_pem_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    fn at(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
        move |source| CertError::Write {
            path: path.to_owned(),
            source,
        }
    }
    let Some(name) = path.file_name() else {
        return Err(at(path)(std::io::ErrorKind::InvalidInput.into()));
    };
    let mut tmp_name = name.to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(at(&tmp))?;
    file.write_all(contents.as_bytes()).map_err(at(&tmp))?;
    file.sync_all().map_err(at(&tmp))?;
    fs::rename(&tmp, path).map_err(at(path))
}

/// The DNS names under which the API server and in-cluster clients reach a Service:
/// `svc`, `svc.ns`, `svc.ns.svc` and `svc.ns.svc.cluster.local`.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

fn validity_window(validity: Duration) -> Result<(OffsetDateTime, OffsetDateTime), CertError> {
    const MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    if validity.is_zero() || validity > MAX {
        return Err(CertError::InvalidValidity(validity));
    }
    // Certificates store whole seconds; truncating keeps `not_after()` equal to what a reader parses.
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc());
    let span = time::Duration::try_from(validity).map_err(|_| CertError::InvalidValidity(validity))?;
    Ok((now - CLOCK_SKEW_ALLOWANCE, now + span))
}

fn validate_label(what: &'static str, value: &str) -> Result<(), CertError> {
    if is_dns_label(value) && !value.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(CertError::InvalidLabel {
            what,
            value: value.to_owned(),
        })
    }
}

fn is_dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

fn is_dns_name(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> Ca {
        generate_ca(DEFAULT_CA_COMMON_NAME, DEFAULT_CA_VALIDITY).unwrap()
    }

    #[test]
    fn serving_cert_names_every_service_dns_form_and_extra_sans() {
        let cert = ca()
            .issue_serving(
                "s3mount-webhook",
                "s3mount",
                &["127.0.0.1".into(), "LocalHost".into()],
                DEFAULT_SERVING_VALIDITY,
            )
            .unwrap();
        assert_eq!(
            cert.dns_names(),
            [
                "s3mount-webhook",
                "s3mount-webhook.s3mount",
                "s3mount-webhook.s3mount.svc",
                "s3mount-webhook.s3mount.svc.cluster.local",
                "localhost"
            ]
        );
        assert_eq!(cert.ip_addresses(), ["127.0.0.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn bad_service_namespace_or_san_is_a_clear_error_not_a_panic() {
        let ca = ca();
        let v = DEFAULT_SERVING_VALIDITY;
        for (svc, ns) in [
            ("", "s3mount"),
            ("Web", "s3mount"),
            ("web", "-ns"),
            ("web", "a.b"),
            ("w\u{e9}b", "ns"),
        ] {
            let err = ca.issue_serving(svc, ns, &[], v).unwrap_err();
            assert!(
                matches!(err, CertError::InvalidLabel { .. }),
                "{svc:?}/{ns:?}: {err}"
            );
        }
        for san in ["", "a..b", "under_score", "-x.example", "1.2.3.4.5/8"] {
            let err = ca.issue_serving("web", "ns", &[san.to_owned()], v).unwrap_err();
            assert!(matches!(err, CertError::InvalidSan(_)), "{san:?}: {err}");
        }
    }

    #[test]
    fn validity_must_be_positive_bounded_and_within_the_ca() {
        assert!(matches!(
            generate_ca("ca", Duration::ZERO),
            Err(CertError::InvalidValidity(_))
        ));
        assert!(matches!(
            generate_ca("ca", Duration::MAX),
            Err(CertError::InvalidValidity(_))
        ));
        assert!(matches!(
            generate_ca(" ", DEFAULT_CA_VALIDITY),
            Err(CertError::EmptyCommonName)
        ));
        let short = generate_ca("ca", Duration::from_secs(3600)).unwrap();
        let err = short
            .issue_serving("web", "ns", &[], DEFAULT_SERVING_VALIDITY)
            .unwrap_err();
        assert!(matches!(err, CertError::OutlivesCa { .. }), "{err}");
    }

    #[test]
    fn ca_round_trips_through_pem_so_replicas_share_one_ca() {
        let original = ca();
        let loaded = Ca::from_pem(original.cert_pem(), original.key_pem()).unwrap();
        assert_eq!(loaded.ca_bundle(), original.ca_bundle());
        assert_eq!(loaded.not_after(), original.not_after());
    }

    #[test]
    fn loading_refuses_a_foreign_key_a_leaf_or_garbage() {
        let a = ca();
        let b = ca();
        assert!(matches!(
            Ca::from_pem(a.cert_pem(), b.key_pem()),
            Err(CertError::KeyMismatch)
        ));
        let leaf = a
            .issue_serving("web", "ns", &[], DEFAULT_SERVING_VALIDITY)
            .unwrap();
        assert!(matches!(
            Ca::from_pem(leaf.cert_pem(), leaf.key_pem()),
            Err(CertError::NotACa)
        ));
        assert!(matches!(
            Ca::from_pem("not pem", a.key_pem()),
            Err(CertError::ParseCertificate(_))
        ));
        assert!(matches!(
            Ca::from_pem(a.cert_pem(), "not pem"),
            Err(CertError::Generate(_))
        ));
    }

    #[test]
    fn debug_output_never_contains_private_keys() {
        let ca = ca();
        let leaf = ca
            .issue_serving("web", "ns", &[], DEFAULT_SERVING_VALIDITY)
            .unwrap();
        let printed = format!("{ca:?} {leaf:?}");
        assert!(!printed.contains("PRIVATE KEY"), "{printed}");
        assert!(leaf.key_pem().contains("PRIVATE KEY"));
    }

    #[test]
    fn write_files_keeps_the_key_private_and_replaces_old_files() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let ca = ca();
        let first = ca
            .issue_serving("web", "ns", &[], DEFAULT_SERVING_VALIDITY)
            .unwrap();
        first.write_files(&cert_path, &key_path).unwrap();
        let second = ca
            .issue_serving("web", "ns", &[], DEFAULT_SERVING_VALIDITY)
            .unwrap();
        second.write_files(&cert_path, &key_path).unwrap();
        assert_eq!(fs::read_to_string(&cert_path).unwrap(), second.cert_pem());
        assert_eq!(fs::read_to_string(&key_path).unwrap(), second.key_pem());
        assert_eq!(
            fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let missing = dir.path().join("no-such-dir").join("tls.crt");
        assert!(matches!(
            second.write_files(&missing, &key_path),
            Err(CertError::Write { .. })
        ));
    }

    #[test]
    fn ca_bundle_is_base64_of_the_ca_pem() {
        let ca = ca();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(ca.ca_bundle())
            .unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), ca.cert_pem());
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    }
}
