#![no_main]
//! `switchyard::fuzz::v2_structured`: see that function for what the input is.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::v2_structured(data));
