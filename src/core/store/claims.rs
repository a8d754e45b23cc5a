//! Groundwork for GPU workers sharing one database: a worker claims the next waiting job in fair
//! order, holds it under a lease that it renews while the job runs, and a lease that runs out
//! (the worker died) puts the job back in the queue with its round, so it runs next elsewhere.
//!
//! Fair order is the scheduler's: `(round, id)`, rounds per member (see `core::scheduler`).
//! On PostgreSQL the pick is `FOR UPDATE SKIP LOCKED`, so concurrent claimers each take a
//! different row without waiting on each other; on SQLite the `IMMEDIATE` transaction's write
//! lock serialises claimers, which is the single-process behaviour.

use std::time::{Duration, SystemTime};

use super::sql::{args, Dialect, Sql, Value};
use super::{quarantine, read_job, select_columns, Store, StoreError};
use crate::core::jobs::{from_millis, to_millis, JobId, JobRecord};

/// How many waiting jobs behind the first [`Store::claim_batch`] looks through for its
/// batch-mates: a bounded read (and lock) however long the queue.
pub const BATCH_WINDOW: usize = 64;

/// Who holds a running job, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub worker: String,
    pub expires_at: SystemTime,
}

impl Store {
    /// Takes the next waiting job for `worker`: it becomes `running` with a lease until
    /// `now + ttl`. `None` when nothing waits. A row that no longer reads is quarantined (as
    /// `recover` does) and the next one is taken.
    pub fn claim_next(
        &mut self,
        worker: &str,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<Option<JobRecord>, StoreError> {
        Ok(self
            .claim_batch(worker, now, ttl, 1, |_, _| false)?
            .into_iter()
            .next())
    }

    /// Takes, in one transaction, the next waiting job for `worker` (as [`Store::claim_next`]
    /// does) and up to `max - 1` further waiting jobs that `mates(first, other)` accepts, in
    /// fair `(round, id)` order among the [`BATCH_WINDOW`] waiting jobs that follow it; each
    /// becomes `running` under its own lease until `now + ttl`, renewed and ended on its own.
    /// Empty when nothing waits. Jobs it passes over keep their place; an unreadable row among
    /// them is left waiting, quarantined when it comes up first. With `max` 1 this is
    /// `claim_next`.
    pub fn claim_batch(
        &mut self,
        worker: &str,
        now: SystemTime,
        ttl: Duration,
        max: usize,
        mates: impl Fn(&JobRecord, &JobRecord) -> bool,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let (started, expires) = (to_millis(now), to_millis(now + ttl));
        self.transaction(|db| {
            let lock = match db.dialect() {
                Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
                Dialect::Sqlite => "",
            };
            let first = loop {
                let claimed = db.query_opt(
                    &format!(
                        "UPDATE jobs SET state = 'running', started_at = ?2, lease_owner = ?1,
                                lease_expires_at = ?3
                         WHERE id = (SELECT id FROM jobs WHERE state = 'queued'
                                     ORDER BY round, id LIMIT 1 {lock})
                         RETURNING {}",
                        select_columns()
                    ),
                    args![worker, started, expires],
                )?;
                let Some(row) = claimed else {
                    return Ok(Vec::new());
                };
                match read_job(&row) {
                    Ok(job) => break job,
                    Err(e) => {
                        let q = quarantine(db, &row, &e, started)?;
                        tracing::warn!(job = %q.id, reason = %q.reason, "quarantined an unreadable job");
                    }
                }
            };
            if max <= 1 {
                return Ok(vec![first]);
            }
            // The waiting jobs right behind the first, locked (on PostgreSQL) so that no other
            // claimer takes one of them meanwhile; those another claimer holds are skipped.
            let window = db.query(
                &format!(
                    "SELECT {} FROM jobs WHERE state = 'queued'
                     ORDER BY round, id LIMIT ?1 {lock}",
                    select_columns()
                ),
                args![BATCH_WINDOW as i64],
            )?;
            let followers: Vec<i64> = window
                .iter()
                .filter_map(|row| read_job(row).ok())
                .filter(|other| mates(&first, other))
                .take(max - 1)
                .map(|other| other.id.0)
                .collect();
            let mut batch = vec![first];
            if followers.is_empty() {
                return Ok(batch);
            }
            let ids = (0..followers.len())
                .map(|i| format!("?{}", i + 4))
                .collect::<Vec<_>>()
                .join(", ");
            let mut values = args![worker, started, expires].to_vec();
            values.extend(followers.iter().map(|&id| Value::Int(id)));
            let rows = db.query(
                &format!(
                    "UPDATE jobs SET state = 'running', started_at = ?2, lease_owner = ?1,
                            lease_expires_at = ?3
                     WHERE state = 'queued' AND id IN ({ids})
                     RETURNING {}",
                    select_columns()
                ),
                &values,
            )?;
            for row in &rows {
                // Read a moment ago in this transaction, so it reads again.
                batch.push(read_job(row)?);
            }
            batch.sort_by_key(|job| (job.round, job.id));
            Ok(batch)
        })
    }

    /// Extends `worker`'s lease on a job it runs or delivers to `now + ttl`. `false` when the
    /// worker no longer holds it (the lease ran out and was taken, or the job is delivered):
    /// stop working on it.
    pub fn renew_lease(
        &mut self,
        id: JobId,
        worker: &str,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let n = self.with(|db| {
            db.execute(
                "UPDATE jobs SET lease_expires_at = ?3
                 WHERE id = ?1 AND lease_owner = ?2 AND state <> 'queued' AND delivered = FALSE
                   AND lease_expires_at >= ?4",
                args![id.0, worker, to_millis(now + ttl), to_millis(now)],
            )
        })?;
        Ok(n == 1)
    }

    /// Takes over, for `worker`, up to `limit` finished jobs whose worker's lease ran out
    /// before they were delivered (it died between "done" and "delivered"): they get a new
    /// lease until `now + ttl`, so their delivery is `worker`'s alone, oldest first. Jobs
    /// finished without a lease (a single process, a gateway's cancel) are not taken: their
    /// own process delivers them again at its next start.
    pub fn claim_undelivered(
        &mut self,
        worker: &str,
        now: SystemTime,
        ttl: Duration,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let lock = match self.dialect() {
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let rows = self.transaction(|db| {
            db.query(
                &format!(
                    "UPDATE jobs SET lease_owner = ?1, lease_expires_at = ?3
                     WHERE id IN (SELECT id FROM jobs
                                  WHERE delivered = FALSE
                                    AND state IN ('done', 'failed', 'cancelled')
                                    AND lease_owner IS NOT NULL AND lease_expires_at < ?2
                                  ORDER BY id LIMIT ?4 {lock})
                     RETURNING {}",
                    select_columns()
                ),
                args![worker, to_millis(now), to_millis(now + ttl), limit as i64],
            )
        })?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in rows {
            match read_job(&row) {
                Ok(job) => jobs.push(job),
                // Left for `recover` to quarantine; nobody can be told from an unreadable row.
                Err(e) => {
                    tracing::warn!(job = ?row.int(0).ok(), error = %e, "an unreadable finished job was not delivered")
                }
            }
        }
        jobs.sort_by_key(|j| j.id);
        Ok(jobs)
    }

    /// Finished jobs not yet delivered that no worker holds: a gateway's own notices (a
    /// cancel of a waiting job) cut short by a stop, delivered again at its next start.
    pub fn undelivered_without_lease(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.query_jobs(
            "WHERE state IN ('done', 'failed', 'cancelled') AND delivered = FALSE
               AND lease_owner IS NULL ORDER BY id",
            &[],
        )
    }

    /// Running jobs whose lease ran out before `now` go back to waiting, keeping their round
    /// (so their place at the head of the queue). Jobs run without a lease (a single process)
    /// are left alone. Returns the released jobs.
    pub fn release_expired_leases(&mut self, now: SystemTime) -> Result<Vec<JobId>, StoreError> {
        self.transaction(|db| release_expired(db, to_millis(now)))
    }

    /// The lease on a job, if it has one.
    pub fn lease(&self, id: JobId) -> Result<Option<Lease>, StoreError> {
        self.with(|db| {
            let Some(row) = db.query_opt(
                "SELECT lease_owner, lease_expires_at FROM jobs WHERE id = ?1",
                args![id.0],
            )?
            else {
                return Err(StoreError::NoSuchJob(id));
            };
            Ok(match (row.opt_text(0)?, row.opt_int(1)?) {
                (Some(worker), Some(at)) => Some(Lease {
                    worker,
                    expires_at: from_millis(at),
                }),
                _ => None,
            })
        })
    }
}

fn release_expired(db: &mut dyn Sql, now: i64) -> Result<Vec<JobId>, StoreError> {
    let mut ids = db
        .query(
            "UPDATE jobs SET state = 'queued', started_at = NULL, lease_owner = NULL,
                    lease_expires_at = NULL
             WHERE state = 'running' AND lease_expires_at < ?1
             RETURNING id",
            args![now],
        )?
        .iter()
        .map(|r| r.int(0).map(JobId))
        .collect::<Result<Vec<_>, _>>()?;
    ids.sort();
    Ok(ids)
}
