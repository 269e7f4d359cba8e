//! The subcommands with logic of their own: `enqueue` and `build` (and following the run or
//! build with `--wait`), `retention`, `cron next` and `validate`.

use super::print::print_validate_report;
use super::ExitWith;

use crate::app;
use crate::config::Config;

/// What `enqueue` was asked to create, as typed on the command line.
pub(super) struct NewRun<'a> {
    pub(super) app: &'a str,
    pub(super) company: Option<&'a str>,
    pub(super) input: Option<&'a str>,
    pub(super) run_type: &'a str,
}

/// `enqueue`: create a run; with `--wait`, follow it to the end. Exit status with `--wait`:
/// 0 success, 1 failed, 124 timeout, 130 cancelled.
pub(super) async fn enqueue(
    config: &Config,
    new: NewRun<'_>,
    wait: bool,
    json: bool,
) -> anyhow::Result<()> {
    let input: serde_json::Value = match new.input {
        None => serde_json::json!({}),
        Some(text) => serde_json::from_str(text).map_err(|e| {
            anyhow::anyhow!(
                "--input is not JSON ({e}); pass an object such as '{{\"name\": \"x\"}}'"
            )
        })?,
    };
    let (pool, run) = app::enqueue(config, new.app, new.company, new.run_type, &input).await?;
    if !wait {
        if json {
            println!("{}", serde_json::json!({ "run_id": run }));
        } else {
            println!("{run}");
        }
        return Ok(());
    }
    if !json {
        eprintln!("enqueued run {run}; waiting for it (Ctrl-C stops waiting, the run goes on)");
    }
    let state = follow("run", run, json, || async {
        let state = crate::db::runs::run_state(&pool, run).await?;
        Ok(state.map(|s| {
            let progress = format!("{} (attempt {})", s.status, s.attempt);
            (progress, s.is_terminal().then_some(s))
        }))
    })
    .await?;
    report_end(
        "run",
        run,
        json,
        &state,
        &state.status,
        state.error_kind.as_deref(),
        state.error_message.as_deref(),
    )
}

/// What `build` (or `publish --build`) was asked to create, as typed on the command line.
pub(super) struct NewBuild<'a> {
    pub(super) app: &'a str,
    pub(super) version: Option<&'a str>,
    pub(super) config: Option<&'a str>,
}

/// `build`: create a pending build; with `--wait`, follow it to the end. Exit status with
/// `--wait`: 0 success, 1 failed, 130 cancelled.
pub(super) async fn build(
    config: &Config,
    new: NewBuild<'_>,
    wait: bool,
    json: bool,
) -> anyhow::Result<()> {
    let (pool, build, version) =
        app::enqueue_build(config, new.app, new.version, new.config).await?;
    if !wait {
        if json {
            println!(
                "{}",
                serde_json::json!({ "build_id": build, "version": version })
            );
        } else {
            println!("{build}");
        }
        return Ok(());
    }
    if !json {
        eprintln!(
            "enqueued build {build} of version {version}; waiting for it (Ctrl-C stops waiting, the build goes on; `app-executor logs {build}` prints its log)"
        );
    }
    let state = follow("build", build, json, || async {
        let state = crate::db::builds::build_state(&pool, build).await?;
        Ok(state.map(|s| {
            let progress = format!("{} (attempt {})", s.status, s.attempt);
            (progress, s.is_terminal().then_some(s))
        }))
    })
    .await?;
    if !json && state.status == "success" {
        if let (Some(path), Some(digest), Some(size)) = (
            &state.build_path,
            &state.artifact_digest,
            state.archive_size,
        ) {
            println!("archive: {path} ({size} bytes, {digest})");
        }
        if state.is_current {
            println!(
                "current: runs of version {} start from this build",
                state.version
            );
        }
    }
    report_end(
        "build",
        build,
        json,
        &state,
        &state.status,
        state.error_kind.as_deref(),
        state.error_message.as_deref(),
    )
}

