//! Debuginfo as uploaded: only what symbolization needs (symbol table,
//! DWARF, notes, debuglink), code, data and program headers left out; DWARF
//! optionally zlib-compressed (`SHF_COMPRESSED`). A file without `.symtab`
//! keeps its layout (its dynamic symbols need it) with code and data left
//! out as NOBITS, which saves less.

use std::io::Write;

use object::build::elf::{Builder, SectionData};
use object::elf;

/// Why a file could not be prepared for upload.
#[derive(Debug, thiserror::Error)]
#[error("cannot rewrite ELF file: {0}")]
pub struct StripError(String);

/// Rewrites `data`: with `strip`, loaded code and data become NOBITS (their
/// headers stay, so addresses still map to sections); with `compress`,
/// uncompressed `.debug_*` sections are zlib-compressed.
pub fn prepare(data: &[u8], strip: bool, compress: bool) -> Result<Vec<u8>, StripError> {
    let mut builder = Builder::read(data).map_err(|e| StripError(e.to_string()))?;
    let little_endian = builder.endian == object::Endianness::Little;
    let is_64 = builder.is_64;
    for section in builder.sections.iter_mut() {
        let allocated = section.sh_flags.contains(elf::SHF_ALLOC);
        let is_debug = section.name.as_slice().starts_with(b".debug_");
        match &section.data {
            SectionData::Data(bytes) if strip && allocated => {
                let size = bytes.len() as u64;
                section.sh_type = elf::SHT_NOBITS;
                section.data = SectionData::UninitializedData(size);
            }
            SectionData::Data(bytes)
                if compress
                    && is_debug
                    && !allocated
                    && !section.sh_flags.contains(elf::SHF_COMPRESSED)
                    && is_64
                    && little_endian
                    && !bytes.is_empty() =>
            {
                let compressed = zlib_section(bytes, section.sh_addralign);
                if compressed.len() < bytes.len() {
                    section.data = SectionData::Data(compressed.into());
                    section.sh_flags |= elf::SHF_COMPRESSED;
                    section.sh_addralign = 8;
                }
            }
            _ => {}
        }
    }
    let has_symtab = builder
        .sections
        .iter()
        .any(|s| matches!(s.data, SectionData::Symbol));
    if strip && has_symtab {
        // Program headers pin the left-out code's file space (offsets stay
        // congruent to addresses), so they go: symbolization reads
        // sections, and the agent sends the load segment itself. Without
        // segments nothing is loaded, so what only the loader reads goes
        // too; the dynamic symbols are in `.symtab` as well.
        for segment in builder.segments.iter_mut() {
            segment.delete = true;
        }
        for section in builder.sections.iter_mut() {
            if matches!(
                section.data,
                SectionData::Hash
                    | SectionData::GnuHash
                    | SectionData::GnuVersym
                    | SectionData::GnuVerdef
                    | SectionData::GnuVerneed
                    | SectionData::Relocation(_)
                    | SectionData::DynamicRelocation(_)
                    | SectionData::Dynamic(_)
                    | SectionData::DynamicSymbol
                    | SectionData::DynamicString
            ) {
                section.delete = true;
            }
        }
        for symbol in builder.dynamic_symbols.iter_mut() {
            symbol.delete = true;
        }
        builder.version_base = None;
        builder.delete_unused_versions();
    }
    let mut out = Vec::new();
    builder
        .write(&mut out)
        .map_err(|e| StripError(e.to_string()))?;
    Ok(out)
}

/// An `Elf64_Chdr` (zlib) followed by the zlib stream of `data`.
fn zlib_section(data: &[u8], addralign: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 3 + 24);
    out.extend_from_slice(&elf::ELFCOMPRESS_ZLIB.0.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&addralign.max(1).to_le_bytes());
    let mut encoder = flate2::write::ZlibEncoder::new(out, flate2::Compression::default());
    encoder
        .write_all(data)
        .expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object, ObjectSection, ObjectSymbol};

    /// This test binary: debug build, so it has DWARF and a symbol table.
    fn own_binary() -> Vec<u8> {
        std::fs::read(std::env::current_exe().unwrap()).unwrap()
    }

    /// The (decompressed) bytes of section `name`.
    fn section_data(data: &[u8], name: &str) -> Option<Vec<u8>> {
        let file = object::File::parse(data).unwrap();
        let s = file.section_by_name(name)?;
        Some(s.uncompressed_data().ok()?.into_owned())
    }

    #[test]
    fn stripping_keeps_symbols_and_dwarf_and_drops_code() {
        let original = own_binary();
        let stripped = prepare(&original, true, false).unwrap();
        assert!(
            stripped.len() < original.len(),
            "{} !< {}",
            stripped.len(),
            original.len()
        );
        let before = object::File::parse(&*original).unwrap();
        let after = object::File::parse(&*stripped).unwrap();
        assert_eq!(before.build_id().unwrap(), after.build_id().unwrap());
        // Every function symbol stays (symbols of the loader-only sections,
        // like `_DYNAMIC`, go with them).
        let functions = |f: &object::File| {
            f.symbols()
                .filter(|s| s.kind() == object::SymbolKind::Text)
                .map(|s| (s.name().unwrap_or("").to_owned(), s.address()))
                .collect::<std::collections::BTreeSet<_>>()
        };
        assert!(functions(&before).len() > 1000);
        assert!(
            functions(&before) == functions(&after),
            "function symbols kept"
        );
        let name = |f: &object::File| {
            f.symbols()
                .find(|s| s.name() == Ok("main"))
                .map(|s| s.address())
        };
        assert_eq!(name(&before), name(&after));
        // The symbol table is rewritten (same symbols, asserted above);
        // DWARF is kept byte for byte.
        for section in [".debug_info", ".debug_line", ".debug_str"] {
            let before = section_data(&original, section);
            assert!(before.is_some(), "{section} in a debug build");
            assert!(
                before == section_data(&stripped, section),
                "{section} kept byte for byte"
            );
        }
        let text = after.section_by_name(".text").unwrap();
        assert!(text.data().unwrap().is_empty(), "code left out");
        assert_eq!(
            text.address(),
            before.section_by_name(".text").unwrap().address()
        );
    }

    #[test]
    fn compressed_dwarf_reads_back_the_same() {
        let original = own_binary();
        let compressed = prepare(&original, true, true).unwrap();
        let stripped = prepare(&original, true, false).unwrap();
        assert!(compressed.len() < stripped.len());
        let info = section_data(&original, ".debug_info").unwrap();
        let back = section_data(&compressed, ".debug_info").unwrap();
        assert!(info == back, "decompresses to the original DWARF");
        let file = object::File::parse(&*compressed).unwrap();
        let s = file.section_by_name(".debug_info").unwrap();
        assert!(s.compressed_file_range().unwrap().format != object::CompressionFormat::None);
    }

    #[test]
    fn a_file_that_is_not_elf_is_an_error() {
        assert!(prepare(b"\x7fELF garbage", true, false).is_err());
        assert!(prepare(b"#!/bin/sh", true, false).is_err());
    }
}
