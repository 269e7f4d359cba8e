//! The extraction policy, as pure checks: which names, entry types, links and sizes an archive
//! may contain, and the modes extracted files get. Rejects, never rewrites: a name that would
//! need sanitising (absolute, `..`, backslashes) fails the whole archive.
//!
//! Owns [`ExtractLimits`], [`Rejection`] (the reason an archive was refused, naming the entry)
//! and [`Plan`], which admits entries one by one and remembers what each path is. It does no
//! I/O; `extract` does the writing.

use std::collections::{BTreeMap, HashMap};

/// Caps on what one archive may expand to. Enforced on the bytes actually written, not on the
/// sizes the archive declares (zip headers can lie), and before anything is written when the
/// declared sizes already exceed them.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractLimits {
    /// Entries of any kind (files, directories, links).
    pub max_entries: usize,
    /// Uncompressed bytes of all files together.
    pub max_total_bytes: u64,
    /// Uncompressed bytes of one file.
    pub max_file_bytes: u64,
    /// Uncompressed bytes per byte of archive. Applies once more than [`RATIO_FLOOR`] bytes are
    /// written, so a tiny archive of repetitive text is not mistaken for a bomb.
    pub max_ratio: u64,
    /// Bytes of one entry name.
    pub max_path_bytes: usize,
    /// Components of one entry name.
    pub max_depth: usize,
}

/// Output below this size never counts as a compression bomb.
pub const RATIO_FLOOR: u64 = 1 << 20;

impl Default for ExtractLimits {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_total_bytes: 500_000_000,
            max_file_bytes: 100_000_000,
            max_ratio: 100,
            max_path_bytes: 1024,
            max_depth: 64,
        }
    }
}

/// Why an archive was refused. Every variant about an entry names it as written in the archive.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("entry {entry:?} is an absolute path")]
    AbsolutePath { entry: String },
    #[error("entry {entry:?} leaves the extraction directory")]
    PathTraversal { entry: String },
    #[error("entry {entry:?} has a bad name: {reason}")]
    BadName { entry: String, reason: String },
    #[error("entry {entry:?} is a link to {target:?}, which leaves the extraction directory")]
    LinkEscapes { entry: String, target: String },
    #[error("entry {entry:?} is reached through the symlink {link:?}; nothing is written or resolved through links")]
    ThroughLink { entry: String, link: String },
    #[error("entry {entry:?} is a hard link to {target:?}; hard links are not accepted")]
    HardLink { entry: String, target: String },
    #[error(
        "entry {entry:?} is a {what}; only regular files, directories and symlinks are accepted"
    )]
    SpecialFile { entry: String, what: String },
    #[error("entry {entry:?} names a path that is already in the archive")]
    Duplicate { entry: String },
    #[error("entries {entry:?} and {other:?} are one file on a case-insensitive or Unicode-normalising filesystem (macOS, Windows); rename one of them")]
    NameCollision { entry: String, other: String },
    #[error("the central directory lists some name twice")]
    DuplicateNames,
    #[error("entries share compressed data (an overlap bomb)")]
    OverlappingEntries,
    #[error("entry {entry:?} is encrypted")]
    Encrypted { entry: String },
    #[error("entry {entry:?} uses {what}, which is not supported")]
    Unsupported { entry: String, what: String },
    #[error("entry {entry:?} is number {count}, more than the limit of {limit} entries")]
    TooManyEntries {
        entry: String,
        count: usize,
        limit: usize,
    },
    #[error("entry {entry:?} is larger than the limit of {limit} bytes per file (stopped after writing {written} bytes)")]
    FileTooLarge {
        entry: String,
        limit: u64,
        written: u64,
    },
    #[error("entry {entry:?} takes the uncompressed size past the limit of {limit} bytes (stopped after writing {written} bytes)")]
    TooLarge {
        entry: String,
        limit: u64,
        written: u64,
    },
    #[error(
        "entry {entry:?} expands the archive more than {limit} times its size (a compression bomb)"
    )]
    RatioTooHigh { entry: String, limit: u64 },
    #[error("the archive is corrupt {}: {reason}", at(.after))]
    Corrupt {
        after: Option<String>,
        reason: String,
    },
    #[error("not a tar, gzip-compressed tar or zip archive (judged by its first bytes)")]
    UnknownFormat,
    #[error("the destination {path} already exists; extraction needs a fresh directory")]
    DestinationExists { path: String },
    #[error("cannot write {path}: {reason}")]
    Io { path: String, reason: String },
}

fn at(after: &Option<String>) -> String {
    match after {
        Some(entry) => format!("after entry {entry:?}"),
        None => "before its first entry".to_owned(),
    }
}

