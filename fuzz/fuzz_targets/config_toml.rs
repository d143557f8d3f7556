#![no_main]
//! `switchyard::fuzz::config_toml`: see that function for what the input is.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::config_toml(data));
