#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sluice_log::fuzzing::recovery(data, &std::env::temp_dir().join("sluice-fuzz"))
});
