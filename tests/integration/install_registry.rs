//! Installs from a registry as an operator configures it (`[install]`): a private registry
//! double on the Docker bridge that wants a bearer token, like Verdaccio or a hosted npm
//! registry with auth. The token reaches pnpm through the generated `.npmrc` only: the install
//! works with it, fails naming the registry and the 401 without it, and it is in no log and in
//! nothing the run container sees.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;
use sha2::Digest;

use crate::harness::apps::{enqueue, publish_ok, run_record, run_stdout, write_app};
use crate::harness::daemon::{run_until_idle, DaemonOptions};
use crate::harness::{insert_tenant, TestDb};

const TOKEN: &str = "npm_t0ken-that-must-stay-secret";

/// `@acme/greet@1.0.0` as an npm tarball (`package/…`, gzip).
fn greet_tarball() -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (name, body) in [
        (
            "package/package.json",
            r#"{"name": "@acme/greet", "version": "1.0.0", "main": "index.js"}"#,
        ),
        (
            "package/index.js",
            "module.exports = () => 'hello from the private registry';\n",
        ),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, body.as_bytes())
            .unwrap();
    }
    let mut gz = builder.into_inner().unwrap();
    gz.flush().unwrap();
    gz.finish().unwrap()
}

struct Registry {
    url: String,
    tarball: Vec<u8>,
    /// Every request: its path and whether it carried the token.
    seen: Mutex<Vec<(String, bool)>>,
}

async fn serve(State(registry): State<Arc<Registry>>, uri: Uri, headers: HeaderMap) -> Response {
    let authorized = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    let path = uri.path().to_owned();
    registry
        .seen
        .lock()
        .unwrap()
        .push((path.clone(), authorized));
    if !authorized {
        return (StatusCode::UNAUTHORIZED, "authentication required").into_response();
    }
    if path.ends_with(".tgz") {
        return registry.tarball.clone().into_response();
    }
    if path == "/@acme%2fgreet" || path == "/@acme%2Fgreet" || path == "/@acme/greet" {
        let integrity = format!(
            "sha512-{}",
            base64::engine::general_purpose::STANDARD
                .encode(sha2::Sha512::digest(&registry.tarball))
        );
        let packument = json!({
            "name": "@acme/greet",
            "dist-tags": {"latest": "1.0.0"},
            "versions": {"1.0.0": {
                "name": "@acme/greet", "version": "1.0.0",
                "dist": {"tarball": format!("{}@acme/greet/-/greet-1.0.0.tgz", registry.url), "integrity": integrity}
            }}
        });
        return axum::Json(packument).into_response();
    }
    (StatusCode::NOT_FOUND, "not found").into_response()
}

