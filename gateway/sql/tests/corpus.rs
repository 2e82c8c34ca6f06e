//! Runs the fuzz entry point over the committed seed corpus and over truncations and
//! single-byte corruptions of it, so CI exercises the fuzz target's logic without a fuzzer.
#![allow(clippy::unwrap_used)]

use std::path::Path;

#[test]
fn classify_corpus() {
    // At run time (the build cache is shared between checkouts in different folders).
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
        || env!("CARGO_MANIFEST_DIR").into(),
        std::path::PathBuf::from,
    );
    let root = Path::new(&manifest).join("fuzz/corpus/classify");
    let f = gatehouse_sql::fuzzing::classify;
    let mut n = 0;
    for e in std::fs::read_dir(&root).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        f(&data);
        for cut in 0..data.len() {
            f(&data[..cut]);
        }
        for i in 0..data.len() {
            for b in [0u8, 0xff, b'\\', b'\'', 0x5c, 0x81] {
                let mut d = data.clone();
                d[i] = b;
                f(&d);
            }
        }
        n += 1;
    }
    assert!(n > 0, "empty corpus");
}
