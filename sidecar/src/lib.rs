//! s3mount's sidecar: a FUSE filesystem over S3 with an on-disk block cache.
//!
//! Layers, bottom up: [`store`] (the object-store trait), [`s3`] (the S3 client behind it),
//! [`cache`] (the on-disk block cache), [`reader`] (the read path: cache, ranged GETs, read-ahead),
//! [`fs`] (the async filesystem core, testable without the kernel) and [`fuse`] (the thin adapter
//! that turns kernel requests into calls on the core).

pub mod cache;
pub mod fs;
pub mod fuse;
pub mod reader;
pub mod s3;
pub mod store;
