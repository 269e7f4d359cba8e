//! Where the run container's output goes: spooled and streamed to the run's log, counted in
//! the metrics, and the stderr tail kept for a failure message.

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::logs::{LogStream, RunLog};
use crate::ops::metrics;
use crate::sandbox::output::Tail;
use crate::sandbox::{OutputSink, OutputStream};

/// The run container's output: spooled and streamed to storage ([`RunLog`]), and the stderr
/// tail kept for a failure message.
pub(super) struct RunSink {
    pub(super) log: RunLog,
    pub(super) stderr_tail: Tail,
}

impl OutputSink for RunSink {
    fn output<'a>(&'a mut self, stream: OutputStream, bytes: Bytes) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let stream = match stream {
                OutputStream::Stdout => LogStream::Stdout,
                OutputStream::Stderr => {
                    self.stderr_tail.push(&bytes);
                    LogStream::Stderr
                }
            };
            metrics::log_bytes(stream.as_str(), bytes.len() as u64);
            self.log.append(stream, &bytes);
        })
    }
}
