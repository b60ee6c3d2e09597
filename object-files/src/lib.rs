//! Finds the object files processes map, and their separate debug files:
//! through `/proc/PID/map_files` and the process's root, by build id under
//! debug directories, by `.gnu_debuglink`; and names them ([`file_id`]: GNU
//! build id or content hash). Shared by the components that read object
//! files (process tracking, process labels, symbolization, debuginfo upload).

pub mod file_id;
mod root;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection, ObjectSegment};

pub use root::{fd_path, open_in_root};

/// An object file as a process maps it.
#[derive(Clone, Copy, Debug)]
pub struct ObjectRef<'a> {
    /// Path as the process sees it.
    pub path: &'a str,
    /// GNU build id, hex, when known: files found by path must match it.
    pub build_id: Option<&'a str>,
    /// Processes mapping it, to reach their files; empty when unknown.
    pub pids: &'a [u32],
    /// The mapping's address range (names its /proc/PID/map_files entry).
    pub range: (u64, u64),
}

/// Where separate debug information came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebugSource {
    /// The object file itself (its DWARF, or only its symbol tables).
    Itself,
    /// `<debug dir>/.build-id/xx/yyyy.debug`.
    BuildId,
    /// The file `.gnu_debuglink` names (CRC checked).
    Debuglink,
}

/// A PT_LOAD segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// `p_offset`.
    pub file_offset: u64,
    /// `p_filesz`.
    pub file_size: u64,
    /// `p_vaddr`.
    pub vaddr: u64,
    /// `PF_X` is set.
    pub executable: bool,
    /// `PF_W` is set.
    pub writable: bool,
}

/// The PT_LOAD segments of an object, in file order.
pub fn load_segments<'d>(obj: &impl object::Object<'d>) -> Vec<Segment> {
    obj.segments()
        .map(|s| {
            let (file_offset, file_size) = s.file_range();
            let flags = match s.flags() {
                object::SegmentFlags::Elf { p_flags, .. } => p_flags.0,
                _ => 0,
            };
            Segment {
                file_offset,
                file_size,
                vaddr: s.address(),
                executable: flags & object::elf::PF_X.0 != 0,
                writable: flags & object::elf::PF_W.0 != 0,
            }
        })
        .collect()
}

/// What an ELF file says about itself.
#[derive(Clone, Debug)]
pub struct ElfInfo {
    /// `e_type` (2 = ET_EXEC, 3 = ET_DYN).
    pub elf_type: u16,
    /// PT_LOAD segments in file order.
    pub segments: Vec<Segment>,
    /// GNU build id, hex.
    pub build_id: Option<String>,
    /// `.gnu_debuglink`: file name and CRC-32.
    pub debuglink: Option<(String, u32)>,
    /// Has a non-empty `.debug_info`.
    pub has_dwarf: bool,
}

