//! Row-level security as Supabase applies it: `set local role authenticated` plus the
//! `request.jwt.claims` setting, exactly what PostgREST and Storage do per request.

use tokio_postgres::{Client, Transaction};
use uuid::Uuid;

use crate::harness::TestDb;

/// Two companies with an app each, users of every role, and one row of everything per company.
struct Tenants {
    company_a: Uuid,
    company_b: Uuid,
    app_a: Uuid,
    app_b: Uuid,
    run_a: Uuid,
    run_b: Uuid,
    a_member: Uuid,
    a_owner: Uuid,
    a_admin: Uuid,
    b_owner: Uuid,
    superadmin: Uuid,
}

async fn tenants(client: &Client) -> Tenants {
    let t = Tenants {
        company_a: Uuid::new_v4(),
        company_b: Uuid::new_v4(),
        app_a: Uuid::new_v4(),
        app_b: Uuid::new_v4(),
        run_a: Uuid::new_v4(),
        run_b: Uuid::new_v4(),
        a_member: Uuid::new_v4(),
        a_owner: Uuid::new_v4(),
        a_admin: Uuid::new_v4(),
        b_owner: Uuid::new_v4(),
        superadmin: Uuid::new_v4(),
    };
    let sha = format!("sha256:{}", "c".repeat(64));
    for (company, app, run, owner) in [
        (t.company_a, t.app_a, t.run_a, t.a_owner),
        (t.company_b, t.app_b, t.run_b, t.b_owner),
    ] {
        client
            .execute(
                "insert into public.companies (id, name) values ($1, 'co')",
                &[&company],
            )
            .await
            .unwrap();
        client
            .execute(
                "insert into public.applications (id, name) values ($1, 'app')",
                &[&app],
            )
            .await
            .unwrap();
        client
            .execute(
                "insert into app_exec.company_apps (company_id, app_id) values ($1, $2)",
                &[&company, &app],
            )
            .await
            .unwrap();
        client
            .execute(
                "insert into app_exec.company_members (company_id, user_id, role) values ($1, $2, 'owner')",
                &[&company, &owner],
            )
            .await
            .unwrap();
        client
            .execute(
                "insert into public.app_runs (id, app_id, company_id) values ($1, $2, $3)",
                &[&run, &app, &company],
            )
            .await
            .unwrap();
        client
            .execute(
                "insert into public.app_outputs (run_id, output_type, output_data) values ($1, 'result', '{}')",
                &[&run],
            )
            .await
            .unwrap();
        client
            .execute(
                "insert into public.app_cron_schedules (app_id, company_id, cron_expression) values ($1, $2, '0 * * * *')",
                &[&app, &company],
            )
            .await
            .unwrap();
        client
            .execute(
                "insert into public.app_storage (app_id, version, file_path, file_type, file_size, checksum) values ($1, '1.0.0', 'app_' || $1::uuid::text || '/1.0.0/index.js', 'source', 1, $2)",
                &[&app, &sha],
            )
            .await
            .unwrap();
        client
            .execute(
                "insert into storage.objects (bucket_id, name) values ('app-logs', $1), ('app-storage', $2)",
                &[
                    &format!("app_{app}/runs/{run}/stdout.log"),
                    &format!("app_{app}/1.0.0/index.js"),
                ],
            )
            .await
            .unwrap();
    }
    for (user, role) in [(t.a_member, "member"), (t.a_admin, "admin")] {
        client
            .execute(
                "insert into app_exec.company_members (company_id, user_id, role) values ($1, $2, $3)",
                &[&t.company_a, &user, &role],
            )
            .await
            .unwrap();
    }
    client
        .execute(
            "insert into app_exec.superadmins (user_id) values ($1)",
            &[&t.superadmin],
        )
        .await
        .unwrap();
    t
}

/// A transaction acting as `user` (authenticated) or as `anon` when `user` is `None`.
async fn as_user(client: &mut Client, user: Option<Uuid>) -> Transaction<'_> {
    let tx = client.transaction().await.unwrap();
    let (role, claims) = match user {
        Some(id) => (
            "authenticated",
            serde_json::json!({"sub": id, "role": "authenticated"}),
        ),
        None => ("anon", serde_json::json!({"role": "anon"})),
    };
    tx.batch_execute(&format!("set local role {role}"))
        .await
        .unwrap();
    tx.execute(
        "select set_config('request.jwt.claims', $1, true)",
        &[&claims.to_string()],
    )
    .await
    .unwrap();
    tx
}

