//! What the receiver knows of each sampled process: its name and executable
//! mappings with build ids, read from /proc when the process is first seen or
//! execs, kept until the window after it exits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use agent_object_files::file_id::{build_id_of, BuildId};
use tracing::{debug, info};

use crate::runtimes::go::{GoBinary, GoDetectError};
use crate::runtimes::jvm::{may_be_jvm, JvmBinary, JvmProcess};
use crate::runtimes::php::{may_be_php, PhpBinary, PhpProcess};
use crate::runtimes::python::{version_of_path, PythonBinary, PythonProcess};
use crate::runtimes::ruby::{may_be_ruby, RubyBinary, RubyProcess};
use crate::runtimes::v8::{may_be_v8, V8Binary, V8Process};
use crate::runtimes::DetectError;
use crate::runtimes::Runtime;

/// One executable mapping of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutableMapping {
    /// First address.
    pub start: u64,
    /// First address past the end.
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// Path as the process sees it (`[vdso]` for the vDSO).
    pub path: String,
    /// Inode; 0 for pseudo-files such as the vDSO.
    pub inode: u64,
    /// Build id, when the file could be read.
    pub build_id: Option<BuildId>,
}

/// A tracked process.
#[derive(Clone, Debug, Default)]
pub struct ProcessInfo {
    /// `/proc/PID/comm`.
    pub comm: String,
    /// Executable mappings sorted by address.
    pub mappings: Vec<ExecutableMapping>,
    /// Anonymous executable memory (JIT code), as (start, end).
    pub anonymous: Vec<(u64, u64)>,
    /// Exited: dropped after the next window is emitted.
    pub exited: bool,
    /// How often the process had exec'd (as the BPF program counts) when
    /// these mappings were read; `None` when that is not known for sure.
    pub generation: Option<u32>,
    /// The interpreter it runs, if the unwinder knows it.
    pub runtime: Option<Runtime>,
    /// A Go program: where its goroutine labels are.
    pub go: Option<GoBinary>,
}

impl ProcessInfo {
    /// `address` lies in one of its executable mappings (file or anonymous).
    pub fn covers(&self, address: u64) -> bool {
        self.mapping_of(address).is_some()
            || self
                .anonymous
                .iter()
                .any(|&(s, e)| (s..e).contains(&address))
    }

    /// The mapping holding `address`.
    pub fn mapping_of(&self, address: u64) -> Option<(usize, &ExecutableMapping)> {
        let i = self.mappings.partition_point(|m| m.start <= address);
        let i = i.checked_sub(1)?;
        let m = &self.mappings[i];
        (address < m.end).then_some((i, m))
    }
}

/// One line of /proc/PID/maps.
#[derive(Debug, PartialEq, Eq)]
pub struct MapsLine<'a> {
    /// Start address.
    pub start: u64,
    /// End address.
    pub end: u64,
    /// Executable.
    pub executable: bool,
    /// File offset.
    pub offset: u64,
    /// Device, `major:minor`.
    pub device: &'a str,
    /// Inode.
    pub inode: u64,
    /// Path or pseudo-name; empty for anonymous memory. A file replaced
    /// on disk since it was mapped loses its ` (deleted)` mark here.
    pub path: &'a str,
}

impl MapsLine<'_> {
    /// Where the mapped file can be opened from `dir` (`/proc/PID`):
    /// `map_files` reaches the very file mapped, even inside a container
    /// or replaced on disk; the process's root by path is the fallback.
    pub fn file_paths(&self, dir: &Path) -> [PathBuf; 2] {
        mapped_file_paths(dir, self.start, self.end, self.path)
    }
}

impl ExecutableMapping {
    /// Where the mapped file can be opened from `dir`, as [`MapsLine::file_paths`].
    pub fn file_paths(&self, dir: &Path) -> [PathBuf; 2] {
        mapped_file_paths(dir, self.start, self.end, &self.path)
    }
}

fn mapped_file_paths(dir: &Path, start: u64, end: u64, path: &str) -> [PathBuf; 2] {
    [
        dir.join("map_files").join(format!("{start:x}-{end:x}")),
        dir.join("root").join(path.trim_start_matches('/')),
    ]
}

