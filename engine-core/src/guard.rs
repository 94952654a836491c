//! Which statements may run through the engine. A request is one transaction that the
//! engine begins and commits itself, and the local database is a cache of the commit log,
//! so statements that end transactions, attach other files, or change how the WAL works
//! would break durability or consistency between isolates.

use turso_parser::ast::{Cmd, PragmaBody, Stmt};
use turso_parser::parser::Parser;

use crate::error::EngineError;
use crate::unsupported::UnsupportedFeature;

/// PRAGMAs that may be assigned (`PRAGMA x = v`): header fields that are written through
/// the WAL like any page, and connection settings that only affect the current request.
const ASSIGNABLE_PRAGMAS: &[&str] = &[
    "foreign_keys",
    "defer_foreign_keys",
    "ignore_check_constraints",
    "recursive_triggers",
    "case_sensitive_like",
    "user_version",
    "application_id",
];

/// Assignable PRAGMAs whose behaviour turso fixes at SQLite's default: turning them off
/// is accepted (it is what happens), turning them on is refused rather than ignored.
const FIXED_OFF_PRAGMAS: &[(&str, &str)] = &[
    ("recursive_triggers", "a trigger never fires itself again here (SQLite's default)"),
    (
        "case_sensitive_like",
        "LIKE ignores the case of ASCII letters here (SQLite's default); GLOB matches case-sensitively",
    ),
];

/// SQLite's reading of a PRAGMA's boolean value (`sqlite3GetBoolean`): `None` if it is not one.
fn pragma_boolean(value: &turso_parser::ast::Expr) -> Option<bool> {
    let text = value.to_string().to_ascii_lowercase();
    match text.trim_matches(|c| c == '\'' || c == '"') {
        "1" | "on" | "yes" | "true" => Some(true),
        "0" | "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

/// PRAGMAs refused in every form: they checkpoint, vacuum, write the schema by hand, or
/// switch the storage engine or its encryption.
const FORBIDDEN_PRAGMAS: &[&str] = &[
    "wal_checkpoint",
    "incremental_vacuum",
    "writable_schema",
    "mvcc",
    "cipher",
    "hexkey",
    "key",
    "hexrekey",
    "rekey",
];

/// PRAGMAs that tune how a local SQLite file is written and cached. Here the server fixes
/// them (commits are durable in R2 before they are acknowledged; the cache is the
/// isolate's): reading one answers the value in force, and setting one is accepted, changes
/// nothing, and answers the value in force too, as SQLite answers a `journal_mode` it cannot
/// switch to. Applications that set them when they open a database run unchanged.
const SERVER_SETTINGS: &[(&str, &str)] = &[
    ("journal_mode", "PRAGMA journal_mode"),
    ("synchronous", "PRAGMA synchronous"),
    ("locking_mode", "PRAGMA locking_mode"),
    ("busy_timeout", "PRAGMA busy_timeout"),
    ("cache_size", "PRAGMA cache_size"),
    ("cache_spill", "PRAGMA cache_spill"),
    ("temp_store", "PRAGMA temp_store"),
    ("mmap_size", "PRAGMA mmap_size"),
    ("journal_size_limit", "PRAGMA journal_size_limit"),
    ("wal_autocheckpoint", "PRAGMA wal_autocheckpoint"),
];

/// PRAGMAs that describe the file format, fixed when the database was created or imported:
/// they may be read, never set.
const FILE_FORMAT_PRAGMAS: &[&str] = &["page_size", "encoding", "auto_vacuum"];

/// PRAGMAs whose call form takes an argument that is not a new value (`PRAGMA
/// table_info(t)`); for every other PRAGMA, `PRAGMA x(v)` sets it, as `PRAGMA x = v` does.
const ARGUMENT_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "index_info",
    "index_xinfo",
    "index_list",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
    "table_list",
    "optimize",
];

/// What a statement is, as far as access control cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    /// Reads only (SELECT, EXPLAIN, read-only PRAGMAs).
    Read,
    /// May change the database.
    Write,
}

