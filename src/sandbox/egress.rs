//! Registry-only egress for the install phase (`[install] egress = "registries"`, the default).
//!
//! The install container runs with **no network** (`--network none`: a loopback interface
//! only). It reaches the outside through one door: a Unix socket the daemon listens on, in a
//! directory mounted read-only into the container. A small forwarder inside the container
//! ([`FORWARDER`], started before the package manager) turns loopback connections into
//! requests on that socket, two ways:
//!
//! - **Direct routes** for every allowed registry host: the container's `/etc/hosts` maps the
//!   name to an address of its own loopback (`127.77.0.2`, …; a loopback registry keeps its
//!   own), the forwarder listens there on the registry's port and asks the daemon for a tunnel
//!   (`CONNECT host:port`). pnpm and npm connect as if directly, with their keep-alive pools:
//!   through an HTTP proxy pnpm opens a new tunnel and TLS session per request, which made a
//!   cold install of express 6× slower here.
//! - **The proxy listener** `127.77.0.1:3128`, the package manager's HTTP(S) proxy for every
//!   other host (the direct routes are its `noproxy`): a registry given as a non-loopback IP
//!   address goes this way, and a request to a host that is not allowed reaches the daemon and
//!   is refused by name instead of failing as an unknown host.
//!
//! Behind the socket, this module is an HTTP proxy that allows only the configured registries:
//!
//! - `CONNECT host:port` (HTTPS, and the direct routes) and absolute-form requests
//!   (`GET http://host:port/…`, plain HTTP registries) are served when `host:port` is a registry
//!   of `[install]` (its `registry`, its `scopes`, registry.npmjs.org when no registry is set)
//!   or listed in `[install] allow`; anything else gets `403` and is recorded, so the install's
//!   error names what was refused.
//! - The daemon connects on the container's behalf: directly, or through `[install] proxy`
//!   (CONNECT to it) unless the host matches `[install] no_proxy`.
//!
//! Why a socket and not a Docker network: a container on any Docker network, internal ones
//! included, can still open connections to every address of the host itself (the bridge
//! gateways, the host's LAN address), where databases and admin ports listen. With no network
//! at all there is nothing to reach but the socket, and nothing for the operator to firewall.
//! TLS stays end to end (the tunnel is opaque), so the CA bundle and tokens work as before.
//!
//! One proxy per install: it is bound to the install's own staging directory and stops with it,
//! and what it refused belongs to that install.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};
use tokio_util::sync::CancellationToken;

/// Where the egress directory appears in the install container.
pub const DIR_IN_CONTAINER: &str = "/run/app-executor-egress";
/// The forwarder's proxy listener inside the container (an address of its own loopback that no
/// registry uses).
pub const PROXY_IN_CONTAINER: &str = "http://127.77.0.1:3128";
const PROXY_HOST: &str = "127.77.0.1";
const PROXY_PORT: u16 = 3128;
/// Registry host names get `127.77.0.2`, `127.77.0.3`, … in the container's `/etc/hosts`.
const ROUTE_PREFIX: &str = "127.77.0.";
const SOCKET: &str = "proxy.sock";
const FORWARDER_FILE: &str = "forward.cjs";
const ROUTES_FILE: &str = "routes.json";
const HOSTS_FILE: &str = "hosts";
/// Written by the forwarder once it listens, so the package manager never races it.
const READY_FILE: &str = "/tmp/.app-executor-egress-ready";

