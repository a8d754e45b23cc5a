//! Submitting and cancelling: a job enters the queue only once it is valid and on disk, and
//! the member hears its place at once; a waiting job leaves at once, a running one at its next
//! step.

use std::time::{Duration, SystemTime};

use thiserror::Error;

use super::jobs::{from_millis, to_millis, JobId, JobKind, JobRecord, JobSpec, JobState, Origin};
use super::ports::JobUpdate;
use super::refusal::Refusal;
use super::scheduler::{Cancelled, MemberLimits};
use super::service::{JobService, StopReason};
use super::store::StoreError;
use super::validate::validate;

/// A job that entered the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub id: JobId,
    /// 1 runs next.
    pub position: usize,
    /// The job as stored (its input image stays in the store); the service already sent its
    /// first update, `Queued { position }`, to the notifier.
    pub record: JobRecord,
}

/// Who asks to cancel. Admin rights count only for jobs of the admin's own guild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canceller {
    pub user_id: u64,
    pub guild_id: Option<u64>,
    pub is_admin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was waiting; it is gone.
    Removed,
    /// It is running; the engine stops at its next step and a `Cancelled` update follows.
    Stopping,
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum CancelError {
    #[error("there is no job {0}")]
    NotFound(JobId),
    #[error("job {0} is not yours; only its author or a server admin can cancel it")]
    NotYours(JobId),
    #[error("job {id} is already {state}")]
    AlreadyFinished { id: JobId, state: JobState },
    #[error("the job could not be cancelled: {0}")]
    Storage(String),
}

impl JobService {
    /// A spec filled with the guild's defaults and a random seed; the member's choices go over
    /// it with [`apply_options`](super::validate::apply_options).
    pub async fn default_spec(
        &self,
        guild: Option<u64>,
        kind: JobKind,
        prompt: impl Into<String>,
    ) -> Result<JobSpec, StoreError> {
        let s = self.settings(guild).await?;
        Ok(JobSpec {
            kind,
            variant: s.default_variant,
            prompt: prompt.into(),
            expanded_prompt: None,
            negative: None,
            seed: rand::random::<u32>() as u64,
            steps: s.default_steps,
            cfg: s.cfg,
            eta: s.eta,
            fps: s.fps,
            expand: s.expand_by_default,
            shape: None,
            image_fit: Default::default(),
            image: None,
        })
    }

    /// The member's cheap limits (shutting down, queue cap, waiting limit, cooldown) as they
    /// stand now, holding no place: an adapter asks before costly intake work (downloading
    /// and decoding an image). `submit` checks them again.
    pub async fn precheck(&self, origin: &Origin) -> Result<(), Refusal> {
        if !self.inner.state.lock().unwrap().accepting {
            return Err(Refusal::ShuttingDown);
        }
        let settings = self
            .settings(origin.guild_id)
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        let limits = MemberLimits {
            max_waiting: settings.member_waiting_limit,
            cooldown: Duration::from_secs(settings.cooldown_s),
        };
        let state = self.inner.state.lock().unwrap();
        state
            .scheduler
            .check(origin.user_id, limits, SystemTime::now())
    }

    /// Validates, stores and queues a job, and tells the notifier its place. On `Ok` the job
    /// is on disk.
    pub async fn submit(&self, spec: JobSpec, origin: Origin) -> Result<Submitted, Refusal> {
        let submitted = self.enqueue(spec, origin).await;
        if let Err(refusal) = &submitted {
            self.inner.config.metrics.refused(refusal);
        }
        submitted
    }

