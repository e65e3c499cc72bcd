//! cargo-fuzz target: bytes -> `kubelet_plugin::fuzzing::flags`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kubelet_plugin::fuzzing::flags(data));
