//! ELF symbol tables as the symbolizer keeps them: 16 bytes a symbol,
//! counted before they are collected, and names left in the file until a
//! lookup needs one.
//!
//! The symbols chosen, and the sizes guessed for those without one, are
//! `object`'s `SymbolMap`'s. Building that map held about 100 bytes a symbol
//! at its peak (48-byte candidates in a doubling vector, then the map) and
//! read every name: 17 MB of heap and the whole string table's pages for a
//! library with 130,000 symbols, where this holds 2 MB and reads no name.

use object::elf;
use object::read::elf::{FileHeader, SectionHeader, Sym};
use object::{Endianness, FileKind};

/// A symbol: address, size and where its NUL-terminated name lies.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    address: u64,
    /// Saturated: no function is 4 GiB long.
    size: u32,
    /// From the start of the string table ([`SymbolTable::names`]); while
    /// the table is built, the symbol's index ([`SECTION_END`] for a
    /// section's end).
    name_at: u32,
}

/// Stands for a section's end while sizes are guessed: a symbol without a
/// size is taken to end at the next symbol or section end.
const SECTION_END: u32 = u32::MAX;

/// The priority of a symbol left out (kept ones rank 0 to 23).
const NOT_KEPT: u8 = u8::MAX;

/// An object file's symbols by address.
#[derive(Default)]
pub(crate) struct SymbolTable {
    symbols: Vec<Symbol>,
    /// Where the string table lies in the file.
    names: std::ops::Range<usize>,
}

impl SymbolTable {
    /// The symbols of the ELF file `data` (`.symtab`, else `.dynsym`); none
    /// when it has neither or is malformed.
    pub(crate) fn read(data: &[u8]) -> Self {
        let table = match FileKind::parse(data) {
            Ok(FileKind::Elf64) => read_elf::<elf::FileHeader64<Endianness>>(data),
            Ok(FileKind::Elf32) => read_elf::<elf::FileHeader32<Endianness>>(data),
            _ => None,
        };
        table.unwrap_or_default()
    }

    /// Symbols kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.symbols.len()
    }

    /// The name of the symbol holding `vaddr`, read from the file `data`
    /// the table was read from.
    pub(crate) fn name<'a>(&self, data: &'a [u8], vaddr: u64) -> Option<&'a str> {
        let i = self.symbols.partition_point(|s| s.address <= vaddr);
        let s = self.symbols.get(i.checked_sub(1)?)?;
        if s.size != 0 && vaddr.wrapping_sub(s.address) >= u64::from(s.size) {
            return None;
        }
        let names = data.get(self.names.clone())?;
        let name = names.get(s.name_at as usize..)?;
        let len = name.iter().position(|&b| b == 0)?;
        // An empty or non-UTF-8 name names nothing (`object` leaves such
        // symbols out; they are not read here to tell).
        std::str::from_utf8(&name[..len])
            .ok()
            .filter(|n| !n.is_empty())
    }
}

