//! The cron scheduler against real PostgreSQL: several `Scheduler`s with their own pools on one
//! database stand in for daemons; a `ManualClock` drives time, so nothing here waits for the
//! wall clock. Polling the database is only used to wait for work to finish, never to assert
//! timing.

use std::sync::Arc;
use std::time::Duration;

use app_executor::cron::CronSettings;
use app_executor::cron::{Clock, ManualClock, Scheduler};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::harness::daemon::{Daemon, DaemonOptions};
use crate::harness::insert_tenant as tenant;
use crate::harness::TestDb;

fn t0() -> DateTime<Utc> {
    "2026-06-01T00:00:00Z".parse().unwrap()
}

fn minutes(n: i64) -> chrono::Duration {
    chrono::Duration::minutes(n)
}

fn settings(catch_up_cap: usize) -> CronSettings {
    CronSettings {
        enabled: true,
        max_sleep: Duration::from_secs(30),
        catch_up_cap,
        batch_size: 100,
        // These tests fire at the instant; fire ahead has its own tests below.
        fire_ahead: Duration::ZERO,
    }
}

fn scheduler(db: &TestDb, clock: &ManualClock, settings: CronSettings) -> Scheduler {
    let pool = app_executor::db::pool(&db.url, Duration::from_secs(30), 4).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    Scheduler::new(pool, clock, settings, Arc::new(Notify::new()))
}

async fn add_schedule(
    client: &Client,
    (company, app): (Uuid, Uuid),
    expression: &str,
    zone: &str,
    config: Value,
) -> Uuid {
    client
        .query_one(
            "insert into public.app_cron_schedules (app_id, company_id, cron_expression, timezone, config)
             values ($1, $2, $3, $4, $5) returning id",
            &[&app, &company, &expression, &zone, &config],
        )
        .await
        .unwrap()
        .get(0)
}

