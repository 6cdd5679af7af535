//! Mounting and unmounting the FUSE device ourselves, so that recovery after a crash works for
//! the app containers too.
//!
//! Why not let fuser mount: when a sidecar is killed, its FUSE mount stays behind in every mount
//! namespace that received it by propagation, dead ("transport endpoint is not connected"). An
//! app container that was created while the mount existed holds a *copy of the FUSE mount itself*
//! at its mount path (the kubelet's bind resolves to the top-most mount), not a copy of the
//! emptyDir below it. Unmounting the dead mount and mounting a fresh one on the emptyDir therefore
//! never reaches that app: its copy is not a child of the emptyDir's peer group. What does reach
//! it is a mount made *on top of* the dead mount: the dead mount is shared with the node's copy,
//! and the app's copy is its slave (`HostToContainer`), so a mount stacked on it propagates into
//! the app, which sees the bucket again without a restart. fuser's own mount code opens the
//! mountpoint first, which fails on a dead FUSE root, so we open `/dev/fuse` and call mount(2)
//! ourselves and hand the descriptor to fuser.
//!
//! The dead layers stay under the live one while the pod runs; [`unmount_all`] removes every FUSE
//! layer at the mountpoint at shutdown, each unmount propagating to the node and the apps, so
//! nothing is left under the pod's volume directory.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use tracing::{info, warn};

/// The FUSE filesystem type prefix in mountinfo (`fuse`, `fuse.s3mount`, `fuseblk`).
const FUSE_TYPE_PREFIX: &str = "fuse";
/// At most this many stacked layers are removed at shutdown (a crash loop leaves one each).
const MAX_LAYERS: usize = 256;

/// Kernel options of a mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Shown as the source in mountinfo.
    pub fsname: String,
    /// Filesystem subtype (`fuse.<subtype>`).
    pub subtype: String,
    /// Mount read-only.
    pub read_only: bool,
    /// Let every user in (app containers run as other uids).
    pub allow_other: bool,
    /// Let the kernel check permission bits.
    pub default_permissions: bool,
    /// Largest read the kernel sends.
    pub max_read: u32,
}

/// What [`mount`] found at the mountpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Nothing of FUSE was there.
    Fresh,
    /// A predecessor's FUSE mount was there; the new one is stacked on it.
    Stacked,
}

/// Opens `/dev/fuse` and mounts it at `mountpoint`; returns the descriptor for the session.
pub fn mount(mountpoint: &Path, opts: &MountOptions) -> io::Result<(OwnedFd, Placement)> {
    let placement = if top_is_fuse(mountpoint)? {
        // A live mount (another sidecar serving it) is left alone: stacking on it, and removing
        // every layer at our shutdown, would tear down a mount that is not ours.
        if nix::sys::statfs::statfs(mountpoint).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} is already a live FUSE mount (another s3mount-sidecar?); refusing to mount over it",
                    mountpoint.display()
                ),
            ));
        }
        warn!(
            mountpoint = %mountpoint.display(),
            "a dead FUSE mount of a previous sidecar is here (killed?); stacking the new mount on it so \
             that containers holding the old one see the new one; old layers are removed at shutdown"
        );
        Placement::Stacked
    } else {
        if !mountpoint.exists() {
            std::fs::create_dir_all(mountpoint)?;
        }
        Placement::Fresh
    };
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")?;
    let fd: OwnedFd = dev.into();
    let mut data = format!(
        "fd={},rootmode=40000,user_id={},group_id={},max_read={}",
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        nix::unistd::geteuid(),
        nix::unistd::getegid(),
        opts.max_read
    );
    if opts.allow_other {
        data.push_str(",allow_other");
    }
    if opts.default_permissions {
        data.push_str(",default_permissions");
    }
    let mut flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    if opts.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let fstype = format!("fuse.{}", opts.subtype);
    nix::mount::mount(
        Some(opts.fsname.as_str()),
        mountpoint,
        Some(fstype.as_str()),
        flags,
        Some(data.as_str()),
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("mount {}: {e}", mountpoint.display()),
        )
    })?;
    Ok((fd, placement))
}

/// Unmounts every FUSE layer at `mountpoint`, top first; returns how many were removed.
///
/// A plain unmount is tried first; a busy layer (files still open) is detached lazily, which
/// removes it from every namespace at once.
pub fn unmount_all(mountpoint: &Path) -> io::Result<usize> {
    let mut removed = 0;
    while removed < MAX_LAYERS && top_is_fuse(mountpoint)? {
        match nix::mount::umount2(mountpoint, MntFlags::empty()) {
            Ok(()) => {}
            Err(nix::errno::Errno::EBUSY) => {
                warn!(mountpoint = %mountpoint.display(), "mount busy; detaching it lazily");
                nix::mount::umount2(mountpoint, MntFlags::MNT_DETACH)
                    .map_err(|e| io::Error::other(format!("umount -l {}: {e}", mountpoint.display())))?;
            }
            Err(e) => return Err(io::Error::other(format!("umount {}: {e}", mountpoint.display()))),
        }
        removed += 1;
    }
    if removed > 1 {
        info!(mountpoint = %mountpoint.display(), layers = removed, "removed stacked FUSE layers");
    }
    Ok(removed)
}

