#![no_main]
//! `switchyard::fuzz::mlflow_csv`: see that function for what the input is.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::mlflow_csv(data));
