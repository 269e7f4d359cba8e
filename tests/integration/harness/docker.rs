//! A running Docker engine and the offline runtime image, for tests that run containers.
//!
//! `scripts/ensure-docker` installs/starts the engine when needed; `scripts/build-runtime-image`
//! assembles node 20 + pnpm 9 from the host and `docker import`s it (cached by a key of its
//! inputs). Every container a test starts carries the label [`TEST_LABEL`]`=<test id>`, and
//! [`assert_no_containers`] checks that none is left.

use std::process::Command;
use std::sync::OnceLock;

pub const TEST_LABEL: &str = "app-executor.test";

fn script(name: &str) -> String {
    format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Ensures the engine answers; panics with the script's output otherwise.
pub fn ensure_engine() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let out = Command::new(script("ensure-docker")).output().unwrap();
        assert!(
            out.status.success(),
            "no Docker engine: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// The tag of the node + pnpm runtime image, built on first use.
pub fn runtime_image() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        ensure_engine();
        let out = Command::new(script("build-runtime-image"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "building the runtime image failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

/// The tag of the runtime image without pnpm (npm only), built on first use.
pub fn npm_runtime_image() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        ensure_engine();
        let out = Command::new(script("build-runtime-image"))
            .arg("--without-pnpm")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "building the npm runtime image failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

/// Containers with label `key=value` that the engine created between `since` and now.
pub fn containers_created_since(since: &str, test_id: &str, phase: &str) -> usize {
    let out = Command::new("docker")
        .args([
            "events",
            "--since",
            since,
            "--until",
            &unix_now(),
            "--format",
            "{{.ID}}",
        ])
        .args(["--filter", "event=create", "--filter"])
        .arg(format!("label={TEST_LABEL}={test_id}"))
        .args(["--filter", &format!("label=app-executor.phase={phase}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().lines().count()
}

/// Seconds since the epoch, as `docker events` wants them.
pub fn unix_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}

/// Ids of containers (running or not) labelled with `test_id`.
pub fn containers_labelled(test_id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label={TEST_LABEL}={test_id}"))
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

pub fn assert_no_containers(test_id: &str) {
    let left = containers_labelled(test_id);
    assert!(left.is_empty(), "containers left behind: {left:?}");
}
