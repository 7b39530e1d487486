//! Replays the committed fuzz corpus (fuzz/corpus/: minimised findings and seeds) through the
//! fuzz targets' entry points on the stable toolchain.

#[path = "../../../fuzz/replay.rs"]
mod replay;

#[test]
fn record_batch_corpus_parses_without_panic() {
    for (_path, input) in replay::corpus("record_batch") {
        sluice_log::fuzzing::record_batches(&input);
    }
}

#[test]
fn segment_recovery_corpus_recovers_without_panic() {
    for (_path, input) in replay::corpus("segment_recovery") {
        sluice_log::fuzzing::recovery(&input);
    }
}
