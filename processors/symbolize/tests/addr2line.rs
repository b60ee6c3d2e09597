//! The symbolize processor against binutils `addr2line -f -i -C` on fixtures
//! built here: names, files, lines and inline chains must be identical.

use std::path::{Path, PathBuf};
use std::process::Command;

use agent_core::{BuildContext, BuildIdKind, LabelSet, Mapping, ProfileBatch, ProfileType};
use agent_processor_symbolize::demangle::demangle;
use agent_processor_symbolize::{
    DebugSource, Locator, OpenSymbolizer, Shed, SymbolizeConfig, Symbolizer,
};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

mod common;
use common::{batch_for, chains_of, push_sample, Chain};

/// What the agent installs: the symbolizer then measures what it keeps.
#[global_allocator]
static ALLOCATOR: agent_heap_meter::CountingAllocator = agent_heap_meter::CountingAllocator;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn sh(dir: &Path, script: &str) {
    run(Command::new("sh").arg("-ec").arg(script).current_dir(dir));
}

/// Every other byte of every function whose demangled name `wanted` accepts.
fn addresses_of(binary: &Path, wanted: impl Fn(&str) -> bool) -> Vec<u64> {
    let data = std::fs::read(binary).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    let mut addresses: Vec<u64> = obj
        .symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
        .filter(|s| {
            let name = s.name().unwrap_or("");
            wanted(&demangle(name))
        })
        .flat_map(|s| (s.address()..s.address() + s.size()).step_by(2))
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    assert!(
        addresses.len() > 50,
        "{}: too few addresses",
        binary.display()
    );
    addresses
}

/// binutils' answer for each address.
fn binutils(binary: &Path, addresses: &[u64]) -> Vec<Chain> {
    let mut cmd = Command::new("addr2line");
    cmd.args(["-a", "-f", "-i", "-C", "-e"]).arg(binary);
    cmd.args(addresses.iter().map(|a| format!("{a:#x}")));
    let out = run(&mut cmd);
    let mut chains: Vec<Chain> = Vec::new();
    let mut lines = out.lines().peekable();
    while let Some(address) = lines.next() {
        assert!(address.starts_with("0x"), "unexpected {address}");
        let mut chain = Chain::new();
        while lines.peek().is_some_and(|l| !l.starts_with("0x")) {
            let name = lines.next().unwrap();
            let position = lines.next().unwrap();
            let position = position.split(" (discriminator").next().unwrap();
            let (file, line) = position.rsplit_once(':').unwrap();
            chain.push((
                if name == "??" { "" } else { name }.to_owned(),
                if file == "??" { "" } else { file }.to_owned(),
                line.parse().unwrap_or(0),
            ));
        }
        chains.push(chain);
    }
    assert_eq!(chains.len(), addresses.len());
    chains
}

/// Where the symbolizer found `binary`'s debug information.
fn debug_source(binary: &Path, debug_dirs: Vec<PathBuf>) -> DebugSource {
    let locator = Locator {
        proc_root: PathBuf::from("/proc"),
        debug_dirs,
    };
    locator.open_file(binary).unwrap().debug_source()
}

fn symbolizer(debug_dirs: Vec<PathBuf>) -> Symbolizer {
    let config = SymbolizeConfig {
        debuginfo_directories: debug_dirs,
        ..SymbolizeConfig::default()
    };
    Symbolizer::new(config, &BuildContext::for_test("symbolize"))
}

/// Symbolizes `target` (perhaps stripped) and compares with binutils on `reference`.
fn assert_same_as_binutils(
    target: &Path,
    reference: &Path,
    addresses: &[u64],
    debug_dirs: Vec<PathBuf>,
) {
    let mut batch = batch_for(target, addresses);
    symbolizer(debug_dirs).symbolize(&mut batch);
    assert_chains_match(
        target,
        addresses,
        &chains_of(&batch),
        &binutils(reference, addresses),
    );
}

fn assert_chains_match(target: &Path, addresses: &[u64], got: &[Chain], expected: &[Chain]) {
    let differing: Vec<String> = addresses
        .iter()
        .zip(got.iter().zip(expected))
        .filter(|(_, (g, e))| g != e)
        .map(|(a, (g, e))| format!("{a:#x}:\n  ours     {g:?}\n  binutils {e:?}"))
        .collect();
    let inlined = expected.iter().filter(|c| c.len() > 1).count();
    eprintln!(
        "{}: {} addresses, {} with inlined frames, {} differ",
        target.display(),
        addresses.len(),
        inlined,
        differing.len()
    );
    assert!(
        differing.is_empty(),
        "{} of {} addresses differ from binutils, first ones:\n{}",
        differing.len(),
        addresses.len(),
        differing[..differing.len().min(8)].join("\n")
    );
    assert!(inlined > 10, "the fixture should exercise inlining");
}

