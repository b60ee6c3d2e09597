//! DWARF read one compilation unit at a time, so memory follows the
//! addresses asked about rather than the size of the file.
//!
//! addr2line's `Context` parses every unit of a file when it is built: for
//! the agent's own release binary (7,000 units) that is 69 MiB of heap
//! before the first lookup. Here an object keeps only an index from
//! address to unit (a few bytes per unit range), and a lookup builds an
//! addr2line `Context` over a *view* of `.debug_info` holding just the
//! units it needs: the units whose ranges cover the address, and the units
//! their DIEs reference across units (`DW_FORM_ref_addr`, as LTO emits).
//! The view keeps every unit at its real offset — the bytes between are
//! covered by placeholder type units, which addr2line skips unparsed — so
//! references, `.debug_aranges` and every other section resolve exactly as
//! they do against the whole file, and the frames are the same.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use gimli::{EndianSlice, RunTimeEndian, SectionId};
use memmap2::{Mmap, MmapMut};
use object::{Object, ObjectSection};

/// Section data as addr2line reads it. `'static` stands for "as long as
/// the [`Sections`] it came from": every holder of such a slice holds that
/// `Arc<Sections>` too, declared after it so it is dropped after it. Slices
/// of a decompressed `.debug_info` (`DwarfUnits::decompressed_info`) live
/// only in readers local to the function borrowing it (indexing, building
/// a view), which keep offsets and copies, never the slices.
pub(crate) type Slice = EndianSlice<'static, RunTimeEndian>;

/// Most units one view holds (the units covering an address and those they
/// reference, transitively); references beyond stay unresolved.
const MAX_UNITS_PER_VIEW: usize = 64;

/// An object file mapped read-only, shared by its readers.
pub(crate) struct MappedFile(Mmap);

impl MappedFile {
    /// Maps `file`.
    pub(crate) fn open(file: &File) -> Result<Arc<Self>, String> {
        // SAFETY: read-only private mapping of a file found through a live
        // process or a debug directory; a file truncated underneath faults,
        // the exposure every reader of mapped objects has.
        let map = unsafe { Mmap::map(file) }.map_err(|e| e.to_string())?;
        Ok(Arc::new(Self(map)))
    }

    /// The whole file.
    pub(crate) fn data(&self) -> &[u8] {
        &self.0
    }

    /// Drops the file's pages from this process's resident memory; they
    /// come back from the page cache when read again. Called after each
    /// step that reads much of the file (a few units indexed, a unit read,
    /// a unit's lines parsed) and between batches: which pages a step
    /// touched cannot be known, and releasing a mapping whose pages are
    /// mostly gone costs microseconds.
    pub(crate) fn release_pages(&self) {
        // SAFETY: the mapping is private and never written, so its pages are
        // the file's: dropping them loses nothing, the next read faults them
        // back.
        let _ = unsafe { self.0.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
    }
}

/// The DWARF sections of a mapped object file, those it stores compressed
/// decompressed (heap the object keeps only while it keeps its DWARF
/// parsed); the data every DWARF reader of the object borrows.
///
/// A compressed `.debug_info` is the exception: it is the largest section
/// and only indexing and building a view read it whole (a view copies its
/// units out), so it is decompressed for the lookups of one batch and let
/// go after (see [`DwarfUnits::release_info`]): libc named from Debian's
/// libc6-dbg keeps 3.4 MiB between batches instead of 10.3.
pub(crate) struct Sections {
    file: Arc<MappedFile>,
    decompressed: Vec<Vec<u8>>,
    /// Section -> (which buffer: `None` the map, `Some(i)` decompressed[i], range).
    ranges: HashMap<SectionId, (Option<usize>, usize, usize)>,
    /// The file stores `.debug_info` compressed (it is not in `ranges`).
    info_compressed: bool,
    endian: RunTimeEndian,
    address_size: u8,
}

impl Sections {
    /// Finds the DWARF sections of `file`.
    pub(crate) fn load(file: Arc<MappedFile>) -> Result<Self, String> {
        let map = file.data();
        let obj = object::File::parse(map).map_err(|e| e.to_string())?;
        let endian = if obj.is_little_endian() {
            RunTimeEndian::Little
        } else {
            RunTimeEndian::Big
        };
        let address_size = if obj.is_64() { 8 } else { 4 };
        let base = map.as_ptr() as usize;
        let mut decompressed = Vec::new();
        let mut ranges = HashMap::new();
        let mut info_compressed = false;
        for id in ALL_SECTIONS {
            let Some(section) = obj.section_by_name(id.name()) else {
                continue;
            };
            if id == SectionId::DebugInfo
                && section
                    .compressed_file_range()
                    .is_ok_and(|r| r.format != object::CompressionFormat::None)
            {
                info_compressed = true;
                continue;
            }
            match section.uncompressed_data() {
                Ok(std::borrow::Cow::Borrowed(data)) => {
                    ranges.insert(id, (None, data.as_ptr() as usize - base, data.len()));
                }
                Ok(std::borrow::Cow::Owned(data)) => {
                    ranges.insert(id, (Some(decompressed.len()), 0, data.len()));
                    decompressed.push(data);
                }
                // An unreadable section is treated as absent, as addr2line's
                // loader would fail the whole file on it.
                Err(_) => {}
            }
        }
        Ok(Self {
            file: file.clone(),
            decompressed,
            ranges,
            info_compressed,
            endian,
            address_size,
        })
    }