/// SQL texts whose verdict is remembered (applications send the same few statements over
/// and over; parsing each twice, here and in turso, showed up in profiles).
const VERDICT_CACHE_ENTRIES: usize = 256;
/// Longer texts are checked every time, so the memo stays small (≤ 1 MiB of SQL).
const VERDICT_CACHE_MAX_SQL: usize = 4096;

/// Which data-changing statement a statement is (SQLite's `changes()` counts only these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dml {
    /// INSERT or REPLACE (an upsert too).
    Insert,
    UpdateOrDelete,
    Other,
}

/// What the guard knows about one statement.
#[derive(Debug, Clone, PartialEq)]
struct Judgement {
    verdict: Verdict,
    dml: Dml,
    /// The statement turso runs instead: a server setting's assignment runs as its read.
    runs_as: Option<&'static str>,
}

type Verdict = Result<StatementKind, EngineError>;

thread_local! {
    static JUDGEMENTS: std::cell::RefCell<lru::LruCache<String, Judgement>> = std::cell::RefCell::new(
        lru::LruCache::new(std::num::NonZeroUsize::new(VERDICT_CACHE_ENTRIES).expect("non-zero")),
    );
}

fn judgement(sql: &str) -> Judgement {
    if sql.len() > VERDICT_CACHE_MAX_SQL {
        return judge_statement(sql);
    }
    if let Some(j) = JUDGEMENTS.with(|c| c.borrow_mut().get(sql).cloned()) {
        return j;
    }
    let j = judge_statement(sql);
    JUDGEMENTS.with(|c| c.borrow_mut().put(sql.to_string(), j.clone()));
    j
}

/// Checks one statement's SQL. Parse errors are left to the engine (it reports them with
/// better messages); this only refuses statements that parse and are not allowed.
pub fn check_statement(sql: &str) -> Verdict {
    judgement(sql).verdict
}

/// Whether `sql` (one statement) is an INSERT, an UPDATE or DELETE, or neither.
pub fn dml_of(sql: &str) -> Dml {
    judgement(sql).dml
}

/// The statement turso runs for `sql` (one statement): itself, or the read a server
/// setting's assignment runs as (see [`SERVER_SETTINGS`]).
pub fn runs_as(sql: &str) -> &str {
    judgement(sql).runs_as.unwrap_or(sql)
}

/// Parses `sql` once (on a cold isolate the parse runs turso's parser for the first time,
/// which costs milliseconds) and derives the whole judgement from it.
fn judge_statement(sql: &str) -> Judgement {
    let mut parser = Parser::new(sql.as_bytes());
    let cmd = match parser.next() {
        Some(Ok(cmd)) => cmd,
        _ => return Judgement { verdict: Ok(StatementKind::Write), dml: Dml::Other, runs_as: None },
    };
    let dml = match &cmd {
        Cmd::Stmt(Stmt::Insert { .. }) => Dml::Insert,
        Cmd::Stmt(Stmt::Update(_) | Stmt::Delete { .. }) => Dml::UpdateOrDelete,
        _ => Dml::Other,
    };
    let runs_as = match &cmd {
        Cmd::Stmt(Stmt::Pragma { name, body: Some(_) }) => {
            let pragma = pragma_name(name);
            SERVER_SETTINGS.iter().find(|(setting, _)| *setting == pragma).map(|(_, read)| *read)
        }
        _ => None,
    };
    // turso acts on some PRAGMA assignments as it compiles them, before it could refuse a
    // second statement after one: a server setting's assignment must never reach it.
    if runs_as.is_some() && parser.next().is_some() {
        return Judgement { verdict: Err(EngineError::more_than_one_statement()), dml, runs_as: None };
    }
    Judgement { verdict: judge_verdict(cmd), dml, runs_as }
}

/// A PRAGMA's name as SQLite matches it: without quotes, in lower case.
fn pragma_name(name: &turso_parser::ast::QualifiedName) -> String {
    let pragma = name.name.as_str().to_ascii_lowercase();
    pragma.trim_matches(|c| c == '"' || c == '`' || c == '[' || c == ']').to_string()
}

