#![no_main]
//! `switchyard::fuzz::grpc_infer`: see that function for what the input is.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::grpc_infer(data));
