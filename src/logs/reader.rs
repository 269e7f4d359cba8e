//! `app-executor logs <run> [--follow]`: a run's logs read back from storage. The app's stdout
//! goes to `out`, its stderr to `err`; the reader's own notes go to `err` as
//! `[app-executor: …]` lines.
//!
//! A settled run (finished, or cancelled and closed) prints its compacted `stdout.log` and
//! `stderr.log`, or the chunks of its last claim when those are missing (logs not durable). A
//! live run prints the chunks of its current claim in order; `--follow` keeps polling for new
//! chunks (and for a new claim after a retry) until the run settles, then prints the rest from
//! the compacted objects, skipping what it already printed: chunks of a claim concatenate to
//! exactly its compacted object.

use std::io::Write;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::StreamExt;
use uuid::Uuid;

use super::layout;
use super::{LogError, LogStream};
use crate::db::output::{run_log_info, RunLogInfo};
use crate::storage::{ListEntry, Storage, StorageError, APP_LOGS_BUCKET};

/// How often `--follow` looks for new chunks.
const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// Prints the logs of `run` (its id as text). With `follow`, returns once the run has settled.
pub async fn print_run_logs(
    pool: &Pool,
    storage: &dyn Storage,
    run: &str,
    follow: bool,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> Result<(), LogError> {
    let run_id: Uuid = run
        .trim()
        .parse()
        .map_err(|_| LogError::BadRunId(run.to_owned()))?;
    let lookup = || async {
        run_log_info(pool, run_id)
            .await
            .map_err(|source| LogError::Lookup { run_id, source })?
            .ok_or(LogError::UnknownRun(run_id))
    };
    let info = lookup().await?;
    let mut reader = Reader {
        storage,
        run_id,
        noun: if info.build { "build" } else { "run" },
        prefix: if info.build {
            layout::build_prefix(info.app_id, run_id)
        } else {
            layout::run_prefix(info.app_id, run_id)
        },
        folder: None,
        next_seq: [1, 1],
        printed: [0, 0],
        out,
        err,
    };
    let mut info = info;
    let result = async {
        loop {
            if info.settled {
                return reader.print_settled(&info).await;
            }
            let current = match (info.status.as_str(), info.started_at) {
                ("running", Some(claimed)) => Some(layout::attempt_folder(info.attempt, claimed)),
                _ => reader.latest_folder().await?,
            };
            if let Some(folder) = current {
                reader.switch_to(folder)?;
            }
            reader.print_new_chunks().await?;
            if !follow {
                if reader.folder.is_none() {
                    reader.note(&format!(
                        "{} {run_id} is {}; no output yet",
                        reader.noun, info.status
                    ))?;
                }
                return Ok(());
            }
            tokio::time::sleep(FOLLOW_POLL).await;
            info = lookup().await?;
        }
    }
    .await;
    match result {
        // The reader went away (`| head`): not an error of ours.
        Err(LogError::Print { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            Ok(())
        }
        other => other,
    }
}

struct Reader<'a> {
    storage: &'a dyn Storage,
    run_id: Uuid,
    /// `run` or `build`, for the notes.
    noun: &'static str,
    /// `app_{appId}/runs/{runId}/` (or `app_{appId}/builds/{buildId}/`).
    prefix: String,
    /// The claim folder being printed.
    folder: Option<String>,
    /// Per stream (`[stdout, stderr]`): the next chunk to print and the bytes printed.
    next_seq: [u32; 2],
    printed: [u64; 2],
    out: &'a mut (dyn Write + Send),
    err: &'a mut (dyn Write + Send),
}

impl Reader<'_> {
    fn storage_error(&self, source: StorageError) -> LogError {
        LogError::Storage {
            run_id: self.run_id,
            source,
        }
    }

    fn write(&mut self, stream: LogStream, bytes: &[u8]) -> Result<(), LogError> {
        let writer = match stream {
            LogStream::Stdout => &mut *self.out,
            LogStream::Stderr => &mut *self.err,
        };
        writer.write_all(bytes).map_err(|source| LogError::Print {
            run_id: self.run_id,
            source,
        })
    }

    fn flush(&mut self) -> Result<(), LogError> {
        self.out
            .flush()
            .and_then(|()| self.err.flush())
            .map_err(|source| LogError::Print {
                run_id: self.run_id,
                source,
            })
    }

    fn note(&mut self, text: &str) -> Result<(), LogError> {
        self.flush()?;
        self.write(
            LogStream::Stderr,
            format!("[app-executor: {text}]\n").as_bytes(),
        )?;
        self.flush()
    }

    /// The newest claim folder under the run's prefix.
    async fn latest_folder(&self) -> Result<Option<String>, LogError> {
        let entries = self
            .storage
            .list(APP_LOGS_BUCKET, &self.prefix)
            .await
            .map_err(|e| self.storage_error(e))?;
        Ok(entries
            .iter()
            .filter_map(|e| match e {
                ListEntry::Folder { name } => {
                    layout::parse_attempt_folder(name).map(|key| (key, name.clone()))
                }
                ListEntry::Object { .. } => None,
            })
            .max()
            .map(|(_, name)| name))
    }

    /// Prints from `folder` from now on; a new claim starts its streams over.
    fn switch_to(&mut self, folder: String) -> Result<(), LogError> {
        if self.folder.as_ref() == Some(&folder) {
            return Ok(());
        }
        if self.folder.is_some() {
            let attempt = layout::parse_attempt_folder(&folder).map_or(0, |(n, _)| n);
            self.note(&format!(
                "{} {} was claimed again (attempt {attempt}); its output starts over below",
                self.noun, self.run_id
            ))?;
        }
        self.folder = Some(folder);
        self.next_seq = [1, 1];
        self.printed = [0, 0];
        Ok(())
    }

    /// Prints the chunks of the current folder not printed yet, in order, per stream. Chunk
    /// names are fixed by their sequence number, so this asks for the next one until storage
    /// has no more (no listing: two requests per poll when nothing is new).
    async fn print_new_chunks(&mut self) -> Result<(), LogError> {
        let Some(folder) = self.folder.clone() else {
            return Ok(());
        };
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            let i = stream.index();
            loop {
                let key = format!(
                    "{}{folder}/{}",
                    self.prefix,
                    layout::chunk_name(stream, self.next_seq[i])
                );
                let bytes = match self.storage.download(APP_LOGS_BUCKET, &key).await {
                    Ok(download) => download.bytes().await,
                    Err(e) => Err(e),
                };
                let bytes = match bytes {
                    Ok(bytes) => bytes,
                    // Not uploaded yet, or deleted after compaction: the rest comes later, or
                    // from the compacted object once the run settles.
                    Err(StorageError::NotFound { .. }) => break,
                    Err(e) => return Err(self.storage_error(e)),
                };
                self.write(stream, &bytes)?;
                self.printed[i] += bytes.len() as u64;
                self.next_seq[i] += 1;
            }
        }
        self.flush()
    }

    /// The run settled: prints the rest of its logs from the compacted objects, or from the
    /// last claim's chunks when they are missing.
    async fn print_settled(&mut self, info: &RunLogInfo) -> Result<(), LogError> {
        let finishing = info
            .started_at
            .map(|claimed| layout::attempt_folder(info.attempt, claimed));
        let mut compacted = Vec::new();
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            let key = format!("{}{}.log", self.prefix, stream.as_str());
            let found = self
                .storage
                .head(APP_LOGS_BUCKET, &key)
                .await
                .map_err(|e| self.storage_error(e))?;
            if found.is_some() {
                compacted.push((stream, key));
            }
        }
        if compacted.len() == 2 {
            let same_claim = finishing.is_some() && self.folder == finishing;
            if !same_claim && self.printed.iter().any(|p| *p > 0) {
                self.note(&format!(
                    "{} {} finished in another attempt; its complete output follows",
                    self.noun, self.run_id
                ))?;
            }
            // One download at a time: a body left waiting while the other prints could time out.
            for (stream, key) in compacted {
                let mut skip = if same_claim {
                    self.printed[stream.index()]
                } else {
                    0
                };
                let download = self
                    .storage
                    .download(APP_LOGS_BUCKET, &key)
                    .await
                    .map_err(|e| self.storage_error(e))?;
                let mut body = download.body;
                while let Some(piece) = body.next().await {
                    let piece = piece.map_err(|e| self.storage_error(e))?;
                    let len = piece.len() as u64;
                    if skip >= len {
                        skip -= len;
                        continue;
                    }
                    self.write(stream, &piece[skip as usize..])?;
                    skip = 0;
                }
            }
            return self.flush();
        }
        let folder = match finishing {
            Some(folder) => Some(folder),
            None => self.latest_folder().await?,
        };
        match folder {
            Some(folder) => {
                self.switch_to(folder)?;
                self.print_new_chunks().await?;
                if self.printed == [0, 0] {
                    self.note(&format!(
                        "{} {} ({}) has no logs in storage",
                        self.noun, self.run_id, info.status
                    ))?;
                } else {
                    self.note(&format!(
                        "{} {} ({}): its compacted logs are missing (logs_incomplete); printed the chunks that reached storage",
                        self.noun, self.run_id, info.status
                    ))?;
                }
                Ok(())
            }
            None => self.note(&format!(
                "{} {} ({}) has no logs in storage",
                self.noun, self.run_id, info.status
            )),
        }
    }
}