impl Rejection {
    /// A stable snake_case code for `error_kind` / `input_rejected(<code>)`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AbsolutePath { .. } => "absolute_path",
            Self::PathTraversal { .. } => "path_traversal",
            Self::BadName { .. } => "bad_name",
            Self::LinkEscapes { .. } | Self::ThroughLink { .. } | Self::HardLink { .. } => "link",
            Self::SpecialFile { .. } => "special_file",
            Self::Duplicate { .. } | Self::DuplicateNames | Self::NameCollision { .. } => {
                "duplicate"
            }
            Self::Encrypted { .. } | Self::Unsupported { .. } => "unsupported",
            Self::TooManyEntries { .. } => "too_many_entries",
            Self::OverlappingEntries
            | Self::FileTooLarge { .. }
            | Self::TooLarge { .. }
            | Self::RatioTooHigh { .. } => "too_large",
            Self::Corrupt { .. } | Self::UnknownFormat => "corrupt",
            Self::DestinationExists { .. } | Self::Io { .. } => "io",
        }
    }
}

/// What an entry is, once its type has been accepted.
#[derive(Debug, Clone, PartialEq)]
pub enum EntryKind {
    /// `size` is what the archive declares; the bytes written are counted separately.
    File {
        size: u64,
        mode: u32,
    },
    Dir,
    Symlink {
        target: String,
    },
}

