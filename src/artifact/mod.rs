//! App files: which version runs and the digest of what was verified.

pub mod cache;
pub mod version;
