//! Reading back `/output`, the directory an app writes, with the care of an archive reader
//! (security-reliability §2.5): entries are listed without following links; only regular files
//! are taken; symlinks, FIFOs, sockets and devices are skipped with a recorded reason and never
//! opened; counts and sizes are capped; the few files read here (`result.json`,
//! `metrics.json`) are opened with `O_NOFOLLOW | O_NONBLOCK` and checked to be the file listed.
//!
//! Call it only once the container has stopped: nothing may write the directory meanwhile.
//! Blocking; [`collect`] runs it on the blocking pool.

use std::fs::{self, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{
    mime, Collected, OutputError, OutputFile, OutputLimits, OutputProblem, DAEMON_METRICS,
};

/// Entries examined at most, whatever the caps: bounds the time and memory of a walk over a
/// directory the app filled with millions of names.
const SCAN_LIMIT: usize = 100_000;
/// Deepest directory nesting followed (a copy of the output made for [`collect`] need not go
/// deeper: the walk reports the directory at this depth as `too_deep`).
pub const MAX_DEPTH: usize = 32;
/// Problems listed one by one; the rest are only counted.
const MAX_PROBLEMS: usize = 50;
/// `metrics.json` entries recorded at most, and the longest metric name.
const MAX_METRICS: usize = 1000;
const MAX_METRIC_NAME: usize = 200;

const RESULT_FILE: &str = "result.json";
const METRICS_FILE: &str = "metrics.json";

/// A regular file found by the walk, before the caps.
struct Candidate {
    relative: String,
    size: u64,
    dev: u64,
    ino: u64,
}

/// Reads `output_dir` (see the module doc) on the blocking pool. A missing directory is an
/// empty output.
pub async fn collect(output_dir: &Path, limits: &OutputLimits) -> Result<Collected, OutputError> {
    let (dir, limits) = (output_dir.to_owned(), limits.clone());
    tokio::task::spawn_blocking(move || collect_blocking(&dir, &limits))
        .await
        .map_err(|e| OutputError::Read {
            path: output_dir.to_owned(),
            source: std::io::Error::other(e),
        })?
}

/// [`collect`] for blocking callers.
pub fn collect_blocking(
    output_dir: &Path,
    limits: &OutputLimits,
) -> Result<Collected, OutputError> {
    let mut collected = Collected {
        root: output_dir.to_owned(),
        ..Collected::default()
    };
    let read_error = |path: &Path, source| OutputError::Read {
        path: path.to_owned(),
        source,
    };
    match fs::symlink_metadata(output_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(collected),
        Err(e) => return Err(read_error(output_dir, e)),
        Ok(meta) if !meta.is_dir() => {
            return Err(read_error(
                output_dir,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a directory (or a symlink)",
                ),
            ))
        }
        Ok(_) => {}
    }
    let mut candidates = walk(output_dir, &mut collected)?;
    candidates.sort_by(|a, b| a.relative.cmp(&b.relative));

    let mut beyond_count = Vec::new();
    for candidate in candidates {
        match candidate.relative.as_str() {
            RESULT_FILE => read_result(output_dir, &candidate, limits, &mut collected),
            METRICS_FILE => read_metrics(output_dir, &candidate, limits, &mut collected),
            _ => take_file(candidate, limits, &mut collected, &mut beyond_count),
        }
    }
    if let Some(first) = beyond_count.first() {
        let problem = OutputProblem {
            path: first.clone(),
            reason: "too_many_files",
            message: format!(
                "{} files beyond outputs.max_files = {} were not collected (the first by name: {first})",
                beyond_count.len(),
                limits.max_files
            ),
        };
        collected.add_problem(problem);
    }
    Ok(collected)
}