/// (scheduled_for of every cron run of the schedule, oldest first).
async fn run_times(client: &Client, schedule: Uuid) -> Vec<DateTime<Utc>> {
    client
        .query(
            "select scheduled_for from public.app_runs where schedule_id = $1 order by scheduled_for",
            &[&schedule],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// (outcome, reason) counts of the schedule's ticks, e.g. [("fired", None, 1), ("skipped", Some("downtime"), 9)].
async fn tick_counts(client: &Client, schedule: Uuid) -> Vec<(String, Option<String>, i64)> {
    client
        .query(
            "select outcome, reason, count(*) from public.app_cron_ticks where schedule_id = $1
             group by outcome, reason order by outcome, reason",
            &[&schedule],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn counts(expected: &[(&str, Option<&str>, i64)]) -> Vec<(String, Option<String>, i64)> {
    expected
        .iter()
        .map(|(o, r, n)| (o.to_string(), r.map(str::to_owned), *n))
        .collect()
}

async fn schedule_state(
    client: &Client,
    schedule: Uuid,
) -> (bool, Option<String>, Option<DateTime<Utc>>) {
    let row = client
        .query_one(
            "select is_active, disabled_reason, next_run_at from public.app_cron_schedules where id = $1",
            &[&schedule],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Polls `query` (a count) until it returns 0; panics after 30 s of real time.
async fn until_zero(client: &Client, query: &str, now: DateTime<Utc>) {
    for _ in 0..3000 {
        let n: i64 = client.query_one(query, &[&now]).await.unwrap().get(0);
        if n == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let state: Vec<String> = client
        .query(
            "select id::text, next_run_at::text, is_active from public.app_cron_schedules",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}: {:?} {}",
                r.get::<_, String>(0),
                r.get::<_, Option<String>>(1),
                r.get::<_, bool>(2)
            )
        })
        .collect();
    let locks: Vec<String> = client
        .query("select state || ' ' || coalesce(wait_event_type, '-') || ' ' || left(query, 60) from pg_stat_activity where datname = current_database()", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    panic!("the schedulers did not finish at {now}: {query}\n{state:#?}\n{locks:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_schedulers_fire_every_second_exactly_once_even_when_one_is_killed() {
    three_schedulers_fire_every_second(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_schedulers_firing_ahead_fire_every_second_exactly_once_even_when_one_is_killed() {
    three_schedulers_fire_every_second(2).await;
}

/// Three schedulers on per-second schedules, time moved a second at a time for 40 s, one of
/// them aborted at 15 s: every tick has exactly one run. With a lead, the ticks up to `lead`
/// seconds past the last instant have fired too.
async fn three_schedulers_fire_every_second(lead: i64) {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("app_executor=trace")
        .try_init();
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let owner = tenant(&client).await;
    let mut schedules = Vec::new();
    for _ in 0..3 {
        let config = json!({"catch_up": "all", "overlap": "allow"});
        schedules.push(add_schedule(&client, owner, "* * * * * *", "UTC", config).await);
    }
    let clock = ManualClock::new(t0());
    let mut daemons = Vec::new();
    for _ in 0..3 {
        let token = CancellationToken::new();
        let handle = tokio::spawn(scheduler(&db, &clock, ahead(lead as u64)).run(token.clone()));
        daemons.push((token, handle));
    }
    let lead = chrono::Duration::seconds(lead);
    let pending = "select count(*) from public.app_cron_schedules
                   where is_active and (next_run_at is null or next_run_at <= $1)";
    until_zero(&client, pending, t0() + lead).await;

    let seconds = 40;
    for step in 1..=seconds {
        clock.advance(chrono::Duration::seconds(1));
        if step == 15 {
            // Killed without a chance to clean up: whatever it held rolls back.
            daemons[0].1.abort();
        }
        until_zero(&client, pending, clock.now() + lead).await;
    }

    let last = seconds + lead.num_seconds();
    let expected: Vec<DateTime<Utc>> = (1..=last)
        .map(|s| t0() + chrono::Duration::seconds(s))
        .collect();
    for schedule in schedules {
        assert_eq!(
            run_times(&client, schedule).await,
            expected,
            "schedule {schedule}"
        );
        assert_eq!(
            tick_counts(&client, schedule).await,
            counts(&[("fired", None, last)])
        );
    }
    for (token, handle) in daemons {
        token.cancel();
        let _ = handle.await;
    }
}

#[tokio::test]
async fn missed_ticks_follow_the_catch_up_policy_of_each_schedule() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let owner = tenant(&client).await;
    let skip = add_schedule(
        &client,
        owner,
        "* * * * *",
        "UTC",
        json!({"catch_up": "skip"}),
    )
    .await;
    let once = add_schedule(&client, owner, "* * * * *", "UTC", json!({})).await;
    let all = add_schedule(
        &client,
        owner,
        "* * * * *",
        "UTC",
        json!({"catch_up": "all"}),
    )
    .await;
    let clock = ManualClock::new(t0());
    let scheduler = scheduler(&db, &clock, settings(100));
    assert_eq!(scheduler.pass(t0()).await.unwrap().planned, 3);

    // Down for ten ticks: T0+1min .. T0+10min are all due at once.
    let report = scheduler.pass(t0() + minutes(10)).await.unwrap();
    assert_eq!((report.fired, report.skipped), (11, 19));

    assert!(run_times(&client, skip).await.is_empty());
    assert_eq!(
        tick_counts(&client, skip).await,
        counts(&[("skipped", Some("downtime"), 10)])
    );
    assert_eq!(run_times(&client, once).await, vec![t0() + minutes(10)]);
    assert_eq!(
        tick_counts(&client, once).await,
        counts(&[("fired", None, 1), ("skipped", Some("downtime"), 9)])
    );
    assert_eq!(run_times(&client, all).await.len(), 10);
    for schedule in [skip, once, all] {
        let (_, _, next) = schedule_state(&client, schedule).await;
        assert_eq!(next, Some(t0() + minutes(11)));
    }
    let last: (Option<DateTime<Utc>>, Option<Uuid>) = {
        let row = client
            .query_one(
                "select last_run_at, last_run_id from public.app_cron_schedules where id = $1",
                &[&once],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(last.0, Some(t0() + minutes(10)));
    assert!(last.1.is_some());
}

#[tokio::test]
async fn catch_up_all_fires_only_the_newest_ticks_up_to_the_cap() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let owner = tenant(&client).await;
    let all = add_schedule(
        &client,
        owner,
        "* * * * *",
        "UTC",
        json!({"catch_up": "all"}),
    )
    .await;
    let clock = ManualClock::new(t0());
    let scheduler = scheduler(&db, &clock, settings(4));
    scheduler.pass(t0()).await.unwrap();
    scheduler.pass(t0() + minutes(10)).await.unwrap();
    let newest: Vec<_> = (7..=10).map(|m| t0() + minutes(m)).collect();
    assert_eq!(run_times(&client, all).await, newest);
    assert_eq!(
        tick_counts(&client, all).await,
        counts(&[("fired", None, 4), ("skipped", Some("catch_up_cap"), 6)])
    );
}

#[tokio::test]
async fn a_still_running_previous_run_is_skipped_queued_or_allowed_as_configured() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let owner = tenant(&client).await;
    let mut by_policy = Vec::new();
    for policy in ["skip", "queue", "allow"] {
        let id = add_schedule(
            &client,
            owner,
            "* * * * *",
            "UTC",
            json!({"overlap": policy}),
        )
        .await;
        let running: Uuid = client
            .query_one(
                "insert into public.app_runs (app_id, company_id, run_type, status, executor_id,
                   lease_expires_at, schedule_id, scheduled_for)
                 values ($1, $2, 'cron', 'running', 'other-host', now() + interval '1 hour', $3, $4)
                 returning id",
                &[&owner.1, &owner.0, &id, &(t0() - minutes(1))],
            )
            .await
            .unwrap()
            .get(0);
        by_policy.push((policy, id, running));
    }
    let clock = ManualClock::new(t0());
    let scheduler = scheduler(&db, &clock, settings(100));
    scheduler.pass(t0()).await.unwrap();
    scheduler.pass(t0() + minutes(1)).await.unwrap();

    for (policy, id, running) in by_policy {
        let tick = client
            .query_one(
                "select outcome, reason, detail, run_id from public.app_cron_ticks
                 where schedule_id = $1 and scheduled_for = $2",
                &[&id, &(t0() + minutes(1))],
            )
            .await
            .unwrap();
        let (outcome, reason, detail, run_id): (
            String,
            Option<String>,
            Option<String>,
            Option<Uuid>,
        ) = (tick.get(0), tick.get(1), tick.get(2), tick.get(3));
        let runs = run_times(&client, id).await.len();
        match policy {
            "skip" => {
                assert_eq!(
                    (outcome.as_str(), reason.as_deref(), runs),
                    ("skipped", Some("overlap"), 1)
                );
                assert!(detail.unwrap().contains(&running.to_string()));
            }
            "queue" => {
                assert_eq!((outcome.as_str(), runs), ("fired", 2));
                assert!(detail.unwrap().contains(&running.to_string()));
                let status: String = client
                    .query_one(
                        "select status from public.app_runs where id = $1",
                        &[&run_id.unwrap()],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(status, "pending");
            }
            _ => assert_eq!((outcome.as_str(), detail, runs), ("fired", None, 2)),
        }
    }
}

#[tokio::test]
async fn invalid_schedules_are_disabled_with_a_reason_while_others_keep_firing() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let owner = tenant(&client).await;
    let bad_expr = add_schedule(&client, owner, "61 * * * *", "UTC", json!({})).await;
    let bad_zone = add_schedule(&client, owner, "@hourly", "Mars/Olympus", json!({})).await;
    let bad_config = add_schedule(
        &client,
        owner,
        "* * * * *",
        "UTC",
        json!({"catch_up": "sometimes"}),
    )
    .await;
    let good = add_schedule(&client, owner, "* * * * *", "UTC", json!({})).await;
    // Planned elsewhere (an older daemon, a manual insert) and found invalid only when due.
    let due_but_bad: Uuid = client
        .query_one(
            "insert into public.app_cron_schedules (app_id, company_id, cron_expression, next_run_at)
             values ($1, $2, 'every minute', $3) returning id",
            &[&owner.1, &owner.0, &(t0() + minutes(1))],
        )
        .await
        .unwrap()
        .get(0);
    let clock = ManualClock::new(t0());
    let scheduler = scheduler(&db, &clock, settings(100));
    let report = scheduler.pass(t0()).await.unwrap();
    assert_eq!((report.planned, report.disabled), (1, 3));
    let report = scheduler.pass(t0() + minutes(1)).await.unwrap();
    assert_eq!((report.fired, report.disabled, report.failed), (1, 1, 0));

    let (active, reason, next) = schedule_state(&client, bad_expr).await;
    assert!(!active && next.is_none());
    assert_eq!(
        reason.as_deref(),
        Some("\"61 * * * *\": minute 61 is out of range 0-59")
    );
    let (active, reason, _) = schedule_state(&client, bad_zone).await;
    assert!(!active);
    assert!(reason
        .unwrap()
        .contains("\"Mars/Olympus\" is not an IANA zone name"));
    assert_eq!(
        tick_counts(&client, bad_expr).await,
        counts(&[("skipped", Some("invalid_schedule"), 1)])
    );
    let (active, reason, _) = schedule_state(&client, bad_config).await;
    assert!(!active);
    assert!(reason.unwrap().contains("config.catch_up"));
    assert!(run_times(&client, bad_config).await.is_empty());
    let (active, reason, _) = schedule_state(&client, due_but_bad).await;
    assert!(!active);
    assert!(reason.unwrap().contains("\"every minute\""));
    assert_eq!(
        tick_counts(&client, due_but_bad).await,
        counts(&[("skipped", Some("invalid_schedule"), 1)])
    );
    assert_eq!(run_times(&client, good).await, vec![t0() + minutes(1)]);

    // Fixing the expression re-activates it with a fresh plan.
    client
        .execute(
            "update public.app_cron_schedules set cron_expression = '5 * * * *', is_active = true where id = $1",
            &[&bad_expr],
        )
        .await
        .unwrap();
    scheduler.pass(t0() + minutes(2)).await.unwrap();
    assert_eq!(
        schedule_state(&client, bad_expr).await,
        (true, None, Some(t0() + minutes(5)))
    );
}

#[tokio::test]
async fn editing_the_expression_or_zone_recomputes_next_run_at() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let owner = tenant(&client).await;
    let id = add_schedule(&client, owner, "0 * * * *", "UTC", json!({})).await;
    let clock = ManualClock::new(t0());
    let scheduler = scheduler(&db, &clock, settings(100));
    scheduler.pass(t0()).await.unwrap();
    assert_eq!(
        schedule_state(&client, id).await.2,
        Some(t0() + minutes(60))
    );

    client
        .execute(
            "update public.app_cron_schedules set cron_expression = '*/5 * * * *' where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    scheduler.pass(t0() + minutes(1)).await.unwrap();
    assert_eq!(schedule_state(&client, id).await.2, Some(t0() + minutes(5)));

    // 09:00 in Kathmandu (+05:45) is 03:15 UTC.
    client
        .execute(
            "update public.app_cron_schedules set cron_expression = '0 9 * * *', timezone = 'Asia/Kathmandu' where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    scheduler.pass(t0() + minutes(2)).await.unwrap();
    assert_eq!(
        schedule_state(&client, id).await.2,
        Some("2026-06-01T03:15:00Z".parse().unwrap())
    );
}

#[tokio::test]
async fn a_notified_scheduler_plans_a_new_schedule_without_waiting_for_max_sleep() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let owner = tenant(&client).await;
    let clock = ManualClock::new(t0());
    let wake = Arc::new(Notify::new());
    let pool = app_executor::db::pool(&db.url, Duration::from_secs(30), 2).unwrap();
    let mut slow = settings(100);
    slow.max_sleep = Duration::from_secs(3600);
    let scheduler = Scheduler::new(pool, Arc::new(clock.clone()), slow, wake.clone());
    let token = CancellationToken::new();
    let handle = tokio::spawn(scheduler.run(token.clone()));
    // Asleep after its first (empty) pass; time never moves in this test.
    while clock.sleepers() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let id = add_schedule(&client, owner, "*/10 * * * *", "UTC", json!({})).await;
    wake.notify_one();
    until_zero(
        &client,
        "select count(*) from public.app_cron_schedules where next_run_at is null and $1::timestamptz is not null",
        t0(),
    )
    .await;
    assert_eq!(
        schedule_state(&client, id).await.2,
        Some(t0() + minutes(10))
    );
    token.cancel();
    handle.await.unwrap();
}

/// An instant after the real clock, so the database's `now()` sees every tick of these tests
/// as still to come (what withdrawing and `run_after` compare against).
fn future() -> DateTime<Utc> {
    "2030-06-01T00:00:00Z".parse().unwrap()
}

fn ahead(seconds: u64) -> CronSettings {
    let mut settings = settings(100);
    settings.fire_ahead = Duration::from_secs(seconds);
    settings
}

/// (scheduled_for, run_after, status, input_data) of the schedule's runs, oldest first.
async fn runs_of(
    client: &Client,
    schedule: Uuid,
) -> Vec<(DateTime<Utc>, DateTime<Utc>, String, Value)> {
    client
        .query(
            "select scheduled_for, run_after, status, input_data from public.app_runs
             where schedule_id = $1 order by scheduled_for",
            &[&schedule],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

#[tokio::test]
async fn a_tick_fires_ahead_when_nothing_can_change_it_and_waits_for_its_instant_otherwise() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let owner = tenant(&client).await;
    let mut by_policy = Vec::new();
    for policy in ["skip", "queue", "allow"] {
        let config = json!({"overlap": policy});
        by_policy.push(add_schedule(&client, owner, "* * * * *", "UTC", config).await);
    }
    let [skip, queue, allow] = by_policy[..] else {
        unreachable!()
    };
    let clock = ManualClock::new(future());
    let scheduler = scheduler(&db, &clock, ahead(2));
    let seconds = chrono::Duration::seconds;
    let tick1 = future() + minutes(1);
    assert_eq!(scheduler.pass(future()).await.unwrap().planned, 3);

    // 3 s before the tick is outside the 2 s lead; 2 s before, every schedule fires: none has
    // an active run, so nothing before the instant can change the decision.
    assert_eq!(scheduler.pass(tick1 - seconds(3)).await.unwrap().fired, 0);
    let report = scheduler.pass(tick1 - seconds(2)).await.unwrap();
    assert_eq!((report.fired, report.fired_ahead), (3, 3));
    assert!(report.fire_lags.iter().all(|lag| lag.is_zero()));
    for schedule in [skip, queue, allow] {
        // Claimable at the instant, not before.
        let runs = runs_of(&client, schedule).await;
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].0, runs[0].1), (tick1, tick1));
        assert_eq!(
            schedule_state(&client, schedule).await.2,
            Some(tick1 + minutes(1))
        );
    }

    // The next tick, 2 s ahead again, with the first runs still pending: skip and queue look
    // at that run, which may end before the instant, so they wait for it; allow does not care.
    let tick2 = tick1 + minutes(1);
    let report = scheduler.pass(tick2 - seconds(2)).await.unwrap();
    assert_eq!(
        (
            report.fired,
            report.fired_ahead,
            report.deferred,
            report.skipped
        ),
        (1, 1, 2, 0)
    );
    assert_eq!(run_times(&client, allow).await, vec![tick1, tick2]);
    for deferred in [skip, queue] {
        assert_eq!(run_times(&client, deferred).await, vec![tick1]);
        assert_eq!(
            tick_counts(&client, deferred).await,
            counts(&[("fired", None, 1)])
        );
        assert_eq!(schedule_state(&client, deferred).await.2, Some(tick2));
    }

    // The skip schedule's run ends before the instant, so at the instant its tick fires;
    // the queue schedule's run is still pending, so its tick is queued behind it.
    client
        .execute(
            "update public.app_runs set status = 'cancelled' where schedule_id = $1",
            &[&skip],
        )
        .await
        .unwrap();
    let report = scheduler.pass(tick2).await.unwrap();
    assert_eq!(
        (report.fired, report.fired_ahead, report.deferred),
        (2, 0, 0)
    );
    assert_eq!(run_times(&client, skip).await, vec![tick1, tick2]);
    let detail: Option<String> = client
        .query_one(
            "select detail from public.app_cron_ticks where schedule_id = $1 and scheduled_for = $2",
            &[&queue, &tick2],
        )
        .await
        .unwrap()
        .get(0);
    assert!(detail.unwrap().contains("was pending"));
}

#[tokio::test]
async fn a_full_pass_of_deferred_ticks_does_not_ask_for_another_at_once() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let owner = tenant(&client).await;
    for _ in 0..2 {
        let id = add_schedule(&client, owner, "* * * * *", "UTC", json!({})).await;
        client
            .execute(
                "insert into public.app_runs (app_id, company_id, run_type, schedule_id, scheduled_for)
                 values ($1, $2, 'cron', $3, $4)",
                &[&owner.1, &owner.0, &id, &future()],
            )
            .await
            .unwrap();
    }
    let clock = ManualClock::new(future());
    let mut settings = ahead(2);
    settings.batch_size = 2;
    let scheduler = scheduler(&db, &clock, settings);
    scheduler.pass(future()).await.unwrap();
    let report = scheduler
        .pass(future() + minutes(1) - chrono::Duration::seconds(2))
        .await
        .unwrap();
    // Both taken, both deferred: the loop must sleep until their instant, not spin.
    assert_eq!((report.deferred, report.fired, report.more), (2, 0, false));
}

#[tokio::test]
async fn editing_or_deleting_a_schedule_withdraws_the_run_it_fired_ahead() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let owner = tenant(&client).await;
    // overlap "allow": the pending run below would otherwise defer its ticks (that is tested
    // above).
    let config = json!({"input": {"v": 1}, "overlap": "allow"});
    let edited = add_schedule(&client, owner, "* * * * *", "UTC", config).await;
    let deleted = add_schedule(&client, owner, "* * * * *", "UTC", json!({})).await;
    let clock = ManualClock::new(future());
    let scheduler = scheduler(&db, &clock, ahead(2));
    let tick = future() + minutes(1);
    let before_tick = tick - chrono::Duration::seconds(2);
    scheduler.pass(future()).await.unwrap();
    assert_eq!(scheduler.pass(before_tick).await.unwrap().fired_ahead, 2);
    let last_run = |schedule: Uuid| {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "select last_run_at, last_run_id from public.app_cron_schedules where id = $1",
                    &[&schedule],
                )
                .await
                .unwrap();
            (
                row.get::<_, Option<DateTime<Utc>>>(0),
                row.get::<_, Option<Uuid>>(1),
            )
        }
    };
    assert_eq!(last_run(edited).await.0, Some(tick));

    // A run whose instant has come is the schedule's history, whatever the edit.
    let came: Uuid = client
        .query_one(
            "insert into public.app_runs (app_id, company_id, run_type, schedule_id, scheduled_for)
             values ($1, $2, 'cron', $3, now() - interval '1 minute') returning id",
            &[&owner.1, &owner.0, &edited],
        )
        .await
        .unwrap()
        .get(0);

    // A new input before the instant: the early run and its tick go, the schedule is planned
    // again, and the tick fires once more with the new input.
    client
        .execute(
            "update public.app_cron_schedules
                set config = '{\"input\": {\"v\": 2}, \"overlap\": \"allow\"}' where id = $1",
            &[&edited],
        )
        .await
        .unwrap();
    let runs = runs_of(&client, edited).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(runs[0].0 < tick);
    assert_eq!(tick_counts(&client, edited).await, counts(&[]));
    assert_eq!(schedule_state(&client, edited).await.2, None);
    assert_eq!(last_run(edited).await, (None, None));
    let report = scheduler.pass(before_tick).await.unwrap();
    assert_eq!((report.planned, report.fired_ahead), (1, 1));
    let runs = runs_of(&client, edited).await;
    assert_eq!((runs[1].0, &runs[1].3), (tick, &json!({"v": 2})));
    assert_eq!(last_run(edited).await.0, Some(tick));

    // Deactivated before the instant: the early run goes and nothing fires.
    client
        .execute(
            "update public.app_cron_schedules set is_active = false where id = $1",
            &[&edited],
        )
        .await
        .unwrap();
    assert_eq!(runs_of(&client, edited).await.len(), 1);
    let status: String = client
        .query_one("select status from public.app_runs where id = $1", &[&came])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "pending");

    // Deleted before the instant: the early run is cancelled, saying why, instead of starting
    // as a run of no schedule.
    let run: Uuid = client
        .query_one(
            "select id from public.app_runs where schedule_id = $1",
            &[&deleted],
        )
        .await
        .unwrap()
        .get(0);
    client
        .execute(
            "delete from public.app_cron_schedules where id = $1",
            &[&deleted],
        )
        .await
        .unwrap();
    let row = client
        .query_one(
            "select status, error_kind, schedule_id from public.app_runs where id = $1",
            &[&run],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, Option<String>>(1),
            row.get::<_, Option<Uuid>>(2)
        ),
        (
            "cancelled".to_owned(),
            Some("schedule_deleted".to_owned()),
            None
        )
    );
}

