//! The shared backend: a PostgreSQL database that a gateway and any number of workers use at
//! once.
//!
//! One synchronous `postgres::Client` per [`Store`](super::Store). The `postgres` crate is the
//! blocking face of `tokio-postgres` (same maintainers, same protocol code): each call drives the
//! connection on a small runtime of its own. That matches how the store is already used — every
//! call runs on tokio's blocking pool through `StoreHandle::call`, one call at a time per store —
//! so both backends sit behind the same synchronous methods and no call site changes. An async
//! pool would only pay off with many concurrent statements per process; a gateway or a worker
//! issues a handful per job, and more throughput is one more `Store` (connection), not a pool.
//! Calling it from inside an async task (not the blocking pool) would panic in tokio: always go
//! through `StoreHandle`.
//!
//! Concurrency between processes: migrations take a transaction-scoped advisory lock, so two
//! processes starting together apply each step once. Connections are plain TCP (`NoTls`); a URL
//! asking for `sslmode=require` is refused by the driver with a clear error.

use std::time::Duration;

use bytes::BytesMut;
use postgres::types::{IsNull, ToSql, Type};
use postgres::{Client, GenericClient, NoTls};

use super::migrations::MIGRATIONS;
use super::sql::{dollar_placeholders, Dialect, Row, Sql, Value};
use super::{check_known_version, StoreError};

/// Key of the advisory lock that serialises migrations ("floor33" in ASCII).
const MIGRATION_LOCK: i64 = 0x0066_6c6f_6f72_3333;

/// Longest wait for the server when the URL names no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn connect(url: &str) -> Result<Client, StoreError> {
    let mut config: postgres::Config = url.parse().map_err(|e| StoreError::Connect {
        database: redact_url(url),
        reason: format!("not a PostgreSQL URL: {e}"),
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.connect(NoTls).map_err(|e| StoreError::Connect {
        database: redact_url(url),
        reason: message(&e),
    })
}

pub fn open(url: &str, target: i64) -> Result<StoreClient, StoreError> {
    let mut client = connect(url)?;
    migrate(&mut client, target, &redact_url(url))?;
    Ok(StoreClient(Some(client)))
}

/// A new connection to a database that [`open`] already brought up to date.
pub fn reconnect(url: &str) -> Result<StoreClient, StoreError> {
    Ok(StoreClient(Some(connect(url)?)))
}

/// Whether `e` means the connection is gone rather than that a statement was refused: the
/// socket failed or closed, or the server ended the session (SQLSTATE class 08, connection
/// exception; 57P01-57P03, shut down or restarting).
pub fn connection_lost(e: &postgres::Error) -> bool {
    let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
    let code = e.code().map(|c| c.code()).unwrap_or_default();
    e.is_closed() || io || code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
}

/// The store's client, safe to drop anywhere. Closing a `postgres::Client` runs its own small
/// runtime, which tokio forbids on an async worker thread; the last `StoreHandle` may well go
/// there, so inside a runtime the client is closed on a thread of its own.
pub struct StoreClient(Option<Client>);

impl std::ops::Deref for StoreClient {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.0.as_ref().expect("the client is present until drop")
    }
}

impl std::ops::DerefMut for StoreClient {
    fn deref_mut(&mut self) -> &mut Client {
        self.0.as_mut().expect("the client is present until drop")
    }
}

impl Drop for StoreClient {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                std::thread::spawn(move || drop(client));
            }
        }
    }
}

pub fn schema_version(client: &mut Client) -> Result<i64, StoreError> {
    let exists: Option<String> = client
        .query_one("SELECT to_regclass('floor33_schema_version')::text", &[])?
        .get(0);
    if exists.is_none() {
        return Ok(0);
    }
    read_version(client)
}

