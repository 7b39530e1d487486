//! Replays the committed fuzz corpus (fuzz/corpus/kafka_request: minimised findings and seeds)
//! through the fuzz target's entry point on the stable toolchain.

#[path = "../../../fuzz/replay.rs"]
mod replay;

#[test]
fn kafka_request_corpus_decodes_without_panic() {
    for (_path, input) in replay::corpus("kafka_request") {
        sluice_kafka::fuzzing::request(&input);
    }
}
