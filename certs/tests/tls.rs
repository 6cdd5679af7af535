//! The generated pair works for real TLS: rustls accepts it as a server identity, and a client
//! trusting only the generated CA completes a handshake under every service DNS form and extra SAN,
//! while other names and other CAs are refused.

use std::io::Cursor;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use s3mount_certs::{Ca, DEFAULT_CA_COMMON_NAME, DEFAULT_CA_VALIDITY, DEFAULT_SERVING_VALIDITY, generate_ca};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, rustls::Error> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

fn client_config(ca: &Ca, versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.cert_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Runs a full handshake over in-memory buffers; returns the first error either side reports.
fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>, name: &str) -> Result<(), rustls::Error> {
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut client = ClientConnection::new(client, name)?;
    let mut server = ServerConnection::new(server)?;
    for _ in 0..20 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            server.read_tls(&mut Cursor::new(&buf)).unwrap();
            server.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            client.read_tls(&mut Cursor::new(&buf)).unwrap();
            client.process_new_packets()?;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
    }
    panic!("handshake did not finish in 20 rounds");
}

#[test]
fn ca_verifies_the_serving_cert_under_every_service_name_and_extra_san() {
    let ca = generate_ca(DEFAULT_CA_COMMON_NAME, DEFAULT_CA_VALIDITY).unwrap();
    let extra = ["127.0.0.1".to_owned(), "::1".to_owned(), "localhost".to_owned()];
    let leaf = ca
        .issue_serving("s3mount-webhook", "s3mount", &extra, DEFAULT_SERVING_VALIDITY)
        .unwrap();
    let server = server_config(leaf.cert_pem(), leaf.key_pem()).unwrap();
    for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12][..]] {
        let client = client_config(&ca, versions);
        for name in [
            "s3mount-webhook",
            "s3mount-webhook.s3mount",
            "s3mount-webhook.s3mount.svc",
            "s3mount-webhook.s3mount.svc.cluster.local",
            "localhost",
            "127.0.0.1",
            "::1",
        ] {
            handshake(server.clone(), client.clone(), name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

#[test]
fn names_not_in_the_certificate_are_refused() {
    let ca = generate_ca(DEFAULT_CA_COMMON_NAME, DEFAULT_CA_VALIDITY).unwrap();
    let leaf = ca
        .issue_serving("s3mount-webhook", "s3mount", &[], DEFAULT_SERVING_VALIDITY)
        .unwrap();
    let server = server_config(leaf.cert_pem(), leaf.key_pem()).unwrap();
    let client = client_config(&ca, &[&rustls::version::TLS13]);
    for name in ["s3mount-webhook.other.svc", "evil.example", "127.0.0.1"] {
        let err = handshake(server.clone(), client.clone(), name).unwrap_err();
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{name}: {err}"
        );
    }
}

#[test]
fn a_different_ca_does_not_verify_the_serving_cert() {
    let ca = generate_ca(DEFAULT_CA_COMMON_NAME, DEFAULT_CA_VALIDITY).unwrap();
    let other = generate_ca(DEFAULT_CA_COMMON_NAME, DEFAULT_CA_VALIDITY).unwrap();
    let leaf = ca
        .issue_serving("web", "ns", &[], DEFAULT_SERVING_VALIDITY)
        .unwrap();
    let server = server_config(leaf.cert_pem(), leaf.key_pem()).unwrap();
    let err = handshake(
        server,
        client_config(&other, &[&rustls::version::TLS13]),
        "web.ns.svc",
    )
    .unwrap_err();
    assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err}");
}

#[test]
fn a_replica_loading_the_shared_ca_issues_certs_the_first_bundle_trusts() {
    let first = generate_ca(DEFAULT_CA_COMMON_NAME, DEFAULT_CA_VALIDITY).unwrap();
    let second = Ca::from_pem(first.cert_pem(), first.key_pem()).unwrap();
    let leaf = second
        .issue_serving("web", "ns", &[], DEFAULT_SERVING_VALIDITY)
        .unwrap();
    let server = server_config(leaf.cert_pem(), leaf.key_pem()).unwrap();
    handshake(
        server,
        client_config(&first, &[&rustls::version::TLS13]),
        "web.ns.svc",
    )
    .unwrap();
}

#[test]
fn rustls_refuses_a_certificate_with_the_wrong_key() {
    let ca = generate_ca(DEFAULT_CA_COMMON_NAME, DEFAULT_CA_VALIDITY).unwrap();
    let a = ca
        .issue_serving("web", "ns", &[], DEFAULT_SERVING_VALIDITY)
        .unwrap();
    let b = ca
        .issue_serving("web", "ns", &[], DEFAULT_SERVING_VALIDITY)
        .unwrap();
    assert!(server_config(a.cert_pem(), b.key_pem()).is_err());
}