fn read_version(client: &mut impl GenericClient) -> Result<i64, StoreError> {
    let rows = client.query("SELECT version FROM floor33_schema_version", &[])?;
    match rows.as_slice() {
        [] => Ok(0),
        [row] => Ok(row.get(0)),
        _ => Err(StoreError::Corrupt(
            "floor33_schema_version holds more than one row".into(),
        )),
    }
}

/// Applies the missing migrations up to `target`, each in its own transaction under the
/// migration lock (another process may be migrating the same database right now).
fn migrate(client: &mut Client, target: i64, database: &str) -> Result<(), StoreError> {
    loop {
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS floor33_schema_version (version BIGINT NOT NULL)",
        )?;
        let found = read_version(&mut tx)?;
        check_known_version(found, database)?;
        if found >= target {
            tx.commit()?;
            return Ok(());
        }
        tx.batch_execute(MIGRATIONS[found as usize].postgres)?;
        tx.execute("DELETE FROM floor33_schema_version", &[])?;
        tx.execute(
            "INSERT INTO floor33_schema_version (version) VALUES ($1)",
            &[&(found + 1)],
        )?;
        tx.commit()?;
        tracing::info!(version = found + 1, "database migrated");
    }
}

pub fn transaction<R>(
    client: &mut Client,
    f: impl FnOnce(&mut dyn Sql) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    let mut tx = client.transaction()?;
    let out = f(&mut PgSql(&mut tx))?;
    tx.commit()?;
    Ok(out)
}

/// A client or a transaction.
pub struct PgSql<'a, C: GenericClient>(pub &'a mut C);

impl<C: GenericClient> Sql for PgSql<'_, C> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as _).collect();
        Ok(self.0.execute(dollar_placeholders(sql).as_str(), &params)?)
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as _).collect();
        let rows = self.0.query(dollar_placeholders(sql).as_str(), &params)?;
        rows.iter().map(read_row).collect()
    }
}

fn read_row(row: &postgres::Row) -> Result<Row, StoreError> {
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)?.map(Value::Bool)
        } else if *ty == Type::FLOAT8 {
            row.try_get::<_, Option<f64>>(i)?.map(Value::Real)
        } else if *ty == Type::FLOAT4 {
            row.try_get::<_, Option<f32>>(i)?
                .map(|v| Value::Real(v.into()))
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Bytes)
        } else if [Type::TEXT, Type::VARCHAR, Type::NAME, Type::BPCHAR].contains(ty) {
            row.try_get::<_, Option<String>>(i)?.map(Value::Text)
        } else {
            return Err(StoreError::Corrupt(format!(
                "column `{}` has type {ty}, which the store does not read",
                column.name()
            )));
        };
        values.push(value.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

/// Binds to whatever type PostgreSQL inferred for the parameter, converting integers to the
/// column's width with a range check.
impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Value::Int(v) if *ty == Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
            Value::Int(v) if *ty == Type::FLOAT8 => (*v as f64).to_sql(ty, out),
            Value::Int(v) => v.to_sql(ty, out),
            Value::Real(v) => v.to_sql(ty, out),
            Value::Text(v) => v.as_str().to_sql(ty, out),
            Value::Bytes(v) => v.as_slice().to_sql(ty, out),
            Value::Bool(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// The driver's error with the server's own message when there is one.
pub fn message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

/// A PostgreSQL URL fit for logs and messages: the password (in the user part or as a
/// `password=` parameter) is replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme, rest),
        None => return "<not a URL>".into(),
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _password)) => format!("{name}:***@{host}"),
            None => format!("{user}@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_for_display() {
        assert_eq!(
            redact_url("postgres://floor33:s3cret@db.example:5432/floor33"),
            "postgres://floor33:***@db.example:5432/floor33"
        );
        assert_eq!(
            redact_url("postgresql://db/x?sslmode=disable&password=s3cret"),
            "postgresql://db/x?sslmode=disable&password=***"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/postgres"),
            "postgres://postgres@127.0.0.1/postgres"
        );
        assert_eq!(redact_url("s3cret"), "<not a URL>");
    }
}
