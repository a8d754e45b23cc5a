//! The job's life — validate → persist → queue → (expand) → run on the engine → encode →
//! deliver — knowing nothing of Discord. A transport adapter calls [`JobService`] and hears back
//! through its [`Notifier`]; the prompt expander plugs in as a [`PromptExpander`].
//!
//! Guarantees:
//! - `submit` returns only once the job is on disk, so "queued" survives a crash.
//! - One runner task takes jobs from the [`Scheduler`] one at a time (one GPU), or up to
//!   `max_batch` compatible ones at a time to share one sampler batch.
//! - A job is marked delivered only when the notifier's `deliver` succeeded; at start-up every
//!   finished-but-undelivered job is delivered again, and jobs left running are queued again at
//!   the head. So a crash loses no job and, short of dying inside `deliver` itself, duplicates
//!   none.
//! - Database work runs on the blocking pool; the runtime threads that answer Discord's
//!   3-second acknowledgements never wait on the disk.
//!
//! This file holds the service's state and its life (start, shutdown, settings, stored jobs);
//! each step of a job has its own file: [`validate`](super::validate),
//! [`submit`](super::submit), [`runner`](super::runner), [`delivery`](super::delivery), and
//! what adapters may show, [`views`](super::views). The traits adapters implement are in
//! [`ports`](super::ports).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use thiserror::Error;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::cluster::Membership;
use super::jobs::{JobId, JobKind, JobRecord, JobState, Origin};
use super::ports::{Notifier, PromptExpander, VideoEngine};
use super::runner::run_loop;
use super::scheduler::Scheduler;
use super::settings::{
    self, AuditEntry, GuildSettings, SettingError, SettingKey, SettingView, SettingsBounds,
};
use super::store::{Location, StoreError, StoreHandle};
use super::validate::request_for;
use super::views::SettingChange;
use crate::engine::{CancelToken, Limits};
use crate::models::config::Variant;
use crate::video::EncodeOptions;

/// The service's settings (the operator's configuration converts into this).
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The SQLite file or PostgreSQL server holding the jobs.
    pub database: Location,
    /// Where finished MP4s are kept until (and after) delivery.
    pub results_dir: PathBuf,
    /// Settings of a guild that changed nothing, and of direct messages.
    pub defaults: GuildSettings,
    /// Most jobs waiting across the bot.
    pub global_cap: usize,
    /// Most jobs the runner starts together as one sampler batch: the next job in fair order
    /// and up to `max_batch - 1` waiting jobs compatible with it (same model, shape, steps and
    /// eta). 1 runs one job at a time.
    pub max_batch: usize,
    /// The engine's hard limits (the bounds of guild settings).
    pub limits: Limits,
    /// Least time between two progress previews; `None` for none.
    pub preview_every: Option<Duration>,
    pub preview_max_side: u32,
    pub encode: EncodeOptions,
    /// Longest wait for one `job_update`, so a stuck transport cannot stall the GPU.
    pub notify_timeout: Duration,
    /// Longest wait at shutdown for deliveries in flight; the rest are delivered at the next
    /// start.
    pub shutdown_grace: Duration,
    /// Where the job's life is counted (queue, states, durations, refusals); the app shares
    /// it with the ops listener.
    pub metrics: crate::ops::Metrics,
}

impl ServiceConfig {
    /// Defaults around a database path; results go in `results/` beside it.
    pub fn new(db_path: impl Into<PathBuf>) -> Self {
        let db_path = db_path.into();
        let results_dir = db_path.parent().unwrap_or(Path::new(".")).join("results");
        ServiceConfig {
            database: Location::Sqlite(db_path),
            results_dir,
            defaults: GuildSettings::default(),
            global_cap: 100,
            max_batch: 1,
            limits: Limits::default(),
            preview_every: Some(Duration::from_secs(3)),
            preview_max_side: 512,
            encode: EncodeOptions::default(),
            notify_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            metrics: crate::ops::Metrics::new(),
        }
    }
}