fn judge_verdict(cmd: Cmd) -> Verdict {
    let stmt = match cmd {
        Cmd::Explain(_) | Cmd::ExplainQueryPlan { .. } => return Ok(StatementKind::Read),
        Cmd::Stmt(stmt) => stmt,
    };
    let refuse = |what: &str| {
        Err(EngineError::NotAllowed(format!(
            "{what} is not allowed: each request runs as one transaction that the server begins and commits (use a batch for several statements)"
        )))
    };
    match stmt {
        Stmt::Begin { .. } => refuse("BEGIN"),
        Stmt::Commit { .. } => refuse("COMMIT/END"),
        Stmt::Rollback { savepoint_name: None, .. } => refuse("ROLLBACK"),
        Stmt::Attach { .. } | Stmt::Detach { .. } => Err(EngineError::NotAllowed(UnsupportedFeature::Attach.what().into())),
        Stmt::Vacuum { .. } => Err(EngineError::NotAllowed(UnsupportedFeature::Vacuum.what().into())),
        Stmt::CreateTable { temporary: true, .. }
        | Stmt::CreateView { temporary: true, .. }
        | Stmt::CreateTrigger { temporary: true, .. } => Err(EngineError::NotAllowed(
            "TEMP tables, views and triggers are not supported: they would live in one isolate's memory beyond the request".into(),
        )),
        Stmt::Pragma { name, body } => {
            let pragma = pragma_name(&name);
            let pragma = pragma.as_str();
            if name.db_name.is_some_and(|db| !db.as_str().eq_ignore_ascii_case("main")) {
                return Err(EngineError::NotAllowed("PRAGMA on a schema other than main is not allowed".into()));
            }
            if FORBIDDEN_PRAGMAS.contains(&pragma) {
                return Err(EngineError::NotAllowed(format!("PRAGMA {pragma} is managed by the server and not allowed")));
            }
            let value = match body {
                Some(PragmaBody::Equals(value)) => value,
                Some(PragmaBody::Call(value)) if !ARGUMENT_PRAGMAS.contains(&pragma) => value,
                _ => return Ok(StatementKind::Read),
            };
            if SERVER_SETTINGS.iter().any(|(setting, _)| *setting == pragma) {
                return Ok(StatementKind::Read);
            }
            if FILE_FORMAT_PRAGMAS.contains(&pragma) {
                return Err(EngineError::NotAllowed(format!(
                    "PRAGMA {pragma} is fixed when the database is created or imported and cannot be set (reading it answers the value in force)"
                )));
            }
            if !ASSIGNABLE_PRAGMAS.contains(&pragma) {
                return Err(EngineError::NotAllowed(format!(
                    "setting PRAGMA {pragma} is not allowed; assignable: {}",
                    ASSIGNABLE_PRAGMAS.join(", ")
                )));
            }
            match FIXED_OFF_PRAGMAS.iter().find(|(name, _)| *name == pragma) {
                Some((_, why)) if pragma_boolean(&value) != Some(false) => {
                    Err(EngineError::NotAllowed(format!("PRAGMA {pragma} can only be off: {why}")))
                }
                _ => Ok(StatementKind::Write),
            }
        }
        Stmt::Select(_) => Ok(StatementKind::Read),
        _ => Ok(StatementKind::Write),
    }
}

/// True for BEGIN, COMMIT/END and ROLLBACK (not ROLLBACK TO): the statements only a
/// script may run, because a script ends every transaction it opens before it is shipped.
pub fn is_transaction_control(sql: &str) -> bool {
    matches!(
        Parser::new(sql.as_bytes()).next(),
        Some(Ok(Cmd::Stmt(Stmt::Begin { .. } | Stmt::Commit { .. } | Stmt::Rollback { savepoint_name: None, .. })))
    )
}

/// True for `BEGIN [TRANSACTION] READONLY` (libSQL's read-only transaction, which the
/// engine enforces: turso reads READONLY as a transaction name).
pub fn begins_read_only(sql: &str) -> bool {
    matches!(
        Parser::new(sql.as_bytes()).next(),
        Some(Ok(Cmd::Stmt(Stmt::Begin { name: Some(name), .. }))) if name.as_str().eq_ignore_ascii_case("readonly")
    )
}

/// [`check_statement`] for a step of a script, where transaction control is allowed.
pub fn check_script_statement(sql: &str) -> Result<StatementKind, EngineError> {
    if is_transaction_control(sql) {
        return Ok(StatementKind::Read);
    }
    check_statement(sql)
}

