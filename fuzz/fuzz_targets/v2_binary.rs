#![no_main]
//! `switchyard::fuzz::v2_binary`: see that function for what the input is.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::v2_binary(data));
