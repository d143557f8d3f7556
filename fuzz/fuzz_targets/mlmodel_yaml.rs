#![no_main]
//! `switchyard::fuzz::mlmodel_yaml`: see that function for what the input is.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::mlmodel_yaml(data));
