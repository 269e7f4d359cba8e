//! Archive extraction against crafted archives, all built here: every attack of
//! security-reliability §6.2 is refused with a reason naming the entry, and leaves no tree.

use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use app_executor::artifact::{extract_archive, ExtractError, ExtractLimits};
use tar::EntryType;

/// A tar header written byte by byte, so names the builder refuses (`../x`, `/etc/x`) fit.
fn header(name: &str, kind: EntryType, size: u64, mode: u32, link: Option<&str>) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(link) = link {
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_size(size);
    h.set_mode(mode);
    h.set_entry_type(kind);
    h.set_mtime(0);
    h.set_cksum();
    h
}

/// Entries: (name, kind, mode, data or link target).
enum E<'a> {
    File(&'a str, u32, &'a [u8]),
    Dir(&'a str),
    Link(&'a str, EntryType, &'a str),
    Special(&'a str, EntryType),
}

fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::File(name, mode, data) => {
                let h = header(name, EntryType::Regular, data.len() as u64, *mode, None);
                b.append(&h, *data).unwrap();
            }
            E::Dir(name) => b
                .append(&header(name, EntryType::Directory, 0, 0o755, None), &[][..])
                .unwrap(),
            E::Link(name, kind, target) => b
                .append(&header(name, *kind, 0, 0o777, Some(target)), &[][..])
                .unwrap(),
            E::Special(name, kind) => b
                .append(&header(name, *kind, 0, 0o644, None), &[][..])
                .unwrap(),
        }
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

struct Case {
    _dir: tempfile::TempDir,
    archive: PathBuf,
    dest: PathBuf,
}

fn case(name: &str, bytes: &[u8]) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join(name);
    fs::write(&archive, bytes).unwrap();
    let dest = dir.path().join("out");
    Case {
        _dir: dir,
        archive,
        dest,
    }
}

/// Extracts, expects a rejection, and checks that nothing was left behind.
fn rejected(c: &Case, limits: &ExtractLimits) -> ExtractError {
    let err = extract_archive(&c.archive, &c.dest, limits).expect_err("archive was accepted");
    assert!(!c.dest.exists(), "a partial tree was left: {err}");
    err
}