/// Whether the top-most mount at `path` (by this process's mountinfo) is a FUSE mount.
pub fn top_is_fuse(path: &Path) -> io::Result<bool> {
    let want = std::path::absolute(path)?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(top_fstype(&info, &want.to_string_lossy()).is_some_and(|t| t.starts_with(FUSE_TYPE_PREFIX)))
}

/// One line of `/proc/<pid>/mountinfo`, the fields s3mount looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted (escapes undone).
    pub mount_point: String,
    /// Filesystem type, e.g. `fuse.s3mount`.
    pub fstype: String,
    /// Mount source, e.g. `s3mount:BUCKET`.
    pub source: String,
    /// The filesystem's device number, `major:minor` (a FUSE mount's backing device info in
    /// `/sys/class/bdi` has this name).
    pub device: String,
}

/// Parses a mountinfo text, in its order (a later line is mounted on top of an earlier one).
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(MountEntry {
                mount_point: unescape_mountinfo(fields.get(4)?),
                fstype: (*fields.get(sep + 1)?).to_string(),
                source: fields.get(sep + 2).copied().unwrap_or_default().to_string(),
                device: (*fields.get(2)?).to_string(),
            })
        })
        .collect()
}

/// Sets the kernel's read-ahead for the FUSE mount on top at `mountpoint`
/// (`/sys/class/bdi/MAJOR:MINOR/read_ahead_kb`).
///
/// When the kernel takes the FUSE_INIT answer it caps the mount's read-ahead at the default
/// 128 KiB, whatever the filesystem asks for, so call this after the mount first answered. Reads
/// are split into requests of at most the read-ahead: a random 256 KiB read
/// then reaches the filesystem as a first request and a second one that looks sequential, which
/// costs two GETs and starts a read-ahead. Raised to the size of the reads that should arrive
/// whole, a random read comes as one request. (Larger values did not speed sequential reads on
/// the machine `bench/RESULTS.md` names; the filesystem's own read-ahead does that work.)
/// Needs a writable `/sys` (the privileged sidecar has one); failing is logged and harmless.
pub fn set_read_ahead(mountpoint: &Path, kib: u32) -> io::Result<String> {
    let want = std::path::absolute(mountpoint)?;
    let want = want.to_string_lossy();
    let device = own_mounts()?
        .into_iter()
        .rfind(|m| m.mount_point == want)
        .map(|m| m.device)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no mount at {want}")))?;
    let knob = format!("/sys/class/bdi/{device}/read_ahead_kb");
    std::fs::write(&knob, kib.to_string()).map_err(|e| io::Error::new(e.kind(), format!("{knob}: {e}")))?;
    Ok(knob)
}

/// This process's mounts (`/proc/self/mountinfo`).
pub fn own_mounts() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The filesystem type of the last (top-most) mount at `target` in a mountinfo text.
fn top_fstype(mountinfo: &str, target: &str) -> Option<String> {
    parse_mountinfo(mountinfo)
        .into_iter()
        .rfind(|m| m.mount_point == target)
        .map(|m| m.fstype)
}

/// Undoes mountinfo's octal escapes of space, tab, newline and backslash (`\040` for a space).
pub fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(n) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(n);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
95 22 8:1 /tmp/vol /s3mount/mnt/default rw shared:5 - ext4 /dev/vda rw
97 95 0:50 / /s3mount/mnt/default rw,nosuid,nodev shared:6 - fuse.s3mount s3mount:demo rw
98 22 8:1 /x /a\\040b rw - ext4 /dev/vda rw
";

    #[test]
    fn the_top_most_mount_decides() {
        assert_eq!(
            top_fstype(INFO, "/s3mount/mnt/default").as_deref(),
            Some("fuse.s3mount")
        );
        assert_eq!(top_fstype(INFO, "/").as_deref(), Some("ext4"));
        assert_eq!(top_fstype(INFO, "/a b").as_deref(), Some("ext4"));
        assert_eq!(top_fstype(INFO, "/nothing"), None);
        let fuse = parse_mountinfo(INFO).into_iter().nth(2).unwrap();
        assert_eq!(
            (fuse.device.as_str(), fuse.source.as_str()),
            ("0:50", "s3mount:demo")
        );
    }
}