async fn ids(tx: &Transaction<'_>, sql: &str) -> Vec<Uuid> {
    tx.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn count(tx: &Transaction<'_>, sql: &str) -> i64 {
    tx.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn a_company_sees_none_of_another_companys_rows_or_objects() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    let t = tenants(&client).await;
    for user in [t.a_member, t.a_owner] {
        let tx = as_user(&mut client, Some(user)).await;
        assert_eq!(
            ids(&tx, "select id from public.app_runs").await,
            vec![t.run_a]
        );
        assert_eq!(
            ids(&tx, "select run_id from public.app_outputs").await,
            vec![t.run_a]
        );
        assert_eq!(
            ids(&tx, "select company_id from public.app_cron_schedules").await,
            vec![t.company_a]
        );
        assert_eq!(
            ids(&tx, "select app_id from public.app_storage").await,
            vec![t.app_a]
        );
        assert_eq!(
            ids(&tx, "select id from public.applications").await,
            vec![t.app_a]
        );
        assert_eq!(
            ids(&tx, "select id from public.companies").await,
            vec![t.company_a]
        );
        let objects: Vec<String> = tx
            .query("select name from storage.objects order by bucket_id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            objects,
            vec![
                format!("app_{}/runs/{}/stdout.log", t.app_a, t.run_a),
                format!("app_{}/1.0.0/index.js", t.app_a),
            ]
        );
        tx.rollback().await.unwrap();
    }
    let tx = as_user(&mut client, Some(t.b_owner)).await;
    assert_eq!(
        ids(&tx, "select id from public.app_runs").await,
        vec![t.run_b]
    );
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn a_member_cannot_create_runs_but_owners_and_admins_can() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    let t = tenants(&client).await;
    let insert = "insert into public.app_runs (app_id, company_id) values ($1, $2)";

    let tx = as_user(&mut client, Some(t.a_member)).await;
    let err = tx
        .execute(insert, &[&t.app_a, &t.company_a])
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501", "{err}");
    tx.rollback().await.unwrap();

    for manager in [t.a_owner, t.a_admin] {
        let tx = as_user(&mut client, Some(manager)).await;
        assert_eq!(
            tx.execute(insert, &[&t.app_a, &t.company_a]).await.unwrap(),
            1
        );
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn an_owner_cannot_create_runs_for_another_company_or_an_unassigned_app() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    let t = tenants(&client).await;
    let insert = "insert into public.app_runs (app_id, company_id) values ($1, $2)";
    for (app, company) in [
        (t.app_b, t.company_b),
        (t.app_a, t.company_b),
        (t.app_b, t.company_a),
    ] {
        let tx = as_user(&mut client, Some(t.a_owner)).await;
        let err = tx.execute(insert, &[&app, &company]).await.unwrap_err();
        assert_eq!(err.code().unwrap().code(), "42501", "{err}");
        tx.rollback().await.unwrap();
    }
    // Nor may a client fill in the daemon's columns.
    let tx = as_user(&mut client, Some(t.a_owner)).await;
    let err = tx
        .execute(
            "insert into public.app_runs (app_id, company_id, status, executor_id) values ($1, $2, 'success', 'me')",
            &[&t.app_a, &t.company_a],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501", "{err}");
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn owners_cancel_their_companys_runs_and_nothing_else() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    let t = tenants(&client).await;
    // A running run: the state transition to success is legal, so only RLS can refuse it.
    client
        .execute(
            "update public.app_runs set status = 'running', executor_id = 'e1', lease_expires_at = now() + interval '1 minute' where id = $1",
            &[&t.run_a],
        )
        .await
        .unwrap();

    let tx = as_user(&mut client, Some(t.a_owner)).await;
    let forged = tx
        .execute(
            "update public.app_runs set status = 'success' where id = $1",
            &[&t.run_a],
        )
        .await
        .unwrap_err();
    assert_eq!(forged.code().unwrap().code(), "42501", "{forged}");
    tx.rollback().await.unwrap();

    let tx = as_user(&mut client, Some(t.a_owner)).await;
    let others = tx
        .execute(
            "update public.app_runs set status = 'cancelled' where id = $1",
            &[&t.run_b],
        )
        .await
        .unwrap();
    assert_eq!(others, 0, "cancelled another company's run");
    let own = tx
        .execute(
            "update public.app_runs set status = 'cancelled' where id = $1",
            &[&t.run_a],
        )
        .await
        .unwrap();
    assert_eq!(own, 1);
    tx.commit().await.unwrap();

    let tx = as_user(&mut client, Some(t.a_member)).await;
    let by_member = tx
        .execute(
            "update public.app_runs set status = 'cancelled' where id = $1",
            &[&t.run_a],
        )
        .await
        .unwrap();
    assert_eq!(by_member, 0, "a member cancelled a run");
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn anon_sees_nothing() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    let _t = tenants(&client).await;
    for table in [
        "app_runs",
        "app_outputs",
        "app_cron_schedules",
        "app_storage",
        "app_builds",
        "app_permissions",
        "app_executors",
        "app_cron_ticks",
    ] {
        let tx = as_user(&mut client, None).await;
        let result = tx
            .query(&format!("select * from public.{table}"), &[])
            .await;
        match result {
            Ok(rows) => assert!(rows.is_empty(), "anon read {table}"),
            Err(e) => assert_eq!(e.code().unwrap().code(), "42501", "{table}: {e}"),
        }
        tx.rollback().await.unwrap();
    }
    let tx = as_user(&mut client, None).await;
    assert_eq!(count(&tx, "select count(*) from storage.objects").await, 0);
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn a_superadmin_sees_and_manages_everything() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    let t = tenants(&client).await;
    let tx = as_user(&mut client, Some(t.superadmin)).await;
    assert_eq!(count(&tx, "select count(*) from public.app_runs").await, 2);
    assert_eq!(
        count(&tx, "select count(*) from public.app_outputs").await,
        2
    );
    assert_eq!(
        count(&tx, "select count(*) from public.app_cron_schedules").await,
        2
    );
    assert_eq!(
        count(&tx, "select count(*) from public.app_storage").await,
        2
    );
    assert_eq!(count(&tx, "select count(*) from storage.objects").await, 4);
    assert_eq!(
        tx.execute(
            "insert into public.app_runs (app_id, company_id) values ($1, $2)",
            &[&t.app_b, &t.company_b]
        )
        .await
        .unwrap(),
        1
    );
    tx.rollback().await.unwrap();
}

/// `schema.name(args)` of every function in `app_exec` and `public` that `role` may execute.
async fn executable_by(client: &Client, role: &str) -> Vec<String> {
    client
        .query(
            "select n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
               from pg_proc p join pg_namespace n on n.oid = p.pronamespace
              where n.nspname in ('app_exec', 'public')
                and has_function_privilege($1, p.oid, 'execute')
              order by 1",
            &[&role],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn only_policy_helpers_are_executable_by_clients() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    assert_eq!(executable_by(&client, "anon").await, Vec::<String>::new());
    let helpers = [
        "app_exec.can_manage_company(company uuid)",
        "app_exec.can_read_app(app uuid)",
        "app_exec.can_read_app_object(object_name text)",
        "app_exec.can_read_run(run uuid)",
        "app_exec.can_read_run_object(object_name text)",
        "app_exec.company_has_app(company uuid, app uuid)",
        "app_exec.company_role(company uuid)",
        "app_exec.is_app_object_key(app uuid, key text)",
        "app_exec.is_company_member(company uuid)",
        "app_exec.is_superadmin()",
        "app_exec.user_company_ids()",
    ];
    assert_eq!(executable_by(&client, "authenticated").await, helpers);
}

#[tokio::test]
async fn clients_cannot_call_the_daemons_functions() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    let t = tenants(&client).await;
    let schedule: Uuid = client
        .query_one(
            "select id from public.app_cron_schedules where company_id = $1",
            &[&t.company_b],
        )
        .await
        .unwrap()
        .get(0);
    for user in [Some(t.a_owner), None] {
        let tx = as_user(&mut client, user).await;
        let err = tx
            .execute(
                "select app_exec.withdraw_runs_fired_ahead($1)",
                &[&schedule],
            )
            .await
            .unwrap_err();
        assert_eq!(err.code().unwrap().code(), "42501", "{user:?}: {err}");
        tx.rollback().await.unwrap();
    }
}

#[tokio::test]
async fn a_run_can_only_name_a_build_of_its_own_app() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    let t = tenants(&client).await;
    let build_b: Uuid = client
        .query_one(
            "insert into public.app_builds (app_id, build_version) values ($1, '1.0.0') returning id",
            &[&t.app_b],
        )
        .await
        .unwrap()
        .get(0);
    let insert = "insert into public.app_runs (app_id, company_id, build_id) values ($1, $2, $3)";
    let tx = as_user(&mut client, Some(t.a_owner)).await;
    let err = tx
        .execute(insert, &[&t.app_a, &t.company_a, &build_b])
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "23503", "{err}");
    tx.rollback().await.unwrap();
    // The daemon's own role is held to it too; a build of the run's app is fine.
    let err = client
        .execute(insert, &[&t.app_a, &t.company_a, &build_b])
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "23503", "{err}");
    client
        .execute(insert, &[&t.app_b, &t.company_b, &build_b])
        .await
        .unwrap();
    // Deleting the build keeps its runs, without the build.
    client
        .execute("delete from public.app_builds where id = $1", &[&build_b])
        .await
        .unwrap();
    let left: i64 = client
        .query_one(
            "select count(*) from public.app_runs where app_id = $1 and build_id is null",
            &[&t.app_b],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 2);
}

