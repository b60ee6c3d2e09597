//! Go programs: where the BPF program finds the sampled goroutine's pprof
//! labels (`runtime/pprof.Do`, `SetGoroutineLabels`; ebpf/runtimes/go.h).
//!
//! The path is fs base → `g` (a thread-local slot) → `g.m` → `m.curg` (the
//! user goroutine, also while its thread runs on the scheduler's stack) →
//! `g.labels`. Struct offsets come from the binary's DWARF when it has any,
//! else from a table per Go release (read with the Go runtime's
//! `runtime2.go` of each release); the thread-local slot from the binary's
//! TLS segment and `runtime.tlsg`, or the code of `runtime.stackcheck`.

use std::borrow::Cow;

use agent_gopclntab::GoTable;
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{elf, Object, ObjectSection, ObjectSymbol};

use crate::bpf::{go_labels_kind, GoLayout};

/// Why a Go binary's labels cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GoDetectError {
    /// Not a Go binary.
    #[error("not a Go binary")]
    NotGo,
    /// No build information to tell the release (and no DWARF).
    #[error("Go release unknown (no build information)")]
    UnknownVersion,
    /// A release this table does not know, without DWARF.
    #[error("Go 1.{0}: struct offsets unknown without DWARF")]
    UnknownLayout(u32),
    /// The thread-local slot of `g` was not found.
    #[error("the thread-local slot of the current goroutine was not found")]
    NoTls,
}

/// What the BPF program needs of one Go binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoBinary {
    /// The Go release that built it, as (1, minor).
    pub version: (u32, u32),
    /// Where the labels are.
    pub layout: GoLayout,
}

impl GoBinary {
    /// Reads the ELF image `data` of a Go executable.
    pub fn read(data: &[u8]) -> Result<Self, GoDetectError> {
        let table = GoTable::new(data).map_err(|_| GoDetectError::NotGo)?;
        let version = table.go_version().ok_or(GoDetectError::UnknownVersion)?;
        let (g_m, m_curg, g_labels) = match dwarf_offsets(data) {
            Some(offsets) => offsets,
            None => table_offsets(version).ok_or(GoDetectError::UnknownLayout(version.1))?,
        };
        Ok(Self {
            version,
            layout: GoLayout {
                tls_g: tls_offset(data, &table).ok_or(GoDetectError::NoTls)?,
                // Go 1.24 replaced the labels map with a sorted slice.
                labels_kind: if version >= (1, 24) {
                    go_labels_kind::SLICE
                } else {
                    go_labels_kind::MAP
                },
                g_m,
                m_curg,
                g_labels,
                reserved: [0; 3],
            },
        })
    }
}

/// (offsetof(g, m), offsetof(m, curg), offsetof(g, labels)) on amd64 per
/// release, where fields added to `g` and `m` moved them.
fn table_offsets((major, minor): (u32, u32)) -> Option<(u16, u16, u16)> {
    if major != 1 {
        return None;
    }
    Some(match minor {
        10..=16 => (48, 192, 344),
        17..=20 => (48, 192, 360),
        21..=22 => (48, 192, 344),
        23..=24 => (48, 192, 352),
        25 => (48, 184, 344),
        26..=27 => (48, 184, 352),
        _ => return None,
    })
}

