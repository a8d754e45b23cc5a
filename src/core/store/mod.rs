//! The one place that owns the database: jobs (the full request, so a restart can run them
//! again), per-guild setting overrides and their audit log.
//!
//! Two backends behind one set of methods: an embedded SQLite file (the default: `database.path`)
//! or a PostgreSQL server (`database.url = "postgres://…"`) that several processes share. The
//! queries are written once against [`sql::Sql`]; [`sqlite`] and [`postgres`] say how each
//! backend connects, binds and reads, and [`migrations`] holds the one numbered schema history.
//!
//! - Migrations are applied by `open`, each in its own transaction; a database from a newer
//!   build (or with an impossible version) is refused with a message.
//! - The input image of an image-to-video job lives in `job_images` (BLOB / BYTEA), written in
//!   the same transaction as its job (no file can go missing or leak), and read only when the
//!   job runs.
//! - Discord ids (u64 snowflakes, below 2^63) are stored as 64-bit integers.
//! - A job row that no longer reads (bad JSON, unknown state) stops nothing: `recover`
//!   quarantines it (state `failed`, the reason in `error`) and reports it; list queries skip it
//!   with a warning.
//!
//! `Store` is synchronous; async code goes through [`StoreHandle`], which runs each call on
//! tokio's blocking pool so that a slow disk or network never holds up the runtime.

pub mod claims;
mod cluster;
pub mod listen;
mod migrations;
mod postgres;
pub(crate) mod sql;
mod sqlite;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cluster;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use thiserror::Error;

use super::jobs::{from_millis, to_millis, JobId, JobRecord, JobSpec, JobState, Origin};
use super::settings::AuditEntry;
pub use cluster::{valid_worker_id, JOBS_CHANNEL};
pub use migrations::SCHEMA_VERSION;
pub use sql::Dialect;
use sql::{args, Row, Sql};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database: {}", postgres::message(.0))]
    Postgres(#[from] ::postgres::Error),
    #[error("cannot connect to the database {database}: {reason}")]
    Connect { database: String, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stored job is unreadable: {0}")]
    Corrupt(String),
    #[error("job {0} does not exist")]
    NoSuchJob(JobId),
    #[error("the database {database} has schema version {found}, newer than this build's {known}: upgrade floor33")]
    NewerSchema {
        database: String,
        found: i64,
        known: i64,
    },
    #[error("the database {database} has schema version {found}, which no floor33 build writes: restore a backup or point database.path/url elsewhere")]
    UnknownSchema { database: String, found: i64 },
    #[error("the database task stopped: {0}")]
    Task(String),
    #[error("this worker no longer holds the lease on job {0}")]
    LeaseLost(JobId),
}

/// Refuses a schema version this build cannot work with.
fn check_known_version(found: i64, database: &str) -> Result<(), StoreError> {
    if found < 0 {
        return Err(StoreError::UnknownSchema {
            database: database.to_string(),
            found,
        });
    }
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            database: database.to_string(),
            found,
            known: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Where the database is: a SQLite file or a PostgreSQL URL. `Display` and `Debug` never show
/// a password.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Location {
    /// `url` (a `postgres://` or `postgresql://` URL) wins over `path`.
    pub fn new(path: &Path, url: Option<&str>) -> Location {
        match url {
            Some(url) => Location::Postgres(url.to_string()),
            None => Location::Sqlite(path.to_path_buf()),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => f.write_str(&postgres::redact_url(url)),
        }
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Location({self})")
    }
}

impl From<PathBuf> for Location {
    fn from(path: PathBuf) -> Self {
        Location::Sqlite(path)
    }
}

impl From<&Path> for Location {
    fn from(path: &Path) -> Self {
        Location::Sqlite(path.to_path_buf())
    }
}

impl From<&PathBuf> for Location {
    fn from(path: &PathBuf) -> Self {
        Location::Sqlite(path.clone())
    }
}

/// Checks a `database.url` without connecting; the message never holds the password.
pub fn check_postgres_url(url: &str) -> Result<(), String> {
    let shown = postgres::redact_url(url);
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!(
            "{shown} is not a postgres:// URL (write postgres://user@host:5432/dbname, or leave \
             `url` out to use the SQLite file at `database.path`)"
        ));
    }
    url.parse::<::postgres::Config>()
        .map_err(|e| format!("{shown} does not read as a PostgreSQL URL: {e}"))?;
    Ok(())
}

