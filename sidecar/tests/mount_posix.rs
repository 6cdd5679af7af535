//! Through a real kernel mount of the real binary, on both test S3 servers (rclone and moto):
//! the operations of SEMANTICS.md, checked against the bucket with direct S3 requests.

mod mount_common;
mod support;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use mount_common::{Sidecar, can_mount, list};
use support::{S3Server, ServerKind};

fn servers() -> Vec<S3Server> {
    S3Server::both()
}

#[test]
fn mount_lists_reads_writes_and_removes_through_the_kernel() {
    if !can_mount() {
        return;
    }
    for server in servers() {
        let kind = server.kind;
        server.put_direct("hello.txt", b"hello world\n");
        server.put_direct("sub/nested.bin", &[0, 1, 2, 255]);
        let sc = Sidecar::start(&server, &["--uid=1234", "--gid=5678", "--file-mode=0640"]);
        let ready = sc.health_until("/readyz", Duration::from_secs(5), |(c, _)| *c == 200);
        assert_eq!(ready.0, 200, "{kind:?}: ready once mounted");
        assert_eq!(sc.health_get("/livez").0, 200);
        assert_eq!(list(&sc.mountpoint), vec!["hello.txt", "sub"], "{kind:?}");
        assert_eq!(
            std::fs::read(sc.path("hello.txt")).unwrap(),
            b"hello world\n",
            "{kind:?}"
        );
        assert_eq!(
            std::fs::read(sc.path("sub/nested.bin")).unwrap(),
            [0, 1, 2, 255],
            "{kind:?}"
        );
        let meta = std::fs::metadata(sc.path("hello.txt")).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777, meta.len()),
            (1234, 5678, 0o640, 12)
        );

        std::fs::write(sc.path("new.txt"), b"written through the mount").unwrap();
        assert_eq!(
            server.get_direct("new.txt").as_deref(),
            Some(&b"written through the mount"[..]),
            "{kind:?}"
        );
        std::fs::create_dir(sc.path("made")).unwrap();
        std::fs::write(sc.path("made/child"), b"c").unwrap();
        assert_eq!(
            server.get_direct("made/child").as_deref(),
            Some(&b"c"[..]),
            "{kind:?}"
        );
        let err = std::fs::remove_dir(sc.path("made")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY), "{kind:?}");
        std::fs::remove_file(sc.path("made/child")).unwrap();
        std::fs::remove_dir(sc.path("made")).unwrap();
        std::fs::remove_file(sc.path("new.txt")).unwrap();
        assert_eq!(server.get_direct("new.txt"), None, "{kind:?}");
        assert_eq!(list(&sc.mountpoint), vec!["hello.txt", "sub"], "{kind:?}");
        let metrics = sc.health_get("/metrics").1;
        assert!(
            metrics.contains("s3mount_fuse_requests_total{op=\"lookup\"}"),
            "{metrics}"
        );
        sc.stop();
    }
}

#[test]
fn mount_empty_directories_and_empty_files_persist() {
    if !can_mount() {
        return;
    }
    for server in servers() {
        let kind = server.kind;
        let sc = Sidecar::start(&server, &[]);
        std::fs::create_dir(sc.path("empty-dir")).unwrap();
        std::fs::File::create(sc.path("empty-file")).unwrap();
        assert!(
            std::fs::metadata(sc.path("empty-dir")).unwrap().is_dir(),
            "{kind:?}"
        );
        assert_eq!(
            server.get_direct("empty-file").as_deref(),
            Some(&b""[..]),
            "{kind:?}"
        );
        sc.stop();
        let sc = Sidecar::start(&server, &[]);
        if kind == ServerKind::Rclone {
            // rclone stores a `dir/` marker as a file; the mount keeps such directories only while
            // it runs (SEMANTICS.md), and must not turn them into files.
            assert_eq!(list(&sc.mountpoint), vec!["empty-file"], "{kind:?}");
        } else {
            assert_eq!(list(&sc.mountpoint), vec!["empty-dir", "empty-file"], "{kind:?}");
            assert!(std::fs::metadata(sc.path("empty-dir")).unwrap().is_dir());
        }
        assert_eq!(std::fs::metadata(sc.path("empty-file")).unwrap().len(), 0);
        sc.stop();
    }
}

