//! `manifest.json`: parsing and validation (DESIGN §6), and the comparison of the permissions a
//! manifest requires with those the platform granted.
//!
//! Validation collects every problem, each naming the field path and the bad value
//! (`runtime.backend.entrypoint = "../x.js": must stay inside the app directory`). Limits above
//! the host's maxima are clamped, and the clamping is reported, not refused. Pure, except that
//! paths are checked for existence when an app directory is given.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde_json::Value;

use super::resource::{HostLimits, ResourceLimits};

mod checker;
pub mod dependencies;
use checker::Checker;

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Manifest {
    pub name: String,
    #[serde(serialize_with = "display")]
    pub version: semver::Version,
    pub description: Option<String>,
    pub author: Option<String>,
    #[serde(rename = "type")]
    pub app_type: AppType,
    pub backend: Option<BackendRuntime>,
    pub frontend: Option<FrontendRuntime>,
    pub permissions: Vec<Permission>,
    /// After host defaults and clamping.
    pub limits: ResourceLimits,
}

fn display<T: fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppType {
    Backend,
    Frontend,
    Both,
}

/// `runtime.backend`: a Node.js program.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BackendRuntime {
    /// The Node.js version, as used in the image tag (`20`, `20.11`, `20.11.1`).
    pub node_version: String,
    /// Relative to the app root.
    pub entrypoint: String,
    pub package_manager: PackageManager,
    /// The packages the app needs. Without a `package.json` one is generated from these; with
    /// one, each must be declared there compatibly (see [`dependencies`]).
    pub dependencies: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageManager {
    Pnpm,
    Npm,
}

/// `runtime.frontend`: static files.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FrontendRuntime {
    pub entrypoint: String,
    pub assets: Vec<String>,
}

/// The permission kinds of the `app_permissions.permission_type` CHECK constraint: the original
/// document's six, then our two (`secrets`, `filesystem`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PermissionType {
    Storage,
    Network,
    Database,
    Api,
    System,
    Custom,
    Secrets,
    Filesystem,
}

impl PermissionType {
    pub const ALL: [Self; 8] = [
        Self::Storage,
        Self::Network,
        Self::Database,
        Self::Api,
        Self::System,
        Self::Custom,
        Self::Secrets,
        Self::Filesystem,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Storage => "storage",
            Self::Network => "network",
            Self::Database => "database",
            Self::Api => "api",
            Self::System => "system",
            Self::Custom => "custom",
            Self::Secrets => "secrets",
            Self::Filesystem => "filesystem",
        }
    }
}

impl std::str::FromStr for PermissionType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|p| p.as_str()).collect();
                format!("must be one of {}", names.join(", "))
            })
    }
}

/// One entry of `permissions`. `scope` (`app_permissions.permission_value`) defaults to `*`, `required`
/// to `true`: an app that lists a permission is taken to need it unless it says otherwise.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Permission {
    #[serde(rename = "type")]
    pub kind: PermissionType,
    pub scope: String,
    pub required: bool,
}

/// One problem with a manifest: the field path, its value as written (JSON), and the reason.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    /// `None` when the field is missing.
    pub value: Option<String>,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{} = {value}: {}", self.field, self.reason),
            None => write!(f, "{}: {}", self.field, self.reason),
        }
    }
}

/// A limit lowered to the host's maximum (reported, not an error).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Clamped {
    pub field: String,
    pub requested: String,
    pub applied: String,
}

impl fmt::Display for Clamped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = {}: above the host maximum, clamped to {}",
            self.field, self.requested, self.applied
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest.json is not valid JSON: {0}")]
    Json(String),
    #[error("manifest.json has {} problem(s):\n{}", .0.len(), .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<FieldError>),
}

/// A manifest that passed, with the limits that were clamped.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub manifest: Manifest,
    pub clamped: Vec<Clamped>,
}