/// The whole path in real time: a daemon process fires a schedule ticking every 4 s 2 s ahead,
/// and its own queue claims each run at its instant. The queue's poll interval is a minute and
/// the NOTIFY of each insert comes 2 s before the instant (the next one 2 s after it), so only
/// the wake-up at `run_after` can start a run on time.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_starts_runs_fired_ahead_at_their_instant_not_before() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let owner = tenant(&client).await;
    let schedule = add_schedule(
        &client,
        owner,
        "*/4 * * * * *",
        "UTC",
        json!({"overlap": "allow"}),
    )
    .await;
    let mut options = DaemonOptions::new("").queue("poll_interval", "60s");
    options
        .env
        .push(("APP_EXECUTOR_CRON__FIRE_AHEAD".to_owned(), "2s".to_owned()));
    let mut daemon = Daemon::spawn(&db, options);
    tokio::time::sleep(Duration::from_secs(10)).await;
    daemon.stop();

    let runs = client
        .query(
            "select scheduled_for, created_at, started_at from public.app_runs
             where schedule_id = $1 and started_at is not null order by scheduled_for",
            &[&schedule],
        )
        .await
        .unwrap();
    assert!(
        runs.len() >= 2,
        "{} runs started\n{}",
        runs.len(),
        daemon.log_text()
    );
    for run in &runs {
        let (scheduled_for, created_at, started_at): (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>) =
            (run.get(0), run.get(1), run.get(2));
        assert!(
            started_at >= scheduled_for,
            "started before its instant: {scheduled_for} {started_at}"
        );
        assert!(
            started_at - scheduled_for < chrono::Duration::seconds(1),
            "started {} after its instant (poll interval 60 s)",
            started_at - scheduled_for
        );
        // Every tick but the very first (planned less than the lead before it) was inserted
        // ahead of its instant.
        if scheduled_for > runs[0].get::<_, DateTime<Utc>>(0) {
            assert!(
                created_at < scheduled_for,
                "not fired ahead: {scheduled_for} {created_at}"
            );
        }
    }
}

