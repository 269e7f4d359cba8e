//! Splitting an app's output into lines for the daemon's own log (tracing), in bounded memory:
//! a line longer than the buffer comes out in pieces, never accumulated whole. Pure.

/// Longest piece of a line handed to tracing; longer lines are split.
pub const MAX_LINE: usize = 4096;

/// Assembles lines across `feed` calls. Holds at most `max` bytes.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max: max.max(1),
        }
    }

    /// Calls `emit` for every complete line in `bytes` (without its `\n` or `\r\n`), and for
    /// every `max`-byte piece of a line that has not ended yet.
    pub fn feed(&mut self, mut bytes: &[u8], mut emit: impl FnMut(&[u8])) {
        while !bytes.is_empty() {
            match bytes.iter().position(|b| *b == b'\n') {
                Some(end) if self.buf.is_empty() && end <= self.max => {
                    emit(trim_cr(&bytes[..end]));
                    bytes = &bytes[end + 1..];
                }
                Some(end) if self.buf.len() + end <= self.max => {
                    self.buf.extend_from_slice(&bytes[..end]);
                    emit(trim_cr(&self.buf));
                    self.buf.clear();
                    bytes = &bytes[end + 1..];
                }
                _ => {
                    // No line end within the room left: fill the buffer and emit it as a piece.
                    let take = (self.max - self.buf.len()).min(bytes.len());
                    self.buf.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.buf.len() == self.max {
                        emit(&self.buf);
                        self.buf.clear();
                    }
                }
            }
        }
    }

    /// Emits what is left of an unterminated last line.
    pub fn flush(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.buf.is_empty() {
            emit(trim_cr(&self.buf));
            self.buf.clear();
        }
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(max: usize, feeds: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut splitter = LineSplitter::new(max);
        let mut out = Vec::new();
        for bytes in feeds {
            splitter.feed(bytes, |l| out.push(l.to_vec()));
        }
        splitter.flush(|l| out.push(l.to_vec()));
        out
    }

    #[test]
    fn lines_are_assembled_across_feeds_and_crlf_is_trimmed() {
        let out = lines(100, &[b"one\r\ntw", b"o\n\nthr", b"ee"]);
        assert_eq!(
            out,
            vec![b"one".to_vec(), b"two".to_vec(), vec![], b"three".to_vec()]
        );
    }

    #[test]
    fn a_line_longer_than_the_buffer_comes_out_in_pieces() {
        let long = [b'x'; 25];
        let out = lines(10, &[&long[..7], &long[7..], b"\nend\n"]);
        let sizes: Vec<usize> = out.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![10, 10, 5, 3]);
        assert_eq!(out[3], b"end");
    }

    #[test]
    fn memory_stays_bounded_whatever_is_fed() {
        let mut splitter = LineSplitter::new(64);
        let mut pieces = 0;
        for _ in 0..1000 {
            splitter.feed(&[b'y'; 1000], |l| {
                assert!(l.len() <= 64);
                pieces += 1;
            });
            assert!(splitter.buf.capacity() <= 128);
        }
        assert_eq!(pieces, 1000 * 1000 / 64);
    }
}
