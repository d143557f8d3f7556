#![no_main]
//! `switchyard::fuzz::v1_predict`: see that function for what the input is.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::v1_predict(data));