/// The in-container forwarder: the proxy listener pipes bytes to the daemon's socket; each direct
/// route asks the socket for a tunnel to its registry first.
const FORWARDER: &str = r#"// app-executor: the install container's only way out (src/sandbox/egress.rs).
'use strict';
const net = require('net');
const fs = require('fs');
const [socket, routesFile, readyFile] = process.argv.slice(2);
const { proxy, routes } = JSON.parse(fs.readFileSync(routesFile, 'utf8'));
function join(a, b) {
  a.pipe(b);
  b.pipe(a);
  a.on('error', () => b.destroy());
  b.on('error', () => a.destroy());
}
function tunnel(client, target) {
  client.pause();
  const upstream = net.connect(socket, () =>
    upstream.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`));
  let head = Buffer.alloc(0);
  const onHead = (chunk) => {
    head = Buffer.concat([head, chunk]);
    const end = head.indexOf('\r\n\r\n');
    if (end < 0) {
      if (head.length > 16384) { upstream.destroy(); client.destroy(); }
      return;
    }
    upstream.removeListener('data', onHead);
    if (!/^HTTP\/1\.[01] 2/.test(head.toString('latin1', 0, end))) {
      upstream.destroy();
      client.destroy();
      return;
    }
    const rest = head.subarray(end + 4);
    if (rest.length) client.write(rest);
    join(client, upstream);
    client.resume();
  };
  upstream.on('data', onHead);
  upstream.on('error', () => client.destroy());
  client.on('error', () => upstream.destroy());
}
let waiting = routes.length + 1;
function listen(host, port, onConnection) {
  net.createServer(onConnection)
    .on('error', (e) => {
      console.error(`app-executor: the registry forwarder cannot listen on ${host}:${port}: ${e.message}`);
      process.exit(1);
    })
    .listen(port, host, () => { if (--waiting === 0) fs.writeFileSync(readyFile, ''); });
}
// The socket must be reachable before anything listens: gVisor refuses host sockets unless runsc
// runs with --host-uds=open, and the install should fail saying so, not with pnpm's ECONNRESET.
const probe = net.connect(socket);
probe.on('error', (e) => {
  console.error(`app-executor: the install cannot reach the daemon's registry proxy (${e.code} on ${socket}); ` +
    "under gVisor add --host-uds=open to runsc's runtimeArgs (scripts/ensure-gvisor does), or set [install] egress = \"network\"");
  process.exit(1);
});
probe.on('connect', () => {
  probe.destroy();
  listen(proxy.host, proxy.port, (client) => join(client, net.connect(socket)));
  for (const route of routes) listen(route.host, route.port, (client) => tunnel(client, route.connect));
});
"#;

/// How long the daemon waits for a registry (or the upstream proxy) to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// One `host:port` an install may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub port: u16,
}

impl Destination {
    /// `host[:port]`; `default_port` when none is given.
    pub fn parse(text: &str, default_port: u16) -> Option<Self> {
        let text = text.trim().trim_end_matches('/');
        if text.is_empty() || text.contains(['/', '@', ' ']) {
            return None;
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
                (host, port.parse().ok()?)
            }
            _ => (text, default_port),
        };
        (!host.is_empty()).then(|| Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The host and port of a registry URL (`https://npm.acme.internal/` -> `npm.acme.internal:443`).
    pub fn of_url(url: &str) -> Option<Self> {
        let url = url::Url::parse(url).ok()?;
        Some(Self {
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port_or_known_default()?,
        })
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// What the proxy allows and how it connects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    pub allowed: Vec<Destination>,
    /// `[install] proxy`: connect through it (CONNECT), except to `no_proxy` hosts.
    pub upstream: Option<Destination>,
    pub no_proxy: Vec<String>,
}

/// A direct route: the forwarder listens on `host:port` inside the container and tunnels to
/// `connect`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
struct Route {
    host: String,
    port: u16,
    connect: String,
}

impl EgressPolicy {
    /// The direct routes, and the `/etc/hosts` names they need: a host name gets the next
    /// `127.77.0.N`, a loopback IPv4 address keeps itself; other IP addresses get no route
    /// (the container has no such address; they go through the proxy listener).
    fn routes(&self) -> (Vec<Route>, Vec<(String, String)>) {
        let (mut routes, mut names) = (Vec::new(), Vec::<(String, String)>::new());
        for destination in &self.allowed {
            let listen = match destination.host.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(ip)) if ip.is_loopback() => ip.to_string(),
                Ok(_) => continue,
                Err(_) => match names.iter().find(|(name, _)| *name == destination.host) {
                    Some((_, ip)) => ip.clone(),
                    // .1 is the proxy listener; the rest of the /24 is plenty of registries.
                    None if names.len() < 250 => {
                        let ip = format!("{ROUTE_PREFIX}{}", names.len() + 2);
                        names.push((destination.host.clone(), ip.clone()));
                        ip
                    }
                    None => continue,
                },
            };
            if listen == PROXY_HOST && destination.port == PROXY_PORT {
                continue;
            }
            routes.push(Route {
                host: listen,
                port: destination.port,
                connect: destination.to_string(),
            });
        }
        (routes, names)
    }

