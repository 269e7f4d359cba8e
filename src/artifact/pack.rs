//! Packing a built app into one `.tar.gz`: the app tree, its `node_modules` and whatever the
//! build wrote, hashed while it is written. The archive must later pass the same extraction
//! policy every archive passes ([`ExtractLimits`]), so the packer counts against those caps and
//! refuses a tree a run could not extract, instead of uploading it.
//!
//! Entries are regular files, directories and symlinks (pnpm's `node_modules` is made of
//! relative links), in sorted order so the same tree packs the same way. Anything else (FIFOs,
//! sockets, devices) is skipped. Modes keep only the permission bits (no setuid, no setgid);
//! owners are 0; times are the files'.
//!
//! Blocking: async callers use `tokio::task::spawn_blocking`.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::digest::Sha256;
use super::policy::ExtractLimits;

/// What was packed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PackReport {
    /// `sha256:<hex>` of the archive's bytes.
    pub digest: String,
    pub archive_bytes: u64,
    pub entries: usize,
    /// Bytes of regular files before compression.
    pub content_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("the built app has more than {max} entries (limits.archive_max_entries): no run could extract its archive; raise the limit or ship fewer files")]
    TooManyEntries { max: usize },
    #[error("the built app holds more than {max} bytes (limits.archive_max_bytes): no run could extract its archive; raise the limit or ship less")]
    TooLarge { max: u64 },
    #[error("{path} is {size} bytes, over limits.archive_max_file_bytes ({max}): no run could extract the build's archive")]
    FileTooLarge { path: String, size: u64, max: u64 },
    #[error("{path} is nested deeper than {max} levels or its name is longer than the archive policy allows")]
    PathTooLong { path: String, max: usize },
    #[error("packing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One tree to pack: the files under `dir`, placed under `prefix` in the archive (`""` for the
/// archive's root). Top-level names in `skip` are left out.
pub struct PackSource<'a> {
    pub dir: &'a Path,
    pub prefix: &'a str,
    pub skip: &'a [&'a str],
}

/// Writes `sources` as a gzip-compressed tar to `out`.
pub fn pack(
    sources: &[PackSource<'_>],
    out: &Path,
    limits: &ExtractLimits,
) -> Result<PackReport, PackError> {
    let io_at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackError::Io { path, source }
    };
    let file = File::create(out).map_err(io_at(out))?;
    let hashing = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        written: 0,
    };
    let gz = flate2::write::GzEncoder::new(hashing, flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    builder.follow_symlinks(false);
    let mut counts = Counts::default();
    for source in sources {
        add_dir(
            &mut builder,
            source.dir,
            source.prefix,
            source.skip,
            limits,
            &mut counts,
        )?;
    }
    let gz = builder.into_inner().map_err(io_at(out))?;
    let mut hashing = gz.finish().map_err(io_at(out))?;
    hashing.inner.flush().map_err(io_at(out))?;
    hashing.inner.get_ref().sync_all().map_err(io_at(out))?;
    Ok(PackReport {
        digest: format!("sha256:{}", hashing.hasher.finish_hex()),
        archive_bytes: hashing.written,
        entries: counts.entries,
        content_bytes: counts.bytes,
    })
}

#[derive(Default)]
struct Counts {
    entries: usize,
    bytes: u64,
}

