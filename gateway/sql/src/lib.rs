//! Statement classification with PostgreSQL's own parser.
//!
//! `gatehouse-sql` turns SQL text into facts a policy can judge: what kind of statement each part
//! of a (possibly multi-statement) string is, which tables it reads and writes, which functions it
//! calls, and which dangerous capabilities it reaches for (server files, `COPY PROGRAM`, dblink,
//! large objects, signals, configuration changes, dynamic SQL).
//!
//! The parser is libpg_query (via the `pg_query` crate): the real PostgreSQL grammar, so comments,
//! quoting, dollar quotes, `U&"..."` escapes and case folding are resolved exactly as the server
//! resolves them. Nothing here looks at SQL text with regular expressions.
//!
//! # Invariants
//! - Pure: no I/O, no global state, no clock. The same input always gives the same output.
//! - Complete walk: facts are collected from *every* node of the parse tree (the tree is walked
//!   generically, not through a hand-picked list of node types), so a function call or a write
//!   nested in a CTE, a subquery, `EXPLAIN`, `PREPARE`, `COPY (query)` or a rule action is found.
//! - Conservative: a dangerous function name is recognised whatever its schema qualification or
//!   quoting (`"PG_READ_FILE"`, `pg_catalog.pg_read_file`, `public.pg_read_file` all count), every
//!   relation reference is a table reference (CTE names are *not* subtracted, so a CTE cannot hide a
//!   real table of the same name), and a `WHERE` clause that references no column is unbounded.
//! - The bytes of a message are read as the server reads them ([`classify_bytes`], `text.rs`):
//!   `client_encoding` → `server_encoding` conversion and `standard_conforming_strings`.
//! - Input the parser rejects (syntax errors, NUL bytes, trees nested too deeply to decode) is a
//!   [`ParseError`]; callers must treat it as "cannot judge" and fail closed.
//! - What cannot be analysed is said so: `DO` blocks, function bodies and SQL passed as strings
//!   (`query_to_xml`, `dblink_exec`, ...) carry [`Danger::DynamicSql`]. Functions defined by users
//!   are opaque: `SELECT my_func()` may write, which only the target's own privileges can prevent.

#![forbid(unsafe_code)]

mod builtin_functions;
pub mod fuzzing;
mod names;
mod prepared;
mod text;
mod walk;

use std::borrow::Cow;

use serde::Serialize;

pub use prepared::PreparedStatements;
pub use text::{
    decode_statement, depends_on_settings, Encoding, TextError, TextSettings, ALL_ENCODINGS,
};

/// The name of the built-in function with this OID (one fixed in PostgreSQL's `pg_proc.dat`),
/// or `None` for any other OID (functions created by users or extensions, or added after the
/// PostgreSQL release the table was generated from).
pub fn builtin_function_name(oid: u32) -> Option<&'static str> {
    builtin_functions::BUILTIN_FUNCTIONS
        .binary_search_by_key(&oid, |(o, _)| *o)
        .ok()
        .and_then(|i| builtin_functions::BUILTIN_FUNCTIONS.get(i))
        .map(|(_, n)| *n)
}

/// A fast-path `FunctionCall` of a built-in function, as a statement the policy can judge:
/// `SELECT pg_catalog."name"()`. The arguments are not SQL and not shown; a call is judged by
/// what the function is (server files, large objects, dynamic SQL ...). `None` when the OID is
/// not a known built-in (see [`builtin_function_name`]).
pub fn fast_path_call_sql(oid: u32) -> Option<String> {
    builtin_function_name(oid).map(|n| format!("SELECT pg_catalog.\"{n}\"()"))
}

/// Parse `sql` and classify each statement in it.
///
/// A multi-statement string (`SELECT 1; DROP TABLE t`) yields one [`Statement`] per part, in
/// order. An empty string (or only comments) yields an empty vector.
pub fn classify(sql: &str) -> Result<Vec<Statement>, ParseError> {
    classify_with(sql, ParseOptions::default())
}

