//! Kernel frames: names from /proc/kallsyms, with the module they live in.

use std::path::Path;

/// One kernel text symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSymbol<'a> {
    /// Start address.
    pub address: u64,
    /// Symbol name.
    pub name: Box<str>,
    /// Module name; `None` for the core kernel image.
    pub module: Option<&'a str>,
}

/// The kernel's text symbols, sorted by address: 4 bytes of address each,
/// and the names (with their module) deflated in blocks of
/// [`NAMES_PER_BLOCK`]: about 1.1 MiB for this machine's 122,000 symbols,
/// where the names end to end took 4.9 MiB. A lookup inflates one block
/// (microseconds); [`Kallsyms::lookup_all`] inflates each block once.
#[derive(Debug, Default)]
pub struct Kallsyms {
    /// The lowest symbol address: `offsets` are from it.
    base: u64,
    /// Each symbol's address from `base` (the kernel's code, modules and BPF
    /// programs lie within its top 2 GiB: x86-64's kernel code model).
    offsets: Vec<u32>,
    /// Where each block starts in `packed`; one more for the end.
    blocks: Vec<u32>,
    /// Blocks of names, each a deflated run of `module index (u16 LE),
    /// name, NUL` (index 0: the core image; else `modules[index - 1]`).
    packed: Vec<u8>,
    modules: Vec<Box<str>>,
}

/// Symbols whose names are deflated together.
const NAMES_PER_BLOCK: usize = 128;

/// A symbol read from the file, before it is packed.
struct Line {
    address: u64,
    name_at: u32,
    name_len: u16,
    module: u16,
}

/// Symbols being read: names end to end, packed by [`Reading::finish`].
#[derive(Default)]
struct Reading {
    lines: Vec<Line>,
    names: String,
    modules: Vec<Box<str>>,
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
        let mut reading = Reading::default();
        let mut line = String::new();
        let mut any = false;
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(error)? == 0 {
                break;
            }
            any = true;
            reading.add(&line);
        }
        if reading.lines.is_empty() && any {
            return Err(KallsymsError::Hidden { path: shown });
        }
        Ok(reading.finish())
    }

    /// Parses kallsyms text: `ADDRESS TYPE NAME [MODULE]`; keeps text symbols.
    pub fn parse(text: &str) -> Self {
        let mut reading = Reading::default();
        text.lines().for_each(|line| reading.add(line));
        reading.finish()
    }

    /// The index of the symbol whose code holds `address`: the last one
    /// starting at or before it.
    fn index(&self, address: u64) -> Option<usize> {
        let offset = address.checked_sub(self.base)?;
        let offset = u32::try_from(offset).unwrap_or(u32::MAX);
        self.offsets
            .partition_point(|&o| o <= offset)
            .checked_sub(1)
    }

    /// True when a symbol starts at or before `address`.
    pub fn covers(&self, address: u64) -> bool {
        self.index(address).is_some()
    }

    /// The symbol whose code holds `address`.
    pub fn lookup(&self, address: u64) -> Option<KernelSymbol<'_>> {
        self.lookup_all(&[address]).pop().flatten()
    }

    /// The symbols whose code holds each of `addresses`, in their order;
    /// each block of names is inflated once.
    pub fn lookup_all(&self, addresses: &[u64]) -> Vec<Option<KernelSymbol<'_>>> {
        let mut found: Vec<(usize, usize)> = addresses
            .iter()
            .enumerate()
            .filter_map(|(at, &a)| Some((self.index(a)?, at)))
            .collect();
        found.sort_unstable();
        let mut symbols = vec![None; addresses.len()];
        let mut block = (usize::MAX, Vec::new());
        for (index, at) in found {
            let b = index / NAMES_PER_BLOCK;
            if block.0 != b {
                block = (b, self.inflate(b));
            }
            symbols[at] = self.entry_in(&block.1, index);
        }
        symbols
    }

    /// Block `b`'s names, inflated (empty if it cannot be: never, for
    /// blocks this table deflated).
    fn inflate(&self, b: usize) -> Vec<u8> {
        use std::io::Read;
        let range = self.blocks[b] as usize..self.blocks[b + 1] as usize;
        let mut out = Vec::new();
        match flate2::read::DeflateDecoder::new(&self.packed[range]).read_to_end(&mut out) {
            Ok(_) => out,
            Err(_) => Vec::new(),
        }
    }

    /// Symbol `index`, from its block's inflated names.
    fn entry_in(&self, block: &[u8], index: usize) -> Option<KernelSymbol<'_>> {
        let mut rest = block;
        for _ in 0..index % NAMES_PER_BLOCK {
            let end = rest.get(2..)?.iter().position(|&b| b == 0)?;
            rest = &rest[2 + end + 1..];
        }
        let module = u16::from_le_bytes([*rest.first()?, *rest.get(1)?]);
        let name = &rest[2..];
        let name = &name[..name.iter().position(|&b| b == 0)?];
        Some(KernelSymbol {
            address: self.base + u64::from(self.offsets[index]),
            name: std::str::from_utf8(name).ok()?.into(),
            module: module.checked_sub(1).map(|m| &*self.modules[m as usize]),
        })
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }
}