/// A daemon whose host clock runs 10 minutes ahead (libfaketime) fires ticks at the database's
/// instant: none early, none recorded as missed, each run claimed and finished.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_whose_host_clock_is_ahead_fires_by_the_databases_clock() {
    let faketime = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        std::path::Path::new(faketime).exists(),
        "{faketime} missing: install the Debian package faketime (scripts/test does)"
    );
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let owner = tenant(&client).await;
    let schedule = add_schedule(
        &client,
        owner,
        "*/2 * * * * *",
        "UTC",
        json!({"overlap": "allow"}),
    )
    .await;
    let mut options = DaemonOptions::new("");
    for (key, value) in [
        ("LD_PRELOAD", faketime),
        ("FAKETIME", "+10m"),
        // Timers (tokio's Instant) keep real time; only the wall clock is off.
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ("APP_EXECUTOR_CRON__FIRE_AHEAD", "0s"),
    ] {
        options.env.push((key.to_owned(), value.to_owned()));
    }
    let mut daemon = Daemon::spawn(&db, options);
    tokio::time::sleep(Duration::from_secs(9)).await;
    daemon.stop();
    assert!(
        daemon
            .log_text()
            .contains("clock is off from the database's"),
        "the skew was not reported:\n{}",
        daemon.log_text()
    );
    let skipped: i64 = client
        .query_one(
            "select count(*) from public.app_cron_ticks where schedule_id = $1 and outcome = 'skipped'",
            &[&schedule],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        skipped,
        0,
        "ticks recorded as missed\n{}",
        daemon.log_text()
    );
    let runs = client
        .query(
            "select scheduled_for, created_at, status from public.app_runs
              where schedule_id = $1 order by scheduled_for",
            &[&schedule],
        )
        .await
        .unwrap();
    assert!(
        runs.len() >= 3,
        "{} runs fired\n{}",
        runs.len(),
        daemon.log_text()
    );
    for run in &runs {
        let (scheduled_for, created_at): (DateTime<Utc>, DateTime<Utc>) = (run.get(0), run.get(1));
        assert!(
            created_at >= scheduled_for - chrono::Duration::milliseconds(200),
            "fired early: tick {scheduled_for}, inserted {created_at}"
        );
        assert!(
            scheduled_for < Utc::now() + chrono::Duration::seconds(5),
            "a tick of the host's (future) clock: {scheduled_for}"
        );
    }
}