/// Counts for `/stats`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobCounts {
    pub queued: u64,
    pub running: u64,
    pub done: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Mean run time of done jobs.
    pub mean_run_time: Option<Duration>,
    /// Done jobs finished in the last 24 hours.
    pub done_last_day: u64,
}

/// What start-up recovery found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovered {
    /// Waiting jobs (interrupted runs included), to go back into the scheduler.
    pub queued: Vec<JobRecord>,
    /// Jobs that were running when the process stopped; now queued again.
    pub interrupted: Vec<JobId>,
    /// Finished jobs whose outcome never reached the member.
    pub undelivered: Vec<JobRecord>,
    /// Rows that could not be read; they are now `failed` with the reason.
    pub quarantined: Vec<Quarantined>,
}

/// A job row that could not be read back. It stays undelivered while its origin reads, so the
/// service can tell the member (then `mark_delivered`); without an origin nobody can be told and
/// it is marked delivered at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantined {
    pub id: JobId,
    pub reason: String,
    pub origin: Option<Origin>,
}

enum Backend {
    Sqlite(rusqlite::Connection),
    // RefCell: the driver needs `&mut` even to read, and read methods take `&self`.
    Postgres(RefCell<postgres::StoreClient>),
}

pub struct Store {
    backend: Backend,
    location: Location,
    /// A worker sharing the database: per-job writes apply only while this worker holds the
    /// job's lease (see [`Store::guard_writes_with_lease`]).
    lease_guard: Option<String>,
    /// `mark_done` also stores the MP4 until it is delivered (see
    /// [`Store::keep_videos_until_delivered`]).
    keep_videos: bool,
    /// A statement failed because the PostgreSQL connection is gone (see [`Store::revive`]).
    connection_lost: Cell<bool>,
}

impl Store {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub fn open(location: impl Into<Location>) -> Result<Store, StoreError> {
        Self::open_at(location.into(), SCHEMA_VERSION)
    }

    fn open_at(location: Location, target: i64) -> Result<Store, StoreError> {
        let backend = match &location {
            Location::Sqlite(path) => Backend::Sqlite(sqlite::open(path, target)?),
            Location::Postgres(url) => {
                Backend::Postgres(RefCell::new(postgres::open(url, target)?))
            }
        };
        Ok(Store {
            backend,
            location,
            lease_guard: None,
            keep_videos: false,
            connection_lost: Cell::new(false),
        })
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.revive()?;
        match &self.backend {
            Backend::Sqlite(conn) => sqlite::schema_version(conn),
            Backend::Postgres(client) => postgres::schema_version(&mut client.borrow_mut()),
        }
    }

    /// Opens a PostgreSQL connection again when the server closed it (a restart, a failover,
    /// an idle timeout): the statement that met the closed connection failed, the next ones
    /// work as soon as the server answers, without restarting the process.
    fn revive(&self) -> Result<(), StoreError> {
        if let (Backend::Postgres(client), Location::Postgres(url)) =
            (&self.backend, &self.location)
        {
            if self.connection_lost.get() || client.borrow().is_closed() {
                // Each caller logs its own failure: an outage would repeat this line per call.
                tracing::debug!("the database connection was closed; connecting again");
                *client.borrow_mut() = postgres::reconnect(url)?;
                self.connection_lost.set(false);
                tracing::info!("connected to the database again");
            }
        }
        Ok(())
    }

