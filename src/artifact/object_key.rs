//! Object keys of an app's files in the `app-storage` bucket, and the path each file gets inside
//! the app's directory. Pure.
//!
//! `app_storage.file_path` is the object key (the original document's "Path in storage bucket"):
//! always under the app's own folder `app_<app id>/`. `app-executor publish` writes
//! `app_<id>/<version>/<path>`; the document's own example writes `app_<id>/manifest.json` with
//! the version in its own column. Both shapes are read the same way: the path inside the app is
//! the key without `app_<id>/` and, when the next folder is the row's version, without that.
//!
//! The database refuses other keys (`app_exec.is_app_object_key`); the daemon checks again
//! before any I/O, so a row that got in anyway (a dropped constraint, a restored dump) is a
//! final `unsafe_path` and never reaches storage or the blob cache.

use uuid::Uuid;

/// Why a key is not one of the app's own files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsafeKey {
    #[error("object key {key:?} is not under the app's folder {folder}")]
    OutsideAppFolder { key: String, folder: String },
    #[error("object key {key:?} has an empty, \".\" or \"..\" segment")]
    BadSegment { key: String },
    #[error("object key {key:?} has characters Supabase Storage does not accept in keys")]
    BadCharacter { key: String },
}

/// The folder every object of `app` lives under, with its trailing `/`.
pub fn app_folder(app: Uuid) -> String {
    format!("app_{app}/")
}

/// The key `publish` writes for a file of a version.
pub fn version_file_key(app: Uuid, version: &str, path_in_app: &str) -> String {
    format!("{}{version}/{path_in_app}", app_folder(app))
}

/// The characters Supabase Storage allows in object keys (its `mustBeValidKey`).
fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_/!.*'() &$=@;:+,?-".contains(c)
}

/// Checks that `key` is a safe key inside `app`'s folder (the same rule as the database's
/// `app_exec.is_app_object_key`).
pub fn check_app_key(app: Uuid, key: &str) -> Result<(), UnsafeKey> {
    let folder = app_folder(app);
    if !key.starts_with(&folder) {
        return Err(UnsafeKey::OutsideAppFolder {
            key: key.to_owned(),
            folder,
        });
    }
    if !key.chars().all(is_key_char) {
        return Err(UnsafeKey::BadCharacter {
            key: key.to_owned(),
        });
    }
    if key
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(UnsafeKey::BadSegment {
            key: key.to_owned(),
        });
    }
    Ok(())
}

/// The path of a file inside the app directory, from its key: the key without `app_<id>/` and,
/// when the next folder is `version`, without `<version>/`.
pub fn path_in_app(app: Uuid, version: &str, key: &str) -> Result<String, UnsafeKey> {
    check_app_key(app, key)?;
    let rest = &key[app_folder(app).len()..];
    let rest = match rest.strip_prefix(version).and_then(|r| r.strip_prefix('/')) {
        Some(inside_version) if !version.is_empty() => inside_version,
        _ => rest,
    };
    Ok(rest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_00a1);

    fn key(rest: &str) -> String {
        format!("app_{APP}/{rest}")
    }

    #[test]
    fn both_key_shapes_give_the_path_inside_the_app() {
        assert_eq!(
            path_in_app(APP, "1.0.0", &key("1.0.0/src/index.js")).unwrap(),
            "src/index.js"
        );
        assert_eq!(
            path_in_app(APP, "1.0.0", &key("manifest.json")).unwrap(),
            "manifest.json"
        );
        assert_eq!(
            path_in_app(APP, "1.0.0", &key("1.0.0x/a.js")).unwrap(),
            "1.0.0x/a.js"
        );
        assert_eq!(
            path_in_app(APP, "2.0.0", &key("1.0.0/a.js")).unwrap(),
            "1.0.0/a.js"
        );
        assert_eq!(
            version_file_key(APP, "1.0.0", "a/b.js"),
            key("1.0.0/a/b.js")
        );
    }

    #[test]
    fn keys_outside_the_app_folder_or_with_odd_segments_are_refused() {
        let other = Uuid::from_u128(7);
        for bad in [
            format!("app_{other}/1.0.0/secret.txt"),
            format!("/app_{APP}/a.js"),
            format!("app_{}/a.js", APP.to_string().to_uppercase()),
            "manifest.json".to_owned(),
            format!("app_{APP}"),
        ] {
            assert!(
                matches!(
                    check_app_key(APP, &bad),
                    Err(UnsafeKey::OutsideAppFolder { .. })
                ),
                "{bad}"
            );
        }
        for bad in [
            key("../app_x/a.js"),
            key("1.0.0/../../b"),
            key("a//b"),
            key("./a"),
            key("a/../b"),
            key("/etc/passwd"),
            key("dir/"),
            key(""),
        ] {
            assert!(
                matches!(check_app_key(APP, &bad), Err(UnsafeKey::BadSegment { .. })),
                "{bad}"
            );
        }
        for bad in [key("a\\b"), key("a\nb"), key("é.js"), key("a#b")] {
            assert!(
                matches!(
                    check_app_key(APP, &bad),
                    Err(UnsafeKey::BadCharacter { .. })
                ),
                "{bad}"
            );
        }
        for good in ["1.0.0/src/a b(1).js", "index.js", "src/lib/a.js", "a.b/c"] {
            assert!(check_app_key(APP, &key(good)).is_ok(), "{good}");
        }
    }
}
