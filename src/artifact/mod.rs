//! App files: which version runs and the digest of what was verified.

pub mod version;
