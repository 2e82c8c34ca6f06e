//! Per-session memory of SQL-level prepared statements.
//!
//! `EXECUTE name` says nothing about what runs; only the earlier `PREPARE name AS ...` does. The
//! gateway keeps one [`PreparedStatements`] per client session, feeds it every statement it
//! forwards, and resolves `EXECUTE` through it before judging. An `EXECUTE` of a name it has not
//! seen prepared must be treated like unparseable input (fail closed).
//!
//! Prepared statements are session-scoped and not transactional in PostgreSQL (a `ROLLBACK` does
//! not undo `PREPARE` or `DEALLOCATE`), so no transaction tracking is needed. A name prepared twice
//! (the second `PREPARE` fails upstream with 42P05 if the first still exists) keeps *every* body
//! seen, and [`PreparedStatements::resolve`] returns them all so that the strictest one decides.

use std::collections::BTreeMap;

use crate::{Statement, StatementKind};

/// Bodies of SQL-level prepared statements seen on one session, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreparedStatements {
    by_name: BTreeMap<String, Vec<Statement>>,
}

impl PreparedStatements {
    /// An empty memory, for a new session.
    pub fn new() -> Self {
        Self::default()
    }

    /// Record the effect of statements that were forwarded to the target: `PREPARE` adds a body,
    /// `DEALLOCATE name`/`DEALLOCATE ALL`/`DISCARD ALL` forget.
    pub fn observe(&mut self, statements: &[Statement]) {
        for s in statements {
            match &s.kind {
                StatementKind::Prepare { name, inner } => {
                    let bodies = self.by_name.entry(name.clone()).or_default();
                    if !bodies.contains(inner) {
                        bodies.push((**inner).clone());
                    }
                }
                StatementKind::Deallocate { name: Some(name) } => {
                    self.by_name.remove(name);
                }
                StatementKind::Deallocate { name: None } => self.by_name.clear(),
                StatementKind::Discard { all: true } => self.by_name.clear(),
                _ => {}
            }
        }
    }

    /// The bodies that `EXECUTE name` may run; empty if the name was never seen prepared.
    pub fn resolve(&self, name: &str) -> &[Statement] {
        self.by_name.get(name).map_or(&[], Vec::as_slice)
    }

    /// Number of names remembered.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True if nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}
