//! From a parse tree to a [`Statement`].
//!
//! The statement kind comes from a typed match on the top-level node. Everything else (tables,
//! writes, functions, dangers, flags) comes from a generic walk over the whole tree: the protobuf
//! tree is serialised to a `serde_json::Value` and every object in it is visited. Serialisation
//! visits every field of every node type, so no node type can be forgotten, including ones added
//! by future PostgreSQL versions. Relations and function calls are recognised by their shape
//! (`relname` + `relpersistence`, `funcname` + `funcformat`) because several node types embed
//! them directly rather than through a tagged `Node`.

use pg_query::protobuf::{self, ObjectType};
use pg_query::NodeEnum;
use serde_json::{Map, Value};

use crate::{names, CopyDirection, Danger, Flags, ParseError, Statement, StatementKind, TableRef};

/// Classify one top-level node whose source slice is `text`.
pub(crate) fn analyze(node: &NodeEnum, text: &str) -> Result<Statement, ParseError> {
    let tree = serde_json::to_value(node).map_err(|e| ParseError::TooComplex(e.to_string()))?;
    let type_name = tree
        .as_object()
        .and_then(|m| m.keys().next())
        .map_or("Unknown", String::as_str);
    let kind = kind_of(node, type_name, text)?;
    let mut acc = Acc::default();
    acc.visit(&tree);

    acc.tables.sort();
    acc.writes.sort();
    acc.functions.sort();
    acc.dangerous.sort();
    let mut flags = acc.flags;
    let writes_nested = !acc.writes.is_empty();
    if let StatementKind::Explain {
        analyze: true,
        inner,
    } = &kind
    {
        flags.explain_analyze_write = inner.is_write() || writes_nested;
    }
    if let StatementKind::Copy { program: true, .. } = kind {
        push_unique(&mut acc.dangerous, Danger::CopyProgram);
    }
    Ok(Statement {
        kind,
        tables: acc.tables,
        writes: acc.writes,
        functions: acc.functions,
        dangerous: acc.dangerous,
        flags,
        text: text.to_owned(),
    })
}