impl Reading {
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
        if address == 0 || !matches!(kind, "t" | "T" | "w" | "W") || name.contains('\0') {
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
        self.lines.push(Line {
            address,
            name_at,
            name_len,
            module,
        });
    }

    /// The index `Line::module` stores for `module`; `None` past u16.
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

    /// Sorts the symbols by address and deflates their names by block.
    fn finish(mut self) -> Kallsyms {
        use std::io::Write;
        self.lines.sort_by_key(|l| l.address);
        let base = self.lines.first().map_or(0, |l| l.address);
        // Past 4 GiB above the lowest: not kernel code (see `offsets`).
        self.lines
            .retain(|l| l.address - base <= u64::from(u32::MAX));
        let mut packed = Vec::new();
        let mut blocks = Vec::with_capacity(self.lines.len() / NAMES_PER_BLOCK + 2);
        let mut block = Vec::new();
        for chunk in self.lines.chunks(NAMES_PER_BLOCK) {
            blocks.push(packed.len() as u32);
            block.clear();
            for l in chunk {
                let at = l.name_at as usize;
                block.extend_from_slice(&l.module.to_le_bytes());
                block.extend_from_slice(&self.names.as_bytes()[at..at + usize::from(l.name_len)]);
                block.push(0);
            }
            let mut deflate =
                flate2::write::DeflateEncoder::new(&mut packed, flate2::Compression::default());
            deflate
                .write_all(&block)
                .and_then(|()| deflate.try_finish())
                .expect("deflating into memory cannot fail");
        }
        blocks.push(packed.len() as u32);
        packed.shrink_to_fit();
        Kallsyms {
            base,
            offsets: self
                .lines
                .iter()
                .map(|l| (l.address - base) as u32)
                .collect(),
            blocks,
            packed,
            modules: self.modules,
        }
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
        assert_eq!(m.module, Some("ext4"));
        assert_eq!(m.address, 0xffffffffc0a01000);
        assert_eq!(
            &*k.lookup(0xffffffff81001fff).unwrap().name,
            "early_setup_idt"
        );
        assert!(k.lookup(0x1000).is_none());
    }

    #[test]
    fn many_lookups_name_each_address_in_its_place() {
        let text: String = (0..1000u64)
            .map(|i| {
                format!(
                    "{:x} t f{i}{}\n",
                    0xffffffff81000000 + i * 16,
                    if i % 7 == 0 { "\t[m]" } else { "" }
                )
            })
            .collect();
        let k = Kallsyms::parse(&text);
        assert!(k.blocks.len() > 5, "several blocks");
        let addresses: Vec<u64> = (0..1000u64)
            .rev()
            .map(|i| 0xffffffff81000000 + i * 16 + 3)
            .chain([0x10])
            .collect();
        let found = k.lookup_all(&addresses);
        assert_eq!(found.len(), addresses.len());
        for (i, symbol) in (0..1000u64).rev().zip(&found) {
            let symbol = symbol.as_ref().unwrap();
            assert_eq!(&*symbol.name, format!("f{i}"));
            assert_eq!(symbol.module, (i % 7 == 0).then_some("m"));
            assert_eq!(symbol.address, 0xffffffff81000000 + i * 16);
        }
        assert!(found[1000].is_none());
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
    fn this_machines_kallsyms_names_every_symbol() {
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap();
        // At one address the last line's symbol is the one kept.
        let mut expected = std::collections::BTreeMap::new();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(a), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let address = u64::from_str_radix(a, 16).unwrap();
            if address != 0 && matches!(kind, "t" | "T" | "w" | "W") {
                let module = f.next().map(|m| m.trim_matches(['[', ']']).to_owned());
                expected.insert(address, (name.to_owned(), module));
            }
        }
        // Read from a copy: a BPF program loaded meanwhile adds a symbol.
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("kallsyms");
        std::fs::write(&copy, &text).unwrap();
        let k = Kallsyms::read(&copy).unwrap();
        assert!(k.len() > 10_000);
        // Names end to end with 16-byte entries took 40 bytes a symbol.
        let kept = 4 * k.offsets.capacity() + 4 * k.blocks.capacity() + k.packed.capacity();
        assert!(kept < 12 * k.len(), "{kept} bytes for {} symbols", k.len());
        let addresses: Vec<u64> = expected.keys().copied().collect();
        let found = k.lookup_all(&addresses);
        for ((address, (name, module)), symbol) in expected.iter().zip(found) {
            let symbol = symbol.unwrap();
            assert_eq!(
                (symbol.address, &*symbol.name, symbol.module),
                (*address, name.as_str(), module.as_deref())
            );
        }
    }
}
