//! `app-executor demo` from scratch: its own private PostgreSQL cluster (no database
//! configured), local storage, real Docker and the offline runtime image, examples/hello.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Instant;

use crate::harness::{binary, docker};

fn demo(state: &std::path::Path) -> (bool, String) {
    let out = Command::new(binary())
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/executor.toml"),
            "demo",
        ])
        .args([
            "--app-dir",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello"),
        ])
        .env_remove("DATABASE_URL")
        .env_remove("APP_EXECUTOR_DATABASE__URL")
        .env("APP_EXECUTOR_EXECUTOR__STATE_DIR", state)
        .env("APP_EXECUTOR_SANDBOX__IMAGE", docker::runtime_image())
        .env("APP_EXECUTOR_SANDBOX__PULL", "never")
        .env("APP_EXECUTOR_OPS__LISTEN", "127.0.0.1:0")
        .env(
            format!("APP_EXECUTOR_SANDBOX__LABELS__{}", docker::TEST_LABEL),
            state.file_name().unwrap(),
        )
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_demo_runs_the_sample_app_on_a_private_database_and_a_second_demo_reuses_everything() {
    // Under target/ (not a private /tmp directory): the cluster runs as the postgres user,
    // which must reach it.
    let state = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    let (ok, text) = demo(state.path());
    assert!(ok, "{text}");
    assert!(text.contains("private PostgreSQL cluster"), "{text}");
    assert!(text.contains(": success"), "{text}");
    assert!(
        text.contains("| Hello, app "),
        "the sample's stdout is printed: {text}"
    );
    assert!(
        text.contains("result (/output/result.json): {\"greeting\":\"Hello, app "),
        "{text}"
    );
    assert!(text.contains("demo finished: the run succeeded"), "{text}");

    let started = Instant::now();
    let (ok, text) = demo(state.path());
    let second = started.elapsed();
    assert!(ok, "{text}");
    assert!(text.contains("already published"), "{text}");
    assert!(text.contains("0 applied now"), "{text}");
    eprintln!("second demo took {second:?}");
    docker::assert_no_containers(&state.path().file_name().unwrap().to_string_lossy());
}