#[test]
fn mount_odd_names_are_exact_and_can_be_opened_renamed_and_removed() {
    if !can_mount() {
        return;
    }
    let odd = [
        "with space",
        "100% sure",
        "a+b",
        "hash#tag",
        "what?",
        "quote\"d",
        "it's",
        "é日本語",
        "x&y=z",
    ];
    for server in servers() {
        let kind = server.kind;
        for name in odd {
            server.put_direct(&format!("odd/{name}"), name.as_bytes());
        }
        let sc = Sidecar::start(&server, &[]);
        let mut expected: Vec<String> = odd.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(list(&sc.path("odd")), expected, "{kind:?}");
        for name in odd {
            let path = sc.path(&format!("odd/{name}"));
            assert_eq!(std::fs::read(&path).unwrap(), name.as_bytes(), "{kind:?} {name}");
            let renamed = sc.path(&format!("odd/{name} (2)"));
            std::fs::rename(&path, &renamed).unwrap();
            assert_eq!(
                server.get_direct(&format!("odd/{name} (2)")).as_deref(),
                Some(name.as_bytes())
            );
            std::fs::remove_file(&renamed).unwrap();
            assert_eq!(
                server.get_direct(&format!("odd/{name} (2)")),
                None,
                "{kind:?} {name}"
            );
        }
        sc.stop();
    }
}