/// The registry double, listening on the Docker bridge's gateway (reachable from containers).
async fn start_registry() -> Arc<Registry> {
    let gateway = crate::harness::docker::bridge_gateway();
    let listener = tokio::net::TcpListener::bind((gateway.as_str(), 0))
        .await
        .unwrap();
    let registry = Arc::new(Registry {
        url: format!("http://{}/", listener.local_addr().unwrap()),
        tarball: greet_tarball(),
        seen: Mutex::default(),
    });
    let router = axum::Router::new()
        .fallback(serve)
        .with_state(registry.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    registry
}

/// executor.toml with its `[install]` section (its last) replaced by `install`.
fn config_with(dir: &Path, install: &str) -> std::path::PathBuf {
    let mut base =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/executor.toml")).unwrap();
    let at = base
        .find("\n[install]\n")
        .expect("executor.toml ends with its [install] section");
    assert!(
        !base[at + 1..].contains("\n["),
        "[install] is no longer the last section of executor.toml"
    );
    base.truncate(at);
    let path = dir.join("executor.toml");
    std::fs::write(&path, format!("{base}\n[install]\n{install}\n")).unwrap();
    path
}

/// A production daemon on `state` whose `[install]` installs from `registry`, with the token of
/// `credential = (name, token)` for it when given (through the environment, as an operator
/// sets it).
fn registry_daemon(
    state: &Path,
    registry: &str,
    credential: Option<(&str, &str)>,
) -> DaemonOptions {
    let mut install = format!("registry = \"{registry}\"\n");
    if let Some((name, _)) = credential {
        install.push_str(&format!("tokens = {{ \"{registry}\" = \"{name}\" }}\n"));
    }
    let config = config_with(state, &install);
    let mut options = DaemonOptions::production(state);
    options
        .env
        .push(("APP_EXECUTOR_CONFIG".into(), config.display().to_string()));
    if let Some((name, token)) = credential {
        options.env.push((
            app_executor::sandbox::registry::token_env(name),
            token.to_owned(),
        ));
    }
    options
}

/// The error message of a run that must have failed its install.
fn install_failure(record: &crate::harness::apps::RunRecord, log: &str) -> String {
    assert_eq!(
        record.summary(),
        "failed/install_failed",
        "{record:?}\n{log}"
    );
    record.error_message.clone().unwrap_or_default()
}

/// The run failed its install naming `registry` and the 401 it answered.
fn assert_refused_with_401(record: &crate::harness::apps::RunRecord, log: &str, registry: &str) {
    let message = install_failure(record, log);
    assert!(
        message.contains("401") && message.contains(registry.trim_end_matches('/')),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_registry_with_a_token_installs_and_the_token_stays_out_of_logs_and_runs() {
    crate::harness::docker::ensure_engine();
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let registry = start_registry().await;
    let (company, app) = insert_tenant(&client).await;
    let dir = write_app(
        &[
            (
                "index.js",
                r#"const fs = require("fs");
console.log(require("@acme/greet")());
const seen = JSON.stringify(process.env) + (fs.existsSync("/app/.npmrc") ? fs.readFileSync("/app/.npmrc", "utf8") : "");
console.log(seen.includes("t0ken") ? "TOKEN VISIBLE" : "no token in the run");"#,
            ),
            (
                "package.json",
                r#"{"name": "uses-acme", "version": "1.0.0", "dependencies": {"@acme/greet": "1.0.0"}}"#,
            ),
            // The app's own choice of registry is the operator's to make: ignored.
            (".npmrc", "registry=http://127.0.0.1:9/\nfetch-retries=0\n"),
        ],
        json!({"timeout": "2m", "memory_limit": "256MiB"}),
        json!([]),
    );
    publish_ok(&db, state.path(), dir.path(), app);
    let config = config_with(
        state.path(),
        &format!(
            "registry = \"{url}\"\ntokens = {{ \"{url}\" = \"acme-npm\" }}\n",
            url = registry.url
        ),
    );
    let with_token = registry_daemon(state.path(), &registry.url, Some(("acme-npm", TOKEN)));

    // Without the token the daemon does not start: the setting names the variable to set.
    let out = crate::harness::cli(&db, &["check"])
        .env("APP_EXECUTOR_CONFIG", &config)
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("APP_EXECUTOR_INSTALL_TOKEN_ACME_NPM"),
        "{text}"
    );

    let run = enqueue(&client, app, company, json!({})).await;
    let log = run_until_idle(&db, with_token).await;
    let record = run_record(&client, run).await;
    assert_eq!(record.summary(), "success/-", "{record:?}\n{log}");
    let stdout = run_stdout(&db, state.path(), run).await;
    assert!(
        stdout.contains("hello from the private registry")
            && stdout.contains("no token in the run"),
        "{stdout}"
    );
    assert!(!log.contains(TOKEN), "the daemon's log has the token");
    let seen = registry.seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|(p, _)| p.ends_with(".tgz")) && seen.iter().all(|(_, auth)| *auth),
        "{seen:?}"
    );

    // A registry that refuses the token (here: none sent, the server wants one): the install
    // fails naming the registry and the 401, and the message holds no token.
    registry.seen.lock().unwrap().clear();
    let refused = write_app(
        &[
            ("index.js", "require('@acme/greet');\n"),
            (
                "package.json",
                r#"{"name": "refused", "version": "1.0.1", "dependencies": {"@acme/greet": "1.0.0"}}"#,
            ),
        ],
        json!({"timeout": "2m"}),
        json!([]),
    );
    let (company, app) = insert_tenant(&client).await;
    publish_ok(&db, state.path(), refused.path(), app);
    let run = enqueue(&client, app, company, json!({})).await;
    let log = run_until_idle(&db, registry_daemon(state.path(), &registry.url, None)).await;
    assert_refused_with_401(&run_record(&client, run).await, &log, &registry.url);
}

