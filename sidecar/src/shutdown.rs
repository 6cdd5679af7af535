//! Start and end of a mount's life: stale mounts left by a killed predecessor, signals, unmount.

use std::path::Path;

use tracing::{info, warn};

/// Why the mountpoint cannot be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The stale mount could not be detached.
    #[error("stale mount at {path} cannot be unmounted: {source}")]
    Unmount {
        /// The mountpoint.
        path: String,
        /// The errno.
        source: nix::Error,
    },
    /// The mountpoint is missing or unusable.
    #[error("mountpoint {path}: {source}")]
    Mountpoint {
        /// The mountpoint.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Makes `mountpoint` ready to mount on: creates it when missing, and lazily unmounts a dead FUSE
/// mount ("transport endpoint is not connected") that a killed predecessor left behind.
pub fn prepare_mountpoint(mountpoint: &Path) -> Result<(), PrepareError> {
    let path = mountpoint.display().to_string();
    // stat may answer from the kernel's attribute cache for a while; statfs always asks the
    // (dead) server and so tells a stale mount at once.
    let dead = nix::sys::statfs::statfs(mountpoint).err() == Some(nix::errno::Errno::ENOTCONN);
    match std::fs::metadata(mountpoint) {
        Ok(_) if !dead => Ok(()),
        Err(e) if !dead && e.raw_os_error() != Some(libc::ENOTCONN) => {
            if e.kind() == std::io::ErrorKind::NotFound {
                return std::fs::create_dir_all(mountpoint)
                    .map_err(|source| PrepareError::Mountpoint { path, source });
            }
            Err(PrepareError::Mountpoint { path, source: e })
        }
        _ => {
            warn!(mountpoint = %path, "stale FUSE mount found; unmounting it lazily");
            detach(mountpoint).map_err(|source| PrepareError::Unmount {
                path: path.clone(),
                source,
            })?;
            info!(mountpoint = %path, "stale mount removed");
            Ok(())
        }
    }
}

/// Detaches the mount at `mountpoint` (`umount -l`): it leaves the namespace at once, and the
/// FUSE session keeps serving files that are still open until they are closed.
pub fn detach(mountpoint: &Path) -> Result<(), nix::Error> {
    nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH)
}

/// Waits for SIGTERM or SIGINT and returns its name.
pub async fn wait_for_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
