//! Running SQL on the local database: statements prepared once and kept by text, stepped
//! through page fetches within the request's budgets, and values and parameters carried
//! between turso and the engine.

use std::num::NonZero;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use rustc_hash::FxHashMap;
use turso_core::{StatementStatusCounter, StepResult, Value};

use super::{ExecLimits, LocalDb};
use crate::chunk_file::PageSource;
use crate::error::{sql_err, EngineError, SqliteCode};
use crate::guard::Dml;
use crate::value::{Description, Params, SqlValue, Statement, StatementResult};

/// Prepared statements kept per local database, by SQL text. Applications send the same
/// few statements again and again; preparing one (parse, plan, emit) costs more than
/// running a point query. turso re-prepares a kept statement by itself when the schema or
/// a connection setting changed since it was prepared. Bounded so that an isolate's open
/// databases (16) keep a few MB of programs at most.
const STATEMENT_CACHE_ENTRIES: usize = 32;

/// Longer statements (bulk inserts with their values inline, generated SQL) are not kept:
/// they rarely repeat, and their programs grow with their text.
const MAX_KEPT_SQL_BYTES: usize = 4096;

/// Statements that ran to their end, reset for the next run (see [`STATEMENT_CACHE_ENTRIES`]).
#[derive(Default)]
pub(super) struct PreparedStatements(Mutex<FxHashMap<String, turso_core::Statement>>);

impl PreparedStatements {
    fn take(&self, sql: &str) -> Option<turso_core::Statement> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(sql)
    }

    /// Keeps `stmt`, which ran to its end, for the next run of `sql`. A statement that
    /// failed or stopped early is never kept: resetting a write statement that returned
    /// rows part-way would finish its write.
    fn keep(&self, sql: &str, mut stmt: turso_core::Statement) {
        if sql.len() > MAX_KEPT_SQL_BYTES || stmt.reset().is_err() {
            return;
        }
        stmt.clear_bindings();
        // Its counters add up across runs; each answer reports its own run's.
        stmt.reset_metrics();
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= STATEMENT_CACHE_ENTRIES {
            // Rare (an application with many distinct statements): start over rather
            // than track recency on every hit.
            kept.clear();
        }
        kept.insert(sql.to_owned(), stmt);
    }
}

/// A statement that ran to its end, and what it returned.
struct Finished {
    result: StatementResult,
    stmt: turso_core::Statement,
}

/// One statement being stepped, and what it produced so far.
struct Stepping {
    stmt: turso_core::Statement,
    keep_rows: bool,
    rows: Vec<Vec<SqlValue>>,
    /// Approximate bytes of `rows` (sum of value sizes).
    result_bytes: usize,
    rowid_before: i64,
}

impl Stepping {
    fn new(stmt: turso_core::Statement, keep_rows: bool, rowid_before: i64) -> Self {
        Stepping { stmt, keep_rows, rows: Vec::new(), result_bytes: 0, rowid_before }
    }
}

/// Where a statement being stepped stands.
enum Progress {
    Done,
    /// It waits for pages that are not cached.
    Stalled,
}

impl LocalDb {
    /// Prepares the first statement of `sql`; returns it and where the next one starts.
    fn prepare_first(&self, sql: &str) -> Result<(turso_core::Statement, usize), EngineError> {
        let stmt = self.conn.prepare(sql).map_err(sql_err)?;
        let tail = stmt.tail_offset().min(sql.len());
        Ok((stmt, tail))
    }

    /// Prepares `sql`, which must hold exactly one statement (or what it runs as).
    fn prepare_one(&self, sql: &str) -> Result<turso_core::Statement, EngineError> {
        let sql = crate::guard::runs_as(sql);
        let (stmt, tail) = self.prepare_first(sql)?;
        if !is_blank_sql(&sql[tail..]) {
            return Err(EngineError::more_than_one_statement());
        }
        Ok(stmt)
    }

    /// Runs one statement (SQL text holding exactly one statement) with its parameters.
    pub async fn execute(
        &self,
        statement: &Statement,
        limits: &ExecLimits,
        pages: &dyn PageSource,
    ) -> Result<StatementResult, EngineError> {
        self.catch_up_schema(pages).await?;
        let mut stmt = match self.prepared.take(&statement.sql) {
            Some(kept) => kept,
            None => self.prepare_one(&statement.sql)?,
        };
        bind_params(&mut stmt, &statement.params)?;
        match self.run_prepared(stmt, &statement.sql, limits, true, pages).await {
            Ok(Finished { result, stmt }) => {
                self.prepared.keep(&statement.sql, stmt);
                Ok(result)
            }
            Err(e) => Err(self.refine_error(e, pages).await),
        }
    }

