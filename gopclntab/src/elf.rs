//! Where a Go binary keeps its function table and module data: by section
//! name when section headers are there, by the table's header magic when
//! they are not; addresses a position-independent binary leaves to the
//! dynamic loader are read from its relocations.

use std::collections::HashMap;

use agent_object_files::{load_segments, Segment};
use object::elf;
use object::read::elf::{ElfFile64, FileHeader};
use object::{Object, ObjectSection};

use crate::{Error, Format};

/// The parts of an ELF image the table reader needs.
#[derive(Debug)]
pub(crate) struct Image {
    pub segments: Vec<Segment>,
    /// File offset and virtual address of the table, and its length (to
    /// the end of its section or segment).
    pub pclntab: (usize, u64, usize),
    /// Address of `.text`, when section headers name it.
    pub text_section: Option<u64>,
    /// `R_X86_64_RELATIVE` relocations: address -> value after loading.
    pub relative: HashMap<u64, u64>,
    /// Address of the build information (`.go.buildinfo`), when section
    /// headers name it.
    pub buildinfo: Option<u64>,
}

impl Image {
    pub fn read(data: &[u8]) -> Result<Self, Error> {
        let file = ElfFile64::<object::Endianness>::parse(data).map_err(|_| Error::NotElf)?;
        let endian = file.endian();
        let segments = load_segments(&file);
        let by_section = ["runtime.pclntab", ".gopclntab", ".data.rel.ro.gopclntab"]
            .iter()
            .find_map(|name| file.section_by_name(name))
            .and_then(|s| {
                let (offset, size) = s.file_range()?;
                Some((
                    usize::try_from(offset).ok()?,
                    s.address(),
                    usize::try_from(size).ok()?,
                ))
            });
        let pclntab = match by_section {
            Some(found) => found,
            // Scanned for only when section headers are gone: a binary
            // with sections and none of these is not a Go binary.
            None if file.sections().next().is_none() => {
                find_by_magic(data, &segments).ok_or(Error::NoTable)?
            }
            None => return Err(Error::NoTable),
        };
        // Only position-independent binaries have relative relocations for
        // the words we read; a few thousand entries at most in Go binaries
        // (read once the table is found: a large C++ library has hundreds
        // of thousands).
        let relative = if file.elf_header().e_type(endian) == elf::ET_DYN {
            file.dynamic_relocations()
                .into_iter()
                .flatten()
                .filter(|(_, r)| {
                    r.flags()
                        == object::RelocationFlags::Elf {
                            r_type: elf::R_X86_64_RELATIVE,
                        }
                })
                .map(|(address, r)| (address, r.addend() as u64))
                .collect()
        } else {
            HashMap::new()
        };
        let buildinfo = file.section_by_name(".go.buildinfo").map(|s| s.address());
        Ok(Self {
            segments,
            pclntab,
            text_section: file.section_by_name(".text").map(|s| s.address()),
            relative,
            buildinfo,
        })
    }