const C_SOURCE: &str = r#"
#include <stdio.h>
#include <stdlib.h>
static inline __attribute__((always_inline)) int leaf(int x) { return x * 3 + (x >> 2); }
static inline __attribute__((always_inline)) int middle(int x) {
    int s = 0;
    for (int i = 0; i < x; i++) s += leaf(i ^ x);
    return s;
}
__attribute__((noinline)) int outer(int x) { return middle(x) + middle(x + 1); }
__attribute__((noinline)) long spin(long n) {
    long t = 0;
    for (long r = 0; r < n; r++) for (int i = 0; i < 100; i++) t += outer(i);
    return t;
}
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 10;
    printf("%ld\n", spin(n));
    return 0;
}
"#;

fn c_fixture(dir: &Path, extra_flags: &str) -> PathBuf {
    std::fs::write(dir.join("inline.c"), C_SOURCE).unwrap();
    sh(dir, &format!("gcc -g -O2 {extra_flags} -o inline inline.c"));
    dir.join("inline")
}

fn ours_in_c(name: &str) -> bool {
    ["leaf", "middle", "outer", "spin", "main"].contains(&name)
}

#[test]
fn c_with_inlined_functions() {
    let dir = tempfile::tempdir().unwrap();
    let binary = c_fixture(dir.path(), "");
    let addresses = addresses_of(&binary, ours_in_c);
    assert_same_as_binutils(&binary, &binary, &addresses, vec![]);
}

/// A compressed `.debug_info` (`gcc -gz`) is decompressed for a batch and
/// let go at its end: a later batch decompresses it again to read units,
/// and the names stay binutils'.
#[test]
fn compressed_debug_info_is_decompressed_again_for_a_later_batch() {
    let dir = tempfile::tempdir().unwrap();
    let binary = c_fixture(dir.path(), "-gz=zlib");
    let data = std::fs::read(&binary).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    let info = obj.section_by_name(".debug_info").unwrap();
    assert_ne!(
        info.compressed_file_range().unwrap().format,
        object::CompressionFormat::None,
        "the fixture's .debug_info should be compressed"
    );
    let addresses = addresses_of(&binary, ours_in_c);
    let locator = Locator {
        proc_root: PathBuf::from("/proc"),
        debug_dirs: vec![],
    };
    let mut symbolizer = locator.open_file(&binary).unwrap();
    let mut got = Vec::new();
    for batch in addresses.chunks(addresses.len() / 3 + 1) {
        got.extend(batch.iter().map(|&address| {
            symbolizer
                .symbolize(address)
                .iter()
                .map(|f| (f.name.to_string(), f.file.to_string(), i64::from(f.line)))
                .collect::<Chain>()
        }));
        // A batch's end gives the decompressed section back; then no unit
        // is kept, so the next batch reads them again.
        let during = symbolizer.footprint().heap;
        symbolizer.release_pages();
        let decompressed = info.compressed_file_range().unwrap().uncompressed_size as usize;
        let after = symbolizer.footprint().heap;
        assert!(
            after + decompressed <= during,
            "kept {during} bytes, then {after}"
        );
        symbolizer.shed(Shed::Units);
    }
    assert_chains_match(&binary, &addresses, &got, &binutils(&binary, &addresses));
}

/// addr2line's answer for each address over the whole file at once (what
/// the symbolizer reads a unit at a time).
fn whole_file(binary: &Path, addresses: &[u64]) -> Vec<Chain> {
    let data = std::fs::read(binary).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    let dwarf = gimli::Dwarf::load(|id| {
        let section = obj.section_by_name(id.name());
        let bytes = section.map_or(&[][..], |s| s.data().unwrap());
        Ok::<_, gimli::Error>(gimli::EndianSlice::new(bytes, gimli::RunTimeEndian::Little))
    })
    .unwrap();
    let context = addr2line::Context::from_dwarf(dwarf).unwrap();
    addresses
        .iter()
        .map(|&address| {
            let mut chain = Chain::new();
            let mut frames = context.find_frames(address).skip_all_loads().unwrap();
            while let Some(frame) = frames.next().unwrap() {
                let name = frame.function.as_ref().map(|f| f.raw_name().unwrap());
                let location = frame.location.as_ref();
                chain.push((
                    name.map(|n| demangle(&n).into_owned()).unwrap_or_default(),
                    location.and_then(|l| l.file).unwrap_or("").to_owned(),
                    location.and_then(|l| l.line).map_or(0, i64::from),
                ));
            }
            chain
        })
        .collect()
}

