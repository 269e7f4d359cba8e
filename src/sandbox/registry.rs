//! `[install]`: the package registries the install phase uses, as an operator sets them: a
//! registry (a mirror), registries per scope, auth tokens, an extra CA bundle and a proxy.
//! They reach pnpm and npm as a generated `.npmrc` in the install container's work copy of the
//! app, combined with the app's own `.npmrc` / `.pnpmrc`, and as environment variables
//! (`NODE_EXTRA_CA_CERTS`, `HTTPS_PROXY`, ...). Nothing of it reaches a run container: runs get
//! the installed `node_modules`, never the work copy.
//!
//! Tokens are secrets: never in the config file (`[install.tokens]` names a credential per
//! registry; the token comes from `APP_EXECUTOR_INSTALL_TOKEN_<NAME>` or the systemd credential
//! `<name>`), never logged (install logs are redacted), and not part of the dependency cache key.
//!
//! What an app may set: by default none of the registry, auth, TLS and proxy keys
//! ([`is_operator_key`]); an app's lines setting them are dropped (named in the daemon's log),
//! so an app cannot point installs at a registry of its choosing or read a token by sending it
//! elsewhere. `apps_may_set_registry = true` lets an app's registry lines stand (they then come
//! after the operator's, and the last setting wins); auth, TLS and proxy keys stay the
//! operator's.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::egress::{Destination, EgressPolicy};

/// Where the CA bundle appears in the install container.
pub const CA_PATH_IN_CONTAINER: &str = "/etc/app-executor/install-ca.pem";

/// The environment variable prefix of a token whose credential is `<name>`
/// (`APP_EXECUTOR_INSTALL_TOKEN_NPM_ACME` for `npm-acme`).
pub const TOKEN_ENV_PREFIX: &str = "APP_EXECUTOR_INSTALL_TOKEN_";

/// The environment variable a token credential `name` is read from.
pub fn token_env(name: &str) -> String {
    format!(
        "{TOKEN_ENV_PREFIX}{}",
        name.to_ascii_uppercase().replace(['-', '.'], "_")
    )
}

/// A registry auth token. Never log this.
#[derive(Clone, PartialEq, Eq)]
pub struct InstallToken(String);

impl InstallToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }
}

impl std::fmt::Debug for InstallToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InstallToken(***)")
    }
}

/// What the TOML file and the environment may contain under `[install]`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawInstall {
    registry: String,
    scopes: BTreeMap<String, String>,
    /// Registry URL -> credential name (the token itself is never in the file).
    pub tokens: BTreeMap<String, String>,
    ca_file: String,
    proxy: String,
    no_proxy: String,
    apps_may_set_registry: bool,
    /// `registries` (the default) or `network`.
    egress: String,
    /// Extra `host[:port]` an install may reach under `egress = "registries"`.
    allow: Vec<String>,
    /// Filled from the environment / credentials by the config loader: (registry URL, token).
    #[serde(skip)]
    pub resolved_tokens: Vec<(String, InstallToken)>,
}

impl Default for RawInstall {
    fn default() -> Self {
        Self {
            registry: String::new(),
            scopes: BTreeMap::new(),
            tokens: BTreeMap::new(),
            ca_file: String::new(),
            proxy: String::new(),
            no_proxy: String::new(),
            apps_may_set_registry: false,
            egress: "registries".into(),
            allow: Vec::new(),
            resolved_tokens: Vec::new(),
        }
    }
}

/// How the install container reaches registries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Egress {
    /// No network; only the configured registries, through the daemon's proxy ([`super::egress`]).
    #[default]
    Registries,
    /// `sandbox.install_network` as it is (the operator's own firewall decides).
    Network,
}

/// The registry npm and pnpm use when none is configured.
const DEFAULT_REGISTRY: &str = "https://registry.npmjs.org/";

/// `[install]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallSettings {
    /// The default registry (ending in `/`); `None` keeps the package manager's own.
    pub registry: Option<String>,
    /// `(@scope, registry URL)`.
    pub scopes: Vec<(String, String)>,
    /// `(registry URL, token)`.
    pub tokens: Vec<(String, InstallToken)>,
    /// A PEM bundle trusted in addition to the image's (mounted read-only).
    pub ca_file: Option<PathBuf>,
    pub proxy: Option<String>,
    pub no_proxy: Option<String>,
    pub apps_may_set_registry: bool,
    pub egress: Egress,
    /// Reachable besides the registries (e.g. a registry's tarball CDN).
    pub allow: Vec<Destination>,
}