    /// A compressed `.debug_info`, decompressed; `None` when the file
    /// stores it plain (read it with `data`) or it cannot be read.
    fn decompress_info(&self) -> Option<Vec<u8>> {
        if !self.info_compressed {
            return None;
        }
        let obj = object::File::parse(self.file.data()).ok()?;
        let data = obj
            .section_by_name(SectionId::DebugInfo.name())?
            .uncompressed_data()
            .ok()?;
        Some(data.into_owned())
    }

    fn data(&self, id: SectionId) -> &[u8] {
        match self.ranges.get(&id) {
            Some(&(None, start, len)) => &self.file.data()[start..start + len],
            Some(&(Some(i), start, len)) => &self.decompressed[i][start..start + len],
            None => &[],
        }
    }

    /// `data` with the lifetime [`Slice`] documents.
    fn slice(&self, data: &[u8]) -> Slice {
        // SAFETY: `data` lies in `self.file`, `self.decompressed`, a view's
        // own buffers or a decompressed `.debug_info`, none of which move or
        // change while their owner lives (heap and mapped memory keep their
        // address when the owner moves); whoever holds the slice also holds
        // its owner, declared after it, or borrows it for the slice's whole
        // use (see `Slice` and `View`).
        let data: &'static [u8] = unsafe { std::mem::transmute::<&[u8], &'static [u8]>(data) };
        EndianSlice::new(data, self.endian)
    }

    /// The object's DWARF, with the sections `view` holds in place of the
    /// file's.
    fn dwarf(&self, view: &ViewData) -> gimli::Dwarf<Slice> {
        let info = view.info.as_deref().unwrap_or(&[]);
        // A view carries its units' sets only (none: empty).
        let aranges = view.aranges.as_deref().unwrap_or(&[]);
        self.dwarf_with(info, Some(aranges))
    }

    /// The object's DWARF over `info`, the whole `.debug_info` (the file's,
    /// or decompressed).
    fn whole_dwarf(&self, info: &[u8]) -> gimli::Dwarf<Slice> {
        self.dwarf_with(info, None)
    }

    fn dwarf_with(&self, info: &[u8], aranges: Option<&[u8]>) -> gimli::Dwarf<Slice> {
        gimli::Dwarf::load(|id| {
            let data = match (id, aranges) {
                (SectionId::DebugInfo, _) => info,
                (SectionId::DebugAranges, Some(aranges)) => aranges,
                _ => self.data(id),
            };
            Ok::<_, gimli::Error>(self.slice(data))
        })
        .expect("loading from memory cannot fail")
    }

    fn release_pages(&self) {
        self.file.release_pages();
    }
}

/// The sections names and lines are read from: not the location lists,
/// which place variables (1.4 MiB decompressed in libc6-dbg's libc).
const ALL_SECTIONS: [SectionId; 10] = [
    SectionId::DebugAbbrev,
    SectionId::DebugAddr,
    SectionId::DebugAranges,
    SectionId::DebugInfo,
    SectionId::DebugLine,
    SectionId::DebugLineStr,
    SectionId::DebugRanges,
    SectionId::DebugRngLists,
    SectionId::DebugStr,
    SectionId::DebugStrOffsets,
];

