//! An app's files as the daemon receives them: archives extracted under a reject-not-rewrite
//! policy, directories read back without following links, and the app's `manifest.json`.
//!
//! Everything here is pure or local-filesystem code: no database, no network, no Docker. The
//! extraction and walking functions block; async callers run them in
//! `tokio::task::spawn_blocking`.
//!
//! - [`extract`]: `.tar`, `.tar.gz`/`.tgz` and `.zip` into a fresh directory ([`extract_archive`]).
//! - [`policy`]: the rules every entry must pass (names, types, links, caps, modes); pure.
//! - [`walk`]: listing regular files under a directory the app could write ([`walk_regular_files`]).
//! - [`manifest`]: parsing and validating `manifest.json` against the host's limits.
//! - [`app_dir`]: checking an app directory (manifest, paths, package files) for `validate`.
//! - [`resource`]: the memory, CPU and timeout forms a manifest may use; the host's maxima.
//! - [`object_key`]: keys of an app's files in app-storage and the path each gets in the app.
//! - [`version`]: which published version a run executes, checksum syntax, the file-set digest.
//! - [`resolve`]: a claimed run's files: version, verified download, layout, manifest, grants.
//! - [`publish`]: uploading an app directory and recording its files (`app-executor publish`).
//! - [`cache`]: the content-addressed blob cache (streamed SHA-256 verification, LRU cap).
//! - [`digest`]: SHA-256 as the daemon computes it.

pub mod app_dir;
pub mod cache;
pub mod digest;
pub mod extract;
pub mod manifest;
pub mod object_key;
pub mod pack;
pub mod policy;
pub mod publish;
pub mod resolve;
pub mod resource;
pub mod settings;
mod tar;
pub mod version;
pub mod walk;
mod zip;

pub use app_dir::{check_app_dir, AppDirReport};
pub use extract::{extract_archive, ArchiveFormat, ExtractError, ExtractReport};
pub use manifest::{
    missing_permissions, validate_manifest, FieldError, Manifest, ManifestError, PermissionType,
    Validated,
};
pub use policy::{ExtractLimits, Rejection};
pub use resource::{HostLimits, ResourceLimits};
pub use walk::{
    open_listed, walk_regular_files, Skipped, WalkError, WalkLimits, Walked, WalkedFile,
};
