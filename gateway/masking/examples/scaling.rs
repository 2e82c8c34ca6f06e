//! Time `Engine::find` on repeated units at growing sizes (linear-time check by eye):
//! `cargo run --release -p gatehouse-masking --example scaling -- "1-" "a:"`.
use std::time::Instant;

use gatehouse_masking::{ColumnPlan, Engine, MaskingConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::new(&MaskingConfig::default(), &[b"Vault-S3cret!"], [0; 32])?;
    for unit in std::env::args().skip(1) {
        for kib in [16usize, 64, 256, 1024] {
            let v = unit.repeat(kib * 1024 / unit.len().max(1));
            let t = Instant::now();
            let n = engine.find(ColumnPlan::default(), v.as_bytes()).len();
            println!(
                "{unit:?} {kib:>5} KiB: {:>10.3?} ({n} findings)",
                t.elapsed()
            );
        }
    }
    Ok(())
}
