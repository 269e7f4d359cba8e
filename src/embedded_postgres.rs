//! A private PostgreSQL cluster started from the host's server binaries: the embedded default
//! of `demo` (no database configured) and the test harness's database server.
//!
//! The cluster lives in one directory (`data/`, `socket/`, `port`, `server.log`), listens on
//! 127.0.0.1 only, on a free port chosen at first start and kept in `port`. A second caller finds
//! it running and reuses it; a file lock makes concurrent callers (parallel test processes)
//! agree. PostgreSQL refuses to run as root, so when we are root the directory is handed to the
//! `postgres` OS user and every server command runs as that user via `runuser`.
//! Authentication is `trust` on loopback: the cluster is reachable only from this host and holds
//! throwaway data; it is never meant for production.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::db::DatabaseUrl;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedPostgresError {
    #[error(
        "no PostgreSQL server binaries found (looked for initdb in /usr/lib/postgresql/*/bin and on PATH); \
         install them with `apt-get install postgresql` or configure database.url"
    )]
    NoBinaries,
    #[error("we run as root and PostgreSQL refuses to; the `postgres` OS user it would run as does not exist (create it with `useradd --system postgres` or install the postgresql package)")]
    NoPostgresUser,
    #[error("cannot prepare the cluster directory {path}: {source}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}); {detail}")]
    Command {
        command: String,
        status: String,
        detail: String,
    },
}

/// A running private cluster. Dropping this handle leaves the server running (it is shared);
/// call [`EmbeddedPostgres::stop`] to stop it.
#[derive(Debug, Clone)]
pub struct EmbeddedPostgres {
    root: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    as_postgres_user: bool,
}

impl EmbeddedPostgres {
    /// Starts the cluster in `root` (creating it on first use), or attaches to it when it is
    /// already running. Blocking; call from `spawn_blocking` in async code.
    pub fn ensure_running(root: &Path) -> Result<Self, EmbeddedPostgresError> {
        let dir_err = |source| EmbeddedPostgresError::Directory {
            path: root.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(root).map_err(dir_err)?;
        let lock = File::create(root.join(".lock")).map_err(dir_err)?;
        lock.lock().map_err(dir_err)?;

        let bin_dir = find_bin_dir().ok_or(EmbeddedPostgresError::NoBinaries)?;
        let as_postgres_user = running_as_root();
        if as_postgres_user && !postgres_user_exists() {
            return Err(EmbeddedPostgresError::NoPostgresUser);
        }
        let data = root.join("data");
        let socket = root.join("socket");
        std::fs::create_dir_all(&socket).map_err(dir_err)?;
        // Hand the directory over once, before initdb; a running cluster's files are its own
        // (a recursive chown then would race with the server creating and deleting files).
        if as_postgres_user && !data.join("PG_VERSION").exists() {
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(root))?;
        }
        let mut cluster = Self {
            root: root.to_path_buf(),
            bin_dir,
            port: 0,
            as_postgres_user,
        };

        if !data.join("PG_VERSION").exists() {
            let mut initdb = cluster.server_command("initdb");
            initdb
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
                .args(["--locale", "C.UTF-8"]);
            run(&mut initdb)?;
        }

        let port_file = root.join("port");
        if cluster.is_running() {
            cluster.port = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0);
            if cluster.port != 0 {
                return Ok(cluster);
            }
            // Running but we lost its port: restart it on a known one.
            cluster.stop()?;
        }

        // Keep the port of an earlier start when it is still free, so clients configured with
        // it reconnect after a restart.
        let previous = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse::<u16>().ok())
            .filter(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok());
        cluster.port = match previous {
            Some(port) => port,
            None => free_port().map_err(dir_err)?,
        };
        std::fs::write(&port_file, cluster.port.to_string()).map_err(dir_err)?;
        // wal_level = logical, as on Supabase (Realtime reads the supabase_realtime
        // publication through a logical slot), so that can be tested here too.
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c wal_level=logical",
            cluster.port,
            socket.display()
        );
        let mut start = cluster.server_command("pg_ctl");
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(root.join("server.log"))
            .args(["-o", &options, "-w", "-t", "60", "start"]);
        run(&mut start).map_err(|e| match e {
            EmbeddedPostgresError::Command {
                command, status, ..
            } => EmbeddedPostgresError::Command {
                command,
                status,
                detail: format!("see {}", root.join("server.log").display()),
            },
            other => other,
        })?;
        Ok(cluster)
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`
    pub fn url(&self, database: &str) -> DatabaseUrl {
        DatabaseUrl::parse(
            &format!("postgres://postgres@127.0.0.1:{}/{database}", self.port),
            "the embedded cluster",
        )
        .expect("a URL built from a port and a database name is valid")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stops the server (fast shutdown: open sessions are disconnected).
    pub fn stop(&self) -> Result<(), EmbeddedPostgresError> {
        if !self.is_running() {
            return Ok(());
        }
        let mut stop = self.server_command("pg_ctl");
        stop.arg("-D")
            .arg(self.root.join("data"))
            .args(["-m", "fast", "-w", "stop"]);
        run(&mut stop)
    }

    fn is_running(&self) -> bool {
        let mut status = self.server_command("pg_ctl");
        status.arg("-D").arg(self.root.join("data")).arg("status");
        status.output().map(|o| o.status.success()).unwrap_or(false)
    }

    fn server_command(&self, program: &str) -> Command {
        let program = self.bin_dir.join(program);
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }
}

fn run(command: &mut Command) -> Result<(), EmbeddedPostgresError> {
    let rendered = format!("{command:?}");
    let output = command
        .output()
        .map_err(|e| EmbeddedPostgresError::Command {
            command: rendered.clone(),
            status: "could not start".into(),
            detail: e.to_string(),
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    Err(EmbeddedPostgresError::Command {
        command: rendered,
        status: output.status.to_string(),
        detail: format!("{}{}", stderr.trim(), stdout.trim()),
    })
}

/// The newest `/usr/lib/postgresql/<major>/bin` with `initdb`, else `initdb`'s directory on PATH.
fn find_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
}

/// `/proc/self` is owned by the effective user of the process.
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn postgres_user_exists() -> bool {
    std::fs::read_to_string("/etc/passwd")
        .map(|p| p.lines().any(|l| l.starts_with("postgres:")))
        .unwrap_or(false)
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