#[tokio::test]
async fn a_clients_run_and_schedule_record_the_caller_whatever_they_send() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    let t = tenants(&client).await;
    let tx = as_user(&mut client, Some(t.a_owner)).await;
    let triggered_by: Option<Uuid> = tx
        .query_one(
            "insert into public.app_runs (app_id, company_id, triggered_by) values ($1, $2, $3) returning triggered_by",
            &[&t.app_a, &t.company_a, &t.b_owner],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(triggered_by, Some(t.a_owner));
    let created_by: Option<Uuid> = tx
        .query_one(
            "insert into public.app_cron_schedules (app_id, company_id, cron_expression, created_by) values ($1, $2, '0 * * * *', $3) returning created_by",
            &[&t.app_a, &t.company_a, &t.b_owner],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(created_by, Some(t.a_owner));
    tx.rollback().await.unwrap();
    // The daemon (and the platform's service role) may say who triggered a run.
    let triggered_by: Option<Uuid> = client
        .query_one(
            "insert into public.app_runs (app_id, company_id, triggered_by) values ($1, $2, $3) returning triggered_by",
            &[&t.app_a, &t.company_a, &t.b_owner],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(triggered_by, Some(t.b_owner));
}

#[tokio::test]
async fn a_log_object_is_readable_only_under_its_runs_own_app_folder() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    let t = tenants(&client).await;
    let misfiled = format!("app_{}/runs/{}/stdout.log", t.app_b, t.run_a);
    let odd = format!(
        "app_{}/runs/------------------------------------/x",
        t.app_a
    );
    client
        .execute(
            "insert into storage.objects (bucket_id, name) values ('app-logs', $1), ('app-logs', $2)",
            &[&misfiled, &odd],
        )
        .await
        .unwrap();
    let tx = as_user(&mut client, Some(t.a_member)).await;
    let visible: Vec<String> = tx
        .query(
            "select name from storage.objects where bucket_id = 'app-logs' order by name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        visible,
        vec![format!("app_{}/runs/{}/stdout.log", t.app_a, t.run_a)]
    );
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn company_managers_see_and_disable_their_hooks_but_nobody_reads_a_secret() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    let t = tenants(&client).await;
    let secret = app_executor::signature::generate_secret();
    let hook: Uuid = client
        .query_one(
            "insert into public.app_webhooks (app_id, company_id, secret) values ($1, $2, $3) returning id",
            &[&t.app_a, &t.company_a, &secret],
        )
        .await
        .unwrap()
        .get(0);
    let visible = "select id from public.app_webhooks";

    for (user, expected) in [
        (t.a_owner, vec![hook]),
        (t.a_admin, vec![hook]),
        (t.a_member, vec![]),
        (t.b_owner, vec![]),
    ] {
        let tx = as_user(&mut client, Some(user)).await;
        assert_eq!(ids(&tx, visible).await, expected);
        drop(tx);
    }

    // No client reads or writes a secret, an owner included.
    for column in ["secret", "previous_secret", "*"] {
        let tx = as_user(&mut client, Some(t.a_owner)).await;
        let read = tx
            .query(&format!("select {column} from public.app_webhooks"), &[])
            .await;
        assert!(read.is_err(), "an owner read {column}");
        drop(tx);
    }
    let tx = as_user(&mut client, Some(t.a_owner)).await;
    assert!(tx
        .execute("update public.app_webhooks set secret = 'whsec_x'", &[])
        .await
        .is_err());
    drop(tx);
    let tx = as_user(&mut client, None).await;
    assert!(tx.query(visible, &[]).await.is_err(), "anon reads hooks");
    drop(tx);

    // Another company's owner changes nothing; the hook's own owner disables it.
    let tx = as_user(&mut client, Some(t.b_owner)).await;
    let changed = tx
        .execute("update public.app_webhooks set is_active = false", &[])
        .await
        .unwrap();
    assert_eq!(changed, 0);
    tx.commit().await.unwrap();
    let tx = as_user(&mut client, Some(t.a_owner)).await;
    let changed = tx
        .execute(
            "update public.app_webhooks set is_active = false where id = $1",
            &[&hook],
        )
        .await
        .unwrap();
    assert_eq!(changed, 1);
    tx.commit().await.unwrap();
    let active: bool = client
        .query_one(
            "select is_active from public.app_webhooks where id = $1",
            &[&hook],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!active);
    // The idempotency records are the service role's alone.
    let tx = as_user(&mut client, Some(t.a_owner)).await;
    assert!(tx
        .query("select * from app_exec.webhook_deliveries", &[])
        .await
        .is_err());
}
