//! Several processes on one PostgreSQL database: a gateway that stores jobs and workers that
//! run them.
//!
//! - The gateway answers members and stores jobs (its engine handle serves no job, it only
//!   names the variants); it keeps the fair queue's view for positions and per-member limits,
//!   sends `NOTIFY new` after each job and `NOTIFY cancel <id> <by>` for a running one, and
//!   drops from its view, about once a second, the jobs workers took.
//! - A worker claims the next job in fair `(round, id)` order under a lease — with
//!   `limits.max_batch` above 1, with the waiting jobs behind it that can share its sampler
//!   batch, each under its own lease
//!   ([`Store::claim_batch`](super::store::Store::claim_batch)) — renews the lease while it runs
//!   the job on its engine, and ends and delivers it itself; every write it makes about a job
//!   holds only while it still holds the lease, so a job that went to another worker (ours
//!   stalled or died) is ended and delivered by that one alone. Idle workers wait on LISTEN
//!   (and poll, in case a notification was missed); any worker gives back leases that ran out.
//!
//! Delivery across workers. Each worker writes its MP4 to its own `results_dir` (local disk,
//! per host: nothing but the database is shared), and the worker that ran a job delivers it.
//! The lease does not end with the run: the worker keeps renewing it until the job is
//! delivered. If it dies between "done" and "delivered", its lease runs out and any worker
//! takes the delivery over ([`Store::claim_undelivered`](super::store::Store::claim_undelivered))
//! — from the database, where a worker's `done` stores the MP4 in the same transaction (and
//! "delivered" drops it), since the dead worker's disk may be on a host that is gone too. The
//! video is a few MB at most (Discord's upload limit), held only until delivery. What stays
//! out of reach is a worker that dies inside the upload itself, after Discord took it and
//! before "delivered" is written: the next worker sends it again, as a restarted single
//! process would.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use super::jobs::{JobId, JobRecord, JobState};
use super::ports::{JobUpdate, Notifier, PromptExpander, VideoEngine};
use super::runner::batch_mates;
use super::scheduler::Scheduler;
use super::service::{
    create_results_dir, Inner, JobService, Parts, ServiceConfig, ServiceError, StopReason,
};
use super::store::{listen, StoreError, StoreHandle};
use super::submit::{cancel_reason, may_cancel, CancelError, CancelOutcome, Canceller};

/// What one `floor33 serve` process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Everything in one process (Discord, queue and engine), on SQLite or PostgreSQL.
    #[default]
    All,
    /// Discord only: answers interactions and stores jobs.
    Gateway,
    /// Engine only: claims jobs from the database, runs and delivers them.
    Worker,
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "all" => Ok(Role::All),
            "gateway" => Ok(Role::Gateway),
            "worker" => Ok(Role::Worker),
            other => Err(format!(
                "unknown role {other:?}: expected all, gateway or worker"
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::All => "all",
            Role::Gateway => "gateway",
            Role::Worker => "worker",
        })
    }
}

/// How this process shares its database.
pub(super) enum Membership {
    Single,
    Gateway,
    Worker,
}

/// A worker's settings.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Unique among the workers (see [`worker_id`]); it owns the leases this worker takes.
    pub id: String,
    /// The PostgreSQL URL, for LISTEN.
    pub url: String,
    /// How long a claim holds without a renewal; a dead worker's job runs again after this
    /// (`[cluster] lease_ttl_s`).
    pub lease_ttl: Duration,
    /// Longest idle wait between two looks at the queue (LISTEN usually wakes it sooner);
    /// also the heartbeat interval while a job runs (`[cluster] poll_s`).
    pub poll: Duration,
}

/// A worker id from the host name, the device and the process id, e.g. `gpu1-cuda.0-4242`.
pub fn worker_id(device: &str) -> String {
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
    let clean = |s: &str| -> String {
        s.trim()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '.' })
            .take(32)
            .collect()
    };
    format!("{}-{}-{}", clean(&host), clean(device), std::process::id())
}