/// What importing a SQL dump does with one of its statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpStatement {
    Run,
    /// The import runs the dump in transactions of its own, with foreign keys off (as
    /// sqlite3's `.dump` asks): the dump's `BEGIN`, `COMMIT` and `PRAGMA foreign_keys` are
    /// already done.
    Skip,
}

/// Classifies a statement of a SQL dump; refuses what an import cannot honour.
pub fn dump_statement(sql: &str) -> Result<DumpStatement, EngineError> {
    let invalid = |why: &str| Err(EngineError::InvalidFile(why.to_string()));
    match Parser::new(sql.as_bytes()).next() {
        Some(Ok(Cmd::Stmt(Stmt::Begin { .. } | Stmt::Commit { .. }))) => Ok(DumpStatement::Skip),
        Some(Ok(Cmd::Stmt(Stmt::Rollback { savepoint_name: None, .. }))) => invalid(
            "the dump ends its transaction with ROLLBACK (sqlite3 writes that when the dump itself failed): it is incomplete",
        ),
        Some(Ok(Cmd::Stmt(Stmt::Pragma { name, .. }))) => {
            match name.name.as_str().trim_matches(|c| c == '"' || c == '`' || c == '[' || c == ']').to_ascii_lowercase().as_str() {
                "foreign_keys" => Ok(DumpStatement::Skip),
                "writable_schema" => invalid(
                    "the dump writes the schema directly (sqlite3's .dump does that for virtual tables such as FTS): \
                     the engine cannot create tables that way; drop the virtual tables (or export without them) and import again",
                ),
                _ => check_statement(sql).map(|_| DumpStatement::Run),
            }
        }
        _ => check_statement(sql).map(|_| DumpStatement::Run),
    }
}

/// The most a text of several statements may do: `Write` if any statement may write or
/// the text does not parse (it cannot be proven read-only then).
pub fn script_text_kind(sql: &str) -> Result<StatementKind, EngineError> {
    let mut parser = Parser::new(sql.as_bytes());
    let mut kind = StatementKind::Read;
    let mut start = 0;
    while let Some(cmd) = parser.next() {
        if cmd.is_err() {
            return Ok(StatementKind::Write);
        }
        let end = parser.offset().min(sql.len());
        let text = sql.get(start..end).unwrap_or(sql);
        if check_script_statement(text)? == StatementKind::Write {
            kind = StatementKind::Write;
        }
        start = end;
    }
    Ok(kind)
}

