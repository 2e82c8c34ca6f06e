#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gatehouse_sftp_codec::fuzzing::requests(data));