impl ElfInfo {
    /// The ELF virtual address of a file offset, through the PT_LOAD segment
    /// holding it.
    pub fn virtual_address(&self, file_offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| file_offset >= s.file_offset && file_offset - s.file_offset < s.file_size)
            // A segment's address comes from the file: any value (fuzzed).
            .and_then(|s| (file_offset - s.file_offset).checked_add(s.vaddr))
    }

    /// The first executable PT_LOAD segment (where code is).
    pub fn text_segment(&self) -> Option<&Segment> {
        self.segments.iter().find(|s| s.executable)
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads what [`ElfInfo`] holds from an ELF file.
pub fn read_elf(file: &File) -> Result<ElfInfo, String> {
    // SAFETY: read-only private mapping; a file truncated underneath would
    // fault, which is why only files of live mappings or debug files are read.
    let map = unsafe { memmap2::Mmap::map(file) }.map_err(|e| e.to_string())?;
    elf_info(&map)
}

/// [`ElfInfo`] of ELF bytes.
pub fn elf_info(data: &[u8]) -> Result<ElfInfo, String> {
    let obj = object::File::parse(data).map_err(|e| e.to_string())?;
    let elf_type = match object::FileKind::parse(data) {
        Ok(object::FileKind::Elf64 | object::FileKind::Elf32) if data.len() >= 18 => {
            // e_type follows the 16-byte ident; its byte order is the file's.
            let bytes = [data[16], data[17]];
            if obj.is_little_endian() {
                u16::from_le_bytes(bytes)
            } else {
                u16::from_be_bytes(bytes)
            }
        }
        _ => return Err("not an ELF file".to_owned()),
    };
    let segments = load_segments(&obj);
    let has_dwarf = [".debug_info", ".zdebug_info"]
        .iter()
        .any(|n| obj.section_by_name(n).is_some_and(|s| s.size() > 0));
    Ok(ElfInfo {
        elf_type,
        segments,
        build_id: obj.build_id().ok().flatten().map(hex),
        debuglink: obj
            .gnu_debuglink()
            .ok()
            .flatten()
            .map(|(name, crc)| (String::from_utf8_lossy(name).into_owned(), crc)),
        has_dwarf,
    })
}

fn crc32_of(mut file: &File) -> Option<u32> {
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Some(hasher.finalize()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(_) => return None,
        }
    }
}

/// An object file found for a mapping.
#[derive(Debug)]
pub struct FoundObject {
    /// The open file.
    pub file: File,
    /// What it says about itself.
    pub info: ElfInfo,
    /// The process whose root it was found in (`None`: on this host).
    pub pid: Option<u32>,
}

/// A separate debug file found for an object.
#[derive(Debug)]
pub struct FoundDebugFile {
    /// The open file.
    pub file: File,
    /// What it says about itself.
    pub info: ElfInfo,
    /// How it was found.
    pub source: DebugSource,
}

/// Finds object files and their debug files.
#[derive(Clone, Debug)]
pub struct ObjectLocator {
    /// Where processes are read (`/proc`).
    pub proc_root: PathBuf,
    /// Searched for separate debug files, in order.
    pub debug_dirs: Vec<PathBuf>,
}

impl ObjectLocator {
    /// The object file itself: the exact file mapped (map_files), else the
    /// path inside the process's root, else — only when a build id proves
    /// it is the same file — the path on this host.
    pub fn open_binary(&self, obj: &ObjectRef<'_>) -> Option<FoundObject> {
        let matches = |info: &ElfInfo| match obj.build_id {
            Some(id) => info.build_id.as_deref() == Some(id),
            None => true,
        };
        for &pid in obj.pids {
            let dir = self.proc_root.join(pid.to_string());
            let exact = dir
                .join("map_files")
                .join(format!("{:x}-{:x}", obj.range.0, obj.range.1));
            if let Ok(file) = File::open(exact) {
                if let Ok(info) = read_elf(&file) {
                    return Some(FoundObject {
                        file,
                        info,
                        pid: Some(pid),
                    });
                }
            }
            if let Ok(file) = open_in_root(&dir.join("root"), Path::new(obj.path)) {
                if let Some(info) = read_elf(&file).ok().filter(matches) {
                    return Some(FoundObject {
                        file,
                        info,
                        pid: Some(pid),
                    });
                }
            }
        }
        obj.build_id?;
        let file = File::open(obj.path).ok()?;
        let info = read_elf(&file).ok().filter(matches)?;
        Some(FoundObject {
            file,
            info,
            pid: None,
        })
    }