/// Polls `poll` every 250 ms, printing each new progress line on stderr (unless `json`),
/// until it yields the final state. `poll` gives `None` when the row is gone.
async fn follow<T, F, Fut>(noun: &str, id: uuid::Uuid, json: bool, poll: F) -> anyhow::Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<(String, Option<T>)>>>,
{
    let mut last = String::new();
    loop {
        let (progress, done) = poll()
            .await?
            .ok_or_else(|| anyhow::anyhow!("{noun} {id} disappeared"))?;
        if progress != last && !json {
            eprintln!("{noun} {id}: {progress}");
            last = progress;
        }
        if let Some(state) = done {
            return Ok(state);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Prints a followed job's end (the state as JSON, or its error and status) and turns its
/// status into the exit status: 0 success, 124 timeout, 130 cancelled, 1 otherwise.
fn report_end(
    noun: &str,
    id: uuid::Uuid,
    json: bool,
    state: &impl serde::Serialize,
    status: &str,
    error_kind: Option<&str>,
    error_message: Option<&str>,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(state)?);
    } else {
        if let Some(kind) = error_kind {
            println!("error_kind: {kind}");
        }
        if let Some(message) = error_message {
            println!("error_message: {message}");
        }
        println!("status: {status}");
    }
    let code = match status {
        "success" => return Ok(()),
        "timeout" => 124,
        "cancelled" => 130,
        _ => 1,
    };
    Err(ExitWith {
        code,
        message: format!("{noun} {id} ended {status}"),
    }
    .into())
}

/// `retention`: one pass now, or with `--dry-run` the list of what a pass would delete.
pub(super) async fn retention(config: &Config, dry_run: bool, json: bool) -> anyhow::Result<()> {
    let Some(report) = app::retention_pass(config, dry_run).await? else {
        anyhow::bail!(
            "another process (a daemon's retention pass) holds the retention lock; try again later"
        );
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for item in &report.planned {
        println!(
            "would delete {} {} ({} objects)",
            item.kind,
            item.id,
            item.objects.len()
        );
        for key in &item.objects {
            println!("  {key}");
        }
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    let (logs, outputs, versions) = (&report.logs, &report.outputs, &report.versions);
    println!(
        "{verb}: logs of {} runs ({} objects), outputs of {} runs ({} objects), {} builds, {} versions ({} objects)",
        logs.runs, logs.objects, outputs.runs, outputs.objects, report.builds, versions.versions, versions.objects
    );
    if report.failures > 0 {
        anyhow::bail!(
            "{} runs or versions could not be deleted (storage failed; see the log); they are retried next pass",
            report.failures
        );
    }
    Ok(())
}

/// `cron next`: the schedule's upcoming nominal fire times, as the scheduler would fire them.
pub(super) fn cron_next(
    expression: &str,
    tz: &str,
    after: Option<&str>,
    count: usize,
    json: bool,
) -> anyhow::Result<()> {
    let schedule = crate::cron::Schedule::parse(expression, tz)?;
    let mut at = match after {
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map_err(|e| {
                anyhow::anyhow!(
                    "--after {text:?} is not an RFC 3339 instant ({e}); use e.g. 2026-03-08T00:00:00Z"
                )
            })?
            .with_timezone(&chrono::Utc),
        None => chrono::Utc::now(),
    };
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        match schedule.next_after(at) {
            Some(next) => {
                times.push(next);
                at = next;
            }
            None => break,
        }
    }
    if times.is_empty() && count > 0 {
        anyhow::bail!(
            "{expression:?} never fires after {}; check the day-of-month and month fields",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    let zone = schedule.zone();
    if json {
        let items: Vec<_> = times
            .iter()
            .map(|t| {
                serde_json::json!({
                    "utc": t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "local": t.with_timezone(&zone).to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        for t in &times {
            let local = t.with_timezone(&zone);
            println!(
                "{}  {}",
                local.format("%Y-%m-%d %H:%M:%S %Z (%:z)"),
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
        }
    }
    Ok(())
}

/// `validate`: the app directory checked against this host's `[limits]`.
pub(super) fn validate(dir: &std::path::Path, config: &Config, json: bool) -> anyhow::Result<()> {
    let report = crate::artifact::check_app_dir(dir, &config.limits.host);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_validate_report(&report);
    }
    if report.valid {
        Ok(())
    } else {
        anyhow::bail!(
            "{} is not a valid app: {} problem(s)",
            dir.display(),
            report.problems.len()
        )
    }
}