/// The same offsets from the binary's DWARF (`runtime.g`, `runtime.m`).
fn dwarf_offsets(data: &[u8]) -> Option<(u16, u16, u16)> {
    let file = object::File::parse(data).ok()?;
    let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, gimli::Error> {
        Ok(file
            .section_by_name(id.name())
            .and_then(|s| section_bytes(&s))
            .unwrap_or(Cow::Borrowed(&[])))
    };
    let sections = gimli::DwarfSections::load(load).ok()?;
    let dwarf = sections.borrow(|s| gimli::EndianSlice::new(s, gimli::LittleEndian));
    let (mut g_m, mut m_curg, mut g_labels) = (None, None, None);
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        let mut tree = unit.entries_tree(None).ok()?;
        let root = tree.root().ok()?;
        let mut children = root.children();
        while let Ok(Some(node)) = children.next() {
            let entry = node.entry();
            if entry.tag() != gimli::DW_TAG_structure_type {
                continue;
            }
            let name = entry
                .attr_value(gimli::DW_AT_name)
                .and_then(|v| dwarf.attr_string(&unit, v).ok());
            let wanted: &[&str] = match name.as_deref() {
                Some(b"runtime.g") => &["m", "labels"],
                Some(b"runtime.m") => &["curg"],
                _ => continue,
            };
            let mut members = node.children();
            while let Ok(Some(member)) = members.next() {
                let member = member.entry();
                let member_name = member
                    .attr_value(gimli::DW_AT_name)
                    .and_then(|v| dwarf.attr_string(&unit, v).ok());
                let Some(member_name) =
                    member_name.and_then(|n| std::str::from_utf8(&n).ok().map(str::to_owned))
                else {
                    continue;
                };
                if !wanted.contains(&member_name.as_str()) {
                    continue;
                }
                let offset = member
                    .attr_value(gimli::DW_AT_data_member_location)
                    .and_then(|v| v.udata_value())
                    .and_then(|o| u16::try_from(o).ok());
                match (name.as_deref(), member_name.as_str()) {
                    (Some(b"runtime.g"), "m") => g_m = offset,
                    (Some(b"runtime.g"), "labels") => g_labels = offset,
                    (_, "curg") => m_curg = offset,
                    _ => {}
                }
            }
            if let (Some(a), Some(b), Some(c)) = (g_m, m_curg, g_labels) {
                return Some((a, b, c));
            }
        }
    }
    None
}

/// A section's bytes, inflated when compressed (Go 1.11+ compresses DWARF).
fn section_bytes<'d>(section: &object::Section<'d, '_>) -> Option<Cow<'d, [u8]>> {
    let compressed = section.compressed_data().ok()?;
    match compressed.format {
        object::CompressionFormat::None => Some(Cow::Borrowed(compressed.data)),
        object::CompressionFormat::Zlib => {
            use std::io::Read;
            let size = usize::try_from(compressed.uncompressed_size).ok()?;
            let mut out = Vec::with_capacity(size.min(1 << 28));
            flate2::read::ZlibDecoder::new(compressed.data)
                .take(size as u64)
                .read_to_end(&mut out)
                .ok()?;
            Some(Cow::Owned(out))
        }
        _ => None,
    }
}

/// Where `g` is, from the thread's fs base. An internally linked Go
/// program keeps it at -8 (the runtime sets fs so); an externally linked
/// one (cgo) has a TLS segment, and `g` at `runtime.tlsg` within the
/// executable's TLS block, which ends at fs. Without the symbol (stripped),
/// the offset is the one `runtime.stackcheck` loads `g` from.
fn tls_offset(data: &[u8], table: &GoTable<&[u8]>) -> Option<i64> {
    let file = ElfFile64::<object::Endianness>::parse(data).ok()?;
    let endian = file.endian();
    let Some(tls) = file
        .elf_program_headers()
        .iter()
        .find(|p| p.p_type(endian) == elf::PT_TLS)
    else {
        return Some(-8);
    };
    let size = tls.p_memsz(endian);
    let align = tls.p_align(endian).max(1);
    let block = i64::try_from(size.div_ceil(align) * align).ok()?;
    if let Some(tlsg) = file.symbols().find(|s| s.name() == Ok("runtime.tlsg")) {
        return Some(i64::try_from(tlsg.address()).ok()? - block);
    }
    let f = table.functions().flatten().find(|f| {
        table
            .name(f)
            .is_ok_and(|n| n == "runtime.stackcheck.abi0" || n == "runtime.stackcheck")
    })?;
    fs_load_offset(table.code(&f)?)
}

