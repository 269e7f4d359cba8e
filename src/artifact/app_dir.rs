//! Checking an app directory as `publish` would upload it: `manifest.json` valid against the
//! host's limits, its paths present, `package.json` well-formed JSON and `pnpm-lock.yaml` a
//! pnpm lockfile. Read-only; for `app-executor validate` and (later) `publish`.

use std::path::Path;

use super::manifest::{validate_manifest, Clamped, FieldError, Manifest, ManifestError};
use super::resource::HostLimits;

/// Manifests, package files and lockfiles larger than this are refused unread.
const MAX_TEXT_FILE: u64 = 4 << 20;

/// The outcome of checking an app directory; `problems` empty means valid.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AppDirReport {
    pub dir: String,
    pub valid: bool,
    pub manifest: Option<Manifest>,
    pub clamped: Vec<Clamped>,
    pub problems: Vec<FieldError>,
}

/// Checks `dir`. Never fails: every problem, including unreadable files, is in the report.
pub fn check_app_dir(dir: &Path, host: &HostLimits) -> AppDirReport {
    let mut report = AppDirReport {
        dir: dir.display().to_string(),
        valid: false,
        manifest: None,
        clamped: Vec::new(),
        problems: Vec::new(),
    };
    let problem = |file: &str, reason: String| FieldError {
        field: file.to_owned(),
        value: None,
        reason,
    };
    match read_text(&dir.join("manifest.json")) {
        Err(reason) => report.problems.push(problem("manifest.json", reason)),
        Ok(text) => match validate_manifest(&text, host, Some(dir)) {
            Ok(validated) => {
                report.manifest = Some(validated.manifest);
                report.clamped = validated.clamped;
            }
            Err(ManifestError::Json(e)) => report
                .problems
                .push(problem("manifest.json", format!("not valid JSON: {e}"))),
            Err(ManifestError::Invalid(errors)) => report.problems.extend(errors),
        },
    }
    let package = dir.join("package.json");
    if package.exists() {
        match read_text(&package).and_then(|text| {
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| format!("not valid JSON: {e}"))
        }) {
            Ok(value) if value.is_object() => {}
            Ok(_) => report
                .problems
                .push(problem("package.json", "must be a JSON object".into())),
            Err(reason) => report.problems.push(problem("package.json", reason)),
        }
    }
    let lockfile = dir.join("pnpm-lock.yaml");
    if lockfile.exists() {
        // Not a YAML parser: enough to catch a truncated, binary or misnamed file.
        let looks_right = read_text(&lockfile).and_then(|text| {
            text.lines()
                .any(|l| l.starts_with("lockfileVersion:"))
                .then_some(())
                .ok_or_else(|| "not a pnpm lockfile (no lockfileVersion line); regenerate it with `pnpm install --lockfile-only`".to_owned())
        });
        if let Err(reason) = looks_right {
            report.problems.push(problem("pnpm-lock.yaml", reason));
        }
    }
    report.valid = report.problems.is_empty();
    report
}

fn read_text(path: &Path) -> Result<String, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("must be a regular file (not a directory or a symlink)".to_owned());
    }
    if meta.len() > MAX_TEXT_FILE {
        return Err(format!("larger than {MAX_TEXT_FILE} bytes"));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))
}
