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

/// Ensures dockerd has the gVisor runtime `runsc` registered as `scripts/ensure-gvisor` does it;
/// panics with the script's output otherwise.
pub fn ensure_gvisor() {
    let out = Command::new(script("ensure-gvisor")).output().unwrap();
    assert!(
        out.status.success(),
        "gVisor unavailable: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The host's address on Docker's default bridge network (reachable from containers there).
///
/// A freshly installed engine reports only the `Subnet` in the bridge's IPAM config, no
/// `Gateway`; the address is then read off the bridge's interface on the host (`docker0` unless
/// the engine names another in `com.docker.network.bridge.name`).
pub fn bridge_gateway() -> String {
    ensure_engine();
    let inspect = |format: &str| {
        let out = Command::new("docker")
            .args(["network", "inspect", "bridge", "--format", format])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker network inspect bridge: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let gateway = inspect("{{range .IPAM.Config}}{{.Gateway}} {{end}}");
    if let Some(gateway) = gateway.split_whitespace().find(|g| g.contains('.')) {
        return gateway.to_owned();
    }
    let name = inspect(r#"{{index .Options "com.docker.network.bridge.name"}}"#);
    let name = if name.is_empty() || name == "<no value>" {
        "docker0".to_owned()
    } else {
        name
    };
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", &name])
        .output()
        .unwrap_or_else(|e| panic!("ip (iproute2) is needed to read {name}'s address: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    // `5: docker0    inet 172.17.0.1/16 brd ... scope global docker0`
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("the bridge {name} has no IPv4 address: {text:?}"))
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

/// What a `docker` listing command prints, one word per id or name.
pub fn docker_list(args: &[&str]) -> Vec<String> {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?} failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Ids of containers (running or not) labelled with `test_id`.
pub fn containers_labelled(test_id: &str) -> Vec<String> {
    docker_list(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label={TEST_LABEL}={test_id}"),
    ])
}

/// The gid of the `docker` group, whose members may use the engine's socket.
pub fn docker_group_id() -> u32 {
    let out = Command::new("getent")
        .args(["group", "docker"])
        .output()
        .unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    line.split(':')
        .nth(2)
        .and_then(|gid| gid.parse().ok())
        .unwrap_or_else(|| panic!("no docker group on this host: {line:?}"))
}

/// The `/output` volumes a test's daemons made (their names).
pub fn volumes_labelled(test_id: &str) -> Vec<String> {
    docker_list(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label={TEST_LABEL}={test_id}"),
    ])
}

/// Neither containers nor `/output` volumes of the test are left, once its daemons are gone:
/// within 20 s, the time a killed daemon's reaper gets to remove them (spare `/output` keepers
/// included).
pub fn assert_no_containers(test_id: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (containers, volumes) = (containers_labelled(test_id), volumes_labelled(test_id));
        if containers.is_empty() && volumes.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: containers {containers:?}, volumes {volumes:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