    async fn enqueue(&self, spec: JobSpec, origin: Origin) -> Result<Submitted, Refusal> {
        if !self.inner.state.lock().unwrap().accepting {
            return Err(Refusal::ShuttingDown);
        }
        let settings = self
            .settings(origin.guild_id)
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        validate(
            &spec,
            &origin,
            &settings,
            self.inner.engine.variants(),
            &self.inner.config.limits,
        )?;
        let limits = MemberLimits {
            max_waiting: settings.member_waiting_limit,
            cooldown: Duration::from_secs(settings.cooldown_s),
        };
        let now = SystemTime::now();
        let reservation = {
            let mut state = self.inner.state.lock().unwrap();
            if !state.accepting {
                return Err(Refusal::ShuttingDown);
            }
            state.scheduler.reserve(origin.user_id, limits, now)?
        };
        let round = reservation.round;
        let (spec2, origin2) = (spec.clone(), origin.clone());
        let inserted = self
            .inner
            .store
            .call(move |s| s.insert_job(&spec2, &origin2, round, now))
            .await;
        let (id, position, record, first) = {
            let mut state = self.inner.state.lock().unwrap();
            let id = match inserted {
                Ok(id) => id,
                Err(e) => {
                    state.scheduler.release(reservation);
                    tracing::error!(error = %e, "could not store a job");
                    return Err(Refusal::Unavailable("database error".into()));
                }
            };
            let position = state.scheduler.confirm(reservation, id);
            let metrics = &self.inner.config.metrics;
            metrics.job_queued(spec.variant);
            metrics.set_queue_depth(state.scheduler.waiting_len());
            // As the store has it (millisecond times), so a view shows what a restart would.
            let record = JobRecord::queued(id, spec, origin, round, from_millis(to_millis(now)));
            state.active.insert(id, record.clone());
            // The first view is the job's place. It goes out before the runner is woken so
            // that it cannot overtake the job's first progress; it is skipped if a busy runner
            // already took the job.
            let first = state.running.iter().all(|run| run.id != id);
            (id, position, record, first)
        };
        tracing::info!(job = %id, position, "job queued");
        if first {
            self.inner
                .update(&record, JobUpdate::Queued { position })
                .await;
        }
        self.inner.wake.notify_one();
        self.inner.announce_new().await;
        Ok(Submitted {
            id,
            position,
            record,
        })
    }

    /// Cancels a waiting job (removed at once) or a running one (stops at its next step).
    pub async fn cancel(&self, id: JobId, by: Canceller) -> Result<CancelOutcome, CancelError> {
        if self.is_gateway() {
            // The job may run on any worker: the database decides.
            return self.cancel_shared(id, by).await;
        }
        // Bound first: a guard in the match scrutinee would live across the await below and
        // make this future !Send.
        let active = self.inner.state.lock().unwrap().active.get(&id).cloned();
        let record = match active {
            Some(r) => r,
            None => {
                let found = self
                    .inner
                    .store
                    .call(move |s| s.job(id))
                    .await
                    .map_err(|e| CancelError::Storage(e.to_string()))?;
                return Err(match found {
                    Some(job) if may_cancel(&job, &by) => CancelError::AlreadyFinished {
                        id,
                        state: job.state,
                    },
                    Some(_) => CancelError::NotYours(id),
                    None => CancelError::NotFound(id),
                });
            }
        };
        if !may_cancel(&record, &by) {
            return Err(CancelError::NotYours(id));
        }
        let outcome = {
            let mut state = self.inner.state.lock().unwrap();
            match state.scheduler.cancel(id) {
                Some(Cancelled::Removed) => {
                    state.active.remove(&id);
                    let metrics = &self.inner.config.metrics;
                    metrics.job_cancelled_while_waiting(record.spec.variant);
                    metrics.set_queue_depth(state.scheduler.waiting_len());
                    CancelOutcome::Removed
                }
                Some(Cancelled::Running) => {
                    if let Some(run) = state.running.iter_mut().find(|r| r.id == id) {
                        run.stop.get_or_insert(StopReason::User(by.user_id));
                        if let Some(token) = &run.engine_cancel {
                            token.cancel();
                        }
                        run.woken.notify_one();
                    }
                    CancelOutcome::Stopping
                }
                // It finished between the two looks.
                None => {
                    return Err(CancelError::AlreadyFinished {
                        id,
                        state: JobState::Done,
                    })
                }
            }
        };
        if outcome == CancelOutcome::Removed {
            let reason = cancel_reason(&record, by.user_id);
            let now = SystemTime::now();
            self.inner
                .store
                .call(move |s| s.mark_ended(id, JobState::Cancelled, now, &reason))
                .await
                .map_err(|e| CancelError::Storage(e.to_string()))?;
            let inner = self.inner.clone();
            tokio::spawn(async move {
                let mut job = record;
                job.state = JobState::Cancelled;
                inner
                    .finish_notice(
                        job,
                        JobUpdate::Cancelled {
                            by_user: Some(by.user_id),
                        },
                    )
                    .await;
                inner.broadcast_positions().await;
            });
        }
        Ok(outcome)
    }
}

pub(super) fn may_cancel(job: &JobRecord, by: &Canceller) -> bool {
    job.origin.user_id == by.user_id || (by.is_admin && job.origin.guild_id == by.guild_id)
}

pub(super) fn cancel_reason(job: &JobRecord, by: u64) -> String {
    if job.origin.user_id == by {
        "cancelled by its author".into()
    } else {
        format!("cancelled by a moderator ({by})")
    }
}
