//! `--self-signed`: the webhook makes its own serving certificate at start-up, from a CA that all
//! replicas share through a Secret, and points its MutatingWebhookConfiguration's caBundle at it.
//!
//! Steps, in this order: converge on one CA ([`s3mount_certs::converge_ca`] over [`SecretStore`];
//! the API server's atomic create settles a race between replicas starting at once), issue the
//! serving certificate for the Service, set the caBundle ([`WebhookConfiguration`]), and only then
//! write `--tls-cert`/`--tls-key`. Writing last matters: the files live in an emptyDir that outlives
//! a container restart, and start-up skips all of this when they are readable. Were they written
//! before a caBundle patch that failed (RBAC, a missing configuration), the restarted container
//! would serve a certificate the API server does not trust; this way it tries again and keeps
//! failing loudly until the cause is fixed.
//!
//! The serving certificate is not renewed while the process runs (it is valid for
//! [`DEFAULT_SERVING_VALIDITY`], a new one is issued when the pod is replaced).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use s3mount_certs::{
    BootstrapError, CaStore, CertError, CreateOutcome, DEFAULT_CA_VALIDITY, DEFAULT_SERVING_VALIDITY,
    StoredCa, ca_bundle_patch, converge_ca,
};

use crate::config::{Config, KubeApi, SelfSignedConfig};
use crate::tls;

/// How long the whole bootstrap may take; after that the webhook exits and its pod restarts.
pub const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(30);
/// The field manager of the webhook's writes.
const FIELD_MANAGER: &str = "s3mount-webhook";

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why `--self-signed` could not provide a serving certificate.
#[derive(Debug, thiserror::Error)]
pub enum SelfSignedError {
    #[error("--self-signed needs the Kubernetes API, but --kube-api=off")]
    KubeApiOff,
    #[error(
        "--self-signed needs the Kubernetes API, but no in-cluster or kubeconfig configuration was found: {0}"
    )]
    NoKubeConfig(#[source] kube::Error),
    #[error("the Kubernetes API did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot obtain the shared CA: {0}")]
    Ca(#[source] BoxError),
    #[error("cannot issue the serving certificate for Service {service} in {namespace}: {source}")]
    Issue {
        service: String,
        namespace: String,
        source: CertError,
    },
    #[error("cannot set the caBundle: {0}")]
    CaBundle(#[source] BoxError),
    #[error("cannot write the serving certificate: {0}")]
    Write(#[source] CertError),
}

impl SelfSignedError {
    /// Whether the configuration is at fault (exit code 64) rather than the environment (exit 1).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            SelfSignedError::KubeApiOff | SelfSignedError::NoKubeConfig(_)
        )
    }
}

/// A Kubernetes API call that failed, with a hint at the usual cause.
#[derive(Debug, thiserror::Error)]
#[error("{verb} {object}: {source}{}", hint(.source))]
pub struct ApiCallError {
    verb: &'static str,
    object: String,
    source: kube::Error,
}

fn hint(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) if s.code == 403 => {
            " (the webhook's ServiceAccount lacks this permission; see deploy/overlays/self-signed/rbac.yaml)"
        }
        kube::Error::Api(_) => "",
        _ => " (is the Kubernetes API reachable?)",
    }
}

/// What [`SecretStore`] can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SecretStoreError {
    #[error(transparent)]
    Api(#[from] ApiCallError),
    #[error("Secret {object}: {source}")]
    Contents {
        object: String,
        source: BootstrapError<s3mount_certs::NoStoreError>,
    },
}

