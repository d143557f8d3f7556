#![no_main]
//! `switchyard::fuzz::compressed_body`: see that function for what the input is.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::compressed_body(data));
