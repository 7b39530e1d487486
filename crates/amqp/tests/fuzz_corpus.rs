//! Replays the committed fuzz corpus (fuzz/corpus/amqp_frame: minimised findings and seeds)
//! through the fuzz target's entry point on the stable toolchain.

#[path = "../../../fuzz/replay.rs"]
mod replay;

#[test]
fn amqp_frame_corpus_decodes_without_panic() {
    for (_path, input) in replay::corpus("amqp_frame") {
        sluice_amqp::fuzzing::frames(&input);
    }
}