/// Lists regular files under `root` (depth-first, links never followed), recording every other
/// kind of entry as a problem.
fn walk(root: &Path, collected: &mut Collected) -> Result<Vec<Candidate>, OutputError> {
    let mut candidates = Vec::new();
    let mut pending = vec![(String::new(), 0usize)];
    let mut scanned = 0usize;
    while let Some((dir, depth)) = pending.pop() {
        let full = root.join(&dir);
        let entries = fs::read_dir(&full).map_err(|source| OutputError::Read {
            path: full.clone(),
            source,
        })?;
        for entry in entries {
            scanned += 1;
            if scanned > SCAN_LIMIT {
                collected.add_problem(OutputProblem {
                    path: dir.clone(),
                    reason: "too_many_entries",
                    message: format!(
                        "the output directory holds more than {SCAN_LIMIT} entries; the rest were not examined"
                    ),
                });
                return Ok(candidates);
            }
            let entry = entry.map_err(|source| OutputError::Read {
                path: full.clone(),
                source,
            })?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                collected.add_problem(OutputProblem {
                    path: format!("{dir}{}", entry.file_name().to_string_lossy()),
                    reason: "unstorable_name",
                    message: "the name is not valid UTF-8; it was not collected".into(),
                });
                continue;
            };
            let relative = format!("{dir}{name}");
            // DirEntry::metadata does not follow symlinks.
            let meta = entry.metadata().map_err(|source| OutputError::Read {
                path: entry.path(),
                source,
            })?;
            let kind = meta.file_type();
            if kind.is_dir() {
                if depth + 1 >= MAX_DEPTH {
                    collected.add_problem(OutputProblem {
                        message: format!(
                            "nested deeper than {MAX_DEPTH} directories; not collected"
                        ),
                        path: relative,
                        reason: "too_deep",
                    });
                } else {
                    pending.push((format!("{relative}/"), depth + 1));
                }
            } else if kind.is_file() {
                candidates.push(Candidate {
                    relative,
                    size: meta.len(),
                    dev: meta.dev(),
                    ino: meta.ino(),
                });
            } else {
                let kind = if kind.is_symlink() {
                    "symlink"
                } else if kind.is_fifo() {
                    "fifo"
                } else if kind.is_socket() {
                    "socket"
                } else {
                    "device"
                };
                collected.add_problem(not_regular(relative, kind));
            }
        }
    }
    Ok(candidates)
}

/// The problem recorded for an entry that is not a regular file; `kind` is `symlink`, `fifo`,
/// `socket` or `device`.
pub fn not_regular(relative: String, kind: &'static str) -> OutputProblem {
    let what = match kind {
        "symlink" => "a symbolic link; links are never followed",
        "fifo" => "a named pipe (FIFO); it was not opened",
        "socket" => "a socket",
        _ => "a device node",
    };
    OutputProblem {
        message: format!("{relative} is {what}; only regular files are collected"),
        path: relative,
        reason: kind,
    }
}

/// Applies the per-file, count and total caps, in name order.
fn take_file(
    candidate: Candidate,
    limits: &OutputLimits,
    collected: &mut Collected,
    beyond_count: &mut Vec<String>,
) {
    let Candidate {
        relative,
        size,
        dev,
        ino,
    } = candidate;
    if let Err(e) = crate::storage::validate_key(&relative) {
        collected.add_problem(OutputProblem {
            message: format!("{relative} cannot be stored under that name ({e}); rename it"),
            path: relative,
            reason: "unstorable_name",
        });
        return;
    }
    if size > limits.max_file_bytes {
        collected.add_problem(OutputProblem {
            message: format!(
                "{relative} is {size} bytes, over outputs.max_file_bytes = {}; not collected",
                limits.max_file_bytes
            ),
            path: relative,
            reason: "too_large",
        });
        return;
    }
    if collected.files.len() >= limits.max_files {
        beyond_count.push(relative);
        return;
    }
    if collected.total_bytes + size > limits.max_bytes {
        collected.add_problem(OutputProblem {
            message: format!(
                "{relative} ({size} bytes) would take the outputs over outputs.max_bytes = {}; not collected",
                limits.max_bytes
            ),
            path: relative,
            reason: "over_total",
        });
        return;
    }
    collected.total_bytes += size;
    collected.files.push(OutputFile {
        mime_type: mime::for_output(&relative),
        relative,
        size,
        dev,
        ino,
    });
}