/// One address range of a unit, ordered as addr2line orders them.
#[derive(Clone, Copy)]
struct UnitRange {
    begin: u64,
    end: u64,
    /// The least `begin` of this and every later range (in `end` order).
    min_begin: u64,
    unit: u32,
}

/// Address -> units, and where each unit lies in `.debug_info`.
struct UnitIndex {
    /// (start, end) offset of each compile or partial unit, ascending.
    units: Vec<(usize, usize)>,
    /// Sorted by (end, unit), as addr2line searches them.
    ranges: Vec<UnitRange>,
    /// (unit, start, end) of the `.debug_aranges` sets a unit's ranges come
    /// from (units without `DW_AT_ranges`), by unit: a view carries only
    /// these, not the whole section addr2line would read for every view.
    aranges_sets: Vec<(u32, usize, usize)>,
}

impl UnitIndex {
    /// Reads every unit's header and root entry — what addr2line's own
    /// context reads up front — keeping only offsets and address ranges.
    fn build(sections: &Sections, info: &[u8]) -> Result<Self, gimli::Error> {
        let dwarf = sections.whole_dwarf(info);
        // (unit offset, set start, set end): sets lie end to end.
        let mut aranges: Vec<(usize, usize, usize)> = Vec::new();
        let mut headers = dwarf.debug_aranges.headers();
        while let Some(header) = headers.next()? {
            if let Some(last) = aranges.last_mut() {
                last.2 = header.offset().0;
            }
            aranges.push((header.debug_info_offset().0, header.offset().0, usize::MAX));
        }
        if let Some(last) = aranges.last_mut() {
            last.2 = sections.data(SectionId::DebugAranges).len();
        }
        aranges.sort_unstable_by_key(|a| a.0);
        let mut aranges_sets = Vec::new();

        let mut units = Vec::new();
        let mut per_unit: Vec<gimli::Range> = Vec::new();
        let mut ranges = Vec::new();
        let mut headers = dwarf.units();
        while let Some(header) = headers.next()? {
            let Some(offset) = header.offset().to_debug_info_offset(&header) else {
                continue;
            };
            let wants_ranges = match header.type_() {
                gimli::UnitType::Type { .. } | gimli::UnitType::SplitType { .. } => continue,
                gimli::UnitType::Partial => false,
                _ => true,
            };
            let end = offset.0 + header.length_including_self();
            let Ok(unit) = dwarf.unit(header) else {
                continue;
            };
            let unit_ref = gimli::UnitRef::new(&dwarf, &unit);
            per_unit.clear();
            let Some(from_aranges) =
                root_ranges(unit_ref, wants_ranges, &aranges, offset.0, &mut per_unit)?
            else {
                continue; // no root entry: addr2line skips the unit too
            };
            if wants_ranges && per_unit.is_empty() {
                line_sequence_ranges(unit_ref, &mut per_unit);
            }
            let id = units.len() as u32;
            units.push((offset.0, end));
            aranges_sets.extend(from_aranges.iter().map(|&(start, end)| (id, start, end)));
            merge_adjacent(&mut per_unit);
            ranges.extend(per_unit.iter().map(|r| UnitRange {
                begin: r.begin,
                end: r.end,
                min_begin: 0,
                unit: id,
            }));
            if units.len() % 8 == 0 {
                sections.release_pages();
            }
        }
        ranges.sort_unstable_by_key(|r| (r.end, r.unit));
        let mut min = u64::MAX;
        for r in ranges.iter_mut().rev() {
            min = min.min(r.begin);
            r.min_begin = min;
        }
        units.shrink_to_fit();
        ranges.shrink_to_fit();
        aranges_sets.shrink_to_fit();
        Ok(Self {
            units,
            ranges,
            aranges_sets,
        })
    }