/// Checks an entry name and returns it normalised (`./` and empty components dropped, joined
/// with `/`), or `None` for the root itself (`./`, which tar archives made with `-C dir .`
/// contain).
pub fn check_name(raw: &[u8], limits: &ExtractLimits) -> Result<Option<String>, Rejection> {
    let lossy = String::from_utf8_lossy(raw).into_owned();
    let bad = |reason: &str| Rejection::BadName {
        entry: lossy.clone(),
        reason: reason.to_owned(),
    };
    let name = std::str::from_utf8(raw).map_err(|_| bad("not valid UTF-8"))?;
    if name.chars().any(char::is_control) {
        return Err(bad("contains a control character"));
    }
    // Split on both separators so `..\evil` (a Windows-made zip) is seen as traversal.
    if name.split(['/', '\\']).any(|c| c == "..") {
        return Err(Rejection::PathTraversal { entry: lossy });
    }
    let first = name.split(['/', '\\']).next().unwrap_or_default();
    let drive = first.len() == 2 && first.ends_with(':');
    if name.starts_with('/') || name.starts_with('\\') || drive {
        return Err(Rejection::AbsolutePath { entry: lossy });
    }
    if name.contains('\\') {
        return Err(bad("contains a backslash"));
    }
    if name.len() > limits.max_path_bytes {
        return Err(bad(&format!("longer than {} bytes", limits.max_path_bytes)));
    }
    let parts: Vec<&str> = name
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.len() > limits.max_depth {
        return Err(bad(&format!("deeper than {} levels", limits.max_depth)));
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// The mode an extracted file gets: execute bits kept, always readable, never writable by
/// group or others, no setuid/setgid/sticky.
pub fn file_mode(archived: u32) -> u32 {
    (archived & 0o755) | 0o644
}

/// Directories are always `0o755`: the archive's directory modes carry no meaning for an app.
pub const DIR_MODE: u32 = 0o755;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Node {
    File,
    /// `true` when the archive has an entry for it, `false` when only implied by a child.
    Dir(bool),
    Symlink,
}

/// The entries admitted so far: what each path is, counts and declared bytes. The same plan is
/// built by the pre-scan (nothing written yet) and again while extracting.
#[derive(Debug)]
pub struct Plan {
    limits: ExtractLimits,
    archive_len: u64,
    entries: usize,
    declared_bytes: u64,
    nodes: HashMap<String, Node>,
    /// Every admitted path by its folded form (NFC, lowercase) → the path as first admitted.
    folded: HashMap<String, String>,
    symlinks: BTreeMap<String, (String, String)>,
}

/// A path as a case-insensitive, normalising filesystem sees it.
fn fold(path: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    path.nfc().collect::<String>().to_lowercase()
}

impl Plan {
    pub fn new(limits: &ExtractLimits, archive_len: u64) -> Self {
        Self {
            limits: limits.clone(),
            archive_len,
            entries: 0,
            declared_bytes: 0,
            nodes: HashMap::new(),
            folded: HashMap::new(),
            symlinks: BTreeMap::new(),
        }
    }

    pub fn limits(&self) -> &ExtractLimits {
        &self.limits
    }

    /// Counts an entry against the entry cap; call for every entry, even skipped ones.
    pub fn count(&mut self, entry: &str) -> Result<(), Rejection> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(Rejection::TooManyEntries {
                entry: entry.to_owned(),
                count: self.entries,
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    /// Admits one entry (`raw` is its name as archived, `path` the normalised name).
    pub fn admit(&mut self, raw: &str, path: &str, kind: &EntryKind) -> Result<(), Rejection> {
        let dup = || Rejection::Duplicate {
            entry: raw.to_owned(),
        };
        // `Index.js` and `index.js`, or `café.js` in NFC and NFD, are two names here but one
        // file where the app may be unpacked again: refused, naming both.
        let mut prefix = String::new();
        for part in path.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            match self.folded.get(&fold(&prefix)) {
                Some(seen) if *seen != prefix => {
                    return Err(Rejection::NameCollision {
                        entry: raw.to_owned(),
                        other: seen.clone(),
                    })
                }
                Some(_) => {}
                None => {
                    self.folded.insert(fold(&prefix), prefix.clone());
                }
            }
        }
        // Every ancestor must be a plain directory: never a file, never a symlink.
        let mut ancestor = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !ancestor.is_empty() {
                ancestor.push('/');
            }
            ancestor.push_str(part);
            match self.nodes.get(&ancestor) {
                Some(Node::Symlink) => {
                    return Err(Rejection::ThroughLink {
                        entry: raw.to_owned(),
                        link: ancestor,
                    })
                }
                Some(Node::File) => return Err(dup()),
                Some(Node::Dir(_)) => {}
                None => {
                    self.nodes.insert(ancestor.clone(), Node::Dir(false));
                }
            }
        }
        let node = match kind {
            EntryKind::File { .. } => Node::File,
            EntryKind::Dir => Node::Dir(true),
            EntryKind::Symlink { .. } => Node::Symlink,
        };
        match (self.nodes.get(path), node) {
            (None, _) => {}
            // A directory entry after its children (common in zips) only confirms it.
            (Some(Node::Dir(false)), Node::Dir(_)) => {}
            _ => return Err(dup()),
        }
        self.nodes.insert(path.to_owned(), node);
        match kind {
            EntryKind::File { size, .. } => self.declare(raw, *size)?,
            EntryKind::Symlink { target } => {
                if target.is_empty() || target.starts_with('/') || target.contains('\0') {
                    return Err(Rejection::LinkEscapes {
                        entry: raw.to_owned(),
                        target: target.clone(),
                    });
                }
                self.symlinks
                    .insert(path.to_owned(), (raw.to_owned(), target.clone()));
            }
            EntryKind::Dir => {}
        }
        Ok(())
    }

    fn declare(&mut self, raw: &str, size: u64) -> Result<(), Rejection> {
        let limits = &self.limits;
        if size > limits.max_file_bytes {
            return Err(Rejection::FileTooLarge {
                entry: raw.to_owned(),
                limit: limits.max_file_bytes,
                written: 0,
            });
        }
        self.declared_bytes = self.declared_bytes.saturating_add(size);
        if self.declared_bytes > limits.max_total_bytes {
            return Err(Rejection::TooLarge {
                entry: raw.to_owned(),
                limit: limits.max_total_bytes,
                written: 0,
            });
        }
        if exceeds_ratio(self.declared_bytes, self.archive_len, limits.max_ratio) {
            return Err(Rejection::RatioTooHigh {
                entry: raw.to_owned(),
                limit: limits.max_ratio,
            });
        }
        Ok(())
    }

    /// Checks every symlink once all entries are known: its target, resolved from the link's
    /// directory, must stay inside the root and must not pass through another symlink (so the
    /// lexical resolution here is the one the kernel will do).
    pub fn check_links(&self) -> Result<(), Rejection> {
        for (path, (raw, target)) in &self.symlinks {
            let escapes = || Rejection::LinkEscapes {
                entry: raw.clone(),
                target: target.clone(),
            };
            let mut stack: Vec<&str> = path.split('/').collect();
            stack.pop();
            let parts: Vec<&str> = target
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect();
            for (i, part) in parts.iter().enumerate() {
                if *part == ".." {
                    stack.pop().ok_or_else(escapes)?;
                    continue;
                }
                stack.push(part);
                let last = i + 1 == parts.len();
                let prefix = stack.join("/");
                if !last && self.symlinks.contains_key(&prefix) {
                    return Err(Rejection::ThroughLink {
                        entry: raw.clone(),
                        link: prefix,
                    });
                }
            }
        }
        Ok(())
    }

    pub fn symlink_count(&self) -> usize {
        self.symlinks.len()
    }
}

/// Whether `written` bytes from an archive of `archive_len` bytes exceed `max_ratio`.
pub fn exceeds_ratio(written: u64, archive_len: u64, max_ratio: u64) -> bool {
    written > RATIO_FLOOR && written > archive_len.saturating_mul(max_ratio)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(raw: &str) -> Result<Option<String>, Rejection> {
        check_name(raw.as_bytes(), &ExtractLimits::default())
    }

    #[test]
    fn names_are_normalised_or_rejected_never_rewritten() {
        assert_eq!(name("./a//b/./c.js").unwrap().as_deref(), Some("a/b/c.js"));
        assert_eq!(name("./").unwrap(), None);
        assert!(matches!(name("../x"), Err(Rejection::PathTraversal { .. })));
        assert!(matches!(
            name("a/../../x"),
            Err(Rejection::PathTraversal { .. })
        ));
        assert!(matches!(
            name("..\\x"),
            Err(Rejection::PathTraversal { .. })
        ));
        assert!(matches!(
            name("/etc/x"),
            Err(Rejection::AbsolutePath { .. })
        ));
        assert!(matches!(name("C:\\x"), Err(Rejection::AbsolutePath { .. })));
        assert!(matches!(name("a\\b"), Err(Rejection::BadName { .. })));
        assert!(matches!(name("a\u{0}b"), Err(Rejection::BadName { .. })));
        assert!(matches!(
            check_name(b"\xff", &ExtractLimits::default()),
            Err(Rejection::BadName { .. })
        ));
    }

    #[test]
    fn modes_keep_execute_bits_and_drop_special_and_write_bits() {
        assert_eq!(file_mode(0o4755), 0o755);
        assert_eq!(file_mode(0o6777), 0o755);
        assert_eq!(file_mode(0o600), 0o644);
        assert_eq!(file_mode(0o1666), 0o644);
    }

    #[test]
    fn links_may_point_inside_but_not_out_or_through_other_links() {
        let file = EntryKind::File {
            size: 1,
            mode: 0o644,
        };
        let link = |t: &str| EntryKind::Symlink { target: t.into() };
        let mut plan = Plan::new(&ExtractLimits::default(), 1000);
        plan.admit("a/b.js", "a/b.js", &file).unwrap();
        plan.admit("a/l", "a/l", &link("b.js")).unwrap();
        plan.admit("up", "up", &link("a/../a/b.js")).unwrap();
        plan.check_links().unwrap();
        plan.admit("d/out", "d/out", &link("../../x")).unwrap();
        assert!(matches!(
            plan.check_links(),
            Err(Rejection::LinkEscapes { .. })
        ));

        let mut plan = Plan::new(&ExtractLimits::default(), 1000);
        plan.admit("d/s", "d/s", &link("..")).unwrap();
        plan.admit("x", "x", &link("d/s/d/../..")).unwrap();
        assert!(matches!(
            plan.check_links(),
            Err(Rejection::ThroughLink { .. })
        ));
        assert!(matches!(
            plan.admit("d/s/f", "d/s/f", &file),
            Err(Rejection::ThroughLink { .. })
        ));
    }

    #[test]
    fn names_one_filesystem_would_merge_are_refused_naming_both() {
        let file = EntryKind::File {
            size: 1,
            mode: 0o644,
        };
        let nfc = "caf\u{e9}.js";
        let nfd = "cafe\u{301}.js";
        for (first, second) in [
            ("index.js", "Index.js"),
            (nfc, nfd),
            ("src/a.js", "SRC/b.js"),
        ] {
            let mut plan = Plan::new(&ExtractLimits::default(), 1000);
            plan.admit(first, first, &file).unwrap();
            match plan.admit(second, second, &file) {
                Err(Rejection::NameCollision { entry, other }) => {
                    assert_eq!(entry, second);
                    assert!(first.starts_with(&other), "{other} vs {first}");
                }
                other => panic!("{first} / {second}: {other:?}"),
            }
        }
        // Distinct names, and a directory entry after its children, are fine.
        let mut plan = Plan::new(&ExtractLimits::default(), 1000);
        plan.admit("src/a.js", "src/a.js", &file).unwrap();
        plan.admit("src/", "src", &EntryKind::Dir).unwrap();
        plan.admit("src/b.js", "src/b.js", &file).unwrap();
    }

    #[test]
    fn a_path_may_appear_once_and_a_file_is_never_a_directory() {
        let file = EntryKind::File {
            size: 1,
            mode: 0o644,
        };
        let mut plan = Plan::new(&ExtractLimits::default(), 1000);
        plan.admit("a/b", "a/b", &file).unwrap();
        plan.admit("a/", "a", &EntryKind::Dir).unwrap();
        assert!(matches!(
            plan.admit("a", "a", &EntryKind::Dir),
            Err(Rejection::Duplicate { .. })
        ));
        assert!(matches!(
            plan.admit("./a/b", "a/b", &file),
            Err(Rejection::Duplicate { .. })
        ));
        assert!(matches!(
            plan.admit("a/b/c", "a/b/c", &file),
            Err(Rejection::Duplicate { .. })
        ));
    }
}