/// Parses and validates `manifest.json`. With `app_dir`, the backend entrypoint must exist in
/// it as a regular file (not a symlink); the frontend's paths are build output, which the build
/// checks.
pub fn validate_manifest(
    text: &str,
    host: &HostLimits,
    app_dir: Option<&Path>,
) -> Result<Validated, ManifestError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| ManifestError::Json(e.to_string()))?;
    let mut check = Checker {
        errors: Vec::new(),
        app_dir,
    };
    let Some(root) = value.as_object() else {
        check.fail("(root)", Some(&value), "must be a JSON object");
        return Err(ManifestError::Invalid(check.errors));
    };
    let name = check.string(root, "name", "name", true).unwrap_or_default();
    if name.trim().is_empty() && root.get("name").is_some_and(Value::is_string) {
        check.fail("name", root.get("name"), "must not be empty");
    }
    let version = check
        .string(root, "version", "version", true)
        .and_then(|v| match semver::Version::parse(&v) {
            Ok(version) => Some(version),
            Err(e) => {
                check.fail(
                    "version",
                    root.get("version"),
                    &format!("not a semantic version ({e}); use e.g. \"1.0.0\""),
                );
                None
            }
        });
    let description = check.string(root, "description", "description", false);
    let author = match root.get("author") {
        Some(Value::Object(a)) => check.string(a, "name", "author.name", true),
        Some(_) => check.string(root, "author", "author", false),
        None => None,
    };
    let app_type = check
        .string(root, "type", "type", true)
        .and_then(|t| match t.as_str() {
            "backend" => Some(AppType::Backend),
            "frontend" => Some(AppType::Frontend),
            "both" => Some(AppType::Both),
            _ => {
                check.fail(
                    "type",
                    root.get("type"),
                    "must be \"backend\", \"frontend\" or \"both\"",
                );
                None
            }
        });
    let runtime = check.object(root, "runtime", "runtime", app_type.is_some());
    let wants = |part: AppType| app_type.is_some_and(|t| t == part || t == AppType::Both);
    let backend = runtime.and_then(|r| {
        check
            .object(r, "backend", "runtime.backend", wants(AppType::Backend))
            .and_then(|b| check.backend(b))
    });
    let frontend = runtime.and_then(|r| {
        check
            .object(r, "frontend", "runtime.frontend", wants(AppType::Frontend))
            .and_then(|f| check.frontend(f))
    });
    if let (Some(dir), Some(backend)) = (app_dir, &backend) {
        check_declared_dependencies(&mut check, dir, backend);
    }
    let permissions = check.permissions(root.get("permissions"));
    let mut clamped = Vec::new();
    let limits = check.limits(root.get("config"), host, &mut clamped);
    match (check.errors.is_empty(), version, app_type) {
        (true, Some(version), Some(app_type)) => Ok(Validated {
            manifest: Manifest {
                name,
                version,
                description,
                author,
                app_type,
                backend,
                frontend,
                permissions,
                limits,
            },
            clamped,
        }),
        _ => Err(ManifestError::Invalid(check.errors)),
    }
}

/// With a `package.json` in `dir`, every manifest dependency must be declared there
/// compatibly. A `package.json` that is not JSON is left to the install, which says so.
fn check_declared_dependencies(check: &mut Checker, dir: &Path, backend: &BackendRuntime) {
    if backend.dependencies.is_empty() {
        return;
    }
    let Ok(text) = std::fs::read_to_string(dir.join("package.json")) else {
        return;
    };
    let Ok(package) = serde_json::from_str::<Value>(&text) else {
        return;
    };
    for (name, reason) in dependencies::undeclared(&backend.dependencies, &package) {
        let wanted = Value::String(backend.dependencies[&name].clone());
        check.fail(
            &format!("runtime.backend.dependencies.{name}"),
            Some(&wanted),
            &reason,
        );
    }
}

/// A required permission the platform has not granted.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MissingPermission {
    #[serde(rename = "type")]
    pub kind: PermissionType,
    pub scope: String,
}

impl fmt::Display for MissingPermission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the manifest requires the {} permission (scope {:?}) but the platform has not granted it; grant it in app_permissions or mark it \"required\": false",
            self.kind.as_str(),
            self.scope
        )
    }
}

