//! `app-executor status [--json] [--watch]`: the fleet at a glance from the shared database —
//! executors, the queue by company, runs in flight, the last hour's failures. `--watch`
//! redraws it in place every `--interval` on a terminal until Ctrl-C.

use std::fmt::Write as _;
use std::time::Duration;

use crate::app;
use crate::config::Config;
use crate::db::status::Snapshot;

pub(super) async fn run(
    config: &Config,
    json: bool,
    watch: bool,
    interval: Duration,
) -> anyhow::Result<()> {
    let pool = app::status_pool(config)?;
    if !watch {
        let snapshot = crate::db::status::snapshot(&pool).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&snapshot)?);
        } else {
            print!("{}", render(&snapshot));
        }
        return Ok(());
    }
    let interrupt = crate::shutdown::on_signals()?;
    loop {
        let text = match crate::db::status::snapshot(&pool).await {
            Ok(snapshot) if json => format!("{}\n", serde_json::to_string(&snapshot)?),
            Ok(snapshot) => format!("\x1b[H\x1b[2J{}", render(&snapshot)),
            Err(e) => format!("\x1b[H\x1b[2Jstatus: {e}\n"),
        };
        print!("{text}");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = interrupt.cancelled() => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

fn seconds(s: f64) -> String {
    humantime::format_duration(Duration::from_secs(s.max(0.0).round() as u64)).to_string()
}

/// The snapshot as text for a terminal.
pub(super) fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "app-executor status at {}",
        s.at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    let _ = writeln!(out, "\nexecutors ({}):", s.executors.len());
    for e in &s.executors {
        let _ = writeln!(
            out,
            "  {:<32} {:<9} {}/{} running  heartbeat {} ago  v{}",
            e.id,
            e.state,
            e.running,
            e.capacity,
            seconds(e.heartbeat_age_s),
            e.version
        );
    }
    let pending: i64 = s.queue.iter().map(|q| q.pending).sum();
    let _ = writeln!(out, "\nqueue: {pending} pending");
    for q in &s.queue {
        let _ = writeln!(
            out,
            "  company {}  {} pending  oldest waiting {}",
            q.company_id,
            q.pending,
            seconds(q.oldest_wait_s)
        );
    }
    let _ = writeln!(out, "\nrunning ({}):", s.running.len());
    for r in &s.running {
        let _ = writeln!(
            out,
            "  run {}  app {}  {}  attempt {}  for {}  on {}",
            r.run_id,
            r.app_id,
            r.run_type,
            r.attempt,
            seconds(r.age_s),
            r.executor_id.as_deref().unwrap_or("-")
        );
    }
    let failed: i64 = s.failures_last_hour.iter().map(|f| f.count).sum();
    let _ = writeln!(out, "\nfailures in the last hour: {failed}");
    for f in &s.failures_last_hour {
        let _ = writeln!(
            out,
            "  {:>5}  {} {}",
            f.count,
            f.status,
            f.error_kind.as_deref().unwrap_or("-")
        );
    }
    out
}
