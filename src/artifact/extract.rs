//! Extraction of `.tar`, `.tar.gz`/`.tgz` and `.zip` archives into a fresh directory.
//!
//! Two passes: a pre-scan admits every entry into a [`Plan`] (names, types, links, duplicates,
//! declared sizes) before anything touches the disk, then the extraction pass writes with our
//! own loop (never the crates' `unpack`/`extract` helpers), counting the bytes actually written
//! against the caps. Symlinks are created last, so nothing is ever written through one. On any
//! failure the destination is removed: the caller sees the whole tree or nothing.
//!
//! Blocking: async callers use `tokio::task::spawn_blocking`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::policy::{self, ExtractLimits, Plan, Rejection, DIR_MODE};

/// An archive format, judged by the first bytes of the file (never by its extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveFormat {
    Tar,
    TarGz,
    Zip,
}

impl ArchiveFormat {
    /// Reads the magic bytes: gzip `1f 8b`, zip `PK\x03\x04` (or `PK\x05\x06`, empty), tar
    /// `ustar` at offset 257.
    pub fn detect(path: &Path) -> io::Result<Option<Self>> {
        let mut head = Vec::with_capacity(512);
        File::open(path)?.take(512).read_to_end(&mut head)?;
        Ok(if head.starts_with(&[0x1f, 0x8b]) {
            Some(Self::TarGz)
        } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
            Some(Self::Zip)
        } else if head.len() >= 262 && &head[257..262] == b"ustar" {
            Some(Self::Tar)
        } else {
            None
        })
    }
}

/// What an extraction produced.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ExtractReport {
    pub format: ArchiveFormat,
    pub files: usize,
    pub dirs: usize,
    pub symlinks: usize,
    /// Bytes written to regular files.
    pub bytes: u64,
}

/// An archive was refused or could not be extracted; the destination does not exist.
#[derive(Debug, thiserror::Error)]
#[error("archive {archive}: {rejection}; nothing was extracted")]
pub struct ExtractError {
    /// The archive's file name.
    pub archive: String,
    pub rejection: Rejection,
}

impl ExtractError {
    /// The stable code of the rejection (`path_traversal`, `too_large`, …).
    pub fn code(&self) -> &'static str {
        self.rejection.code()
    }
}

/// Extracts `archive` into `dest`, which must not exist (its parent must). Blocking.
///
/// Rejects, never rewrites (see [`policy`]); caps from `limits`; file modes from
/// [`policy::file_mode`]; on any error `dest` is removed before returning.
pub fn extract_archive(
    archive: &Path,
    dest: &Path,
    limits: &ExtractLimits,
) -> Result<ExtractReport, ExtractError> {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| archive.display().to_string());
    let fail = |rejection| ExtractError {
        archive: name.clone(),
        rejection,
    };
    if fs::symlink_metadata(dest).is_ok() {
        return Err(fail(Rejection::DestinationExists {
            path: dest.display().to_string(),
        }));
    }
    let archive_len = fs::metadata(archive)
        .map_err(|e| fail(io_rejection(archive, &e)))?
        .len();
    let format = ArchiveFormat::detect(archive)
        .map_err(|e| fail(io_rejection(archive, &e)))?
        .ok_or_else(|| fail(Rejection::UnknownFormat))?;
    let open = || File::open(archive).map_err(|e| io_rejection(archive, &e));

    // Pass 1: nothing written yet.
    let mut plan = Plan::new(limits, archive_len);
    let scanned = match format {
        ArchiveFormat::Tar => open().and_then(|f| super::tar::scan(f, &mut plan)),
        ArchiveFormat::TarGz => open().and_then(|f| super::tar::scan(gunzip(f), &mut plan)),
        ArchiveFormat::Zip => open().and_then(|f| super::zip::scan(f, &mut plan)),
    };
    scanned.and_then(|()| plan.check_links()).map_err(fail)?;

    // Pass 2: write, and remove everything on failure.
    fs::DirBuilder::new()
        .mode(DIR_MODE)
        .create(dest)
        .map_err(|e| fail(io_rejection(dest, &e)))?;
    let mut writer = Writer::new(dest, limits, archive_len, format);
    let written = match format {
        ArchiveFormat::Tar => open().and_then(|f| super::tar::extract(f, &mut writer)),
        ArchiveFormat::TarGz => open().and_then(|f| super::tar::extract(gunzip(f), &mut writer)),
        ArchiveFormat::Zip => open().and_then(|f| super::zip::extract(f, &mut writer)),
    };
    match written.and_then(|()| writer.finish()) {
        Ok(report) => Ok(report),
        Err(rejection) => {
            // Best effort: if even removal fails there is nothing better to report than the
            // rejection itself; the directory is fresh and under our state dir.
            let _ = fs::remove_dir_all(dest);
            Err(fail(rejection))
        }
    }
}