/// Reads a small file the walk listed: never through a link, never blocking on a FIFO, and
/// only if it is still the same regular file and at most `max` bytes.
fn read_small(
    root: &Path,
    candidate: &Candidate,
    max: u64,
    key: &str,
) -> Result<Vec<u8>, OutputProblem> {
    let problem = |reason, message: String| OutputProblem {
        path: candidate.relative.clone(),
        reason,
        message,
    };
    if candidate.size > max {
        return Err(problem(
            "too_large",
            format!(
                "{} is {} bytes, over {key} = {max}; it was not read",
                candidate.relative, candidate.size
            ),
        ));
    }
    let unreadable = |e: std::io::Error| {
        problem(
            "unreadable",
            format!("{} could not be read: {e}", candidate.relative),
        )
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(root.join(&candidate.relative))
        .map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() || meta.dev() != candidate.dev || meta.ino() != candidate.ino {
        return Err(problem(
            "changed",
            format!("{} changed while the outputs were read", candidate.relative),
        ));
    }
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > max {
        return Err(problem(
            "too_large",
            format!(
                "{} is over {key} = {max}; it was not read",
                candidate.relative
            ),
        ));
    }
    Ok(bytes)
}

/// A small JSON file of the app (`result.json`, `metrics.json`): capped, then parsed.
fn read_json(
    root: &Path,
    candidate: &Candidate,
    limits: &OutputLimits,
    name: &str,
) -> Result<Value, OutputProblem> {
    let bytes = read_small(
        root,
        candidate,
        limits.max_result_bytes,
        "outputs.max_result_bytes",
    )?;
    serde_json::from_slice::<Value>(&bytes).map_err(|e| OutputProblem {
        path: name.into(),
        reason: "invalid_json",
        message: format!("{name} is not valid JSON: {e}"),
    })
}

fn read_result(
    root: &Path,
    candidate: &Candidate,
    limits: &OutputLimits,
    collected: &mut Collected,
) {
    match read_json(root, candidate, limits, RESULT_FILE) {
        Ok(value) => collected.result = Some(value),
        Err(problem) => collected.add_problem(problem),
    }
}

fn read_metrics(
    root: &Path,
    candidate: &Candidate,
    limits: &OutputLimits,
    collected: &mut Collected,
) {
    let object = match read_json(root, candidate, limits, METRICS_FILE) {
        Ok(Value::Object(object)) => object,
        Ok(other) => {
            collected.add_problem(OutputProblem {
                path: METRICS_FILE.into(),
                reason: "invalid_metrics",
                message: format!(
                    "{METRICS_FILE} must be an object of {{\"name\": number}}, not {}",
                    json_kind(&other)
                ),
            });
            return;
        }
        Err(problem) => {
            collected.add_problem(problem);
            return;
        }
    };
    for (name, value) in object {
        let problem = |reason, message| OutputProblem {
            path: METRICS_FILE.into(),
            reason,
            message,
        };
        let shown: String = name.chars().take(60).collect();
        let refused = if collected.metrics.len() >= MAX_METRICS {
            Some(problem(
                "too_many_metrics",
                format!("{METRICS_FILE}: more than {MAX_METRICS} metrics; {shown:?} and later ones were not recorded"),
            ))
        } else if name.is_empty() || name.len() > MAX_METRIC_NAME {
            Some(problem(
                "invalid_metric_name",
                format!("{METRICS_FILE}: metric names must be 1-{MAX_METRIC_NAME} bytes; {shown:?} was not recorded"),
            ))
        } else if DAEMON_METRICS.contains(&name.as_str()) {
            Some(problem(
                "reserved_metric_name",
                format!(
                    "{METRICS_FILE}: {name:?} is reserved for the executor's own metric; rename it"
                ),
            ))
        } else {
            None
        };
        if let Some(refused) = refused {
            let stop = refused.reason == "too_many_metrics";
            collected.add_problem(refused);
            if stop {
                break;
            }
            continue;
        }
        match value {
            Value::Number(number) => collected.metrics.push((name, number)),
            other => collected.add_problem(problem(
                "not_a_number",
                format!(
                    "{METRICS_FILE}: {name:?} is {}, not a number; it was not recorded",
                    json_kind(&other)
                ),
            )),
        }
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Collected {
    /// Records a problem; past the first [`MAX_PROBLEMS`] only counts it.
    pub fn add_problem(&mut self, problem: OutputProblem) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(problem);
        } else {
            self.problems_omitted += 1;
        }
    }
}

/// The path of a collected file on disk.
pub(super) fn file_path(root: &Path, file: &OutputFile) -> PathBuf {
    root.join(&file.relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> OutputLimits {
        OutputLimits::default()
    }

    fn reasons(collected: &Collected) -> Vec<(&str, &str)> {
        collected
            .problems
            .iter()
            .map(|p| (p.path.as_str(), p.reason))
            .collect()
    }

    #[test]
    fn a_missing_directory_is_an_empty_output() {
        let dir = tempfile::tempdir().unwrap();
        let collected = collect_blocking(&dir.path().join("nope"), &limits()).unwrap();
        assert!(collected.files.is_empty() && collected.problems.is_empty());
        assert_eq!(collected.result, None);
    }

    #[test]
    fn result_metrics_and_files_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("result.json"), br#"{"ok": true}"#).unwrap();
        fs::write(
            root.join("metrics.json"),
            br#"{"rows": 12, "ratio": 0.5, "label": "x", "duration_ms": 3}"#,
        )
        .unwrap();
        fs::create_dir(root.join("sub")).unwrap();
        fs::write(root.join("sub/result.json"), b"not the result").unwrap();
        fs::write(root.join("report.csv"), b"a,b\n").unwrap();
        let collected = collect_blocking(root, &limits()).unwrap();
        assert_eq!(collected.result, Some(serde_json::json!({"ok": true})));
        let metrics: Vec<String> = collected
            .metrics
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(metrics, vec!["ratio=0.5", "rows=12"]);
        assert_eq!(
            reasons(&collected),
            vec![
                ("metrics.json", "reserved_metric_name"),
                ("metrics.json", "not_a_number")
            ]
        );
        assert!(collected.problems[1]
            .message
            .contains("\"label\" is a string"));
        let files: Vec<(&str, &str)> = collected
            .files
            .iter()
            .map(|f| (f.relative.as_str(), f.mime_type))
            .collect();
        assert_eq!(
            files,
            vec![
                ("report.csv", "text/csv"),
                ("sub/result.json", "application/json")
            ]
        );
    }

    #[test]
    fn caps_on_size_count_and_total_are_applied_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for i in 0..6 {
            fs::write(root.join(format!("f{i}.txt")), vec![b'x'; 100]).unwrap();
        }
        fs::write(root.join("big.bin"), vec![b'x'; 1000]).unwrap();
        let few = OutputLimits {
            max_files: 4,
            max_bytes: 10_000,
            max_file_bytes: 500,
            max_result_bytes: 10,
        };
        let collected = collect_blocking(root, &few).unwrap();
        let files: Vec<&str> = collected
            .files
            .iter()
            .map(|f| f.relative.as_str())
            .collect();
        assert_eq!(files, vec!["f0.txt", "f1.txt", "f2.txt", "f3.txt"]);
        assert_eq!(
            reasons(&collected),
            vec![("big.bin", "too_large"), ("f4.txt", "too_many_files")]
        );
        assert!(
            collected.problems[1]
                .message
                .contains("2 files beyond outputs.max_files = 4"),
            "{}",
            collected.problems[1].message
        );

        let small = OutputLimits {
            max_bytes: 250,
            ..few
        };
        let collected = collect_blocking(root, &small).unwrap();
        let files: Vec<&str> = collected
            .files
            .iter()
            .map(|f| f.relative.as_str())
            .collect();
        assert_eq!(files, vec!["f0.txt", "f1.txt"]);
        assert_eq!(collected.total_bytes, 200);
        let over: Vec<&str> = collected
            .problems
            .iter()
            .filter(|p| p.reason == "over_total")
            .map(|p| p.path.as_str())
            .collect();
        assert_eq!(over, vec!["f2.txt", "f3.txt", "f4.txt", "f5.txt"]);
    }

    #[test]
    fn names_storage_cannot_hold_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("caf\u{e9}#1.txt"), b"x").unwrap();
        let collected = collect_blocking(dir.path(), &limits()).unwrap();
        assert!(collected.files.is_empty());
        assert_eq!(
            reasons(&collected),
            vec![("caf\u{e9}#1.txt", "unstorable_name")]
        );
    }
}