    /// Runs `f` outside a transaction (each statement commits on its own).
    fn with<R>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.revive()?;
        let result = match &self.backend {
            Backend::Sqlite(conn) => f(&mut sqlite::SqliteSql(conn)),
            Backend::Postgres(client) => f(&mut postgres::PgSql(&mut **client.borrow_mut())),
        };
        self.note_lost_connection(result)
    }

    /// Runs `f` in one transaction: all of it is written, or none.
    fn transaction<R>(
        &mut self,
        f: impl FnOnce(&mut dyn Sql) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.revive()?;
        let result = match &mut self.backend {
            Backend::Sqlite(conn) => sqlite::transaction(conn, f),
            Backend::Postgres(client) => postgres::transaction(&mut *client.get_mut(), f),
        };
        self.note_lost_connection(result)
    }

    /// Remembers an error that means the connection is gone, for [`Store::revive`]: the
    /// client itself may only notice on its next use.
    fn note_lost_connection<R>(&self, result: Result<R, StoreError>) -> Result<R, StoreError> {
        if let Err(StoreError::Postgres(e)) = &result {
            if postgres::connection_lost(e) {
                self.connection_lost.set(true);
            }
        }
        result
    }

    /// Writes a new queued job (and its image) and returns its id.
    pub fn insert_job(
        &mut self,
        spec: &JobSpec,
        origin: &Origin,
        round: u64,
        now: SystemTime,
    ) -> Result<JobId, StoreError> {
        let spec_json = to_json(spec)?;
        let origin_json = to_json(origin)?;
        self.transaction(|db| {
            let id = db
                .query_one(
                    "INSERT INTO jobs (state, guild_id, channel_id, user_id, round, spec, origin, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
                    args![
                        JobState::Queued.name(),
                        origin.guild_id.map(|g| g as i64),
                        origin.channel_id as i64,
                        origin.user_id as i64,
                        round as i64,
                        spec_json,
                        origin_json,
                        to_millis(now),
                    ],
                )?
                .int(0)?;
            if let Some(image) = &spec.image {
                db.execute(
                    "INSERT INTO job_images (job_id, bytes) VALUES (?1, ?2)",
                    args![id, image.as_slice()],
                )?;
            }
            Ok(JobId(id))
        })
    }

    /// The job, or an error if its row no longer reads.
    pub fn job(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        self.with(|db| {
            db.query_opt(&select_jobs("WHERE id = ?1"), args![id.0])?
                .map(|row| read_job(&row))
                .transpose()
        })
    }

    /// The input image of an image-to-video job.
    pub fn job_image(&self, id: JobId) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|db| {
            db.query_opt(
                "SELECT bytes FROM job_images WHERE job_id = ?1",
                args![id.0],
            )?
            .map(|row| row.bytes(0))
            .transpose()
        })
    }

    pub fn jobs_in_state(&self, state: JobState) -> Result<Vec<JobRecord>, StoreError> {
        self.query_jobs("WHERE state = ?1 ORDER BY id", args![state.name()])
    }

    pub fn mark_running(&mut self, id: JobId, now: SystemTime) -> Result<(), StoreError> {
        self.update(
            id,
            "state = 'running', started_at = ?2",
            args![id.0, to_millis(now)],
        )
    }

    /// Back to waiting (an interrupted run): keeps its round, so its place at the head.
    pub fn mark_queued(&mut self, id: JobId) -> Result<(), StoreError> {
        self.update(
            id,
            "state = 'queued', started_at = NULL, lease_owner = NULL, lease_expires_at = NULL",
            args![id.0],
        )
    }

    /// The job ended with its video at `result_path`. With
    /// [`Store::keep_videos_until_delivered`] the file's bytes are stored in the same
    /// transaction, so the job is never `done` without a video any worker can deliver.
    pub fn mark_done(
        &mut self,
        id: JobId,
        now: SystemTime,
        result_path: &Path,
        steps_run: usize,
        prompt_truncated: bool,
    ) -> Result<(), StoreError> {
        let set = "state = 'done', finished_at = ?2, result_path = ?3, steps_run = ?4, prompt_truncated = ?5, error = NULL";
        let args = args![
            id.0,
            to_millis(now),
            result_path.to_string_lossy().into_owned(),
            steps_run as i64,
            prompt_truncated
        ]
        .to_vec();
        if !self.keep_videos {
            return self.update(id, set, &args);
        }
        let mp4 = std::fs::read(result_path).map_err(|source| StoreError::Io {
            path: result_path.to_path_buf(),
            source,
        })?;
        let guard = self.guard_clause();
        self.transaction(|db| {
            update_in(db, &guard, id, set, &args)?;
            db.execute(
                "INSERT INTO job_videos (job_id, bytes) VALUES (?1, ?2)
                 ON CONFLICT (job_id) DO UPDATE SET bytes = excluded.bytes",
                args![id.0, mp4.as_slice()],
            )?;
            Ok(())
        })
    }

    /// From now on [`Store::mark_done`] keeps the MP4 in the database until the job is marked
    /// delivered: workers on several hosts write results to their own disks, and the worker
    /// that delivers a dead worker's job (see [`Store::claim_undelivered`]) cannot read those.
    pub fn keep_videos_until_delivered(&mut self) {
        self.keep_videos = true;
    }

    /// The MP4 kept for a finished job that is not delivered yet, if one was kept.
    pub fn job_video(&self, id: JobId) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|db| {
            db.query_opt(
                "SELECT bytes FROM job_videos WHERE job_id = ?1",
                args![id.0],
            )?
            .map(|row| row.bytes(0))
            .transpose()
        })
    }

    /// Ends a job without a video (`Failed` or `Cancelled`), with the reason in words.
    pub fn mark_ended(
        &mut self,
        id: JobId,
        state: JobState,
        now: SystemTime,
        reason: &str,
    ) -> Result<(), StoreError> {
        debug_assert!(matches!(state, JobState::Failed | JobState::Cancelled));
        self.update(
            id,
            "state = ?2, finished_at = ?3, error = ?4",
            args![id.0, state.name(), to_millis(now), reason],
        )
    }

    /// The outcome reached the member (or delivery was given up, with `error`); a kept MP4
    /// is dropped with it.
    pub fn mark_delivered(&mut self, id: JobId, error: Option<&str>) -> Result<(), StoreError> {
        let guard = self.guard_clause();
        self.transaction(|db| {
            match error {
                None => update_in(db, &guard, id, "delivered = TRUE", args![id.0])?,
                Some(e) => update_in(
                    db,
                    &guard,
                    id,
                    "delivered = TRUE, error = COALESCE(error || '; ', '') || ?2",
                    args![id.0, format!("delivery failed: {e}")],
                )?,
            }
            db.execute("DELETE FROM job_videos WHERE job_id = ?1", args![id.0])?;
            Ok(())
        })
    }

    pub fn set_expanded_prompt(
        &mut self,
        id: JobId,
        expanded: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut job = self.job(id)?.ok_or(StoreError::NoSuchJob(id))?;
        job.spec.expanded_prompt = expanded.map(str::to_string);
        self.update(id, "spec = ?2", args![id.0, to_json(&job.spec)?])
    }

    /// Records the message that shows the job (the adapter learns it after its first reply).
    pub fn set_message_id(&mut self, id: JobId, message_id: u64) -> Result<(), StoreError> {
        let mut job = self.job(id)?.ok_or(StoreError::NoSuchJob(id))?;
        job.origin.message_id = Some(message_id);
        self.update(id, "origin = ?2", args![id.0, to_json(&job.origin)?])
    }

    /// Start-up: jobs left running are queued again; returns what must be scheduled, what must
    /// still be delivered, and the rows that no longer read (now `failed`, see [`Quarantined`]).
    /// This is the single-process rule (whatever ran was ours); processes sharing a database
    /// take back only what a dead worker held, with [`Store::release_expired_leases`].
    pub fn recover(&mut self) -> Result<Recovered, StoreError> {
        let now = to_millis(SystemTime::now());
        self.transaction(|db| {
            let interrupted = db
                .query(
                    "SELECT id FROM jobs WHERE state = 'running' ORDER BY id",
                    &[],
                )?
                .iter()
                .map(|r| r.int(0).map(JobId))
                .collect::<Result<Vec<_>, _>>()?;
            db.execute(
                "UPDATE jobs SET state = 'queued', started_at = NULL, lease_owner = NULL,
                        lease_expires_at = NULL
                 WHERE state = 'running'",
                &[],
            )?;
            let mut recovered = Recovered {
                interrupted,
                ..Recovered::default()
            };
            let live = db.query(
                &select_jobs(
                    "WHERE state NOT IN ('done', 'failed', 'cancelled') OR delivered = FALSE
                     ORDER BY id",
                ),
                &[],
            )?;
            for row in live {
                match read_job(&row) {
                    Ok(job) if job.state == JobState::Queued => recovered.queued.push(job),
                    Ok(job) => recovered.undelivered.push(job),
                    Err(e) => recovered.quarantined.push(quarantine(db, &row, &e, now)?),
                }
            }
            Ok(recovered)
        })
    }

    /// Finished jobs not yet delivered, oldest first.
    pub fn undelivered(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.query_jobs(
            "WHERE state IN ('done', 'failed', 'cancelled') AND delivered = FALSE ORDER BY id",
            &[],
        )
    }

    /// The highest round of a job that has started: where fair queueing resumes.
    pub fn last_started_round(&self) -> Result<u64, StoreError> {
        // Rows a reader cannot trust (a negative round; in SQLite, text, which compares above
        // every integer) must not decide where fair queueing resumes, nor stop the start.
        let round = self.with(|db| {
            let row = db.query_one(
                "SELECT MAX(round) FROM jobs WHERE started_at IS NOT NULL
                     AND round >= 0 AND round <= 9223372036854775807",
                &[],
            )?;
            Ok(row.opt_int(0).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the last started round is unreadable; fairness resumes from 0");
                None
            }))
        })?;
        Ok(round.unwrap_or(0).max(0) as u64)
    }

    pub fn counts(&self, guild: Option<u64>, now: SystemTime) -> Result<JobCounts, StoreError> {
        let (filter, mut args) = match guild {
            Some(g) => ("guild_id = ?1", vec![sql::Value::Int(g as i64)]),
            None => ("TRUE", vec![]),
        };
        let by_state_sql =
            format!("SELECT state, COUNT(*) FROM jobs WHERE {filter} GROUP BY state");
        let by_state_args = args.clone();
        let cut_off = format!("?{}", args.len() + 1);
        args.push(sql::Value::Int(to_millis(now) - 86_400_000));
        let mut counts = JobCounts::default();
        self.with(|db| {
            let by_state = db.query(&by_state_sql, &by_state_args)?;
            for row in by_state {
                let n = row.int(1)? as u64;
                match JobState::parse(&row.text(0)?) {
                    Some(JobState::Queued) => counts.queued = n,
                    Some(JobState::Running) => counts.running = n,
                    Some(JobState::Done) => counts.done = n,
                    Some(JobState::Failed) => counts.failed = n,
                    Some(JobState::Cancelled) => counts.cancelled = n,
                    None => {}
                }
            }
            let row = db.query_one(
                &format!(
                    "SELECT CAST(AVG(finished_at - started_at) AS DOUBLE PRECISION),
                            COUNT(CASE WHEN finished_at >= {cut_off} THEN 1 END)
                     FROM jobs WHERE {filter} AND state = 'done'"
                ),
                &args,
            )?;
            counts.mean_run_time = row
                .opt_real(0)?
                .map(|ms| Duration::from_millis(ms.max(0.0) as u64));
            counts.done_last_day = row.int(1)? as u64;
            Ok(counts)
        })
    }

    /// The guild's setting overrides, as `(key, value)`.
    pub fn setting_overrides(&self, guild: u64) -> Result<Vec<(String, String)>, StoreError> {
        self.with(|db| {
            db.query(
                "SELECT key, value FROM guild_settings WHERE guild_id = ?1 ORDER BY key",
                args![guild as i64],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, r.text(1)?)))
            .collect()
        })
    }

    /// Stores an override (`Some`) or removes it (`None`, a reset) and logs the change, in one
    /// transaction.
    pub fn change_setting(
        &mut self,
        entry: &AuditEntry,
        value: Option<&str>,
    ) -> Result<(), StoreError> {
        self.transaction(|db| {
            match value {
                Some(v) => db.execute(
                    "INSERT INTO guild_settings (guild_id, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (guild_id, key) DO UPDATE SET value = excluded.value",
                    args![entry.guild_id as i64, entry.key.as_str(), v],
                )?,
                None => db.execute(
                    "DELETE FROM guild_settings WHERE guild_id = ?1 AND key = ?2",
                    args![entry.guild_id as i64, entry.key.as_str()],
                )?,
            };
            db.execute(
                "INSERT INTO audit_log (guild_id, user_id, at, action, key, old, new)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                args![
                    entry.guild_id as i64,
                    entry.user_id as i64,
                    to_millis(entry.at),
                    entry.action.as_str(),
                    entry.key.as_str(),
                    entry.old.as_str(),
                    entry.new.as_str()
                ],
            )?;
            Ok(())
        })
    }

    /// The guild's audit log, newest first.
    pub fn audit_log(&self, guild: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.with(|db| {
            db.query(
                "SELECT guild_id, user_id, at, action, key, old, new FROM audit_log
                 WHERE guild_id = ?1 ORDER BY id DESC LIMIT ?2",
                args![guild as i64, limit as i64],
            )?
            .iter()
            .map(|r| {
                Ok(AuditEntry {
                    guild_id: r.int(0)? as u64,
                    user_id: r.int(1)? as u64,
                    at: from_millis(r.int(2)?),
                    action: r.text(3)?,
                    key: r.text(4)?,
                    old: r.text(5)?,
                    new: r.text(6)?,
                })
            })
            .collect()
        })
    }

    fn update(&mut self, id: JobId, set: &str, args: &[sql::Value]) -> Result<(), StoreError> {
        let guard = self.guard_clause();
        self.with(|db| update_in(db, &guard, id, set, args))
    }

    /// The condition that limits a lease-guarded store's writes to its own jobs. The worker id
    /// is ours (see `cluster::worker_id`: letters, digits, `-`, `.`), so it can stand in the
    /// statement without shifting the caller's numbered arguments.
    fn guard_clause(&self) -> String {
        match &self.lease_guard {
            Some(worker) => format!(" AND lease_owner = '{worker}'"),
            None => String::new(),
        }
    }

    /// The readable jobs a query selects; an unreadable row is skipped with a warning (recovery
    /// quarantines it), so one bad row hides only itself.
    fn query_jobs(&self, tail: &str, args: &[sql::Value]) -> Result<Vec<JobRecord>, StoreError> {
        let rows = self.with(|db| db.query(&select_jobs(tail), args))?;
        Ok(rows
            .iter()
            .filter_map(|row| match read_job(row) {
                Ok(job) => Some(job),
                Err(e) => {
                    tracing::warn!(job = ?row.int(0).ok(), error = %e, "skipping an unreadable job row");
                    None
                }
            })
            .collect())
    }
}