/// Session settings that change how PostgreSQL tokenises SQL text.
///
/// `standard_conforming_strings` decides whether a backslash escapes a quote inside `'...'`;
/// parsing with the wrong value lets `'a\'; DROP TABLE t; --'` be one string to the gateway and
/// two statements to the server. The server reports the current value in a `ParameterStatus`
/// message whenever it changes (it is `GUC_REPORT`); the gateway must pass what the server last
/// reported for the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseOptions {
    /// `standard_conforming_strings` (PostgreSQL default: on).
    pub standard_conforming_strings: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        Self {
            standard_conforming_strings: true,
        }
    }
}

/// [`classify`] under explicit session settings.
pub fn classify_with(sql: &str, options: ParseOptions) -> Result<Vec<Statement>, ParseError> {
    let mut opts = pg_query::ParserOptions::DEFAULT;
    if !options.standard_conforming_strings {
        opts |= pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS;
    }
    let parsed = pg_query::parse(sql, opts).map_err(ParseError::from_pg)?;
    let mut out = Vec::with_capacity(parsed.protobuf.stmts.len());
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_deref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        let text = statement_text(sql, raw.stmt_location, raw.stmt_len);
        out.push(walk::analyze(node, text)?);
    }
    Ok(out)
}

/// The bytes of a Query or Parse message, read as the server will read them under `settings`
/// ([`decode_statement`]), then classified with the session's `standard_conforming_strings`.
/// Returns the decoded text (what audit records and the policy should name) with the statements.
pub fn classify_bytes<'a>(
    bytes: &'a [u8],
    settings: &TextSettings,
) -> Result<(Cow<'a, str>, Vec<Statement>), ClassifyError> {
    let text = decode_statement(bytes, settings)?;
    let statements = classify_with(
        &text,
        ParseOptions {
            standard_conforming_strings: settings.standard_conforming_strings,
        },
    )?;
    Ok((text, statements))
}

/// Why [`classify_bytes`] could not classify: the text could not be read as the server reads it,
/// or the parser refused it. Either way the caller must fail closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClassifyError {
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// The source slice of one statement: PostgreSQL reports byte offsets, `len == 0` means "to the
/// end". Falls back to the whole input if the offsets are not on character boundaries.
fn statement_text(sql: &str, location: i32, len: i32) -> &str {
    let start = usize::try_from(location).unwrap_or(0);
    let end = match usize::try_from(len) {
        Ok(0) | Err(_) => sql.len(),
        Ok(n) => start.saturating_add(n).min(sql.len()),
    };
    sql.get(start..end).unwrap_or(sql).trim()
}

/// The parser refused the input. The message is PostgreSQL's own (for example
/// `syntax error at or near "FROM"`); it contains no data beyond fragments of the input itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[non_exhaustive]
pub enum ParseError {
    /// PostgreSQL's grammar rejected the text.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// The text contains a NUL byte, which PostgreSQL never accepts in a query string.
    #[error("statement contains a NUL byte")]
    NulByte,
    /// The parse tree could not be decoded (in practice: nested deeper than the decoder allows).
    #[error("statement too complex to analyse: {0}")]
    TooComplex(String),
}

impl ParseError {
    fn from_pg(e: pg_query::Error) -> Self {
        match e {
            pg_query::Error::Parse(m) | pg_query::Error::Split(m) | pg_query::Error::Scan(m) => {
                Self::Syntax(m)
            }
            pg_query::Error::Conversion(_) => Self::NulByte,
            // The decoder's only failure on well-formed libpg_query output is its recursion limit
            // (100 nested messages, about 50 levels of expression nesting).
            pg_query::Error::Decode(_) => {
                Self::TooComplex("nested deeper than the analyser allows".into())
            }
            other => Self::TooComplex(other.to_string()),
        }
    }
}

/// One classified statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    /// What the top-level statement is.
    pub kind: StatementKind,
    /// Every relation referenced anywhere in the statement (reads and writes), sorted, deduplicated.
    pub tables: Vec<TableRef>,
    /// Relations the statement (or any nested part of it) inserts into, updates, deletes from,
    /// truncates, creates, alters or drops; sorted, deduplicated.
    pub writes: Vec<TableRef>,
    /// Every function called, as parsed (`schema.name` if qualified; unquoted identifiers are
    /// already folded to lower case by the parser, quoted ones keep their case), sorted, deduplicated.
    pub functions: Vec<String>,
    /// Dangerous capabilities, sorted, deduplicated.
    pub dangerous: Vec<Danger>,
    /// Structural facts.
    pub flags: Flags,
    /// The statement's own source slice (trimmed), comments included.
    pub text: String,
}

