//! Which files a run executes: the version to run (DESIGN §5) and the digest of the verified
//! file set. Pure; the I/O lives in `db::artifact` and the resolver.
//!
//! Version: the run's build's version when `build_id` is set, else `metadata.version`, else the
//! highest semver version published. Versions that are not semver are only used when named.

use super::digest::Sha256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VersionError {
    #[error(
        "app has no published files; publish it first (app-executor publish <dir> --app <id>)"
    )]
    NothingPublished,
    #[error("version {wanted:?} is not published for this app; published: {}", available.join(", "))]
    UnknownVersion {
        wanted: String,
        available: Vec<String>,
    },
    #[error("metadata.version must be a string, found {found}")]
    BadMetadataVersion { found: String },
    #[error("no published version is semver ({}); name one in metadata.version", available.join(", "))]
    NoSemverVersion { available: Vec<String> },
}

/// Picks the version to run. `build_version` comes from the run's build, `metadata` is the
/// run's `metadata` jsonb, `available` the published versions.
pub fn choose_version(
    build_version: Option<&str>,
    metadata: &serde_json::Value,
    available: &[String],
) -> Result<String, VersionError> {
    if available.is_empty() {
        return Err(VersionError::NothingPublished);
    }
    let named = match (build_version, metadata.get("version")) {
        (Some(v), _) => Some(v.to_owned()),
        (None, None | Some(serde_json::Value::Null)) => None,
        (None, Some(serde_json::Value::String(v))) => Some(v.clone()),
        (None, Some(other)) => {
            return Err(VersionError::BadMetadataVersion {
                found: other.to_string(),
            })
        }
    };
    let mut sorted = available.to_vec();
    sorted.sort();
    if let Some(wanted) = named {
        return if available.contains(&wanted) {
            Ok(wanted)
        } else {
            Err(VersionError::UnknownVersion {
                wanted,
                available: sorted,
            })
        };
    }
    available
        .iter()
        .filter_map(|v| semver::Version::parse(v).ok().map(|parsed| (parsed, v)))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, v)| v.clone())
        .ok_or(VersionError::NoSemverVersion { available: sorted })
}

/// Parses `sha256:<64 lowercase hex>` into the hex part.
pub fn parse_checksum(checksum: &str) -> Option<&str> {
    let hex = checksum.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

/// The digest of a verified file set: SHA-256 over `path NUL checksum LF` lines sorted by path,
/// as `sha256:<hex>`. Same files, same digest, whatever order they were listed in.
pub fn file_set_digest<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut files: Vec<(&str, &str)> = files.into_iter().collect();
    files.sort();
    let mut hasher = Sha256::new();
    for (path, checksum) in files {
        hasher.update(path.as_bytes());
        hasher.update(&[0]);
        hasher.update(checksum.as_bytes());
        hasher.update(b"\n");
    }
    format!("sha256:{}", hasher.finish_hex())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn versions(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_highest_semver_version_wins_when_none_is_named() {
        let available = versions(&["1.2.0", "1.10.0", "1.9.9", "2.0.0-rc.1", "latest"]);
        assert_eq!(
            choose_version(None, &json!({}), &available).unwrap(),
            "2.0.0-rc.1"
        );
        let stable = versions(&["1.2.0", "1.10.0", "1.9.9"]);
        assert_eq!(choose_version(None, &json!({}), &stable).unwrap(), "1.10.0");
    }

    #[test]
    fn the_build_wins_over_metadata_and_metadata_over_the_highest() {
        let available = versions(&["1.0.0", "2.0.0"]);
        let meta = json!({"version": "1.0.0"});
        assert_eq!(choose_version(None, &meta, &available).unwrap(), "1.0.0");
        assert_eq!(
            choose_version(Some("2.0.0"), &meta, &available).unwrap(),
            "2.0.0"
        );
    }

    #[test]
    fn unknown_and_malformed_versions_are_named() {
        let available = versions(&["1.0.0"]);
        let err = choose_version(None, &json!({"version": "3.0.0"}), &available).unwrap_err();
        assert!(err.to_string().contains("\"3.0.0\"") && err.to_string().contains("1.0.0"));
        let err = choose_version(None, &json!({"version": 3}), &available).unwrap_err();
        assert_eq!(err, VersionError::BadMetadataVersion { found: "3".into() });
        assert_eq!(
            choose_version(None, &json!({}), &[]).unwrap_err(),
            VersionError::NothingPublished
        );
    }

    #[test]
    fn checksums_must_be_sha256_lowercase_hex() {
        let good = format!("sha256:{}", "ab".repeat(32));
        assert!(parse_checksum(&good).is_some());
        assert!(parse_checksum("sha256:ABCD").is_none());
        assert!(parse_checksum(&format!("md5:{}", "ab".repeat(32))).is_none());
        assert!(parse_checksum(&format!("sha256:{}", "AB".repeat(32))).is_none());
    }

    #[test]
    fn the_file_set_digest_ignores_listing_order() {
        let a = file_set_digest([("a.js", "sha256:1"), ("b.js", "sha256:2")]);
        let b = file_set_digest([("b.js", "sha256:2"), ("a.js", "sha256:1")]);
        assert_eq!(a, b);
        assert_ne!(
            a,
            file_set_digest([("a.js", "sha256:2"), ("b.js", "sha256:1")])
        );
    }
}