    /// SQLite reports a duplicate primary key as "UNIQUE constraint failed" with the
    /// extended code SQLITE_CONSTRAINT_PRIMARYKEY; turso does not tell the two apart, so
    /// look at the table's primary key.
    async fn refine_error(&self, e: EngineError, pages: &dyn PageSource) -> EngineError {
        let EngineError::Sql(mut failure) = e else { return e };
        if failure.code != SqliteCode::ConstraintUnique {
            return EngineError::Sql(failure);
        }
        let Some(columns) = failure.message.strip_prefix("UNIQUE constraint failed: ") else {
            return EngineError::Sql(failure);
        };
        let columns: Vec<(&str, &str)> = columns.split(", ").filter_map(|c| c.split_once('.')).collect();
        let Some(&(table, _)) = columns.first() else { return EngineError::Sql(failure) };
        let pk = Statement::with_params(
            "SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk",
            vec![SqlValue::Text(table.to_string())],
        );
        let table_info = match self.prepare_one(&pk.sql).and_then(|mut stmt| bind_params(&mut stmt, &pk.params).map(|()| stmt)) {
            Ok(stmt) => self.run_prepared(stmt, &pk.sql, &ExecLimits::default(), true, pages).await.map(|f| f.result),
            Err(e) => Err(e),
        };
        if let Ok(r) = table_info {
            let pk_columns: Vec<&str> =
                r.rows.iter().filter_map(|row| match row.first() { Some(SqlValue::Text(t)) => Some(t.as_str()), _ => None }).collect();
            let named: Vec<&str> = columns.iter().map(|(_, c)| *c).collect();
            if !pk_columns.is_empty() && pk_columns == named {
                failure.code = SqliteCode::ConstraintPrimaryKey;
            }
        }
        EngineError::Sql(failure)
    }

    /// Runs every statement of `sql` in order, without parameters, discarding their rows.
    /// `check` vets each statement's text before it runs.
    pub async fn execute_sequence(
        &self,
        sql: &str,
        limits: &ExecLimits,
        check: impl Fn(&str) -> Result<(), EngineError>,
        pages: &dyn PageSource,
    ) -> Result<(), EngineError> {
        self.catch_up_schema(pages).await?;
        let mut rest = sql;
        while !is_blank_sql(rest) {
            // Vet the statement before turso compiles it (compiling may already act).
            let mut parser = turso_parser::parser::Parser::new(rest.as_bytes());
            let first = match parser.next() {
                Some(Ok(_)) => rest.get(..parser.offset()),
                _ => None,
            };
            if let Some(first) = first {
                check(first)?;
            }
            let (stmt, tail) = match first {
                Some(first) if crate::guard::runs_as(first) != first => (self.prepare_one(first)?, first.len()),
                _ => self.prepare_first(rest)?,
            };
            let text = &rest[..tail];
            if stmt.parameters_count() > 0 {
                return Err(EngineError::Params("statements of a sequence cannot take parameters".into()));
            }
            self.run_prepared(stmt, text, limits, false, pages).await?;
            rest = &rest[tail..];
        }
        Ok(())
    }

    /// What a statement takes and returns, without running it.
    pub async fn describe(&self, sql: &str, pages: &dyn PageSource) -> Result<Description, EngineError> {
        self.catch_up_schema(pages).await?;
        let stmt = self.prepare_one(sql)?;
        let params = (1..=stmt.parameters_count())
            .map(|i| stmt.parameters().name(NonZero::new(i).expect("i >= 1")))
            .collect();
        let columns = (0..stmt.num_columns())
            .map(|i| (stmt.get_column_name(i).into_owned(), stmt.get_column_decltype(i)))
            .collect();
        let parsed = turso_parser::parser::Parser::new(sql.as_bytes()).next();
        Ok(Description {
            params,
            columns,
            is_explain: matches!(parsed, Some(Ok(turso_parser::ast::Cmd::Explain(_) | turso_parser::ast::Cmd::ExplainQueryPlan { .. }))),
            is_readonly: crate::guard::check_script_statement(sql)? == crate::guard::StatementKind::Read,
        })
    }

