//! The run's `/output`: a filesystem of its own per attempt, which the kernel caps and which
//! carries nothing to the host.
//!
//! - **A tmpfs volume.** The engine's `local` driver mounts it with `size` = the byte cap plus
//!   1 MiB, `nr_inodes` = the entry cap plus two (its root, and one so that going over shows),
//!   `nosuid,nodev,noexec`, owned by the sandbox user, mode 0700. A write past the cap fails
//!   with ENOSPC: an app overshoots by at most 1 MiB, whatever it writes (one file, many, a
//!   deep tree; a hard link costs an inode too). The app is not killed for it: it sees the
//!   error and may report it, and the run ends `output_too_large` when the usage after the
//!   app's exit is over a cap. The volume lives under the engine's root
//!   (`/var/lib/docker`, which no other host user may enter), and `nosuid,noexec` hold there
//!   too: a setuid shell planted in `/output` is neither setuid nor executable anywhere.
//! - **Memory, not disk.** tmpfs pages are charged to the memory cgroup of the process that
//!   writes them, so what an app keeps in `/output` counts against its own memory limit, like
//!   `/tmp`. It is freed when the volume is removed.
//! - **A keeper container.** The engine unmounts a volume when the last container using it
//!   stops, so the app's container alone would take its outputs with it. A small keeper (the
//!   same image, the hardened profile, 64 MiB) mounts the volume from before the app starts
//!   until its outputs are read back. It also reports the filesystem's usage (`statfs`, which
//!   needs no permission on what the app made) when asked through its stdin. When the
//!   daemon's end of the attach stream closes (the daemon died) it exits, and the reaper or the
//!   sweep removes it and its volume.
//! - **Read back through the engine.** The outputs come out as the engine's archive of the
//!   keeper's `/output` (read as root by dockerd: a mode-000 directory hides nothing) and are
//!   copied into a host directory with modes the daemon chooses (`sandbox::output_copy`).
//!   So a daemon that is not root reads everything the app made, and removing the volume
//!   removes all of it, whatever the app did to modes or ownership.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::VolumeCreateRequest;
use bollard::query_parameters::{
    AttachContainerOptions, DownloadFromContainerOptions, ListVolumesOptions, RemoveVolumeOptions,
};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::{docker, is_not_found, Engine, EngineError};
use crate::sandbox::profile::{
    container_config, ContainerSpec, VolumeMount, LABEL_EXECUTOR, LABEL_MANAGED,
};
use crate::sandbox::settings::SandboxSettings;

/// Where the volume appears in the app's container and the keeper's.
pub const OUTPUT_DIR: &str = "/output";
/// Bytes the filesystem holds beyond the cap: a write that goes over the cap by up to this
/// much succeeds (and the run is `output_too_large`); the next fails.
const SLACK_BYTES: u64 = 1 << 20;
const KEEPER_MEMORY: u64 = 64 << 20;

/// The keeper's program: `= B N` once started and then for every byte on stdin; B is the bytes
/// in use (whole pages, as the filesystem counts them), N the entries below the root.
const KEEPER_SCRIPT: &str = r#"
const fs = require("fs");
const report = () => {
  let usage;
  try {
    const s = fs.statfsSync("/output");
    usage = `${(s.blocks - s.bfree) * s.bsize} ${s.files - s.ffree - 1}`;
  } catch (e) {
    usage = `error ${e.code}`;
  }
  process.stdout.write(`= ${usage}\n`);
};
report();
process.stdin.on("data", report);
process.stdin.on("end", () => process.exit(0));
"#;

/// The filesystem's usage as the keeper last reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputUsage {
    pub bytes: u64,
    pub entries: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Reported {
    usage: OutputUsage,
    /// Reports seen: the first says the keeper is up, each later one answers a question.
    answers: u64,
}

/// One attempt's `/output` volume and its keeper; [`OutputVolume::remove`] when done.
pub struct OutputVolume {
    engine: Engine,
    pub volume: String,
    keeper: Keeper,
    pub max_bytes: u64,
    pub max_files: usize,
}