/// The document's manifest example, as it is written (express in
/// `runtime.backend.dependencies`, no `package.json`), installed from the public npm registry
/// through this network's TLS-intercepting proxy, whose CA the host trusts: the setting hands
/// the host's bundle to the install container.
#[tokio::test(flavor = "multi_thread")]
async fn the_documents_express_example_installs_from_the_public_registry_with_the_hosts_ca_bundle()
{
    crate::harness::docker::ensure_engine();
    let bundle = "/etc/ssl/certs/ca-certificates.crt";
    assert!(
        Path::new(bundle).is_file(),
        "{bundle} is installed by scripts/test (ca-certificates)"
    );
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("manifest.json"),
        serde_json::to_vec_pretty(&json!({
            "name": "my-app",
            "version": "1.0.0",
            "type": "backend",
            "runtime": {"backend": {
                "type": "nodejs", "version": "20", "entrypoint": "index.js",
                "dependencies": {"express": "^4.18.2"}
            }},
            "config": {"timeout": "5m", "memory_limit": "256MiB"}
        }))
        .unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("index.js"),
        "const express = require('express');\nconsole.log('express app ready:', typeof express());\n",
    )
    .unwrap();
    let (company, app) = insert_tenant(&client).await;
    publish_ok(&db, state.path(), dir.path(), app);
    let run = enqueue(&client, app, company, json!({})).await;
    let mut options = DaemonOptions::production(state.path());
    options
        .env
        .push(("APP_EXECUTOR_INSTALL__CA_FILE".into(), bundle.into()));
    let log = run_until_idle(&db, options).await;
    let record = run_record(&client, run).await;
    assert_eq!(record.summary(), "success/-", "{record:?}\n{log}");
    let stdout = run_stdout(&db, state.path(), run).await;
    assert!(stdout.contains("express app ready: function"), "{stdout}");
}

/// A TCP server on the Docker bridge's gateway that only counts connections: a host an install
/// must not reach.
async fn start_counter() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let gateway = crate::harness::docker::bridge_gateway();
    let listener = tokio::net::TcpListener::bind((gateway.as_str(), 0))
        .await
        .unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    (address, count)
}

/// Probes of the network from inside an install: a direct TCP connection (`direct`) and an HTTP
/// request through the install's proxy (`via_proxy`), each settling to "connected", a status
/// code or an error code.
const PROBES_JS: &str = r#"
const net = require('net');
const http = require('http');
function direct(address) {
  const [host, port] = address.split(':');
  return new Promise((done) => {
    const socket = net.connect(Number(port), host);
    socket.setTimeout(3000);
    socket.on('connect', () => { socket.destroy(); done('connected'); });
    socket.on('error', (e) => done(e.code));
    socket.on('timeout', () => { socket.destroy(); done('timeout'); });
  });
}
function via_proxy(url) {
  const proxy = process.env.HTTP_PROXY;
  if (!proxy) return Promise.resolve('no proxy');
  const { hostname, port } = new URL(proxy);
  return new Promise((done) => {
    const request = http.request({ host: hostname, port, path: url, headers: { host: new URL(url).host } },
      (response) => { response.resume(); done(response.statusCode); });
    request.on('error', (e) => done(e.code));
    request.end();
  });
}
module.exports = { direct, via_proxy };
"#;

