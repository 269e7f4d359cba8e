//! Small output sinks of the sandbox: the install log (one capped file plus its tail, for the
//! error message of a failed install) and the stderr tail kept for a failed run's message.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::engine::{OutputSink, OutputStream};

/// Bytes of output kept for an error message.
const TAIL_BYTES: usize = 4096;
/// Lines of the tail shown in an error message.
const TAIL_LINES: usize = 20;

/// The last few KB of a byte stream.
#[derive(Debug, Default)]
pub struct Tail {
    bytes: VecDeque<u8>,
}

impl Tail {
    pub fn push(&mut self, chunk: &[u8]) {
        let chunk = &chunk[chunk.len().saturating_sub(TAIL_BYTES)..];
        let overflow = (self.bytes.len() + chunk.len()).saturating_sub(TAIL_BYTES);
        self.bytes.drain(..overflow);
        self.bytes.extend(chunk);
    }

    /// The last lines as text (invalid UTF-8 replaced), trimmed; `(no output)` when empty.
    pub fn text(&self) -> String {
        let bytes: Vec<u8> = self.bytes.iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.trim_end().lines().collect();
        let shown = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
        if shown.trim().is_empty() {
            "(no output)".to_owned()
        } else {
            shown
        }
    }
}

/// Writes both streams to one file (up to `cap` bytes) and keeps their common tail.
pub struct TailSink {
    file: std::fs::File,
    written: u64,
    cap: u64,
    tail: Tail,
}

impl TailSink {
    pub fn create(path: &Path, cap: u64) -> std::io::Result<Self> {
        Ok(Self {
            file: std::fs::File::create(path)?,
            written: 0,
            cap,
            tail: Tail::default(),
        })
    }

    pub fn tail_text(&self) -> String {
        self.tail.text()
    }
}

impl OutputSink for TailSink {
    fn output<'a>(&'a mut self, _stream: OutputStream, bytes: Bytes) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.tail.push(&bytes);
            let room = self.cap.saturating_sub(self.written) as usize;
            let kept = &bytes[..bytes.len().min(room)];
            if !kept.is_empty() && self.file.write_all(kept).is_ok() {
                self.written += kept.len() as u64;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_lines_only() {
        let mut tail = Tail::default();
        for i in 0..10_000 {
            tail.push(format!("line {i}\n").as_bytes());
        }
        let text = tail.text();
        assert!(text.ends_with("line 9999"), "{text}");
        assert_eq!(text.lines().count(), TAIL_LINES);
        assert_eq!(Tail::default().text(), "(no output)");
        let mut binary = Tail::default();
        binary.push(&[0xff, 0xfe, b'\n', b'o', b'k']);
        assert!(binary.text().ends_with("ok"));
    }
}