/// The fs-relative offset of the first `mov %fs:OFFSET, reg` (or `mov
/// $OFFSET, reg; mov %fs:(reg), reg`) in `code`.
fn fs_load_offset(code: &[u8]) -> Option<i64> {
    let disp =
        |b: &[u8]| -> Option<i64> { Some(i64::from(i32::from_le_bytes(b.try_into().ok()?))) };
    for i in 0..code.len().min(64) {
        let rest = &code[i..];
        // 64 48 8b 04 25 disp32: mov %fs:disp32, %rax (any register: ModRM 00 reg 100, SIB 25).
        if rest.len() >= 9
            && rest[0] == 0x64
            && rest[1] & 0xf8 == 0x48
            && rest[2] == 0x8b
            && rest[3] & 0xc7 == 0x04
            && rest[4] == 0x25
        {
            return disp(&rest[5..9]);
        }
        // 48 c7 c1 imm32: mov $imm32, %rcx (any register), then a %fs load through it.
        if rest.len() >= 11
            && rest[0] & 0xf8 == 0x48
            && rest[1] == 0xc7
            && rest[2] & 0xf8 == 0xc0
            && rest[7] == 0x64
        {
            return disp(&rest[3..7]);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::go_workload;

    /// The table agrees with DWARF for each Go toolchain on this machine,
    /// and a stripped build gets the same layout from the table.
    #[test]
    fn offsets_from_the_table_match_dwarf() {
        let dir = tempfile::tempdir().unwrap();
        for go in go_workload::go_toolchains() {
            let unstripped = go_workload::build_go_chain(&go, dir.path(), "labels", "");
            let stripped = go_workload::build_go_chain(&go, dir.path(), "labels_stripped", "-s -w");
            let data = std::fs::read(&unstripped).unwrap();
            let from_dwarf = dwarf_offsets(&data).expect("DWARF has runtime.g and runtime.m");
            let binary = GoBinary::read(&data).unwrap();
            assert_eq!(
                table_offsets(binary.version),
                Some(from_dwarf),
                "{}",
                go.display()
            );
            let stripped = GoBinary::read(&std::fs::read(&stripped).unwrap()).unwrap();
            assert_eq!(stripped, binary, "{}", go.display());
            assert_eq!(binary.layout.tls_g, -8);
        }
    }

    /// A cgo program (externally linked) with C thread-locals of its own:
    /// `g` lies below them, found through `runtime.tlsg`, or without symbols
    /// through the code of `runtime.stackcheck`; both say the same.
    #[test]
    fn a_cgo_programs_goroutine_slot_is_found_with_and_without_symbols() {
        let Some(go) = go_workload::go_toolchains().into_iter().next() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src");
        std::fs::create_dir(&source).unwrap();
        for file in ["main.go", "go.mod"] {
            std::fs::copy(go_workload::go_chain_source().join(file), source.join(file)).unwrap();
        }
        std::fs::write(
            source.join("cgo.go"),
            "package main\n\n// __thread int pad[16];\n\
             // int touch(int x) { pad[x & 15] += x; return pad[(x * 7) & 15]; }\n\
             import \"C\"\n\nvar cgoSink = int(C.touch(3))\n",
        )
        .unwrap();
        let with = go_workload::build_go(&go, &source, dir.path(), "cgo", "");
        let without = go_workload::build_go(&go, &source, dir.path(), "cgo_stripped", "-s -w");
        let read = |p: &std::path::Path| GoBinary::read(&std::fs::read(p).unwrap()).unwrap();
        let (with, without) = (read(&with), read(&without));
        // 16 ints of C plus `g`'s own 8 bytes, aligned to 16.
        assert_eq!(with.layout.tls_g, -0x50);
        assert_eq!(without.layout.tls_g, -0x50);
    }

    #[test]
    fn the_fs_load_of_stackcheck_is_decoded() {
        // mov %fs:0xfffffffffffffff8, %rax
        let direct = [0x64, 0x48, 0x8b, 0x04, 0x25, 0xf8, 0xff, 0xff, 0xff, 0xc3];
        assert_eq!(fs_load_offset(&direct), Some(-8));
        // mov $-0x50, %rcx; mov %fs:(%rcx), %rax
        let indirect = [
            0x48, 0xc7, 0xc1, 0xb0, 0xff, 0xff, 0xff, 0x64, 0x48, 0x8b, 0x01,
        ];
        assert_eq!(fs_load_offset(&indirect), Some(-0x50));
        assert_eq!(fs_load_offset(&[0x90; 16]), None);
        assert!(matches!(
            GoBinary::read(&std::fs::read("/bin/true").unwrap()),
            Err(GoDetectError::NotGo)
        ));
    }
}