/// The statements of a text of several, each with its own text. From the first one that
/// does not parse on, the rest is one last "statement", so that running it reports the
/// parse error (the parser does not advance past an error).
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut parser = Parser::new(sql.as_bytes());
    let mut out = Vec::new();
    let mut start = 0;
    while let Some(cmd) = parser.next() {
        if cmd.is_err() {
            break;
        }
        let end = parser.offset().min(sql.len());
        out.push(sql.get(start..end).unwrap_or_default().to_string());
        start = end;
    }
    let rest = sql.get(start..).unwrap_or_default();
    if !crate::local::is_blank_sql(rest) {
        out.push(rest.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_and_refuses() {
        assert_eq!(check_statement("select 1").unwrap(), StatementKind::Read);
        assert_eq!(check_statement("insert into t values (1)").unwrap(), StatementKind::Write);
        assert_eq!(check_statement("PRAGMA table_info(t)").unwrap(), StatementKind::Read);
        assert_eq!(check_statement("pragma foreign_keys = on").unwrap(), StatementKind::Write);
        assert_eq!(check_statement("PRAGMA defer_foreign_keys = ON").unwrap(), StatementKind::Write);
        // D1 recommends it after creating indexes; turso does nothing for it (README).
        assert_eq!(check_statement("PRAGMA optimize").unwrap(), StatementKind::Read);
        for off in ["PRAGMA recursive_triggers = OFF", "pragma case_sensitive_like = 0", "PRAGMA case_sensitive_like='false'", "PRAGMA recursive_triggers = no"] {
            assert_eq!(check_statement(off).unwrap(), StatementKind::Write, "{off}");
        }
        for on in ["PRAGMA recursive_triggers = ON", "PRAGMA case_sensitive_like = 1", "PRAGMA case_sensitive_like = true", "PRAGMA recursive_triggers = 'yes'", "PRAGMA case_sensitive_like = maybe"] {
            let e = check_statement(on).unwrap_err();
            assert!(e.code() == "STATEMENT_NOT_ALLOWED" && e.to_string().contains("can only be off"), "{on}: {e}");
        }
        for bad in [
            "BEGIN",
            "commit",
            "END TRANSACTION",
            "rollback",
            "ATTACH 'x.db' AS x",
            "DETACH x",
            "pragma wal_checkpoint(TRUNCATE)",
            "PRAGMA writable_schema = 1",
            "PRAGMA page_size = 8192",
            "PRAGMA auto_vacuum(FULL)",
            "PRAGMA encoding = 'UTF-16le'",
            "PRAGMA temp.cache_size = 10",
            "VACUUM",
            "CREATE TEMP TABLE x(a)",
            "create temporary view v as select 1",
        ] {
            let e = check_statement(bad).unwrap_err();
            assert_eq!(e.code(), "STATEMENT_NOT_ALLOWED", "{bad}");
        }
        // A PRAGMA's call form sets it, as `=` does, unless the PRAGMA takes an argument.
        for set in ["PRAGMA user_version(7)", "pragma application_id(1)", "PRAGMA foreign_keys(0)"] {
            assert_eq!(check_statement(set).unwrap(), StatementKind::Write, "{set}");
        }
        assert!(check_statement("PRAGMA recursive_triggers(1)").unwrap_err().to_string().contains("can only be off"));
        for argument in ["PRAGMA table_info(t)", "PRAGMA index_list('t')", "PRAGMA integrity_check(10)"] {
            assert_eq!(check_statement(argument).unwrap(), StatementKind::Read, "{argument}");
        }
        // Server settings answer as their read, whatever they are set to.
        for (setting, read) in [
            ("PRAGMA journal_mode = DELETE", "PRAGMA journal_mode"),
            ("pragma SYNCHRONOUS=off;", "PRAGMA synchronous"),
            ("PRAGMA cache_size(-100000)", "PRAGMA cache_size"),
            ("PRAGMA main.busy_timeout = 5000", "PRAGMA busy_timeout"),
        ] {
            assert_eq!(check_statement(setting).unwrap(), StatementKind::Read, "{setting}");
            assert_eq!(runs_as(setting), read);
        }
        let two = check_statement("PRAGMA journal_mode = WAL; DROP TABLE t").unwrap_err();
        assert!(two.to_string().contains("more than one statement"), "turso must never compile the assignment: {two}");
        for as_is in ["PRAGMA journal_mode", "PRAGMA user_version = 3", "SELECT 1"] {
            assert_eq!(runs_as(as_is), as_is);
        }
        assert!(check_statement("SAVEPOINT a").is_ok());
        assert!(check_statement("ROLLBACK TO a").is_ok());
        assert!(check_statement("not sql at all").is_ok(), "parse errors are the engine's to report");
        assert!(check_script_statement("BEGIN IMMEDIATE").is_ok());
        assert!(begins_read_only("BEGIN TRANSACTION READONLY") && !begins_read_only("BEGIN"));
        assert!(check_script_statement("ATTACH 'x' AS y").is_err());
        assert_eq!(script_text_kind("SELECT 1; BEGIN; SELECT 2; COMMIT;").unwrap(), StatementKind::Read);
        assert_eq!(script_text_kind("SELECT 1; DELETE FROM t").unwrap(), StatementKind::Write);
        assert_eq!(script_text_kind("SELECT 1; garbage").unwrap(), StatementKind::Write);
        assert!(script_text_kind("SELECT 1; VACUUM").is_err());
        assert_eq!(split_statements("SELECT 1; SELECT 2;").len(), 2);
        assert_eq!(split_statements("SELECT 1; garbage here; SELECT 3").len(), 2, "the rest after an error is one");
        assert_eq!(split_statements("WITH RECURSIVE WHERE /* x ? SELECT 1e999").len(), 1, "terminates on a parse error");
    }
}
