//! Classification + evaluation time per request over the evasion corpus.
//!
//! `cargo bench -p gatehouse-policy --bench classify` prints p50/p99/max in microseconds for
//! `classify` alone and for `classify` + `Policy::evaluate`, each request measured separately.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use gatehouse_sql::{classify_with, ParseOptions, PreparedStatements};

const ROUNDS: usize = 200;

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let corpus = common::Corpus::load();
    let prepared = PreparedStatements::new();
    let groups = vec!["agents".to_owned()];
    let mut parse_us = Vec::new();
    let mut total_us = Vec::new();
    for _ in 0..ROUNDS {
        for case in &corpus.cases {
            let tags = &corpus.connections[case.connection()].tags;
            let opts = ParseOptions {
                standard_conforming_strings: case.scs.unwrap_or(true),
            };
            let start = Instant::now();
            let stmts = classify_with(&case.sql, opts);
            let parsed = start.elapsed();
            let d = corpus.decide(
                "alice",
                &groups,
                case.connection(),
                tags,
                &case.sql,
                &stmts,
                &prepared,
            );
            let total = start.elapsed();
            std::hint::black_box(d);
            parse_us.push(parsed.as_secs_f64() * 1e6);
            total_us.push(total.as_secs_f64() * 1e6);
        }
    }
    for (name, v) in [
        ("classify", &mut parse_us),
        ("classify+evaluate", &mut total_us),
    ] {
        v.sort_by(f64::total_cmp);
        println!(
            "{name:>18}: {} requests ({} cases x {ROUNDS}): p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
            v.len(),
            corpus.cases.len(),
            pct(v, 0.50),
            pct(v, 0.99),
            v.last().copied().unwrap_or(0.0)
        );
    }
}