    /// The hosts the package manager reaches through direct routes: its `noproxy`.
    pub fn direct_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = Vec::new();
        for route in self.routes().0 {
            let host = route
                .connect
                .rsplit_once(':')
                .map_or(route.connect.as_str(), |(h, _)| h);
            if !hosts.iter().any(|h| h == host) {
                hosts.push(host.to_owned());
            }
        }
        hosts
    }

    fn allows(&self, destination: &Destination) -> bool {
        self.allowed.contains(destination)
    }

    /// Whether `host` bypasses the upstream proxy (curl's rules: `*`, exact names, and
    /// domain suffixes with or without a leading dot).
    fn bypasses_upstream(&self, host: &str) -> bool {
        self.no_proxy.iter().any(|entry| {
            let entry = entry.trim().trim_start_matches('.').to_ascii_lowercase();
            entry == "*"
                || host == entry
                || (host.ends_with(&entry) && host[..host.len() - entry.len()].ends_with('.'))
        })
    }

    /// The upstream proxy `destination` is reached through, if any.
    fn upstream_for(&self, destination: &Destination) -> Option<&Destination> {
        self.upstream
            .as_ref()
            .filter(|_| !self.bypasses_upstream(&destination.host))
    }

    /// A TCP stream to `destination`: direct or tunnelled through the upstream proxy.
    async fn connect(&self, destination: &Destination) -> Result<TcpStream, String> {
        let via = self.upstream_for(destination);
        let target = via.unwrap_or(destination);
        let mut stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((target.host.as_str(), target.port)),
        )
        .await
        .map_err(|_| format!("connecting to {target} timed out after {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("connecting to {target}: {e}"))?;
        if let Some(proxy) = via {
            tunnel(&mut stream, destination)
                .await
                .map_err(|e| format!("the upstream proxy {proxy} refused {destination}: {e}"))?;
        }
        Ok(stream)
    }
}

/// Asks an HTTP proxy on `stream` for a tunnel to `destination`.
async fn tunnel(stream: &mut TcpStream, destination: &Destination) -> Result<(), String> {
    let request = format!("CONNECT {destination} HTTP/1.1\r\nHost: {destination}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    // Read the response head byte by byte: nothing past it may be consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 << 10 {
            return Err("response head too long".into());
        }
        let byte = tokio::time::timeout(CONNECT_TIMEOUT, stream.read_u8())
            .await
            .map_err(|_| "no answer".to_owned())?
            .map_err(|e| e.to_string())?;
        head.push(byte);
    }
    let status_line = String::from_utf8_lossy(&head);
    let status_line = status_line.lines().next().unwrap_or_default();
    match status_line.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        _ => Err(format!("it answered {status_line:?}")),
    }
}

/// A running proxy for one install. Dropping it stops the proxy and every tunnel.
pub struct EgressProxy {
    dir: PathBuf,
    /// A direct route listens below port 1024 (443): the container must allow it.
    low_ports: bool,
    refused: Arc<Mutex<Vec<String>>>,
    /// Allowed destinations the daemon could not reach, with the reason (one per destination).
    unreachable: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
}

