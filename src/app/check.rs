//! `app-executor check`: the configuration, the database (and its migrations), storage with
//! the service key, and Docker with the runtime image, each as one line that names the fix.

use super::{database_url, storage};

use serde::Serialize;

use crate::config::Config;
use crate::db;
use crate::sandbox::Engine;

/// One line of `check`.
#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub ok: bool,
    pub checks: Vec<Check>,
    pub config: serde_json::Value,
}

impl CheckReport {
    /// The name of the first failing check.
    pub fn failed(&self) -> Option<&'static str> {
        self.checks.iter().find(|c| !c.ok).map(|c| c.name)
    }
}

/// `app-executor check`: the configuration is valid (it was loaded), the database is reachable
/// and its schema is current, the Docker engine answers, and storage accepts the credentials.
pub async fn check(config: &Config) -> CheckReport {
    let mut checks = vec![Check {
        name: "config",
        ok: true,
        detail: match &config.source_file {
            Some(path) => format!("loaded {}", path.display()),
            None => "defaults and environment (no config file)".into(),
        },
    }];
    checks.push(check_database(config).await);
    checks.push(check_docker(config).await);
    checks.push(check_storage(config).await);
    CheckReport {
        ok: checks.iter().all(|c| c.ok),
        checks,
        config: config.redacted_json(),
    }
}

async fn check_docker(config: &Config) -> Check {
    let (ok, detail) = match Engine::connect(&config.sandbox).await {
        Ok(engine) => {
            let image = config.sandbox.image_for("20");
            let present = engine
                .ensure_image(&image, crate::sandbox::PullPolicy::Never, None)
                .await
                .is_ok();
            (
                true,
                format!(
                    "{engine:?} reachable; image {image} {}",
                    if present {
                        "present".to_owned()
                    } else {
                        format!("not present (sandbox.pull = {:?})", config.sandbox.pull)
                    }
                ),
            )
        }
        Err(e) => (false, e.to_string()),
    };
    Check {
        name: "docker",
        ok,
        detail,
    }
}

async fn check_storage(config: &Config) -> Check {
    let fail = |detail: String| Check {
        name: "storage",
        ok: false,
        detail,
    };
    let storage = match storage(config) {
        Ok(storage) => storage,
        Err(e) => return fail(e.to_string()),
    };
    // The key must act as the service role; then a lookup of an object that need not exist
    // proves downloads are allowed too.
    if let Err(e) = crate::storage::verify_service_role(storage.as_ref()).await {
        return fail(e.to_string());
    }
    match storage
        .head(
            crate::storage::APP_STORAGE_BUCKET,
            "app-executor-check/probe",
        )
        .await
    {
        Ok(_) => Check {
            name: "storage",
            ok: true,
            detail: format!(
                "{:?} backend reachable, credentials accepted",
                config.storage.backend
            ),
        },
        Err(e) => fail(e.to_string()),
    }
}

async fn check_database(config: &Config) -> Check {
    let fail = |detail: String| Check {
        name: "database",
        ok: false,
        detail,
    };
    let url = match database_url(config) {
        Ok(url) => url,
        Err(e) => return fail(e.to_string()),
    };
    let client = match db::connect(url, config.database.connect_timeout).await {
        Ok(client) => client,
        Err(e) => return fail(e.to_string()),
    };
    // How the session travels, for whoever reads `check` (sslmode in the README).
    let transport = match db::session_tls(&client).await {
        Ok(Some(tls)) => format!("over {tls}"),
        Ok(None) => "without TLS".to_owned(),
        Err(e) => return fail(format!("{url}: {e}")),
    };
    match db::schema_version(&client).await {
        Ok(Some(version)) if version.as_str() >= db::migration::latest_version() => Check {
            name: "database",
            ok: true,
            detail: format!("{url} reachable {transport}, schema at {version}"),
        },
        Ok(Some(version)) => fail(format!(
            "{url} reachable but its schema is at {version}, older than {}; run `app-executor migrate`",
            db::migration::latest_version()
        )),
        Ok(None) => fail(format!(
            "{url} reachable but not migrated; run `app-executor migrate`"
        )),
        Err(e) => fail(format!("{url}: {e}")),
    }
}
