//! The part of the webhook's `--self-signed` mode that needs no Kubernetes: converging several
//! replicas that start at once on one CA, and the JSON patch that writes the caBundle.
//!
//! The webhook implements [`CaStore`] over the Secret named by `--self-signed-secret` (`load`:
//! GET, 404 is `None`; `create`: POST, 409 AlreadyExists is [`CreateOutcome::AlreadyExists`]) and
//! calls [`converge_ca`]. Creation is atomic in the API server, so exactly one replica's CA is
//! stored; every other replica loses the create, loads the winner's CA, and all of them issue
//! their serving certificates from it. A stored CA that is broken or expired is reported, never
//! silently replaced: replacing it would leave the other replicas serving from the old one.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use crate::ca::{Ca, CertError, DEFAULT_CA_COMMON_NAME, generate_ca};
use crate::manifest::{CA_CERT_KEY, CA_KEY_KEY};

/// How often [`converge_ca`] tries again when the stored CA vanishes between a lost create and
/// the following load (someone deleted the Secret at that moment).
const CONVERGE_ATTEMPTS: usize = 3;

/// A CA as stored in the Secret: `ca.crt` and `ca.key`, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCa {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for StoredCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCa").finish_non_exhaustive()
    }
}

impl StoredCa {
    /// The Secret's `data`/`stringData` entries: `ca.crt` and `ca.key`.
    pub fn to_secret_data(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (CA_CERT_KEY.to_owned(), self.cert_pem.clone()),
            (CA_KEY_KEY.to_owned(), self.key_pem.clone()),
        ])
    }

    /// Reads `ca.crt` and `ca.key` back from a Secret's (decoded) data.
    pub fn from_secret_data(
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<StoredCa, BootstrapError<NoStoreError>> {
        let field = |key: &'static str| {
            let bytes = data.get(key).ok_or(BootstrapError::MissingKey(key))?;
            String::from_utf8(bytes.clone()).map_err(|_| BootstrapError::MissingKey(key))
        };
        Ok(StoredCa {
            cert_pem: field(CA_CERT_KEY)?,
            key_pem: field(CA_KEY_KEY)?,
        })
    }
}

impl From<&Ca> for StoredCa {
    fn from(ca: &Ca) -> Self {
        StoredCa {
            cert_pem: ca.cert_pem().to_owned(),
            key_pem: ca.key_pem().to_owned(),
        }
    }
}

/// What an atomic create of the stored CA found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    /// Ours is now the stored CA.
    Created,
    /// Another replica stored one first.
    AlreadyExists,
}

/// Where replicas keep the shared CA (the webhook: a Secret through the Kubernetes API).
pub trait CaStore {
    type Error: std::error::Error + Send + Sync + 'static;
    /// The stored CA, or `None` when there is none yet.
    fn load(&self) -> impl Future<Output = Result<Option<StoredCa>, Self::Error>> + Send;
    /// Stores `ca` unless one is stored already; must be atomic.
    fn create(&self, ca: &StoredCa) -> impl Future<Output = Result<CreateOutcome, Self::Error>> + Send;
}

/// Error type for a [`BootstrapError`] that cannot come from a store.
#[derive(Debug, thiserror::Error)]
#[error("no store involved")]
pub struct NoStoreError;

/// What can go wrong while converging on one CA.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError<E: std::error::Error + 'static> {
    #[error("reading or creating the stored CA failed: {0}")]
    Store(#[source] E),
    #[error(
        "the stored CA is unusable ({0}); delete the CA Secret and restart the webhook to make a new one"
    )]
    StoredCaInvalid(#[source] CertError),
    #[error("generating a CA failed: {0}")]
    Generate(#[source] CertError),
    #[error("the CA Secret has no valid {0:?} entry")]
    MissingKey(&'static str),
    #[error(
        "the stored CA kept disappearing after another replica created it ({CONVERGE_ATTEMPTS} attempts)"
    )]
    Vanished,
}