/// How [`JobService::shutdown`] treats the running jobs (every job of a running batch alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Stop them at their next step and put them back at the head of the queue (fast).
    Requeue,
    /// Let it finish and deliver.
    Finish,
}

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

// ---------------------------------------------------------------------------------------------
// The service.

/// Cheap to clone; all clones drive the same service.
#[derive(Clone)]
pub struct JobService {
    pub(super) inner: Arc<Inner>,
}

/// What every step shares; the step files reach it as `super::service::Inner`.
pub(super) struct Inner {
    pub(super) config: ServiceConfig,
    pub(super) store: StoreHandle,
    pub(super) engine: Arc<dyn VideoEngine>,
    pub(super) notifier: Arc<dyn Notifier>,
    pub(super) expander: Option<Arc<dyn PromptExpander>>,
    pub(super) state: Mutex<State>,
    /// Something was queued: the runner looks again.
    pub(super) wake: Notify,
    /// The runner found nothing to run: a cluster worker claims the next job at once instead
    /// of at its next poll.
    pub(super) idle: Notify,
    /// Set once, at shutdown.
    pub(super) stop: watch::Sender<bool>,
    runner: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub(super) deliveries: Mutex<JoinSet<()>>,
    pub(super) started: std::time::Instant,
    /// Alone on its database, or one process of several (see [`super::cluster`]).
    pub(super) membership: Membership,
}

/// What [`JobService::launch`] starts from.
pub(super) struct Parts {
    pub(super) config: ServiceConfig,
    pub(super) store: StoreHandle,
    pub(super) engine: Arc<dyn VideoEngine>,
    pub(super) notifier: Arc<dyn Notifier>,
    pub(super) expander: Option<Arc<dyn PromptExpander>>,
    pub(super) scheduler: Scheduler,
    pub(super) active: HashMap<JobId, JobRecord>,
    pub(super) undelivered: Vec<JobRecord>,
    /// Unreadable rows whose member can still be told (see `Recovered::quarantined`).
    pub(super) lost: Vec<(JobId, Origin)>,
    pub(super) membership: Membership,
}

pub(super) struct State {
    pub(super) accepting: bool,
    pub(super) scheduler: Scheduler,
    /// Waiting and running jobs (the queue view and the runner read them from here).
    pub(super) active: HashMap<JobId, JobRecord>,
    /// The running jobs: none, one, or the jobs of one sampler batch (in fair order); each
    /// leaves when it ends.
    pub(super) running: Vec<RunningJob>,
    pub(super) settings: HashMap<u64, GuildSettings>,
    pub(super) delivering: HashSet<JobId>,
}

pub(super) struct RunningJob {
    pub(super) id: JobId,
    pub(super) progress: Option<(usize, usize)>,
    pub(super) stop: Option<StopReason>,
    pub(super) engine_cancel: Option<CancelToken>,
    /// Wakes the runner out of a prompt expansion.
    pub(super) woken: Arc<Notify>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopReason {
    User(u64),
    Shutdown,
    /// A worker's lease on the job is gone (see `cluster::renew`).
    LeaseLost,
}

/// The folder finished videos are written to, made before any job runs (every role needs it).
pub(super) async fn create_results_dir(config: &ServiceConfig) -> Result<(), ServiceError> {
    let results = config.results_dir.clone();
    tokio::task::spawn_blocking(move || std::fs::create_dir_all(&results))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
        .map_err(|source| ServiceError::Io {
            path: config.results_dir.clone(),
            source,
        })
}

/// Why a recovered job cannot run on this engine, if it cannot: the submit-time checks that
/// do not depend on the guild (those may have changed since, and the job was accepted).
fn resume_refusal(job: &JobRecord, loaded: &[Variant], limits: &Limits) -> Option<String> {
    let spec = &job.spec;
    if !loaded.contains(&spec.variant) {
        return Some(format!(
            "the model `{}` is no longer loaded on this bot",
            spec.variant.name()
        ));
    }
    let has_image = spec.kind == JobKind::ImageToVideo;
    limits
        .check_with_image(&request_for(spec, None), has_image, &spec.variant.config())
        .err()
}

impl JobService {
    /// Opens the store at `config.database` and starts as [`JobService::start_with_store`] does.
    pub async fn start(
        config: ServiceConfig,
        engine: impl VideoEngine,
        notifier: Arc<dyn Notifier>,
        expander: Option<Arc<dyn PromptExpander>>,
    ) -> Result<JobService, ServiceError> {
        let store = StoreHandle::open(config.database.clone()).await?;
        Self::start_with_store(config, store, engine, notifier, expander).await
    }

