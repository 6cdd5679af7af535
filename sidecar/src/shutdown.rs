//! The end of a mount's life: waiting for the signal that asks the sidecar to stop.
//!
//! Stale mounts of a killed predecessor and the final unmount of every layer are handled by
//! [`crate::mountsys`]; flushing pending uploads within the grace period by the binary's main.

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
