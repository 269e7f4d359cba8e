//! A run in the `running` state, claimed through the real queue statement, for tests of what
//! an execution writes (logs, outputs) under the claim's fence.

use std::time::Duration;

use app_executor::db;
use app_executor::db::queue::ClaimLimits;
use app_executor::model::ClaimedRun;
use deadpool_postgres::Pool;

use super::{insert_tenant, TestDb};

/// The executor id [`claim_run`] claims with.
pub const EXECUTOR: &str = "test-executor";

/// A pool on `db`, and a fresh run of a new tenant claimed by [`EXECUTOR`] (attempt 1).
pub async fn claim_run(db: &TestDb) -> (Pool, ClaimedRun) {
    let pool = db::pool(&db.url, Duration::from_secs(30), 4).unwrap();
    let client = db.client().await;
    let (company, app) = insert_tenant(&client).await;
    client
        .execute(
            "insert into public.app_runs (app_id, company_id) values ($1, $2)",
            &[&app, &company],
        )
        .await
        .unwrap();
    let run = claim(&pool).await.expect("the new run is claimable");
    (pool, run)
}

/// Claims the next eligible run for [`EXECUTOR`] with a long lease.
pub async fn claim(pool: &Pool) -> Option<ClaimedRun> {
    let limits = ClaimLimits {
        lease: Duration::from_secs(300),
        company_cap: 100,
        app_cap: 100,
        company_caps: serde_json::json!({}),
    };
    db::queue::claim_next_run(pool, EXECUTOR, &limits)
        .await
        .unwrap()
}
