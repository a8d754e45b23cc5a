//! What processes sharing one database need beyond the claims: a worker's writes guarded by
//! its lease, NOTIFY to wake workers and carry cancels, and the gateway's view of what still
//! waits.

use std::collections::HashSet;
use std::time::SystemTime;

use super::sql::{args, Dialect};
use super::{Store, StoreError};
use crate::core::jobs::{to_millis, JobId, JobState};

/// The NOTIFY channel of job events between a gateway and its workers.
pub const JOBS_CHANNEL: &str = "floor33_jobs";

/// The advisory-lock key of a lock name: FNV-1a, stable across builds and hosts, unlike std's
/// hasher.
pub(super) fn lock_key(name: &str) -> i64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    }) as i64
}

impl Store {
    /// From now on every per-job write (start, end, delivered, message id, …) applies only
    /// while `worker` holds the job's lease; otherwise it fails with
    /// [`StoreError::LeaseLost`] and changes nothing. So a worker whose lease ran out (and
    /// whose job another worker took) can neither end nor deliver it a second time.
    /// `worker` must be a [`valid_worker_id`].
    pub fn guard_writes_with_lease(&mut self, worker: &str) -> Result<(), StoreError> {
        if !valid_worker_id(worker) {
            return Err(StoreError::Corrupt(format!(
                "worker id {worker:?} must be 1-64 letters, digits, '-' or '.'"
            )));
        }
        self.lease_guard = Some(worker.to_string());
        Ok(())
    }

    /// Sends `payload` on [`JOBS_CHANNEL`] (PostgreSQL); nothing on SQLite, where one process
    /// does everything.
    pub fn notify(&self, payload: &str) -> Result<(), StoreError> {
        if self.dialect() == Dialect::Sqlite {
            return Ok(());
        }
        self.with(|db| {
            // `execute`: pg_notify returns `void`, which no row reader takes.
            db.execute(
                "SELECT pg_notify(?1, ?2)",
                args![JOBS_CHANNEL.to_string(), payload.to_string()],
            )
            .map(|_| ())
        })
    }

    /// Cancels a job only if it still waits (no worker took it): `true` when it did.
    pub fn cancel_if_queued(
        &mut self,
        id: JobId,
        now: SystemTime,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let n = self.with(|db| {
            db.execute(
                "UPDATE jobs SET state = ?2, finished_at = ?3, error = ?4
                 WHERE id = ?1 AND state = 'queued'",
                args![id.0, JobState::Cancelled.name(), to_millis(now), reason],
            )
        })?;
        Ok(n == 1)
    }

    /// Records that member `by` asked to stop the running job `id`; the worker that runs it
    /// reads it with [`Store::cancel_request`]. `false` when the job no longer runs.
    pub fn request_cancel(&mut self, id: JobId, by: u64) -> Result<bool, StoreError> {
        let n = self.with(|db| {
            db.execute(
                "UPDATE jobs SET cancel_requested_by = ?2 WHERE id = ?1 AND state = 'running'",
                args![id.0, by as i64],
            )
        })?;
        Ok(n == 1)
    }

    /// The member who asked to stop job `id`, if one did while it ran.
    pub fn cancel_request(&mut self, id: JobId) -> Result<Option<u64>, StoreError> {
        self.with(|db| {
            match db.query_opt(
                "SELECT cancel_requested_by FROM jobs WHERE id = ?1",
                args![id.0],
            )? {
                Some(row) => Ok(row.opt_int(0)?.map(|by| by as u64)),
                None => Ok(None),
            }
        })
    }

    /// Takes a session-level lock named `name` (PostgreSQL advisory lock on a hash of it),
    /// held while this store's connection lives: `false` when another session holds it.
    /// Calling it again while the lock is held confirms it (`true`, taken once); after the
    /// connection was lost and opened again, it takes the lock again if it is still free.
    /// Always `true` on SQLite (one process).
    pub fn try_lock_name(&self, name: &str) -> Result<bool, StoreError> {
        if self.dialect() == Dialect::Sqlite {
            return Ok(true);
        }
        let key = lock_key(name);
        // A bigint advisory key shows in pg_locks as classid (high half) and objid (low half).
        // CASE, not OR: a lock already held is not taken a second time.
        self.with(|db| {
            db.query_one(
                "SELECT CASE WHEN EXISTS (
                     SELECT 1 FROM pg_locks
                     WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
                       AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = ?1)
                 THEN TRUE ELSE pg_try_advisory_lock(?1) END",
                args![key],
            )?
            .bool(0)
        })
    }

    /// How many jobs wait now, across every process sharing the database.
    pub fn queued_count(&self) -> Result<usize, StoreError> {
        self.with(|db| {
            let n = db
                .query_one("SELECT COUNT(*) FROM jobs WHERE state = 'queued'", &[])?
                .int(0)?;
            Ok(n.max(0) as usize)
        })
    }

    /// The ids of the jobs waiting now.
    pub fn queued_ids(&self) -> Result<HashSet<JobId>, StoreError> {
        self.with(|db| {
            db.query("SELECT id FROM jobs WHERE state = 'queued'", &[])?
                .iter()
                .map(|r| r.int(0).map(JobId))
                .collect()
        })
    }
}

/// A worker id fit for the lease guard: 1-64 ASCII letters, digits, `-` or `.`.
pub fn valid_worker_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}