impl EgressProxy {
    /// Creates `dir` (socket and forwarder) and serves the socket until dropped.
    pub fn start(dir: &Path, policy: EgressPolicy) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        let (routes, names) = policy.routes();
        let mut hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost\n".to_owned();
        for (name, ip) in &names {
            hosts.push_str(&format!("{ip}\t{name}\n"));
        }
        let routes_json = serde_json::json!({
            "proxy": {"host": PROXY_HOST, "port": PROXY_PORT},
            "routes": routes,
        });
        for (name, text) in [
            (FORWARDER_FILE, FORWARDER.to_owned()),
            (ROUTES_FILE, routes_json.to_string()),
            (HOSTS_FILE, hosts),
        ] {
            std::fs::write(dir.join(name), text)?;
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o644))?;
        }
        let low_ports = routes.iter().any(|route| route.port < 1024);
        let socket = dir.join(SOCKET);
        let _ = std::fs::remove_file(&socket);
        // A socket path must fit in 108 bytes and state directories can be deeper: bind through
        // the directory's descriptor (`/proc/self/fd/N/…` is short whatever `dir` is).
        let dir_handle = std::fs::File::open(dir)?;
        let short = format!(
            "/proc/self/fd/{}/{SOCKET}",
            std::os::fd::AsRawFd::as_raw_fd(&dir_handle)
        );
        let listener = UnixListener::bind(&short)?;
        drop(dir_handle);
        // The container's user connects; the directory is the install's own and goes with it.
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777))?;
        let proxy = Self {
            dir: dir.to_path_buf(),
            low_ports,
            refused: Arc::default(),
            unreachable: Arc::default(),
            stop: CancellationToken::new(),
        };
        let context = Arc::new(Context {
            policy,
            refused: proxy.refused.clone(),
            unreachable: proxy.unreachable.clone(),
            stop: proxy.stop.clone(),
        });
        tokio::spawn(accept_loop(listener, context));
        Ok(proxy)
    }

    /// The directory to mount read-only at [`DIR_IN_CONTAINER`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The container's `/etc/hosts` (mounted read-only): the registries' names on the
    /// container's loopback.
    pub fn hosts_file(&self) -> PathBuf {
        self.dir.join(HOSTS_FILE)
    }

    /// Kernel settings the container needs: an unprivileged user may bind the routes' ports
    /// (443) on the container's own loopback. Namespaced: the host is unaffected.
    pub fn sysctls(&self) -> std::collections::HashMap<String, String> {
        let mut sysctls = std::collections::HashMap::new();
        if self.low_ports {
            sysctls.insert("net.ipv4.ip_unprivileged_port_start".into(), "0".into());
        }
        sysctls
    }

    /// What the install was refused, in order, without repeats (`host:port`).
    pub fn refused(&self) -> Vec<String> {
        self.refused.lock().expect("not poisoned").clone()
    }

    /// Why registries could not be reached (`host:port: reason`), one per destination.
    pub fn unreachable(&self) -> Vec<String> {
        self.unreachable.lock().expect("not poisoned").clone()
    }

    /// Lines for a failed install's error: what was refused and how to allow it, and which
    /// registries the daemon could not reach and why (pnpm sees only a closed connection or
    /// a 502 there, so the cause would otherwise be lost).
    pub fn explanation(&self) -> String {
        let mut text = String::new();
        let refused = self.refused();
        if !refused.is_empty() {
            text.push_str(&format!(
                "\napp-executor: the install tried to reach {}, which {} not a registry of [install] (registry, scopes); add it to [install] allow if it should be reachable",
                refused.join(", "),
                if refused.len() == 1 { "is" } else { "are" }
            ));
        }
        for reason in self.unreachable() {
            text.push_str(&format!(
                "\napp-executor: a registry could not be reached: {reason}"
            ));
        }
        text
    }

    /// The shell lines that start the forwarder and wait until it listens (bounded: the
    /// install fails with a message rather than hang if node cannot start it).
    pub fn shell_prelude() -> String {
        format!(
            "node {DIR_IN_CONTAINER}/{FORWARDER_FILE} {DIR_IN_CONTAINER}/{SOCKET} {DIR_IN_CONTAINER}/{ROUTES_FILE} {READY_FILE} & \
             forwarder=$!; i=0; while [ ! -e {READY_FILE} ]; do i=$((i+1)); \
             if ! kill -0 $forwarder 2>/dev/null || [ $i -gt 500 ]; then echo 'app-executor: the registry forwarder did not start' >&2; exit 1; fi; \
             sleep 0.02; done; "
        )
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Context {
    policy: EgressPolicy,
    refused: Arc<Mutex<Vec<String>>>,
    unreachable: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
}

async fn accept_loop(listener: UnixListener, context: Arc<Context>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "install egress proxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = context.stop.cancelled() => return,
        };
        let context = context.clone();
        tokio::spawn(async move {
            let service = {
                let context = context.clone();
                hyper::service::service_fn(move |request| handle(request, context.clone()))
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                _ = connection => {}
                _ = context.stop.cancelled() => {}
            }
        });
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(message))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}