    /// The units whose ranges hold `probe`, in addr2line's order.
    fn covering(&self, probe: u64) -> Vec<u32> {
        let start = self.ranges.partition_point(|r| r.end <= probe);
        let mut found: Vec<u32> = Vec::new();
        for r in self.ranges[start..]
            .iter()
            .take_while(|r| probe.wrapping_add(1) > r.min_begin)
        {
            if r.begin <= probe && !found.contains(&r.unit) {
                found.push(r.unit);
            }
        }
        found
    }

    /// The unit holding `.debug_info` offset `offset`.
    fn unit_at(&self, offset: usize) -> Option<u32> {
        let i = self.units.partition_point(|&(start, _)| start <= offset);
        let (start, end) = *self.units.get(i.checked_sub(1)?)?;
        (offset > start && offset < end).then_some(i as u32 - 1)
    }
}

/// The address ranges of a unit's root entry (when `wanted`), preferring
/// `DW_AT_ranges`, then `.debug_aranges`, then `DW_AT_low_pc`/`DW_AT_high_pc`
/// (addr2line's order); returns the `.debug_aranges` sets (start, end)
/// addr2line would consult for it. `None` when the unit has no root entry.
fn root_ranges(
    unit: gimli::UnitRef<'_, Slice>,
    wanted: bool,
    aranges: &[(usize, usize, usize)],
    offset: usize,
    out: &mut Vec<gimli::Range>,
) -> Result<Option<Vec<(usize, usize)>>, gimli::Error> {
    let mut entries = unit.entries_raw(None)?;
    let Some(abbrev) = entries.read_abbreviation()? else {
        return Ok(None);
    };
    if !wanted {
        return Ok(Some(Vec::new()));
    }
    let (mut low, mut high, mut size, mut ranges_offset) = (None, None, None, None);
    for spec in abbrev.attributes() {
        let attr = entries.read_attribute(*spec)?;
        match attr.name() {
            gimli::DW_AT_low_pc => low = unit.attr_address(attr.value())?,
            gimli::DW_AT_high_pc => match attr.value() {
                gimli::AttributeValue::Udata(n) => size = Some(n),
                value => high = unit.attr_address(value)?,
            },
            gimli::DW_AT_ranges => ranges_offset = unit.attr_ranges_offset(attr.value())?,
            _ => {}
        }
    }
    let mut add = |range: gimli::Range| {
        if range.begin < range.end {
            out.push(range);
        }
    };
    if let Some(ranges_offset) = ranges_offset {
        let mut list = unit.ranges(ranges_offset)?;
        while let Some(range) = list.next()? {
            add(range);
        }
        return Ok(Some(Vec::new()));
    }
    let first = aranges.partition_point(|a| a.0 < offset);
    let sets: Vec<(usize, usize)> = aranges[first..]
        .iter()
        .take_while(|a| a.0 == offset)
        .map(|a| (a.1, a.2))
        .collect();
    let mut from_aranges = false;
    for &(start, _) in &sets {
        let header = gimli::DebugArangesOffset(start);
        let mut entries = unit.dwarf.debug_aranges.header(header)?.entries();
        // Entries that fail to read (an address overflow) are skipped, as
        // addr2line skips them.
        while let Some(entry) = entries.next().transpose() {
            if let Ok(entry) = entry {
                if entry.length() != 0 {
                    add(entry.range());
                    from_aranges = true;
                }
            }
        }
    }
    if !from_aranges {
        match (low, high, size) {
            (Some(begin), Some(end), _) => add(gimli::Range { begin, end }),
            // A -1 tombstone wraps and is dropped as empty.
            (Some(begin), None, Some(size)) => add(gimli::Range {
                begin,
                end: begin.wrapping_add(size),
            }),
            _ => {}
        }
    }
    Ok(Some(sets))
}

/// A unit that declares no ranges covers its line program's sequences.
fn line_sequence_ranges(unit: gimli::UnitRef<'_, Slice>, out: &mut Vec<gimli::Range>) {
    let Some(program) = unit.line_program.clone() else {
        return;
    };
    let mut rows = program.rows();
    let mut start = None;
    while let Ok(Some((_, row))) = rows.next_row() {
        if row.end_sequence() {
            if let Some(begin) = start.take() {
                if begin < row.address() {
                    out.push(gimli::Range {
                        begin,
                        end: row.address(),
                    });
                }
            }
        } else if start.is_none() {
            start = Some(row.address());
        }
    }
}

