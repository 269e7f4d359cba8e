//! The content type an output file is stored with: guessed from its extension, and only ever a
//! type the `app-logs` bucket accepts (its allow-list, from the bucket migration), falling back
//! to `application/octet-stream`. Pure.

use std::sync::LazyLock;

use crate::storage::{mime_allowed, BucketPolicy, APP_LOGS_BUCKET};

/// What every allow-list of `app-logs` has held; used when a guess is not allowed.
pub const FALLBACK: &str = "application/octet-stream";

static ALLOWED: LazyLock<Vec<String>> = LazyLock::new(|| {
    BucketPolicy::default()
        .buckets
        .get(APP_LOGS_BUCKET)
        .and_then(|b| b.allowed_mime_types.clone())
        .unwrap_or_default()
});

/// The type to store `path` (a relative output path) with.
pub fn for_output(path: &str) -> &'static str {
    let guess = guess(path);
    if ALLOWED.is_empty() || mime_allowed(&ALLOWED, guess) {
        guess
    } else {
        FALLBACK
    }
}

fn guess(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let extension = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
        _ => return FALLBACK,
    };
    match extension.as_str() {
        "txt" | "log" | "text" | "md" | "markdown" => "text/plain",
        "json" => "application/json",
        "ndjson" | "jsonl" => "application/x-ndjson",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "avif" => "image/avif",
        "bmp" => "image/bmp",
        "ico" => "image/x-icon",
        // Guessable but outside the bucket's allow-list today; kept so that widening the list
        // takes effect without a code change.
        "pdf" => "application/pdf",
        "xml" => "application/xml",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        _ => FALLBACK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_extensions_get_their_type_and_the_rest_fall_back_to_an_allowed_one() {
        assert_eq!(for_output("report.csv"), "text/csv");
        assert_eq!(for_output("charts/Plot.PNG"), "image/png");
        assert_eq!(for_output("data.jsonl"), "application/x-ndjson");
        assert_eq!(for_output("notes.md"), "text/plain");
        // Not in the bucket's allow-list: stored as octet-stream rather than rejected.
        assert_eq!(for_output("paper.pdf"), FALLBACK);
        assert_eq!(for_output("archive.tar.gz"), FALLBACK);
        assert_eq!(for_output(".hidden"), FALLBACK);
        assert_eq!(for_output("noextension"), FALLBACK);
        for path in ["a.txt", "a.json", "a.svg", "a.bin", "a.pdf"] {
            assert!(mime_allowed(&ALLOWED, for_output(path)), "{path}");
        }
    }
}
