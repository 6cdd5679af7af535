//! Mapping between paths and S3 keys, and which names and keys can be a path.
//!
//! A path inside the mount is kept relative and without a leading `/` (the root is `""`). The key
//! of a file is `prefix + path`; a directory's listing prefix (and its marker object) is
//! `prefix + path + "/"`. Keys are UTF-8 and compared byte for byte: no name is normalised.

use std::ffi::OsStr;

use crate::fs::error::{FsError, FsResult};

/// Longest name of one directory entry, in bytes (NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;
/// Longest S3 key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// Checks a name this mount is asked to create (a file, directory or link, or a rename's new
/// name): a valid name that does not end in [`LINK_SUFFIX`], because such a key would list as the
/// symbolic link of the name without the suffix, not under the name it was created with.
pub fn check_new_name(name: &OsStr) -> FsResult<&str> {
    let name = check_name(name)?;
    if name.ends_with(LINK_SUFFIX) {
        return Err(FsError::InvalidName(format!(
            "{name:?}: names ending in {LINK_SUFFIX} are reserved for symbolic links"
        )));
    }
    Ok(name)
}

/// Checks a name handed in by the kernel for a new or looked-up entry.
pub fn check_name(name: &OsStr) -> FsResult<&str> {
    let Some(name) = name.to_str() else {
        return Err(FsError::InvalidName(format!(
            "{name:?} is not UTF-8, which S3 keys must be"
        )));
    };
    if name.len() > MAX_NAME_LEN {
        return Err(FsError::NameTooLong(format!(
            "{} bytes > {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(FsError::InvalidName(format!("{name:?}")));
    }
    Ok(name)
}

/// Why a listed name cannot be shown, or `None` when it can.
pub fn unusable_segment(segment: &str) -> Option<&'static str> {
    if segment.is_empty() {
        Some("empty path segment")
    } else if segment == "." || segment == ".." {
        Some("'.' or '..' segment")
    } else if segment.len() > MAX_NAME_LEN {
        Some("segment longer than 255 bytes")
    } else {
        None
    }
}

/// The path of `name` inside the directory at `parent`.
pub fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// The parent directory's path and the last name of `path` (the root has no parent).
pub fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

/// The key of the file at `path`.
pub fn file_key(prefix: &str, path: &str) -> String {
    format!("{prefix}{path}")
}

/// The listing prefix, and marker key, of the directory at `path`.
pub fn dir_key(prefix: &str, path: &str) -> String {
    if path.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}{path}/")
    }
}

/// Suffix of the object that stores a symbolic link: `name.rclonelink` holds the target of the
/// link `name`. This is rclone's convention (`--links`), so links made by either tool are read by
/// both. A file whose own name ends in `.rclonelink` is therefore shown as a link.
pub const LINK_SUFFIX: &str = ".rclonelink";

/// The key of the symbolic link at `path`.
pub fn link_key(prefix: &str, path: &str) -> String {
    format!("{prefix}{path}{LINK_SUFFIX}")
}

/// Refuses a key S3 would refuse.
pub fn check_key(key: &str) -> FsResult<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(FsError::NameTooLong(format!(
            "key of {} bytes > {MAX_KEY_LEN}",
            key.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_over_255_bytes_are_name_too_long() {
        let long = "é".repeat(128);
        assert!(matches!(
            check_name(OsStr::new(&long)),
            Err(FsError::NameTooLong(_))
        ));
        assert!(check_name(OsStr::new(&"a".repeat(255))).is_ok());
    }

    #[test]
    fn dot_names_and_slashes_are_invalid() {
        for bad in [".", "..", "a/b", ""] {
            assert!(
                matches!(check_name(OsStr::new(bad)), Err(FsError::InvalidName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn keys_map_under_the_prefix() {
        assert_eq!(file_key("p/", "a/b c"), "p/a/b c");
        assert_eq!(dir_key("p/", "a"), "p/a/");
        assert_eq!(dir_key("p/", ""), "p/");
        assert_eq!(split("a/b/c"), ("a/b", "c"));
        assert_eq!(split("c"), ("", "c"));
    }
}
