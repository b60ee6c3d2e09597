//! The last bytes the agent wrote to stderr, kept in memory so a panic
//! report can carry them (Parca Agent's `--telemetry-stderr-buffer-size-kb`).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Mutex;

/// Bytes kept until a component sets another size.
const DEFAULT_CAPACITY: usize = 4096 << 10;

static TAIL: Mutex<Tail> = Mutex::new(Tail {
    bytes: VecDeque::new(),
    capacity: DEFAULT_CAPACITY,
});

struct Tail {
    bytes: VecDeque<u8>,
    capacity: usize,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(self.capacity)..];
        let excess = (self.bytes.len() + data.len()).saturating_sub(self.capacity);
        self.bytes.drain(..excess.min(self.bytes.len()));
        self.bytes.extend(data);
    }
}

/// Sets how many bytes are kept (the oldest go first).
pub fn set_capacity(bytes: usize) {
    let mut tail = TAIL.lock().unwrap_or_else(|e| e.into_inner());
    tail.capacity = bytes;
    tail.push(&[]);
}

/// What is kept, as text.
pub fn snapshot() -> String {
    let tail = TAIL.lock().unwrap_or_else(|e| e.into_inner());
    let (a, b) = tail.bytes.as_slices();
    let mut all = a.to_vec();
    all.extend_from_slice(b);
    String::from_utf8_lossy(&all).into_owned()
}

/// A writer to stderr that also keeps what it writes; give
/// `StderrTail::default` to a logging layer as its writer.
#[derive(Clone, Copy, Debug, Default)]
pub struct StderrTail;

impl Write for StderrTail {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = std::io::stderr().write(buf)?;
        TAIL.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_bytes_are_kept() {
        let mut tail = Tail {
            bytes: VecDeque::new(),
            capacity: 8,
        };
        tail.push(b"hello ");
        tail.push(b"world");
        assert_eq!(tail.bytes.iter().copied().collect::<Vec<_>>(), b"lo world");
        tail.push(b"0123456789");
        assert_eq!(tail.bytes.iter().copied().collect::<Vec<_>>(), b"23456789");
    }
}
