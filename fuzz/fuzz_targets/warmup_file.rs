#![no_main]
//! `switchyard::fuzz::warmup_file`: see that function for what the input is.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::warmup_file(data));
