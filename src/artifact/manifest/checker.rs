//! Reading `manifest.json` field by field into the manifest types, collecting every problem
//! with its field path and value instead of stopping at the first. Used only by
//! [`super::validate_manifest`].

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use super::{
    BackendRuntime, Clamped, FieldError, FrontendRuntime, PackageManager, Permission,
    PermissionType,
};
use crate::artifact::resource::{
    parse_cpu, parse_memory, parse_timeout, HostLimits, ResourceLimits,
};
use crate::units::format_bytes;

/// Collects problems while reading fields.
pub(super) struct Checker<'a> {
    pub(super) errors: Vec<FieldError>,
    pub(super) app_dir: Option<&'a Path>,
}

impl Checker<'_> {
    pub(super) fn fail(&mut self, field: &str, value: Option<&Value>, reason: &str) {
        self.errors.push(FieldError {
            field: field.to_owned(),
            value: value.map(Value::to_string),
            reason: reason.to_owned(),
        });
    }

    pub(super) fn string(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        field: &str,
        required: bool,
    ) -> Option<String> {
        match obj.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.fail(field, Some(other), "must be a string");
                None
            }
            None if required => {
                self.fail(field, None, "missing; this field is required");
                None
            }
            None => None,
        }
    }

    pub(super) fn object<'v>(
        &mut self,
        obj: &'v Map<String, Value>,
        key: &str,
        field: &str,
        required: bool,
    ) -> Option<&'v Map<String, Value>> {
        match obj.get(key) {
            Some(Value::Object(o)) => Some(o),
            Some(other) => {
                self.fail(field, Some(other), "must be an object");
                None
            }
            None if required => {
                self.fail(field, None, "missing; required by the app's type");
                None
            }
            None => None,
        }
    }

    pub(super) fn backend(&mut self, b: &Map<String, Value>) -> Option<BackendRuntime> {
        let errors = self.errors.len();
        match self.string(b, "type", "runtime.backend.type", true) {
            Some(t) if t == "nodejs" => {}
            Some(_) => self.fail("runtime.backend.type", b.get("type"), "must be \"nodejs\""),
            None => {}
        }
        let node_version = match b.get("version") {
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => self.string(b, "version", "runtime.backend.version", true),
        };
        if let Some(v) = &node_version {
            let parts: Vec<&str> = v.split('.').collect();
            if parts.len() > 3
                || parts
                    .iter()
                    .any(|p| p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()))
            {
                self.fail(
                    "runtime.backend.version",
                    b.get("version"),
                    "must be a Node.js version like \"20\" or \"20.11.1\"",
                );
            }
        }
        let entrypoint = self.path(b, "entrypoint", "runtime.backend.entrypoint", true);
        let package_manager = match self
            .string(
                b,
                "package_manager",
                "runtime.backend.package_manager",
                false,
            )
            .as_deref()
        {
            None | Some("pnpm") => PackageManager::Pnpm,
            Some("npm") => PackageManager::Npm,
            Some(_) => {
                self.fail(
                    "runtime.backend.package_manager",
                    b.get("package_manager"),
                    "must be \"pnpm\" or \"npm\"",
                );
                PackageManager::Pnpm
            }
        };
        let mut dependencies = BTreeMap::new();
        match b.get("dependencies") {
            None | Some(Value::Null) => {}
            Some(Value::Object(deps)) => {
                for (name, spec) in deps {
                    match spec.as_str() {
                        Some(spec) => {
                            dependencies.insert(name.clone(), spec.to_owned());
                        }
                        None => self.fail(
                            &format!("runtime.backend.dependencies.{name}"),
                            Some(spec),
                            "must be a version string",
                        ),
                    }
                }
            }
            Some(other) => self.fail(
                "runtime.backend.dependencies",
                Some(other),
                "must be an object of name: version",
            ),
        }
        (self.errors.len() == errors).then(|| BackendRuntime {
            node_version: node_version.unwrap_or_default(),
            entrypoint: entrypoint.unwrap_or_default(),
            package_manager,
            dependencies,
        })
    }

    /// `runtime.frontend`. Its paths are checked for shape only, never for existence: a
    /// frontend's entrypoint and assets are usually what the build script produces (`dist/`),
    /// so the build checks them after the script ran (`frontend_missing`).
    pub(super) fn frontend(&mut self, f: &Map<String, Value>) -> Option<FrontendRuntime> {
        let app_dir = self.app_dir.take();
        let frontend = self.frontend_paths(f);
        self.app_dir = app_dir;
        frontend
    }

    fn frontend_paths(&mut self, f: &Map<String, Value>) -> Option<FrontendRuntime> {
        let errors = self.errors.len();
        match self.string(f, "type", "runtime.frontend.type", true) {
            Some(t) if t == "static" => {}
            Some(_) => self.fail("runtime.frontend.type", f.get("type"), "must be \"static\""),
            None => {}
        }
        let entrypoint = self.path(f, "entrypoint", "runtime.frontend.entrypoint", true);
        let mut assets = Vec::new();
        match f.get("assets") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let field = format!("runtime.frontend.assets[{i}]");
                    match item.as_str() {
                        Some(p) => {
                            if let Some(p) = self.check_path(&field, item, p, false) {
                                assets.push(p);
                            }
                        }
                        None => self.fail(&field, Some(item), "must be a path string"),
                    }
                }
            }
            Some(other) => self.fail(
                "runtime.frontend.assets",
                Some(other),
                "must be an array of paths",
            ),
        }
        (self.errors.len() == errors).then(|| FrontendRuntime {
            entrypoint: entrypoint.unwrap_or_default(),
            assets,
        })
    }

    pub(super) fn path(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        field: &str,
        file: bool,
    ) -> Option<String> {
        let raw = self.string(obj, key, field, true)?;
        self.check_path(field, &obj[key], &raw, file)
    }

    /// Paths stay inside the app: relative, no `..`, no backslashes; and exist when the app
    /// directory is known (`file`: a regular file, not a symlink).
    pub(super) fn check_path(
        &mut self,
        field: &str,
        value: &Value,
        path: &str,
        file: bool,
    ) -> Option<String> {
        let inside = "must stay inside the app directory (a relative path without \"..\")";
        if path.trim().is_empty() {
            self.fail(field, Some(value), "must not be empty");
            return None;
        }
        if path.starts_with('/')
            || path.contains('\\')
            || path.contains('\0')
            || path.split('/').any(|c| c == "..")
        {
            self.fail(field, Some(value), inside);
            return None;
        }
        if let Some(dir) = self.app_dir {
            match std::fs::symlink_metadata(dir.join(path)) {
                Err(_) => {
                    self.fail(
                        field,
                        Some(value),
                        &format!("does not exist in {}", dir.display()),
                    );
                    return None;
                }
                Ok(meta) if file && !meta.is_file() => {
                    self.fail(
                        field,
                        Some(value),
                        "must be a regular file (not a directory or a symlink)",
                    );
                    return None;
                }
                Ok(_) => {}
            }
        }
        Some(path.to_owned())
    }

    pub(super) fn permissions(&mut self, value: Option<&Value>) -> Vec<Permission> {
        let items = match value {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.fail(
                    "permissions",
                    Some(other),
                    "must be an array of {type, scope, required}",
                );
                return Vec::new();
            }
        };
        let mut permissions = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let field = format!("permissions[{i}]");
            let Some(obj) = item.as_object() else {
                self.fail(
                    &field,
                    Some(item),
                    "must be an object {type, scope, required}",
                );
                continue;
            };
            let kind = self
                .string(obj, "type", &format!("{field}.type"), true)
                .and_then(|t| match t.parse::<PermissionType>() {
                    Ok(kind) => Some(kind),
                    Err(reason) => {
                        self.fail(&format!("{field}.type"), obj.get("type"), &reason);
                        None
                    }
                });
            let scope = self
                .string(obj, "scope", &format!("{field}.scope"), false)
                .unwrap_or_else(|| "*".to_owned());
            if scope.trim().is_empty() {
                self.fail(
                    &format!("{field}.scope"),
                    obj.get("scope"),
                    "must not be empty; use \"*\" for any",
                );
            }
            let required = match obj.get("required") {
                None => true,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    self.fail(
                        &format!("{field}.required"),
                        Some(other),
                        "must be true or false",
                    );
                    true
                }
            };
            if let Some(kind) = kind {
                permissions.push(Permission {
                    kind,
                    scope,
                    required,
                });
            }
        }
        permissions
    }

    pub(super) fn limits(
        &mut self,
        value: Option<&Value>,
        host: &HostLimits,
        clamped: &mut Vec<Clamped>,
    ) -> ResourceLimits {
        let mut limits = ResourceLimits {
            timeout: host.default_timeout,
            memory_bytes: host.default_memory,
            cpu: host.default_cpu,
            stop_grace: host.default_stop_grace,
        };
        let config = match value {
            None | Some(Value::Null) => return limits,
            Some(Value::Object(config)) => config,
            Some(other) => {
                self.fail(
                    "config",
                    Some(other),
                    "must be an object {timeout, memory_limit, cpu_limit, stop_grace}",
                );
                return limits;
            }
        };
        let mut clamp = |field: &str, value: &Value, applied: String| {
            clamped.push(Clamped {
                field: field.to_owned(),
                requested: value.to_string(),
                applied,
            });
        };
        // A duration field: parsed, clamped to its host maximum, or a failure naming it.
        let mut duration = |this: &mut Self,
                            key: &str,
                            max: std::time::Duration,
                            into: &mut std::time::Duration| {
            let Some(v) = config.get(key) else { return };
            let field = format!("config.{key}");
            match parse_timeout(v) {
                Ok(d) if d > max => {
                    *into = max;
                    clamp(&field, v, humantime::format_duration(max).to_string());
                }
                Ok(d) => *into = d,
                Err(reason) => this.fail(&field, Some(v), &reason),
            }
        };
        duration(self, "timeout", host.max_timeout, &mut limits.timeout);
        duration(
            self,
            "stop_grace",
            host.max_stop_grace,
            &mut limits.stop_grace,
        );
        if let Some(v) = config.get("memory_limit") {
            match parse_memory(v) {
                Ok(m) if m > host.max_memory => {
                    limits.memory_bytes = host.max_memory;
                    clamp("config.memory_limit", v, format_bytes(host.max_memory));
                }
                Ok(m) => limits.memory_bytes = m,
                Err(reason) => self.fail("config.memory_limit", Some(v), &reason),
            }
        }
        if let Some(v) = config.get("cpu_limit") {
            match parse_cpu(v) {
                Ok(c) if c > host.max_cpu => {
                    limits.cpu = host.max_cpu;
                    clamp("config.cpu_limit", v, host.max_cpu.to_string());
                }
                Ok(c) => limits.cpu = c,
                Err(reason) => self.fail("config.cpu_limit", Some(v), &reason),
            }
        }
        limits
    }
}