fn kind_of(node: &NodeEnum, type_name: &str, text: &str) -> Result<StatementKind, ParseError> {
    use StatementKind as K;
    Ok(match node {
        NodeEnum::SelectStmt(s) if s.into_clause.is_some() => K::CreateTable,
        NodeEnum::SelectStmt(_) => K::Select,
        NodeEnum::InsertStmt(_) => K::Insert,
        NodeEnum::UpdateStmt(_) => K::Update,
        NodeEnum::DeleteStmt(_) => K::Delete,
        NodeEnum::MergeStmt(_) => K::Merge,
        NodeEnum::CopyStmt(c) => K::Copy {
            direction: if c.is_from {
                CopyDirection::From
            } else {
                CopyDirection::To
            },
            program: c.is_program,
        },
        NodeEnum::TruncateStmt(_) => K::Truncate,
        NodeEnum::CreateStmt(_) => K::CreateTable,
        NodeEnum::CreateTableAsStmt(c) => match ObjectType::try_from(c.objtype) {
            Ok(ObjectType::ObjectTable) => K::CreateTable,
            _ => K::CreateOther(object_name(c.objtype)),
        },
        NodeEnum::AlterTableStmt(a) => match ObjectType::try_from(a.objtype) {
            Ok(ObjectType::ObjectTable) => K::AlterTable,
            _ => K::AlterOther(object_name(a.objtype)),
        },
        NodeEnum::DropStmt(d) => K::Drop {
            object: object_name(d.remove_type),
        },
        NodeEnum::DropdbStmt(_) => K::Drop {
            object: "DATABASE".into(),
        },
        NodeEnum::DropTableSpaceStmt(_) => K::Drop {
            object: "TABLESPACE".into(),
        },
        NodeEnum::DropSubscriptionStmt(_) => K::Drop {
            object: "SUBSCRIPTION".into(),
        },
        NodeEnum::DropUserMappingStmt(_) => K::Drop {
            object: "USER MAPPING".into(),
        },
        NodeEnum::DropOwnedStmt(_) => K::Drop {
            object: "OWNED".into(),
        },
        NodeEnum::GrantStmt(g) if g.is_grant => K::Grant,
        NodeEnum::GrantStmt(_) => K::Revoke,
        NodeEnum::GrantRoleStmt(g) if g.is_grant => K::Grant,
        NodeEnum::GrantRoleStmt(_) => K::Revoke,
        NodeEnum::AlterDefaultPrivilegesStmt(a) => match &a.action {
            Some(g) if !g.is_grant => K::Revoke,
            _ => K::Grant,
        },
        NodeEnum::CreateRoleStmt(_) => K::CreateRole,
        NodeEnum::AlterRoleStmt(_)
        | NodeEnum::AlterRoleSetStmt(_)
        | NodeEnum::ReassignOwnedStmt(_) => K::AlterRole,
        NodeEnum::DropRoleStmt(_) => K::DropRole,
        // `ALTER ROLE|USER|GROUP name RENAME TO new`: a role statement, not generic DDL.
        NodeEnum::RenameStmt(r)
            if ObjectType::try_from(r.rename_type) == Ok(ObjectType::ObjectRole) =>
        {
            K::AlterRole
        }
        NodeEnum::VariableSetStmt(v) => set_kind(v),
        NodeEnum::VariableShowStmt(_) => K::Show,
        NodeEnum::TransactionStmt(t) => {
            use protobuf::TransactionStmtKind as T;
            match T::try_from(t.kind) {
                Ok(T::TransStmtBegin | T::TransStmtStart) => K::Begin,
                Ok(T::TransStmtCommit) => K::Commit,
                Ok(T::TransStmtRollback) => K::Rollback,
                Ok(T::TransStmtSavepoint | T::TransStmtRelease | T::TransStmtRollbackTo) => {
                    K::Savepoint
                }
                Ok(
                    T::TransStmtPrepare | T::TransStmtCommitPrepared | T::TransStmtRollbackPrepared,
                ) => K::TwoPhase,
                _ => K::Other("TransactionStmt".into()),
            }
        }
        NodeEnum::PrepareStmt(p) => K::Prepare {
            name: p.name.clone(),
            inner: Box::new(inner(p.query.as_deref(), text)?),
        },
        NodeEnum::ExecuteStmt(e) => K::Execute {
            name: e.name.clone(),
        },
        NodeEnum::DeallocateStmt(d) => K::Deallocate {
            name: if d.isall { None } else { Some(d.name.clone()) },
        },
        NodeEnum::DoStmt(_) => K::Do,
        NodeEnum::CallStmt(_) => K::Call,
        NodeEnum::ExplainStmt(e) => K::Explain {
            analyze: explain_analyzes(e),
            inner: Box::new(inner(e.query.as_deref(), text)?),
        },
        NodeEnum::DeclareCursorStmt(_) => K::DeclareCursor,
        NodeEnum::FetchStmt(_) => K::Fetch,
        NodeEnum::ClosePortalStmt(_) => K::ClosePortal,
        NodeEnum::DiscardStmt(d) => K::Discard {
            all: d.target == protobuf::DiscardMode::DiscardAll as i32,
        },
        NodeEnum::ListenStmt(_) => K::Listen,
        NodeEnum::UnlistenStmt(_) => K::Unlisten,
        NodeEnum::NotifyStmt(_) => K::Notify,
        NodeEnum::VacuumStmt(v) if v.is_vacuumcmd => K::Vacuum,
        NodeEnum::VacuumStmt(_) => K::Analyze,
        NodeEnum::LockStmt(_) => K::Lock,
        NodeEnum::AlterSystemStmt(_) => K::AlterOther("SYSTEM".into()),
        other => create_or_alter(other, type_name),
    })
}

