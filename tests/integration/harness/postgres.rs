//! A fresh PostgreSQL database per test.
//!
//! The server is `TEST_DATABASE_URL` when set (a superuser URL), otherwise a private cluster
//! started once from the host's PostgreSQL binaries under `target/tmp/postgres` and shared by
//! every test process (it keeps running; `scripts/test` stops it at the end). Each test gets
//! `CREATE DATABASE t_<pid>_<random> TEMPLATE <template>`, where the template was migrated once
//! with the real migrator; a database per test (not a schema) because the migrations name their
//! own schemas (`storage`, `auth`, `supabase_migrations`). Dropped when the [`TestDb`] is
//! dropped; databases left by crashed test processes (dead pid in the name) are swept.

use std::sync::OnceLock;

use app_executor::db;
use app_executor::db::DatabaseUrl;
use app_executor::embedded_postgres::EmbeddedPostgres;
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// URL of the server's maintenance database (`postgres`), with superuser rights.
fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("TEST_DATABASE_URL") {
            return url;
        }
        let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("postgres");
        let cluster = EmbeddedPostgres::ensure_running(&root)
            .unwrap_or_else(|e| panic!("cannot start the test PostgreSQL cluster: {e}"));
        cluster.url("postgres").expose().to_owned()
    })
}

/// `server_url()` with another database name.
pub fn url_for(database: &str) -> DatabaseUrl {
    let mut url = url::Url::parse(server_url()).expect("TEST_DATABASE_URL is a valid URL");
    url.set_path(&format!("/{database}"));
    DatabaseUrl::parse(url.as_str(), "the test harness").unwrap()
}

/// The template's name carries a digest of the migrations, so editing one builds a new template.
fn template_name() -> String {
    let mut hasher = Sha256::new();
    hasher.update(db::migration::SUPABASE_COMPAT_BOOTSTRAP);
    for m in db::migration::MIGRATIONS {
        hasher.update(m.file_name);
        hasher.update(m.sql);
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("app_executor_tpl_{hex}")
}

pub async fn admin_client() -> Client {
    db::connect(&url_for("postgres"), CONNECT_TIMEOUT)
        .await
        .expect("connect to the test server's postgres database")
}

/// Creates the migrated template once per server (an advisory lock makes concurrent test
/// processes wait for the first one), and sweeps databases of dead test processes.
async fn ensure_template(admin: &Client) -> String {
    let name = template_name();
    admin
        .execute("select pg_advisory_lock(4242001)", &[])
        .await
        .unwrap();
    sweep_leftovers(admin).await;
    let exists = admin
        .query_opt("select 1 from pg_database where datname = $1", &[&name])
        .await
        .unwrap()
        .is_some();
    if !exists {
        let building = format!("{name}_building");
        // One statement per call: CREATE/DROP DATABASE cannot run in the implicit transaction
        // of a multi-statement batch.
        admin
            .batch_execute(&format!("drop database if exists {building} with (force)"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("create database {building}"))
            .await
            .unwrap();
        {
            let mut client = db::connect(&url_for(&building), CONNECT_TIMEOUT)
                .await
                .unwrap();
            db::migration::migrate(&mut client, false)
                .await
                .unwrap_or_else(|e| panic!("migrating the template database failed: {e}"));
        }
        admin
            .batch_execute(&format!("alter database {building} rename to {name}"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("alter database {name} is_template true"))
            .await
            .unwrap();
    }
    admin
        .execute("select pg_advisory_unlock(4242001)", &[])
        .await
        .unwrap();
    name
}

async fn sweep_leftovers(admin: &Client) {
    let rows = admin
        .query(
            "select datname from pg_database where datname like 't\\_%'",
            &[],
        )
        .await
        .unwrap();
    for row in rows {
        let name: String = row.get(0);
        let pid = name.split('_').nth(1).and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = admin
                .batch_execute(&format!("drop database if exists {name} with (force)"))
                .await;
        }
    }
}

/// A database of its own for one test, migrated, dropped on drop (unless attached).
pub struct TestDb {
    pub name: String,
    pub url: DatabaseUrl,
    owned: bool,
}

impl TestDb {
    /// A migrated database on a PostgreSQL server of the test's own, in a fresh directory under
    /// `target/tmp` named `<prefix>-<uuid>`: for tests that stop or restart the server (doing
    /// that to the shared one would break the other tests). Returns the cluster to stop or
    /// restart, and the database.
    pub async fn private_cluster(prefix: &str) -> (EmbeddedPostgres, Self) {
        let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        let cluster =
            tokio::task::spawn_blocking(move || EmbeddedPostgres::ensure_running(&root).unwrap())
                .await
                .unwrap();
        let db = Self::attach(cluster.url("postgres"));
        let mut client = db.client().await;
        app_executor::db::migration::migrate(&mut client, false)
            .await
            .unwrap();
        (cluster, db)
    }

    /// An existing database on another server (e.g. a test's private cluster); not dropped.
    pub fn attach(url: DatabaseUrl) -> Self {
        Self {
            name: String::new(),
            url,
            owned: false,
        }
    }

    /// A fresh database cloned from the migrated template.
    pub async fn migrated() -> Self {
        let admin = admin_client().await;
        let template = ensure_template(&admin).await;
        Self::create(&admin, Some(&template)).await
    }

    /// A fresh, empty database (nothing migrated).
    pub async fn empty() -> Self {
        let admin = admin_client().await;
        Self::create(&admin, None).await
    }

    async fn create(admin: &Client, template: Option<&str>) -> Self {
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple().to_string().get(..12).unwrap()
        );
        let from = template
            .map(|t| format!(" template {t}"))
            .unwrap_or_default();
        admin
            .batch_execute(&format!("create database {name}{from}"))
            .await
            .unwrap();
        let url = url_for(&name);
        Self {
            name,
            url,
            owned: true,
        }
    }

    /// A new superuser session on this database (bypasses RLS, like the daemon).
    pub async fn client(&self) -> Client {
        db::connect(&self.url, CONNECT_TIMEOUT).await.unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on; use a thread with a
        // runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let admin = admin_client().await;
                let _ = admin
                    .batch_execute(&format!("drop database if exists {name} with (force)"))
                    .await;
            });
        })
        .join();
    }
}

/// A company and an application of its own, as `(company, app)` (the app is not assigned to
/// the company; RLS tests do that themselves).
pub async fn insert_tenant(client: &Client) -> (uuid::Uuid, uuid::Uuid) {
    let company = client
        .query_one(
            "insert into public.companies (name) values ('co') returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let app = client
        .query_one(
            "insert into public.applications (name) values ('app') returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    (company, app)
}
