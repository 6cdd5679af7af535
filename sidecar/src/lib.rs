//! s3mount's sidecar: a FUSE filesystem over S3 with an on-disk block cache.
//!
//! Layers, bottom up: [`store`] (the object-store trait), [`s3`] (the S3 client behind it),
//! [`cache`] (the on-disk block cache), [`reader`] (the read path: cache, ranged GETs, read-ahead),
//! [`fs`] (the async filesystem core, testable without the kernel) and [`fuse`] (the thin adapter
//! that turns kernel requests into calls on the core). Around them: [`config`] (the command line),
//! [`probe`] (the start-up probe), [`health`] (liveness, readiness, metrics), [`mountsys`]
//! (mount(2) of the FUSE device, stale layers, unmount), [`shutdown`] (signals) and
//! [`mem_store`] (an in-memory store for tests).

pub mod apps;
pub mod cache;
pub mod config;
pub mod fs;
pub mod fuse;
pub mod health;
pub mod mem_store;
pub mod mountsys;
pub mod probe;
pub mod reader;
pub mod s3;
pub mod shutdown;
pub mod store;
