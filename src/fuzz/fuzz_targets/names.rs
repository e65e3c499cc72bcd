//! cargo-fuzz target: bytes -> `kubelet_plugin::fuzzing::names`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kubelet_plugin::fuzzing::names(data));
