//! Shared support for s3mount's cross-crate and end-to-end tests, and the local pod runner.

pub mod faultproxy;
pub mod podrun;
