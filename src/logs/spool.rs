//! One stream's spool file: the local copy of everything kept of that stream, written as the
//! container's output arrives and read back by the uploader. Enforces the per-stream cap (bytes
//! past it are counted, not written) and appends the truncation marker when sealed.
//!
//! Writes go straight to the file (no user-space buffer), so whatever `append` returned for is
//! visible to the uploader at once; nothing here waits on the network.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::layout::{self, MARKER_RESERVE};
use super::LogStream;

/// Counts of one stream so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Bytes the app wrote.
    pub received: u64,
    /// Bytes in the spool (what storage will hold, the marker included once sealed).
    pub stored: u64,
    /// Bytes not kept: over the cap, or lost to a spool write error.
    pub dropped: u64,
}

#[derive(Debug)]
pub(super) struct StreamSpool {
    stream: LogStream,
    path: PathBuf,
    /// `None` once a write failed: the rest of the stream is counted as lost.
    file: Option<File>,
    cap: u64,
    stats: StreamStats,
    spool_error: Option<String>,
    ends_with_newline: bool,
    /// Bytes of the file the uploader may read; stored after each write (Release).
    published: Arc<AtomicU64>,
}

impl StreamSpool {
    /// Creates (or empties) `<dir>/<stream>.spool`.
    pub(super) fn create(dir: &Path, stream: LogStream, cap: u64) -> std::io::Result<Self> {
        let path = dir.join(format!("{}.spool", stream.as_str()));
        let file = File::create(&path)?;
        Ok(Self {
            stream,
            path,
            file: Some(file),
            cap,
            stats: StreamStats::default(),
            spool_error: None,
            ends_with_newline: true,
            published: Arc::default(),
        })
    }

    pub(super) fn stream(&self) -> LogStream {
        self.stream
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn published(&self) -> Arc<AtomicU64> {
        self.published.clone()
    }

    pub(super) fn stats(&self) -> StreamStats {
        self.stats
    }

    pub(super) fn spool_error(&self) -> Option<&str> {
        self.spool_error.as_deref()
    }

    /// Writes what fits under the cap (less the marker's reserve) and counts the rest. Returns
    /// the part that was kept.
    pub(super) fn append<'b>(&mut self, bytes: &'b [u8]) -> &'b [u8] {
        self.stats.received += bytes.len() as u64;
        let room = self
            .cap
            .saturating_sub(MARKER_RESERVE)
            .saturating_sub(self.stats.stored);
        let keep = &bytes[..bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
        self.stats.dropped += (bytes.len() - keep.len()) as u64;
        if keep.is_empty() {
            return keep;
        }
        let Some(file) = self.file.as_mut() else {
            self.stats.dropped += keep.len() as u64;
            return &[];
        };
        if let Err(e) = file.write_all(keep) {
            // A partial write may have landed: cut the file back to what was counted, so the
            // stored log stays exactly the bytes reported.
            let _ = file.set_len(self.stats.stored);
            tracing::warn!(stream = self.stream.as_str(), path = %self.path.display(), error = %e, "cannot write the log spool; the rest of this stream is lost");
            self.spool_error = Some(e.to_string());
            self.file = None;
            self.stats.dropped += keep.len() as u64;
            return &[];
        }
        self.stats.stored += keep.len() as u64;
        self.ends_with_newline = keep.ends_with(b"\n");
        self.published.store(self.stats.stored, Ordering::Release);
        keep
    }

    /// Appends the truncation marker when bytes were dropped; the stream takes no more.
    pub(super) fn seal(&mut self) {
        if self.stats.dropped > 0 {
            let line = layout::marker(
                self.stream,
                self.stats.dropped,
                self.cap,
                self.spool_error.as_deref(),
                self.ends_with_newline,
            );
            if let Some(file) = self.file.as_mut() {
                if file.write_all(&line).is_ok() {
                    self.stats.stored += line.len() as u64;
                } else {
                    let _ = file.set_len(self.stats.stored);
                }
            }
        }
        self.file = None;
        self.published.store(self.stats.stored, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_over_the_cap_are_counted_and_the_marker_keeps_the_total_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let cap = 4096;
        let mut spool = StreamSpool::create(dir.path(), LogStream::Stdout, cap).unwrap();
        for _ in 0..100 {
            spool.append(&[b'a'; 100]);
        }
        spool.seal();
        let stats = spool.stats();
        assert_eq!(stats.received, 10_000);
        assert_eq!(stats.dropped, 10_000 - (cap - MARKER_RESERVE));
        let stored = std::fs::read(spool.path()).unwrap();
        assert_eq!(stored.len() as u64, stats.stored);
        assert!(stats.stored <= cap);
        let text = String::from_utf8(stored).unwrap();
        assert!(
            text.ends_with(&format!(
                "a\n[app-executor: {} bytes of stdout dropped over the 4KiB cap]\n",
                stats.dropped
            )),
            "{}",
            &text[text.len() - 100..]
        );
        assert_eq!(spool.published().load(Ordering::Acquire), stats.stored);
    }

    #[test]
    fn a_stream_under_the_cap_is_stored_as_is_without_a_marker() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = StreamSpool::create(dir.path(), LogStream::Stderr, 1 << 20).unwrap();
        spool.append(b"\xff\xfe binary\x00");
        spool.append(b"no newline at the end");
        spool.seal();
        assert_eq!(
            std::fs::read(spool.path()).unwrap(),
            b"\xff\xfe binary\x00no newline at the end"
        );
        assert_eq!(spool.stats().dropped, 0);
    }
}
