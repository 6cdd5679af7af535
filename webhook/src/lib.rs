//! s3mount's mutating admission webhook: injects the FUSE sidecar into pods annotated
//! `s3.mount/bucket`.
//!
//! Layers, from pure to I/O: [`annotations`] (the annotation contract), [`inject`] (the JSON patch
//! from the raw pod), [`policy`] (per-namespace rules), [`review`] (the pure AdmissionReview in /
//! AdmissionReview out function; `prune` lets it read a body in one pass keeping only what it
//! needs), then [`server`] (axum routers), [`tls`] (rustls, reload), [`namespaces`] (what needs the
//! Kubernetes API), [`bootstrap`] (`--self-signed`), [`metrics`] and [`config`].

pub mod annotations;
pub mod bootstrap;
pub mod config;
pub mod inject;
pub mod metrics;
pub mod namespaces;
pub mod policy;
mod prune;
pub mod quantity;
pub mod review;
pub mod server;
pub mod tls;
