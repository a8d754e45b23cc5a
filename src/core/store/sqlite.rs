//! The embedded backend: one SQLite file beside the service.
//!
//! - WAL with `synchronous=FULL`: a write has reached the disk when the call returns, so a job
//!   the member was told is queued survives a crash or a power cut.
//! - The file is created owner-only (0600) before SQLite opens it: it holds interaction tokens.
//!   SQLite gives its `-wal` and `-shm` files the mode of the database file.
//! - Transactions start `IMMEDIATE` (the write lock is taken up front), so two connections never
//!   deadlock upgrading a read to a write; `busy_timeout` lets the second one wait.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, TransactionBehavior};

use super::migrations::MIGRATIONS;
use super::sql::{Dialect, Row, Sql, Value};
use super::{check_known_version, StoreError};

pub fn open(path: &Path, target: i64) -> Result<Connection, StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    create_private(path).map_err(io)?;
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrate(&mut conn, target, &path.display().to_string())?;
    Ok(conn)
}

/// Creates an empty, owner-only database file unless one exists (SQLite takes an empty file for
/// a new database). An existing file keeps the mode its operator chose.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn schema_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

/// Applies the missing migrations up to `target`, each in its own transaction.
fn migrate(conn: &mut Connection, target: i64, database: &str) -> Result<(), StoreError> {
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = schema_version(&tx)?;
        check_known_version(found, database)?;
        if found >= target {
            return Ok(());
        }
        tx.execute_batch(MIGRATIONS[found as usize].sqlite)?;
        tx.pragma_update(None, "user_version", found + 1)?;
        tx.commit()?;
        tracing::info!(version = found + 1, "database migrated");
    }
}

pub fn transaction<R>(
    conn: &mut Connection,
    f: impl FnOnce(&mut dyn Sql) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let out = f(&mut SqliteSql(&tx))?;
    tx.commit()?;
    Ok(out)
}

/// A connection or a transaction (which derefs to its connection).
pub struct SqliteSql<'a>(pub &'a Connection);

impl Sql for SqliteSql<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(args))? as u64)
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let width = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(match row.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Real(v) => Value::Real(v),
                    ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
                });
            }
            out.push(Row(values));
        }
        Ok(out)
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Owned(rusqlite::types::Value::Null),
            Value::Int(v) => ToSqlOutput::from(*v),
            Value::Real(v) => ToSqlOutput::from(*v),
            Value::Text(v) => ToSqlOutput::from(v.as_str()),
            Value::Bytes(v) => ToSqlOutput::from(v.as_slice()),
            Value::Bool(v) => ToSqlOutput::from(*v),
        })
    }
}
