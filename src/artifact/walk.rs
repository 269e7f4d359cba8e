//! Reading back a directory the app could write (`/output`, an extracted tree): lists regular
//! files without following symlinks, skips everything else with a reason, and caps count and
//! bytes (security-reliability §2.5: a symlink to a host file, a FIFO that blocks `open`,
//! millions of files).
//!
//! Listing only; [`open_listed`] opens a listed file without following a link swapped in since.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Caps on a walk. Sizes are apparent sizes (`st_size`): what a read would return, so a sparse
/// file counts at its full length.
#[derive(Debug, Clone, PartialEq)]
pub struct WalkLimits {
    pub max_files: usize,
    pub max_total_bytes: u64,
    pub max_depth: usize,
}

impl Default for WalkLimits {
    fn default() -> Self {
        Self {
            max_files: 10_000,
            max_total_bytes: 500_000_000,
            max_depth: 64,
        }
    }
}

/// A regular file found by the walk.
#[derive(Debug, Clone, PartialEq)]
pub struct WalkedFile {
    /// Relative to the root, `/`-separated components.
    pub relative: PathBuf,
    pub size: u64,
    dev: u64,
    ino: u64,
}

/// Something the walk did not list, and why (`symlink`, `fifo`, `socket`, `device`, `too_deep`).
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub relative: PathBuf,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Walked {
    /// Sorted by path.
    pub files: Vec<WalkedFile>,
    pub skipped: Vec<Skipped>,
    pub total_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{root} holds more than {limit} files")]
    TooManyFiles { root: PathBuf, limit: usize },
    #[error("{root} holds more than {limit} bytes (at {path})")]
    TooLarge {
        root: PathBuf,
        path: PathBuf,
        limit: u64,
    },
}

/// Lists the regular files under `root` (which itself must be a real directory, not a link).
/// Blocking: async callers use `spawn_blocking`.
pub fn walk_regular_files(root: &Path, limits: &WalkLimits) -> Result<Walked, WalkError> {
    let io_err = |path: &Path, source| WalkError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = fs::symlink_metadata(root).map_err(|e| io_err(root, e))?;
    if !meta.is_dir() {
        return Err(io_err(
            root,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a directory (or a symlink)",
            ),
        ));
    }
    let mut walked = Walked::default();
    let mut pending = vec![(PathBuf::new(), 0usize)];
    while let Some((dir, depth)) = pending.pop() {
        let full = root.join(&dir);
        for item in fs::read_dir(&full).map_err(|e| io_err(&full, e))? {
            let item = item.map_err(|e| io_err(&full, e))?;
            let relative = dir.join(item.file_name());
            // DirEntry::metadata does not follow symlinks.
            let meta = item.metadata().map_err(|e| io_err(&item.path(), e))?;
            let kind = meta.file_type();
            let skip = |reason| Skipped {
                relative: relative.clone(),
                reason,
            };
            if kind.is_dir() {
                if depth + 1 >= limits.max_depth {
                    walked.skipped.push(skip("too_deep"));
                } else {
                    pending.push((relative, depth + 1));
                }
            } else if kind.is_file() {
                if walked.files.len() >= limits.max_files {
                    return Err(WalkError::TooManyFiles {
                        root: root.to_owned(),
                        limit: limits.max_files,
                    });
                }
                walked.total_bytes = walked.total_bytes.saturating_add(meta.len());
                if walked.total_bytes > limits.max_total_bytes {
                    return Err(WalkError::TooLarge {
                        root: root.to_owned(),
                        path: relative,
                        limit: limits.max_total_bytes,
                    });
                }
                walked.files.push(WalkedFile {
                    relative,
                    size: meta.len(),
                    dev: meta.dev(),
                    ino: meta.ino(),
                });
            } else {
                walked.skipped.push(skip(special_reason(&kind)));
            }
        }
    }
    walked.files.sort_by(|a, b| a.relative.cmp(&b.relative));
    walked.skipped.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(walked)
}

fn special_reason(kind: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_symlink() {
        "symlink"
    } else if kind.is_fifo() {
        "fifo"
    } else if kind.is_socket() {
        "socket"
    } else {
        "device"
    }
}

/// Opens a file the walk listed, refusing a final-component symlink (`O_NOFOLLOW`), never
/// blocking on a FIFO (`O_NONBLOCK`), and checking it is still the same regular file. Parent
/// directories are not re-checked: call it only once the writer (the container) has stopped.
pub fn open_listed(root: &Path, file: &WalkedFile) -> io::Result<File> {
    let path = root.join(&file.relative);
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)?;
    let meta = opened.metadata()?;
    if !meta.is_file() || meta.dev() != file.dev || meta.ino() != file.ino {
        return Err(io::Error::other(format!(
            "{} changed since it was listed",
            path.display()
        )));
    }
    Ok(opened)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_and_fifos_are_skipped_with_a_reason_and_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("sub")).unwrap();
        fs::write(root.join("sub/result.json"), b"{}").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("leak")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("dirlink")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(root.join("pipe"))
            .status()
            .unwrap();
        assert!(fifo.success());
        let walked = walk_regular_files(root, &WalkLimits::default()).unwrap();
        let names: Vec<_> = walked.files.iter().map(|f| f.relative.clone()).collect();
        assert_eq!(names, vec![PathBuf::from("sub/result.json")]);
        let skipped: Vec<_> = walked
            .skipped
            .iter()
            .map(|s| (s.relative.to_str().unwrap(), s.reason))
            .collect();
        assert_eq!(
            skipped,
            vec![
                ("dirlink", "symlink"),
                ("leak", "symlink"),
                ("pipe", "fifo")
            ]
        );
        assert!(open_listed(root, &walked.files[0]).is_ok());
    }

    #[test]
    fn count_and_byte_caps_stop_the_walk() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5 {
            fs::write(dir.path().join(format!("f{i}")), vec![0u8; 100]).unwrap();
        }
        let few = WalkLimits {
            max_files: 4,
            ..WalkLimits::default()
        };
        assert!(matches!(
            walk_regular_files(dir.path(), &few),
            Err(WalkError::TooManyFiles { limit: 4, .. })
        ));
        let small = WalkLimits {
            max_total_bytes: 250,
            ..WalkLimits::default()
        };
        assert!(matches!(
            walk_regular_files(dir.path(), &small),
            Err(WalkError::TooLarge { limit: 250, .. })
        ));
    }
}
