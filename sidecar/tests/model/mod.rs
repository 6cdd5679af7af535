//! The reference model shared by `fs_model` (the filesystem core over the in-memory store) and
//! `mount_model` (the kernel mount of the real binary over a real S3 server): random operation
//! sequences, including puts and deletes made directly on the bucket by "another client", and a
//! plain model of files and directories that says what each step must return.

#![allow(dead_code)] // each test binary including this module uses a part of it

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

pub use s3mount_sidecar::fs::inode::Kind;

pub const DIRS: [&str; 2] = ["d1", "d2"];
pub const FILES: [&str; 5] = ["f1", "f2", "d1/f3", "d1/f4", "d2/f5"];

#[derive(Debug, Clone)]
pub enum Step {
    Write(usize, Vec<u8>),
    Append(usize, Vec<u8>),
    Truncate(usize, u64),
    Unlink(usize),
    Mkdir(usize),
    Rmdir(usize),
    Rename(usize, usize),
    RemotePut(usize, Vec<u8>),
    RemoteDelete(usize),
    Read(usize),
    List(Option<usize>),
}

impl Step {
    /// Made by another client, directly on the bucket.
    pub fn is_remote(&self) -> bool {
        matches!(self, Step::RemotePut(..) | Step::RemoteDelete(_))
    }
}

pub fn step() -> impl Strategy<Value = Step> {
    let file = 0..FILES.len();
    let dir = 0..DIRS.len();
    let data = proptest::collection::vec(any::<u8>(), 0..40);
    prop_oneof![
        (file.clone(), data.clone()).prop_map(|(f, d)| Step::Write(f, d)),
        (file.clone(), data.clone()).prop_map(|(f, d)| Step::Append(f, d)),
        (file.clone(), 0..50u64).prop_map(|(f, n)| Step::Truncate(f, n)),
        file.clone().prop_map(Step::Unlink),
        dir.clone().prop_map(Step::Mkdir),
        dir.clone().prop_map(Step::Rmdir),
        (file.clone(), file.clone()).prop_map(|(a, b)| Step::Rename(a, b)),
        (file.clone(), data).prop_map(|(f, d)| Step::RemotePut(f, d)),
        file.clone().prop_map(Step::RemoteDelete),
        file.prop_map(Step::Read),
        proptest::option::of(dir).prop_map(Step::List),
    ]
}

/// What a step gave back on the real filesystem.
#[derive(Debug, PartialEq)]
pub enum Got {
    Done,
    Data(Vec<u8>),
    Entries(BTreeSet<(String, Kind)>),
}

/// The model: file contents by path, and directories made with mkdir (markers).
#[derive(Debug, Default)]
pub struct Model {
    pub files: BTreeMap<String, Vec<u8>>,
    pub markers: BTreeSet<String>,
}

impl Model {
    pub fn dir_exists(&self, dir: &str) -> bool {
        dir.is_empty()
            || self.markers.contains(dir)
            || self.files.keys().any(|f| f.starts_with(&format!("{dir}/")))
    }

    fn parent_exists(&self, path: &str) -> bool {
        self.dir_exists(path.rsplit_once('/').map_or("", |(p, _)| p))
    }

    pub fn entries(&self, dir: &str) -> BTreeSet<(String, Kind)> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut out = BTreeSet::new();
        for f in self.files.keys().filter_map(|f| f.strip_prefix(&prefix)) {
            match f.split_once('/') {
                Some((d, _)) => out.insert((d.to_string(), Kind::Dir)),
                None => out.insert((f.to_string(), Kind::File)),
            };
        }
        for m in self.markers.iter().filter_map(|m| m.strip_prefix(&prefix)) {
            if !m.contains('/') {
                out.insert((m.to_string(), Kind::Dir));
            }
        }
        out
    }

    /// What listing `dir` must give: its entries, or ENOENT.
    pub fn listing(&self, dir: &str) -> Result<Got, i32> {
        if self.dir_exists(dir) {
            Ok(Got::Entries(self.entries(dir)))
        } else {
            Err(libc::ENOENT)
        }
    }

    /// Asserts that `got`, what `step` returned on the real filesystem, is what the model
    /// expects, and applies the step to the model.
    pub fn check(&mut self, step: &Step, got: Result<Got, i32>) {
        let done = Ok(Got::Done);
        match step {
            Step::Write(f, data) | Step::Append(f, data) => {
                let path = FILES[*f];
                if self.parent_exists(path) {
                    assert_eq!(got, done, "{step:?}");
                    let entry = self.files.entry(path.to_string()).or_default();
                    if matches!(step, Step::Write(..)) {
                        entry.clear();
                    }
                    entry.extend_from_slice(data);
                } else {
                    assert_eq!(got, Err(libc::ENOENT), "{step:?}");
                }
            }
            Step::Truncate(f, size) => match self.files.get_mut(FILES[*f]) {
                Some(data) => {
                    assert_eq!(got, done, "{step:?}");
                    data.resize(*size as usize, 0);
                }
                None => assert_eq!(got, Err(libc::ENOENT), "{step:?}"),
            },
            Step::Unlink(f) => {
                let expected = match self.files.remove(FILES[*f]) {
                    Some(_) => done,
                    None => Err(libc::ENOENT),
                };
                assert_eq!(got, expected, "{step:?}");
            }
            Step::Mkdir(d) => {
                let dir = DIRS[*d];
                if self.dir_exists(dir) {
                    assert_eq!(got, Err(libc::EEXIST), "{step:?}");
                } else {
                    assert_eq!(got, done, "{step:?}");
                    self.markers.insert(dir.to_string());
                }
            }
            Step::Rmdir(d) => {
                let dir = DIRS[*d];
                if !self.dir_exists(dir) {
                    assert_eq!(got, Err(libc::ENOENT), "{step:?}");
                } else if !self.entries(dir).is_empty() {
                    assert_eq!(got, Err(libc::ENOTEMPTY), "{step:?}");
                } else {
                    assert_eq!(got, done, "{step:?}");
                    self.markers.remove(dir);
                }
            }
            Step::Rename(a, b) => {
                let (from, to) = (FILES[*a], FILES[*b]);
                if !self.files.contains_key(from) || !self.parent_exists(to) {
                    assert_eq!(got, Err(libc::ENOENT), "{step:?}");
                } else {
                    assert_eq!(got, done, "{step:?}");
                    let data = self.files.remove(from).unwrap();
                    self.files.insert(to.to_string(), data);
                }
            }
            Step::RemotePut(f, data) => {
                assert_eq!(got, done, "{step:?}");
                self.files.insert(FILES[*f].to_string(), data.clone());
            }
            Step::RemoteDelete(f) => {
                assert_eq!(got, done, "{step:?}");
                self.files.remove(FILES[*f]);
            }
            Step::Read(f) => match self.files.get(FILES[*f]) {
                Some(data) => assert_eq!(got, Ok(Got::Data(data.clone())), "{step:?}"),
                None => assert_eq!(got, Err(libc::ENOENT), "{step:?}"),
            },
            Step::List(d) => assert_eq!(got, self.listing(d.map_or("", |d| DIRS[d])), "{step:?}"),
        }
    }
}