/// The remaining DDL, named after the parser's node type: `CreateSchemaStmt` → `CreateOther("SCHEMA")`.
fn create_or_alter(node: &NodeEnum, type_name: &str) -> StatementKind {
    let words = |s: &str| {
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push(' ');
            }
            out.push(c.to_ascii_uppercase());
        }
        out
    };
    let special = match node {
        NodeEnum::IndexStmt(_) => Some("INDEX"),
        NodeEnum::ViewStmt(_) => Some("VIEW"),
        NodeEnum::CreatedbStmt(_) => Some("DATABASE"),
        NodeEnum::CreateFunctionStmt(f) if f.is_procedure => Some("PROCEDURE"),
        NodeEnum::CreateFunctionStmt(_) => Some("FUNCTION"),
        NodeEnum::CreateTrigStmt(_) => Some("TRIGGER"),
        NodeEnum::CreatePlangStmt(_) => Some("LANGUAGE"),
        NodeEnum::CreateSeqStmt(_) => Some("SEQUENCE"),
        NodeEnum::RuleStmt(_) => Some("RULE"),
        NodeEnum::DefineStmt(_) => Some("OBJECT"),
        _ => None,
    };
    if let Some(s) = special {
        return StatementKind::CreateOther(s.into());
    }
    let base = type_name.strip_suffix("Stmt").unwrap_or(type_name);
    if let Some(rest) = base.strip_prefix("Create") {
        StatementKind::CreateOther(words(rest))
    } else if let Some(rest) = base.strip_prefix("Alter") {
        StatementKind::AlterOther(words(rest))
    } else if matches!(
        node,
        NodeEnum::RenameStmt(_)
            | NodeEnum::CommentStmt(_)
            | NodeEnum::SecLabelStmt(_)
            | NodeEnum::ImportForeignSchemaStmt(_)
            | NodeEnum::RefreshMatViewStmt(_)
            | NodeEnum::ReindexStmt(_)
            | NodeEnum::ClusterStmt(_)
            | NodeEnum::ReplicaIdentityStmt(_)
            | NodeEnum::CompositeTypeStmt(_)
    ) {
        StatementKind::AlterOther(words(base))
    } else {
        StatementKind::Other(type_name.to_owned())
    }
}

fn set_kind(v: &protobuf::VariableSetStmt) -> StatementKind {
    use protobuf::VariableSetKind as V;
    let name = v.name.to_ascii_lowercase();
    let reset = matches!(V::try_from(v.kind), Ok(V::VarReset | V::VarResetAll));
    match (name.as_str(), reset) {
        ("role", false) => StatementKind::SetRole,
        ("role", true) => StatementKind::ResetRole,
        ("session_authorization", _) => StatementKind::SetSessionAuthorization,
        (_, true) if name.is_empty() => StatementKind::Reset { name: "all".into() },
        (_, true) => StatementKind::Reset { name },
        _ => StatementKind::Set { name },
    }
}

fn inner(node: Option<&pg_query::protobuf::Node>, text: &str) -> Result<Statement, ParseError> {
    match node.and_then(|n| n.node.as_ref()) {
        Some(n) => analyze(n, text),
        None => Err(ParseError::TooComplex("statement without a body".into())),
    }
}

/// `EXPLAIN ANALYZE` / `EXPLAIN (ANALYZE [true|on|1])`: conservative, anything but an explicit
/// false value counts as analyze.
fn explain_analyzes(e: &protobuf::ExplainStmt) -> bool {
    e.options.iter().any(|o| match &o.node {
        Some(NodeEnum::DefElem(d)) if d.defname.eq_ignore_ascii_case("analyze") => {
            match d.arg.as_deref().and_then(|a| a.node.as_ref()) {
                Some(NodeEnum::Boolean(b)) => b.boolval,
                Some(NodeEnum::String(s)) => !matches!(
                    s.sval.to_ascii_lowercase().as_str(),
                    "false" | "off" | "0" | "no"
                ),
                Some(NodeEnum::Integer(i)) => i.ival != 0,
                _ => true,
            }
        }
        _ => false,
    })
}

/// `OBJECT_FOREIGN_TABLE` → `FOREIGN TABLE`, `OBJECT_MATVIEW` → `MATERIALIZED VIEW`.
fn object_name(t: i32) -> String {
    match ObjectType::try_from(t) {
        Ok(ObjectType::ObjectMatview) => "MATERIALIZED VIEW".into(),
        Ok(o) => o
            .as_str_name()
            .trim_start_matches("OBJECT_")
            .replace('_', " "),
        Err(_) => "UNKNOWN".into(),
    }
}

