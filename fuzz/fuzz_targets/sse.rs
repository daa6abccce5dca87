//! Fuzz target: see `shepherd_agent::fuzzing::sse`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shepherd_agent::fuzzing::sse(data));
