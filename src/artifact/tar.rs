//! Tar entries (plain or gzip-compressed) under the extraction policy: classifies each entry by
//! its header and hands it to the [`Plan`] (pre-scan) or the [`Writer`] (extraction).
//!
//! Never calls `Archive::unpack` or `Entry::unpack_in`: those skip `..` entries silently and
//! create symlinks with any target (security-reliability §2.2).

use std::io::Read;

use tar::EntryType;

use super::extract::Writer;
use super::policy::{check_name, EntryKind, Plan, Rejection};

/// One accepted entry: its name as archived, its normalised path (`None` for the root) and kind.
type Classified = (String, Option<String>, EntryKind);

/// Pass 1: admits every entry into `plan` without writing anything.
pub(super) fn scan(reader: impl Read, plan: &mut Plan) -> Result<(), Rejection> {
    each_entry(reader, plan, |_, _| Ok(()))
}

/// Pass 2: admits again (the same decisions, from the same parser) and writes.
pub(super) fn extract(reader: impl Read, writer: &mut Writer<'_>) -> Result<(), Rejection> {
    let mut plan = std::mem::replace(&mut writer.plan, Plan::new(&Default::default(), 0));
    let result = each_entry(reader, &mut plan, |(raw, path, kind), data| {
        let Some(path) = path else { return Ok(()) };
        match kind {
            EntryKind::Dir => writer.dir(&path),
            EntryKind::File { mode, .. } => writer.file(&raw, &path, mode, data),
            EntryKind::Symlink { target } => {
                writer.symlink(&path, &target);
                Ok(())
            }
        }
    });
    writer.plan = plan;
    result
}

fn each_entry<R: Read>(
    reader: R,
    plan: &mut Plan,
    mut visit: impl FnMut(Classified, &mut dyn Read) -> Result<(), Rejection>,
) -> Result<(), Rejection> {
    let mut archive = tar::Archive::new(reader);
    let mut last: Option<String> = None;
    let corrupt = |last: &Option<String>, e: std::io::Error| Rejection::Corrupt {
        after: last.clone(),
        reason: e.to_string(),
    };
    for entry in archive.entries().map_err(|e| corrupt(&last, e))? {
        let mut entry = entry.map_err(|e| corrupt(&last, e))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        plan.count(&raw)?;
        let Some(classified) = classify(&mut entry, &raw, plan)? else {
            last = Some(raw);
            continue;
        };
        if let Some(path) = &classified.1 {
            plan.admit(&raw, path, &classified.2)?;
        }
        visit(classified, &mut entry)?;
        last = Some(raw);
    }
    Ok(())
}

/// Whether the entry's PAX header carries GNU sparse keys (`GNU.sparse.*`).
fn is_pax_sparse<R: Read>(entry: &mut tar::Entry<'_, R>) -> bool {
    let Ok(Some(extensions)) = entry.pax_extensions() else {
        return false;
    };
    extensions
        .flatten()
        .any(|ext| ext.key_bytes().starts_with(b"GNU.sparse."))
}

/// `None` for entries that carry no file (a PAX global header).
fn classify<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    raw: &str,
    plan: &Plan,
) -> Result<Option<Classified>, Rejection> {
    // PAX sparse files (GNU tar --format=posix) look like regular files whose data starts with
    // a block map: extracting them as they are would write the map, not the file.
    if is_pax_sparse(entry) {
        return Err(Rejection::Unsupported {
            entry: raw.to_owned(),
            what: "a sparse file (PAX GNU.sparse)".to_owned(),
        });
    }
    let header = entry.header();
    let kind = match header.entry_type() {
        EntryType::XGlobalHeader => return Ok(None),
        EntryType::Regular | EntryType::Continuous => EntryKind::File {
            size: entry.size(),
            mode: header.mode().unwrap_or(0o644),
        },
        EntryType::Directory => EntryKind::Dir,
        EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default();
            EntryKind::Symlink { target }
        }
        EntryType::Link => {
            let target = entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default();
            return Err(Rejection::HardLink {
                entry: raw.to_owned(),
                target,
            });
        }
        special @ (EntryType::Char | EntryType::Block | EntryType::Fifo) => {
            let what = match special {
                EntryType::Char => "character device",
                EntryType::Block => "block device",
                _ => "FIFO",
            };
            return Err(Rejection::SpecialFile {
                entry: raw.to_owned(),
                what: what.to_owned(),
            });
        }
        // Sparse entries can claim far more logical bytes than they store.
        EntryType::GNUSparse => {
            return Err(Rejection::Unsupported {
                entry: raw.to_owned(),
                what: "a GNU sparse file".to_owned(),
            })
        }
        other => {
            return Err(Rejection::Unsupported {
                entry: raw.to_owned(),
                what: format!("tar entry type {:?}", other.as_byte() as char),
            })
        }
    };
    let path = check_name(&entry.path_bytes(), plan.limits())?;
    if path.is_none() && !matches!(kind, EntryKind::Dir) {
        return Err(Rejection::BadName {
            entry: raw.to_owned(),
            reason: "names the extraction directory itself".to_owned(),
        });
    }
    Ok(Some((raw.to_owned(), path, kind)))
}