/// A registry URL as npm wants it: http(s), ending in `/`.
fn registry_url(key: &str, value: &str, violations: &mut Vec<String>) -> Option<String> {
    let value = value.trim();
    let valid = (value.starts_with("https://") || value.starts_with("http://"))
        && value
            .split("://")
            .nth(1)
            .is_some_and(|rest| !rest.is_empty())
        && !value.contains(char::is_whitespace);
    if !valid {
        violations.push(format!(
            "{key} = {value:?}: not a registry URL; use e.g. \"https://registry.npmjs.org/\" or your mirror's URL"
        ));
        return None;
    }
    Some(if value.ends_with('/') {
        value.to_owned()
    } else {
        format!("{value}/")
    })
}

impl InstallSettings {
    /// Validates `[install]`; `None` when a violation was recorded.
    pub fn from_raw(raw: &RawInstall, violations: &mut Vec<String>) -> Option<Self> {
        let before = violations.len();
        let registry = match raw.registry.trim() {
            "" => None,
            url => registry_url("install.registry", url, violations),
        };
        let mut scopes = Vec::new();
        for (scope, url) in &raw.scopes {
            let key = format!("install.scopes.{scope:?}");
            if !scope.starts_with('@') || scope.len() < 2 || scope.contains('/') {
                violations.push(format!(
                    "{key}: {scope:?} is not a scope; write it as \"@acme\""
                ));
                continue;
            }
            if let Some(url) = registry_url(&key, url, violations) {
                scopes.push((scope.clone(), url));
            }
        }
        let mut tokens = Vec::new();
        for (url, name) in &raw.tokens {
            let key = format!("install.tokens.{url:?}");
            let Some(url) = registry_url(&key, url, violations) else {
                continue;
            };
            match raw
                .resolved_tokens
                .iter()
                .find(|(u, _)| registry_url("", u, &mut Vec::new()).as_deref() == Some(&url))
            {
                Some((_, token)) => tokens.push((url, token.clone())),
                None => violations.push(format!(
                    "{key} = {name:?}: no token; set {} or the systemd credential {name} (tokens are never read from the file)",
                    token_env(name)
                )),
            }
        }
        let ca_file = match raw.ca_file.trim() {
            "" => None,
            path => {
                let path = PathBuf::from(path);
                match std::fs::read_to_string(&path) {
                    Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => Some(path),
                    Ok(_) => {
                        violations.push(format!(
                            "install.ca_file = {:?}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                            path.display()
                        ));
                        None
                    }
                    Err(e) => {
                        violations.push(format!(
                            "install.ca_file = {:?}: cannot be read ({e}); point it at a PEM bundle such as /etc/ssl/certs/ca-certificates.crt",
                            path.display()
                        ));
                        None
                    }
                }
            }
        };
        let proxy = match raw.proxy.trim() {
            "" => None,
            p if p.starts_with("http://") || p.starts_with("https://") => {
                if p.contains('@') {
                    violations.push(
                        "install.proxy: has credentials in it (user:password@); the config file holds no secrets, so use a proxy that allows this host without a login".to_owned(),
                    );
                    None
                } else {
                    Some(p.to_owned())
                }
            }
            p => {
                violations.push(format!(
                    "install.proxy = {p:?}: not a proxy URL; use e.g. \"http://proxy.internal:3128\""
                ));
                None
            }
        };
        let no_proxy = Some(raw.no_proxy.trim().to_owned()).filter(|s| !s.is_empty());
        let egress = match raw.egress.trim() {
            "registries" => Egress::Registries,
            "network" => Egress::Network,
            other => {
                violations.push(format!(
                    "install.egress = {other:?}: use \"registries\" (installs reach only the configured registries) or \"network\" (sandbox.install_network, unrestricted)"
                ));
                Egress::Registries
            }
        };
        let mut allow = Vec::new();
        for entry in &raw.allow {
            match Destination::parse(entry, 443) {
                Some(destination) => allow.push(destination),
                None => violations.push(format!(
                    "install.allow: {entry:?} is not host[:port]; write e.g. \"npm-cdn.example.com:443\""
                )),
            }
        }
        (violations.len() == before).then_some(Self {
            registry,
            scopes,
            tokens,
            ca_file,
            proxy,
            no_proxy,
            apps_may_set_registry: raw.apps_may_set_registry,
            egress,
            allow,
        })
    }