impl Statement {
    /// True if the statement changes data or schema anywhere (top level or nested).
    pub fn is_write(&self) -> bool {
        !self.writes.is_empty() || self.kind.is_write()
    }
}

/// A relation reference. Names are as the parser produced them (folded unless quoted).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct TableRef {
    pub schema: Option<String>,
    pub name: String,
}

impl std::fmt::Display for TableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Structural facts about a statement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Flags {
    /// A `DELETE` or `UPDATE` (anywhere in the statement) without a `WHERE`, or whose `WHERE`
    /// references no column at all (`WHERE true`, `WHERE 1 = 1`).
    pub unbounded_write: bool,
    /// A `WITH` clause contains `INSERT`/`UPDATE`/`DELETE`/`MERGE`.
    pub data_modifying_cte: bool,
    /// `EXPLAIN ANALYZE` of a statement that writes (it executes the write).
    pub explain_analyze_write: bool,
    /// `SELECT ... INTO new_table` (creates and fills a table).
    pub select_into: bool,
    /// `ALTER TABLE|FOREIGN TABLE|TYPE ... DROP COLUMN|ATTRIBUTE` (the column's data is gone).
    pub drops_column: bool,
    /// `ALTER TABLE ... DROP CONSTRAINT`, `ALTER DOMAIN ... DROP CONSTRAINT`.
    pub drops_constraint: bool,
}

impl Flags {
    /// Names used in policy files, with their values.
    pub fn named(&self) -> [(&'static str, bool); 6] {
        [
            ("unbounded_write", self.unbounded_write),
            ("data_modifying_cte", self.data_modifying_cte),
            ("explain_analyze_write", self.explain_analyze_write),
            ("select_into", self.select_into),
            ("drops_column", self.drops_column),
            ("drops_constraint", self.drops_constraint),
        ]
    }
}

/// Every flag name accepted by [`Flags::named`].
pub const FLAG_NAMES: &[&str] = &[
    "unbounded_write",
    "data_modifying_cte",
    "explain_analyze_write",
    "select_into",
    "drops_column",
    "drops_constraint",
];

/// Direction of a `COPY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CopyDirection {
    /// `COPY ... FROM` (writes into a table).
    From,
    /// `COPY ... TO` (reads).
    To,
}

/// What a top-level statement is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Copy {
        direction: CopyDirection,
        program: bool,
    },
    Truncate,
    CreateTable,
    AlterTable,
    /// `DROP <object>`; `object` is PostgreSQL's object type name, upper case (`TABLE`,
    /// `SCHEMA`, `DATABASE`, `VIEW`, `FUNCTION`, ...). `DROP ROLE` is [`StatementKind::DropRole`].
    Drop {
        object: String,
    },
    /// Any other `CREATE`; the string names the object (`INDEX`, `VIEW`, `FUNCTION`, `SCHEMA`, ...).
    CreateOther(String),
    /// Any other `ALTER`/`RENAME`/`COMMENT`-style DDL; the string names the statement.
    AlterOther(String),
    Grant,
    Revoke,
    CreateRole,
    AlterRole,
    DropRole,
    SetRole,
    ResetRole,
    SetSessionAuthorization,
    /// `SET name ...` (including `SET LOCAL`); `name` is lower case (`search_path`, `timezone`).
    Set {
        name: String,
    },
    /// `RESET name` / `RESET ALL` (`name` is `all` then).
    Reset {
        name: String,
    },
    Show,
    Begin,
    Commit,
    Rollback,
    /// `SAVEPOINT`, `RELEASE`, `ROLLBACK TO`.
    Savepoint,
    /// `PREPARE TRANSACTION`, `COMMIT PREPARED`, `ROLLBACK PREPARED` (two-phase commit).
    TwoPhase,
    /// SQL-level `PREPARE name AS <inner>`.
    Prepare {
        name: String,
        inner: Box<Statement>,
    },
    /// SQL-level `EXECUTE name`; judge it with the body recorded by [`PreparedStatements`].
    Execute {
        name: String,
    },
    /// `DEALLOCATE name` (`all` = `DEALLOCATE ALL`).
    Deallocate {
        name: Option<String>,
    },
    Do,
    Call,
    Explain {
        analyze: bool,
        inner: Box<Statement>,
    },
    DeclareCursor,
    /// `FETCH` / `MOVE`.
    Fetch,
    /// `CLOSE cursor`.
    ClosePortal,
    /// `DISCARD ALL|PLANS|SEQUENCES|TEMP`; `all` for `DISCARD ALL` (which deallocates).
    Discard {
        all: bool,
    },
    Listen,
    Unlisten,
    Notify,
    Vacuum,
    Analyze,
    Lock,
    /// Anything else, named by the parser's node type (`CheckPointStmt`, `LoadStmt`, ...).
    Other(String),
}

