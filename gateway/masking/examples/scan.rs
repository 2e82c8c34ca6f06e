//! Print what the default engine finds in each argument: `cargo run -p gatehouse-masking --example scan -- "text" …`.
use gatehouse_masking::{ColumnPlan, Engine, MaskingConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::new(&MaskingConfig::default(), &[], [0; 32])?;
    for arg in std::env::args().skip(1) {
        let found = engine.find(ColumnPlan::default(), arg.as_bytes());
        println!("{arg:?}");
        for f in found {
            println!("  {:<16} {:?}", f.entity.name(), &arg[f.range]);
        }
    }
    Ok(())
}
