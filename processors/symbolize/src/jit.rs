//! JIT frames: names from the perf map a runtime writes
//! (`/tmp/perf-PID.map`: `START SIZE NAME` per line, hex, appended as code is
//! generated), read inside the process's mount namespace under its
//! namespace pid.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_object_files::open_in_root;

/// One process's perf map, read incrementally.
#[derive(Debug, Default)]
pub struct PerfMap {
    /// start -> (end, name); entries never overlap: a later line replaces
    /// the code ranges it covers, as the runtime reused that memory.
    entries: BTreeMap<u64, (u64, Box<str>)>,
    /// Identity of the file read, to notice a new file.
    file: Option<(u64, u64)>,
    /// Bytes consumed so far (whole lines only).
    consumed: u64,
}

impl PerfMap {
    /// Applies perf map text; returns how many lines were malformed.
    pub fn apply(&mut self, text: &str) -> usize {
        let mut malformed = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match parse_line(line) {
                Some((start, size, name)) => self.insert(start, start.saturating_add(size), name),
                None => malformed += 1,
            }
        }
        malformed
    }

    fn insert(&mut self, start: u64, end: u64, name: &str) {
        if end <= start {
            return;
        }
        if let Some((&prev, &(prev_end, _))) = self.entries.range(..start).next_back() {
            if prev_end > start {
                self.entries.remove(&prev);
            }
        }
        let covered: Vec<u64> = self.entries.range(start..end).map(|(&s, _)| s).collect();
        for s in covered {
            self.entries.remove(&s);
        }
        self.entries.insert(start, (end, name.into()));
    }

    /// The name of the code holding `address`.
    pub fn lookup(&self, address: u64) -> Option<&str> {
        let (_, (end, name)) = self.entries.range(..=address).next_back()?;
        (address < *end).then_some(name)
    }

    /// Number of code ranges.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn parse_line(line: &str) -> Option<(u64, u64, &str)> {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let (start, rest) = line.split_once(' ')?;
    let (size, name) = rest.split_once(' ')?;
    Some((hex(start)?, hex(size)?, name.trim_end()))
}

/// Perf maps of every process with JIT frames, refreshed at most once per
/// window and forgotten when unused.
pub struct PerfMaps {
    proc_root: PathBuf,
    maps: HashMap<u32, (PerfMap, Instant)>,
}

/// Maps unused this long are dropped (the process is gone or stopped JITting).
const FORGET_AFTER: Duration = Duration::from_secs(600);

impl PerfMaps {
    /// Perf maps of processes under `proc_root`.
    pub fn new(proc_root: &Path) -> Self {
        Self {
            proc_root: proc_root.to_owned(),
            maps: HashMap::new(),
        }
    }

    /// Reads what `pid` appended to its perf map since the last refresh (all
    /// of it when the file is new). False when the process has none.
    pub fn refresh(&mut self, pid: u32) -> bool {
        let now = Instant::now();
        self.maps.retain(|_, (_, used)| now - *used < FORGET_AFTER);
        let Some(ns_pid) = namespace_pid(&self.proc_root, pid) else {
            // Gone: what was read while it ran still names its samples.
            return self.maps.contains_key(&pid);
        };
        let root = self.proc_root.join(pid.to_string()).join("root");
        let path = PathBuf::from(format!("/tmp/perf-{ns_pid}.map"));
        let Ok(mut file) = open_in_root(&root, &path) else {
            return self.maps.contains_key(&pid);
        };
        let Ok(meta) = file.metadata() else {
            return false;
        };
        let (map, used) = self
            .maps
            .entry(pid)
            .or_insert_with(|| (PerfMap::default(), now));
        *used = now;
        let identity = (meta.dev(), meta.ino());
        if map.file != Some(identity) || meta.len() < map.consumed {
            *map = PerfMap {
                file: Some(identity),
                ..PerfMap::default()
            };
        }
        let mut appended = Vec::new();
        if file.seek(SeekFrom::Start(map.consumed)).is_ok() {
            let _ = file.read_to_end(&mut appended);
        }
        // A line still being written is read next time.
        let complete = appended
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        map.apply(&String::from_utf8_lossy(&appended[..complete]));
        map.consumed += complete as u64;
        true
    }

    /// The JIT name of `address` in `pid`, after [`PerfMaps::refresh`].
    pub fn lookup(&self, pid: u32, address: u64) -> Option<&str> {
        self.maps.get(&pid)?.0.lookup(address)
    }
}

/// The pid of `pid` inside its own pid namespace (the last `NSpid:` field),
/// which is what a containerized runtime names its perf map after.
pub fn namespace_pid(proc_root: &Path, pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|ids| ids.split_whitespace().last())
        .and_then(|id| id.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_pid_is_the_innermost() {
        let proc_root = tempfile::tempdir().unwrap();
        std::fs::create_dir(proc_root.path().join("4242")).unwrap();
        std::fs::write(
            proc_root.path().join("4242/status"),
            "Name:\tnode\nNSpid:\t4242\t17\nNSsid:\t1\n",
        )
        .unwrap();
        assert_eq!(namespace_pid(proc_root.path(), 4242), Some(17));
        assert_eq!(namespace_pid(proc_root.path(), 1), None);
        let me = std::process::id();
        assert_eq!(namespace_pid(Path::new("/proc"), me), Some(me));
    }

    #[test]
    fn later_lines_replace_the_ranges_they_cover() {
        let mut m = PerfMap::default();
        let bad = m.apply(
            "3ef414c0 40 LazyCompile:~fib /app/fib.js:1\n\
             0x3ef41500 0x20 Builtin:ArgumentsAdaptor\n\
             garbage\n\
             3ef414d0 40 LazyCompile:*fib /app/fib.js:1\n",
        );
        assert_eq!(bad, 1);
        assert_eq!(m.lookup(0x3ef414c0), None, "replaced by the optimized code");
        assert_eq!(m.lookup(0x3ef414d0), Some("LazyCompile:*fib /app/fib.js:1"));
        assert_eq!(m.lookup(0x3ef4150f), Some("LazyCompile:*fib /app/fib.js:1"));
        assert_eq!(m.lookup(0x3ef41510), None);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn refresh_reads_appended_lines_of_the_processs_own_file() {
        // This process's own perf map, found through /proc like any other.
        let me = std::process::id();
        let path = PathBuf::from(format!("/tmp/perf-{me}.map"));
        std::fs::write(&path, "1000 10 first\n2000 10 sec").unwrap();
        let mut maps = PerfMaps::new(Path::new("/proc"));
        assert!(maps.refresh(me));
        assert_eq!(maps.lookup(me, 0x1008), Some("first"));
        assert_eq!(maps.lookup(me, 0x2000), None, "the partial line waits");
        std::fs::write(&path, "1000 10 first\n2000 10 second\n3000 10 third\n").unwrap();
        assert!(maps.refresh(me));
        assert_eq!(maps.lookup(me, 0x2000), Some("second"));
        assert_eq!(maps.lookup(me, 0x3001), Some("third"));
        std::fs::remove_file(&path).unwrap();
        assert!(!PerfMaps::new(Path::new("/proc")).refresh(me));
    }
}