/// Snake-case names of statement kinds as used in policy files. `Other`, `CreateOther`,
/// `AlterOther` and `Drop` are also matchable in their detailed form (`drop_table`,
/// `create_index`, ...), see [`StatementKind::names`].
pub const KIND_NAMES: &[&str] = &[
    "select",
    "insert",
    "update",
    "delete",
    "merge",
    "copy",
    "copy_from",
    "copy_to",
    "copy_program",
    "truncate",
    "create_table",
    "alter_table",
    "drop",
    "create_other",
    "alter_other",
    "grant",
    "revoke",
    "create_role",
    "alter_role",
    "drop_role",
    "set_role",
    "reset_role",
    "set_session_authorization",
    "set",
    "reset",
    "show",
    "begin",
    "commit",
    "rollback",
    "savepoint",
    "two_phase",
    "prepare",
    "execute",
    "deallocate",
    "do",
    "call",
    "explain",
    "explain_analyze",
    "declare_cursor",
    "fetch",
    "close_portal",
    "discard",
    "listen",
    "unlisten",
    "notify",
    "vacuum",
    "analyze",
    "lock",
    "other",
];

impl StatementKind {
    /// The general policy name of this kind (one of [`KIND_NAMES`]).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Select => "select",
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Merge => "merge",
            Self::Copy { .. } => "copy",
            Self::Truncate => "truncate",
            Self::CreateTable => "create_table",
            Self::AlterTable => "alter_table",
            Self::Drop { .. } => "drop",
            Self::CreateOther(_) => "create_other",
            Self::AlterOther(_) => "alter_other",
            Self::Grant => "grant",
            Self::Revoke => "revoke",
            Self::CreateRole => "create_role",
            Self::AlterRole => "alter_role",
            Self::DropRole => "drop_role",
            Self::SetRole => "set_role",
            Self::ResetRole => "reset_role",
            Self::SetSessionAuthorization => "set_session_authorization",
            Self::Set { .. } => "set",
            Self::Reset { .. } => "reset",
            Self::Show => "show",
            Self::Begin => "begin",
            Self::Commit => "commit",
            Self::Rollback => "rollback",
            Self::Savepoint => "savepoint",
            Self::TwoPhase => "two_phase",
            Self::Prepare { .. } => "prepare",
            Self::Execute { .. } => "execute",
            Self::Deallocate { .. } => "deallocate",
            Self::Do => "do",
            Self::Call => "call",
            Self::Explain { .. } => "explain",
            Self::DeclareCursor => "declare_cursor",
            Self::Fetch => "fetch",
            Self::ClosePortal => "close_portal",
            Self::Discard { .. } => "discard",
            Self::Listen => "listen",
            Self::Unlisten => "unlisten",
            Self::Notify => "notify",
            Self::Vacuum => "vacuum",
            Self::Analyze => "analyze",
            Self::Lock => "lock",
            Self::Other(_) => "other",
        }
    }

    /// Every policy name this kind answers to: the general one plus detailed ones
    /// (`copy_from`/`copy_to`/`copy_program`, `explain_analyze`, `drop_table`, `create_index`, ...).
    pub fn names(&self) -> Vec<String> {
        let mut v = vec![self.name().to_owned()];
        match self {
            Self::Copy { direction, program } => {
                v.push(match direction {
                    CopyDirection::From => "copy_from".into(),
                    CopyDirection::To => "copy_to".into(),
                });
                if *program {
                    v.push("copy_program".into());
                }
            }
            Self::Explain { analyze: true, .. } => v.push("explain_analyze".into()),
            Self::Drop { object } => v.push(format!(
                "drop_{}",
                object.to_ascii_lowercase().replace(' ', "_")
            )),
            Self::CreateOther(o) => v.push(format!(
                "create_{}",
                o.to_ascii_lowercase().replace(' ', "_")
            )),
            Self::AlterOther(o) => v.push(format!(
                "alter_{}",
                o.to_ascii_lowercase().replace(' ', "_")
            )),
            _ => {}
        }
        v
    }

    /// Statement kinds that change data or schema by themselves.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Self::Insert
                | Self::Update
                | Self::Delete
                | Self::Merge
                | Self::Copy {
                    direction: CopyDirection::From,
                    ..
                }
                | Self::Truncate
                | Self::CreateTable
                | Self::AlterTable
                | Self::Drop { .. }
                | Self::CreateOther(_)
                | Self::AlterOther(_)
        )
    }
}