/// Object types whose `DROP` removes a relation (its names go into `tables` and `writes`).
fn drops_relation(t: i32) -> bool {
    matches!(
        ObjectType::try_from(t),
        Ok(ObjectType::ObjectTable
            | ObjectType::ObjectView
            | ObjectType::ObjectMatview
            | ObjectType::ObjectForeignTable
            | ObjectType::ObjectSequence
            | ObjectType::ObjectIndex)
    )
}

/// Statement node types whose `relation` field is changed by the statement.
const RELATION_WRITERS: &[&str] = &[
    "InsertStmt",
    "UpdateStmt",
    "DeleteStmt",
    "MergeStmt",
    "CreateStmt",
    "AlterTableStmt",
    "IndexStmt",
    "CreateTrigStmt",
    "RefreshMatViewStmt",
    "ClusterStmt",
    "RenameStmt",
    "AlterObjectSchemaStmt",
    "AlterOwnerStmt",
    "RuleStmt",
    "CreatePolicyStmt",
    "AlterPolicyStmt",
    "ReindexStmt",
    "CommentStmt",
];

/// Catalog views that read configuration files on the server.
const FILE_VIEWS: &[&str] = &[
    "pg_file_settings",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
];

#[derive(Default)]
struct Acc {
    tables: Vec<TableRef>,
    writes: Vec<TableRef>,
    functions: Vec<String>,
    dangerous: Vec<Danger>,
    flags: Flags,
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, item: T) {
    if !v.contains(&item) {
        v.push(item);
    }
}

fn str_field<'a>(m: &'a Map<String, Value>, k: &str) -> &'a str {
    m.get(k).and_then(Value::as_str).unwrap_or("")
}

/// `{"node": {"Variant": {...}}}` → `("Variant", {...})`.
fn node_variant(v: &Value) -> Option<(&str, &Map<String, Value>)> {
    let inner = v.get("node")?.as_object()?;
    let (k, v) = inner.iter().next()?;
    Some((k.as_str(), v.as_object()?))
}

/// The `sval`s of a list of `String` nodes (a qualified name).
fn name_parts(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| match node_variant(i) {
                    Some(("String", s)) => Some(str_field(s, "sval").to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn contains_key(v: &Value, key: &str) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, c)| k == key || contains_key(c, key)),
        Value::Array(a) => a.iter().any(|c| contains_key(c, key)),
        _ => false,
    }
}

/// A string constant, possibly under casts: `'role'`, `'role'::text`.
fn const_string(v: &Value) -> Option<String> {
    match node_variant(v)? {
        ("AConst", c) => c
            .get("val")?
            .get("Sval")?
            .get("sval")?
            .as_str()
            .map(str::to_owned),
        ("TypeCast", c) => const_string(c.get("arg")?),
        _ => None,
    }
}

impl Acc {
    fn visit(&mut self, v: &Value) {
        match v {
            Value::Object(m) => {
                if m.contains_key("relname") && m.contains_key("relpersistence") {
                    self.range_var(m);
                }
                if m.contains_key("funcname") && m.contains_key("funcformat") {
                    self.func_call(m);
                }
                for (k, child) in m {
                    if let Some(c) = child.as_object() {
                        self.node(k, c);
                    }
                    self.visit(child);
                }
            }
            Value::Array(a) => a.iter().for_each(|c| self.visit(c)),
            _ => {}
        }
    }

    fn table_of(m: &Map<String, Value>) -> TableRef {
        let schema = str_field(m, "schemaname");
        TableRef {
            schema: (!schema.is_empty()).then(|| schema.to_owned()),
            name: str_field(m, "relname").to_owned(),
        }
    }

    fn range_var(&mut self, m: &Map<String, Value>) {
        let t = Self::table_of(m);
        if FILE_VIEWS.contains(&t.name.to_ascii_lowercase().as_str()) {
            push_unique(
                &mut self.dangerous,
                Danger::ServerFileAccess(t.name.to_ascii_lowercase()),
            );
        }
        push_unique(&mut self.tables, t);
    }

    fn write_relation(&mut self, rel: Option<&Value>) {
        if let Some(r) = rel.and_then(Value::as_object) {
            if r.contains_key("relname") {
                push_unique(&mut self.writes, Self::table_of(r));
            }
        }
    }

