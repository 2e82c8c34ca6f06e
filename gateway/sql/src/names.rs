//! Dangerous built-in function names (PostgreSQL 13–18 and common extensions).
//!
//! Matching is on the last name component, lower-cased, so any schema qualification or quoting
//! of a listed name counts (conservative: a user function that happens to share a name is
//! flagged too).

use crate::Danger;

const SERVER_FILES: &[&str] = &[
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "pg_ls_logicalsnapdir",
    "pg_ls_logicalmapdir",
    "pg_ls_replslotdir",
    "pg_ls_summariesdir",
    // adminpack
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
    "pg_logdir_ls",
    // server-side large-object file transfer (also large objects)
    "lo_import",
    "lo_export",
];

const PROCESS_SIGNALS: &[&str] = &[
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_signal_backend",
];

const CONFIG: &[&str] = &["pg_reload_conf"];

const ADMIN: &[&str] = &[
    "pg_promote",
    "pg_rotate_logfile",
    "pg_switch_wal",
    "pg_switch_xlog",
    "pg_create_restore_point",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_replication_slot_advance",
    "pg_logical_slot_get_changes",
    "pg_logical_slot_peek_changes",
    "pg_logical_slot_get_binary_changes",
    "pg_logical_slot_peek_binary_changes",
    "pg_logical_emit_message",
    "pg_replication_origin_create",
    "pg_replication_origin_drop",
    "pg_replication_origin_advance",
    "pg_replication_origin_session_setup",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_log_backend_memory_contexts",
    "pg_stat_reset",
    "pg_stat_reset_shared",
    "pg_stat_reset_single_table_counters",
    "pg_stat_reset_single_function_counters",
    "pg_stat_reset_slru",
    "pg_stat_reset_replication_slot",
    "pg_stat_reset_subscription_stats",
    "pg_stat_statements_reset",
    "pg_import_system_collations",
    "pg_sync_replication_slots",
];

const DYNAMIC_SQL: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "cursor_to_xml",
    "pg_background_launch",
];

/// Large-object functions besides `lo_import`/`lo_export`.
fn is_large_object(name: &str) -> bool {
    (name.starts_with("lo_") && name != "lo_compat_privileges")
        || name == "loread"
        || name == "lowrite"
}

/// The dangers of calling `name` (last component, any case). `schema` is the qualification, if
/// any, lower-cased.
pub(crate) fn function_dangers(schema: Option<&str>, name: &str) -> Vec<Danger> {
    let n = name.to_ascii_lowercase();
    let mut out = Vec::new();
    if SERVER_FILES.contains(&n.as_str()) {
        out.push(Danger::ServerFileAccess(n.clone()));
    }
    if is_large_object(&n) {
        out.push(Danger::LargeObject(n.clone()));
    }
    if n.starts_with("dblink") {
        out.push(Danger::Dblink(n.clone()));
        if n == "dblink_exec" || n == "dblink" || n == "dblink_send_query" || n == "dblink_open" {
            out.push(Danger::DynamicSql(n.clone()));
        }
    }
    if PROCESS_SIGNALS.contains(&n.as_str()) {
        out.push(Danger::ProcessSignal(n.clone()));
    }
    if CONFIG.contains(&n.as_str()) {
        out.push(Danger::ConfigChange(n.clone()));
    }
    if ADMIN.contains(&n.as_str()) {
        out.push(Danger::AdminFunction(n.clone()));
    }
    if DYNAMIC_SQL.contains(&n.as_str()) || schema == Some("cron") {
        out.push(Danger::DynamicSql(n.clone()));
    }
    out
}

/// `set_config(name, ...)`: which setting names amount to a role switch.
pub(crate) fn is_role_setting(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "role" | "session_authorization"
    )
}

/// Settings whose change through `set_config` is a [`Danger::ConfigChange`]: identity, how the
/// server reads SQL text, read-only guards, trigger and permission bypasses, audit logging,
/// library loading, and every custom (`prefix.name`) setting, which extensions (`pgaudit.*`)
/// and row-level-security policies (`current_setting('app.tenant')`) use. Anything else
/// (`application_name`, `search_path`, `timezone`, `statement_timeout`, ...) is what a plain
/// `SET` of the same name is: a session setting, not a danger.
const SETTINGS_THAT_MATTER: &[&str] = &[
    "role",
    "session_authorization",
    "standard_conforming_strings",
    "client_encoding",
    "backslash_quote",
    "default_transaction_read_only",
    "transaction_read_only",
    "session_replication_role",
    "row_security",
    "lo_compat_privileges",
    "allow_system_table_mods",
    "local_preload_libraries",
    "session_preload_libraries",
    "dynamic_library_path",
];

/// `set_config(name, ...)` of a constant `name`: does changing it matter (see
/// [`SETTINGS_THAT_MATTER`])? Names are compared lower-cased, as PostgreSQL does.
pub(crate) fn setting_matters(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    SETTINGS_THAT_MATTER.contains(&n.as_str())
        || n.contains('.')
        || n.starts_with("log_")
        || n.starts_with("debug_")
        || n.starts_with("trace_")
}
