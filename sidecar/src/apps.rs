//! Legacy sidecar mode: noticing that the app containers have exited, so that a Job completes.
//!
//! A native sidecar (Kubernetes >= 1.29) is stopped by the kubelet once the app containers are
//! done. A legacy sidecar is an ordinary container: the pod runs until every container has
//! exited, so a Job would never complete. For that case the webhook sets
//! `shareProcessNamespace: true` and passes `--stop-when-apps-exit`: every container of the pod
//! then shares one PID namespace, and the sidecar sees the app processes in `/proc`.
//!
//! The rule: an *app process* is any process but PID 1 (the pod's pause process), this process,
//! its children, and other runs of this very binary (the kubelet's probe and postStart hook run
//! `s3mount-sidecar probe` in the sidecar container). Once at least one app process has been
//! seen, and then none for [`QUIET_POLLS`] polls in a row, the apps are taken to have exited and
//! the sidecar shuts down as on SIGTERM (flush, unmount, exit 0).
//!
//! The trade-off, also in the README: with a shared PID namespace the apps can see (and, as the
//! same user, signal) the sidecar's processes, and the sidecar is not PID 1 of its container.
//! Without a shared namespace (the sidecar is PID 1) the watch is off and says so once.

use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};

/// How often `/proc` is read.
pub const POLL: Duration = Duration::from_millis(500);
/// Polls in a row without an app process before the apps count as exited.
pub const QUIET_POLLS: u32 = 4;

/// One process as far as the rule needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// Its PID.
    pub pid: u32,
    /// Its parent's PID.
    pub ppid: u32,
    /// Whether it runs the same executable as this process.
    pub same_exe: bool,
}

/// The app processes among `procs`, by the rule of the module doc.
pub fn app_processes(procs: &[Proc], me: u32) -> Vec<u32> {
    procs
        .iter()
        .filter(|p| p.pid != 1 && p.pid != me && p.ppid != me && !p.same_exe)
        .map(|p| p.pid)
        .collect()
}

/// Reads the processes of `/proc` (those that vanish while being read are skipped).
pub fn read_procs(proc_root: &Path) -> std::io::Result<Vec<Proc>> {
    let my_exe = std::fs::read_link(proc_root.join("self/exe")).ok();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(proc_root)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses, so cut at the last ')'.
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        else {
            continue;
        };
        let exe = std::fs::read_link(entry.path().join("exe")).ok();
        let same_exe = my_exe.is_some() && exe == my_exe;
        out.push(Proc { pid, ppid, same_exe });
    }
    Ok(out)
}

/// Resolves once the app processes have come and gone; never resolves when the watch cannot work.
pub async fn wait_until_apps_exit() {
    let me = std::process::id();
    if me == 1 {
        warn!(
            "--stop-when-apps-exit: this process is PID 1, so the pod does not share its process \
             namespace (shareProcessNamespace: true); the sidecar will not notice the apps exiting"
        );
        return std::future::pending().await;
    }
    let mut seen = false;
    let mut quiet = 0;
    loop {
        match read_procs(Path::new("/proc")) {
            Ok(procs) => {
                let apps = app_processes(&procs, me);
                if !apps.is_empty() {
                    if !seen {
                        info!(
                            processes = apps.len(),
                            "app processes seen; the sidecar stops when they are gone"
                        );
                    }
                    seen = true;
                    quiet = 0;
                } else if seen {
                    quiet += 1;
                    if quiet >= QUIET_POLLS {
                        info!("every app process has exited");
                        return;
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot read /proc to watch the app processes"),
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, ppid: u32, same_exe: bool) -> Proc {
        Proc { pid, ppid, same_exe }
    }

    #[test]
    fn pause_self_children_and_probes_are_not_apps() {
        let me = 7;
        let procs = [
            p(1, 0, false),
            p(7, 1, true),
            p(8, 7, false),
            p(9, 0, true),
            p(12, 0, false),
        ];
        assert_eq!(app_processes(&procs, me), vec![12]);
    }

    #[test]
    fn proc_of_this_machine_parses_and_finds_this_process() {
        let procs = read_procs(Path::new("/proc")).expect("/proc is readable");
        let me = std::process::id();
        let mine = procs
            .iter()
            .find(|p| p.pid == me)
            .expect("this process is listed");
        assert!(mine.same_exe);
        assert!(!app_processes(&procs, me).contains(&me));
    }
}
