//! Where a run's logs live in the `app-logs` bucket, and the truncation marker. Pure: names
//! and parsing only, no I/O.
//!
//! ```text
//! app_{appId}/runs/{runId}/                                 logs_path (a build's: builds/{buildId}/)
//!   stdout.log, stderr.log                                  compacted, of the attempt that finished
//!   attempt-{n}-{claimed}/stdout.{seq:06}.log               live chunks of one claim, seq from 1
//!   attempt-{n}-{claimed}/stderr.{seq:06}.log
//!   output/{relative path}                                  files the app wrote to /output
//! ```
//!
//! `{claimed}` is the claim's `started_at` in UTC (`20250801T120000.123456Z`). It makes the
//! folder unique per claim: a run released at shutdown gives its attempt number back, so the
//! next claim reuses `n`, and must not write over (or mix with) the interrupted claim's chunks.
//! Folders order by `n`, then by `{claimed}` (fixed width, so text order is time order).
//! Chunks of one stream, concatenated in `seq` order, are byte for byte the compacted object.

use chrono::{DateTime, NaiveDateTime, Utc};
use uuid::Uuid;

use super::LogStream;

const CLAIMED_FORMAT: &str = "%Y%m%dT%H%M%S%.6fZ";

/// Room kept under the per-stream cap for the truncation marker, so that kept bytes plus the
/// marker never exceed the cap (and so the bucket's object size limit).
pub const MARKER_RESERVE: u64 = 256;

/// `app_{appId}/runs/{runId}/`: the run's prefix (`app_runs.logs_path`).
pub fn run_prefix(app_id: Uuid, run_id: Uuid) -> String {
    format!("app_{app_id}/runs/{run_id}/")
}

/// `app_{appId}/builds/{buildId}/`: a build's log prefix (`app_builds.build_log_path`); the
/// build's streams and chunks are laid out below it as a run's are.
pub fn build_prefix(app_id: Uuid, build_id: Uuid) -> String {
    format!("app_{app_id}/builds/{build_id}/")
}

/// The compacted log of one stream: `app_{appId}/runs/{runId}/stdout.log`.
pub fn compacted_key(app_id: Uuid, run_id: Uuid, stream: LogStream) -> String {
    format!("{}{}.log", run_prefix(app_id, run_id), stream.as_str())
}

/// `app_{appId}/runs/{runId}/output/`: where `/output` files go (`app_runs.output_path`).
pub fn output_prefix(app_id: Uuid, run_id: Uuid) -> String {
    format!("{}output/", run_prefix(app_id, run_id))
}

/// The folder name of one claim's chunks: `attempt-{n}-{claimed}`.
pub fn attempt_folder(attempt: i32, claimed_at: DateTime<Utc>) -> String {
    format!("attempt-{attempt}-{}", claimed_at.format(CLAIMED_FORMAT))
}

/// Parses a folder name made by [`attempt_folder`] into its sort key `(n, claimed)`.
pub fn parse_attempt_folder(name: &str) -> Option<(i32, DateTime<Utc>)> {
    let rest = name.strip_prefix("attempt-")?;
    let (n, claimed) = rest.split_once('-')?;
    let n = n.parse().ok()?;
    let claimed = NaiveDateTime::parse_from_str(claimed, CLAIMED_FORMAT).ok()?;
    Some((n, claimed.and_utc()))
}

/// A chunk's name inside its folder: `stdout.000042.log`.
pub fn chunk_name(stream: LogStream, seq: u32) -> String {
    format!("{}.{seq:06}.log", stream.as_str())
}

/// Parses a name made by [`chunk_name`]. Numeric, so order stays right past six digits.
pub fn parse_chunk_name(name: &str) -> Option<(LogStream, u32)> {
    let rest = name.strip_suffix(".log")?;
    let (stream, seq) = rest.split_once('.')?;
    let stream = LogStream::parse(stream)?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stream, seq.parse().ok()?))
}