/// Parses one /proc/PID/maps line.
pub fn parse_maps_line(line: &str) -> Option<MapsLine<'_>> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let device = fields.next()?;
    let inode = fields.next()?;
    let path = fields
        .next()
        .unwrap_or("")
        .trim_start()
        .trim_end_matches(" (deleted)");
    let (start, end) = range.split_once('-')?;
    Some(MapsLine {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        offset: u64::from_str_radix(offset, 16).ok()?,
        device,
        inode: inode.parse().ok()?,
        path,
    })
}

/// A file holding an interpreter the BPF walker knows.
enum InterpreterBinary {
    Python(PythonBinary),
    Php(PhpBinary),
    Ruby(RubyBinary),
    V8(V8Binary),
    Jvm(JvmBinary),
}

impl InterpreterBinary {
    fn version(&self) -> (u8, u8) {
        match self {
            InterpreterBinary::Python(b) => b.version,
            InterpreterBinary::Php(b) => b.version,
            InterpreterBinary::Ruby(b) => b.version,
            InterpreterBinary::V8(b) => b.version,
            InterpreterBinary::Jvm(b) => b.version,
        }
    }
}

/// Every process sampled recently, and build ids cached per file.
pub struct ProcessTracker {
    proc_root: PathBuf,
    /// Shared, so a window's batch is built from a snapshot while events
    /// go on updating the tracker.
    processes: HashMap<u32, Arc<ProcessInfo>>,
    /// Keyed by (device, inode): one read per file however many processes map it.
    build_ids: HashMap<(String, u64), Option<BuildId>>,
    /// Interpreter binaries, keyed like `build_ids`; `None`: not usable.
    runtimes: HashMap<(String, u64), Option<InterpreterBinary>>,
    /// Go binaries, keyed like `build_ids`; `None`: not Go, or no labels.
    go_binaries: HashMap<(String, u64), Option<GoBinary>>,
    /// Look for Python interpreters.
    python: bool,
    /// Look for PHP interpreters.
    php: bool,
    /// Look for Ruby interpreters.
    ruby: bool,
    /// Look for V8 (Node.js).
    v8: bool,
    /// Look for the JVM (HotSpot).
    jvm: bool,
    /// Processes that vanished before they could be read.
    pub vanished: u64,
}