/// Registry-only egress (`[install] egress = "registries"`, the default): the install reaches
/// the registry and nothing else. A dependency fetched from another host fails the install
/// naming that host; code that runs during an install (a trusted app's `.pnpmfile.cjs` while
/// fetching, its lifecycle scripts after) can open no connection of its own, gets 403 from
/// the proxy for any other host, and the scripts see no network and no token at all. The other
/// host never sees a connection.
#[tokio::test(flavor = "multi_thread")]
async fn installs_reach_only_the_registries_and_lifecycle_scripts_run_offline() {
    crate::harness::docker::ensure_engine();
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let registry = start_registry().await;
    let registry_address = registry
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let (other, connections) = start_counter().await;

    // An app whose dependency lives on another host.
    let (company, leaky) = insert_tenant(&client).await;
    let dir = write_app(
        &[
            ("index.js", "require('leak');\n"),
            (
                "package.json",
                &json!({"name": "leaky", "version": "1.0.0", "dependencies": {
                    "@acme/greet": "1.0.0",
                    "leak": format!("http://{other}/leak-1.0.0.tgz"),
                }})
                .to_string(),
            ),
        ],
        json!({"timeout": "2m"}),
        json!([]),
    );
    publish_ok(&db, state.path(), dir.path(), leaky);
    let leaky_run = enqueue(&client, leaky, company, json!({})).await;

    // A trusted app (lifecycle scripts allowed) probing the network at both stages.
    let (company, trusted) = insert_tenant(&client).await;
    let targets = json!({"other": other, "registry": registry_address}).to_string();
    let pnpmfile = format!(
        r#"const fs = require('fs');
const {{ direct, via_proxy }} = require('./probes.js');
const targets = {targets};
module.exports = {{ hooks: {{ async afterAllResolved(lockfile) {{
  const probe = {{
    direct_other: await direct(targets.other),
    direct_registry: await direct(targets.registry),
    proxy_other: await via_proxy('http://' + targets.other + '/x'),
    proxy_registry: await via_proxy('http://' + targets.registry + '/@acme%2fgreet'),
  }};
  fs.writeFileSync('/app/fetch-probe.json', JSON.stringify(probe));
  return lockfile;
}} }} }};
"#
    );
    let postinstall = format!(
        r#"const fs = require('fs');
const {{ direct }} = require('./probes.js');
const targets = {targets};
(async () => {{
  const probe = {{
    fetch: JSON.parse(fs.readFileSync('/app/fetch-probe.json', 'utf8')),
    scripts: {{
      direct_other: await direct(targets.other),
      direct_registry: await direct(targets.registry),
      forwarder: await direct('127.0.0.1:3128'),
      proxy_env: process.env.HTTP_PROXY || process.env.HTTPS_PROXY || null,
      npmrc_has_token: fs.readFileSync('/app/.npmrc', 'utf8').includes('t0ken'),
    }},
  }};
  fs.mkdirSync('/app/node_modules/.probe', {{ recursive: true }});
  fs.writeFileSync('/app/node_modules/.probe/result.json', JSON.stringify(probe));
  // Privilege bits a script sets do not survive into the installed tree.
  fs.writeFileSync('/app/node_modules/.probe/planted', '#!/bin/sh\n');
  fs.chmodSync('/app/node_modules/.probe/planted', 0o6755);
  fs.chmodSync('/app/node_modules/.probe', 0o2755);
}})();
"#
    );
    let dir = write_app(
        &[
            (
                "index.js",
                "const fs = require('fs');\nconsole.log(require('@acme/greet')());\nconsole.log('PROBE ' + fs.readFileSync('/app/node_modules/.probe/result.json', 'utf8'));\nconsole.log('MODES ' + ['/app/node_modules/.probe/planted', '/app/node_modules/.probe'].map((p) => (fs.statSync(p).mode & 0o7777).toString(8)).join(' '));\n",
            ),
            ("probes.js", PROBES_JS),
            (".pnpmfile.cjs", &pnpmfile),
            ("postinstall.js", &postinstall),
            (
                "package.json",
                r#"{"name": "trusted", "version": "1.0.0", "dependencies": {"@acme/greet": "1.0.0"}, "scripts": {"postinstall": "node postinstall.js"}}"#,
            ),
        ],
        json!({"timeout": "2m"}),
        json!([]),
    );
    publish_ok(&db, state.path(), dir.path(), trusted);
    let trusted_run = enqueue(&client, trusted, company, json!({})).await;

    let mut options = registry_daemon(state.path(), &registry.url, Some(("acme-npm", TOKEN)));
    options.env.push((
        "APP_EXECUTOR_SANDBOX__INSTALL_SCRIPTS_APPS".into(),
        format!("[\"{trusted}\"]"),
    ));
    let log = run_until_idle(&db, options).await;

    let message = install_failure(&run_record(&client, leaky_run).await, &log);
    assert!(
        message.contains(&format!("the install tried to reach {other}"))
            && message.contains("[install] allow"),
        "the error names the refused host and the setting: {message}"
    );

    let record = run_record(&client, trusted_run).await;
    assert_eq!(record.summary(), "success/-", "{record:?}\n{log}");
    let stdout = run_stdout(&db, state.path(), trusted_run).await;
    assert!(
        stdout.contains("hello from the private registry"),
        "{stdout}"
    );
    assert!(
        stdout.contains("MODES 755 755"),
        "setuid/setgid kept: {stdout}"
    );
    let probe: serde_json::Value = serde_json::from_str(
        stdout
            .lines()
            .find_map(|line| line.strip_prefix("PROBE "))
            .unwrap_or_else(|| panic!("no probe in {stdout}")),
    )
    .unwrap();
    for stage in ["fetch", "scripts"] {
        for target in ["direct_other", "direct_registry"] {
            let outcome = &probe[stage][target];
            assert!(
                outcome.is_string() && outcome != "connected",
                "{stage}.{target} = {outcome}: {probe}"
            );
        }
    }
    assert_eq!(probe["fetch"]["proxy_other"], 403, "{probe}");
    // The registry through the proxy answers (401: the probe sends no token).
    assert_eq!(probe["fetch"]["proxy_registry"], 401, "{probe}");
    assert_ne!(probe["scripts"]["forwarder"], "connected", "{probe}");
    assert_eq!(
        probe["scripts"]["proxy_env"],
        serde_json::Value::Null,
        "{probe}"
    );
    assert_eq!(probe["scripts"]["npmrc_has_token"], false, "{probe}");
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the other host saw a connection"
    );
    assert!(!log.contains(TOKEN), "the daemon's log has the token");
}