impl JobService {
    /// The gateway: stores and queues jobs for the workers; runs none itself. `engine` names
    /// the variants the workers serve
    /// ([`EngineHandle::without_models`](crate::engine::EngineHandle::without_models));
    /// `expander` only says that jobs may ask for expansion (the workers run it). Every `poll`
    /// the gateway's queue view follows what the workers took.
    pub async fn start_gateway(
        config: ServiceConfig,
        store: StoreHandle,
        engine: impl VideoEngine,
        notifier: Arc<dyn Notifier>,
        expander: Option<Arc<dyn PromptExpander>>,
        poll: Duration,
    ) -> Result<JobService, ServiceError> {
        let (queued, last_round) = store
            .call(|s| Ok((s.jobs_in_state(JobState::Queued)?, s.last_started_round()?)))
            .await?;
        // Its own queue view misses what workers took and gave back: the depth is the database's.
        config.metrics.follow_shared_queue();
        config.metrics.set_shared_queue_depth(queued.len());
        let mut scheduler = Scheduler::new(config.global_cap);
        scheduler.resume_from_round(last_round);
        let mut active = HashMap::new();
        for job in queued {
            scheduler.restore(job.id, job.origin.user_id, job.round);
            active.insert(job.id, job);
        }
        // Its own last notices (a cancel of a waiting job) that a stop cut short; videos are
        // the workers' to deliver.
        let undelivered: Vec<JobRecord> = store
            .call(|s| s.undelivered_without_lease())
            .await?
            .into_iter()
            .filter(|job| job.state != JobState::Done)
            .collect();
        let service = Self::launch(Parts {
            config,
            store,
            engine: Arc::new(engine),
            notifier,
            expander,
            scheduler,
            active,
            undelivered,
            lost: Vec::new(),
            membership: Membership::Gateway,
        });
        tokio::spawn(follow_workers(service.inner.clone(), poll));
        Ok(service)
    }

    /// A worker: claims jobs from the shared database and runs them on `engine`.
    pub async fn start_worker(
        config: ServiceConfig,
        store: StoreHandle,
        engine: impl VideoEngine,
        notifier: Arc<dyn Notifier>,
        expander: Option<Arc<dyn PromptExpander>>,
        options: WorkerOptions,
    ) -> Result<JobService, ServiceError> {
        create_results_dir(&config).await?;
        // Its own queue holds only the jobs it claimed: the depth is the database's.
        config.metrics.follow_shared_queue();
        let id = options.id.clone();
        store
            .call(move |s| {
                s.guard_writes_with_lease(&id)?;
                s.keep_videos_until_delivered();
                Ok(())
            })
            .await?;
        let url = options.url.clone();
        let events = tokio::task::spawn_blocking(move || listen::listen(&url))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        let scheduler = Scheduler::new(config.global_cap);
        let service = Self::launch(Parts {
            config,
            store,
            engine: Arc::new(engine),
            notifier,
            expander,
            scheduler,
            active: HashMap::new(),
            undelivered: Vec::new(),
            lost: Vec::new(),
            membership: Membership::Worker,
        });
        tracing::info!(worker = %options.id, "worker started");
        tokio::spawn(work(service.inner.clone(), options, events));
        Ok(service)
    }

    /// A cancel on the gateway: a job still waiting is cancelled in the database; a running
    /// one is announced to the workers, and the one running it stops at its next step.
    pub(super) async fn cancel_shared(
        &self,
        id: JobId,
        by: Canceller,
    ) -> Result<CancelOutcome, CancelError> {
        let storage = |e: StoreError| CancelError::Storage(e.to_string());
        let store = &self.inner.store;
        let job = store
            .call(move |s| s.job(id))
            .await
            .map_err(storage)?
            .ok_or(CancelError::NotFound(id))?;
        if !may_cancel(&job, &by) {
            return Err(CancelError::NotYours(id));
        }
        let reason = cancel_reason(&job, by.user_id);
        let now = SystemTime::now();
        let removed = store
            .call(move |s| s.cancel_if_queued(id, now, &reason))
            .await
            .map_err(storage)?;
        if removed {
            {
                let mut state = self.inner.state.lock().unwrap();
                state.scheduler.cancel(id);
                state.active.remove(&id);
            }
            let inner = self.inner.clone();
            tokio::spawn(async move {
                let mut job = job;
                job.state = JobState::Cancelled;
                let update = JobUpdate::Cancelled {
                    by_user: Some(by.user_id),
                };
                inner.finish_notice(job, update).await;
                inner.broadcast_positions().await;
            });
            return Ok(CancelOutcome::Removed);
        }
        let now_state = store
            .call(move |s| s.job(id))
            .await
            .map_err(storage)?
            .map(|j| j.state);
        match now_state {
            Some(JobState::Running) => {
                // Recorded first: the worker reads it at its next heartbeat even if the NOTIFY
                // below is lost or comes before the job reaches its runner.
                let user = by.user_id;
                if !store
                    .call(move |s| s.request_cancel(id, user))
                    .await
                    .map_err(storage)?
                {
                    let state = store.call(move |s| s.job(id)).await.map_err(storage)?;
                    return Err(match state {
                        Some(job) => CancelError::AlreadyFinished {
                            id,
                            state: job.state,
                        },
                        None => CancelError::NotFound(id),
                    });
                }
                let payload = format!("cancel {} {}", id.0, user);
                if let Err(e) = store.call(move |s| s.notify(&payload)).await {
                    tracing::warn!(job = %id, error = %e, "could not announce a cancel; the worker reads it at its next heartbeat");
                }
                Ok(CancelOutcome::Stopping)
            }
            Some(state) => Err(CancelError::AlreadyFinished { id, state }),
            None => Err(CancelError::NotFound(id)),
        }
    }

