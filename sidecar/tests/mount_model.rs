//! The reference model (`model/mod.rs`) applied through the kernel: random operation sequences on
//! a real FUSE mount of the `s3mount-sidecar` binary over moto's S3 server, with puts and deletes
//! made directly on the bucket by another client in between, compared with the model after every
//! step (the step's result: bytes, entries or errno; every file and directory marker read directly
//! from S3) and at the end of each case (the whole tree through the mount).
//!
//! `fs_model` runs the same model on the filesystem core (hundreds of cases in a second); this
//! test proves the kernel path (lookups, open flags, O_APPEND, truncate(2), rename(2), readdir)
//! and the real S3 protocol agree with it. Its seed is fixed so CI runs the same cases every time;
//! `PROPTEST_RNG_SEED=N` (and `PROPTEST_CASES=N`) explore others.

mod model;
mod mount_common;
mod support;

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use proptest::test_runner::{Config, RngSeed, TestRunner};

use model::{DIRS, FILES, Got, Kind, Model, Step, step};
use mount_common::{Sidecar, can_mount};
use support::{S3Server, ServerKind};

/// One case: a fresh directory of the bucket that stands for the model's root.
struct Case<'a> {
    sc: &'a Sidecar,
    server: &'a S3Server,
    base: String,
}

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error()
        .unwrap_or_else(|| panic!("an error without an errno: {e}"))
}

impl Case<'_> {
    fn path(&self, rel: &str) -> PathBuf {
        self.sc.path(&self.base).join(rel)
    }

    fn key(&self, rel: &str) -> String {
        format!("{}/{rel}", self.base)
    }

    fn write(&self, rel: &str, data: &[u8], append: bool) -> Result<Got, i32> {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(self.path(rel))
            .map_err(errno)?;
        f.write_all(data).map_err(errno)?;
        // The upload happens at close: its result is the step's result.
        nix::unistd::close(f).map_err(|e| e as i32)?;
        Ok(Got::Done)
    }

    fn list(&self, rel: &str) -> Result<Got, i32> {
        let mut out = BTreeSet::new();
        for entry in std::fs::read_dir(self.path(rel)).map_err(errno)? {
            let entry = entry.map_err(errno)?;
            let kind = if entry.file_type().map_err(errno)?.is_dir() {
                Kind::Dir
            } else {
                Kind::File
            };
            out.insert((entry.file_name().into_string().unwrap(), kind));
        }
        Ok(Got::Entries(out))
    }

    fn apply(&self, model: &mut Model, step: &Step) {
        let done = |r: std::io::Result<()>| r.map(|()| Got::Done).map_err(errno);
        let got = match step {
            Step::Write(f, data) => self.write(FILES[*f], data, false),
            Step::Append(f, data) => self.write(FILES[*f], data, true),
            Step::Truncate(f, size) => nix::unistd::truncate(&self.path(FILES[*f]), *size as i64)
                .map(|()| Got::Done)
                .map_err(|e| e as i32),
            Step::Unlink(f) => done(std::fs::remove_file(self.path(FILES[*f]))),
            Step::Mkdir(d) => done(std::fs::create_dir(self.path(DIRS[*d]))),
            Step::Rmdir(d) => done(std::fs::remove_dir(self.path(DIRS[*d]))),
            Step::Rename(a, b) => done(std::fs::rename(self.path(FILES[*a]), self.path(FILES[*b]))),
            Step::RemotePut(f, data) => {
                self.server.put_direct(&self.key(FILES[*f]), data);
                Ok(Got::Done)
            }
            Step::RemoteDelete(f) => {
                self.server.delete_direct(&self.key(FILES[*f]));
                Ok(Got::Done)
            }
            Step::Read(f) => std::fs::read(self.path(FILES[*f])).map(Got::Data).map_err(errno),
            Step::List(d) => self.list(d.map_or("", |d| DIRS[d])),
        };
        model.check(step, got);
        // After every step S3 holds exactly the model: every file's bytes, every directory
        // marker. Checked directly, not through the mount: a listing through the mount between
        // steps would refresh the kernel's cached entries and attributes (readdirplus), and hide
        // a stale one that the next step should have run into.
        for path in FILES {
            assert_eq!(
                self.server.get_direct(&self.key(path)).as_ref(),
                model.files.get(path),
                "{path} in S3 after {step:?}"
            );
        }
        for dir in DIRS {
            assert_eq!(
                self.server.get_direct(&self.key(&format!("{dir}/"))).is_some(),
                model.markers.contains(dir),
                "marker {dir}/ in S3 after {step:?}"
            );
        }
    }

    /// At the end of a case, the whole tree through the mount: every listing and every file.
    fn check_tree(&self, model: &Model) {
        for dir in [None, Some(0), Some(1)] {
            let path = dir.map_or("", |d| DIRS[d]);
            assert_eq!(
                self.list(path),
                model.listing(path),
                "listing of {path:?} at the end"
            );
        }
        for (path, data) in &model.files {
            assert_eq!(
                std::fs::read(self.path(path)).map_err(errno).as_ref(),
                Ok(data),
                "{path} through the mount at the end"
            );
        }
    }
}