/// A dangerous capability reached by a statement. The string names the function or statement
/// that reaches it (function names in lower case, without schema).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[non_exhaustive]
pub enum Danger {
    /// Reads, lists or writes files on the database server (`pg_read_file`, `pg_ls_dir`,
    /// `lo_import`, `COPY ... FROM/TO 'file'`, ...).
    ServerFileAccess(String),
    /// `COPY ... PROGRAM`: runs a shell command on the database server.
    CopyProgram,
    /// Reaches another server (`dblink*`, foreign servers and user mappings).
    Dblink(String),
    /// Large-object functions (`lo_*`, `loread`, `lowrite`).
    LargeObject(String),
    /// Signals other backends or the postmaster.
    ProcessSignal(String),
    /// Changes server or session configuration outside plain `SET`: `set_config` of a setting
    /// that matters (identity, how SQL text is read, read-only guards, custom `x.y` settings,
    /// ...; see `names.rs`) or of a computed name, `ALTER SYSTEM`, `pg_reload_conf`,
    /// `ALTER DATABASE ... SET`. `set_config('application_name', ...)` is not one.
    ConfigChange(String),
    /// Switches role or ownership outside the role statements: `set_config('role', ...)`,
    /// `set_config('session_authorization', ...)`, `set_config` with a non-constant name,
    /// `ALTER ... OWNER TO`.
    RoleChange(String),
    /// Administrative functions and statements (replication slots, backups, WAL control,
    /// `CREATE EXTENSION`, `LOAD`, statistics resets, ...).
    AdminFunction(String),
    /// Code the classifier cannot see into: `DO` blocks, function/procedure definitions, SQL
    /// passed as a string (`query_to_xml`, `dblink_exec`, ...).
    DynamicSql(String),
}

/// Snake-case names of dangers as used in policy files.
pub const DANGER_NAMES: &[&str] = &[
    "server_file_access",
    "copy_program",
    "dblink",
    "large_object",
    "process_signal",
    "config_change",
    "role_change",
    "admin_function",
    "dynamic_sql",
];

impl Danger {
    /// The policy name of this danger (one of [`DANGER_NAMES`]).
    pub fn name(&self) -> &'static str {
        match self {
            Self::ServerFileAccess(_) => "server_file_access",
            Self::CopyProgram => "copy_program",
            Self::Dblink(_) => "dblink",
            Self::LargeObject(_) => "large_object",
            Self::ProcessSignal(_) => "process_signal",
            Self::ConfigChange(_) => "config_change",
            Self::RoleChange(_) => "role_change",
            Self::AdminFunction(_) => "admin_function",
            Self::DynamicSql(_) => "dynamic_sql",
        }
    }
}

impl std::fmt::Display for Danger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CopyProgram => f.write_str("copy_program(COPY PROGRAM)"),
            Self::ServerFileAccess(s)
            | Self::Dblink(s)
            | Self::LargeObject(s)
            | Self::ProcessSignal(s)
            | Self::ConfigChange(s)
            | Self::RoleChange(s)
            | Self::AdminFunction(s)
            | Self::DynamicSql(s) => write!(f, "{}({s})", self.name()),
        }
    }
}