    /// A separate debug file with DWARF: by build id under each debug
    /// directory (on this host, then inside the process's root), then by
    /// debuglink next to the binary, in its `.debug/`, and under each debug
    /// directory.
    pub fn find_debug_file(
        &self,
        obj: &ObjectRef<'_>,
        build_id: Option<&str>,
        binary: Option<&FoundObject>,
    ) -> Option<FoundDebugFile> {
        let root = binary
            .and_then(|b| b.pid)
            .map(|pid| self.proc_root.join(pid.to_string()).join("root"));
        let open_anywhere = |path: &Path| {
            File::open(path)
                .ok()
                .or_else(|| root.as_ref().and_then(|r| open_in_root(r, path).ok()))
        };
        let with_dwarf = |file: File| {
            read_elf(&file)
                .ok()
                .filter(|i| i.has_dwarf)
                .map(|i| (file, i))
        };
        if let Some(id) = build_id.filter(|id| id.len() > 2) {
            for dir in &self.debug_dirs {
                let path = dir
                    .join(".build-id")
                    .join(&id[..2])
                    .join(format!("{}.debug", &id[2..]));
                if let Some((file, info)) = open_anywhere(&path).and_then(with_dwarf) {
                    if info.build_id.as_deref().is_none_or(|found| found == id) {
                        return Some(FoundDebugFile {
                            file,
                            info,
                            source: DebugSource::BuildId,
                        });
                    }
                }
            }
        }
        let (name, crc) = binary.and_then(|b| b.info.debuglink.clone())?;
        let dir = Path::new(obj.path).parent().unwrap_or(Path::new("/"));
        let inside_root = [dir.join(&name), dir.join(".debug").join(&name)];
        let in_root_files = inside_root.iter().filter_map(|p| match &root {
            Some(r) => open_in_root(r, p).ok(),
            None => File::open(p).ok(),
        });
        let in_debug_dirs = self.debug_dirs.iter().filter_map(|d| {
            File::open(d.join(dir.strip_prefix("/").unwrap_or(dir)).join(&name)).ok()
        });
        in_root_files
            .chain(in_debug_dirs)
            .filter(|f| crc32_of(f) == Some(crc))
            .find_map(with_dwarf)
            .map(|(file, info)| FoundDebugFile {
                file,
                info,
                source: DebugSource::Debuglink,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_address_near_the_top_is_no_address_not_a_panic() {
        // Found by fuzzing (fuzz/regressions/symbolize_elf).
        let info = ElfInfo {
            elf_type: object::elf::ET_DYN.0,
            segments: vec![Segment {
                file_offset: 0x1000,
                file_size: 0x1000,
                vaddr: u64::MAX - 0x10,
                executable: true,
                writable: false,
            }],
            build_id: None,
            debuglink: None,
            has_dwarf: false,
        };
        assert_eq!(info.virtual_address(0x1008), Some(u64::MAX - 8));
        assert_eq!(info.virtual_address(0x1100), None);
    }

    #[test]
    fn a_distribution_binary_is_described() {
        let info = read_elf(&File::open("/bin/ls").unwrap()).unwrap();
        assert_eq!(info.elf_type, object::elf::ET_DYN.0, "Debian builds PIE");
        let text = info.text_segment().expect("code segment");
        assert!(text.file_size > 0 && text.file_offset > 0);
        assert_eq!(
            info.virtual_address(text.file_offset + 16),
            Some(text.vaddr + 16)
        );
        assert_eq!(info.build_id.as_deref().map(str::len), Some(40));
        assert!(elf_info(b"not an elf").is_err());
    }

    #[test]
    fn a_mapped_file_is_found_through_the_process() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let me = std::env::current_exe().unwrap();
        let line = maps
            .lines()
            .find(|l| l.contains(" r-xp ") && l.ends_with(me.to_str().unwrap()))
            .expect("this test binary's code mapping");
        let range = line.split(' ').next().unwrap().split_once('-').unwrap();
        let range = (
            u64::from_str_radix(range.0, 16).unwrap(),
            u64::from_str_radix(range.1, 16).unwrap(),
        );
        let locator = ObjectLocator {
            proc_root: PathBuf::from("/proc"),
            debug_dirs: vec![],
        };
        let pid = std::process::id();
        let found = locator
            .open_binary(&ObjectRef {
                path: me.to_str().unwrap(),
                build_id: None,
                pids: &[pid],
                range,
            })
            .unwrap();
        assert_eq!(found.pid, Some(pid));
        assert!(found.info.text_segment().is_some());
    }
}
