//! The committed corpus of one fuzz target, for the crates' replay tests (each includes this
//! file with `#[path]`): every input the fuzzer kept, and every crash it found, stays a test.

use std::path::PathBuf;

/// Every file of `fuzz/corpus/<target>/`, sorted by name; fails when there is none, so a
/// replay test cannot pass on an empty corpus.
pub fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let bytes = std::fs::read(&path).expect("corpus file");
            (path, bytes)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no corpus in {}", dir.display());
    inputs
}