    /// The file bytes at virtual address `vaddr` to the end of its segment.
    pub fn bytes_at<'d>(&self, data: &'d [u8], vaddr: u64) -> Option<&'d [u8]> {
        let s = self
            .segments
            .iter()
            .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr < s.file_size)?;
        let start = usize::try_from(s.file_offset.checked_add(vaddr - s.vaddr)?).ok()?;
        let end = usize::try_from(s.file_offset.checked_add(s.file_size)?).ok()?;
        data.get(start..end.min(data.len()))
    }

    /// The pointer-sized word at `vaddr` as the loaded program sees it.
    pub fn word_at(&self, data: &[u8], vaddr: u64) -> Option<u64> {
        let bytes = self.bytes_at(data, vaddr)?;
        let word = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        if word == 0 {
            return self.relative.get(&vaddr).copied().or(Some(0));
        }
        Some(word)
    }

    /// The Go release that built the binary (`go1.N[.P]`, from the build
    /// information the linker writes: inline since Go 1.18, through a
    /// string header before), as (1, N).
    pub fn go_version(&self, data: &[u8]) -> Option<(u32, u32)> {
        const MAGIC: &[u8] = b"\xff Go buildinf:";
        let at = self.buildinfo.or_else(|| {
            // Without section headers: the linker aligns it to 16 bytes.
            self.segments.iter().filter(|s| s.writable).find_map(|s| {
                let bytes = self.bytes_at(data, s.vaddr)?;
                let skew = ((16 - s.vaddr % 16) % 16) as usize;
                let i = (skew..bytes.len().saturating_sub(32))
                    .step_by(16)
                    .find(|&i| bytes[i..].starts_with(MAGIC))?;
                s.vaddr.checked_add(i as u64)
            })
        })?;
        let header = self
            .bytes_at(data, at)?
            .get(..32)
            .filter(|h| h.starts_with(MAGIC))?;
        let version: &[u8] = if header[15] & 2 != 0 {
            // A varint length, then the bytes.
            let rest = &self.bytes_at(data, at)?[32..];
            let len = *rest.first().filter(|&&l| l < 0x80)? as usize;
            rest.get(1..1 + len)?
        } else {
            // A pointer to `runtime.buildVersion`, a string header.
            let header_at = u64::from_le_bytes(header[16..24].try_into().ok()?);
            let string = self.word_at(data, header_at)?;
            let len = self.word_at(data, header_at.checked_add(8)?)?;
            self.bytes_at(data, string)?
                .get(..usize::try_from(len).ok()?)?
        };
        let version = std::str::from_utf8(version).ok()?.strip_prefix("go")?;
        let mut parts = version.split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some((major, minor))
    }

    /// The address of the runtime's `moduledata` (its first word points at
    /// the table; its second, `funcnametab`'s data, at `funcnametab`).
    pub fn moduledata(&self, data: &[u8], funcnametab: u64) -> Option<u64> {
        let table = self.pclntab.1;
        let candidates = self
            .relative
            .iter()
            .filter(|&(_, &v)| v == table)
            .map(|(&a, _)| a);
        let scanned = self.segments.iter().filter(|s| s.writable).flat_map(|s| {
            let bytes = self.bytes_at(data, s.vaddr).unwrap_or(&[]);
            bytes
                .chunks_exact(8)
                .enumerate()
                .filter(|(_, w)| u64::from_le_bytes((*w).try_into().unwrap_or_default()) == table)
                .filter_map(move |(i, _)| s.vaddr.checked_add(8 * i as u64))
        });
        candidates
            .chain(scanned)
            .find(|&at| at.checked_add(8).and_then(|a| self.word_at(data, a)) == Some(funcnametab))
    }
}

/// Scans the loadable segments for a table header: the magic of a known
/// format, two zero bytes, a pc quantum of 1, 2 or 4, 8-byte pointers.
fn find_by_magic(data: &[u8], segments: &[Segment]) -> Option<(usize, u64, usize)> {
    segments.iter().find_map(|s| {
        let start = usize::try_from(s.file_offset).ok()?;
        let end = usize::try_from(s.file_offset.checked_add(s.file_size)?).ok()?;
        let bytes = data.get(start..end.min(data.len()))?;
        // The linker aligns the table to the pointer size.
        let skew = (8 - (s.vaddr % 8) as usize) % 8;
        (skew..bytes.len().saturating_sub(64))
            .step_by(8)
            .find(|&i| {
                let h = &bytes[i..i + 8];
                Format::from_magic(u32::from_le_bytes([h[0], h[1], h[2], h[3]])).is_some()
                    && h[4] == 0
                    && h[5] == 0
                    && matches!(h[6], 1 | 2 | 4)
                    && h[7] == 8
            })
            .and_then(|i| Some((start + i, s.vaddr.checked_add(i as u64)?, bytes.len() - i)))
    })
}