/// Joins ranges that touch or overlap: the same addresses, fewer entries
/// (a Rust unit lists each function separately).
fn merge_adjacent(ranges: &mut Vec<gimli::Range>) {
    ranges.sort_unstable_by_key(|r| r.begin);
    let mut merged: Vec<gimli::Range> = Vec::with_capacity(ranges.len());
    for r in ranges.drain(..) {
        match merged.last_mut() {
            Some(last) if r.begin <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    *ranges = merged;
}

/// Whether the abbreviation table at `offset` declares an attribute that
/// can reference another unit (`DW_FORM_ref_addr`, or a form each entry
/// names); read raw, as gimli does not list a table's abbreviations.
fn may_reference_other_units(
    dwarf: &gimli::Dwarf<Slice>,
    offset: gimli::DebugAbbrevOffset<usize>,
) -> bool {
    use gimli::{Reader, Section};
    let scan = || -> Result<bool, gimli::Error> {
        let mut input = *dwarf.debug_abbrev.reader();
        input.skip(offset.0)?;
        // code, tag, children flag, then (name, form) pairs ending in (0, 0).
        while input.read_uleb128()? != 0 {
            input.read_uleb128()?;
            input.read_u8()?;
            loop {
                let (name, form) = (input.read_uleb128()?, input.read_uleb128()?);
                if name == 0 && form == 0 {
                    break;
                }
                let form = gimli::DwForm(form as u16);
                if form == gimli::DW_FORM_ref_addr || form == gimli::DW_FORM_indirect {
                    return Ok(true);
                }
                if form == gimli::DW_FORM_implicit_const {
                    input.read_sleb128()?;
                }
            }
        }
        Ok(false)
    };
    // Unreadable: let the entry scan find out.
    scan().unwrap_or(true)
}

/// A placeholder unit covering bytes a view leaves out: a DWARF 5 type
/// unit, which addr2line skips without reading further.
const PLACEHOLDER_LEN: usize = 24;

/// The sections a view holds in place of the file's.
#[derive(Default)]
struct ViewData {
    /// `.debug_info` with only the view's units (anonymous memory, touched
    /// only where units or placeholders were written).
    info: Option<Mmap>,
    /// The `.debug_aranges` sets of the view's units.
    aranges: Option<Vec<u8>>,
}

/// An addr2line context over a view holding some units.
struct View {
    /// Declared before the data it borrows, so it is dropped first.
    context: addr2line::Context<Slice>,
    /// The units it holds, ascending.
    units: Vec<u32>,
    _data: ViewData,
    /// Bytes of anonymous memory written for it, and heap its context
    /// holds (measured as it grows).
    resident: usize,
    heap: i64,
    last_used: u64,
}

impl View {
    fn bytes(&self) -> usize {
        self.resident + self.heap.max(0) as usize
    }
}

/// The DWARF of one object, read a unit at a time.
pub(crate) struct DwarfUnits {
    /// By the first unit covering the addresses they were built for.
    /// Declared before `sections`: they borrow it.
    views: HashMap<u32, View>,
    /// Sum of the views' bytes.
    view_bytes: usize,
    index: UnitIndex,
    /// The compressed `.debug_info` decompressed, while a batch needs it.
    decompressed_info: Option<Vec<u8>>,
    sections: Arc<Sections>,
    clock: u64,
}

impl DwarfUnits {
    /// Indexes the units of `sections`; `None` when it has no DWARF.
    pub(crate) fn new(sections: Arc<Sections>) -> Option<Self> {
        let decompressed_info = sections.decompress_info();
        let info = decompressed_info
            .as_deref()
            .unwrap_or_else(|| sections.data(SectionId::DebugInfo));
        if info.is_empty() {
            return None;
        }
        let index = UnitIndex::build(&sections, info)
            .map_err(|e| tracing::debug!(error = %e, "DWARF units unreadable"))
            .ok()?;
        Some(Self {
            views: HashMap::new(),
            view_bytes: 0,
            index,
            decompressed_info,
            sections,
            clock: 0,
        })
    }

    /// The whole `.debug_info`, decompressed first if the file compresses it.
    fn info(&mut self) -> &[u8] {
        if self.sections.info_compressed && self.decompressed_info.is_none() {
            self.decompressed_info = self.sections.decompress_info();
        }
        match &self.decompressed_info {
            Some(info) => info,
            None => self.sections.data(SectionId::DebugInfo),
        }
    }

    /// Lets go of a decompressed `.debug_info` (at a batch's end): the
    /// views hold copies of their units.
    pub(crate) fn release_info(&mut self) {
        self.decompressed_info = None;
    }

    /// Calls `f` with the frames addr2line finds at `probe` (none when no
    /// unit covers it). `view_budget` bounds the heap and view memory kept
    /// for later lookups (the view in use stays).
    pub(crate) fn with_frames<T>(
        &mut self,
        probe: u64,
        view_budget: usize,
        f: impl FnOnce(Option<addr2line::FrameIter<'_, Slice>>) -> T,
    ) -> T {
        let covering = self.index.covering(probe);
        let Some(&first) = covering.first() else {
            return f(None);
        };
        self.clock += 1;
        let fits = |v: &View| covering.iter().all(|u| v.units.binary_search(u).is_ok());
        if !self.views.get(&first).is_some_and(fits) {
            if let Some(old) = self.views.remove(&first) {
                self.view_bytes -= old.bytes();
            }
            self.shrink_views(view_budget);
            // Outside the view's measure: the section is the batch's, let go
            // at its end, not the view's.
            self.info();
            let (view, heap) = agent_heap_meter::measure(|| self.view(&covering));
            let Some(mut view) = view else {
                return f(None);
            };
            view.heap = heap;
            self.view_bytes += view.bytes();
            self.views.insert(first, view);
        }
        let view = self.views.get_mut(&first).expect("just made");
        view.last_used = self.clock;
        let (out, grew) =
            agent_heap_meter::measure(|| f(view.context.find_frames(probe).skip_all_loads().ok()));
        // What the context parsed (lines, functions) and what `f` kept.
        view.heap += grew;
        self.view_bytes = self.view_bytes.saturating_add_signed(grew as isize);
        out
    }

    /// Drops the least recently used views until those left fit `budget`.
    fn shrink_views(&mut self, budget: usize) {
        while self.view_bytes > budget {
            let Some((&oldest, _)) = self.views.iter().min_by_key(|(_, v)| v.last_used) else {
                break;
            };
            let view = self.views.remove(&oldest).expect("found");
            self.view_bytes -= view.bytes();
        }
    }

    /// Drops every view (the index stays).
    pub(crate) fn drop_views(&mut self) {
        self.views.clear();
        self.view_bytes = 0;
    }

    /// Anonymous pages the views' units were written to.
    pub(crate) fn resident_bytes(&self) -> usize {
        self.views.values().map(|v| v.resident).sum()
    }

    /// A view holding `covering` and the units they reference.
    fn view(&self, covering: &[u32]) -> Option<View> {
        let info = self
            .decompressed_info
            .as_deref()
            .unwrap_or_else(|| self.sections.data(SectionId::DebugInfo));
        let dwarf = self.sections.whole_dwarf(info);
        let mut units: Vec<u32> = covering.to_vec();
        let mut scanned = 0;
        while scanned < units.len() && units.len() < MAX_UNITS_PER_VIEW {
            let unit = units[scanned];
            scanned += 1;
            for referenced in self.references(&dwarf, unit) {
                if !units.contains(&referenced) && units.len() < MAX_UNITS_PER_VIEW {
                    units.push(referenced);
                }
            }
        }
        units.sort_unstable();
        let (info, resident) = self.info_view(info, &units)?;
        let data = ViewData {
            info: Some(info),
            aranges: self.aranges_view(&units),
        };
        let view_dwarf = self.sections.dwarf(&data);
        let context = addr2line::Context::from_dwarf(view_dwarf)
            .map_err(|e| tracing::debug!(error = %e, "DWARF unit unreadable"))
            .ok();
        self.sections.release_pages();
        let context = context?;
        Some(View {
            context,
            units,
            _data: data,
            resident,
            heap: 0,
            last_used: self.clock,
        })
    }

    /// The `.debug_aranges` sets of `units` (ascending), end to end; `None`
    /// when they have none.
    fn aranges_view(&self, units: &[u32]) -> Option<Vec<u8>> {
        let all = self.sections.data(SectionId::DebugAranges);
        let sets = &self.index.aranges_sets;
        let mut out = Vec::new();
        for unit in units {
            let first = sets.partition_point(|s| s.0 < *unit);
            for &(_, start, end) in sets[first..].iter().take_while(|s| s.0 == *unit) {
                out.extend_from_slice(all.get(start..end)?);
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// The units `unit`'s entries reference by section offset.
    fn references(&self, dwarf: &gimli::Dwarf<Slice>, unit: u32) -> Vec<u32> {
        let (start, _) = self.index.units[unit as usize];
        let mut found = Vec::new();
        let mut scan = || -> Result<(), gimli::Error> {
            let header = dwarf.unit_header(gimli::DebugInfoOffset(start))?;
            if !may_reference_other_units(dwarf, header.debug_abbrev_offset()) {
                return Ok(()); // most units: no entry needs reading
            }
            let unit = dwarf.unit(header)?;
            let mut entries = unit.entries_raw(None)?;
            while !entries.is_empty() {
                let Some(abbrev) = entries.read_abbreviation()? else {
                    continue;
                };
                for spec in abbrev.attributes() {
                    let attr = entries.read_attribute(*spec)?;
                    if let gimli::AttributeValue::DebugInfoRef(offset) = attr.value() {
                        if let Some(u) = self.index.unit_at(offset.0) {
                            if !found.contains(&u) {
                                found.push(u);
                            }
                        }
                    }
                }
            }
            Ok(())
        };
        // What was found before an unreadable entry still counts.
        let _ = scan();
        found
    }

    /// A `.debug_info` as long as the real one up to the last of `units`
    /// (ascending), holding them at their offsets and placeholders between.
    fn info_view(&self, info: &[u8], units: &[u32]) -> Option<(Mmap, usize)> {
        let end = self.index.units[*units.last()? as usize].1;
        if info.len() < end {
            return None; // a compressed section that no longer decompresses
        }
        let mut view = MmapMut::map_anon(end.max(1)).ok()?;
        let mut written = 0;
        let mut cursor = 0;
        for &unit in units {
            let (start, stop) = self.index.units[unit as usize];
            let gap = start - cursor;
            if gap >= PLACEHOLDER_LEN {
                written += self.placeholders(&mut view[cursor..start]);
            } else {
                view[cursor..start].copy_from_slice(&info[cursor..start]);
                written += gap;
            }
            view[start..stop].copy_from_slice(info.get(start..stop)?);
            written += stop - start;
            cursor = stop;
        }
        let resident = written.div_ceil(4096) * 4096 + units.len() * 4096;
        Some((view.make_read_only().ok()?, resident))
    }

    /// Fills `gap` with placeholder units; returns the bytes written.
    fn placeholders(&self, gap: &mut [u8]) -> usize {
        // The largest a 32-bit unit length allows, leaving room for a last one.
        const MAX: usize = 0xffff_0000;
        let endian = self.sections.endian;
        let mut at = 0;
        let mut written = 0;
        while at < gap.len() {
            let left = gap.len() - at;
            let len = match left {
                left if left <= MAX => left,
                // What follows must still hold a whole placeholder.
                left if left - MAX >= PLACEHOLDER_LEN => MAX,
                _ => MAX - PLACEHOLDER_LEN,
            };
            let header = &mut gap[at..at + PLACEHOLDER_LEN];
            let put_u32 = |b: &mut [u8], v: u32| {
                b.copy_from_slice(&match endian {
                    RunTimeEndian::Little => v.to_le_bytes(),
                    RunTimeEndian::Big => v.to_be_bytes(),
                })
            };
            put_u32(&mut header[0..4], (len - 4) as u32); // unit_length
            let version = match endian {
                RunTimeEndian::Little => 5u16.to_le_bytes(),
                RunTimeEndian::Big => 5u16.to_be_bytes(),
            };
            header[4..6].copy_from_slice(&version);
            header[6] = gimli::DW_UT_type.0;
            header[7] = self.sections.address_size;
            // abbrev offset, type signature, type offset: zero, never read.
            header[8..24].fill(0);
            written += PLACEHOLDER_LEN;
            at += len;
        }
        written
    }
}
