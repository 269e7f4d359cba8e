//! The Docker half of the harness: an engine answers, the offline runtime image works, and
//! labelled containers are accounted for.

use std::process::Command;

use crate::harness::docker::{assert_no_containers, ensure_engine, runtime_image, TEST_LABEL};

#[test]
fn the_runtime_image_runs_node_and_pnpm_as_a_non_root_user_and_leaves_no_container() {
    ensure_engine();
    let image = runtime_image();
    let test_id = uuid::Uuid::new_v4().to_string();
    let out = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            "1000:1000",
            "--label",
        ])
        .arg(format!("{TEST_LABEL}={test_id}"))
        .arg(image)
        .args([
            "sh",
            "-c",
            "node -e 'console.log(process.version, process.getuid())' && pnpm --version",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    assert!(lines.next().unwrap().starts_with("v20."), "{stdout}");
    assert!(stdout.contains(" 1000"), "{stdout}");
    assert!(lines.next().unwrap().starts_with("9."), "{stdout}");
    assert_no_containers(&test_id);
}

#[test]
fn a_leftover_labelled_container_is_detected() {
    ensure_engine();
    let image = runtime_image();
    let test_id = uuid::Uuid::new_v4().to_string();
    let created = Command::new("docker")
        .args(["create", "--label"])
        .arg(format!("{TEST_LABEL}={test_id}"))
        .args([image, "true"])
        .output()
        .unwrap();
    assert!(created.status.success());
    let caught = std::panic::catch_unwind(|| assert_no_containers(&test_id));
    Command::new("docker")
        .args(["rm", "-f", String::from_utf8_lossy(&created.stdout).trim()])
        .output()
        .unwrap();
    assert!(caught.is_err(), "a leftover container went unnoticed");
    assert_no_containers(&test_id);
}
