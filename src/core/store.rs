//! The one place that owns the database: jobs (the full request, so a restart can run them
//! again), per-guild setting overrides and their audit log, in SQLite.
//!
//! - WAL with `synchronous=FULL`: a write has reached the disk when the call returns, so a job
//!   the member was told is queued survives a crash or a power cut.
//! - Schema migrations are numbered in code and tracked in `PRAGMA user_version`; `open` applies
//!   the missing ones, each in its own transaction, and refuses a database from a newer build.
//! - The input image of an image-to-video job is a BLOB in `job_images`, written in the same
//!   transaction as its job (no file can go missing or leak), and read only when the job runs.
//! - Discord ids (u64 snowflakes, below 2^63) are stored as INTEGER.
//!
//! `Store` is synchronous; async code goes through [`StoreHandle`], which runs each call on
//! tokio's blocking pool so that a slow disk never holds up the runtime.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};
use thiserror::Error;

use super::jobs::{from_millis, to_millis, JobId, JobRecord, JobSpec, JobState, Origin};
use super::settings::AuditEntry;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored job is unreadable: {0}")]
    Corrupt(String),
    #[error("the database {path} has schema version {found}, newer than this build's {known}: upgrade floor33")]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("the database task stopped: {0}")]
    Task(String),
}

/// The migrations, in order; migration `i` brings the schema to version `i + 1`. Never edit one
/// that has shipped: add another.
const MIGRATIONS: &[&str] = &[
    // 1: jobs and their input images.
    "CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        state TEXT NOT NULL,
        guild_id INTEGER,
        channel_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        round INTEGER NOT NULL,
        spec TEXT NOT NULL,
        origin TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        error TEXT,
        result_path TEXT,
        steps_run INTEGER,
        prompt_truncated INTEGER NOT NULL DEFAULT 0,
        delivered INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_by_state ON jobs(state);
    CREATE INDEX jobs_by_guild ON jobs(guild_id, state);
    CREATE TABLE job_images (
        job_id INTEGER PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
        bytes BLOB NOT NULL
    );",
    // 2: guild settings and the audit log of their changes.
    "CREATE TABLE guild_settings (
        guild_id INTEGER NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (guild_id, key)
    );
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        guild_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        at INTEGER NOT NULL,
        action TEXT NOT NULL,
        key TEXT NOT NULL,
        old TEXT NOT NULL,
        new TEXT NOT NULL
    );
    CREATE INDEX audit_by_guild ON audit_log(guild_id, at);",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

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
}

pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_at(path, SCHEMA_VERSION)
    }

    fn open_at(path: &Path, target: i64) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Corrupt(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: path.to_path_buf(),
                found,
                known: SCHEMA_VERSION,
            });
        }
        for version in found..target {
            let tx = conn.transaction()?;
            tx.execute_batch(MIGRATIONS[version as usize])?;
            tx.pragma_update(None, "user_version", version + 1)?;
            tx.commit()?;
            tracing::info!(version = version + 1, "database migrated");
        }
        Ok(Store { conn })
    }

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Writes a new queued job (and its image) and returns its id.
    pub fn insert_job(
        &mut self,
        spec: &JobSpec,
        origin: &Origin,
        round: u64,
        now: SystemTime,
    ) -> Result<JobId, StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO jobs (state, guild_id, channel_id, user_id, round, spec, origin, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                JobState::Queued.name(),
                origin.guild_id.map(|g| g as i64),
                origin.channel_id as i64,
                origin.user_id as i64,
                round as i64,
                to_json(spec)?,
                to_json(origin)?,
                to_millis(now),
            ],
        )?;
        let id = tx.last_insert_rowid();
        if let Some(image) = &spec.image {
            tx.execute(
                "INSERT INTO job_images (job_id, bytes) VALUES (?1, ?2)",
                params![id, image],
            )?;
        }
        tx.commit()?;
        Ok(JobId(id))
    }

    pub fn job(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        self.conn
            .query_row(&select_jobs("WHERE id = ?1"), [id.0], read_job)
            .optional()?
            .transpose()
    }

    /// The input image of an image-to-video job.
    pub fn job_image(&self, id: JobId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT bytes FROM job_images WHERE job_id = ?1",
                [id.0],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn jobs_in_state(&self, state: JobState) -> Result<Vec<JobRecord>, StoreError> {
        self.query_jobs("WHERE state = ?1 ORDER BY id", [state.name()])
    }

    pub fn mark_running(&mut self, id: JobId, now: SystemTime) -> Result<(), StoreError> {
        self.update(
            id,
            "state = 'running', started_at = ?2",
            params![id.0, to_millis(now)],
        )
    }

    /// Back to waiting (an interrupted run): keeps its round, so its place at the head.
    pub fn mark_queued(&mut self, id: JobId) -> Result<(), StoreError> {
        self.update(id, "state = 'queued', started_at = NULL", params![id.0])
    }

    pub fn mark_done(
        &mut self,
        id: JobId,
        now: SystemTime,
        result_path: &Path,
        steps_run: usize,
        prompt_truncated: bool,
    ) -> Result<(), StoreError> {
        self.update(
            id,
            "state = 'done', finished_at = ?2, result_path = ?3, steps_run = ?4, prompt_truncated = ?5, error = NULL",
            params![
                id.0,
                to_millis(now),
                result_path.to_string_lossy(),
                steps_run as i64,
                prompt_truncated
            ],
        )
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
            params![id.0, state.name(), to_millis(now), reason],
        )
    }

    /// The outcome reached the member (or delivery was given up, with `error`).
    pub fn mark_delivered(&mut self, id: JobId, error: Option<&str>) -> Result<(), StoreError> {
        match error {
            None => self.update(id, "delivered = 1", params![id.0]),
            Some(e) => self.update(
                id,
                "delivered = 1, error = COALESCE(error || '; ', '') || ?2",
                params![id.0, format!("delivery failed: {e}")],
            ),
        }
    }

    pub fn set_expanded_prompt(
        &mut self,
        id: JobId,
        expanded: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut job = self.job(id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        job.spec.expanded_prompt = expanded.map(str::to_string);
        self.update(id, "spec = ?2", params![id.0, to_json(&job.spec)?])
    }

    /// Records the message that shows the job (the adapter learns it after its first reply).
    pub fn set_message_id(&mut self, id: JobId, message_id: u64) -> Result<(), StoreError> {
        let mut job = self.job(id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        job.origin.message_id = Some(message_id);
        self.update(id, "origin = ?2", params![id.0, to_json(&job.origin)?])
    }

    /// Start-up: jobs left running are queued again; returns what must be scheduled and what
    /// must still be delivered.
    pub fn recover(&mut self) -> Result<Recovered, StoreError> {
        let tx = self.conn.transaction()?;
        let interrupted: Vec<JobId> = {
            let mut stmt = tx.prepare("SELECT id FROM jobs WHERE state = 'running' ORDER BY id")?;
            let ids = stmt.query_map([], |r| r.get(0))?;
            ids.map(|id| id.map(JobId)).collect::<Result<_, _>>()?
        };
        tx.execute(
            "UPDATE jobs SET state = 'queued', started_at = NULL WHERE state = 'running'",
            [],
        )?;
        tx.commit()?;
        Ok(Recovered {
            queued: self.jobs_in_state(JobState::Queued)?,
            interrupted,
            undelivered: self.undelivered()?,
        })
    }

    /// Finished jobs not yet delivered, oldest first.
    pub fn undelivered(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.query_jobs(
            "WHERE state IN ('done', 'failed', 'cancelled') AND delivered = 0 ORDER BY id",
            [],
        )
    }

    /// The highest round of a job that has started: where fair queueing resumes.
    pub fn last_started_round(&self) -> Result<u64, StoreError> {
        let round: Option<i64> = self.conn.query_row(
            "SELECT MAX(round) FROM jobs WHERE started_at IS NOT NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(round.unwrap_or(0) as u64)
    }

    pub fn counts(&self, guild: Option<u64>, now: SystemTime) -> Result<JobCounts, StoreError> {
        let filter = if guild.is_some() {
            "WHERE guild_id = ?1"
        } else {
            "WHERE ?1 IS NULL"
        };
        let g = guild.map(|g| g as i64);
        let mut counts = JobCounts::default();
        let mut stmt = self.conn.prepare(&format!(
            "SELECT state, COUNT(*) FROM jobs {filter} GROUP BY state"
        ))?;
        let rows = stmt.query_map([g], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (state, n) = row?;
            let n = n as u64;
            match JobState::parse(&state) {
                Some(JobState::Queued) => counts.queued = n,
                Some(JobState::Running) => counts.running = n,
                Some(JobState::Done) => counts.done = n,
                Some(JobState::Failed) => counts.failed = n,
                Some(JobState::Cancelled) => counts.cancelled = n,
                None => {}
            }
        }
        let (mean, last_day): (Option<f64>, i64) = self.conn.query_row(
            &format!(
                "SELECT AVG(finished_at - started_at), COUNT(CASE WHEN finished_at >= ?2 THEN 1 END)
                 FROM jobs {filter} AND state = 'done'"
            ),
            params![g, to_millis(now) - 86_400_000],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        counts.mean_run_time = mean.map(|ms| Duration::from_millis(ms.max(0.0) as u64));
        counts.done_last_day = last_day as u64;
        Ok(counts)
    }

    /// The guild's setting overrides, as `(key, value)`.
    pub fn setting_overrides(&self, guild: u64) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, value FROM guild_settings WHERE guild_id = ?1 ORDER BY key")?;
        let rows = stmt.query_map([guild as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores an override (`Some`) or removes it (`None`, a reset) and logs the change, in one
    /// transaction.
    pub fn change_setting(
        &mut self,
        entry: &AuditEntry,
        value: Option<&str>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        match value {
            Some(v) => tx.execute(
                "INSERT INTO guild_settings (guild_id, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (guild_id, key) DO UPDATE SET value = excluded.value",
                params![entry.guild_id as i64, entry.key, v],
            )?,
            None => tx.execute(
                "DELETE FROM guild_settings WHERE guild_id = ?1 AND key = ?2",
                params![entry.guild_id as i64, entry.key],
            )?,
        };
        audit(&tx, entry)?;
        tx.commit()?;
        Ok(())
    }

    /// The guild's audit log, newest first.
    pub fn audit_log(&self, guild: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT guild_id, user_id, at, action, key, old, new FROM audit_log
             WHERE guild_id = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![guild as i64, limit as i64], |r| {
            Ok(AuditEntry {
                guild_id: r.get::<_, i64>(0)? as u64,
                user_id: r.get::<_, i64>(1)? as u64,
                at: from_millis(r.get(2)?),
                action: r.get(3)?,
                key: r.get(4)?,
                old: r.get(5)?,
                new: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn update(
        &mut self,
        id: JobId,
        set: &str,
        params: impl rusqlite::Params,
    ) -> Result<(), StoreError> {
        let n = self
            .conn
            .execute(&format!("UPDATE jobs SET {set} WHERE id = ?1"), params)?;
        if n == 0 {
            return Err(StoreError::Corrupt(format!("job {id} does not exist")));
        }
        Ok(())
    }

    fn query_jobs(
        &self,
        tail: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let mut stmt = self.conn.prepare(&select_jobs(tail))?;
        let rows = stmt.query_map(params, read_job)?;
        rows.map(|r| r.map_err(StoreError::from).and_then(|j| j))
            .collect()
    }
}

fn audit(tx: &Transaction, e: &AuditEntry) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO audit_log (guild_id, user_id, at, action, key, old, new)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            e.guild_id as i64,
            e.user_id as i64,
            to_millis(e.at),
            e.action,
            e.key,
            e.old,
            e.new
        ],
    )?;
    Ok(())
}

fn select_jobs(tail: &str) -> String {
    format!(
        "SELECT id, state, round, spec, origin, created_at, started_at, finished_at, error,
                result_path, steps_run, prompt_truncated, delivered
         FROM jobs {tail}"
    )
}

/// A row to a record; the inner error is a row whose JSON or state no longer parses.
fn read_job(r: &Row) -> rusqlite::Result<Result<JobRecord, StoreError>> {
    let id = JobId(r.get(0)?);
    let state: String = r.get(1)?;
    let spec: String = r.get(3)?;
    let origin: String = r.get(4)?;
    let record = (|| {
        Ok(JobRecord {
            id,
            spec: from_json(&spec)?,
            origin: from_json(&origin)?,
            state: JobState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("job {id} has state `{state}`")))?,
            round: r.get::<_, i64>(2)? as u64,
            created_at: from_millis(r.get(5)?),
            started_at: r.get::<_, Option<i64>>(6)?.map(from_millis),
            finished_at: r.get::<_, Option<i64>>(7)?.map(from_millis),
            error: r.get(8)?,
            result_path: r.get::<_, Option<String>>(9)?.map(PathBuf::from),
            steps_run: r.get::<_, Option<i64>>(10)?.map(|n| n as usize),
            prompt_truncated: r.get(11)?,
            delivered: r.get(12)?,
        })
    })();
    Ok(record)
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
    pub async fn open(path: PathBuf) -> Result<Self, StoreError> {
        let store = tokio::task::spawn_blocking(move || Store::open(&path))
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
            // A panic inside an earlier call poisons the lock but leaves SQLite consistent.
            let mut store = inner.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut store)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::jobs::{JobKind, VideoShape};
    use crate::models::config::Variant;

    pub(crate) fn spec(prompt: &str) -> JobSpec {
        JobSpec {
            kind: JobKind::TextToVideo,
            variant: Variant::Tiny,
            prompt: prompt.into(),
            expanded_prompt: None,
            negative: Some("blurry".into()),
            seed: 42,
            steps: 2,
            cfg: 7.5,
            eta: 1.0,
            fps: 8,
            expand: false,
            shape: Some(VideoShape {
                height: 32,
                width: 48,
                frames: 4,
            }),
            image_fit: Default::default(),
            image: None,
        }
    }

    pub(crate) fn origin(user: u64) -> Origin {
        Origin {
            guild_id: Some(7),
            channel_id: 8,
            user_id: user,
            interaction_id: 9,
            interaction_token: "tok".into(),
            application_id: 10,
            message_id: None,
            attachment_size_limit: None,
        }
    }

    #[test]
    fn job_round_trips_with_image_and_state_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("floor33.db")).unwrap();
        let mut s = spec("a cat");
        s.kind = JobKind::ImageToVideo;
        s.image = Some(vec![1, 2, 3]);
        let now = from_millis(1_700_000_000_000);
        let id = store.insert_job(&s, &origin(1), 3, now).unwrap();
        let job = store.job(id).unwrap().unwrap();
        assert_eq!(job.state, JobState::Queued);
        assert_eq!(job.round, 3);
        assert_eq!(job.created_at, now);
        assert_eq!(
            job.spec,
            JobSpec {
                image: None,
                ..s.clone()
            }
        );
        assert_eq!(job.origin, origin(1));
        assert_eq!(store.job_image(id).unwrap(), Some(vec![1, 2, 3]));

        store.set_expanded_prompt(id, Some("a fluffy cat")).unwrap();
        store.set_message_id(id, 99).unwrap();
        store.mark_running(id, now).unwrap();
        let later = now + Duration::from_secs(5);
        store
            .mark_done(id, later, Path::new("/r/1.mp4"), 2, true)
            .unwrap();
        let job = store.job(id).unwrap().unwrap();
        assert_eq!(job.spec.expanded_prompt.as_deref(), Some("a fluffy cat"));
        assert_eq!(job.origin.message_id, Some(99));
        assert_eq!(job.state, JobState::Done);
        assert_eq!(job.run_time(), Some(Duration::from_secs(5)));
        assert_eq!(job.result_path.as_deref(), Some(Path::new("/r/1.mp4")));
        assert!(job.prompt_truncated && !job.delivered);
        assert_eq!(store.undelivered().unwrap().len(), 1);
        store.mark_delivered(id, None).unwrap();
        assert!(store.undelivered().unwrap().is_empty());
        assert!(store.job(JobId(999)).unwrap().is_none());
    }

    #[test]
    fn origin_upload_limit_is_kept_and_old_rows_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("floor33.db")).unwrap();
        let now = SystemTime::now();
        let mut o = origin(1);
        o.attachment_size_limit = Some(25 * 1024 * 1024);
        let id = store.insert_job(&spec("a"), &o, 0, now).unwrap();
        store.set_message_id(id, 5).unwrap();
        let job = store.job(id).unwrap().unwrap();
        assert_eq!(job.origin.attachment_size_limit, Some(25 * 1024 * 1024));
        assert_eq!(job.origin.message_id, Some(5));

        // A row written before the field existed.
        let old = store.insert_job(&spec("b"), &origin(2), 0, now).unwrap();
        let legacy = r#"{"guild_id":7,"channel_id":8,"user_id":2,"interaction_id":9,
            "interaction_token":"tok","application_id":10,"message_id":null}"#;
        store
            .conn
            .execute(
                "UPDATE jobs SET origin = ?2 WHERE id = ?1",
                params![old.0, legacy],
            )
            .unwrap();
        let job = store.job(old).unwrap().unwrap();
        assert_eq!(job.origin, origin(2));
        assert_eq!(job.origin.attachment_size_limit, None);
    }

    #[test]
    fn recover_requeues_running_jobs_and_finds_undelivered_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("floor33.db");
        let now = SystemTime::now();
        {
            let mut store = Store::open(&path).unwrap();
            for (i, prompt) in ["a", "b", "c", "d"].iter().enumerate() {
                store
                    .insert_job(&spec(prompt), &origin(1), i as u64 + 1, now)
                    .unwrap();
            }
            store.mark_running(JobId(1), now).unwrap();
            store
                .mark_done(JobId(1), now, Path::new("x.mp4"), 2, false)
                .unwrap();
            store.mark_running(JobId(2), now).unwrap();
            store
                .mark_ended(
                    JobId(4),
                    JobState::Cancelled,
                    now,
                    "cancelled by its author",
                )
                .unwrap();
            store.mark_delivered(JobId(4), None).unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        let r = store.recover().unwrap();
        assert_eq!(r.interrupted, vec![JobId(2)]);
        assert_eq!(
            r.queued.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![JobId(2), JobId(3)]
        );
        assert_eq!(
            r.undelivered.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![JobId(1)]
        );
        assert_eq!(store.last_started_round().unwrap(), 1);
        let counts = store.counts(Some(7), now).unwrap();
        assert_eq!((counts.queued, counts.done, counts.cancelled), (2, 1, 1));
        assert_eq!(counts.done_last_day, 1);
        assert_eq!(store.counts(Some(8), now).unwrap(), JobCounts::default());
    }

    #[test]
    fn migrations_upgrade_an_old_database_and_refuse_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("floor33.db");
        {
            let mut old = Store::open_at(&path, 1).unwrap();
            assert_eq!(old.schema_version().unwrap(), 1);
            old.insert_job(&spec("kept"), &origin(1), 1, SystemTime::now())
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(store.job(JobId(1)).unwrap().unwrap().spec.prompt, "kept");
        assert!(store.setting_overrides(1).unwrap().is_empty());
        let journal: String = store
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        store
            .conn
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(store);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::NewerSchema { .. })
        ));
    }

    #[test]
    fn settings_changes_are_stored_with_an_audit_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db.sqlite")).unwrap();
        let entry = |action: &str, old: &str, new: &str| AuditEntry {
            guild_id: 5,
            user_id: 6,
            at: from_millis(1000),
            action: action.into(),
            key: "max_steps".into(),
            old: old.into(),
            new: new.into(),
        };
        store
            .change_setting(&entry("set", "100", "60"), Some("60"))
            .unwrap();
        store
            .change_setting(&entry("set", "60", "70"), Some("70"))
            .unwrap();
        assert_eq!(
            store.setting_overrides(5).unwrap(),
            vec![("max_steps".into(), "70".into())]
        );
        store
            .change_setting(&entry("reset", "70", "100"), None)
            .unwrap();
        assert!(store.setting_overrides(5).unwrap().is_empty());
        let log = store.audit_log(5, 10).unwrap();
        assert_eq!(log.len(), 3);
        assert_eq!(log[0], entry("reset", "70", "100"));
    }
}
