//! Throughput of `Engine::mask` on one core: `cargo bench -p gatehouse-masking --bench detect`.
//!
//! Workloads (deterministic, from the accuracy generator):
//! - `mix`: 90% non-sensitive (clean values and near-misses), 10% sensitive cells of all kinds;
//! - `short-clean`: short clean column values (names, statuses, small numbers, cities);
//! - `sensitive`: only sensitive cells (every value is rewritten);
//! - `json`: small JSON documents through `mask_json`.
//!   Each with 100 vaulted secrets in the automaton.

#[path = "../tests/common/gen.rs"]
#[allow(clippy::all)]
mod gen;

use std::hint::black_box;
use std::time::{Duration, Instant};

use gatehouse_masking::{Counts, Engine, MaskingConfig};

fn run(name: &str, values: &[Vec<u8>], f: &dyn Fn(&[u8], &mut Counts) -> usize) {
    let bytes: usize = values.iter().map(Vec::len).sum();
    let mut best = Duration::MAX;
    let mut out = 0usize;
    for _ in 0..5 {
        let mut counts = Counts::new();
        let t = Instant::now();
        for v in values {
            out = out.wrapping_add(f(black_box(v), &mut counts));
        }
        best = best.min(t.elapsed());
        black_box(&counts);
    }
    let secs = best.as_secs_f64();
    println!(
        "| {name:<12} | {:>8} | {:>6.1} | {:>10.2} M/s | {:>8.1} MB/s | {:>7.0} ns |",
        values.len(),
        bytes as f64 / values.len() as f64,
        values.len() as f64 / secs / 1e6,
        bytes as f64 / secs / 1e6,
        secs * 1e9 / values.len() as f64,
    );
    black_box(out);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut r = gen::Rng::new(99);
    let vault = gen::vault_secrets(&mut r, 100);
    let vault_bytes: Vec<&[u8]> = vault.iter().map(|s| s.as_bytes()).collect();
    let engine = Engine::new(&MaskingConfig::default(), &vault_bytes, [1; 32])?;

    let sensitive: Vec<Vec<u8>> = gen::dataset(1, 1_200, 0, 0, &vault)
        .into_iter()
        .map(|c| c.text.into_bytes())
        .collect();
    let non_sensitive: Vec<Vec<u8>> = gen::dataset(2, 0, 60_000, 120_000, &vault)
        .into_iter()
        .map(|c| c.text.into_bytes())
        .collect();
    let mut mix: Vec<Vec<u8>> = non_sensitive.clone();
    mix.extend(sensitive.iter().take(non_sensitive.len() / 9).cloned());
    for i in (1..mix.len()).rev() {
        mix.swap(i, r.below(i as u64 + 1) as usize);
    }
    let short_clean: Vec<Vec<u8>> = (0..200_000)
        .map(|_| {
            gen::dataset(r.next_u64(), 0, 0, 1, &vault)
                .remove(0)
                .text
                .into_bytes()
        })
        .collect();
    let json: Vec<Vec<u8>> = mix
        .chunks(4)
        .take(20_000)
        .map(|c| {
            let s = |k: usize| String::from_utf8_lossy(&c[k % c.len()]).into_owned();
            serde_json::to_vec(&serde_json::json!({"id": r.below(1_000_000), "name": s(0), "note": s(1), "tags": [s(2), s(3)], "active": true})).unwrap_or_default()
        })
        .collect();

    println!("| workload     |   values | avg B  |   values/s     |   throughput  | per value |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mask = |v: &[u8], c: &mut Counts| {
        engine
            .mask(Some("note"), v, c)
            .map(|o| o.len())
            .unwrap_or(0)
    };
    run("mix", &mix, &mask);
    run("short-clean", &short_clean, &mask);
    run("sensitive", &sensitive, &mask);
    run("json", &json, &|v, c| {
        engine.mask_json(v, c).map(|o| o.len()).unwrap_or(0)
    });
    let plain = Engine::new(&MaskingConfig::default(), &[], [1; 32])?;
    run("mix-novault", &mix, &|v, c| {
        plain.mask(Some("note"), v, c).map(|o| o.len()).unwrap_or(0)
    });
    Ok(())
}
