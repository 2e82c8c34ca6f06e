//! Runs every fuzz entry point over the committed seed corpus and over truncations and
//! single-byte corruptions of it, so CI exercises the fuzz targets' logic without a fuzzer.
#![allow(clippy::unwrap_used)]

use std::path::Path;

fn each_input(dir: &str, f: fn(&[u8])) {
    // At run time (the build cache is shared between checkouts in different folders).
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
        || env!("CARGO_MANIFEST_DIR").into(),
        std::path::PathBuf::from,
    );
    let root = Path::new(&manifest).join("fuzz/corpus").join(dir);
    let mut n = 0;
    for e in std::fs::read_dir(&root).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        f(&data);
        for cut in 0..data.len() {
            f(&data[..cut]);
        }
        for i in 0..data.len() {
            for b in [0u8, 0xff, 0x7f, b'\0'.wrapping_add(1)] {
                let mut d = data.clone();
                d[i] = b;
                f(&d);
            }
        }
        n += 1;
    }
    assert!(n > 0, "empty corpus {dir}");
}

#[test]
fn startup_corpus() {
    each_input("startup", gatehouse_pgwire::fuzzing::startup);
}

#[test]
fn frontend_corpus() {
    each_input("frontend", gatehouse_pgwire::fuzzing::frontend);
}

#[test]
fn backend_corpus() {
    each_input("backend", gatehouse_pgwire::fuzzing::backend);
}
