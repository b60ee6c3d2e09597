//! Unwind tables compiled on a thread of their own. A large object takes
//! long (libLLVM's 948,864 rows: half a second here): compiled on the event thread,
//! it held up the reading of every process started meanwhile, and a
//! process that lived 100 ms was gone before its mappings were read.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use agent_unwind_table::{UnwindTable, UnwindTableError};

use crate::process::ExecutableMapping;
use crate::unwind::{ObjectKey, VDSO_KEY};

/// What a table is compiled from, taken while the process lives.
pub enum ObjectSource {
    /// An image in memory (the vDSO).
    Image(Vec<u8>),
    /// The object's file, opened through the process (so a file in a
    /// container, or deleted since, is still the one mapped).
    File { file: File, name: String },
}

impl ObjectSource {
    /// Opens the object `key` mapped at `m` in the process at `proc_dir`;
    /// `vdso` is the vDSO image (the same in every process).
    pub fn open(
        key: &str,
        m: &ExecutableMapping,
        proc_dir: &Path,
        vdso: Option<&[u8]>,
    ) -> std::io::Result<Self> {
        if key == VDSO_KEY {
            return vdso
                .map(|image| Self::Image(image.to_vec()))
                .ok_or_else(|| {
                    std::io::Error::new(ErrorKind::NotFound, "no vDSO in this process")
                });
        }
        let [via_map_files, via_root] = m.file_paths(proc_dir);
        let (file, path) = match File::open(&via_map_files) {
            Ok(file) => (file, via_map_files),
            Err(_) => (File::open(&via_root)?, via_root),
        };
        Ok(Self::File {
            file,
            name: path.display().to_string(),
        })
    }

    /// Its table.
    pub fn compile(&self) -> Result<UnwindTable, UnwindTableError> {
        match self {
            Self::Image(image) => agent_unwind_table::compile(image),
            Self::File { file, name } => agent_unwind_table::compile_opened(file, name),
        }
    }
}

/// What compiling an object came to.
pub enum Outcome {
    /// Its table, with rows.
    Table(UnwindTable),
    /// Reading failed midway: another process mapping the object may still
    /// provide it, so no verdict.
    Unreadable(String),
    /// It has no usable table, and why.
    Unusable(String),
}

impl Outcome {
    fn of(source: &ObjectSource) -> Self {
        // A parser bug on one odd object costs that object's table only.
        match agent_core::panics::catch_counted(|| source.compile()) {
            Ok(Ok(table)) if table.rows.is_empty() => Self::Unusable("no rows".into()),
            Ok(Ok(table)) => Self::Table(table),
            Ok(Err(UnwindTableError::Io { path, source })) => {
                Self::Unreadable(format!("{path}: {source}"))
            }
            Ok(Err(e)) => Self::Unusable(e.to_string()),
            Err(_) => Self::Unusable("the table compiler panicked on it".into()),
        }
    }
}

/// A compiled object.
pub struct Compiled {
    pub key: ObjectKey,
    pub outcome: Outcome,
    pub elapsed: Duration,
}

/// The compiling thread: objects go in, tables come out in the same order,
/// and a byte on [`Self::ready_fd`] says one is there. It ends when this is
/// dropped, after the table it is on.
pub struct Compiler {
    jobs: Sender<(ObjectKey, ObjectSource)>,
    done: Receiver<Compiled>,
    ready: UnixStream,
}

impl Compiler {
    /// Starts the thread.
    pub fn start() -> std::io::Result<Self> {
        let (jobs, job_queue) = mpsc::channel::<(ObjectKey, ObjectSource)>();
        let (results, done) = mpsc::channel();
        let (mut notify, ready) = UnixStream::pair()?;
        ready.set_nonblocking(true)?;
        // A full socket buffer means the reader has bytes to wake it anyway.
        notify.set_nonblocking(true)?;
        std::thread::Builder::new()
            .name("ebpf-cpu-tables".into())
            .spawn(move || {
                for (key, source) in job_queue {
                    let started = Instant::now();
                    let compiled = Compiled {
                        key,
                        outcome: Outcome::of(&source),
                        elapsed: started.elapsed(),
                    };
                    if results.send(compiled).is_err() {
                        return;
                    }
                    let _ = notify.write(&[1]);
                }
            })?;
        Ok(Self { jobs, done, ready })
    }

    /// Queues `key`'s table.
    pub fn request(&self, key: ObjectKey, source: ObjectSource) {
        // The thread only ends once this side is dropped.
        let _ = self.jobs.send((key, source));
    }

    /// Readable while compiled tables wait to be taken.
    pub fn ready_fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }

    /// The tables compiled since the last call.
    pub fn take(&self) -> Vec<Compiled> {
        let mut drain = [0u8; 256];
        while matches!((&self.ready).read(&mut drain), Ok(n) if n > 0) {}
        self.done.try_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(path: &Path) -> ObjectSource {
        ObjectSource::File {
            file: File::open(path).unwrap(),
            name: path.display().to_string(),
        }
    }

    /// Tables come back in the order asked, each with its verdict, and the
    /// ready descriptor says when.
    #[test]
    fn objects_are_compiled_in_order_with_a_verdict_each() {
        let compiler = Compiler::start().unwrap();
        let exe = std::env::current_exe().unwrap();
        let text = exe.with_file_name("not-an-elf.txt");
        std::fs::write(&text, "plain text").unwrap();
        compiler.request("exe".into(), source(&exe));
        compiler.request("text".into(), source(&text));
        compiler.request("vdso".into(), ObjectSource::Image(Vec::new()));
        let mut compiled = Vec::new();
        while compiled.len() < 3 {
            let mut poll = libc::pollfd {
                fd: compiler.ready_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            assert_eq!(
                unsafe { libc::poll(&mut poll, 1, 60_000) },
                1,
                "no table in a minute"
            );
            compiled.extend(compiler.take());
        }
        std::fs::remove_file(&text).unwrap();
        let keys: Vec<&str> = compiled.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["exe", "text", "vdso"]);
        assert!(matches!(&compiled[0].outcome, Outcome::Table(t) if t.rows.len() > 1000));
        assert!(matches!(&compiled[1].outcome, Outcome::Unusable(why) if why.contains("ELF")));
        assert!(matches!(&compiled[2].outcome, Outcome::Unusable(_)));
    }
}
