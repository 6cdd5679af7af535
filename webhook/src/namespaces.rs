//! What needs the Kubernetes API: the API server's version (for `--sidecar-mode=auto`) and a
//! watch of Namespaces (a kube reflector) that the policy checks read.
//!
//! RBAC needed: `get` on the `/version` non-resource URL and `list`/`watch` on namespaces; nothing
//! else. Without an API all of this is off and `main` logs that once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::inject::Lifecycle;
use crate::policy::NamespaceInfo;

/// First Kubernetes minor version (1.x) with native sidecars on by default.
pub const NATIVE_SIDECAR_MINOR: u32 = 29;

/// Why the Kubernetes API cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("no Kubernetes configuration: {0}")]
    NoConfig(#[source] kube::Error),
    #[error("cannot read the API server version: {0}")]
    Version(#[source] kube::Error),
    #[error("API server version {major}.{minor} is not understood")]
    BadVersion { major: String, minor: String },
}

/// Connects with the usual inference (in-cluster service account, else kubeconfig).
pub async fn client() -> Result<Client, KubeError> {
    Client::try_default().await.map_err(KubeError::NoConfig)
}

/// The sidecar mode for `--sidecar-mode=auto` on a configured client: native when the API server
/// is 1.29 or later, legacy before, and `fallback` when its version cannot be read (logged as a
/// warning). Only the mode falls back: the namespace checks stay on whatever the version probe
/// answered, because a client is configured and the namespace watch retries on its own (the
/// webhook is not ready until it has synced).
pub async fn auto_lifecycle(client: &Client, fallback: Lifecycle, timeout: Duration) -> Lifecycle {
    let why = match tokio::time::timeout(timeout, supports_native_sidecars(client)).await {
        Ok(Ok(true)) => return Lifecycle::Native,
        Ok(Ok(false)) => return Lifecycle::Legacy,
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("the API server version request timed out after {timeout:?}"),
    };
    tracing::warn!(
        reason = why,
        sidecar_mode = ?fallback,
        "--sidecar-mode=auto: the API server version is unknown; using --sidecar-mode-fallback \
         (namespace opt-in, Pod Security and namespace policy checks stay on)"
    );
    fallback
}

/// Whether the API server runs native sidecars (>= 1.29).
pub async fn supports_native_sidecars(client: &Client) -> Result<bool, KubeError> {
    let info = client.apiserver_version().await.map_err(KubeError::Version)?;
    native_sidecars(&info.major, &info.minor)
}

/// `major`/`minor` as the version endpoint reports them (managed clusters write `"29+"`).
pub fn native_sidecars(major: &str, minor: &str) -> Result<bool, KubeError> {
    let digits = |s: &str| {
        s.trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse::<u32>()
            .ok()
    };
    match (digits(major), digits(minor)) {
        (Some(ma), Some(mi)) => Ok(ma > 1 || (ma == 1 && mi >= NATIVE_SIDECAR_MINOR)),
        _ => Err(KubeError::BadVersion {
            major: major.to_owned(),
            minor: minor.to_owned(),
        }),
    }
}

/// A live view of the cluster's Namespaces.
#[derive(Debug, Clone)]
pub struct NamespaceStore {
    store: Store<Namespace>,
    ready: Arc<AtomicBool>,
}

impl NamespaceStore {
    /// Starts the watch in the background; [`NamespaceStore::is_ready`] turns true after the
    /// first full list.
    pub fn start(client: Client) -> Self {
        let (store, writer) = reflector::store();
        let ready = Arc::new(AtomicBool::new(false));
        let api: Api<Namespace> = Api::all(client);
        let stream = reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                if let Err(e) = item {
                    tracing::warn!(error = %e, "namespace watch error; retrying");
                }
            }
        });
        let flag = ready.clone();
        let waiting = store.clone();
        tokio::spawn(async move {
            if waiting.wait_until_ready().await.is_ok() {
                flag.store(true, Ordering::Relaxed);
                tracing::info!("namespace watch synced");
            }
        });
        NamespaceStore { store, ready }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The namespace named `name`, if the watch has seen it.
    pub fn get(&self, name: &str) -> Option<NamespaceInfo> {
        self.store
            .get(&ObjectRef::new(name))
            .map(|ns| NamespaceInfo::from(ns.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_sidecars_from_one_twenty_nine() {
        assert!(!native_sidecars("1", "28").unwrap());
        assert!(native_sidecars("1", "29").unwrap());
        assert!(native_sidecars("1", "31+").unwrap());
        assert!(native_sidecars("2", "0").unwrap());
        assert!(native_sidecars("x", "1").is_err());
    }
}