    /// Whether this process is a gateway (cancels go through the database).
    pub(super) fn is_gateway(&self) -> bool {
        matches!(self.inner.membership, Membership::Gateway)
    }
}

impl Inner {
    /// Tells the workers a job was stored (a gateway only).
    pub(super) async fn announce_new(&self) {
        if !matches!(self.membership, Membership::Gateway) {
            return;
        }
        if let Err(e) = self.store.call(|s| s.notify("new")).await {
            // Workers also poll; the job is only picked up a little later.
            tracing::warn!(error = %e, "could not notify the workers");
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }
}

/// The gateway's view follows the database: jobs a worker took (or that ended) leave its
/// queue, and the members behind them hear their new place. The queue depth and the waiting
/// times of the jobs that started are read from the database too, so the gateway's `/metrics`
/// covers every worker.
async fn follow_workers(inner: Arc<Inner>, poll: Duration) {
    let mut stop = inner.stop.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.changed() => return,
        }
        // Only a job held before the read can have left: one submitted meanwhile is stored
        // before it is queued here, so the read may not have seen it yet.
        let held: HashSet<JobId> = {
            let state = inner.state.lock().unwrap();
            state
                .scheduler
                .order()
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        };
        let queued = match inner.store.call(|s| s.queued_ids()).await {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the queue");
                continue;
            }
        };
        inner.config.metrics.set_shared_queue_depth(queued.len());
        let gone: Vec<JobId> = {
            let mut state = inner.state.lock().unwrap();
            let gone: Vec<JobId> = state
                .scheduler
                .order()
                .into_iter()
                .map(|(id, _)| id)
                .filter(|id| held.contains(id) && !queued.contains(id))
                .collect();
            for id in &gone {
                state.scheduler.cancel(*id);
                state.active.remove(id);
            }
            gone
        };
        if !gone.is_empty() {
            count_waits(&inner, gone).await;
            inner.broadcast_positions().await;
        }
    }
}

