//! Kernel frames: names from /proc/kallsyms, with the module they live in.

use std::path::Path;

/// One kernel text symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSymbol<'a> {
    /// Start address.
    pub address: u64,
    /// Symbol name.
    pub name: &'a str,
    /// Module name; `None` for the core kernel image.
    pub module: Option<&'a str>,
}

/// The kernel's text symbols, sorted by address: 16 bytes each and the
/// names end to end (about 4 MiB for 100,000 symbols, where one allocation
/// per name took twice that).
#[derive(Debug, Default)]
pub struct Kallsyms {
    entries: Vec<Entry>,
    names: String,
    modules: Vec<Box<str>>,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    address: u64,
    name_at: u32,
    name_len: u16,
    /// 0: the core kernel image; else `modules[module - 1]`.
    module: u16,
}

/// Why kallsyms cannot name anything.
#[derive(Debug, thiserror::Error)]
pub enum KallsymsError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Every address is zero: `kptr_restrict` hides them from this user.
    #[error("{path} shows no addresses (kernel.kptr_restrict hides them; the agent needs CAP_SYSLOG or root)")]
    Hidden {
        /// The file.
        path: String,
    },
}

impl Kallsyms {
    /// Reads and parses `path` (normally `/proc/kallsyms`), a line at a
    /// time (the text is 5 MiB).
    pub fn read(path: &Path) -> Result<Self, KallsymsError> {
        use std::io::BufRead;
        let shown = path.display().to_string();
        let error = |source| KallsymsError::Read {
            path: shown.clone(),
            source,
        };
        let mut reader = std::io::BufReader::new(std::fs::File::open(path).map_err(error)?);
        let mut table = Self::default();
        let mut line = String::new();
        let mut any = false;
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(error)? == 0 {
                break;
            }
            any = true;
            table.add(&line);
        }
        if table.entries.is_empty() && any {
            return Err(KallsymsError::Hidden { path: shown });
        }
        Ok(table.finish())
    }

    /// Parses kallsyms text: `ADDRESS TYPE NAME [MODULE]`; keeps text symbols.
    pub fn parse(text: &str) -> Self {
        let mut table = Self::default();
        text.lines().for_each(|line| table.add(line));
        table.finish()
    }

    /// Adds the symbol of one line if it is a text symbol with an address.
    fn add(&mut self, line: &str) {
        let mut fields = line.split_whitespace();
        let (Some(address), Some(kind), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            return;
        };
        let Ok(address) = u64::from_str_radix(address, 16) else {
            return;
        };
        if address == 0 || !matches!(kind, "t" | "T" | "w" | "W") {
            return;
        }
        let module = fields
            .next()
            .and_then(|m| m.strip_prefix('[')?.strip_suffix(']'));
        let (Ok(name_at), Ok(name_len), Some(module)) = (
            u32::try_from(self.names.len()),
            u16::try_from(name.len()),
            self.module_index(module),
        ) else {
            return;
        };
        self.names.push_str(name);
        self.entries.push(Entry {
            address,
            name_at,
            name_len,
            module,
        });
    }

    fn finish(mut self) -> Self {
        self.entries.sort_by_key(|e| e.address);
        self.entries.shrink_to_fit();
        self.names.shrink_to_fit();
        self
    }

    /// The index `Entry::module` stores for `module`; `None` past u16.
    fn module_index(&mut self, module: Option<&str>) -> Option<u16> {
        let Some(module) = module else {
            return Some(0);
        };
        // Modules come in runs: the last one is nearly always the one.
        let at = match self.modules.iter().rposition(|m| &**m == module) {
            Some(at) => at,
            None => {
                self.modules.push(module.into());
                self.modules.len() - 1
            }
        };
        u16::try_from(at + 1).ok()
    }

    /// The symbol whose code holds `address`: the last one starting at or
    /// before it.
    pub fn lookup(&self, address: u64) -> Option<KernelSymbol<'_>> {
        let after = self.entries.partition_point(|e| e.address <= address);
        let e = self.entries[after.checked_sub(1)?];
        let at = e.name_at as usize;
        Some(KernelSymbol {
            address: e.address,
            name: &self.names[at..at + e.name_len as usize],
            module: e.module.checked_sub(1).map(|m| &*self.modules[m as usize]),
        })
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff81000000 T startup_64
ffffffff81001000 t early_setup_idt
ffffffff82600000 D some_data
ffffffff81a00000 T __x64_sys_read
ffffffffc0a01000 t ext4_file_read_iter\t[ext4]
ffffffffc0a02000 W weak_in_module\t[ext4]
";

    #[test]
    fn names_kernel_and_module_addresses() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(k.len(), 6);
        assert_eq!(k.lookup(0xffffffff81a00010).unwrap().name, "__x64_sys_read");
        let m = k.lookup(0xffffffffc0a01234).unwrap();
        assert_eq!(m.name, "ext4_file_read_iter");
        assert_eq!(m.module, Some("ext4"));
        assert_eq!(
            k.lookup(0xffffffff81001fff).unwrap().name,
            "early_setup_idt"
        );
        assert!(k.lookup(0x1000).is_none());
    }

    #[test]
    fn hidden_addresses_are_an_error_that_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kallsyms");
        std::fs::write(&path, "0000000000000000 T _stext\n0000000000000000 t foo\n").unwrap();
        let err = Kallsyms::read(&path).unwrap_err().to_string();
        assert!(err.contains("kptr_restrict"), "{err}");
    }

    #[test]
    fn this_machines_kallsyms_names_a_syscall() {
        let k = Kallsyms::read(Path::new("/proc/kallsyms")).unwrap();
        let read = (0..k.len())
            .map(|i| k.lookup(k.entries[i].address).unwrap())
            .find(|s| s.name == "ksys_read")
            .unwrap();
        assert_eq!(k.lookup(read.address + 1).unwrap().name, "ksys_read");
    }
}