/// `UPDATE jobs SET {set}` on job `id` (`?1`) under `guard`; a row that `guard` excludes is
/// [`StoreError::LeaseLost`], a missing one [`StoreError::NoSuchJob`].
fn update_in(
    db: &mut dyn Sql,
    guard: &str,
    id: JobId,
    set: &str,
    args: &[sql::Value],
) -> Result<(), StoreError> {
    if db.execute(&format!("UPDATE jobs SET {set} WHERE id = ?1{guard}"), args)? == 1 {
        return Ok(());
    }
    let exists = db
        .query_opt("SELECT id FROM jobs WHERE id = ?1", args![id.0])?
        .is_some();
    Err(if exists && !guard.is_empty() {
        StoreError::LeaseLost(id)
    } else {
        StoreError::NoSuchJob(id)
    })
}

/// Marks an unreadable row `failed` with the reason and says what is known of it.
fn quarantine(
    db: &mut dyn Sql,
    row: &Row,
    error: &StoreError,
    now: i64,
) -> Result<Quarantined, StoreError> {
    let id = JobId(row.int(0)?);
    let reason = format!("the stored job could not be read ({error})");
    let origin = row
        .opt_text(4)
        .ok()
        .flatten()
        .and_then(|text| from_json::<Origin>(&text).ok());
    db.execute(
        "UPDATE jobs SET state = 'failed', finished_at = COALESCE(finished_at, ?2), error = ?3,
                delivered = ?4
         WHERE id = ?1",
        args![id.0, now, reason.as_str(), origin.is_none()],
    )?;
    Ok(Quarantined { id, reason, origin })
}

