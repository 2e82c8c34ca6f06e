//! Loads the example policy and the evasion corpus; shared by tests and the benchmark.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use gatehouse_policy::{Decision, Facts, Group, IssuerId, Issuers, Policy, Principal};
use gatehouse_sql::{classify_with, ParseOptions, PreparedStatements};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Corpus {
    pub connections: BTreeMap<String, Connection>,
    #[serde(rename = "case")]
    pub cases: Vec<Case>,
    #[serde(skip)]
    pub policy: Option<Policy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub sql: String,
    pub expect: String,
    pub rule: Option<String>,
    pub connection: Option<String>,
    pub user: Option<String>,
    pub groups: Option<Vec<String>>,
    #[serde(default)]
    pub setup: Vec<String>,
    pub scs: Option<bool>,
    pub note: String,
}

impl Case {
    pub fn connection(&self) -> &str {
        self.connection.as_deref().unwrap_or("orders-prod")
    }
}

pub const POLICY: &str = include_str!("../../examples/policy.toml");
pub const CORPUS: &str = include_str!("../evasion.toml");

/// The one issuer of the corpus: its plain names resolve to it.
pub const ISSUER: &str = "https://idp.test";

/// A fixed instant, so runs are reproducible.
pub fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

impl Corpus {
    pub fn load() -> Corpus {
        let mut c: Corpus = toml::from_str(CORPUS).expect("corpus parses");
        c.policy = Some(
            Policy::from_toml(POLICY, &Issuers::single(IssuerId::new(ISSUER)))
                .expect("example policy loads"),
        );
        c
    }

    pub fn policy(&self) -> &Policy {
        self.policy.as_ref().expect("loaded")
    }

    /// Judge one case as the gateway would on a fresh session: setup requests first (only the
    /// allowed ones are remembered), then the case.
    pub fn judge(&self, case: &Case) -> Decision {
        let conn = self
            .connections
            .get(case.connection())
            .expect("known connection");
        let groups = case
            .groups
            .clone()
            .unwrap_or_else(|| vec!["agents".to_owned()]);
        let user = case.user.clone().unwrap_or_else(|| "alice".to_owned());
        let opts = ParseOptions {
            standard_conforming_strings: case.scs.unwrap_or(true),
        };
        let mut prepared = PreparedStatements::new();
        for s in &case.setup {
            let stmts = classify_with(s, opts);
            let d = self.decide(
                &user,
                &groups,
                case.connection(),
                &conn.tags,
                s,
                &stmts,
                &prepared,
            );
            if let (Decision::Allow { .. }, Ok(st)) = (d, &stmts) {
                prepared.observe(st);
            }
        }
        let stmts = classify_with(&case.sql, opts);
        self.decide(
            &user,
            &groups,
            case.connection(),
            &conn.tags,
            &case.sql,
            &stmts,
            &prepared,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &self,
        user: &str,
        groups: &[String],
        connection: &str,
        tags: &BTreeMap<String, String>,
        sql: &str,
        statements: &Result<Vec<gatehouse_sql::Statement>, gatehouse_sql::ParseError>,
        prepared: &PreparedStatements,
    ) -> Decision {
        let user = Principal::new(IssuerId::new(ISSUER), user);
        let groups: Vec<Group> = Group::all_of(&IssuerId::new(ISSUER), groups);
        let facts = Facts {
            user: &user,
            groups: &groups,
            connection,
            tags,
            protocol: "postgres",
            sql,
            statements,
            prepared,
            now: now(),
        };
        self.policy().evaluate(&facts, &[])
    }
}
