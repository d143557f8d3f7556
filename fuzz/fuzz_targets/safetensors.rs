#![no_main]
//! `switchyard::fuzz::safetensors`: see that function for what the input is.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::safetensors(data));