#[test]
fn mount_large_files_stream_by_multipart_and_read_back_exactly() {
    if !can_mount() {
        return;
    }
    let data: Vec<u8> = (0..(20 * 1024 * 1024 + 12345u32))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for server in servers() {
        let kind = server.kind;
        let sc = Sidecar::start(&server, &[]);
        let mut f = std::fs::File::create(sc.path("big.bin")).unwrap();
        for chunk in data.chunks(1 << 20) {
            f.write_all(chunk).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        assert!(
            server.get_direct("big.bin").unwrap() == data,
            "{kind:?}: bucket holds the exact bytes"
        );
        assert!(
            std::fs::read(sc.path("big.bin")).unwrap() == data,
            "{kind:?}: read back through the mount"
        );
        sc.stop();
    }
}

#[test]
fn mount_overwrite_append_random_write_and_truncate() {
    if !can_mount() {
        return;
    }
    for server in servers() {
        let kind = server.kind;
        server.put_direct("f", b"0123456789");
        let sc = Sidecar::start(&server, &[]);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(sc.path("f"))
            .unwrap();
        f.seek(SeekFrom::Start(3)).unwrap();
        f.write_all(b"abc").unwrap();
        drop(f);
        assert_eq!(
            server.get_direct("f").as_deref(),
            Some(&b"012abc6789"[..]),
            "{kind:?} random write"
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(sc.path("f"))
            .unwrap();
        f.write_all(b"+tail").unwrap();
        drop(f);
        assert_eq!(
            server.get_direct("f").as_deref(),
            Some(&b"012abc6789+tail"[..]),
            "{kind:?} append"
        );
        std::fs::OpenOptions::new()
            .write(true)
            .open(sc.path("f"))
            .unwrap()
            .set_len(4)
            .unwrap();
        assert_eq!(
            server.get_direct("f").as_deref(),
            Some(&b"012a"[..]),
            "{kind:?} truncate"
        );
        std::fs::write(sc.path("f"), b"overwritten").unwrap();
        assert_eq!(
            server.get_direct("f").as_deref(),
            Some(&b"overwritten"[..]),
            "{kind:?} overwrite"
        );
        let mut back = String::new();
        std::fs::File::open(sc.path("f"))
            .unwrap()
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, "overwritten");
        sc.stop();
    }
}

#[test]
fn mount_rename_moves_files_and_whole_directories() {
    if !can_mount() {
        return;
    }
    for server in servers() {
        let kind = server.kind;
        for key in ["tree/a", "tree/sub/b", "tree/sub/c d"] {
            server.put_direct(key, key.as_bytes());
        }
        let sc = Sidecar::start(&server, &[]);
        std::fs::rename(sc.path("tree"), sc.path("moved")).unwrap();
        assert_eq!(list(&sc.mountpoint), vec!["moved"], "{kind:?}");
        assert_eq!(list(&sc.path("moved/sub")), vec!["b", "c d"], "{kind:?}");
        assert_eq!(
            server.get_direct("moved/sub/c d").as_deref(),
            Some(&b"tree/sub/c d"[..]),
            "{kind:?}"
        );
        assert_eq!(server.get_direct("tree/a"), None, "{kind:?}");
        sc.stop();
    }
}

#[test]
fn mount_read_only_refuses_writes_with_erofs() {
    if !can_mount() {
        return;
    }
    let server = S3Server::start(ServerKind::Rclone);
    server.put_direct("f", b"1");
    let sc = Sidecar::start(&server, &["--read-only"]);
    assert_eq!(std::fs::read(sc.path("f")).unwrap(), b"1");
    let err = std::fs::write(sc.path("g"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let err = std::fs::remove_file(sc.path("f")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let err = std::fs::create_dir(sc.path("d")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    sc.stop();
}

#[test]
fn mount_object_and_prefix_of_the_same_name_show_one_directory() {
    if !can_mount() {
        return;
    }
    // Only moto can hold `a` and `a/b` at once.
    let server = S3Server::start(ServerKind::Moto);
    server.put_direct("a", b"hidden");
    server.put_direct("a/b", b"visible");
    let sc = Sidecar::start(&server, &[]);
    assert_eq!(list(&sc.mountpoint), vec!["a"]);
    assert!(std::fs::metadata(sc.path("a")).unwrap().is_dir());
    assert_eq!(std::fs::read(sc.path("a/b")).unwrap(), b"visible");
    let log = sc.stop();
    assert!(
        log.contains("object hidden by a directory"),
        "the hidden object is logged"
    );
}

#[test]
fn mount_unsupported_operations_fail_loudly() {
    if !can_mount() {
        return;
    }
    let server = S3Server::start(ServerKind::Rclone);
    server.put_direct("f", b"1");
    let sc = Sidecar::start(&server, &[]);
    let err = std::fs::hard_link(sc.path("f"), sc.path("hard")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTSUP));
    let err = nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        &sc.path("f"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .unwrap_err();
    assert_eq!(err, nix::errno::Errno::ENOTSUP);
    sc.stop();
}

#[test]
fn mount_other_clients_changes_show_after_the_ttl() {
    if !can_mount() {
        return;
    }
    let server = S3Server::start(ServerKind::Moto);
    server.put_direct("f", b"v1");
    let sc = Sidecar::start(&server, &["--metadata-ttl=500ms"]);
    assert_eq!(std::fs::read(sc.path("f")).unwrap(), b"v1");
    server.put_direct("f", b"version two");
    server.put_direct("g", b"new");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(std::fs::read(sc.path("f")).unwrap(), b"version two");
    assert_eq!(list(&sc.mountpoint), vec!["f", "g"]);
    sc.stop();
}

#[test]
fn mount_lists_directories_of_many_pages_including_a_prefix_that_starts_a_page() {
    if !can_mount() {
        return;
    }
    for server in servers() {
        let kind = server.kind;
        // 1000 objects fill the first page of S3's default size; `later/` starts the next one.
        for i in 0..1000 {
            server.put_direct(&format!("many/f{i:04}"), b"x");
        }
        server.put_direct("many/later/inside", b"y");
        let sc = Sidecar::start(&server, &[]);
        let names = list(&sc.path("many"));
        assert_eq!(names.len(), 1001, "{kind:?}");
        assert_eq!(names.last().map(String::as_str), Some("later"), "{kind:?}");
        assert!(
            std::fs::metadata(sc.path("many/later")).unwrap().is_dir(),
            "{kind:?}"
        );
        assert_eq!(list(&sc.path("many/later")), vec!["inside"], "{kind:?}");
        sc.stop();
    }
}

#[test]
fn mount_symbolic_links_are_rclonelink_objects() {
    if !can_mount() {
        return;
    }
    for server in servers() {
        let kind = server.kind;
        server.put_direct("target.txt", b"pointed at");
        server.put_direct("made-elsewhere.rclonelink", b"target.txt");
        let sc = Sidecar::start(&server, &[]);
        std::os::unix::fs::symlink("target.txt", sc.path("link")).unwrap();
        assert_eq!(
            server.get_direct("link.rclonelink").as_deref(),
            Some(&b"target.txt"[..]),
            "{kind:?}"
        );
        assert_eq!(
            std::fs::read_link(sc.path("link")).unwrap().to_str(),
            Some("target.txt"),
            "{kind:?}"
        );
        assert!(
            std::fs::symlink_metadata(sc.path("link"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            std::fs::read(sc.path("link")).unwrap(),
            b"pointed at",
            "{kind:?}: followed by the kernel"
        );
        assert_eq!(
            std::fs::read(sc.path("made-elsewhere")).unwrap(),
            b"pointed at",
            "{kind:?}"
        );
        assert_eq!(
            list(&sc.mountpoint),
            vec!["link", "made-elsewhere", "target.txt"],
            "{kind:?}"
        );
        std::fs::rename(sc.path("link"), sc.path("renamed")).unwrap();
        assert_eq!(
            server.get_direct("renamed.rclonelink").as_deref(),
            Some(&b"target.txt"[..]),
            "{kind:?}"
        );
        std::fs::remove_file(sc.path("renamed")).unwrap();
        assert_eq!(server.get_direct("renamed.rclonelink"), None, "{kind:?}");
        sc.stop();
    }
}
