//! The app's `/output`, read back from the engine's archive of its volume into a host
//! directory the daemon owns, for `outputs::collect`. Nothing of the app's metadata is kept:
//! directories are created 0700 and files 0600 by the daemon, owned by it, so no mode, owner or
//! setuid bit the app chose reaches the host, and the daemon (root or not) can read and remove
//! all of it. Only directories and regular files are created (hard links as links between
//! copied files); every other entry is listed as skipped with its kind, and never created.
//!
//! The archive is bounded by the volume's caps, except for one thing a tmpfs does not charge:
//! sparse files (their size is not their pages). File contents are copied up to `budget`
//! bytes in all; past it the copy stops and says where.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

/// An entry of `/output` that was not copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Relative to `/output`, as the app named it (lossy for names that are not UTF-8).
    pub path: String,
    pub kind: SkippedKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkippedKind {
    Symlink,
    Fifo,
    Device,
    /// The host refused to create it (a name too long for the host path, say).
    Unwritable,
    /// Any other kind the archive holds.
    Other,
}

/// What [`copy_out`] did.
#[derive(Debug, Default)]
pub struct Copied {
    pub skipped: Vec<Skipped>,
    /// The file at which the byte budget ran out; it and everything after it were not copied.
    pub stopped_at: Option<String>,
}

/// Copies the archive (entries named `./…`) into `dest` (created 0700), directories at most
/// `max_depth` names deep. Blocking. An error only when the archive itself cannot be read or `dest`
/// cannot be made; entries the host refuses are skipped.
pub fn copy_out(
    archive: impl Read,
    dest: &Path,
    budget: u64,
    max_depth: usize,
) -> std::io::Result<Copied> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dest)?;
    let mut copied = Copied::default();
    let mut left = budget;
    let mut archive = tar::Archive::new(archive);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path_bytes().into_owned();
        let Some(relative) = relative_path(&raw) else {
            continue; // the root itself, or a name that is not plainly inside
        };
        let shown = relative.to_string_lossy().into_owned();
        let skip = |kind| Skipped {
            path: shown.clone(),
            kind,
        };
        let kind = entry.header().entry_type();
        let depth = relative.components().count() - usize::from(kind != EntryType::Directory);
        if depth > max_depth {
            // The reader does not go this deep: it reports the directory at `max_depth` itself.
            continue;
        }
        let target = dest.join(&relative);
        let made = match kind {
            EntryType::Directory => std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&target),
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.header().size()?;
                if size > left {
                    copied.stopped_at = Some(shown);
                    return Ok(copied);
                }
                left -= size;
                write_file(&mut entry, &target)
            }
            EntryType::Link => match entry.link_name_bytes().and_then(|l| relative_path(&l)) {
                Some(original) => std::fs::hard_link(dest.join(original), &target),
                None => Err(std::io::ErrorKind::InvalidInput.into()),
            },
            EntryType::Symlink => {
                copied.skipped.push(skip(SkippedKind::Symlink));
                continue;
            }
            EntryType::Fifo => {
                copied.skipped.push(skip(SkippedKind::Fifo));
                continue;
            }
            EntryType::Char | EntryType::Block => {
                copied.skipped.push(skip(SkippedKind::Device));
                continue;
            }
            _ => {
                copied.skipped.push(skip(SkippedKind::Other));
                continue;
            }
        };
        if let Err(e) = made {
            tracing::debug!(path = %shown, error = %e, "an /output entry could not be copied");
            copied.skipped.push(skip(SkippedKind::Unwritable));
        }
    }
    Ok(copied)
}

/// A file of the daemon's own (0600, not there before) with the entry's bytes.
fn write_file(entry: &mut impl Read, target: &Path) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(target)?;
    std::io::copy(entry, &mut file)?;
    Ok(())
}

/// `./a/b` → `a/b`; `None` for the root and for anything not made of plain names.
fn relative_path(raw: &[u8]) -> Option<PathBuf> {
    let path = Path::new(OsStr::from_bytes(raw));
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::Normal(name) => relative.push(name),
            _ => return None,
        }
    }
    (!relative.as_os_str().is_empty()).then_some(relative)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn header(kind: EntryType, path: &str, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_path(path).unwrap();
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_cksum();
        h
    }

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    #[test]
    fn files_and_directories_get_the_daemons_modes_and_nothing_else_is_created() {
        let bytes = archive(|b| {
            b.append(&header(EntryType::Directory, "./", 0, 0o700), &[][..])
                .unwrap();
            b.append(&header(EntryType::Directory, "./locked/", 0, 0), &[][..])
                .unwrap();
            b.append(
                &header(EntryType::Regular, "./locked/sh", 5, 0o6755),
                &b"hello"[..],
            )
            .unwrap();
            let mut link = header(EntryType::Link, "./again", 0, 0o6755);
            link.set_link_name("./locked/sh").unwrap();
            link.set_cksum();
            b.append(&link, &[][..]).unwrap();
            let mut sym = header(EntryType::Symlink, "./etc", 0, 0o777);
            sym.set_link_name("/etc").unwrap();
            sym.set_cksum();
            b.append(&sym, &[][..]).unwrap();
            b.append(&header(EntryType::Fifo, "./pipe", 0, 0o644), &[][..])
                .unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        let copied = copy_out(&bytes[..], &dest, 1 << 20, 32).unwrap();
        let mode = |p: &str| {
            std::fs::symlink_metadata(dest.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("locked"), 0o700);
        assert_eq!(mode("locked/sh"), 0o600);
        assert_eq!(std::fs::read(dest.join("again")).unwrap(), b"hello");
        assert!(!dest.join("etc").exists() && !dest.join("pipe").exists());
        let kinds: Vec<_> = copied
            .skipped
            .iter()
            .map(|s| (s.path.as_str(), s.kind))
            .collect();
        assert_eq!(
            kinds,
            [("etc", SkippedKind::Symlink), ("pipe", SkippedKind::Fifo)]
        );
        assert_eq!(copied.stopped_at, None);
    }

    #[test]
    fn the_budget_and_the_depth_bound_the_copy() {
        let bytes = archive(|b| {
            b.append(
                &header(EntryType::Regular, "./a", 10, 0o644),
                &[0u8; 10][..],
            )
            .unwrap();
            b.append(&header(EntryType::Directory, "./d/", 0, 0o755), &[][..])
                .unwrap();
            b.append(&header(EntryType::Directory, "./d/e/", 0, 0o755), &[][..])
                .unwrap();
            b.append(
                &header(EntryType::Regular, "./d/e/f", 1, 0o644),
                &[0u8; 1][..],
            )
            .unwrap();
            b.append(
                &header(EntryType::Regular, "./b", 10, 0o644),
                &[0u8; 10][..],
            )
            .unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let copied = copy_out(&bytes[..], &dir.path().join("o"), 15, 1).unwrap();
        assert!(dir.path().join("o/a").is_file());
        assert!(dir.path().join("o/d").is_dir() && !dir.path().join("o/d/e").exists());
        assert!(copied.skipped.is_empty());
        assert_eq!(copied.stopped_at.as_deref(), Some("b"));
    }

    #[test]
    fn only_plain_names_inside_are_used() {
        assert_eq!(relative_path(b"./a/b"), Some(PathBuf::from("a/b")));
        assert_eq!(relative_path(b"./"), None);
        assert_eq!(relative_path(b"../x"), None);
        assert_eq!(relative_path(b"/etc/passwd"), None);
    }
}
