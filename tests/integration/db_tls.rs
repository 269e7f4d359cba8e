//! TLS to PostgreSQL with libpq's `sslmode` meanings, against a real server with `ssl = on` and
//! certificates made by `openssl` for the test: a CA, and a server certificate for `localhost`
//! only (so connecting to 127.0.0.1 is a name mismatch), plus an unrelated CA.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use app_executor::db::DatabaseUrl;

use app_executor::embedded_postgres::EmbeddedPostgres;

use crate::harness::postgres::{url_for, TestDb};

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed (scripts/test installs it)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Key options for `openssl req`: an EC P-256 key, or RSA for `rsa`.
const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];
const RSA_KEY: [&str; 3] = ["-newkey", "rsa:2048", "-nodes"];
const ED25519_KEY: [&str; 3] = ["-newkey", "ed25519", "-nodes"];

/// A self-signed CA `<name>.crt` / `<name>.key` in `dir`.
fn make_ca(dir: &Path, name: &str, key: &[&str]) {
    let (key_file, crt, subject) = (
        format!("{name}.key"),
        format!("{name}.crt"),
        format!("/CN=test {name}"),
    );
    let mut args = vec!["req", "-x509", "-days", "2", "-subj", &subject];
    args.extend(key);
    args.extend(["-keyout", &key_file, "-out", &crt]);
    openssl(dir, &args);
}

/// `server.crt` / `server.key` for `localhost` in `dir`, signed by the CA `ca` with the
/// signature hash `digest` (`sha256`, `sha384`, ...; ignored for an Ed25519 CA).
fn make_server_certificate(dir: &Path, ca: &str, key: &[&str], digest: &str) {
    let mut args = vec![
        "req",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ];
    args.extend(key);
    openssl(dir, &args);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost\n").unwrap();
    let (ca_crt, ca_key, digest) = (
        format!("{ca}.crt"),
        format!("{ca}.key"),
        format!("-{digest}"),
    );
    let mut args = vec![
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        &ca_crt,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.crt",
    ];
    if !key.contains(&"ed25519") {
        args.push(&digest);
    }
    openssl(dir, &args);
}

/// Writes `ca.crt`, `other-ca.crt`, `server.crt` and `server.key` (for `localhost`) into `dir`.
fn make_certificates(dir: &Path) {
    make_ca(dir, "ca", &EC_KEY);
    make_ca(dir, "other-ca", &EC_KEY);
    make_server_certificate(dir, "ca", &EC_KEY, "sha256");
}

/// Puts `certs/server.crt` and `server.key` in the cluster's data directory, owned by the
/// server's user as PostgreSQL insists, and has the server load them (`ssl = on`).
async fn serve_certificate(cluster: &EmbeddedPostgres, db: &TestDb, certs: &Path) {
    let data = cluster.root().join("data");
    for name in ["server.crt", "server.key"] {
        std::fs::copy(certs.join(name), data.join(name)).unwrap();
        if running_as_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres", data.join(name).to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success());
        }
    }
    std::fs::set_permissions(
        data.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let admin = db.client().await;
    admin
        .batch_execute("alter system set ssl = on")
        .await
        .unwrap();
    admin
        .query_one("select pg_reload_conf()", &[])
        .await
        .unwrap();
}

/// Waits until a new session to `url` connects (the reload is asynchronous).
async fn wait_until_connects(url: &str, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while session_uses_tls(url).await != Ok(true) {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the session `url` opens is encrypted, or why it could not be opened.
async fn session_uses_tls(url: &str) -> Result<bool, String> {
    let url = DatabaseUrl::parse(url, "the test").unwrap();
    let client = app_executor::db::connect(&url, Duration::from_secs(10))
        .await
        .map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        })?;
    Ok(app_executor::db::session_tls(&client)
        .await
        .unwrap()
        .is_some())
}