    /// Steps `stmt` to the end. A read of a page that is not cached suspends the statement
    /// where it is: the page's group is fetched from `pages`, the read completed, and the
    /// statement goes on (a scan streams through the cache in one pass, whatever its size).
    async fn run_prepared(
        &self,
        stmt: turso_core::Statement,
        sql: &str,
        limits: &ExecLimits,
        keep_rows: bool,
        pages: &dyn PageSource,
    ) -> Result<Finished, EngineError> {
        let mut run = Stepping::new(stmt, keep_rows, self.conn.last_insert_rowid());
        while let Progress::Stalled = self.advance(&mut run, limits)? {
            self.fetch_stalled(pages).await?;
        }
        Ok(self.finish(run, sql))
    }

    /// Fetches the pages that stalled reads wait for and completes those reads.
    async fn fetch_stalled(&self, pages: &dyn PageSource) -> Result<(), EngineError> {
        let wanted = self.take_wanted();
        let fetched: crate::chunk_file::FetchedPages = match pages.fetch_pages(&wanted).await {
            Ok(fetched) => fetched.into_iter().collect(),
            // The checkpoint's chunks are gone (collected after a newer checkpoint): the
            // caller moves onto the newest manifest and runs the request again.
            Err(EngineError::BaseGone(_)) => return Err(EngineError::PagesMissing(wanted)),
            Err(e) => return Err(e),
        };
        if self.base.file.complete_stalled(&fetched) == 0 {
            return Err(EngineError::Corrupt(format!("pages {wanted:?} are needed but the checkpoint does not have them")));
        }
        Ok(())
    }

    /// Steps `run` until it is done or waits for pages that are not cached.
    fn advance(&self, run: &mut Stepping, limits: &ExecLimits) -> Result<Progress, EngineError> {
        let interrupted = || {
            EngineError::Interrupted(format!(
                "query interrupted: the request used up its budget of {} VM steps (VM_STEPS limit); the statement changed nothing",
                limits.max_vm_steps
            ))
        };
        loop {
            let step = match run.stmt.step() {
                Err(_) if self.vm_steps_left.load(Ordering::Relaxed) <= 0 => return Err(interrupted()),
                other => other.map_err(sql_err)?,
            };
            match step {
                StepResult::Row if !run.keep_rows => {}
                StepResult::Row => {
                    let row = run.stmt.row().ok_or_else(|| EngineError::Internal("row missing after Row step".into()))?;
                    let values: Vec<SqlValue> = row.get_values().map(|v| from_turso(v)).collect();
                    run.result_bytes += values.iter().map(SqlValue::weight).sum::<usize>();
                    run.rows.push(values);
                    if run.rows.len() > limits.max_result_rows {
                        return Err(EngineError::Limit(format!(
                            "result has more than {} rows (RESULT_ROWS limit); add a LIMIT or page through the data",
                            limits.max_result_rows
                        )));
                    }
                    if run.result_bytes > limits.max_result_bytes {
                        return Err(EngineError::Limit(format!(
                            "result is larger than {} bytes (RESULT_BYTES limit); select fewer rows or columns",
                            limits.max_result_bytes
                        )));
                    }
                }
                StepResult::Done => return Ok(Progress::Done),
                StepResult::IO | StepResult::Yield | StepResult::Sleep { .. } => {
                    if self.base.file.has_stalled_reads() {
                        return Ok(Progress::Stalled);
                    }
                    // A read turso did not wait for failed (see `StalledReads`): what it
                    // goes on with cannot be trusted, so the request runs again.
                    if self.has_wanted() {
                        return Err(self.missing_or(EngineError::Internal("a page is not cached".into())));
                    }
                    run.stmt._io().step().map_err(sql_err)?;
                }
                StepResult::Interrupt => return Err(interrupted()),
                StepResult::Busy => return Err(EngineError::Internal("database busy".into())),
            }
        }
    }