/// Returns the one CA every replica uses: the stored one, or a new one this call stores.
pub async fn converge_ca<S: CaStore>(store: &S, validity: Duration) -> Result<Ca, BootstrapError<S::Error>> {
    for _ in 0..CONVERGE_ATTEMPTS {
        if let Some(stored) = store.load().await.map_err(BootstrapError::Store)? {
            return Ca::from_pem(&stored.cert_pem, &stored.key_pem).map_err(BootstrapError::StoredCaInvalid);
        }
        let ca = generate_ca(DEFAULT_CA_COMMON_NAME, validity).map_err(BootstrapError::Generate)?;
        match store
            .create(&StoredCa::from(&ca))
            .await
            .map_err(BootstrapError::Store)?
        {
            CreateOutcome::Created => return Ok(ca),
            // Lost the race: loop and load the winner's CA.
            CreateOutcome::AlreadyExists => continue,
        }
    }
    Err(BootstrapError::Vanished)
}

/// The JSON patch (RFC 6902) that sets `caBundle` on each of `webhook_count` webhooks of a
/// MutatingWebhookConfiguration (`add` replaces an existing value).
pub fn ca_bundle_patch(webhook_count: usize, ca_bundle: &str) -> serde_json::Value {
    let ops = (0..webhook_count)
        .map(|i| {
            serde_json::json!({
                "op": "add",
                "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                "value": ca_bundle,
            })
        })
        .collect();
    serde_json::Value::Array(ops)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::ca::{DEFAULT_CA_VALIDITY, DEFAULT_SERVING_VALIDITY};

    /// An in-memory store with the same atomic create-if-absent the API server gives a Secret.
    #[derive(Default)]
    struct MemStore {
        stored: Mutex<Option<StoredCa>>,
        creates: AtomicUsize,
        loads: AtomicUsize,
        /// The first `blind_first` loads wait until all of them have arrived and then answer
        /// `None`: replicas that all start before any create lands.
        blind_first: usize,
        /// Every load answers `None`: the Secret vanishes right after each lost create.
        always_blind: bool,
    }

    /// Resolves once `cond` holds (re-polled by the executor until then).
    struct WaitUntil<F>(F);

    impl<F: Fn() -> bool + Unpin> Future for WaitUntil<F> {
        type Output = ();
        fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
            if (self.0)() {
                std::task::Poll::Ready(())
            } else {
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("store down")]
    struct Down;

    impl CaStore for MemStore {
        type Error = Down;
        async fn load(&self) -> Result<Option<StoredCa>, Down> {
            let ticket = self.loads.fetch_add(1, Ordering::SeqCst);
            if ticket < self.blind_first {
                WaitUntil(|| self.loads.load(Ordering::SeqCst) >= self.blind_first).await;
                return Ok(None);
            }
            if self.always_blind {
                return Ok(None);
            }
            Ok(self.stored.lock().unwrap().clone())
        }
        async fn create(&self, ca: &StoredCa) -> Result<CreateOutcome, Down> {
            self.creates.fetch_add(1, Ordering::SeqCst);
            let mut stored = self.stored.lock().unwrap();
            if stored.is_some() {
                return Ok(CreateOutcome::AlreadyExists);
            }
            *stored = Some(ca.clone());
            Ok(CreateOutcome::Created)
        }
    }

    struct DownStore;
    impl CaStore for DownStore {
        type Error = Down;
        async fn load(&self) -> Result<Option<StoredCa>, Down> {
            Err(Down)
        }
        async fn create(&self, _: &StoredCa) -> Result<CreateOutcome, Down> {
            Err(Down)
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn replicas_starting_at_once_converge_on_one_ca() {
        let store = MemStore {
            blind_first: 4,
            ..MemStore::default()
        };
        let v = DEFAULT_CA_VALIDITY;
        let (a, b, c, d) = block_on(async {
            futures::join!(
                converge_ca(&store, v),
                converge_ca(&store, v),
                converge_ca(&store, v),
                converge_ca(&store, v)
            )
        });
        let bundles: Vec<String> = [a, b, c, d]
            .into_iter()
            .map(|ca| ca.unwrap().ca_bundle())
            .collect();
        assert!(
            bundles.windows(2).all(|w| w[0] == w[1]),
            "replicas ended on different CAs"
        );
        assert_eq!(
            store.creates.load(Ordering::SeqCst),
            4,
            "each replica tried to create"
        );
        let stored = store.stored.lock().unwrap().clone().unwrap();
        assert_eq!(crate::manifest::ca_bundle(&stored.cert_pem), bundles[0]);
    }

    #[test]
    fn a_later_replica_reuses_the_stored_ca_and_its_certs_verify_under_it() {
        let store = MemStore::default();
        let first = block_on(converge_ca(&store, DEFAULT_CA_VALIDITY)).unwrap();
        let second = block_on(converge_ca(&store, DEFAULT_CA_VALIDITY)).unwrap();
        assert_eq!(first.ca_bundle(), second.ca_bundle());
        assert_eq!(store.creates.load(Ordering::SeqCst), 1);
        second
            .issue_serving("s3mount-webhook", "s3mount", &[], DEFAULT_SERVING_VALIDITY)
            .unwrap();
    }

    #[test]
    fn a_broken_stored_ca_is_reported_not_replaced() {
        let store = MemStore::default();
        let other = generate_ca("x", DEFAULT_CA_VALIDITY).unwrap();
        let mine = generate_ca("y", DEFAULT_CA_VALIDITY).unwrap();
        let broken = StoredCa {
            cert_pem: mine.cert_pem().to_owned(),
            key_pem: other.key_pem().to_owned(),
        };
        *store.stored.lock().unwrap() = Some(broken.clone());
        let err = block_on(converge_ca(&store, DEFAULT_CA_VALIDITY)).unwrap_err();
        assert!(
            matches!(err, BootstrapError::StoredCaInvalid(CertError::KeyMismatch)),
            "{err}"
        );
        assert!(err.to_string().contains("delete the CA Secret"));
        assert_eq!(store.stored.lock().unwrap().as_ref(), Some(&broken));
    }

    #[test]
    fn store_failures_and_a_vanishing_ca_are_errors_not_hangs() {
        let err = block_on(converge_ca(&DownStore, DEFAULT_CA_VALIDITY)).unwrap_err();
        assert!(matches!(err, BootstrapError::Store(Down)));
        let store = MemStore {
            always_blind: true,
            ..MemStore::default()
        };
        *store.stored.lock().unwrap() = Some(StoredCa::from(&generate_ca("x", DEFAULT_CA_VALIDITY).unwrap()));
        let err = block_on(converge_ca(&store, DEFAULT_CA_VALIDITY)).unwrap_err();
        assert!(matches!(err, BootstrapError::Vanished), "{err}");
    }

    #[test]
    fn secret_data_round_trips_and_missing_keys_are_named() {
        let ca = generate_ca("x", DEFAULT_CA_VALIDITY).unwrap();
        let stored = StoredCa::from(&ca);
        let data: BTreeMap<String, Vec<u8>> = stored
            .to_secret_data()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        assert_eq!(StoredCa::from_secret_data(&data).unwrap(), stored);
        let mut partial = data.clone();
        partial.remove(CA_KEY_KEY);
        assert!(matches!(
            StoredCa::from_secret_data(&partial),
            Err(BootstrapError::MissingKey("ca.key"))
        ));
        assert!(!format!("{stored:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn ca_bundle_patch_sets_every_webhook() {
        let patch = ca_bundle_patch(2, "QUJD");
        assert_eq!(
            patch,
            serde_json::json!([
                {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "QUJD"},
                {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": "QUJD"},
            ])
        );
        assert_eq!(ca_bundle_patch(0, "QUJD"), serde_json::json!([]));
    }
}
