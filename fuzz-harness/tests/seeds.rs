//! Every committed seed (`fuzz/seeds/TARGET`) and past crash
//! (`fuzz/regressions/TARGET`) goes through its target once more: what a
//! fuzz run fixed stays fixed, on the stable toolchain, in every CI run.

use std::path::Path;

#[test]
fn every_seed_and_past_crash_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let fuzz_targets: Vec<String> = std::fs::read_dir(root.join("fuzz_targets"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().replace(".rs", ""))
        .collect();
    assert_eq!(
        fuzz_targets.len(),
        agent_fuzz_harness::TARGETS.len(),
        "a target not replayed here"
    );
    for (name, run) in agent_fuzz_harness::TARGETS {
        assert!(fuzz_targets.iter().any(|t| t == name), "{name}");
        let mut inputs = 0;
        for dir in ["seeds", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                run(&std::fs::read(&path).unwrap());
                inputs += 1;
            }
        }
        assert!(inputs > 0, "no seeds for {name}");
    }
}
