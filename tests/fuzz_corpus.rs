//! Replays every fuzz target's committed corpus (`fuzz/corpus/<target>/`) through
//! the same entry points `cargo fuzz` runs (`switchyard::fuzz`), with no new
//! inputs: an input that once crashed a decoder is kept there and fails CI if
//! the crash comes back. `make fuzz` grows the corpora.

use std::path::Path;

#[test]
fn every_target_survives_its_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut replayed = Vec::new();
    for (name, target) in switchyard::fuzz::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (every target keeps a seed corpus)", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no seeds", dir.display());
        for f in &files {
            let data = std::fs::read(f).unwrap();
            let r = std::panic::catch_unwind(|| target(&data));
            assert!(r.is_ok(), "{name} failed on {}", f.display());
        }
        replayed.push(format!("{name}: {}", files.len()));
    }
    // A target without a folder, or a folder without a target, is a mistake.
    for e in std::fs::read_dir(&root).unwrap() {
        let n = e.unwrap().file_name().into_string().unwrap();
        assert!(
            switchyard::fuzz::TARGETS.iter().any(|(t, _)| *t == n),
            "fuzz/corpus/{n} has no target"
        );
    }
    eprintln!("replayed {}", replayed.join(", "));
}