/// Observes how long each job that left the gateway's queue waited, for those a worker
/// started (a job cancelled while waiting never started).
async fn count_waits(inner: &Arc<Inner>, ids: Vec<JobId>) {
    let jobs = inner
        .store
        .call(move |s| {
            ids.into_iter()
                .filter_map(|id| s.job(id).transpose())
                .collect::<Result<Vec<_>, _>>()
        })
        .await;
    match jobs {
        Ok(jobs) => {
            for job in jobs {
                if let Some(started) = job.started_at {
                    let waited = started.duration_since(job.created_at).unwrap_or_default();
                    inner
                        .config
                        .metrics
                        .job_started_elsewhere(job.spec.variant, waited);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not read the started jobs"),
    }
}

/// A worker's loop: give back dead workers' leases, claim when idle, renew while busy, and
/// act on what the gateway announces.
async fn work(
    inner: Arc<Inner>,
    options: WorkerOptions,
    mut events: mpsc::UnboundedReceiver<String>,
) {
    let mut stop = inner.stop.subscribe();
    let worker = options.id.clone();
    // When each running job's lease was last renewed, as this worker's clock saw it.
    let mut renewed: HashMap<JobId, Instant> = HashMap::new();
    while !inner.stopping() {
        let now = SystemTime::now();
        match inner
            .store
            .call(move |s| s.release_expired_leases(now))
            .await
        {
            Ok(ids) if !ids.is_empty() => {
                tracing::info!(jobs = ?ids, "jobs of a worker that stopped renewing queued again")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not release expired leases"),
        }
        match inner.store.call(|s| s.queued_count()).await {
            Ok(n) => inner.config.metrics.set_shared_queue_depth(n),
            Err(e) => tracing::warn!(error = %e, "could not count the queue"),
        }
        take_over_deliveries(&inner, &worker, options.lease_ttl).await;
        let (idle, running, delivering) = {
            let state = inner.state.lock().unwrap();
            let idle =
                state.accepting && state.running.is_empty() && state.scheduler.waiting_len() == 0;
            let delivering: Vec<JobId> = state.delivering.iter().copied().collect();
            let running: Vec<JobId> = state.running.iter().map(|r| r.id).collect();
            (idle, running, delivering)
        };
        for id in delivering {
            renew_delivery(&inner, &worker, id, options.lease_ttl).await;
        }
        if idle {
            if claim(&inner, &worker, options.lease_ttl).await {
                continue;
            }
        } else {
            renewed.retain(|id, _| running.contains(id));
            for id in running {
                // A job first seen here was claimed within the last poll.
                let last = *renewed.entry(id).or_insert_with(Instant::now);
                if let Some(at) = renew(&inner, &worker, id, options.lease_ttl, last).await {
                    renewed.insert(id, at);
                }
            }
        }
        tokio::select! {
            event = events.recv() => match event {
                Some(payload) => on_event(&inner, &payload),
                // The listener ended; keep polling.
                None => tokio::time::sleep(options.poll).await,
            },
            _ = tokio::time::sleep(options.poll) => {}
            // The last job ended: the next one is claimed now, not a poll later.
            _ = inner.idle.notified() => {}
            _ = stop.changed() => {}
        }
    }
}

/// Claims the next job (with `max_batch` above 1, and its waiting batch-mates, each under its
/// own lease) and hands them to the runner; `true` when any was claimed.
///
/// A worker claims only when its runner is idle with nothing waiting, and queues the whole
/// claim before waking the runner, so the runner finds them all waiting and starts them as
/// one sampler batch.
async fn claim(inner: &Arc<Inner>, worker: &str, ttl: Duration) -> bool {
    let (w, now, max) = (
        worker.to_string(),
        SystemTime::now(),
        inner.config.max_batch,
    );
    match inner
        .store
        .call(move |s| s.claim_batch(&w, now, ttl, max, batch_mates))
        .await
    {
        Ok(jobs) if jobs.is_empty() => false,
        Ok(jobs) => {
            let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
            if let [id] = ids[..] {
                tracing::info!(job = %id, worker, "job claimed");
            } else {
                tracing::info!(jobs = ?ids, worker, "jobs claimed as one batch");
            }
            queue_locally(inner, jobs);
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not claim a job");
            false
        }
    }
}

/// Queues the claimed jobs in this worker's own scheduler, all of them before the runner is
/// woken.
fn queue_locally(inner: &Arc<Inner>, jobs: Vec<JobRecord>) {
    {
        let mut state = inner.state.lock().unwrap();
        for job in jobs {
            state
                .scheduler
                .restore(job.id, job.origin.user_id, job.round);
            state.active.insert(job.id, job);
        }
    }
    inner.wake.notify_one();
}

/// The heartbeat: renews the lease on the running job and reads a member's cancel recorded
/// for it (the NOTIFY that carries it may have been missed); returns when the renewal was
/// asked, if it held. A lease already lost stops the job here (its writes would be refused
/// anyway) so that the GPU moves on; so does one that ran out while the database could not be
/// reached (`last_renewed` more than `ttl` ago), since another worker may run the job by now.
async fn renew(
    inner: &Arc<Inner>,
    worker: &str,
    id: JobId,
    ttl: Duration,
    last_renewed: Instant,
) -> Option<Instant> {
    let (w, now, asked) = (worker.to_string(), SystemTime::now(), Instant::now());
    let renewed = match inner
        .store
        .call(move |s| {
            let held = s.renew_lease(id, &w, now, ttl)?;
            let cancel = if held { s.cancel_request(id)? } else { None };
            Ok((held, cancel))
        })
        .await
    {
        Ok((true, None)) => true,
        Ok((true, Some(by))) => {
            if stop_running(inner, id, StopReason::User(by)) {
                tracing::info!(job = %id, "cancel read at the heartbeat; stopping at the next step");
            }
            true
        }
        Ok((false, _)) => {
            tracing::warn!(job = %id, "lease lost; stopping the job here");
            stop_running(inner, id, StopReason::LeaseLost);
            false
        }
        Err(e) if asked.duration_since(last_renewed) >= ttl => {
            if stop_running(inner, id, StopReason::LeaseLost) {
                tracing::warn!(job = %id, error = %e, "lease ran out while the database was unreachable; stopping the job here");
            }
            false
        }
        Err(e) => {
            tracing::warn!(job = %id, error = %e, "could not renew the lease");
            false
        }
    };
    renewed.then_some(asked)
}

/// Most finished jobs of dead workers one look takes over for delivery.
const TAKE_OVER_AT_ONCE: usize = 4;

/// Delivers the finished jobs whose worker died before delivering them: each is taken under
/// this worker's lease (so no other worker delivers it too) and sent from the MP4 kept in the
/// database. Taken even while this worker runs a job: delivery does not need the GPU.
async fn take_over_deliveries(inner: &Arc<Inner>, worker: &str, ttl: Duration) {
    if !inner.state.lock().unwrap().accepting {
        return;
    }
    let (w, now) = (worker.to_string(), SystemTime::now());
    match inner
        .store
        .call(move |s| s.claim_undelivered(&w, now, ttl, TAKE_OVER_AT_ONCE))
        .await
    {
        Ok(jobs) => {
            for job in jobs {
                tracing::info!(job = %job.id, worker, "delivering a job whose worker stopped before it did");
                inner.spawn_delivery(job);
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not look for undelivered jobs"),
    }
}

/// Keeps the lease on a job being delivered, so no other worker takes its delivery over. A
/// lost one (this worker stalled past it) cannot be recalled from Discord; the store refuses
/// this worker's "delivered" then, and the log says why the member may get it twice.
async fn renew_delivery(inner: &Arc<Inner>, worker: &str, id: JobId, ttl: Duration) {
    let (w, now) = (worker.to_string(), SystemTime::now());
    match inner
        .store
        .call(move |s| s.renew_lease(id, &w, now, ttl))
        .await
    {
        Ok(true) => {}
        // Delivered meanwhile (the set is cleared just after), or taken over.
        Ok(false) => tracing::debug!(job = %id, "delivery lease not renewed"),
        Err(e) => tracing::warn!(job = %id, error = %e, "could not renew the delivery lease"),
    }
}

/// `new` (a job was stored: the loop looks again) or `cancel <id> <by>`.
fn on_event(inner: &Arc<Inner>, payload: &str) {
    let mut words = payload.split_whitespace();
    if words.next() != Some("cancel") {
        return;
    }
    let (Some(Ok(id)), Some(Ok(by))) = (
        words.next().map(str::parse::<i64>),
        words.next().map(str::parse::<u64>),
    ) else {
        tracing::warn!(payload, "unreadable job event ignored");
        return;
    };
    if stop_running(inner, JobId(id), StopReason::User(by)) {
        tracing::info!(job = id, "cancel received; stopping at the next step");
    }
}

/// Stops the running job if it is `id`; `true` when it was, and had not been asked to stop
/// before (a cancel heard both as NOTIFY and at the heartbeat is logged once).
fn stop_running(inner: &Arc<Inner>, id: JobId, reason: StopReason) -> bool {
    let mut state = inner.state.lock().unwrap();
    let Some(run) = state.running.iter_mut().find(|r| r.id == id) else {
        return false;
    };
    if run.stop.is_some() {
        return false;
    }
    run.stop = Some(reason);
    if let Some(token) = &run.engine_cancel {
        token.cancel();
    }
    run.woken.notify_one();
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_unknown_ones_are_named() {
        assert_eq!("all".parse::<Role>(), Ok(Role::All));
        assert_eq!("gateway".parse::<Role>(), Ok(Role::Gateway));
        assert_eq!("worker".parse::<Role>(), Ok(Role::Worker));
        let err = "gpu".parse::<Role>().unwrap_err();
        assert!(err.contains("\"gpu\"") && err.contains("gateway"), "{err}");
    }

    #[test]
    fn worker_ids_fit_the_lease_guard() {
        let id = worker_id("cuda:1");
        assert!(super::super::store::valid_worker_id(&id), "{id}");
        assert!(id.contains("cuda.1"), "{id}");
    }
}