    /// Recovers what a previous run left in `store` (jobs left running go back to the head of
    /// the queue, waiting jobs keep their order, finished-but-undelivered jobs are delivered
    /// again) and starts the runner.
    pub async fn start_with_store(
        config: ServiceConfig,
        store: StoreHandle,
        engine: impl VideoEngine,
        notifier: Arc<dyn Notifier>,
        expander: Option<Arc<dyn PromptExpander>>,
    ) -> Result<JobService, ServiceError> {
        create_results_dir(&config).await?;
        let (recovered, last_round) = store
            .call(|s| Ok((s.recover()?, s.last_started_round()?)))
            .await?;
        if !recovered.interrupted.is_empty() {
            tracing::info!(jobs = ?recovered.interrupted, "interrupted jobs queued again");
        }
        for q in &recovered.quarantined {
            tracing::warn!(job = %q.id, reason = %q.reason, "an unreadable job was marked failed");
        }
        // A job that can never run (its model is no longer loaded, or a row edited past the
        // engine's limits) is failed with the reason (and its member told below) rather than
        // left to wedge the queue or the start.
        let loaded = engine.variants().to_vec();
        let mut runnable = Vec::new();
        let mut unrunnable = Vec::new();
        for mut job in recovered.queued {
            let Some(why) = resume_refusal(&job, &loaded, &config.limits) else {
                runnable.push(job);
                continue;
            };
            let reason = format!("your job could not be resumed after a restart: {why}");
            tracing::warn!(job = %job.id, variant = %job.spec.variant, %why, "queued job cannot run, marked failed");
            let (id, now, error) = (job.id, SystemTime::now(), reason.clone());
            store
                .call(move |s| s.mark_ended(id, JobState::Failed, now, &error))
                .await?;
            job.state = JobState::Failed;
            job.error = Some(reason);
            unrunnable.push(job);
        }
        let mut scheduler = Scheduler::new(config.global_cap);
        scheduler.resume_from_round(last_round);
        let mut active = HashMap::new();
        for job in runnable {
            scheduler.restore(job.id, job.origin.user_id, job.round);
            config.metrics.job_queued(job.spec.variant);
            active.insert(job.id, job);
        }
        config.metrics.set_queue_depth(scheduler.waiting_len());
        let lost = recovered
            .quarantined
            .into_iter()
            .filter_map(|q| Some((q.id, q.origin?)))
            .collect();
        Ok(Self::launch(Parts {
            config,
            store,
            engine: Arc::new(engine),
            notifier,
            expander,
            scheduler,
            active,
            undelivered: recovered
                .undelivered
                .into_iter()
                .chain(unrunnable)
                .collect(),
            lost,
            membership: Membership::Single,
        }))
    }

    /// Builds the service from recovered `parts` and starts the runner (not on a gateway,
    /// which only stores jobs for the workers).
    pub(super) fn launch(parts: Parts) -> JobService {
        let (stop, _) = watch::channel(false);
        let run = !matches!(parts.membership, Membership::Gateway);
        let inner = Arc::new(Inner {
            config: parts.config,
            store: parts.store,
            engine: parts.engine,
            notifier: parts.notifier,
            expander: parts.expander,
            state: Mutex::new(State {
                accepting: true,
                scheduler: parts.scheduler,
                active: parts.active,
                running: Vec::new(),
                settings: HashMap::new(),
                delivering: HashSet::new(),
            }),
            wake: Notify::new(),
            idle: Notify::new(),
            stop,
            runner: Mutex::new(None),
            deliveries: Mutex::new(JoinSet::new()),
            started: std::time::Instant::now(),
            membership: parts.membership,
        });
        for job in parts.undelivered {
            inner.spawn_delivery(job);
        }
        let lost = parts.lost;
        if !lost.is_empty() {
            let told = inner.clone();
            inner.deliveries.lock().unwrap().spawn(async move {
                for (id, origin) in lost {
                    let reason = "it could not be resumed after a restart (its stored request is unreadable)";
                    if told.notifier.job_lost(id, &origin, reason).await {
                        if let Err(e) = told.store.call(move |s| s.mark_delivered(id, None)).await {
                            tracing::warn!(job = %id, error = %e, "could not mark the notice delivered");
                        }
                    }
                }
            });
        }
        if run {
            let runner = tokio::spawn(run_loop(inner.clone()));
            *inner.runner.lock().unwrap() = Some(runner);
        }
        JobService { inner }
    }