/// The line appended to a stream that lost bytes: over the cap, or to a failing spool disk.
/// Starts on a line of its own; at most [`MARKER_RESERVE`] bytes.
pub fn marker(
    stream: LogStream,
    dropped: u64,
    cap: u64,
    spool_error: Option<&str>,
    after_newline: bool,
) -> Vec<u8> {
    let what = match spool_error {
        None => format!(
            "[app-executor: {dropped} bytes of {} dropped over the {} cap]",
            stream.as_str(),
            crate::units::format_bytes(cap)
        ),
        Some(error) => {
            // Bounded in bytes, so the whole line fits the reserve.
            let mut short = String::new();
            for c in error.chars().filter(|c| *c != '\n' && *c != ']') {
                if short.len() + c.len_utf8() > 120 {
                    break;
                }
                short.push(c);
            }
            let error = short;
            format!(
                "[app-executor: {dropped} bytes of {} lost: the log spool could not be written ({error})]",
                stream.as_str()
            )
        }
    };
    let mut line = Vec::with_capacity(what.len() + 2);
    if !after_newline {
        line.push(b'\n');
    }
    line.extend_from_slice(what.as_bytes());
    line.push(b'\n');
    line.truncate(MARKER_RESERVE as usize);
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn ids() -> (Uuid, Uuid) {
        (
            "6f1c2a8e-0d5b-4c83-9e0b-0a4c1f9e2b7d".parse().unwrap(),
            "0b6c1a1e-2f3d-4e5f-8a9b-0c1d2e3f4a5b".parse().unwrap(),
        )
    }

    #[test]
    fn keys_follow_the_documented_layout_and_are_valid_storage_keys() {
        let (app, run) = ids();
        let claimed = Utc.with_ymd_and_hms(2025, 8, 1, 12, 0, 3).unwrap()
            + chrono::Duration::microseconds(123_456);
        let folder = attempt_folder(2, claimed);
        assert_eq!(folder, "attempt-2-20250801T120003.123456Z");
        let chunk = format!(
            "{}{folder}/{}",
            run_prefix(app, run),
            chunk_name(LogStream::Stderr, 7)
        );
        assert_eq!(
            chunk,
            format!("app_{app}/runs/{run}/attempt-2-20250801T120003.123456Z/stderr.000007.log")
        );
        crate::storage::validate_key(&chunk).unwrap();
        assert_eq!(
            compacted_key(app, run, LogStream::Stdout),
            format!("app_{app}/runs/{run}/stdout.log")
        );
        assert_eq!(
            output_prefix(app, run),
            format!("app_{app}/runs/{run}/output/")
        );
    }

    #[test]
    fn folder_and_chunk_names_parse_back_and_strangers_do_not() {
        let claimed = Utc.with_ymd_and_hms(2025, 8, 1, 12, 0, 3).unwrap();
        assert_eq!(
            parse_attempt_folder(&attempt_folder(11, claimed)),
            Some((11, claimed))
        );
        for stranger in [
            "output",
            "attempt-x-20250801T120003.000000Z",
            "attempt-1",
            "stdout.log",
        ] {
            assert_eq!(parse_attempt_folder(stranger), None, "{stranger}");
        }
        assert_eq!(
            parse_chunk_name("stdout.1000000.log"),
            Some((LogStream::Stdout, 1_000_000))
        );
        assert_eq!(
            parse_chunk_name("stderr.000001.log"),
            Some((LogStream::Stderr, 1))
        );
        for stranger in [
            "stdout.log",
            "stdin.000001.log",
            "stdout.+1.log",
            "stdout.000001.txt",
        ] {
            assert_eq!(parse_chunk_name(stranger), None, "{stranger}");
        }
    }

    #[test]
    fn the_marker_names_the_stream_the_count_and_the_cap_on_a_line_of_its_own() {
        let line = marker(LogStream::Stdout, 123_456_789, 50 << 20, None, false);
        assert_eq!(
            line,
            b"\n[app-executor: 123456789 bytes of stdout dropped over the 50MiB cap]\n"
        );
        let line = marker(LogStream::Stderr, u64::MAX, u64::MAX, None, true);
        assert!(line.len() as u64 <= MARKER_RESERVE && line.starts_with(b"[app-executor"));
        let long_error = "x".repeat(10_000);
        let line = marker(LogStream::Stderr, 5, 1, Some(&long_error), true);
        assert!(line.len() as u64 <= MARKER_RESERVE, "{}", line.len());
        assert!(line.ends_with(b")]\n"));
    }
}