#[tokio::test]
async fn each_sslmode_encrypts_and_checks_the_server_as_libpq_does() {
    let (cluster, db) = TestDb::private_cluster("tls").await;
    let cluster = StopOnDrop(cluster);
    let cluster = &cluster.0;
    let certs = cluster.root().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let certs_for_openssl = certs.clone();
    tokio::task::spawn_blocking(move || make_certificates(&certs_for_openssl))
        .await
        .unwrap();
    serve_certificate(cluster, &db, &certs).await;

    let port = cluster.port();
    let ca = certs.join("ca.crt");
    let other_ca = certs.join("other-ca.crt");
    let url =
        |host: &str, query: String| format!("postgres://postgres@{host}:{port}/postgres{query}");
    let with = |mode: &str, root: Option<&Path>| match root {
        Some(root) => format!("?sslmode={mode}&sslrootcert={}", root.display()),
        None => format!("?sslmode={mode}"),
    };
    wait_until_connects(
        &url("127.0.0.1", with("require", None)),
        "the server never offered TLS",
    )
    .await;

    let encrypted = [
        ("disable", url("127.0.0.1", with("disable", None)), false),
        ("no sslmode (prefer)", url("127.0.0.1", String::new()), true),
        ("require", url("127.0.0.1", with("require", None)), true),
        (
            "verify-full, right CA and name",
            url("localhost", with("verify-full", Some(&ca))),
            true,
        ),
        (
            "verify-ca, name mismatch",
            url("127.0.0.1", with("verify-ca", Some(&ca))),
            true,
        ),
    ];
    for (case, url, tls) in encrypted {
        assert_eq!(session_uses_tls(&url).await, Ok(tls), "{case}: {url}");
    }

    let refused = [
        (
            "verify-full, name mismatch",
            url("127.0.0.1", with("verify-full", Some(&ca))),
            "certificate not valid for name \"127.0.0.1\"",
        ),
        (
            "verify-full, unrelated CA",
            url("localhost", with("verify-full", Some(&other_ca))),
            "invalid peer certificate",
        ),
        (
            "verify-full, public roots only",
            url("localhost", with("verify-full", None)),
            "invalid peer certificate",
        ),
        (
            "require with sslrootcert checks the chain",
            url("localhost", with("require", Some(&other_ca))),
            "invalid peer certificate",
        ),
    ];
    for (case, url, reason) in refused {
        let error = session_uses_tls(&url).await.unwrap_err();
        assert!(
            error.contains("cannot connect to the database") && error.contains(reason),
            "{case}: {error}"
        );
    }

    // The pool every daemon component uses goes through the same connector.
    let verified = DatabaseUrl::parse(
        &url("localhost", with("verify-full", Some(&ca))),
        "the test",
    )
    .unwrap();
    let pool = app_executor::db::pool(&verified, Duration::from_secs(10), 2).unwrap();
    app_executor::db::ping(&pool).await.unwrap();
    drop(pool);

    // `check` says how the session travels.
    let out = Command::new(crate::harness::binary())
        .args(["check", "--json"])
        .env("DATABASE_URL", verified.expose())
        .env_remove("APP_EXECUTOR_CONFIG")
        .current_dir(cluster.root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("reachable over TLSv1."), "{stdout}");
}

/// A password login over TLS is bound to the server's certificate (`SCRAM-SHA-256-PLUS`)
/// whichever hash signed it, so `channel_binding=require` connects. A certificate whose
/// signature names no hash (Ed25519) gets plain SCRAM: the default accepts it, `require` refuses.
#[tokio::test]
async fn password_logins_over_tls_are_bound_to_the_server_certificate() {
    let (cluster, db) = TestDb::private_cluster("tls-scram").await;
    let cluster = StopOnDrop(cluster);
    let cluster = &cluster.0;
    db.client()
        .await
        .batch_execute("create role binder login password 'bind-secret'")
        .await
        .unwrap();
    // Password logins for `binder` over TLS; the other rules stay as initdb wrote them. The
    // reload in `serve_certificate` applies it.
    let hba = cluster.root().join("data/pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("hostssl all binder all scram-sha-256\n{rules}"),
    )
    .unwrap();

    let port = cluster.port();
    let cases: [(&str, &[&str], &str, bool); 4] = [
        ("ec-sha256", &EC_KEY, "sha256", true),
        ("ec-sha384", &EC_KEY, "sha384", true),
        ("rsa-sha512", &RSA_KEY, "sha512", true),
        ("ed25519", &ED25519_KEY, "", false),
    ];
    for (case, key, digest, bound) in cases {
        let certs = cluster.root().join(case);
        std::fs::create_dir_all(&certs).unwrap();
        let (dir, key_args) = (certs.clone(), key.to_vec());
        tokio::task::spawn_blocking(move || {
            make_ca(&dir, "ca", &key_args);
            make_server_certificate(&dir, "ca", &key_args, digest);
        })
        .await
        .unwrap();
        serve_certificate(cluster, &db, &certs).await;
        let login = |password: &str, binding: &str| {
            format!(
                "postgres://binder:{password}@localhost:{port}/postgres\
                 ?sslmode=verify-full&sslrootcert={}&channel_binding={binding}",
                certs.join("ca.crt").display()
            )
        };
        // Only this case's CA verifies this case's certificate: a session means it is served.
        wait_until_connects(
            &login("bind-secret", "disable"),
            &format!("{case}: the server never served the new certificate"),
        )
        .await;
        // The default uses the binding when it has one: a wrong hash would fail every login.
        assert_eq!(
            session_uses_tls(&login("bind-secret", "prefer")).await,
            Ok(true),
            "{case}: channel_binding=prefer"
        );
        let required = session_uses_tls(&login("bind-secret", "require")).await;
        if bound {
            assert_eq!(required, Ok(true), "{case}: channel_binding=require");
        } else {
            let error = required.unwrap_err();
            assert!(error.contains("channel binding"), "{case}: {error}");
        }
        // The login really is SCRAM with the password, not a trust rule.
        let error = session_uses_tls(&login("wrong", "prefer"))
            .await
            .unwrap_err();
        assert!(
            error.contains("password authentication failed"),
            "{case}: {error}"
        );
    }
}

#[tokio::test]
async fn require_refuses_a_server_without_tls() {
    // The shared test server runs without TLS.
    let db = TestDb::migrated().await;
    let plain = url_for(&db.name);
    let required = format!("{}?sslmode=require", plain.expose());
    let error = session_uses_tls(&required).await.unwrap_err();
    assert!(error.contains("cannot connect to the database"), "{error}");
    assert_eq!(
        session_uses_tls(plain.expose()).await,
        Ok(false),
        "prefer falls back"
    );
}

/// Stops the test's private cluster however the test ends (a failed assertion included).
struct StopOnDrop(app_executor::embedded_postgres::EmbeddedPostgres);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.stop();
    }
}

/// Root must hand the key to the server's user (`postgres`), which PostgreSQL insists on.
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