/// The manifest's required permissions that `granted` (the `app_permissions` rows: type,
/// scope) does not cover. A grant covers a requirement of the same type when its scope is equal
/// or `*`. Empty means the app may run.
pub fn missing_permissions(
    manifest: &Manifest,
    granted: &[(PermissionType, String)],
) -> Vec<MissingPermission> {
    manifest
        .permissions
        .iter()
        .filter(|p| p.required)
        .filter(|p| {
            !granted
                .iter()
                .any(|(kind, scope)| *kind == p.kind && (scope == "*" || *scope == p.scope))
        })
        .map(|p| MissingPermission {
            kind: p.kind,
            scope: p.scope.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn valid() -> Value {
        json!({
            "name": "hello",
            "version": "1.0.0",
            "description": "says hello",
            "author": {"name": "Ada"},
            "type": "backend",
            "runtime": {"backend": {
                "type": "nodejs", "version": "20", "entrypoint": "index.js",
                "package_manager": "pnpm", "dependencies": {"greeting": "1.0.0"}
            }},
            "permissions": [{"type": "network", "scope": "api.example.com", "required": true}],
            "config": {"timeout": "30s", "memory_limit": "256MB", "cpu_limit": 0.5}
        })
    }

    fn check(manifest: &Value) -> Result<Validated, ManifestError> {
        validate_manifest(&manifest.to_string(), &HostLimits::default(), None)
    }

    /// The problems of `manifest` with `pointer` set to `value`, as printed.
    fn problems_with(pointer: &str, value: Value) -> Vec<String> {
        let mut manifest = valid();
        *manifest.pointer_mut(pointer).unwrap() = value;
        match check(&manifest) {
            Err(ManifestError::Invalid(errors)) => errors.iter().map(ToString::to_string).collect(),
            other => panic!("{pointer} accepted: {other:?}"),
        }
    }

    #[test]
    fn a_complete_manifest_is_accepted_with_its_limits() {
        let validated = check(&valid()).unwrap();
        let m = validated.manifest;
        assert_eq!(m.version, semver::Version::new(1, 0, 0));
        assert_eq!(m.author.as_deref(), Some("Ada"));
        assert_eq!(m.backend.unwrap().entrypoint, "index.js");
        assert_eq!(m.limits.timeout, Duration::from_secs(30));
        assert_eq!(m.limits.memory_bytes, 256_000_000);
        assert_eq!(m.limits.cpu, 0.5);
        assert!(validated.clamped.is_empty());
    }

    #[test]
    fn each_bad_field_is_named_with_its_value() {
        let cases = [
            ("/name", json!(42), "name = 42: must be a string"),
            (
                "/version",
                json!("1.0"),
                "version = \"1.0\": not a semantic version",
            ),
            ("/type", json!("daemon"), "type = \"daemon\": must be"),
            (
                "/runtime/backend/type",
                json!("deno"),
                "runtime.backend.type = \"deno\"",
            ),
            (
                "/runtime/backend/version",
                json!("latest"),
                "runtime.backend.version = \"latest\"",
            ),
            (
                "/runtime/backend/entrypoint",
                json!("../x.js"),
                "runtime.backend.entrypoint = \"../x.js\": must stay inside the app directory",
            ),
            (
                "/runtime/backend/entrypoint",
                json!("/etc/passwd"),
                "runtime.backend.entrypoint = \"/etc/passwd\": must stay inside",
            ),
            (
                "/runtime/backend/package_manager",
                json!("yarn"),
                "runtime.backend.package_manager = \"yarn\"",
            ),
            (
                "/permissions/0/type",
                json!("root"),
                "permissions[0].type = \"root\": must be one of",
            ),
            (
                "/permissions/0/required",
                json!("yes"),
                "permissions[0].required = \"yes\"",
            ),
            (
                "/config/memory_limit",
                json!("-1"),
                "config.memory_limit = \"-1\": not a size",
            ),
            (
                "/config/memory_limit",
                json!("12XB"),
                "config.memory_limit = \"12XB\": not a size",
            ),
            (
                "/config/memory_limit",
                json!("0"),
                "config.memory_limit = \"0\": must be greater than zero",
            ),
            (
                "/config/cpu_limit",
                json!(0),
                "config.cpu_limit = 0: must be a positive number",
            ),
            (
                "/config/timeout",
                json!("soon"),
                "config.timeout = \"soon\": not a duration",
            ),
        ];
        for (pointer, value, expected) in cases {
            let problems = problems_with(pointer, value);
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "{pointer}: expected {expected:?} in {problems:?}"
            );
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let manifest =
            json!({"version": "x", "type": "backend", "runtime": {}, "config": {"cpu_limit": "0"}});
        let Err(ManifestError::Invalid(errors)) = check(&manifest) else {
            panic!()
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["name", "version", "runtime.backend", "config.cpu_limit"]
        );
        assert_eq!(
            errors[2].to_string(),
            "runtime.backend: missing; required by the app's type"
        );
    }

    #[test]
    fn size_forms_decimal_binary_and_docker_are_accepted() {
        for (form, bytes) in [
            ("256MB", 256_000_000),
            ("1GB", 1_000_000_000),
            ("512MiB", 512 << 20),
            ("256m", 256 << 20),
        ] {
            let mut manifest = valid();
            manifest["config"]["memory_limit"] = json!(form);
            assert_eq!(
                check(&manifest).unwrap().manifest.limits.memory_bytes,
                bytes,
                "{form}"
            );
        }
    }

    #[test]
    fn limits_above_the_host_maxima_are_clamped_and_reported() {
        let mut manifest = valid();
        manifest["config"] = json!({"timeout": "2h", "memory_limit": "8GiB", "cpu_limit": "16"});
        let validated = check(&manifest).unwrap();
        let host = HostLimits::default();
        assert_eq!(
            validated.manifest.limits,
            ResourceLimits {
                timeout: host.max_timeout,
                memory_bytes: host.max_memory,
                cpu: host.max_cpu,
                stop_grace: host.default_stop_grace,
            }
        );
        let reports: Vec<String> = validated.clamped.iter().map(ToString::to_string).collect();
        assert_eq!(
            reports,
            vec![
                "config.timeout = \"2h\": above the host maximum, clamped to 30m",
                "config.memory_limit = \"8GiB\": above the host maximum, clamped to 2GiB",
                "config.cpu_limit = \"16\": above the host maximum, clamped to 2",
            ]
        );
    }

    #[test]
    fn missing_limits_get_the_host_defaults() {
        let mut manifest = valid();
        manifest.as_object_mut().unwrap().remove("config");
        let limits = check(&manifest).unwrap().manifest.limits;
        let host = HostLimits::default();
        assert_eq!(
            (limits.timeout, limits.memory_bytes, limits.cpu),
            (host.default_timeout, host.default_memory, host.default_cpu)
        );
    }

    #[test]
    fn paths_must_exist_in_the_app_directory_when_given() {
        let dir = tempfile::tempdir().unwrap();
        let text = valid().to_string();
        let Err(ManifestError::Invalid(errors)) =
            validate_manifest(&text, &HostLimits::default(), Some(dir.path()))
        else {
            panic!()
        };
        assert_eq!(errors[0].field, "runtime.backend.entrypoint");
        assert!(errors[0].reason.contains("does not exist"), "{}", errors[0]);
        std::fs::write(dir.path().join("index.js"), "").unwrap();
        validate_manifest(&text, &HostLimits::default(), Some(dir.path())).unwrap();
    }

    #[test]
    fn frontend_paths_need_not_exist_before_the_build() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.js"), "").unwrap();
        let mut manifest = valid();
        manifest["type"] = json!("both");
        manifest["runtime"]["frontend"] =
            json!({"type": "static", "entrypoint": "dist/index.html", "assets": ["dist/"]});
        validate_manifest(
            &manifest.to_string(),
            &HostLimits::default(),
            Some(dir.path()),
        )
        .unwrap();
        manifest["runtime"]["frontend"]["assets"] = json!(["../elsewhere"]);
        let Err(ManifestError::Invalid(errors)) = validate_manifest(
            &manifest.to_string(),
            &HostLimits::default(),
            Some(dir.path()),
        ) else {
            panic!("an escaping asset path is refused")
        };
        assert_eq!(errors[0].field, "runtime.frontend.assets[0]");
    }

    #[test]
    fn required_permissions_not_granted_are_listed() {
        let mut manifest = valid();
        manifest["permissions"] = json!([
            {"type": "network", "scope": "api.example.com"},
            {"type": "storage", "scope": "reports", "required": true},
            {"type": "secrets", "required": false},
        ]);
        let m = check(&manifest).unwrap().manifest;
        let missing = missing_permissions(&m, &[(PermissionType::Network, "*".to_owned())]);
        assert_eq!(
            missing,
            vec![MissingPermission {
                kind: PermissionType::Storage,
                scope: "reports".into()
            }]
        );
        assert!(missing[0]
            .to_string()
            .contains("requires the storage permission (scope \"reports\")"));
        let granted = [
            (PermissionType::Network, "other.example.com".to_owned()),
            (PermissionType::Storage, "reports".to_owned()),
        ];
        assert_eq!(missing_permissions(&m, &granted).len(), 1);
        let granted = [
            (PermissionType::Network, "api.example.com".to_owned()),
            (PermissionType::Storage, "*".to_owned()),
        ];
        assert!(missing_permissions(&m, &granted).is_empty());
    }
}
