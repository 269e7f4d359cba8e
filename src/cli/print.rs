//! The human-readable reports of `validate`, `migrate` and `check`, and an error with its
//! causes on one line.

use crate::app;

pub(super) fn print_validate_report(report: &crate::artifact::AppDirReport) {
    if let Some(m) = &report.manifest {
        let limits = &m.limits;
        println!(
            "{} {} ({}): timeout {}, memory {}, cpu {}",
            m.name,
            m.version,
            format!("{:?}", m.app_type).to_lowercase(),
            humantime::format_duration(limits.timeout),
            crate::units::format_bytes(limits.memory_bytes),
            limits.cpu
        );
    }
    for clamped in &report.clamped {
        println!("note: {clamped}");
    }
    for problem in &report.problems {
        println!("problem: {problem}");
    }
    if report.valid {
        println!("{}: valid", report.dir);
    }
}

/// The error and its causes, each once: many of our errors already include their cause in
/// their own message, so a cause whose text is already there is not repeated.
pub(super) fn error_chain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if !text.contains(&message) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&message);
        }
    }
    text
}

pub(super) fn print_migrate_report(report: &crate::db::migration::MigrateReport) {
    let verb = if report.dry_run {
        "would apply"
    } else {
        "applied"
    };
    if report.bootstrap_applied {
        println!(
            "{verb} the Supabase compatibility bootstrap (plain PostgreSQL: no storage schema)"
        );
    }
    for file in &report.applied {
        println!("{verb} {file}");
    }
    for file in &report.changed_since_applied {
        println!("warning: {file} changed since it was applied; applied migrations are never re-run, add a new file instead");
    }
    if report.applied.is_empty() {
        println!(
            "database is up to date ({} migrations applied)",
            report.already_applied.len()
        );
    }
}

pub(super) fn print_check_report(report: &app::CheckReport) {
    for check in &report.checks {
        let mark = if check.ok { "ok  " } else { "FAIL" };
        println!("{mark} {:<10} {}", check.name, check.detail);
    }
    println!("\neffective configuration (secrets redacted):");
    println!(
        "{}",
        serde_json::to_string_pretty(&report.config).unwrap_or_default()
    );
}