/// A GET's answer: 404 is "absent", every other failure an error.
fn found<K>(result: Result<K, kube::Error>) -> Result<Option<K>, kube::Error> {
    match result {
        Ok(k) => Ok(Some(k)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// A POST's answer: 409 is "someone created it first", every other failure an error.
fn created<K>(result: Result<K, kube::Error>) -> Result<CreateOutcome, kube::Error> {
    match result {
        Ok(_) => Ok(CreateOutcome::Created),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(CreateOutcome::AlreadyExists),
        Err(e) => Err(e),
    }
}

/// The CA as a Secret: `ca.crt` and `ca.key`, immutable (a CA is replaced by deleting it).
fn ca_secret(name: &str, ca: &StoredCa) -> Secret {
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "s3mount".to_owned()),
        ("app.kubernetes.io/component".to_owned(), "webhook".to_owned()),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        immutable: Some(true),
        data: Some(
            ca.to_secret_data()
                .into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// The CA a Secret holds (as the API server returns it: in `data`).
fn stored_ca(secret: Secret) -> Result<StoredCa, BootstrapError<s3mount_certs::NoStoreError>> {
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    StoredCa::from_secret_data(&data)
}

/// The shared CA kept in one Secret (`--self-signed-secret` in `--namespace`).
#[derive(Debug, Clone)]
pub struct SecretStore {
    api: Api<Secret>,
    name: String,
    object: String,
}

impl SecretStore {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        SecretStore {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            object: format!("Secret {namespace}/{name}"),
        }
    }

    fn call(&self, verb: &'static str) -> impl FnOnce(kube::Error) -> ApiCallError + '_ {
        move |source| ApiCallError {
            verb,
            object: self.object.clone(),
            source,
        }
    }
}

impl CaStore for SecretStore {
    type Error = SecretStoreError;

    async fn load(&self) -> Result<Option<StoredCa>, SecretStoreError> {
        let Some(secret) = found(self.api.get(&self.name).await).map_err(self.call("GET"))? else {
            return Ok(None);
        };
        let ca = stored_ca(secret).map_err(|source| SecretStoreError::Contents {
            object: self.object.clone(),
            source,
        })?;
        Ok(Some(ca))
    }

    async fn create(&self, ca: &StoredCa) -> Result<CreateOutcome, SecretStoreError> {
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        let outcome = created(self.api.create(&params, &ca_secret(&self.name, ca)).await);
        Ok(outcome.map_err(self.call("POST"))?)
    }
}

/// What setting the caBundle did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaBundleUpdate {
    /// Every webhook of the configuration already had this caBundle.
    Unchanged,
    /// This many webhooks were patched.
    Patched(usize),
}

/// Where the caBundle goes (the webhook: its MutatingWebhookConfiguration).
pub trait CaBundleTarget {
    type Error: std::error::Error + Send + Sync + 'static;
    /// Sets `ca_bundle` (base64 PEM) on every webhook of the configuration.
    fn set_ca_bundle(
        &self,
        ca_bundle: &str,
    ) -> impl Future<Output = Result<CaBundleUpdate, Self::Error>> + Send;
}

/// What [`WebhookConfiguration`] can fail with.
#[derive(Debug, thiserror::Error)]
pub enum WebhookConfigurationError {
    #[error(transparent)]
    Api(#[from] ApiCallError),
    #[error("{0} has no webhooks")]
    NoWebhooks(String),
    #[error("the caBundle patch is not a JSON patch: {0}")]
    Patch(#[source] serde_json::Error),
}

/// The MutatingWebhookConfiguration named by `--webhook-configuration` (cluster-scoped).
#[derive(Debug, Clone)]
pub struct WebhookConfiguration {
    api: Api<MutatingWebhookConfiguration>,
    name: String,
    object: String,
}

impl WebhookConfiguration {
    pub fn new(client: kube::Client, name: &str) -> Self {
        WebhookConfiguration {
            api: Api::all(client),
            name: name.to_owned(),
            object: format!("MutatingWebhookConfiguration {name}"),
        }
    }
}

/// Whether every webhook already carries `ca_bundle` (base64), so that no patch is needed.
fn bundle_is_set(config: &MutatingWebhookConfiguration, ca_bundle: &str) -> bool {
    let want = base64::engine::general_purpose::STANDARD.decode(ca_bundle).ok();
    let hooks = config.webhooks.as_deref().unwrap_or_default();
    !hooks.is_empty()
        && hooks
            .iter()
            .all(|h| h.client_config.ca_bundle.as_ref().map(|b| &b.0) == want.as_ref())
}

impl CaBundleTarget for WebhookConfiguration {
    type Error = WebhookConfigurationError;

    async fn set_ca_bundle(&self, ca_bundle: &str) -> Result<CaBundleUpdate, WebhookConfigurationError> {
        let call = |verb| {
            let object = self.object.clone();
            move |source| ApiCallError { verb, object, source }
        };
        let current = self.api.get(&self.name).await.map_err(call("GET"))?;
        if bundle_is_set(&current, ca_bundle) {
            return Ok(CaBundleUpdate::Unchanged);
        }
        let count = current.webhooks.as_ref().map_or(0, Vec::len);
        if count == 0 {
            return Err(WebhookConfigurationError::NoWebhooks(self.object.clone()));
        }
        let patch: json_patch::Patch = serde_json::from_value(ca_bundle_patch(count, ca_bundle))
            .map_err(WebhookConfigurationError::Patch)?;
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        self.api
            .patch(&self.name, &params, &Patch::Json::<()>(patch))
            .await
            .map_err(call("PATCH"))?;
        Ok(CaBundleUpdate::Patched(count))
    }
}

/// What [`ensure_serving_cert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provided {
    /// `--self-signed` is off: the files are whatever is mounted.
    Off,
    /// The files were readable already (e.g. written before a container restart).
    Existing,
    /// The files were written, from the CA with this caBundle.
    Issued { ca_bundle: String },
}

/// Start-up step of `--self-signed`: leaves readable `--tls-cert`/`--tls-key` alone, and otherwise
/// makes them through the Kubernetes API (see the module doc). Gives up after [`BOOTSTRAP_TIMEOUT`].
pub async fn ensure_serving_cert(config: &Config) -> Result<Provided, SelfSignedError> {
    let names = &config.self_signed;
    if !names.enabled {
        return Ok(Provided::Off);
    }
    if tls::load(&config.tls_cert, &config.tls_key).is_ok() {
        tracing::info!(tls_cert = %config.tls_cert.display(), "--self-signed: using the readable certificate files");
        return Ok(Provided::Existing);
    }
    if config.kube_api == KubeApi::Off {
        return Err(SelfSignedError::KubeApiOff);
    }
    let work = async {
        let client = kube::Client::try_default()
            .await
            .map_err(SelfSignedError::NoKubeConfig)?;
        let store = SecretStore::new(client.clone(), &names.namespace, &names.secret);
        let target = WebhookConfiguration::new(client, &names.webhook_configuration);
        bootstrap(&store, &target, names, &config.tls_cert, &config.tls_key).await
    };
    let ca_bundle = tokio::time::timeout(BOOTSTRAP_TIMEOUT, work)
        .await
        .map_err(|_| SelfSignedError::Timeout(BOOTSTRAP_TIMEOUT))??;
    Ok(Provided::Issued { ca_bundle })
}

/// Converges on the CA in `store`, issues the serving certificate, sets the caBundle on `target`,
/// then writes the files. Returns the caBundle.
pub async fn bootstrap<S: CaStore, T: CaBundleTarget>(
    store: &S,
    target: &T,
    names: &SelfSignedConfig,
    cert_path: &Path,
    key_path: &Path,
) -> Result<String, SelfSignedError> {
    let ca = converge_ca(store, DEFAULT_CA_VALIDITY)
        .await
        .map_err(|e| SelfSignedError::Ca(Box::new(e)))?;
    let serving = ca
        .issue_serving(
            &names.service_name,
            &names.namespace,
            &[],
            DEFAULT_SERVING_VALIDITY,
        )
        .map_err(|source| SelfSignedError::Issue {
            service: names.service_name.clone(),
            namespace: names.namespace.clone(),
            source,
        })?;
    let ca_bundle = ca.ca_bundle();
    let update = target
        .set_ca_bundle(&ca_bundle)
        .await
        .map_err(|e| SelfSignedError::CaBundle(Box::new(e)))?;
    serving
        .write_files(cert_path, key_path)
        .map_err(SelfSignedError::Write)?;
    tracing::info!(
        secret = %format!("{}/{}", names.namespace, names.secret),
        webhook_configuration = %names.webhook_configuration,
        ca_bundle = ?update,
        dns_names = ?serving.dns_names(),
        not_after = %serving.not_after(),
        tls_cert = %cert_path.display(),
        "--self-signed: serving certificate issued"
    );
    Ok(ca_bundle)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use clap::Parser as _;
    use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, WebhookClientConfig};
    use kube::core::Status;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    use super::*;

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(
            Status::failure("from the API server", reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn get_maps_404_to_absent_and_keeps_other_failures() {
        assert_eq!(found(Ok::<_, kube::Error>(7)).unwrap(), Some(7));
        assert_eq!(found::<u8>(Err(api_error(404, "NotFound"))).unwrap(), None);
        for (code, reason) in [(403, "Forbidden"), (409, "AlreadyExists"), (500, "InternalError")] {
            let e = found::<u8>(Err(api_error(code, reason))).unwrap_err();
            assert!(matches!(&e, kube::Error::Api(s) if s.code == code), "{e}");
        }
    }

    #[test]
    fn post_maps_409_to_already_exists_and_keeps_other_failures() {
        assert_eq!(created(Ok::<_, kube::Error>(())).unwrap(), CreateOutcome::Created);
        assert_eq!(
            created::<()>(Err(api_error(409, "AlreadyExists"))).unwrap(),
            CreateOutcome::AlreadyExists
        );
        for (code, reason) in [(403, "Forbidden"), (404, "NotFound"), (422, "Invalid")] {
            assert!(created::<()>(Err(api_error(code, reason))).is_err(), "{code}");
        }
    }

    #[test]
    fn a_forbidden_call_names_the_object_and_points_at_rbac() {
        let e = ApiCallError {
            verb: "GET",
            object: "Secret s3mount/s3mount-webhook-ca".to_owned(),
            source: api_error(403, "Forbidden"),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("GET Secret s3mount/s3mount-webhook-ca: "),
            "{text}"
        );
        assert!(text.contains("rbac.yaml"), "{text}");
    }

    #[test]
    fn the_ca_secret_round_trips_as_the_api_server_returns_it() {
        let ca = s3mount_certs::generate_ca("t", DEFAULT_CA_VALIDITY).unwrap();
        let stored = StoredCa::from(&ca);
        let secret = ca_secret("s3mount-webhook-ca", &stored);
        assert_eq!(secret.metadata.name.as_deref(), Some("s3mount-webhook-ca"));
        assert_eq!(secret.immutable, Some(true));
        // What a GET returns is the JSON the POST sent.
        let back: Secret = serde_json::from_value(serde_json::to_value(&secret).unwrap()).unwrap();
        assert_eq!(stored_ca(back).unwrap(), stored);
        assert!(
            stored_ca(Secret::default()).is_err(),
            "a Secret without data is no CA"
        );
    }

    fn configuration(bundles: &[Option<&[u8]>]) -> MutatingWebhookConfiguration {
        let hooks = bundles
            .iter()
            .map(|b| MutatingWebhook {
                client_config: WebhookClientConfig {
                    ca_bundle: b.map(|b| ByteString(b.to_vec())),
                    ..WebhookClientConfig::default()
                },
                ..MutatingWebhook::default()
            })
            .collect();
        MutatingWebhookConfiguration {
            webhooks: Some(hooks),
            ..MutatingWebhookConfiguration::default()
        }
    }

    #[test]
    fn the_patch_is_skipped_only_when_every_webhook_has_the_bundle() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(b"PEM");
        assert!(bundle_is_set(&configuration(&[Some(b"PEM"), Some(b"PEM")]), &b64));
        assert!(!bundle_is_set(
            &configuration(&[Some(b"PEM"), Some(b"OLD")]),
            &b64
        ));
        assert!(!bundle_is_set(&configuration(&[Some(b"PEM"), None]), &b64));
        assert!(!bundle_is_set(&configuration(&[]), &b64));
    }

    /// Create-if-absent in memory, as the API server does for a Secret.
    #[derive(Default)]
    struct MemStore(Mutex<Option<StoredCa>>);

    #[derive(Debug, thiserror::Error)]
    #[error("refused")]
    struct Refused;

    impl CaStore for MemStore {
        type Error = Refused;
        async fn load(&self) -> Result<Option<StoredCa>, Refused> {
            Ok(self.0.lock().unwrap().clone())
        }
        async fn create(&self, ca: &StoredCa) -> Result<CreateOutcome, Refused> {
            let mut stored = self.0.lock().unwrap();
            if stored.is_some() {
                return Ok(CreateOutcome::AlreadyExists);
            }
            *stored = Some(ca.clone());
            Ok(CreateOutcome::Created)
        }
    }

    /// Records every caBundle set; refuses all when `refuse`.
    #[derive(Default)]
    struct Recorder {
        bundles: Mutex<Vec<String>>,
        refuse: bool,
    }

    impl CaBundleTarget for Recorder {
        type Error = Refused;
        async fn set_ca_bundle(&self, ca_bundle: &str) -> Result<CaBundleUpdate, Refused> {
            if self.refuse {
                return Err(Refused);
            }
            self.bundles.lock().unwrap().push(ca_bundle.to_owned());
            Ok(CaBundleUpdate::Patched(1))
        }
    }

    fn config(args: &[&str]) -> Config {
        let base = [
            "s3mount-webhook",
            "--tls-cert=/nonexistent/tls.crt",
            "--tls-key=/nonexistent/tls.key",
        ];
        Config::try_parse_from(base.iter().chain(args)).unwrap()
    }

    #[tokio::test]
    async fn bootstrap_writes_files_the_tls_loader_accepts_and_that_chain_to_the_patched_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (store, target) = (MemStore::default(), Recorder::default());
        let names = config(&["--self-signed", "--namespace=ns1"]).self_signed;

        let bundle = bootstrap(&store, &target, &names, &cert, &key).await.unwrap();
        tls::load(&cert, &key).unwrap();
        assert_eq!(*target.bundles.lock().unwrap(), std::slice::from_ref(&bundle));

        let ca_pem = base64::engine::general_purpose::STANDARD.decode(&bundle).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(&ca_pem).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        let leaf = CertificateDer::from_pem_file(&cert).unwrap();
        for name in ["s3mount-webhook.ns1.svc", "s3mount-webhook.ns1.svc.cluster.local"] {
            let name = ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
                .unwrap();
        }
        let other = ServerName::try_from("s3mount-webhook.other.svc").unwrap();
        assert!(
            verifier
                .verify_server_cert(&leaf, &[], &other, &[], UnixTime::now())
                .is_err()
        );
    }

    #[tokio::test]
    async fn replicas_bootstrapping_at_once_set_one_bundle() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let (store, target) = (MemStore::default(), Recorder::default());
        let names = config(&["--self-signed"]).self_signed;
        let run = |d: &tempfile::TempDir| {
            let (cert, key) = (d.path().join("tls.crt"), d.path().join("tls.key"));
            let (store, target, names) = (&store, &target, &names);
            async move { bootstrap(store, target, names, &cert, &key).await }
        };
        let (a, b) = futures::join!(run(&dirs[0]), run(&dirs[1]));
        assert_eq!(a.unwrap(), b.unwrap());
        let bundles = target.bundles.lock().unwrap();
        assert_eq!(bundles.len(), 2);
        assert_eq!(bundles[0], bundles[1]);
    }

    #[tokio::test]
    async fn a_refused_ca_bundle_leaves_no_files_so_a_restart_tries_again() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let target = Recorder {
            refuse: true,
            ..Recorder::default()
        };
        let names = config(&["--self-signed"]).self_signed;
        let e = bootstrap(&MemStore::default(), &target, &names, &cert, &key)
            .await
            .unwrap_err();
        assert!(matches!(e, SelfSignedError::CaBundle(_)), "{e}");
        assert!(!cert.exists() && !key.exists());
    }

    #[tokio::test]
    async fn readable_files_need_no_api_and_missing_ones_need_it() {
        let off = config(&["--self-signed", "--kube-api=off"]);
        let e = ensure_serving_cert(&off).await.unwrap_err();
        assert!(matches!(e, SelfSignedError::KubeApiOff) && e.is_config(), "{e}");
        assert_eq!(ensure_serving_cert(&config(&[])).await.unwrap(), Provided::Off);

        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let names = off.self_signed.clone();
        bootstrap(&MemStore::default(), &Recorder::default(), &names, &cert, &key)
            .await
            .unwrap();
        let mut existing = off;
        (existing.tls_cert, existing.tls_key) = (cert, key);
        assert_eq!(ensure_serving_cert(&existing).await.unwrap(), Provided::Existing);
    }
}
