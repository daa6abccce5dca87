//! Fuzz target: see `shepherd_agent::fuzzing::policy`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shepherd_agent::fuzzing::policy(data));