fn add_dir<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    prefix: &str,
    skip: &[&str],
    limits: &ExtractLimits,
    counts: &mut Counts,
) -> Result<(), PackError> {
    let io_at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackError::Io { path, source }
    };
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(io_at(dir))?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_at(dir))?;
    names.sort();
    for name in names {
        let Some(text) = name.to_str() else {
            continue; // not UTF-8: no run could name it either
        };
        if prefix.is_empty() && skip.contains(&text) {
            continue;
        }
        let path = dir.join(&name);
        let inside = if prefix.is_empty() {
            text.to_owned()
        } else {
            format!("{prefix}/{text}")
        };
        if inside.len() > limits.max_path_bytes || inside.split('/').count() > limits.max_depth {
            return Err(PackError::PathTooLong {
                path: inside,
                max: limits.max_depth,
            });
        }
        let meta = std::fs::symlink_metadata(&path).map_err(io_at(&path))?;
        let kind = meta.file_type();
        if !(kind.is_dir() || kind.is_file() || kind.is_symlink()) {
            continue;
        }
        counts.entries += 1;
        if counts.entries > limits.max_entries {
            return Err(PackError::TooManyEntries {
                max: limits.max_entries,
            });
        }
        let mut header = tar::Header::new_gnu();
        header.set_mode(meta.mode() & 0o777);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(meta.mtime().max(0) as u64);
        if kind.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder
                .append_data(&mut header, format!("{inside}/"), io::empty())
                .map_err(io_at(&path))?;
            add_dir(builder, &path, &inside, skip, limits, counts)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&path).map_err(io_at(&path))?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            builder
                .append_link(&mut header, &inside, &target)
                .map_err(io_at(&path))?;
        } else {
            let size = meta.len();
            if size > limits.max_file_bytes {
                return Err(PackError::FileTooLarge {
                    path: inside,
                    size,
                    max: limits.max_file_bytes,
                });
            }
            counts.bytes += size;
            if counts.bytes > limits.max_total_bytes {
                return Err(PackError::TooLarge {
                    max: limits.max_total_bytes,
                });
            }
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(size);
            let file = File::open(&path).map_err(io_at(&path))?;
            builder
                .append_data(&mut header, &inside, file)
                .map_err(io_at(&path))?;
        }
    }
    Ok(())
}

/// Counts and hashes the bytes on their way to the file.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ExtractLimits {
        ExtractLimits {
            max_entries: 100,
            max_total_bytes: 1 << 20,
            max_file_bytes: 1 << 20,
            max_ratio: 100,
            max_path_bytes: 255,
            max_depth: 16,
        }
    }

    #[test]
    fn a_packed_tree_extracts_to_the_same_files_links_included() {
        let src = tempfile::tempdir().unwrap();
        let deps = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("index.js"), "console.log(1)").unwrap();
        std::fs::create_dir(src.path().join(".pnpm-store")).unwrap();
        std::fs::write(src.path().join(".pnpm-store/x"), "skipped").unwrap();
        std::fs::create_dir_all(deps.path().join(".pnpm/a@1/node_modules/a")).unwrap();
        std::fs::write(deps.path().join(".pnpm/a@1/node_modules/a/index.js"), "a").unwrap();
        std::os::unix::fs::symlink(".pnpm/a@1/node_modules/a", deps.path().join("a")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let archive = out.path().join("app.tar.gz");
        let report = pack(
            &[
                PackSource {
                    dir: src.path(),
                    prefix: "",
                    skip: &[".pnpm-store"],
                },
                PackSource {
                    dir: deps.path(),
                    prefix: "node_modules",
                    skip: &[],
                },
            ],
            &archive,
            &limits(),
        )
        .unwrap();
        let bytes = std::fs::read(&archive).unwrap();
        let mut hasher = Sha256::new();
        hasher.update(&bytes);
        assert_eq!(report.digest, format!("sha256:{}", hasher.finish_hex()));
        assert_eq!(report.archive_bytes, bytes.len() as u64);

        let dest = out.path().join("x");
        crate::artifact::extract_archive(&archive, &dest, &limits()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("index.js")).unwrap(),
            "console.log(1)"
        );
        assert!(!dest.join(".pnpm-store").exists());
        assert_eq!(
            std::fs::read_to_string(dest.join("node_modules/a/index.js")).unwrap(),
            "a"
        );
        assert!(std::fs::symlink_metadata(dest.join("node_modules/a"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn a_tree_no_run_could_extract_is_refused() {
        let src = tempfile::tempdir().unwrap();
        for i in 0..5 {
            std::fs::write(src.path().join(format!("f{i}")), "x").unwrap();
        }
        let out = tempfile::tempdir().unwrap();
        let few = ExtractLimits {
            max_entries: 3,
            ..limits()
        };
        let error = pack(
            &[PackSource {
                dir: src.path(),
                prefix: "",
                skip: &[],
            }],
            &out.path().join("a.tar.gz"),
            &few,
        )
        .unwrap_err();
        assert!(
            matches!(error, PackError::TooManyEntries { max: 3 }),
            "{error}"
        );
    }
}