/// GCC's link-time optimization puts functions in one unit and their
/// abstract instances in another (`DW_FORM_ref_addr`): a lookup must read
/// both units. (Compared with addr2line over the whole file: binutils names
/// the file of these units' lines `<artificial>`.)
#[test]
fn c_with_link_time_optimization_references_across_units() {
    let dir = tempfile::tempdir().unwrap();
    let binary = c_fixture(dir.path(), "-flto");
    let addresses = addresses_of(&binary, ours_in_c);
    let mut batch = batch_for(&binary, &addresses);
    symbolizer(vec![]).symbolize(&mut batch);
    let got = chains_of(&batch);
    let expected = whole_file(&binary, &addresses);
    let differing: Vec<String> = addresses
        .iter()
        .zip(got.iter().zip(&expected))
        .filter(|(_, (g, e))| g != e)
        .map(|(a, (g, e))| format!("{a:#x}: ours {g:?}, whole file {e:?}"))
        .take(8)
        .collect();
    assert!(differing.is_empty(), "{differing:#?}");
    let inlined = expected.iter().filter(|c| c.len() > 1).count();
    assert!(inlined > 10, "the fixture should exercise inlining");
}

#[test]
fn stripped_binary_finds_its_debug_file_by_build_id() {
    let dir = tempfile::tempdir().unwrap();
    let binary = c_fixture(dir.path(), "");
    let addresses = addresses_of(&binary, ours_in_c);
    let data = std::fs::read(&binary).unwrap();
    let id: String = object::File::parse(&*data)
        .unwrap()
        .build_id()
        .unwrap()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::create_dir_all(dir.path().join(format!("debug/.build-id/{}", &id[..2]))).unwrap();
    sh(
        dir.path(),
        &format!(
            "objcopy --only-keep-debug inline debug/.build-id/{}/{}.debug\n\
             cp inline stripped && strip --strip-all stripped",
            &id[..2],
            &id[2..]
        ),
    );
    let stripped = dir.path().join("stripped");
    assert_same_as_binutils(
        &stripped,
        &binary,
        &addresses,
        vec![dir.path().join("debug")],
    );
    let debug_dirs = vec![dir.path().join("debug")];
    assert_eq!(debug_source(&stripped, debug_dirs), DebugSource::BuildId);
    assert_eq!(debug_source(&binary, vec![]), DebugSource::Itself);
}

#[test]
fn cpp_with_templates_and_exceptions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.cpp"),
        r#"
#include <cstdio>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>
namespace fx {
template <typename T> struct Acc {
    std::vector<T> items;
    void add(T v) { if (v < 0) throw std::invalid_argument("negative"); items.push_back(v * 2); }
    T total() const { T t{}; for (auto &i : items) t += i; return t; }
};
template <typename K, typename V> __attribute__((noinline)) V sum(const std::map<K, V> &m) {
    V t{}; for (auto &kv : m) t += kv.second; return t;
}
__attribute__((noinline)) double run(int n) {
    Acc<double> a; Acc<long> b; std::map<std::string, int> m;
    for (int i = -1; i < n; i++) {
        try { a.add(i * 0.5); b.add(i); } catch (const std::exception &e) { m[e.what()] += 1; }
        m[std::to_string(i % 7)] += i;
    }
    return a.total() + double(b.total()) + sum(m);
}
}
int main(int argc, char **) { std::printf("%f\n", fx::run(argc * 1000)); }
"#,
    )
    .unwrap();
    sh(dir.path(), "g++ -g -O2 -o templates t.cpp");
    let binary = dir.path().join("templates");
    let addresses = addresses_of(&binary, |n| n.starts_with("fx::") || n == "main");
    assert_same_as_binutils(&binary, &binary, &addresses, vec![]);
}

#[test]
fn rust_release_binary() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("main.rs"),
        r#"
use std::collections::HashMap;
#[inline(always)]
fn mix(x: u64) -> u64 { x.wrapping_mul(0x9e3779b97f4a7c15).rotate_left(17) }
#[inline(never)]
fn tally(n: u64) -> HashMap<u64, u64> {
    let mut m = HashMap::new();
    for i in 0..n { *m.entry(mix(i) % 97).or_insert(0) += mix(i ^ n); }
    m
}
struct Walker<T> { items: Vec<T> }
impl<T: Copy + Into<u64>> Walker<T> {
    #[inline(never)]
    fn walk(&self) -> u64 { self.items.iter().map(|&i| mix(i.into())).sum() }
}
fn main() {
    let n = std::env::args().count() as u64 * 1000;
    let w = Walker { items: vec![1u32, 2, 3] };
    println!("{} {}", tally(n).len(), w.walk());
}
"#,
    )
    .unwrap();
    sh(
        dir.path(),
        "rustc -C opt-level=2 -g --crate-name fixture -o fixture main.rs",
    );
    let binary = dir.path().join("fixture");
    let addresses = addresses_of(&binary, |n| n.starts_with("fixture::"));
    assert_same_as_binutils(&binary, &binary, &addresses, vec![]);
}