/// All gzip members, like `gzip -d` (pigz and concatenated streams produce several).
fn gunzip(file: File) -> flate2::read::MultiGzDecoder<io::BufReader<File>> {
    flate2::read::MultiGzDecoder::new(io::BufReader::new(file))
}

pub(super) fn io_rejection(path: &Path, error: &io::Error) -> Rejection {
    Rejection::Io {
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

/// Writes admitted entries under the root, counting bytes against the caps.
pub(super) struct Writer<'a> {
    root: &'a Path,
    pub(super) plan: Plan,
    limits: ExtractLimits,
    archive_len: u64,
    written: u64,
    report: ExtractReport,
    links: Vec<(PathBuf, String)>,
}

impl<'a> Writer<'a> {
    fn new(
        root: &'a Path,
        limits: &ExtractLimits,
        archive_len: u64,
        format: ArchiveFormat,
    ) -> Self {
        Self {
            root,
            plan: Plan::new(limits, archive_len),
            limits: limits.clone(),
            archive_len,
            written: 0,
            report: ExtractReport {
                format,
                files: 0,
                dirs: 0,
                symlinks: 0,
                bytes: 0,
            },
            links: Vec::new(),
        }
    }

    pub(super) fn dir(&mut self, path: &str) -> Result<(), Rejection> {
        let full = self.root.join(path);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&full)
            .map_err(|e| io_rejection(&full, &e))?;
        self.report.dirs += 1;
        Ok(())
    }

    /// Copies `data` into a new file, stopping before any cap would be passed.
    pub(super) fn file(
        &mut self,
        raw: &str,
        path: &str,
        mode: u32,
        data: &mut dyn Read,
    ) -> Result<(), Rejection> {
        let full = self.root.join(path);
        if let Some(parent) = full.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(parent)
                .map_err(|e| io_rejection(parent, &e))?;
        }
        // create_new never follows or replaces an existing path; O_NOFOLLOW is belt and braces.
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&full)
            .map_err(|e| io_rejection(&full, &e))?;
        let limits = &self.limits;
        let mut in_file = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Rejection::Corrupt {
                        after: Some(raw.to_owned()),
                        reason: e.to_string(),
                    })
                }
            };
            if in_file + n > limits.max_file_bytes {
                return Err(Rejection::FileTooLarge {
                    entry: raw.to_owned(),
                    limit: limits.max_file_bytes,
                    written: self.written,
                });
            }
            if self.written + n > limits.max_total_bytes {
                return Err(Rejection::TooLarge {
                    entry: raw.to_owned(),
                    limit: limits.max_total_bytes,
                    written: self.written,
                });
            }
            if policy::exceeds_ratio(self.written + n, self.archive_len, limits.max_ratio) {
                return Err(Rejection::RatioTooHigh {
                    entry: raw.to_owned(),
                    limit: limits.max_ratio,
                });
            }
            out.write_all(&buf[..n as usize])
                .map_err(|e| io_rejection(&full, &e))?;
            in_file += n;
            self.written += n;
        }
        fs::set_permissions(&full, fs::Permissions::from_mode(policy::file_mode(mode)))
            .map_err(|e| io_rejection(&full, &e))?;
        self.report.files += 1;
        self.report.bytes += in_file;
        Ok(())
    }

    /// Symlinks are only recorded here and created by [`Writer::finish`], after every file.
    pub(super) fn symlink(&mut self, path: &str, target: &str) {
        self.links.push((self.root.join(path), target.to_owned()));
    }

    fn finish(mut self) -> Result<ExtractReport, Rejection> {
        self.plan.check_links()?;
        for (path, target) in &self.links {
            if let Some(parent) = path.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(DIR_MODE)
                    .create(parent)
                    .map_err(|e| io_rejection(parent, &e))?;
            }
            std::os::unix::fs::symlink(target, path).map_err(|e| io_rejection(path, &e))?;
            self.report.symlinks += 1;
        }
        Ok(self.report)
    }
}
