//! `s3mount-podrun`: runs a Pod on this machine the way a kubelet would, without a cluster.
//!
//! It exists so that the whole s3mount path (webhook patch, sidecar, mount propagation, pod
//! lifecycle) can be exercised on one machine with real parts. See [`s3mount_tests::podrun`]
//! for what it models and what it does not.

use std::process::ExitCode;

fn main() -> ExitCode {
    s3mount_tests::podrun::main()
}
