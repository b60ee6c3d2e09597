//! What each fuzz target does with its input (`fuzz/`, cargo fuzz on
//! nightly), as plain functions: the targets call them, and the stable
//! test suite replays every committed seed and past crash through them
//! (`tests/seeds.rs`). Each feeds a parser the outside world reaches.

#![allow(missing_docs)]

use agent_core::config::load;
use agent_core::model::LabelSet;
use agent_core::otlp::{from_otlp, to_otlp, ProfilesData};
use agent_core::pprof::{decode_pprof, to_pprof, PprofGrouping, PprofLimits};
use agent_core::Registry;
use agent_gopclntab::GoTable;
use agent_processor_relabel::{RelabelConfig, Relabeler};
use agent_processor_symbolize::native::{Locator, OpenSymbolizer};
use agent_receiver_ebpf_cpu::runtimes::python::{LineFormat, LineTable};
use prost::Message;

// The HTTP view's selector lives in the binary (its only user); the binary
// has no library target, so the harness compiles the same file.
#[path = "../../src/selector.rs"]
mod selector;
use selector::Selector;

/// The unwind-table compiler on any bytes (an ELF file of any process on the node).
pub fn unwind_table(data: &[u8]) {
    if let Ok(table) = agent_unwind_table::compile(data) {
        for pc in [0, 0x1000, 0x40_1000, u64::MAX] {
            let _ = table.row_for(pc);
        }
        let _ = table.size_bytes();
    }
}

/// Go's function table reader on any bytes (a Go binary of any process).
pub fn gopclntab(data: &[u8]) {
    let Ok(table) = GoTable::new(data) else {
        return;
    };
    let _ = (
        table.text_range(),
        table.go_version(),
        table.has_inline_trees(),
    );
    for f in table.functions().take(64).flatten() {
        let _ = (
            table.name(&f),
            table.is_top_frame(&f),
            table.writes_sp(&f),
            table.code(&f),
        );
        for delta in table.sp_deltas(&f).take(256) {
            if delta.is_err() {
                break;
            }
        }
        let _ = table.position(&f, f.entry);
        let _ = table.frames(f.entry);
    }
    let _ = table.find(0x40_1000).map(|f| table.frames(f.entry));
}

/// pprof decoding (the pprof receiver's input), within small limits, and
/// encoding what was decoded.
pub fn pprof(data: &[u8]) {
    let limits = PprofLimits {
        max_bytes: 1 << 20,
        max_samples: 10_000,
    };
    if let Ok(decoded) = decode_pprof(data, limits) {
        for batch in &decoded.batches {
            let _ = to_pprof(batch, PprofGrouping::Batch);
        }
    }
}

/// OTLP profiles decoding: protobuf bytes to batches, and back.
pub fn otlp(data: &[u8]) {
    let Ok(message) = ProfilesData::decode(data) else {
        return;
    };
    if let Ok(batches) = from_otlp(&message) {
        for batch in &batches {
            let _ = to_otlp(batch);
        }
    }
}

/// Config loading: YAML, `${env:…}` expansion, validation.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut registry = Registry::default();
    registry.register(agent_processor_relabel::RelabelFactory);
    let lookup = |name: &str| (name == "HOME").then(|| "/root".to_owned());
    let _ = load(text, &[], &registry, &lookup);
}

/// Relabel rules (YAML, as in a Parca Agent config file) applied to a label set.
pub fn relabel(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rules) = serde_yaml::from_str::<Vec<RelabelConfig>>(text) else {
        return;
    };
    let Ok(relabeler) = Relabeler::new(rules) else {
        return;
    };
    let labels = LabelSet::new([
        ("comm", "nginx"),
        ("pid", "1234"),
        ("__meta_process_cmdline", "nginx -g daemon off;"),
        ("__meta_go_label_handler", "checkout"),
    ]);
    let _ = relabeler.relabel(&labels);
    let _ = relabeler.process_labels(&labels);
}

/// `/query` selectors (from anyone who can reach the HTTP view).
pub fn selector(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(selector) = Selector::parse(text) {
        let _ = selector.matches(&LabelSet::new([("comm", "nginx"), ("pid", "1")]));
    }
}

/// CPython line tables (read from any Python process's memory), every format.
pub fn python_lines(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Some((offsets, table)) = rest.split_at_checked(8) else {
        return;
    };
    let format = match selector % 3 {
        0 => LineFormat::Lnotab,
        1 => LineFormat::Linetable310,
        _ => LineFormat::Locations,
    };
    let first_line = u32::from_le_bytes(offsets[..4].try_into().unwrap());
    let offset = u32::from_le_bytes(offsets[4..].try_into().unwrap());
    let lines = LineTable::new(format, first_line, table.to_vec());
    let _ = (
        lines.line(offset),
        lines.line(0),
        lines.line(u32::MAX),
        lines.len(),
    );
}

/// The symbolizer opening an object file (any process's, or a debug file)
/// and naming addresses in it: ELF, symbol tables, DWARF, Go tables.
pub fn symbolize_elf(data: &[u8]) {
    // A file per run: the symbolizer opens files, as it does on a node.
    let path = std::env::temp_dir().join(format!("agent-fuzz-elf-{}", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let locator = Locator {
        proc_root: "/nonexistent".into(),
        debug_dirs: Vec::new(),
    };
    if let Ok(mut object) = locator.open_file(&path) {
        for offset in [0, 0x40, 0x1000, 0x1_0000] {
            if let Some(vaddr) = object.virtual_address(offset) {
                let _ = object.symbolize(vaddr);
            }
        }
        let _ = object.symbolize(0x40_1000);
    }
    let _ = std::fs::remove_file(&path);
}

/// What a target does with one input.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets` file.
pub const TARGETS: [(&str, Target); 9] = [
    ("unwind_table", unwind_table),
    ("gopclntab", gopclntab),
    ("pprof", pprof),
    ("otlp", otlp),
    ("config", config),
    ("relabel", relabel),
    ("selector", selector),
    ("python_lines", python_lines),
    ("symbolize_elf", symbolize_elf),
];