/// The running keeper: its container, its reports, its stdin (where questions go) and the
/// task reading its reports.
struct Keeper {
    id: String,
    reported: watch::Receiver<Reported>,
    ask: tokio::sync::Mutex<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl OutputVolume {
    /// The mount the app's container gets.
    pub fn mount(&self) -> VolumeMount {
        VolumeMount {
            volume: self.volume.clone(),
            container: OUTPUT_DIR,
        }
    }

    /// Whether `usage` is over the byte or the entry cap: the app tried to write more than
    /// it may.
    pub fn over_cap(&self, usage: OutputUsage) -> bool {
        usage.bytes > self.max_bytes || usage.entries > self.max_files as u64
    }

    /// The usage now, asked of the keeper (after the app's container stopped, so nothing
    /// writes any more). An error when the keeper does not answer within 5 s.
    pub async fn usage_now(&self) -> Result<OutputUsage, String> {
        let mut reported = self.keeper.reported.clone();
        let before = reported.borrow().answers;
        {
            let mut ask = self.keeper.ask.lock().await;
            if let Err(e) = ask.write_all(b"?\n").await {
                return Err(format!("asking the /output keeper {}: {e}", self.keeper.id));
            }
            let _ = ask.flush().await;
        }
        let answered = tokio::time::timeout(
            Duration::from_secs(5),
            reported.wait_for(|r| r.answers > before),
        )
        .await;
        match answered {
            Ok(Ok(r)) => Ok(r.usage),
            Ok(Err(_)) => Err(format!(
                "the /output keeper {} stopped; the app's outputs are lost",
                self.keeper.id
            )),
            Err(_) => Err(format!(
                "the /output keeper {} did not answer within 5 s",
                self.keeper.id
            )),
        }
    }

    /// Bytes the filesystem holds: the cap and the slack.
    pub fn capacity(&self) -> u64 {
        self.max_bytes + SLACK_BYTES
    }

    /// The engine's tar archive of `/output` (entries named `./…`), read as root by dockerd.
    pub fn archive(
        &self,
    ) -> impl futures_util::Stream<Item = Result<bytes::Bytes, bollard::errors::Error>> + Send + 'static
    {
        let docker = self.engine.docker.clone();
        docker.download_from_container(
            &self.keeper.id,
            Some(DownloadFromContainerOptions {
                path: format!("{OUTPUT_DIR}/."),
            }),
        )
    }

    /// [`OutputVolume::remove`] in the background: the caller need not wait for it (if the
    /// daemon exits first, its reaper removes both).
    pub fn remove_later(self) {
        tokio::spawn(self.remove());
    }

    /// Removes the keeper, then the volume (and with it everything the app wrote). Failures
    /// are logged; the sweep retries.
    pub async fn remove(self) {
        self.keeper.reader.abort();
        self.engine.remove(&self.keeper.id).await;
        self.engine.remove_volume(&self.volume).await;
    }
}

impl Engine {
    /// Creates the attempt's `/output` volume and starts its keeper (see the module doc).
    /// `name` names the volume and, with `-keeper`, the keeper; `labels` are the attempt's.
    pub async fn create_output_volume(
        &self,
        settings: &SandboxSettings,
        name: &str,
        image: &str,
        labels: &HashMap<String, String>,
    ) -> Result<OutputVolume, EngineError> {
        let mut volume_labels = labels.clone();
        volume_labels.insert(LABEL_MANAGED.into(), "true".into());
        for (k, v) in &settings.labels {
            volume_labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.to_owned()),
                driver: Some("local".into()),
                driver_opts: Some(tmpfs_options(settings)),
                labels: Some(volume_labels),
                ..Default::default()
            })
            .await
            .map_err(docker("create the /output volume"))?;
        match self.start_keeper(settings, name, image, labels).await {
            Ok(keeper) => Ok(OutputVolume {
                engine: self.clone(),
                volume: name.to_owned(),
                keeper,
                max_bytes: settings.output_max_bytes,
                max_files: settings.output_max_files,
            }),
            Err((keeper, e)) => {
                if let Some(keeper) = keeper {
                    self.remove(&keeper).await;
                }
                self.remove_volume(name).await;
                Err(e)
            }
        }
    }

    /// Starts the keeper of `volume`; on failure, the id of a keeper to remove, if created.
    async fn start_keeper(
        &self,
        settings: &SandboxSettings,
        volume: &str,
        image: &str,
        labels: &HashMap<String, String>,
    ) -> Result<Keeper, (Option<String>, EngineError)> {
        let spec = ContainerSpec {
            name: format!("{volume}-keeper"),
            image: image.to_owned(),
            cmd: vec!["node".into(), "-e".into(), KEEPER_SCRIPT.into()],
            working_dir: "/",
            env: Vec::new(),
            mounts: Vec::new(),
            volumes: vec![VolumeMount {
                volume: volume.to_owned(),
                container: OUTPUT_DIR,
            }],
            memory_bytes: KEEPER_MEMORY,
            cpu: 0.5,
            tmp_size_bytes: 1 << 20,
            network: "none".into(),
            sysctls: HashMap::new(),
            labels: labels.clone(),
        };
        let mut config = container_config(&spec, settings);
        // The daemon asks for a fresh count through stdin; its end closing stops the keeper.
        config.open_stdin = Some(true);
        config.attach_stdin = Some(true);
        config.stdin_once = Some(false);
        let id = self
            .create_named(&spec.name, config)
            .await
            .map_err(|e| (None, docker("create the /output keeper")(e)))?;
        let failed = |action| {
            let id = id.clone();
            move |e| (Some(id), docker(action)(e))
        };
        let attached = self
            .long
            .attach_container(
                &id,
                Some(AttachContainerOptions {
                    stream: true,
                    stdin: true,
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(failed("attach to the /output keeper"))?;
        self.docker
            .start_container(&id, None)
            .await
            .map_err(failed("start the /output keeper"))?;
        let (tx, mut rx) = watch::channel(Reported::default());
        let mut output = attached.output;
        let keeper = id.clone();
        let reader = tokio::spawn(async move {
            let mut pending = Vec::new();
            while let Some(Ok(chunk)) = output.next().await {
                pending.extend_from_slice(&chunk.into_bytes());
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let line = String::from_utf8_lossy(&line);
                    match parse_report(line.trim_end()) {
                        Some(usage) => tx.send_modify(|r| {
                            r.usage = usage;
                            r.answers += 1;
                        }),
                        None => {
                            tracing::warn!(keeper = %keeper, line = %line.trim_end(), "the /output keeper said something unexpected")
                        }
                    }
                }
            }
        });
        // The first report: the keeper is up and the volume mounted.
        let first = tokio::time::timeout(Duration::from_secs(30), rx.changed()).await;
        if !matches!(first, Ok(Ok(()))) {
            reader.abort();
            return Err((
                Some(id.clone()),
                EngineError::Docker {
                    action: "start the /output keeper (it sent no usage report within 30 s)",
                    source: bollard::errors::Error::RequestTimeoutError,
                },
            ));
        }
        Ok(Keeper {
            id,
            reported: rx,
            ask: tokio::sync::Mutex::new(attached.input),
            reader,
        })
    }

    /// Removes a volume; gone already is fine, anything else is logged (the sweep retries).
    pub async fn remove_volume(&self, name: &str) {
        let removed = self
            .docker
            .remove_volume(name, Some(RemoveVolumeOptions { force: true }))
            .await;
        match removed {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                tracing::warn!(volume = name, error = %e, "could not remove a volume; the orphan sweep will retry")
            }
        }
    }

    /// The executors named on the volumes this daemon kind made (labels as found).
    pub async fn managed_volume_owners(&self) -> Result<Vec<String>, EngineError> {
        let filters = HashMap::from([("label".to_owned(), vec![format!("{LABEL_MANAGED}=true")])]);
        let listed = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(docker("list volumes"))?;
        Ok(listed
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.labels.get(LABEL_EXECUTOR).cloned())
            .collect())
    }

    /// Removes the volumes this daemon kind made for `executor` (run after its containers are
    /// gone, so none is in use).
    pub async fn remove_volumes_of(&self, executor: &str) {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_EXECUTOR}={executor}"),
            ],
        )]);
        let listed = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(filters),
            }))
            .await;
        match listed {
            Ok(listed) => {
                for volume in listed.volumes.unwrap_or_default() {
                    tracing::info!(volume = %volume.name, %executor, "removing an /output volume left behind");
                    self.remove_volume(&volume.name).await;
                }
            }
            Err(e) => tracing::warn!(%executor, error = %e, "could not list volumes for the sweep"),
        }
    }
}