    fn func_call(&mut self, m: &Map<String, Value>) {
        let parts = name_parts(m.get("funcname"));
        let Some(last) = parts.last() else { return };
        let schema = (parts.len() > 1).then(|| parts[parts.len() - 2].to_ascii_lowercase());
        push_unique(&mut self.functions, parts.join("."));
        for d in names::function_dangers(schema.as_deref(), last) {
            push_unique(&mut self.dangerous, d);
        }
        if last.eq_ignore_ascii_case("set_config") {
            // Like `SET name`, unless the name is one that matters (names::setting_matters) or
            // is not a constant.
            let setting = m
                .get("args")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(const_string)
                .map(|s| s.to_ascii_lowercase());
            let what = format!(
                "set_config({})",
                setting.as_deref().unwrap_or("<expression>")
            );
            if setting.as_deref().is_none_or(names::setting_matters) {
                push_unique(&mut self.dangerous, Danger::ConfigChange(what.clone()));
            }
            if setting.as_deref().is_none_or(names::is_role_setting) {
                push_unique(&mut self.dangerous, Danger::RoleChange(what));
            }
        }
    }

    /// Facts attached to a node type, seen as the key of a tagged node or a typed field.
    fn node(&mut self, key: &str, m: &Map<String, Value>) {
        if RELATION_WRITERS.contains(&key) {
            self.write_relation(m.get("relation"));
        }
        match key {
            "UpdateStmt" | "DeleteStmt" => {
                let bounded = match m.get("where_clause") {
                    None | Some(Value::Null) => false,
                    Some(w) => contains_key(w, "ColumnRef") || contains_key(w, "CurrentOfExpr"),
                };
                if !bounded {
                    self.flags.unbounded_write = true;
                }
            }
            "CommonTableExpr" => {
                if let Some((k, _)) = m.get("ctequery").and_then(node_variant) {
                    if matches!(k, "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt") {
                        self.flags.data_modifying_cte = true;
                    }
                }
            }
            "TruncateStmt" => {
                for r in m
                    .get("relations")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(("RangeVar", rv)) = node_variant(r) {
                        push_unique(&mut self.writes, Self::table_of(rv));
                    }
                }
            }
            "CopyStmt" => {
                if m.get("is_from").and_then(Value::as_bool).unwrap_or(false) {
                    self.write_relation(m.get("relation"));
                }
                let filename = str_field(m, "filename");
                let program = m
                    .get("is_program")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                if program {
                    push_unique(&mut self.dangerous, Danger::CopyProgram);
                } else if !filename.is_empty() {
                    let dir = if m.get("is_from").and_then(Value::as_bool).unwrap_or(false) {
                        "FROM"
                    } else {
                        "TO"
                    };
                    push_unique(
                        &mut self.dangerous,
                        Danger::ServerFileAccess(format!("COPY {dir} '{filename}'")),
                    );
                }
            }
            "into_clause" | "into" if m.contains_key("rel") => {
                self.write_relation(m.get("rel"));
                if key == "into_clause" {
                    self.flags.select_into = true;
                }
            }
            "DropStmt" => {
                let remove_type = m.get("remove_type").and_then(Value::as_i64).unwrap_or(0);
                if drops_relation(i32::try_from(remove_type).unwrap_or(0)) {
                    for o in m
                        .get("objects")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(("List", l)) = node_variant(o) {
                            let parts = name_parts(l.get("items"));
                            if let Some(name) = parts.last() {
                                let schema =
                                    (parts.len() > 1).then(|| parts[parts.len() - 2].clone());
                                let t = TableRef {
                                    schema,
                                    name: name.clone(),
                                };
                                push_unique(&mut self.tables, t.clone());
                                push_unique(&mut self.writes, t);
                            }
                        }
                    }
                }
            }
            "DoStmt" => push_unique(&mut self.dangerous, Danger::DynamicSql("DO".into())),
            "CreateFunctionStmt" => {
                let what = if m
                    .get("is_procedure")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                {
                    "CREATE PROCEDURE"
                } else {
                    "CREATE FUNCTION"
                };
                push_unique(&mut self.dangerous, Danger::DynamicSql(what.into()));
            }
            "AlterSystemStmt" => push_unique(
                &mut self.dangerous,
                Danger::ConfigChange("ALTER SYSTEM".into()),
            ),
            "AlterDatabaseSetStmt" => push_unique(
                &mut self.dangerous,
                Danger::ConfigChange("ALTER DATABASE SET".into()),
            ),
            "AlterRoleSetStmt" => push_unique(
                &mut self.dangerous,
                Danger::ConfigChange("ALTER ROLE SET".into()),
            ),
            "CreateExtensionStmt" => {
                push_unique(
                    &mut self.dangerous,
                    Danger::AdminFunction(format!("CREATE EXTENSION {}", str_field(m, "extname"))),
                );
            }
            "AlterExtensionStmt" | "AlterExtensionContentsStmt" => push_unique(
                &mut self.dangerous,
                Danger::AdminFunction("ALTER EXTENSION".into()),
            ),
            "LoadStmt" => push_unique(
                &mut self.dangerous,
                Danger::AdminFunction(format!("LOAD '{}'", str_field(m, "filename"))),
            ),
            "CreatePlangStmt" => push_unique(
                &mut self.dangerous,
                Danger::AdminFunction("CREATE LANGUAGE".into()),
            ),
            "CreateForeignServerStmt" | "AlterForeignServerStmt" => {
                push_unique(&mut self.dangerous, Danger::Dblink("foreign server".into()))
            }
            "CreateUserMappingStmt" | "AlterUserMappingStmt" => {
                push_unique(&mut self.dangerous, Danger::Dblink("user mapping".into()))
            }
            "ImportForeignSchemaStmt" => push_unique(
                &mut self.dangerous,
                Danger::Dblink("IMPORT FOREIGN SCHEMA".into()),
            ),
            "CreateSubscriptionStmt" | "AlterSubscriptionStmt" => {
                push_unique(&mut self.dangerous, Danger::Dblink("subscription".into()))
            }
            "CreateForeignTableStmt" => push_unique(
                &mut self.dangerous,
                Danger::ServerFileAccess("CREATE FOREIGN TABLE".into()),
            ),
            "CreateFdwStmt" | "AlterFdwStmt" => push_unique(
                &mut self.dangerous,
                Danger::AdminFunction("FOREIGN DATA WRAPPER".into()),
            ),
            "CreateTableSpaceStmt" => push_unique(
                &mut self.dangerous,
                Danger::ServerFileAccess("CREATE TABLESPACE".into()),
            ),
            "AlterOwnerStmt" => {
                push_unique(&mut self.dangerous, Danger::RoleChange("OWNER TO".into()))
            }
            "AlterTableCmd" => {
                if m.get("newowner").is_some_and(|o| !o.is_null()) {
                    push_unique(&mut self.dangerous, Danger::RoleChange("OWNER TO".into()));
                }
                let subtype = m.get("subtype").and_then(Value::as_i64);
                if subtype == Some(protobuf::AlterTableType::AtDropColumn as i64) {
                    self.flags.drops_column = true;
                } else if subtype == Some(protobuf::AlterTableType::AtDropConstraint as i64) {
                    self.flags.drops_constraint = true;
                }
            }
            // `ALTER DOMAIN ... DROP CONSTRAINT` (subtype 'X').
            "AlterDomainStmt" if str_field(m, "subtype") == "X" => {
                self.flags.drops_constraint = true;
            }
            "CheckPointStmt" => push_unique(
                &mut self.dangerous,
                Danger::AdminFunction("CHECKPOINT".into()),
            ),
            _ => {}
        }
        if key == "CreateForeignTableStmt" {
            if let Some(base) = m.get("base_stmt").and_then(Value::as_object) {
                self.write_relation(base.get("relation"));
            }
        }
        if key == "ViewStmt" {
            self.write_relation(m.get("view"));
        }
        if key == "CreateSeqStmt" || key == "AlterSeqStmt" {
            self.write_relation(m.get("sequence"));
        }
        if key == "GrantStmt" {
            if let Some(objtype) = m.get("objtype").and_then(Value::as_i64) {
                if ObjectType::try_from(i32::try_from(objtype).unwrap_or(0))
                    == Ok(ObjectType::ObjectLargeobject)
                {
                    push_unique(
                        &mut self.dangerous,
                        Danger::LargeObject("GRANT ON LARGE OBJECT".into()),
                    );
                }
            }
        }
    }
}