async fn handle(
    request: Request<Incoming>,
    context: Arc<Context>,
) -> Result<Response<Body>, Infallible> {
    let connect = request.method() == Method::CONNECT;
    let destination = match request.uri().authority() {
        Some(authority) if connect => Destination::parse(authority.as_str(), 443),
        Some(authority) if request.uri().scheme_str() == Some("http") => {
            Destination::parse(authority.as_str(), 80)
        }
        _ => None,
    };
    let Some(destination) = destination else {
        return Ok(text(
            StatusCode::BAD_REQUEST,
            "app-executor install proxy: send CONNECT host:port or an http:// URL\n".into(),
        ));
    };
    if !context.policy.allows(&destination) {
        tracing::warn!(
            destination = %destination,
            "install egress refused: not a registry of [install] (registry, scopes, allow)"
        );
        let mut refused = context.refused.lock().expect("not poisoned");
        if !refused.contains(&destination.to_string()) {
            refused.push(destination.to_string());
        }
        return Ok(text(
            StatusCode::FORBIDDEN,
            format!(
                "app-executor: installs may reach only the registries of [install]; {destination} is not one (add it to [install] allow if it should be)\n"
            ),
        ));
    }
    let upstream = match context.policy.connect(&destination).await {
        Ok(stream) => stream,
        Err(message) => {
            tracing::warn!(destination = %destination, error = %message, "install egress: cannot reach a registry");
            let mut unreachable = context.unreachable.lock().expect("not poisoned");
            let prefix = format!("{destination}:");
            if !unreachable.iter().any(|reason| reason.starts_with(&prefix)) {
                unreachable.push(format!("{destination}: {message}"));
            }
            drop(unreachable);
            return Ok(text(
                StatusCode::BAD_GATEWAY,
                format!("app-executor: {message}\n"),
            ));
        }
    };
    if connect {
        let stop = context.stop.clone();
        tokio::spawn(async move {
            let Ok(upgraded) = hyper::upgrade::on(request).await else {
                return;
            };
            let (mut client, mut upstream) = (TokioIo::new(upgraded), upstream);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                _ = stop.cancelled() => {}
            }
        });
        return Ok(Response::new(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        ));
    }
    Ok(forward(request, upstream, &context, &destination)
        .await
        .unwrap_or_else(|message| {
            text(
                StatusCode::BAD_GATEWAY,
                format!("app-executor: {destination}: {message}\n"),
            )
        }))
}