fn reject(name: &str, bytes: &[u8]) -> (String, &'static str) {
    let c = case(name, bytes);
    let err = rejected(&c, &ExtractLimits::default());
    (err.to_string(), err.code())
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_normal_tgz_extracts_with_modes_kept_minus_setuid() {
    let bytes = gzip(&tar_of(&[
        E::Dir("./"),
        E::Dir("app/"),
        E::File("app/index.js", 0o644, b"console.log(1)\n"),
        E::File("app/bin/run.sh", 0o4755, b"#!/bin/sh\n"),
        E::File("app/private.txt", 0o600, b"p"),
        E::File("app/shared.txt", 0o2777, b"s"),
        E::Link("app/main.js", EntryType::Symlink, "index.js"),
    ]));
    let c = case("app.tgz", &bytes);
    let report = extract_archive(&c.archive, &c.dest, &ExtractLimits::default()).unwrap();
    assert_eq!((report.files, report.symlinks), (4, 1));
    let out = &c.dest;
    assert_eq!(
        fs::read(out.join("app/index.js")).unwrap(),
        b"console.log(1)\n"
    );
    assert_eq!(mode(&out.join("app/index.js")), 0o644);
    assert_eq!(mode(&out.join("app/bin/run.sh")), 0o755);
    assert_eq!(mode(&out.join("app/private.txt")), 0o644);
    assert_eq!(mode(&out.join("app/shared.txt")), 0o755);
    assert_eq!(mode(&out.join("app/bin")), 0o755);
    assert_eq!(
        fs::read_link(out.join("app/main.js")).unwrap(),
        Path::new("index.js")
    );
}

#[test]
fn a_normal_zip_extracts_with_modes_kept_minus_setuid() {
    use zip::write::SimpleFileOptions;
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    z.add_directory("app/", opts).unwrap();
    z.start_file("app/index.js", opts.unix_permissions(0o644))
        .unwrap();
    z.write_all(b"console.log(2)\n").unwrap();
    z.start_file("app/run.sh", opts.unix_permissions(0o4755))
        .unwrap();
    z.write_all(b"#!/bin/sh\n").unwrap();
    z.start_file("app/private.txt", opts.unix_permissions(0o600))
        .unwrap();
    z.write_all(b"p").unwrap();
    let bytes = z.finish().unwrap().into_inner();
    let c = case("app.zip", &bytes);
    let report = extract_archive(&c.archive, &c.dest, &ExtractLimits::default()).unwrap();
    assert_eq!(report.files, 3);
    assert_eq!(
        fs::read(c.dest.join("app/index.js")).unwrap(),
        b"console.log(2)\n"
    );
    assert_eq!(mode(&c.dest.join("app/index.js")), 0o644);
    assert_eq!(mode(&c.dest.join("app/run.sh")), 0o755);
    assert_eq!(mode(&c.dest.join("app/private.txt")), 0o644);
}

#[test]
fn a_parent_dir_entry_is_rejected_by_name_and_nothing_outside_changes() {
    let outside = tempfile::tempdir().unwrap();
    let c = case(
        "app.tgz",
        &gzip(&tar_of(&[
            E::File("index.js", 0o644, b"ok"),
            E::File("../evil.js", 0o644, b"pwned"),
        ])),
    );
    let err = rejected(&c, &ExtractLimits::default());
    assert_eq!(
        err.to_string(),
        "archive app.tgz: entry \"../evil.js\" leaves the extraction directory; nothing was extracted"
    );
    assert_eq!(err.code(), "path_traversal");
    assert!(!c.archive.parent().unwrap().join("evil.js").exists());
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn an_absolute_path_is_rejected_not_stripped() {
    for name in ["/etc/cron.d/x", "//x"] {
        let (err, code) = reject("app.tar", &tar_of(&[E::File(name, 0o644, b"x")]));
        assert_eq!(code, "absolute_path", "{err}");
        assert!(
            err.contains(&format!("entry {name:?} is an absolute path")),
            "{err}"
        );
    }
}

#[test]
fn a_symlink_leaving_the_root_is_rejected() {
    for target in ["/etc/passwd", "../../x", "sub/../../x"] {
        let (err, code) = reject(
            "app.tar",
            &tar_of(&[E::Link("link", EntryType::Symlink, target)]),
        );
        assert_eq!(code, "link", "{err}");
        assert!(
            err.contains(&format!("entry \"link\" is a link to {target:?}")),
            "{err}"
        );
    }
}

#[test]
fn a_file_written_through_a_symlink_is_rejected() {
    // The RUSTSEC-2021-0080 shape (link to .., then a file below it), and a link that stays
    // inside: nothing is ever written through a link.
    for target in ["..", "sub"] {
        let (err, code) = reject(
            "app.tar",
            &tar_of(&[
                E::Dir("sub/"),
                E::Link("l", EntryType::Symlink, target),
                E::File("l/x.js", 0o644, b"x"),
            ]),
        );
        assert_eq!(code, "link", "{err}");
        assert!(
            err.contains("entry \"l/x.js\" is reached through the symlink \"l\""),
            "{err}"
        );
    }
}

#[test]
fn a_symlink_followed_by_a_file_of_the_same_name_is_a_duplicate() {
    let (err, code) = reject(
        "app.tar",
        &tar_of(&[
            E::File("b.js", 0o644, b"b"),
            E::Link("a", EntryType::Symlink, "b.js"),
            E::File("a", 0o644, b"x"),
        ]),
    );
    assert_eq!(code, "duplicate", "{err}");
    assert!(
        err.contains("entry \"a\" names a path that is already in the archive"),
        "{err}"
    );
}

#[test]
fn a_zip_symlink_leaving_the_root_is_rejected() {
    use zip::write::SimpleFileOptions;
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    z.add_symlink("app/link", "../../etc/passwd", SimpleFileOptions::default())
        .unwrap();
    let bytes = z.finish().unwrap().into_inner();
    let (err, code) = reject("app.zip", &bytes);
    assert_eq!(code, "link", "{err}");
    assert!(
        err.contains("entry \"app/link\" is a link to \"../../etc/passwd\""),
        "{err}"
    );
}

#[test]
fn a_hard_link_is_rejected() {
    for target in ["index.js", "/etc/passwd"] {
        let (err, code) = reject(
            "app.tar",
            &tar_of(&[
                E::File("index.js", 0o644, b"x"),
                E::Link("hard", EntryType::Link, target),
            ]),
        );
        assert_eq!(code, "link", "{err}");
        assert!(
            err.contains(&format!("entry \"hard\" is a hard link to {target:?}")),
            "{err}"
        );
    }
}

#[test]
fn fifo_and_device_entries_are_rejected() {
    for (kind, what) in [
        (EntryType::Fifo, "FIFO"),
        (EntryType::Char, "character device"),
        (EntryType::Block, "block device"),
    ] {
        let (err, code) = reject("app.tar", &tar_of(&[E::Special("dev/x", kind)]));
        assert_eq!(code, "special_file", "{err}");
        assert!(
            err.contains(&format!("entry \"dev/x\" is a {what}")),
            "{err}"
        );
    }
}

#[test]
fn duplicate_names_are_rejected() {
    let (err, code) = reject(
        "app.tar",
        &tar_of(&[E::File("a.js", 0o644, b"1"), E::File("./a.js", 0o644, b"2")]),
    );
    assert_eq!(code, "duplicate", "{err}");
    assert!(
        err.contains("entry \"./a.js\" names a path that is already in the archive"),
        "{err}"
    );
}

#[test]
fn a_gzip_bomb_is_rejected_at_the_cap_without_filling_the_disk() {
    let zeros = vec![0u8; 64 << 20];
    let bomb = gzip(&tar_of(&[E::File("zeros.bin", 0o644, &zeros)]));
    drop(zeros);
    assert!(bomb.len() < 1 << 20, "the bomb is {} bytes", bomb.len());
    let c = case("bomb.tgz", &bomb);
    let limits = ExtractLimits {
        max_total_bytes: 10 << 20,
        max_file_bytes: 100 << 20,
        max_ratio: 1_000_000,
        ..ExtractLimits::default()
    };
    let started = Instant::now();
    let err = rejected(&c, &limits);
    assert_eq!(err.code(), "too_large", "{err}");
    assert!(err.to_string().contains("entry \"zeros.bin\""), "{err}");
    assert!(
        err.to_string().contains("stopped after writing 0 bytes"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // With the default limits the ratio cap catches it first.
    let err = rejected(&c, &ExtractLimits::default());
    assert_eq!(err.code(), "too_large", "{err}");
    assert!(err.to_string().contains("times its size"), "{err}");
}

#[test]
fn files_each_under_the_file_cap_stop_at_the_total_cap() {
    // Each file is under the caps; their sum is not.
    let chunk = vec![7u8; 1 << 20];
    let names: Vec<String> = (0..12).map(|i| format!("f{i}.bin")).collect();
    let entries: Vec<E<'_>> = names.iter().map(|n| E::File(n, 0o644, &chunk)).collect();
    let c = case("many.tgz", &gzip(&tar_of(&entries)));
    let limits = ExtractLimits {
        max_total_bytes: 10 << 20,
        max_ratio: 1_000_000,
        ..ExtractLimits::default()
    };
    let err = rejected(&c, &limits);
    assert_eq!(err.code(), "too_large");
    assert!(err.to_string().contains("entry \"f10.bin\""), "{err}");
}

#[test]
fn a_zip_that_understates_its_sizes_is_stopped_by_the_bytes_written() {
    use zip::write::SimpleFileOptions;
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    z.start_file("big.bin", opts).unwrap();
    z.write_all(&vec![0u8; 8 << 20]).unwrap();
    let mut bytes = z.finish().unwrap().into_inner();
    // Declare 1000 bytes uncompressed in the local header (offset 22) and the central
    // directory entry (offset 24).
    let local = find(&bytes, b"PK\x03\x04");
    bytes[local + 22..local + 26].copy_from_slice(&1000u32.to_le_bytes());
    let central = find(&bytes, b"PK\x01\x02");
    bytes[central + 24..central + 28].copy_from_slice(&1000u32.to_le_bytes());
    let c = case("liar.zip", &bytes);
    let limits = ExtractLimits {
        max_total_bytes: 1 << 20,
        max_ratio: 1_000_000,
        ..ExtractLimits::default()
    };
    let err = rejected(&c, &limits);
    assert!(matches!(err.code(), "too_large" | "corrupt"), "{err}");
    assert!(err.to_string().contains("\"big.bin\""), "{err}");
}

#[test]
fn a_hundred_thousand_tiny_entries_hit_the_entry_cap_fast() {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..100_000 {
        b.append(
            &header(&format!("d/{i}"), EntryType::Regular, 0, 0o644, None),
            &[][..],
        )
        .unwrap();
    }
    let c = case("many.tar", &b.into_inner().unwrap());
    let started = Instant::now();
    let err = rejected(&c, &ExtractLimits::default());
    assert_eq!(err.code(), "too_many_entries", "{err}");
    assert!(
        err.to_string()
            .contains("entry \"d/10000\" is number 10001, more than the limit of 10000"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_truncated_archive_fails_and_leaves_no_tree() {
    let data: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let whole = gzip(&tar_of(&[
        E::File("a.js", 0o644, b"first"),
        E::File("b.bin", 0o644, &data),
        E::File("c.js", 0o644, b"last"),
    ]));
    let c = case("cut.tgz", &whole[..whole.len() / 2]);
    let err = rejected(&c, &ExtractLimits::default());
    assert_eq!(err.code(), "corrupt", "{err}");
    assert!(err.to_string().contains("corrupt"), "{err}");
}

#[test]
fn zip_names_with_backslash_parents_are_rejected() {
    use zip::write::SimpleFileOptions;
    for name in ["..\\..\\evil.js", "a\\b.js", "C:\\x"] {
        let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
        z.start_file(name, SimpleFileOptions::default()).unwrap();
        z.write_all(b"x").unwrap();
        let bytes = z.finish().unwrap().into_inner();
        let (err, code) = reject("app.zip", &bytes);
        assert!(
            matches!(code, "path_traversal" | "bad_name" | "absolute_path"),
            "{err}"
        );
        assert!(err.contains(&format!("entry {name:?}")), "{err}");
    }
}

#[test]
fn an_encrypted_zip_entry_is_rejected() {
    use zip::write::SimpleFileOptions;
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    z.start_file("secret.js", SimpleFileOptions::default())
        .unwrap();
    z.write_all(b"x").unwrap();
    let mut bytes = z.finish().unwrap().into_inner();
    // General purpose bit 0 ("encrypted") in the local header (offset 6) and the central
    // directory entry (offset 8).
    let local = find(&bytes, b"PK\x03\x04");
    bytes[local + 6] |= 1;
    let central = find(&bytes, b"PK\x01\x02");
    bytes[central + 8] |= 1;
    let (err, code) = reject("app.zip", &bytes);
    assert_eq!(code, "unsupported", "{err}");
    assert!(err.contains("entry \"secret.js\" is encrypted"), "{err}");
}

#[test]
fn the_destination_must_not_exist_and_is_kept_when_it_does() {
    let c = case("app.tar", &tar_of(&[E::File("a.js", 0o644, b"x")]));
    fs::create_dir(&c.dest).unwrap();
    fs::write(c.dest.join("keep"), b"mine").unwrap();
    let err = extract_archive(&c.archive, &c.dest, &ExtractLimits::default()).unwrap_err();
    assert_eq!(err.code(), "io", "{err}");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(fs::read(c.dest.join("keep")).unwrap(), b"mine");
}

#[test]
fn a_file_that_is_not_an_archive_is_rejected_by_its_bytes_not_its_name() {
    let (err, code) = reject("app.tgz", b"#!/bin/sh\necho not an archive\n");
    assert_eq!(code, "corrupt", "{err}");
    assert!(err.contains("not a tar"), "{err}");
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("signature not found")
}

#[test]
fn names_that_collide_when_folded_are_refused_naming_both() {
    for (first, second) in [("index.js", "Index.js"), ("caf\u{e9}.js", "cafe\u{301}.js")] {
        let bytes = tar_of(&[E::File(first, 0o644, b"1"), E::File(second, 0o644, b"2")]);
        let (message, code) = reject("collide.tar", &bytes);
        assert_eq!(code, "duplicate", "{message}");
        assert!(
            message.contains(&format!("{first:?}")) && message.contains(&format!("{second:?}")),
            "{message}"
        );
    }
}

#[test]
fn a_sparse_entry_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a.js"), "1").unwrap();
    let holes = fs::File::create(src.join("holes.bin")).unwrap();
    holes.set_len(10 << 20).unwrap();
    drop(holes);
    for format in ["gnu", "posix"] {
        let tar_path = dir.path().join(format!("sparse-{format}.tar"));
        let status = std::process::Command::new("tar")
            .args(["--sparse", &format!("--format={format}"), "-cf"])
            .arg(&tar_path)
            .args(["-C", src.to_str().unwrap(), "a.js", "holes.bin"])
            .status()
            .unwrap();
        assert!(status.success());
        let (message, _) = reject(
            &format!("sparse-{format}.tar"),
            &fs::read(&tar_path).unwrap(),
        );
        assert!(message.contains("holes.bin"), "{format}: {message}");
    }
}