    /// What the install proxy allows under `egress = "registries"` (`None` under `network`):
    /// the registry (registry.npmjs.org when none is set), the scope registries and `allow`.
    pub fn egress_policy(&self) -> Option<EgressPolicy> {
        if self.egress == Egress::Network {
            return None;
        }
        let mut allowed = Vec::new();
        let registries = std::iter::once(self.registry.as_deref().unwrap_or(DEFAULT_REGISTRY))
            .chain(self.scopes.iter().map(|(_, url)| url.as_str()));
        for destination in registries
            .filter_map(Destination::of_url)
            .chain(self.allow.iter().cloned())
        {
            if !allowed.contains(&destination) {
                allowed.push(destination);
            }
        }
        Some(EgressPolicy {
            allowed,
            upstream: self.proxy.as_deref().and_then(Destination::of_url),
            no_proxy: self
                .no_proxy
                .iter()
                .flat_map(|list| list.split(','))
                .map(|entry| entry.trim().to_owned())
                .filter(|entry| !entry.is_empty())
                .collect(),
        })
    }

    /// The proxy pnpm and npm use inside the install container: the in-container forwarder
    /// under `registries`, else the operator's `proxy`.
    fn container_proxy(&self) -> Option<&str> {
        match self.egress {
            Egress::Registries => Some(super::egress::PROXY_IN_CONTAINER),
            Egress::Network => self.proxy.as_deref(),
        }
    }

    /// Hosts that bypass [`Self::container_proxy`]: under `registries` the registries with a
    /// direct route of the forwarder ([`EgressPolicy::direct_hosts`]), else the operator's
    /// `no_proxy`.
    fn container_no_proxy(&self) -> Option<String> {
        match self.egress_policy() {
            Some(policy) => Some(policy.direct_hosts().join(",")).filter(|s| !s.is_empty()),
            None => self.no_proxy.clone(),
        }
    }

    /// The settings for `check` (tokens as their registry only).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "registry": self.registry,
            "scopes": self.scopes.iter().cloned().collect::<BTreeMap<_, _>>(),
            "tokens": self.tokens.iter().map(|(url, _)| url.as_str()).collect::<Vec<_>>(),
            "ca_file": self.ca_file.as_ref().map(|p| p.display().to_string()),
            "proxy": self.proxy,
            "no_proxy": self.no_proxy,
            "apps_may_set_registry": self.apps_may_set_registry,
            "egress": match self.egress {
                Egress::Registries => "registries",
                Egress::Network => "network",
            },
            "egress_allowed": self
                .egress_policy()
                .map(|policy| policy.allowed.iter().map(|d| d.to_string()).collect::<Vec<_>>()),
        })
    }

    /// What of these settings decides the installed tree, for the dependency cache key: the
    /// registries (a mirror may serve other tarballs for an unlocked range). Not the tokens.
    pub fn key_material(&self) -> String {
        let mut text = format!("registry={}\n", self.registry.as_deref().unwrap_or(""));
        for (scope, url) in &self.scopes {
            text.push_str(&format!("{scope}={url}\n"));
        }
        text
    }

    /// The install container's environment for these settings.
    pub fn env(&self) -> Vec<String> {
        let mut env = Vec::new();
        if self.ca_file.is_some() {
            env.push(format!("NODE_EXTRA_CA_CERTS={CA_PATH_IN_CONTAINER}"));
        }
        if let Some(proxy) = self.container_proxy() {
            for name in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
                env.push(format!("{name}={proxy}"));
            }
        }
        if let Some(no_proxy) = self.container_no_proxy() {
            env.push(format!("NO_PROXY={no_proxy}"));
            env.push(format!("no_proxy={no_proxy}"));
        }
        env
    }

    /// The `.npmrc` the install runs with: the app's lines (without the keys it may not set;
    /// their names are returned) followed by the operator's.
    pub fn npmrc(&self, app: &str) -> (String, Vec<String>) {
        let mut text = String::new();
        let mut dropped = Vec::new();
        for line in app.lines() {
            let key = line
                .split_once('=')
                .map(|(k, _)| k.trim())
                .unwrap_or_default();
            let trimmed = line.trim_start();
            let comment = trimmed.starts_with('#') || trimmed.starts_with(';');
            if !comment && !key.is_empty() && self.refuses(key) {
                // The key's name only: for `//host/:_authToken` that is the host, not a secret.
                dropped.push(key.to_owned());
                continue;
            }
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("# app-executor: the operator's [install] settings\n");
        if let Some(url) = &self.registry {
            text.push_str(&format!("registry={url}\n"));
        }
        for (scope, url) in &self.scopes {
            text.push_str(&format!("{scope}:registry={url}\n"));
        }
        for (url, token) in &self.tokens {
            let without_scheme = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
            text.push_str(&format!("//{without_scheme}:_authToken={}\n", token.0));
        }
        if let Some(proxy) = self.container_proxy() {
            text.push_str(&format!("proxy={proxy}\nhttps-proxy={proxy}\n"));
        }
        if let Some(no_proxy) = self.container_no_proxy() {
            text.push_str(&format!("noproxy={no_proxy}\n"));
        }
        (text, dropped)
    }

    /// Whether an app's `.npmrc` key is the operator's to set.
    fn refuses(&self, key: &str) -> bool {
        let registry = key == "registry" || key.ends_with(":registry");
        if registry {
            return !self.apps_may_set_registry;
        }
        is_operator_key(key)
    }

    /// `text` with every token replaced, for logs and error messages.
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for (_, token) in &self.tokens {
            if !token.0.is_empty() {
                text = text.replace(&token.0, "[redacted]");
            }
        }
        text
    }
}