    /// A spec filled with the guild's defaults and a random seed; the adapter overrides what
    /// Whether the store answers a query (the ops listener's readiness check).
    pub async fn ping_store(&self) -> Result<(), StoreError> {
        self.inner
            .store
            .call(|s| s.schema_version().map(|_| ()))
            .await
    }

    /// The models the engine serves.
    pub fn variants(&self) -> &[crate::models::config::Variant] {
        self.inner.engine.variants()
    }

    /// Whether a job may ask for prompt expansion (an expander is plugged in).
    pub fn expand_available(&self) -> bool {
        self.inner.expander.is_some()
    }

    /// A job as stored (its input image not loaded).
    pub async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        self.inner.store.call(move |s| s.job(id)).await
    }

    /// A stored job with its input image loaded, ready to be submitted again (Re-roll, Remix).
    /// `None` when the job does not exist; an image-to-video job whose image is gone is an
    /// error, since resubmitting it could only fail later.
    pub async fn get_with_image(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        self.inner
            .store
            .call(move |s| {
                let Some(mut job) = s.job(id)? else {
                    return Ok(None);
                };
                if job.spec.kind == JobKind::ImageToVideo {
                    let image = s.job_image(id)?.ok_or_else(|| {
                        StoreError::Corrupt(format!("the input image of job {id} is missing"))
                    })?;
                    job.spec.image = Some(image);
                }
                Ok(Some(job))
            })
            .await
    }

    /// The effective settings of a guild (the defaults for direct messages).
    pub async fn settings(&self, guild: Option<u64>) -> Result<GuildSettings, StoreError> {
        self.inner.settings(guild).await
    }

    /// Every key with its value, default and whether the guild changed it.
    pub async fn settings_view(&self, guild: u64) -> Result<Vec<SettingView>, StoreError> {
        let current = self.settings(Some(guild)).await?;
        let overridden: Vec<String> = self
            .inner
            .store
            .call(move |s| s.setting_overrides(guild))
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        Ok(settings::view(
            &current,
            &self.inner.config.defaults,
            &overridden,
        ))
    }

    /// Sets `key` to `value` in `guild`, recording who did it.
    pub async fn set_setting(
        &self,
        guild: u64,
        user: u64,
        key: &str,
        value: &str,
    ) -> Result<SettingChange, SettingError> {
        let key = SettingKey::parse(key)?;
        let mut next = self.settings(Some(guild)).await.map_err(storage)?;
        let old = next.get(key);
        next.set(key, value, &self.bounds())?;
        let new = next.get(key);
        self.save_setting(guild, user, key, "set", old, new).await
    }

    /// Returns `key` to the operator's default in `guild`.
    pub async fn reset_setting(
        &self,
        guild: u64,
        user: u64,
        key: &str,
    ) -> Result<SettingChange, SettingError> {
        let key = SettingKey::parse(key)?;
        let current = self.settings(Some(guild)).await.map_err(storage)?;
        let old = current.get(key);
        let mut next = current;
        next.set(key, &self.inner.config.defaults.get(key), &self.bounds())?;
        let new = next.get(key);
        self.save_setting(guild, user, key, "reset", old, new).await
    }