impl ProcessTracker {
    /// A tracker reading `proc_root` (normally `/proc`).
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            processes: HashMap::new(),
            build_ids: HashMap::new(),
            runtimes: HashMap::new(),
            go_binaries: HashMap::new(),
            python: true,
            php: true,
            ruby: true,
            v8: true,
            jvm: true,
            vanished: 0,
        }
    }

    /// Looks for Python interpreters (or not).
    pub fn with_python(mut self, python: bool) -> Self {
        self.python = python;
        self
    }

    /// Looks for PHP interpreters (or not).
    pub fn with_php(mut self, php: bool) -> Self {
        self.php = php;
        self
    }

    /// Looks for Ruby interpreters (or not).
    pub fn with_ruby(mut self, ruby: bool) -> Self {
        self.ruby = ruby;
        self
    }

    /// Looks for V8 (Node.js) (or not).
    pub fn with_v8(mut self, v8: bool) -> Self {
        self.v8 = v8;
        self
    }

    /// Looks for the JVM (or not).
    pub fn with_jvm(mut self, jvm: bool) -> Self {
        self.jvm = jvm;
        self
    }

    /// Processes running each interpreter (e.g. `cpython 3.11`).
    pub fn runtimes(&self) -> HashMap<String, usize> {
        let mut found = HashMap::new();
        for p in self.processes.values().filter(|p| !p.exited) {
            if let Some(r) = &p.runtime {
                *found.entry(r.describe()).or_default() += 1;
            }
        }
        found
    }

    /// Number of processes tracked.
    pub fn len(&self) -> usize {
        self.processes.len()
    }

    /// True when no process is tracked.
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }

    /// What is known of `pid`.
    pub fn get(&self, pid: u32) -> Option<&ProcessInfo> {
        self.processes.get(&pid).map(|p| &**p)
    }

    /// What is known of `pid`, shared.
    pub fn get_shared(&self, pid: u32) -> Option<Arc<ProcessInfo>> {
        self.processes.get(&pid).cloned()
    }

    /// What is known of `pid`, read first if it is not known yet.
    pub fn shared(&mut self, pid: u32) -> Option<Arc<ProcessInfo>> {
        self.ensure(pid);
        self.processes.get(&pid).cloned()
    }

    /// (Re)reads `pid` from /proc; false when it is gone (counted, not an
    /// error: what was known of it stays).
    pub fn observe(&mut self, pid: u32) -> bool {
        let dir = self.proc_root.join(pid.to_string());
        let Ok(maps) = std::fs::read_to_string(dir.join("maps")) else {
            self.vanished += 1;
            return false;
        };
        if maps.is_empty() {
            // Exiting (its memory is gone already; what was read stays) or a
            // kernel thread (no user stacks): nothing to know.
            if !self.processes.contains_key(&pid) {
                self.vanished += 1;
            }
            return false;
        }
        let comm = std::fs::read_to_string(dir.join("comm"))
            .map(|c| c.trim_end().to_owned())
            .unwrap_or_default();
        let mut mappings = Vec::new();
        let mut anonymous = Vec::new();
        let mut runtime = None;
        let mut runtime_file = None;
        let mut go = None;
        for line in maps.lines() {
            let Some(m) = parse_maps_line(line) else {
                continue;
            };
            if !m.executable {
                continue;
            }
            if m.path.is_empty() || m.path.starts_with("[anon") {
                anonymous.push((m.start, m.end));
                continue;
            }
            let build_id = if m.inode == 0 {
                None // [vdso] and other pseudo-files
            } else {
                let key = (m.device.to_owned(), m.inode);
                if !self.build_ids.contains_key(&key) {
                    let id = m.file_paths(&dir).iter().find_map(|p| build_id_of(p));
                    self.build_ids.insert(key.clone(), id);
                }
                self.build_ids[&key].clone()
            };
            if runtime.is_none() && m.inode != 0 {
                runtime = self.interpreter(pid, &m);
                if runtime.is_some() {
                    runtime_file = Some((m.device.to_owned(), m.inode));
                }
            }
            // The executable's own code comes first in the maps.
            if go.is_none() && mappings.is_empty() && m.inode != 0 {
                go = self.go_binary(pid, &m);
            }
            mappings.push(ExecutableMapping {
                start: m.start,
                end: m.end,
                offset: m.offset,
                path: m.path.to_owned(),
                inode: m.inode,
                build_id,
            });
        }
        mappings.sort_by_key(|m| m.start);
        if let (Some(Runtime::V8(v8)), Some(file)) = (&mut runtime, &runtime_file) {
            // V8 maps its builtins again next to the code it generates
            // (short builtin calls): that copy runs them.
            if let Some(Some(InterpreterBinary::V8(binary))) = self.runtimes.get(file) {
                let copy = mappings
                    .iter()
                    .filter(|m| m.inode == file.1)
                    .filter_map(|m| binary.builtins_in(m.start, m.end, m.offset))
                    .find(|&range| range != v8.builtins());
                if let (Some(copy), Some(v8)) = (copy, Arc::get_mut(v8)) {
                    v8.set_builtins_copy(copy);
                }
            }
        }
        self.processes.insert(
            pid,
            Arc::new(ProcessInfo {
                comm,
                mappings,
                anonymous,
                exited: false,
                generation: None,
                runtime,
                go,
            }),
        );
        true
    }

    /// The interpreter (CPython, PHP, Ruby, V8) in mapping `m` of `pid`, if it
    /// holds one (each file read once).
    fn interpreter(&mut self, pid: u32, m: &MapsLine<'_>) -> Option<Runtime> {
        let python = self.python.then(|| version_of_path(m.path)).flatten();
        let php = self.php && may_be_php(m.path);
        let ruby = self.ruby && may_be_ruby(m.path);
        let v8 = self.v8 && may_be_v8(m.path);
        let jvm = self.jvm && may_be_jvm(m.path);
        if python.is_none() && !php && !ruby && !v8 && !jvm {
            return None;
        }
        let key = (m.device.to_owned(), m.inode);
        if !self.runtimes.contains_key(&key) {
            let file = m
                .file_paths(&self.proc_dir(pid))
                .iter()
                .find_map(|p| std::fs::File::open(p).ok());
            // SAFETY: a read-only private mapping of a file a live process
            // maps (see object-files' read_elf).
            let data = match file.map(|f| unsafe { memmap2::Mmap::map(&f) }) {
                Some(Ok(data)) => Ok(data),
                Some(Err(e)) => Err(DetectError::Unreadable(e.to_string())),
                // The process is gone: no verdict on the file.
                None => return None,
            };
            let (language, binary) = match python {
                Some(version) => (
                    "CPython",
                    data.and_then(|d| PythonBinary::read(&d, version))
                        .map(InterpreterBinary::Python),
                ),
                None if php => (
                    "PHP",
                    data.and_then(|d| PhpBinary::read(&d))
                        .map(InterpreterBinary::Php),
                ),
                None if ruby => (
                    "Ruby",
                    data.and_then(|d| RubyBinary::read(&d))
                        .map(InterpreterBinary::Ruby),
                ),
                None if v8 => (
                    "V8",
                    data.and_then(|d| V8Binary::read(&d))
                        .map(InterpreterBinary::V8),
                ),
                None => (
                    "JVM",
                    data.and_then(|d| JvmBinary::read(&d))
                        .map(InterpreterBinary::Jvm),
                ),
            };
            match &binary {
                Ok(b) => {
                    info!(path = m.path, version = ?b.version(), "{language} interpreter found")
                }
                Err(DetectError::NoInterpreter) => {
                    debug!(path = m.path, "no {language} interpreter loop in this file")
                }
                Err(e) => {
                    info!(path = m.path, error = %e, "{language} interpreter not usable: its frames are not unwound")
                }
            }
            self.runtimes.insert(key.clone(), binary.ok());
        }
        let runtime = match self.runtimes[&key].as_ref()? {
            InterpreterBinary::Python(binary) => {
                let bias = binary.segments.bias(m.start, m.offset)?;
                Runtime::Python(Arc::new(PythonProcess::new(binary, bias)?))
            }
            InterpreterBinary::Php(binary) => {
                let bias = binary.segments.bias(m.start, m.offset)?;
                Runtime::Php(Arc::new(PhpProcess::new(binary, bias)?))
            }
            InterpreterBinary::Ruby(binary) => {
                let bias = binary.segments.bias(m.start, m.offset)?;
                Runtime::Ruby(Arc::new(RubyProcess::new(binary, bias)?))
            }
            InterpreterBinary::V8(binary) => {
                let bias = binary.segments.bias(m.start, m.offset)?;
                Runtime::V8(Arc::new(V8Process::new(binary, bias)?))
            }
            InterpreterBinary::Jvm(binary) => {
                // Its layout is read from the process (None until the code
                // cache is set up: read again when code appears there), once:
                // a re-read of the same JVM keeps it, and the methods named.
                let bias = binary.segments.bias(m.start, m.offset)?;
                let known = self.processes.get(&pid).and_then(|p| match &p.runtime {
                    Some(Runtime::Jvm(jvm)) if jvm.is_running(pid, bias) => Some(jvm.clone()),
                    _ => None,
                });
                match known {
                    Some(jvm) => Runtime::Jvm(jvm),
                    None => Runtime::Jvm(Arc::new(JvmProcess::new(binary, bias, pid)?)),
                }
            }
        };
        debug!(pid, runtime = runtime.describe(), "interpreter process");
        Some(runtime)
    }

    /// The Go program in mapping `m` of `pid`, if it is one whose labels
    /// can be read (each file read once).
    fn go_binary(&mut self, pid: u32, m: &MapsLine<'_>) -> Option<GoBinary> {
        let key = (m.device.to_owned(), m.inode);
        if !self.go_binaries.contains_key(&key) {
            let file = m
                .file_paths(&self.proc_dir(pid))
                .iter()
                .find_map(|p| std::fs::File::open(p).ok())?;
            // SAFETY: as in interpreter.
            let found = match unsafe { memmap2::Mmap::map(&file) } {
                Ok(data) => GoBinary::read(&data),
                Err(_) => Err(GoDetectError::NotGo),
            };
            match &found {
                Ok(go) => debug!(path = m.path, version = ?go.version, "Go program found"),
                Err(GoDetectError::NotGo) => {}
                Err(e) => {
                    info!(path = m.path, error = %e, "Go program: goroutine labels are not read")
                }
            }
            self.go_binaries.insert(key.clone(), found.ok());
        }
        self.go_binaries[&key]
    }

    /// Reads `pid` unless it is known.
    pub fn ensure(&mut self, pid: u32) {
        if !self.processes.contains_key(&pid) {
            self.observe(pid);
        }
    }

    /// Records that `pid`'s mappings were read at exec `generation`.
    pub fn set_generation(&mut self, pid: u32, generation: Option<u32>) {
        if let Some(p) = self.processes.get_mut(&pid) {
            Arc::make_mut(p).generation = generation;
        }
    }

    /// Marks `pid` exited; its data stays for the window it was sampled in.
    pub fn exited(&mut self, pid: u32) {
        if let Some(p) = self.processes.get_mut(&pid) {
            Arc::make_mut(p).exited = true;
        }
    }

    /// After a window is emitted: forgets processes that exited.
    /// Returns their pids.
    pub fn forget_exited(&mut self) -> Vec<u32> {
        let gone: Vec<u32> = self
            .processes
            .iter()
            .filter(|(_, p)| p.exited)
            .map(|(&pid, _)| pid)
            .collect();
        for pid in &gone {
            self.processes.remove(pid);
        }
        gone
    }

    /// `/proc/PID` of `pid`.
    pub fn proc_dir(&self, pid: u32) -> PathBuf {
        self.proc_root.join(pid.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parses_maps_lines() {
        let l = parse_maps_line(
            "7f1c2a5e0000-7f1c2a775000 r-xp 00028000 fd:01 1311031                    /usr/lib/x86_64-linux-gnu/libc.so.6",
        )
        .unwrap();
        assert_eq!(l.start, 0x7f1c2a5e0000);
        assert!(l.executable);
        assert_eq!(l.offset, 0x28000);
        assert_eq!(l.inode, 1311031);
        assert_eq!(l.path, "/usr/lib/x86_64-linux-gnu/libc.so.6");
        let anon = parse_maps_line("7ffd1c9f0000-7ffd1ca11000 rw-p 00000000 00:00 0 ").unwrap();
        assert!(!anon.executable);
        assert_eq!(anon.path, "");
        // A file replaced on disk (a package upgrade) still runs under its name.
        let deleted = parse_maps_line(
            "55d0c0a00000-55d0c0c00000 r-xp 00000000 fd:01 42 /usr/bin/python3.11 (deleted)",
        )
        .unwrap();
        assert_eq!(deleted.path, "/usr/bin/python3.11");
        assert!(parse_maps_line("garbage").is_none());
    }

    #[test]
    fn reads_this_process_with_build_ids() {
        let mut t = ProcessTracker::new("/proc");
        let me = std::process::id();
        t.observe(me);
        let info = t.get(me).unwrap();
        assert!(!info.comm.is_empty());
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let main = info
            .mappings
            .iter()
            .find(|m| Path::new(&m.path) == exe)
            .expect("the test binary is mapped executable");
        let id = main
            .build_id
            .as_ref()
            .expect("a build id or a content hash");
        assert!(!id.id.is_empty());
        // The address of this function lies in an executable mapping.
        let here = reads_this_process_with_build_ids as fn() as usize as u64;
        assert!(info.mapping_of(here).is_some());
    }

    #[test]
    fn a_vanished_process_is_counted_not_fatal() {
        let mut t = ProcessTracker::new("/proc");
        t.observe(u32::MAX - 1);
        assert_eq!(t.vanished, 1);
        assert!(t.is_empty());
    }
}