fn read_elf<Elf: FileHeader<Endian = Endianness>>(data: &[u8]) -> Option<SymbolTable> {
    let header = Elf::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let sections = header.sections(endian, data).ok()?;
    let table = match sections.symbols(endian, data, elf::SHT_SYMTAB) {
        Ok(table) if !table.is_empty() => table,
        _ => sections.symbols(endian, data, elf::SHT_DYNSYM).ok()?,
    };
    let strings_header = sections.section(table.string_section()).ok()?;
    let names_at = usize::try_from(strings_header.sh_offset(endian).into()).ok()?;
    let names_len = usize::try_from(strings_header.sh_size(endian).into()).ok()?;
    let names = names_at..names_at.checked_add(names_len)?;
    let syms = table.symbols();
    if syms.len() >= SECTION_END as usize {
        return None;
    }
    let strings = table.strings();
    // Which symbols `object`'s map takes: definitions of functions, data
    // or untyped symbols that have a name. Names are not read (a name
    // offset of 0 is the empty name), but for local untyped symbols, whose
    // `$` marks ARM mapping symbols.
    let priority = |sym: &Elf::Sym| -> Option<u32> {
        if sym.st_name(endian) == 0 || !sym.is_definition(endian, strings) {
            return None;
        }
        // `object`'s order among symbols at one address, lower first: a
        // known kind, a size, wider visibility.
        let untyped = u32::from(sym.st_type() == elf::STT_NOTYPE);
        let sizeless = u32::from(sym.st_size(endian).into() == 0);
        let scope = match sym.st_bind() {
            elf::STB_LOCAL => 2,
            elf::STB_GLOBAL | elf::STB_WEAK if sym.st_visibility() == elf::STV_HIDDEN => 1,
            elf::STB_GLOBAL | elf::STB_WEAK => 0,
            _ => 3,
        };
        Some(((untyped * 4) + sizeless) * 4 + scope)
    };
    // Each symbol's priority, once: sorting asks for it again and again.
    let priorities: Vec<u8> = syms
        .iter()
        .map(|s| priority(s).map_or(NOT_KEPT, |p| p as u8))
        .collect();
    let kept = priorities.iter().filter(|&&p| p != NOT_KEPT).count();
    let mut symbols = Vec::with_capacity(kept + sections.len());
    for (index, sym) in syms.iter().enumerate() {
        if priorities[index] != NOT_KEPT {
            symbols.push(Symbol {
                address: sym.st_value(endian).into(),
                size: saturate(sym.st_size(endian).into()),
                name_at: index as u32,
            });
        }
    }
    // The null section is not one (`object` skips it too).
    for section in sections.iter().skip(1) {
        let address: u64 = section.sh_addr(endian).into();
        let size: u64 = section.sh_size(endian).into();
        symbols.push(Symbol {
            address: address.saturating_add(size),
            size: u32::MAX,
            name_at: SECTION_END,
        });
    }
    // At one address the best symbol comes first; the later of equals
    // (an earlier one is likely the less specific).
    let rank = |s: &Symbol| match s.name_at {
        SECTION_END => (u8::MAX, 0),
        index => (priorities[index as usize], u32::MAX - index),
    };
    symbols.sort_unstable_by_key(|s| (s.address, rank(s)));
    symbols.dedup_by_key(|s| s.address);
    let mut next = symbols.last().map_or(0, |s| s.address);
    for s in symbols.iter_mut().rev() {
        if s.size == 0 {
            s.size = saturate(next.saturating_sub(s.address));
        }
        next = s.address;
    }
    symbols.retain(|s| s.name_at != SECTION_END);
    for s in &mut symbols {
        s.name_at = syms[s.name_at as usize].st_name(endian);
    }
    symbols.shrink_to_fit();
    Some(SymbolTable { symbols, names })
}

fn saturate(size: u64) -> u32 {
    u32::try_from(size).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object, ObjectSymbol};

    /// The name `object`'s symbol map gives `vaddr`, sizes saturated as
    /// [`SymbolTable`] stores them.
    fn mapped_name<'a>(
        map: &object::SymbolMap<object::SymbolMapName<'a>>,
        vaddr: u64,
    ) -> Option<&'a str> {
        let s = map.before(vaddr)?;
        let size = saturate(s.size());
        (size == 0 || vaddr - s.address() < u64::from(size)).then(|| s.name())
    }

    #[test]
    fn names_equal_the_object_crates_symbol_map() {
        let exe = std::env::current_exe().unwrap();
        let paths = [
            exe.to_str().unwrap(),
            "/bin/ls",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/x86_64-linux-gnu/libstdc++.so.6",
            "/lib64/ld-linux-x86-64.so.2",
            "/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1",
        ];
        let mut checked = 0;
        for path in paths {
            let Ok(data) = std::fs::read(path) else {
                continue;
            };
            let file = object::File::parse(&*data).unwrap();
            let map = file.symbol_map();
            let table = SymbolTable::read(&data);
            assert_eq!(table.len(), map.symbols().len(), "{path}");
            // Every symbol's first byte, middle, last byte and the byte past
            // it; and the addresses of all symbols, sized or not.
            let probes = file.symbols().flat_map(|s| {
                let (a, n) = (s.address(), s.size());
                [a, a + n / 2, (a + n).saturating_sub(1), a + n]
            });
            for vaddr in probes {
                assert_eq!(
                    table.name(&data, vaddr),
                    mapped_name(&map, vaddr),
                    "{path} at {vaddr:#x}"
                );
                checked += 1;
            }
        }
        assert!(checked > 10_000, "only {checked} addresses compared");
    }

    #[test]
    fn malformed_files_have_no_symbols() {
        assert_eq!(SymbolTable::read(b"").len(), 0);
        assert_eq!(SymbolTable::read(b"\x7fELF\x02\x01\x01garbage").len(), 0);
        let mut data = std::fs::read("/bin/ls").unwrap();
        data.truncate(4096);
        assert!(SymbolTable::read(&data).name(&data, 0x1000).is_none());
    }
}
