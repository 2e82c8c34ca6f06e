//! Runs the evasion corpus (`tests/evasion.toml`) under `examples/policy.toml`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Case, Corpus};

#[test]
fn evasion_corpus() {
    let corpus = Corpus::load();
    assert!(
        corpus.cases.len() >= 100,
        "corpus has {} cases",
        corpus.cases.len()
    );
    let mut failures = Vec::new();
    for (i, case) in corpus.cases.iter().enumerate() {
        let decision = corpus.judge(case);
        let rule_ok = case
            .rule
            .as_deref()
            .is_none_or(|r| decision.rule().map(|x| x.as_str()) == Some(r));
        if decision.label() != case.expect || !rule_ok {
            failures.push(format!(
                "#{i} {:?} on {}: expected {} {}, got {decision:?}\n   note: {}",
                case.sql,
                case.connection(),
                case.expect,
                case.rule.clone().unwrap_or_default(),
                case.note
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        corpus.cases.len(),
        failures.join("\n")
    );
}

#[test]
fn every_deny_names_its_rule_in_the_reason() {
    let corpus = Corpus::load();
    for case in corpus.cases.iter().filter(|c: &&Case| c.expect == "deny") {
        if let gatehouse_policy::Decision::Deny { rule, reason } = corpus.judge(case) {
            let name = rule
                .as_str()
                .split_once(':')
                .map(|(_, n)| n)
                .unwrap_or_default();
            let names_rule = reason.contains(name) || rule.as_str().starts_with("policy:");
            assert!(names_rule, "{rule}: {reason}");
            assert!(!reason.is_empty());
        }
    }
}