/// Auth, TLS and proxy keys of `.npmrc`: an app never sets these (whatever
/// `apps_may_set_registry` says).
pub fn is_operator_key(key: &str) -> bool {
    const KEYS: &[&str] = &[
        "_auth",
        "_authToken",
        "_password",
        "username",
        "always-auth",
        "ca",
        "cafile",
        "cert",
        "key",
        "strict-ssl",
        "proxy",
        "https-proxy",
        "http-proxy",
        "noproxy",
        "no-proxy",
        "local-address",
    ];
    key.starts_with("//") || KEYS.contains(&key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(raw: RawInstall) -> Result<InstallSettings, Vec<String>> {
        let mut v = Vec::new();
        InstallSettings::from_raw(&raw, &mut v).ok_or(v)
    }

    #[test]
    fn the_npmrc_keeps_the_apps_lines_but_not_its_registry_auth_or_proxy_and_adds_the_operators() {
        let mut raw = RawInstall {
            registry: "https://mirror.internal/npm".into(),
            ..Default::default()
        };
        raw.scopes
            .insert("@acme".into(), "http://10.0.0.5:4873".into());
        raw.tokens
            .insert("http://10.0.0.5:4873/".into(), "acme-npm".into());
        raw.resolved_tokens = vec![(
            "http://10.0.0.5:4873".into(),
            InstallToken::new("s3cr3t-token"),
        )];
        let s = settings(raw).unwrap();
        let app = "# mine\nauto-install-peers=true\nregistry=https://evil.example/\n@acme:registry=https://evil.example/\n//evil.example/:_authToken=x\nstrict-ssl=false\n";
        let (npmrc, dropped) = s.npmrc(app);
        assert_eq!(
            dropped,
            [
                "registry",
                "@acme:registry",
                "//evil.example/:_authToken",
                "strict-ssl"
            ]
        );
        assert!(
            npmrc.starts_with("# mine\nauto-install-peers=true\n"),
            "{npmrc}"
        );
        assert!(!npmrc.contains("evil.example"), "{npmrc}");
        assert!(npmrc.contains("registry=https://mirror.internal/npm/\n"));
        assert!(npmrc.contains("@acme:registry=http://10.0.0.5:4873/\n"));
        assert!(npmrc.contains("//10.0.0.5:4873/:_authToken=s3cr3t-token\n"));
        assert_eq!(
            s.redact("GET http://x 401 s3cr3t-token"),
            "GET http://x 401 [redacted]"
        );
        assert!(!format!("{s:?}").contains("s3cr3t"));
        assert!(!s.to_json().to_string().contains("s3cr3t"));
        assert!(!s.key_material().contains("s3cr3t"));

        let open = InstallSettings {
            apps_may_set_registry: true,
            ..s
        };
        let (npmrc, dropped) = open.npmrc(app);
        assert_eq!(dropped, ["//evil.example/:_authToken", "strict-ssl"]);
        assert!(npmrc.contains("registry=https://evil.example/\n"));
    }

    #[test]
    fn egress_allows_the_registries_the_scopes_and_allow_and_the_container_proxy_is_the_forwarder()
    {
        let defaults = settings(RawInstall::default()).unwrap();
        let allowed = |s: &InstallSettings| -> Vec<String> {
            s.egress_policy()
                .unwrap()
                .allowed
                .iter()
                .map(|d| d.to_string())
                .collect()
        };
        assert_eq!(allowed(&defaults), ["registry.npmjs.org:443"]);
        let mut raw = RawInstall {
            registry: "http://127.0.0.1:4873".into(),
            proxy: "http://proxy.internal:3128".into(),
            no_proxy: "127.0.0.1, .internal".into(),
            allow: vec!["cdn.example.com".into(), "127.0.0.1:4873".into()],
            ..Default::default()
        };
        raw.scopes
            .insert("@acme".into(), "https://npm.acme.internal/".into());
        let s = settings(raw).unwrap();
        assert_eq!(
            allowed(&s),
            [
                "127.0.0.1:4873",
                "npm.acme.internal:443",
                "cdn.example.com:443"
            ]
        );
        let policy = s.egress_policy().unwrap();
        assert_eq!(policy.upstream.unwrap().to_string(), "proxy.internal:3128");
        assert_eq!(policy.no_proxy, ["127.0.0.1", ".internal"]);
        // The container's proxy is the forwarder's listener; the registries with a direct
        // route bypass it; the operator's proxy is the daemon's business only.
        let (npmrc, _) = s.npmrc("");
        assert!(
            npmrc.contains("https-proxy=http://127.77.0.1:3128\n"),
            "{npmrc}"
        );
        assert!(
            npmrc.contains("noproxy=127.0.0.1,npm.acme.internal,cdn.example.com\n"),
            "{npmrc}"
        );
        assert!(!npmrc.contains("proxy.internal"), "{npmrc}");
        assert!(s
            .env()
            .contains(&"HTTPS_PROXY=http://127.77.0.1:3128".to_owned()));

        // `network`: no proxy of the daemon's; the operator's proxy goes to the container.
        let network = InstallSettings {
            egress: Egress::Network,
            ..s
        };
        assert_eq!(network.egress_policy(), None);
        let (npmrc, _) = network.npmrc("");
        assert!(
            npmrc.contains("https-proxy=http://proxy.internal:3128\n"),
            "{npmrc}"
        );
        assert!(npmrc.contains("noproxy=127.0.0.1, .internal\n"), "{npmrc}");
    }

    #[test]
    fn bad_settings_name_the_key_and_the_fix() {
        let mut raw = RawInstall {
            registry: "mirror.internal".into(),
            ca_file: "/nonexistent/ca.pem".into(),
            proxy: "http://user:pw@proxy:3128".into(),
            ..Default::default()
        };
        raw.scopes.insert("acme".into(), "https://x/".into());
        raw.tokens.insert("https://x/".into(), "npm-x".into());
        raw.egress = "open".into();
        raw.allow = vec!["cdn.example.com/path".into()];
        let errors = settings(raw).unwrap_err().join("\n");
        for needle in [
            "install.registry = \"mirror.internal\": not a registry URL",
            "install.scopes.\"acme\": \"acme\" is not a scope",
            "APP_EXECUTOR_INSTALL_TOKEN_NPM_X or the systemd credential npm-x",
            "install.ca_file = \"/nonexistent/ca.pem\": cannot be read",
            "install.proxy",
            "install.egress = \"open\": use \"registries\"",
            "install.allow: \"cdn.example.com/path\" is not host[:port]",
        ] {
            assert!(errors.contains(needle), "{needle:?} not in:\n{errors}");
        }
        assert!(!errors.contains("pw@"), "{errors}");
    }
}