/// Verdaccio from npm on loopback (`scripts/npm-mirror`), stopped when dropped. Loopback is
/// reachable from an install only because the daemon's proxy connects on its behalf.
struct Mirror {
    dir: std::path::PathBuf,
    url: String,
    token: String,
}

impl Mirror {
    fn start() -> Self {
        // Verdaccio's own install is kept under target/ between test runs; its storage is not
        // shared with the benchmark's.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/npm-mirror-test");
        let out =
            std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/npm-mirror"))
                .arg("start")
                .arg(&dir)
                .output()
                .unwrap();
        assert!(
            out.status.success(),
            "scripts/npm-mirror start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .unwrap()
                .trim()
                .to_owned()
        };
        Self {
            url: read("url"),
            token: read("token"),
            dir,
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ =
            std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/npm-mirror"))
                .arg("stop")
                .arg(&self.dir)
                .status();
    }
}

/// Every file under `dir` that holds `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file()
                && std::fs::read(&path)
                    .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
            {
                found.push(path);
            }
        }
    }
    found
}

/// A real private mirror: Verdaccio on loopback that wants a token for every package, as the
/// install's registry. The seed's express example installs through it (Verdaccio fetching from
/// the public registry behind it) with the token, and fails naming the mirror and the 401
/// without it. The token is in no log, no stored object, no cache entry (the whole state
/// directory is searched for it) and not in the run container's environment or files.
#[tokio::test(flavor = "multi_thread")]
async fn a_verdaccio_mirror_on_loopback_with_a_token_serves_the_install() {
    crate::harness::docker::ensure_engine();
    let mirror = Mirror::start();
    assert!(
        mirror.url.starts_with("http://127.0.0.1:"),
        "{}",
        mirror.url
    );
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let dir = write_app(
        &[(
            "index.js",
            r#"const express = require('express');
console.log('express app ready:', typeof express());
const fs = require('fs');
console.log('ENV ' + JSON.stringify(process.env));
console.log('NPMRC ' + (fs.existsSync('/app/.npmrc') ? fs.readFileSync('/app/.npmrc', 'utf8') : 'none'));"#,
        )],
        json!({"timeout": "5m", "memory_limit": "256MiB"}),
        json!([]),
    );
    // The seed's manifest example: dependencies in the manifest, no package.json.
    let manifest_path = dir.path().join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["runtime"]["backend"]["dependencies"] = json!({"express": "^4.18.2"});
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    let (company, app) = insert_tenant(&client).await;
    publish_ok(&db, state.path(), dir.path(), app);
    let run = enqueue(&client, app, company, json!({})).await;
    let options = registry_daemon(state.path(), &mirror.url, Some(("mirror", &mirror.token)));
    let log = run_until_idle(&db, options).await;
    let record = run_record(&client, run).await;
    assert_eq!(record.summary(), "success/-", "{record:?}\n{log}");
    let stdout = run_stdout(&db, state.path(), run).await;
    assert!(
        stdout.contains("express app ready: function") && stdout.contains("ENV {"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(&mirror.token),
        "the run sees the token: {stdout}"
    );
    assert!(
        !log.contains(&mirror.token),
        "the daemon's log has the token"
    );
    let holding = files_containing(state.path(), &mirror.token);
    assert!(holding.is_empty(), "the token is stored in {holding:?}");

    // Without the token (a fresh host, so nothing is cached): install_failed naming the mirror
    // and the 401.
    let bare = tempfile::tempdir().unwrap();
    let (company, app) = insert_tenant(&client).await;
    publish_ok(&db, bare.path(), dir.path(), app);
    let run = enqueue(&client, app, company, json!({})).await;
    let log = run_until_idle(&db, registry_daemon(bare.path(), &mirror.url, None)).await;
    assert_refused_with_401(&run_record(&client, run).await, &log, &mirror.url);
}

/// Under gVisor (`sandbox.runtime = "runsc"`, registered with gVisor's network stack off), the
/// install still reaches the registry: its one way out is the daemon's socket, which runsc
/// opens with `--host-uds=open` (scripts/ensure-gvisor).
#[tokio::test(flavor = "multi_thread")]
async fn a_registry_install_works_under_gvisor_without_a_network() {
    crate::harness::docker::ensure_gvisor();
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let registry = start_registry().await;
    let (company, app) = insert_tenant(&client).await;
    let dir = write_app(
        &[
            ("index.js", "console.log(require('@acme/greet')());\n"),
            (
                "package.json",
                r#"{"name": "under-gvisor", "version": "1.0.0", "dependencies": {"@acme/greet": "1.0.0"}}"#,
            ),
        ],
        json!({"timeout": "3m", "memory_limit": "256MiB"}),
        json!([]),
    );
    publish_ok(&db, state.path(), dir.path(), app);
    let run = enqueue(&client, app, company, json!({})).await;
    let options = registry_daemon(state.path(), &registry.url, Some(("acme-npm", TOKEN)))
        .sandbox("runtime", "runsc");
    let log = run_until_idle(&db, options).await;
    let record = run_record(&client, run).await;
    assert_eq!(record.summary(), "success/-", "{record:?}\n{log}");
    let stdout = run_stdout(&db, state.path(), run).await;
    assert!(
        stdout.contains("hello from the private registry"),
        "{stdout}"
    );
}