fn config() -> Config {
    // Config::default() reads the PROPTEST_* variables; ours apply where none is set.
    let mut config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_MAX_SHRINK_ITERS").is_none() {
        config.max_shrink_iters = 256;
    }
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 12;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(20261204);
    }
    config
}

/// Runs `cases` (each a sequence of steps) on one sidecar over moto, each case in a directory of
/// its own; `Err` is the failure (with proptest's minimal case), with the sidecar's log.
fn on_a_mount(run: impl FnOnce(&dyn Fn(&[Step])) -> Result<(), String>) -> usize {
    let server = S3Server::start(ServerKind::Moto);
    let sc = Sidecar::start(&server, &["--metadata-ttl=0"]);
    let cases = std::cell::Cell::new(0);
    let one_case = |steps: &[Step]| {
        cases.set(cases.get() + 1);
        let case = Case {
            sc: &sc,
            server: &server,
            base: format!("case-{}", cases.get()),
        };
        std::fs::create_dir(case.path("")).unwrap();
        let mut model = Model::default();
        for step in steps {
            case.apply(&mut model, step);
        }
        case.check_tree(&model);
    };
    let result = run(&one_case);
    if let Err(e) = result {
        // The minimal case and the log first; the sidecar is then killed and unmounted (its
        // Drop), not stopped: a stop asserts too and would hide them.
        eprintln!("{e}\nsidecar log:\n{}", sc.log());
        drop(sc);
        panic!("{e}");
    }
    sc.stop();
    cases.get()
}

#[test]
fn the_mount_matches_the_reference_model() {
    if !can_mount() {
        return;
    }
    let cases = on_a_mount(|one_case| {
        TestRunner::new(config())
            .run(&proptest::collection::vec(step(), 1..30), |steps| {
                one_case(&steps);
                Ok(())
            })
            .map_err(|e| e.to_string())
    });
    eprintln!("mount_model: {cases} cases (with shrinking) passed");
}

/// Sequences where a cached kernel entry or attribute (or page) would go stale: another client
/// replaces, removes or adds a name the kernel has just seen; with `--metadata-ttl=0` every step
/// must see the bucket as it is.
#[test]
fn with_ttl_0_other_clients_changes_show_at_once_through_the_kernel() {
    if !can_mount() {
        return;
    }
    use Step::*;
    let replaced = |old: &[u8], new: &[u8]| {
        vec![
            Write(0, old.to_vec()),
            Read(0),
            RemotePut(0, new.to_vec()),
            Read(0),
        ]
    };
    let sequences = [
        // A longer, a shorter, and a same-length replacement of a file just written and read
        // (the kernel's size and pages must not be kept).
        replaced(b"abc", b"0123456789"),
        replaced(b"0123456789", b"xy"),
        replaced(b"aaaa", b"bbbb"),
        // Removed behind the kernel's back, then appended to and truncated.
        vec![
            Write(1, b"abc".to_vec()),
            Read(1),
            RemoteDelete(1),
            Read(1),
            Append(1, b"d".to_vec()),
        ],
        vec![
            Write(1, b"abc".to_vec()),
            RemotePut(1, b"abcdef".to_vec()),
            Append(1, b"g".to_vec()),
        ],
        vec![
            Write(1, b"abc".to_vec()),
            RemotePut(1, b"abcdef".to_vec()),
            Truncate(1, 4),
        ],
        // A name looked up as missing, then added by the other client.
        vec![Read(2), RemotePut(2, b"new".to_vec()), Read(2), List(Some(0))],
        vec![
            List(None),
            RemotePut(4, b"x".to_vec()),
            List(None),
            List(Some(1)),
            Read(4),
        ],
        // A directory emptied by the other client.
        vec![
            RemotePut(2, b"x".to_vec()),
            List(Some(0)),
            RemoteDelete(2),
            List(Some(0)),
            Rmdir(0),
        ],
    ];
    on_a_mount(|one_case| {
        for steps in &sequences {
            one_case(steps);
        }
        Ok(())
    });
}