/// The columns [`read_job`] reads, in its order.
fn select_columns() -> &'static str {
    "id, state, round, spec, origin, created_at, started_at, finished_at, error, result_path,
     steps_run, prompt_truncated, delivered"
}

fn select_jobs(tail: &str) -> String {
    format!("SELECT {} FROM jobs {tail}", select_columns())
}

/// A row to a record; fails for a row whose JSON or state no longer parses.
fn read_job(r: &Row) -> Result<JobRecord, StoreError> {
    let id = JobId(r.int(0)?);
    let state = r.text(1)?;
    // A negative round would read as nearly 2^64 and overflow the scheduler's next round.
    let round = r.int(2)?;
    let round = u64::try_from(round)
        .map_err(|_| StoreError::Corrupt(format!("job {id} has round {round}")))?;
    Ok(JobRecord {
        id,
        spec: from_json(&r.text(3)?).map_err(|e| in_field(id, "spec", e))?,
        origin: from_json(&r.text(4)?).map_err(|e| in_field(id, "origin", e))?,
        state: JobState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("job {id} has state `{state}`")))?,
        round,
        created_at: from_millis(r.int(5)?),
        started_at: r.opt_int(6)?.map(from_millis),
        finished_at: r.opt_int(7)?.map(from_millis),
        error: r.opt_text(8)?,
        result_path: r.opt_text(9)?.map(PathBuf::from),
        steps_run: r.opt_int(10)?.map(|n| n as usize),
        prompt_truncated: r.bool(11)?,
        delivered: r.bool(12)?,
    })
}

fn in_field(id: JobId, field: &str, e: StoreError) -> StoreError {
    match e {
        StoreError::Corrupt(why) => StoreError::Corrupt(format!("job {id} {field}: {why}")),
        other => other,
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Shared, async access to the store: every call runs on the blocking pool.
#[derive(Clone)]
pub struct StoreHandle(Arc<Mutex<Store>>);

impl StoreHandle {
    pub fn new(store: Store) -> Self {
        StoreHandle(Arc::new(Mutex::new(store)))
    }

    /// Opens the store off the runtime.
    pub async fn open(location: impl Into<Location>) -> Result<Self, StoreError> {
        let location = location.into();
        let store = tokio::task::spawn_blocking(move || Store::open(location))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(StoreHandle::new(store))
    }

    /// Runs `f` with the store on the blocking pool.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let inner = self.0.clone();
        tokio::task::spawn_blocking(move || {
            // A panic inside an earlier call poisons the lock but leaves the database
            // consistent (a transaction commits whole or not at all).
            let mut store = inner.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut store)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

impl Store {
    /// The dialect of the store's backend.
    pub fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }
}
