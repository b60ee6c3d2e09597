//! Kernel frames: names from /proc/kallsyms, with the module they live in.

use std::path::Path;

/// One kernel text symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSymbol {
    /// Start address.
    pub address: u64,
    /// Symbol name.
    pub name: Box<str>,
    /// Module name; `None` for the core kernel image.
    pub module: Option<Box<str>>,
}

/// The kernel's text symbols, sorted by address.
#[derive(Debug, Default)]
pub struct Kallsyms {
    symbols: Vec<KernelSymbol>,
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
    /// Reads and parses `path` (normally `/proc/kallsyms`).
    pub fn read(path: &Path) -> Result<Self, KallsymsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KallsymsError::Read {
            path: shown.clone(),
            source,
        })?;
        let parsed = Self::parse(&text);
        if parsed.symbols.is_empty() && !text.is_empty() {
            return Err(KallsymsError::Hidden { path: shown });
        }
        Ok(parsed)
    }

    /// Parses kallsyms text: `ADDRESS TYPE NAME [MODULE]`; keeps text symbols.
    pub fn parse(text: &str) -> Self {
        let mut symbols: Vec<KernelSymbol> = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let address = u64::from_str_radix(fields.next()?, 16).ok()?;
                let kind = fields.next()?;
                let name = fields.next()?;
                let module = fields
                    .next()
                    .and_then(|m| m.strip_prefix('[')?.strip_suffix(']'))
                    .map(Box::from);
                let text_symbol = matches!(kind, "t" | "T" | "w" | "W");
                (address != 0 && text_symbol).then(|| KernelSymbol {
                    address,
                    name: name.into(),
                    module,
                })
            })
            .collect();
        symbols.sort_by_key(|s| s.address);
        Self { symbols }
    }

    /// The symbol whose code holds `address`: the last one starting at or
    /// before it.
    pub fn lookup(&self, address: u64) -> Option<&KernelSymbol> {
        let after = self.symbols.partition_point(|s| s.address <= address);
        after.checked_sub(1).map(|i| &self.symbols[i])
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
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
        assert_eq!(
            &*k.lookup(0xffffffff81a00010).unwrap().name,
            "__x64_sys_read"
        );
        let m = k.lookup(0xffffffffc0a01234).unwrap();
        assert_eq!(&*m.name, "ext4_file_read_iter");
        assert_eq!(m.module.as_deref(), Some("ext4"));
        assert_eq!(
            &*k.lookup(0xffffffff81001fff).unwrap().name,
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
        let read = k.symbols.iter().find(|s| &*s.name == "ksys_read").unwrap();
        assert_eq!(&*k.lookup(read.address + 1).unwrap().name, "ksys_read");
    }
}