    fn finish(&self, run: Stepping, sql: &str) -> Finished {
        let Stepping { stmt, rows, rowid_before, .. } = run;
        // Read after the run: a statement prepared before a schema change was prepared
        // again by its first step (`SELECT *` may have gained a column).
        let columns = (0..stmt.num_columns()).map(|i| stmt.get_column_name(i).into_owned()).collect();
        let decltypes = (0..stmt.num_columns()).map(|i| stmt.get_column_decltype(i)).collect();
        let dml = crate::guard::dml_of(sql);
        // SQLite's changes() counts INSERT, UPDATE and DELETE only (turso's counter also
        // moves for other statements, e.g. window functions and DROP).
        let rows_affected = if dml == Dml::Other { 0 } else { stmt.n_change().max(0) as u64 };
        let rows_read = stmt.stmt_status(StatementStatusCounter::RowsRead);
        let rows_written = stmt.stmt_status(StatementStatusCounter::RowsWritten);
        let rowid_after = self.conn.last_insert_rowid();
        let is_insert = dml == Dml::Insert;
        let result = StatementResult {
            columns,
            decltypes,
            rows,
            rows_affected,
            rows_read,
            rows_written,
            last_insert_rowid: (rowid_after != rowid_before || (rows_affected > 0 && rowid_after != 0 && is_insert))
                .then_some(rowid_after),
            connection_last_insert_rowid: rowid_after,
            is_insert,
        };
        Finished { result, stmt }
    }
}

/// Skips whitespace and SQL comments.
fn skip_blank_sql(mut s: &str) -> &str {
    loop {
        let t = s.trim_start();
        if let Some(rest) = t.strip_prefix("--") {
            s = rest.find('\n').map_or("", |i| &rest[i + 1..]);
        } else if let Some(rest) = t.strip_prefix("/*") {
            s = rest.find("*/").map_or("", |i| &rest[i + 2..]);
        } else if let Some(rest) = t.strip_prefix(';') {
            s = rest;
        } else {
            return t;
        }
    }
}

pub(crate) fn is_blank_sql(s: &str) -> bool {
    skip_blank_sql(s).is_empty()
}

fn from_turso(v: &Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Numeric(turso_core::Numeric::Integer(i)) => SqlValue::Integer(*i),
        Value::Numeric(turso_core::Numeric::Float(f)) => SqlValue::Real(f64::from(*f)),
        Value::Text(t) => SqlValue::Text(t.as_str().to_string()),
        Value::Blob(_) => SqlValue::Blob(v.to_blob().map(|b| b.to_vec()).unwrap_or_default()),
    }
}

fn to_turso(v: &SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => Value::from_i64(*i),
        SqlValue::Real(f) => Value::from_f64(*f),
        SqlValue::Text(t) => Value::build_text(t.clone()),
        SqlValue::Blob(b) => Value::from_blob(b.clone().into()),
    }
}

fn bind_params(stmt: &mut turso_core::Statement, params: &Params) -> Result<(), EngineError> {
    let count = stmt.parameters_count();
    match params {
        Params::None => {
            if count > 0 {
                return Err(EngineError::Params(format!("statement has {count} parameters but none were given")));
            }
        }
        Params::Positional(values) => {
            if values.len() != count {
                return Err(EngineError::Params(format!(
                    "statement has {count} parameters but {} were given",
                    values.len()
                )));
            }
            for (i, v) in values.iter().enumerate() {
                let idx = NonZero::new(i + 1).expect("i + 1 > 0");
                stmt.bind_at(idx, to_turso(v)).map_err(|e| EngineError::Params(e.to_string()))?;
            }
        }
        Params::Named(pairs) => {
            let mut bound = vec![false; count];
            for (name, v) in pairs {
                let idx = if name.starts_with([':', '@', '$']) {
                    stmt.parameter_index(name)
                } else {
                    [':', '@', '$'].iter().find_map(|p| stmt.parameter_index(&format!("{p}{name}")))
                };
                let Some(idx) = idx else {
                    return Err(EngineError::Params(format!("statement has no parameter named {name:?}")));
                };
                if std::mem::replace(&mut bound[idx.get() - 1], true) {
                    return Err(EngineError::Params(format!("parameter {name:?} is given twice")));
                }
                stmt.bind_at(idx, to_turso(v)).map_err(|e| EngineError::Params(e.to_string()))?;
            }
            if let Some(missing) = bound.iter().position(|b| !b) {
                let idx = NonZero::new(missing + 1).expect("> 0");
                let name = stmt.parameters().name(idx).unwrap_or_else(|| format!("?{}", missing + 1));
                return Err(EngineError::Params(format!("parameter {name} is not bound")));
            }
        }
    }
    Ok(())
}
