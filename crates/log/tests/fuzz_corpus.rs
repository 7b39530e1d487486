//! Replays the committed fuzz corpus (fuzz/corpus/, minimised findings and seeds) through the
//! fuzz targets' entry points on the stable toolchain: every input the fuzzer ever kept, and every
//! crash it found, stays a regression test.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
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

#[test]
fn record_batch_corpus_parses_without_panic() {
    for (_path, input) in corpus("record_batch") {
        sluice_log::fuzzing::record_batches(&input);
    }
}

#[test]
fn segment_recovery_corpus_recovers_without_panic() {
    for (_path, input) in corpus("segment_recovery") {
        sluice_log::fuzzing::recovery(&input);
    }
}