    async fn save_setting(
        &self,
        guild: u64,
        user: u64,
        key: SettingKey,
        action: &str,
        old: String,
        new: String,
    ) -> Result<SettingChange, SettingError> {
        let entry = AuditEntry {
            guild_id: guild,
            user_id: user,
            at: SystemTime::now(),
            action: action.into(),
            key: key.name().into(),
            old: old.clone(),
            new: new.clone(),
        };
        let value = (action == "set").then(|| new.clone());
        self.inner
            .store
            .call(move |s| s.change_setting(&entry, value.as_deref()))
            .await
            .map_err(storage)?;
        // Dropped rather than replaced: two concurrent changes each hold a copy missing the
        // other's key; the next read rebuilds from the store, which has both.
        self.inner.state.lock().unwrap().settings.remove(&guild);
        tracing::info!(guild, user, key = key.name(), %old, %new, action, "guild setting changed");
        Ok(SettingChange { key, old, new })
    }

    pub async fn audit_log(&self, guild: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner
            .store
            .call(move |s| s.audit_log(guild, limit))
            .await
    }

    pub(super) fn bounds(&self) -> SettingsBounds {
        self.inner.bounds()
    }

    /// Tries again every finished job whose delivery did not go through (e.g. after the
    /// transport reconnected).
    pub async fn redeliver_pending(&self) -> Result<usize, StoreError> {
        let pending = self.inner.store.call(|s| s.undelivered()).await?;
        let n = pending.len();
        for job in pending {
            self.inner.spawn_delivery(job);
        }
        Ok(n)
    }

    /// Stops taking jobs, deals with the running ones as `mode` says, waits for deliveries in
    /// flight, and returns. Waiting jobs stay queued on disk for the next start.
    pub async fn shutdown(&self, mode: ShutdownMode) {
        {
            let mut state = self.inner.state.lock().unwrap();
            state.accepting = false;
            if mode == ShutdownMode::Requeue {
                for run in state.running.iter_mut() {
                    run.stop.get_or_insert(StopReason::Shutdown);
                    if let Some(token) = &run.engine_cancel {
                        token.cancel();
                    }
                    run.woken.notify_one();
                }
            }
        }
        self.inner.stop.send_replace(true);
        let runner = self.inner.runner.lock().unwrap().take();
        if let Some(runner) = runner {
            if let Err(e) = runner.await {
                tracing::error!(error = %e, "job runner ended badly");
            }
        }
        let drain = async {
            loop {
                let in_flight = {
                    let mut set = self.inner.deliveries.lock().unwrap();
                    if set.is_empty() {
                        break;
                    }
                    // Taken out so that the lock is not held across the wait.
                    std::mem::take(&mut *set)
                };
                in_flight.join_all().await;
            }
        };
        if tokio::time::timeout(self.inner.config.shutdown_grace, drain)
            .await
            .is_err()
        {
            // Dropping the set aborted them; they stay undelivered for the next start.
            tracing::warn!("deliveries still in flight at shutdown were abandoned");
        }
        tracing::info!("job service stopped");
    }
}

impl Inner {
    /// The effective settings of a guild: the cache, else the store (so a change or a restart
    /// is seen by every step that reads settings, the runner's moderation included).
    pub(super) async fn settings(&self, guild: Option<u64>) -> Result<GuildSettings, StoreError> {
        let Some(guild) = guild else {
            return Ok(self.config.defaults.clone());
        };
        if let Some(s) = self.state.lock().unwrap().settings.get(&guild) {
            return Ok(s.clone());
        }
        let overrides = self.store.call(move |s| s.setting_overrides(guild)).await?;
        let settings = self
            .config
            .defaults
            .clone()
            .with_overrides(&overrides, &self.bounds());
        self.state
            .lock()
            .unwrap()
            .settings
            .insert(guild, settings.clone());
        Ok(settings)
    }

    fn bounds(&self) -> SettingsBounds {
        SettingsBounds {
            limits: self.config.limits.clone(),
            variants: self.engine.variants().to_vec(),
        }
    }
}

fn storage(e: StoreError) -> SettingError {
    SettingError::Storage(e.to_string())
}
