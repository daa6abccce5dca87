//! Fuzz target: see `shepherd_agent::fuzzing::answer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shepherd_agent::fuzzing::answer(data));