/// A running process whose stripped binary names its debug file only by
/// `.gnu_debuglink` (no build id): read through /proc/PID/map_files, the
/// debug file found next to the binary and CRC-checked.
#[test]
fn running_stripped_binary_finds_its_debug_file_by_debuglink() {
    let dir = tempfile::tempdir().unwrap();
    let reference = c_fixture(dir.path(), "-Wl,--build-id=none");
    sh(
        dir.path(),
        "objcopy --only-keep-debug inline inline.debug\n\
         cp inline stripped && strip --strip-all stripped\n\
         objcopy --add-gnu-debuglink=inline.debug stripped",
    );
    let stripped = dir.path().join("stripped");
    let addresses = addresses_of(&reference, ours_in_c);
    let mut child = Command::new(&stripped).arg("100000000000").spawn().unwrap();
    let pid = child.id();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let data = std::fs::read(&reference).unwrap();
    let obj = object::File::parse(&*data).unwrap();

    let mut batch = ProfileBatch::new(ProfileType::cpu_samples(19), 0, 1);
    let series = batch
        .label_sets
        .intern(LabelSet::new([("pid", pid.to_string())]));
    for &vaddr in &addresses {
        let segment = obj
            .segments()
            .find(|s| (s.address()..s.address() + s.size()).contains(&vaddr))
            .unwrap();
        let file_offset = vaddr - segment.address() + segment.file_range().0;
        let (range, offset, path) = maps
            .lines()
            .filter(|l| l.ends_with("/stripped"))
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let (start, end) = f[0].split_once('-')?;
                let start = u64::from_str_radix(start, 16).ok()?;
                let end = u64::from_str_radix(end, 16).ok()?;
                let offset = u64::from_str_radix(f[2], 16).ok()?;
                (file_offset >= offset && file_offset - offset < end - start)
                    .then(|| ((start, end), offset, f[5].to_owned()))
            })
            .expect("the address is mapped");
        let filename = batch.strings.intern_str(&path);
        let mapping = batch.mappings.intern(Mapping {
            memory_start: range.0,
            memory_limit: range.1,
            file_offset: offset,
            filename,
            build_id: 0,
            build_id_kind: BuildIdKind::None,
        });
        push_sample(&mut batch, series, mapping, range.0 + file_offset - offset);
    }
    let mut wrong_crc = batch.clone();
    symbolizer(vec![]).symbolize(&mut batch);
    let got = chains_of(&batch);
    assert_eq!(debug_source(&stripped, vec![]), DebugSource::Debuglink);

    // The same process with a debug file that does not match the CRC: not used.
    std::fs::write(dir.path().join("inline.debug"), b"not the debug file").unwrap();
    symbolizer(vec![]).symbolize(&mut wrong_crc);
    let unnamed = chains_of(&wrong_crc);
    child.kill().unwrap();
    child.wait().unwrap();

    assert_chains_match(
        &stripped,
        &addresses,
        &got,
        &binutils(&reference, &addresses),
    );
    assert!(
        unnamed.iter().all(Vec::is_empty),
        "a debug file with the wrong CRC was used"
    );
}

#[path = "../../../tests/support/go_workload.rs"]
mod go_workload;

/// A stripped Go binary is named from its function table exactly as DWARF
/// names the unstripped one: functions, files, lines and inlined calls.
#[test]
fn stripped_go_binaries_are_named_like_their_dwarf() {
    let dir = tempfile::tempdir().unwrap();
    for (i, go) in go_workload::go_toolchains().iter().enumerate() {
        let unstripped = go_workload::build_go_chain(go, dir.path(), &format!("go_chain{i}"), "");
        let stripped =
            go_workload::build_go_chain(go, dir.path(), &format!("go_chain_stripped{i}"), "-s -w");
        // Every byte: the workload's inlined code is a few instructions.
        let addresses: Vec<u64> = addresses_of(&unstripped, |name| name.starts_with("main."))
            .into_iter()
            .flat_map(|a| [a, a + 1])
            .collect();
        let named = |binary: &Path| {
            let mut batch = batch_for(binary, &addresses);
            symbolizer(vec![]).symbolize(&mut batch);
            chains_of(&batch)
        };
        let (dwarf, table) = (named(&unstripped), named(&stripped));
        assert_chains_match(&stripped, &addresses, &table, &dwarf);
        let inlined = table.iter().filter(|chain| {
            chain.len() == 2 && chain[0].0 == "main.inlinedHelper" && chain[1].0 == "main.goMid"
        });
        assert!(
            inlined.count() > 0,
            "{}: no inlined helper frame",
            stripped.display()
        );
        assert!(table
            .iter()
            .all(|chain| chain.last().is_some_and(|f| f.0.starts_with("main."))));
    }
}