/// The `local` driver's options for the tmpfs (see the module doc).
fn tmpfs_options(settings: &SandboxSettings) -> HashMap<String, String> {
    let (uid, gid) = settings.user_ids();
    let options = format!(
        "size={},nr_inodes={},uid={uid},gid={gid},mode=0700,nosuid,nodev,noexec",
        settings.output_max_bytes + SLACK_BYTES,
        settings.output_max_files + 2,
    );
    HashMap::from([
        ("type".to_owned(), "tmpfs".to_owned()),
        ("device".to_owned(), "tmpfs".to_owned()),
        ("o".to_owned(), options),
    ])
}

/// `= B N`; `None` for anything else (`= error …` included).
fn parse_report(line: &str) -> Option<OutputUsage> {
    let mut words = line.strip_prefix("= ")?.split(' ').map(str::parse::<u64>);
    match (words.next(), words.next(), words.next()) {
        (Some(Ok(bytes)), Some(Ok(entries)), None) => Some(OutputUsage { bytes, entries }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_bytes_and_entries() {
        assert_eq!(
            parse_report("= 4096 1"),
            Some(OutputUsage {
                bytes: 4096,
                entries: 1
            })
        );
        assert_eq!(parse_report("= 0 0"), Some(OutputUsage::default()));
        assert_eq!(parse_report("= error ENOENT"), None);
        assert_eq!(parse_report("= 1 2 3"), None);
        assert_eq!(parse_report("hello"), None);
    }

    #[test]
    fn the_tmpfs_is_capped_and_carries_nothing_to_the_host() {
        let settings = SandboxSettings::default();
        let o = &tmpfs_options(&settings)["o"];
        assert!(
            o.contains(&format!("size={}", 100_000_000 + SLACK_BYTES)),
            "{o}"
        );
        assert!(o.contains("nr_inodes=1002"), "{o}");
        assert!(o.contains("uid=1000,gid=1000,mode=0700"), "{o}");
        assert!(o.ends_with("nosuid,nodev,noexec"), "{o}");
    }
}
