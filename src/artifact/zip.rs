//! Zip entries under the extraction policy. The central directory is the pre-scan: names,
//! types, encryption, methods, duplicates and declared sizes are all checked before anything is
//! written; the extraction pass then streams each entry through the [`Writer`]'s byte caps (the
//! sizes a zip declares can lie, security-reliability §2.3).
//!
//! Never calls `ZipArchive::extract`: it applies archived modes unmasked and is not atomic.

use std::fs::File;
use std::io::Read;

use zip::read::ZipFile;
use zip::{CompressionMethod, ZipArchive};

use super::extract::Writer;
use super::policy::{check_name, EntryKind, Plan, Rejection};

/// Longest symlink target read from an entry.
const MAX_LINK_TARGET: u64 = 4096;

const S_IFMT: u32 = 0o170_000;

fn open(file: File) -> Result<ZipArchive<File>, Rejection> {
    ZipArchive::new(file).map_err(|e| Rejection::Corrupt {
        after: None,
        reason: e.to_string(),
    })
}

/// Pass 1: every entry admitted into `plan`, from the central directory.
pub(super) fn scan(file: File, plan: &mut Plan) -> Result<(), Rejection> {
    let mut archive = open(file)?;
    if archive.has_duplicate_names() {
        return Err(Rejection::DuplicateNames);
    }
    for index in 0..archive.len() {
        let (raw, path, kind) = classify(&mut archive, index, plan)?;
        if let Some(path) = path {
            plan.admit(&raw, &path, &kind)?;
        }
    }
    let corrupt = |e: zip::result::ZipError| Rejection::Corrupt {
        after: None,
        reason: e.to_string(),
    };
    if archive.has_overlapping_files().map_err(corrupt)? {
        return Err(Rejection::OverlappingEntries);
    }
    // Local headers that disagree with the central directory are a parser differential.
    archive.validate_header_consistency().map_err(corrupt)
}

/// Pass 2: admits again and streams each file through the writer's caps.
pub(super) fn extract(file: File, writer: &mut Writer<'_>) -> Result<(), Rejection> {
    let mut archive = open(file)?;
    for index in 0..archive.len() {
        let (raw, path, kind) = classify(&mut archive, index, &mut writer.plan)?;
        let Some(path) = path else { continue };
        writer.plan.admit(&raw, &path, &kind)?;
        match kind {
            EntryKind::Dir => writer.dir(&path)?,
            EntryKind::Symlink { target } => writer.symlink(&path, &target),
            EntryKind::File { mode, .. } => {
                let mut data = archive.by_index(index).map_err(|e| Rejection::Corrupt {
                    after: Some(raw.clone()),
                    reason: e.to_string(),
                })?;
                writer.file(&raw, &path, mode, &mut data)?;
            }
        }
    }
    Ok(())
}

/// Counts the entry and checks everything the central directory says about it.
fn classify(
    archive: &mut ZipArchive<File>,
    index: usize,
    plan: &mut Plan,
) -> Result<(String, Option<String>, EntryKind), Rejection> {
    let corrupt = |after: Option<String>, e: zip::result::ZipError| Rejection::Corrupt {
        after,
        reason: e.to_string(),
    };
    let entry = archive.by_index_raw(index).map_err(|e| corrupt(None, e))?;
    let raw = String::from_utf8_lossy(entry.name_raw()).into_owned();
    plan.count(&raw)?;
    let unsupported = |what: String| Rejection::Unsupported {
        entry: raw.clone(),
        what,
    };
    if entry.encrypted() {
        return Err(Rejection::Encrypted { entry: raw });
    }
    let method = entry.compression();
    if !matches!(
        method,
        CompressionMethod::Stored | CompressionMethod::Deflated
    ) {
        return Err(unsupported(format!("compression method {method}")));
    }
    let name = entry
        .name()
        .map_err(|e| corrupt(Some(raw.clone()), e))?
        .into_owned();
    let path = check_name(name.as_bytes(), plan.limits())?;
    let kind = kind_of(&entry, &raw)?;
    drop(entry);
    let kind = match kind {
        Some(kind) => kind,
        None => EntryKind::Symlink {
            target: link_target(archive, index, &raw)?,
        },
    };
    if path.is_none() && kind != EntryKind::Dir {
        return Err(Rejection::BadName {
            entry: raw,
            reason: "names the extraction directory itself".to_owned(),
        });
    }
    Ok((raw, path, kind))
}

/// The entry's kind, `None` for a symlink (whose target is its content).
fn kind_of(entry: &ZipFile<'_, File>, raw: &str) -> Result<Option<EntryKind>, Rejection> {
    let mode = entry.unix_mode();
    let special = |what: &str| Rejection::SpecialFile {
        entry: raw.to_owned(),
        what: what.to_owned(),
    };
    match mode.map(|m| m & S_IFMT) {
        Some(0o010_000) => return Err(special("FIFO")),
        Some(0o020_000) => return Err(special("character device")),
        Some(0o060_000) => return Err(special("block device")),
        Some(0o140_000) => return Err(special("socket")),
        _ => {}
    }
    Ok(if entry.is_dir() {
        Some(EntryKind::Dir)
    } else if entry.is_symlink() {
        None
    } else {
        Some(EntryKind::File {
            size: entry.size(),
            mode: mode.unwrap_or(0o644),
        })
    })
}

fn link_target(
    archive: &mut ZipArchive<File>,
    index: usize,
    raw: &str,
) -> Result<String, Rejection> {
    let corrupt = |reason: String| Rejection::Corrupt {
        after: Some(raw.to_owned()),
        reason,
    };
    let entry = archive
        .by_index(index)
        .map_err(|e| corrupt(e.to_string()))?;
    let mut target = Vec::new();
    entry
        .take(MAX_LINK_TARGET)
        .read_to_end(&mut target)
        .map_err(|e| corrupt(e.to_string()))?;
    String::from_utf8(target).map_err(|_| Rejection::LinkEscapes {
        entry: raw.to_owned(),
        target: "<not UTF-8>".to_owned(),
    })
}