/// One plain-HTTP request, sent on `upstream` (origin-form to the registry itself, absolute-form
/// to the upstream proxy).
async fn forward(
    mut request: Request<Incoming>,
    upstream: TcpStream,
    context: &Context,
    destination: &Destination,
) -> Result<Response<Body>, String> {
    if context.policy.upstream_for(destination).is_none() {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        *request.uri_mut() = path.parse().map_err(|e| format!("{e}"))?;
    }
    for name in [
        "proxy-connection",
        "proxy-authorization",
        "connection",
        "keep-alive",
    ] {
        request.headers_mut().remove(name);
    }
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(upstream))
        .await
        .map_err(|e| e.to_string())?;
    let stop = context.stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = connection => {}
            _ = stop.cancelled() => {}
        }
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.map(|body| body.boxed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_with_default_ports_and_registry_urls_give_theirs() {
        assert_eq!(
            Destination::parse("Registry.NPMjs.org", 443),
            Some(Destination {
                host: "registry.npmjs.org".into(),
                port: 443
            })
        );
        assert_eq!(
            Destination::parse("127.0.0.1:4873", 443)
                .unwrap()
                .to_string(),
            "127.0.0.1:4873"
        );
        assert_eq!(Destination::parse("a/b", 443), None);
        assert_eq!(Destination::parse("host:notaport", 443), None);
        assert_eq!(
            Destination::of_url("http://npm.acme.internal/")
                .unwrap()
                .to_string(),
            "npm.acme.internal:80"
        );
        assert_eq!(
            Destination::of_url("https://npm.pkg.github.com/acme/")
                .unwrap()
                .to_string(),
            "npm.pkg.github.com:443"
        );
    }

    /// The first line of an HTTP head read byte by byte from `stream` (nothing past it).
    async fn status_line(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.unwrap());
        }
        String::from_utf8_lossy(&head)
            .lines()
            .next()
            .unwrap()
            .to_owned()
    }

    /// An echo server; with `proxy`, it first answers one CONNECT (recording its line) the way
    /// an upstream HTTP proxy does.
    async fn echo_server(proxy: bool) -> (u16, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let recorded = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    if proxy {
                        let line = status_line(&mut stream).await;
                        recorded.lock().unwrap().push(line);
                        stream
                            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                            .await
                            .unwrap();
                    }
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        (port, seen)
    }

    /// `CONNECT target` through the proxy's socket: the status line, then (on 200) an echo check.
    async fn connect_through(dir: &Path, target: &str) -> (String, Option<String>) {
        let mut stream = tokio::net::UnixStream::connect(dir.join(SOCKET))
            .await
            .unwrap();
        stream
            .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let status = status_line(&mut stream).await;
        if !status.contains(" 200") {
            return (status, None);
        }
        stream.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        stream.read_exact(&mut echo).await.unwrap();
        (status, Some(String::from_utf8_lossy(&echo).into_owned()))
    }

    #[tokio::test]
    async fn the_proxy_tunnels_to_allowed_hosts_only_directly_or_through_the_upstream_proxy() {
        let (registry, _) = echo_server(false).await;
        let (upstream, upstream_seen) = echo_server(true).await;
        let dir = tempfile::tempdir().unwrap();
        let allowed = |port| Destination {
            host: "127.0.0.1".into(),
            port,
        };
        let direct = EgressProxy::start(
            &dir.path().join("direct"),
            EgressPolicy {
                allowed: vec![allowed(registry)],
                ..Default::default()
            },
        )
        .unwrap();
        let (status, echo) = connect_through(direct.dir(), &format!("127.0.0.1:{registry}")).await;
        assert!(status.contains(" 200"), "{status}");
        assert_eq!(echo.as_deref(), Some("ping"));
        let (status, _) = connect_through(direct.dir(), "127.0.0.1:9").await;
        assert!(status.contains(" 403"), "{status}");
        let (status, _) = connect_through(direct.dir(), "127.0.0.1:9").await;
        assert!(status.contains(" 403"), "{status}");
        assert_eq!(direct.refused(), ["127.0.0.1:9"], "recorded once");
        assert!(direct
            .explanation()
            .contains("tried to reach 127.0.0.1:9, which is not a registry"));

        // An allowed registry that does not answer: 502, and the reason is kept for the error.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let unreachable = EgressProxy::start(
            &dir.path().join("unreachable"),
            EgressPolicy {
                allowed: vec![allowed(closed_port)],
                ..Default::default()
            },
        )
        .unwrap();
        let (status, _) =
            connect_through(unreachable.dir(), &format!("127.0.0.1:{closed_port}")).await;
        assert!(status.contains(" 502"), "{status}");
        let reasons = unreachable.unreachable();
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].starts_with(&format!(
                "127.0.0.1:{closed_port}: connecting to 127.0.0.1:{closed_port}:"
            )) && reasons[0].to_lowercase().contains("refused"),
            "{reasons:?}"
        );

        // With an upstream proxy, the tunnel is asked of it (and its answer relayed) unless the
        // host is in no_proxy.
        let via = EgressProxy::start(
            &dir.path().join("via"),
            EgressPolicy {
                allowed: vec![allowed(registry)],
                upstream: Some(allowed(upstream)),
                no_proxy: Vec::new(),
            },
        )
        .unwrap();
        let (status, echo) = connect_through(via.dir(), &format!("127.0.0.1:{registry}")).await;
        assert!(status.contains(" 200"), "{status}");
        assert_eq!(echo.as_deref(), Some("ping"));
        assert_eq!(
            *upstream_seen.lock().unwrap(),
            [format!("CONNECT 127.0.0.1:{registry} HTTP/1.1")]
        );
        let bypass = EgressProxy::start(
            &dir.path().join("bypass"),
            EgressPolicy {
                allowed: vec![allowed(registry)],
                upstream: Some(allowed(upstream)),
                no_proxy: vec!["127.0.0.1".into()],
            },
        )
        .unwrap();
        connect_through(bypass.dir(), &format!("127.0.0.1:{registry}")).await;
        assert_eq!(
            upstream_seen.lock().unwrap().len(),
            1,
            "no_proxy goes direct"
        );

        // Dropping the proxy closes its socket.
        drop(direct);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            tokio::net::UnixStream::connect(dir.path().join("direct").join(SOCKET))
                .await
                .is_err(),
            "a dropped proxy accepts nothing"
        );
    }

    #[test]
    fn host_names_and_loopback_registries_get_direct_routes_other_addresses_the_proxy() {
        let destination = |text| Destination::parse(text, 443).unwrap();
        let policy = EgressPolicy {
            allowed: vec![
                destination("registry.npmjs.org"),
                destination("127.0.0.1:4873"),
                destination("172.17.0.1:4873"),
                destination("registry.npmjs.org:8443"),
                destination("npm.acme.internal"),
            ],
            ..Default::default()
        };
        let (routes, names) = policy.routes();
        let listens: Vec<String> = routes
            .iter()
            .map(|r| format!("{}:{} -> {}", r.host, r.port, r.connect))
            .collect();
        assert_eq!(
            listens,
            [
                "127.77.0.2:443 -> registry.npmjs.org:443",
                "127.0.0.1:4873 -> 127.0.0.1:4873",
                "127.77.0.2:8443 -> registry.npmjs.org:8443",
                "127.77.0.3:443 -> npm.acme.internal:443",
            ]
        );
        assert_eq!(
            names,
            [
                ("registry.npmjs.org".to_owned(), "127.77.0.2".to_owned()),
                ("npm.acme.internal".to_owned(), "127.77.0.3".to_owned())
            ]
        );
        assert_eq!(
            policy.direct_hosts(),
            ["registry.npmjs.org", "127.0.0.1", "npm.acme.internal"]
        );
    }

    #[test]
    fn no_proxy_matches_names_and_domain_suffixes_only() {
        let policy = EgressPolicy {
            no_proxy: vec![".internal".into(), "mirror.example.com".into()],
            ..EgressPolicy::default()
        };
        assert!(policy.bypasses_upstream("npm.internal"));
        assert!(policy.bypasses_upstream("mirror.example.com"));
        assert!(policy.bypasses_upstream("a.mirror.example.com"));
        assert!(!policy.bypasses_upstream("notinternal"));
        assert!(!policy.bypasses_upstream("evilmirror.example.com"));
        assert!(!policy.bypasses_upstream("registry.npmjs.org"));
    }
}
