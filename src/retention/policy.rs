//! The pure rules of retention: which versions of an app are never deleted, and which objects
//! under a run's prefix are logs and which are outputs. The selection by age and use is SQL
//! (`db::retention`); this is what SQL cannot say well (semver order) or need not.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

/// Versions of one app kept whatever their age: the highest semver version (what a run naming
/// neither a build nor a version runs, see `artifact::version`) and the most recently published
/// one (an app that publishes only non-semver versions keeps its latest).
pub fn protected_versions(published: &[(String, DateTime<Utc>)]) -> HashSet<String> {
    let mut keep = HashSet::new();
    let highest = published
        .iter()
        .filter_map(|(v, _)| semver::Version::parse(v).ok().map(|parsed| (parsed, v)))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, v)| v.clone());
    keep.extend(highest);
    let newest = published
        .iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)))
        .map(|(v, _)| v.clone());
    keep.extend(newest);
    keep
}

/// The folder under a run's prefix (`app_{app}/runs/{run}/`) that holds its outputs; everything
/// else there (compacted logs, per-attempt chunk folders) is its logs.
pub const OUTPUT_FOLDER: &str = "output";

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + i64::from(day) * 86400, 0).unwrap()
    }

    fn versions(list: &[(&str, u32)]) -> Vec<(String, DateTime<Utc>)> {
        list.iter()
            .map(|(v, d)| ((*v).to_owned(), at(*d)))
            .collect()
    }

    #[test]
    fn the_highest_semver_and_the_newest_version_are_kept() {
        // 1.10.0 is higher than 1.9.0 (semver, not text order); 0.9.0 was published last.
        let keep = protected_versions(&versions(&[
            ("1.9.0", 1),
            ("1.10.0", 2),
            ("1.2.0", 3),
            ("0.9.0", 4),
        ]));
        assert_eq!(
            keep,
            HashSet::from(["1.10.0".to_owned(), "0.9.0".to_owned()])
        );
    }

    #[test]
    fn pre_releases_rank_below_their_release_and_non_semver_only_counts_by_date() {
        let keep = protected_versions(&versions(&[
            ("2.0.0-rc.1", 3),
            ("2.0.0", 2),
            ("nightly", 1),
        ]));
        assert_eq!(
            keep,
            HashSet::from(["2.0.0".to_owned(), "2.0.0-rc.1".to_owned()])
        );
        let keep = protected_versions(&versions(&[("alpha", 1), ("beta", 2)]));
        assert_eq!(keep, HashSet::from(["beta".to_owned()]));
        assert!(protected_versions(&[]).is_empty());
    }

    #[test]
    fn a_single_version_is_always_kept() {
        assert_eq!(
            protected_versions(&versions(&[("1.0.0", 1)])),
            HashSet::from(["1.0.0".to_owned()])
        );
    }
}
