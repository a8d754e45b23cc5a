//! The job's life — validate → persist → queue → (expand) → run on the engine → encode →
//! deliver — knowing nothing of Discord. A transport adapter calls [`JobService`] and hears back
//! through its [`Notifier`]; the prompt expander plugs in as a [`PromptExpander`].
//!
//! Guarantees:
//! - `submit` returns only once the job is on disk, so "queued" survives a crash.
//! - One runner task takes jobs from the [`Scheduler`] one at a time (one GPU).
//! - A job is marked delivered only when the notifier's `deliver` succeeded; at start-up every
//!   finished-but-undelivered job is delivered again, and jobs left running are queued again at
//!   the head. So a crash loses no job and, short of dying inside `deliver` itself, duplicates
//!   none.
//! - Database work runs on the blocking pool; the runtime threads that answer Discord's
//!   3-second acknowledgements never wait on the disk.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use thiserror::Error;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::expand::fallback_line;
use super::jobs::{JobId, JobKind, JobRecord, JobSpec, JobState, Origin};
use super::refusal::Refusal;
use super::scheduler::{Cancelled, MemberLimits, Scheduler};
use super::settings::{
    self, AuditEntry, GuildSettings, SettingError, SettingKey, SettingView, SettingsBounds,
};
use super::store::{JobCounts, StoreError, StoreHandle};
use crate::engine::image_input::{decode_image, ImageLimits};
use crate::engine::{
    CancelToken, EngineError, EngineEvent, EngineHandle, GenerationRequest, JobOptions, Limits,
};
use crate::models::config::Variant;
use crate::video::{encode_mp4, preview_png, EncodeOptions};
use image::RgbImage;

// ---------------------------------------------------------------------------------------------
// What the adapter implements.

/// A change in a job's life the member should see.
#[derive(Debug, Clone, PartialEq)]
pub enum JobUpdate {
    /// Waiting; 1 runs next. Sent when the place changes (the submit result is the first).
    Queued {
        position: usize,
    },
    /// The prompt expander is working on the prompt.
    Expanding,
    /// The prompt the model will see.
    Expanded {
        prompt: String,
    },
    /// The expander left the prompt as it was (unreachable LLM, refusal, blocked word...).
    /// `reason` is one full sentence for the member (see [`fallback_line`]).
    ExpansionSkipped {
        reason: String,
    },
    Running {
        step: usize,
        total: usize,
        elapsed: Duration,
        remaining: Duration,
        /// PNG of the middle frame of the current prediction, when one was due.
        preview_png: Option<Vec<u8>>,
    },
    /// Sampling is over; the MP4 is being written.
    Encoding,
    Failed {
        error: String,
    },
    Cancelled {
        by_user: Option<u64>,
    },
}

/// A finished video, ready to be sent. Fitting it to the transport's size limit is the
/// adapter's job (it can re-encode from `path` with other [`EncodeOptions`]).
#[derive(Clone)]
pub struct DeliveredVideo {
    pub mp4: Vec<u8>,
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    pub frames: usize,
    pub fps: u32,
    pub seed: u64,
    pub steps_run: usize,
    /// The prompt the model saw (the expansion, when there was one).
    pub prompt: String,
    pub prompt_truncated: bool,
    pub elapsed: Option<Duration>,
}

impl std::fmt::Debug for DeliveredVideo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveredVideo")
            .field("mp4", &format!("{} bytes", self.mp4.len()))
            .field("path", &self.path)
            .field("size", &(self.width, self.height))
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum DeliveryError {
    /// Worth trying again later (network, rate limit, transport down): the job stays
    /// undelivered and is delivered again at the next start or [`JobService::redeliver_pending`].
    #[error("delivery failed, will retry: {0}")]
    Transient(String),
    /// Will never work (channel gone, no permission): recorded, not retried.
    #[error("delivery failed for good: {0}")]
    Permanent(String),
}

/// The adapter's side: how the service talks back to members.
#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// Progress and state changes. Called at every step of a running job: throttle edits here.
    async fn job_update(&self, job: &JobRecord, update: JobUpdate);
    /// Sends a done job's video. `Ok` marks the job delivered.
    async fn deliver(&self, job: &JobRecord, video: DeliveredVideo) -> Result<(), DeliveryError>;
}

/// What the expander made of a prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum ExpandOutcome {
    Expanded(String),
    /// Keep the member's prompt; `reason` is logged and shown as is: one full sentence.
    Unchanged {
        reason: String,
    },
}

/// Enriches a short prompt before generation (an LLM call). It owns its own timeout.
#[async_trait]
pub trait PromptExpander: Send + Sync + 'static {
    async fn expand(&self, prompt: &str, kind: JobKind) -> ExpandOutcome;
}

// ---------------------------------------------------------------------------------------------
// The service's vocabulary.

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub db_path: PathBuf,
    /// Where finished MP4s are kept until (and after) delivery.
    pub results_dir: PathBuf,
    /// Settings of a guild that changed nothing, and of direct messages.
    pub defaults: GuildSettings,
    /// Most jobs waiting across the bot.
    pub global_cap: usize,
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
}

impl ServiceConfig {
    /// Defaults around a database path; results go in `results/` beside it.
    pub fn new(db_path: impl Into<PathBuf>) -> Self {
        let db_path = db_path.into();
        let results_dir = db_path.parent().unwrap_or(Path::new(".")).join("results");
        ServiceConfig {
            db_path,
            results_dir,
            defaults: GuildSettings::default(),
            global_cap: 100,
            limits: Limits::default(),
            preview_every: Some(Duration::from_secs(3)),
            preview_max_side: 512,
            encode: EncodeOptions::default(),
            notify_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    pub id: JobId,
    /// 1 runs next.
    pub position: usize,
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

/// One line of `/queue`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueEntry {
    pub id: JobId,
    /// 0 for the running job, else 1 = next.
    pub position: usize,
    pub user_id: u64,
    pub guild_id: Option<u64>,
    pub kind: JobKind,
    pub variant: Variant,
    /// `None` for a job of another guild: prompts stay within their server.
    pub prompt: Option<String>,
    pub steps: usize,
    pub queued_at: SystemTime,
    /// `(step, total)` of the running job.
    pub progress: Option<(usize, usize)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueView {
    pub running: Option<QueueEntry>,
    /// This guild's waiting jobs, in running order, with their bot-wide positions.
    pub waiting: Vec<QueueEntry>,
    /// Waiting jobs across the bot.
    pub total_waiting: usize,
    pub cap: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// This guild's jobs (all guilds' for `None`), by state.
    pub counts: JobCounts,
    pub total_waiting: usize,
    pub running: Option<JobId>,
    pub cap: usize,
    pub uptime: Duration,
}

/// A settings change, as `/config set` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingChange {
    pub key: SettingKey,
    pub old: String,
    pub new: String,
}

/// How [`JobService::shutdown`] treats the running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Stop it at its next step and put it back at the head of the queue (fast).
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
    inner: Arc<Inner>,
}

struct Inner {
    config: ServiceConfig,
    store: StoreHandle,
    engine: EngineHandle,
    notifier: Arc<dyn Notifier>,
    expander: Option<Arc<dyn PromptExpander>>,
    state: Mutex<State>,
    /// Something was queued: the runner looks again.
    wake: Notify,
    /// Set once, at shutdown.
    stop: watch::Sender<bool>,
    runner: Mutex<Option<tokio::task::JoinHandle<()>>>,
    deliveries: Mutex<JoinSet<()>>,
    started: std::time::Instant,
}

struct State {
    accepting: bool,
    scheduler: Scheduler,
    /// Waiting and running jobs (the queue view and the runner read them from here).
    active: HashMap<JobId, JobRecord>,
    running: Option<RunningJob>,
    settings: HashMap<u64, GuildSettings>,
    delivering: HashSet<JobId>,
}

struct RunningJob {
    id: JobId,
    progress: Option<(usize, usize)>,
    stop: Option<StopReason>,
    engine_cancel: Option<CancelToken>,
    /// Wakes the runner out of a prompt expansion.
    woken: Arc<Notify>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    User(u64),
    Shutdown,
}

impl JobService {
    /// Opens the store, recovers what a previous run left (jobs left running go back to the
    /// head of the queue, waiting jobs keep their order, finished-but-undelivered jobs are
    /// delivered again) and starts the runner.
    pub async fn start(
        config: ServiceConfig,
        engine: EngineHandle,
        notifier: Arc<dyn Notifier>,
        expander: Option<Arc<dyn PromptExpander>>,
    ) -> Result<JobService, ServiceError> {
        let results = config.results_dir.clone();
        tokio::task::spawn_blocking(move || std::fs::create_dir_all(&results))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
            .map_err(|source| ServiceError::Io {
                path: config.results_dir.clone(),
                source,
            })?;
        let store = StoreHandle::open(config.db_path.clone()).await?;
        let (recovered, last_round) = store
            .call(|s| Ok((s.recover()?, s.last_started_round()?)))
            .await?;
        if !recovered.interrupted.is_empty() {
            tracing::info!(jobs = ?recovered.interrupted, "interrupted jobs queued again");
        }
        let mut scheduler = Scheduler::new(config.global_cap);
        scheduler.resume_from_round(last_round);
        let mut active = HashMap::new();
        for job in recovered.queued {
            scheduler.restore(job.id, job.origin.user_id, job.round);
            active.insert(job.id, job);
        }
        let (stop, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            config,
            store,
            engine,
            notifier,
            expander,
            state: Mutex::new(State {
                accepting: true,
                scheduler,
                active,
                running: None,
                settings: HashMap::new(),
                delivering: HashSet::new(),
            }),
            wake: Notify::new(),
            stop,
            runner: Mutex::new(None),
            deliveries: Mutex::new(JoinSet::new()),
            started: std::time::Instant::now(),
        });
        for job in recovered.undelivered {
            inner.spawn_delivery(job);
        }
        let runner = tokio::spawn(run_loop(inner.clone()));
        *inner.runner.lock().unwrap() = Some(runner);
        Ok(JobService { inner })
    }

    /// A spec filled with the guild's defaults and a random seed; the adapter overrides what
    /// the member chose.
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
            image: None,
        })
    }

    /// Validates, stores and queues a job. On `Ok` the job is on disk.
    pub async fn submit(&self, spec: JobSpec, origin: Origin) -> Result<Submitted, Refusal> {
        if !self.inner.state.lock().unwrap().accepting {
            return Err(Refusal::ShuttingDown);
        }
        let settings = self
            .settings(origin.guild_id)
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        self.validate(&spec, &origin, &settings)?;
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
        state.active.insert(
            id,
            JobRecord::queued(
                id,
                spec,
                origin,
                round,
                crate::core::jobs::from_millis(crate::core::jobs::to_millis(now)),
            ),
        );
        drop(state);
        self.inner.wake.notify_one();
        tracing::info!(job = %id, position, "job queued");
        Ok(Submitted { id, position })
    }

    fn validate(&self, spec: &JobSpec, origin: &Origin, s: &GuildSettings) -> Result<(), Refusal> {
        if !s.channel_allowed(origin.channel_id) {
            return Err(Refusal::ChannelNotAllowed {
                allowed: s.allowed_channels.clone(),
            });
        }
        if spec.prompt.trim().is_empty() {
            return Err(Refusal::EmptyPrompt);
        }
        let len = spec.prompt.chars().count();
        if len > s.max_prompt_len {
            return Err(Refusal::PromptTooLong {
                len,
                max: s.max_prompt_len,
            });
        }
        // A Re-roll carries its stored expansion: it meets today's blocked words too.
        for text in [
            Some(spec.prompt.as_str()),
            spec.expanded_prompt.as_deref(),
            spec.negative.as_deref(),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(word) = s.blocked_word_in(text) {
                return Err(Refusal::BlockedWord {
                    word: word.to_string(),
                });
            }
        }
        let loaded = self.inner.engine.variants();
        if !loaded.contains(&spec.variant) {
            return Err(Refusal::ModelNotLoaded {
                variant: spec.variant.name().to_string(),
                loaded: loaded.iter().map(|v| v.name().to_string()).collect(),
            });
        }
        match spec.kind {
            JobKind::ImageToVideo if spec.image.is_none() => {
                return Err(Refusal::Invalid(
                    "image-to-video needs an input image".into(),
                ))
            }
            JobKind::ImageToVideo if !spec.variant.is_image_to_video() => {
                return Err(Refusal::Invalid(format!(
                    "the model `{}` makes videos from text, not from an image",
                    spec.variant
                )))
            }
            JobKind::TextToVideo if spec.variant.is_image_to_video() => {
                return Err(Refusal::Invalid(format!(
                    "the model `{}` needs an input image",
                    spec.variant
                )))
            }
            _ => {}
        }
        if spec.steps == 0 || spec.steps > s.max_steps {
            return Err(Refusal::Invalid(format!(
                "steps must be between 1 and {} on this server",
                s.max_steps
            )));
        }
        // The engine's own checks (cfg, eta, fps, size), so that a bad request is refused now
        // rather than failing after its wait in the queue.
        let image = match &spec.image {
            Some(bytes) => Some(Arc::new(
                decode_image(bytes, &ImageLimits::default())
                    .map_err(|m| Refusal::Invalid(capitalise(&m)))?,
            )),
            None => None,
        };
        self.inner
            .config
            .limits
            .check(&request_for(spec, image), &spec.variant.config())
            .map_err(|m| Refusal::Invalid(capitalise(&m)))
    }

    /// Cancels a waiting job (removed at once) or a running one (stops at its next step).
    pub async fn cancel(&self, id: JobId, by: Canceller) -> Result<CancelOutcome, CancelError> {
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
                    CancelOutcome::Removed
                }
                Some(Cancelled::Running) => {
                    if let Some(run) = state.running.as_mut().filter(|r| r.id == id) {
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

    /// The queue as `guild` may see it.
    pub fn queue_view(&self, guild: Option<u64>) -> QueueView {
        let state = self.inner.state.lock().unwrap();
        let entry = |job: &JobRecord, position: usize, progress| QueueEntry {
            id: job.id,
            position,
            user_id: job.origin.user_id,
            guild_id: job.origin.guild_id,
            kind: job.spec.kind,
            variant: job.spec.variant,
            prompt: (job.origin.guild_id == guild).then(|| job.spec.prompt.clone()),
            steps: job.spec.steps,
            queued_at: job.created_at,
            progress,
        };
        let running = state.running.as_ref().and_then(|run| {
            state
                .active
                .get(&run.id)
                .map(|job| entry(job, 0, run.progress))
        });
        let waiting = state
            .scheduler
            .order()
            .into_iter()
            .enumerate()
            .filter_map(|(i, (id, _))| state.active.get(&id).map(|job| (i + 1, job)))
            .filter(|(_, job)| job.origin.guild_id == guild)
            .map(|(position, job)| entry(job, position, None))
            .collect();
        QueueView {
            running,
            waiting,
            total_waiting: state.scheduler.waiting_len(),
            cap: state.scheduler.cap(),
        }
    }

    /// Current place of a waiting job.
    pub fn position(&self, id: JobId) -> Option<usize> {
        self.inner.state.lock().unwrap().scheduler.position(id)
    }

    pub async fn stats(&self, guild: Option<u64>) -> Result<Stats, StoreError> {
        let counts = self
            .inner
            .store
            .call(move |s| s.counts(guild, SystemTime::now()))
            .await?;
        let state = self.inner.state.lock().unwrap();
        Ok(Stats {
            counts,
            total_waiting: state.scheduler.waiting_len(),
            running: state.scheduler.running(),
            cap: state.scheduler.cap(),
            uptime: self.inner.started.elapsed(),
        })
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

    /// Remembers the message that shows a job, for edits after a restart.
    pub async fn set_message_id(&self, id: JobId, message_id: u64) -> Result<(), StoreError> {
        if let Some(job) = self.inner.state.lock().unwrap().active.get_mut(&id) {
            job.origin.message_id = Some(message_id);
        }
        self.inner
            .store
            .call(move |s| s.set_message_id(id, message_id))
            .await
    }

    /// The effective settings of a guild (the defaults for direct messages).
    pub async fn settings(&self, guild: Option<u64>) -> Result<GuildSettings, StoreError> {
        let Some(guild) = guild else {
            return Ok(self.inner.config.defaults.clone());
        };
        if let Some(s) = self.inner.state.lock().unwrap().settings.get(&guild) {
            return Ok(s.clone());
        }
        let overrides = self
            .inner
            .store
            .call(move |s| s.setting_overrides(guild))
            .await?;
        let settings = self
            .inner
            .config
            .defaults
            .clone()
            .with_overrides(&overrides, &self.bounds());
        self.inner
            .state
            .lock()
            .unwrap()
            .settings
            .insert(guild, settings.clone());
        Ok(settings)
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

    fn bounds(&self) -> SettingsBounds {
        SettingsBounds {
            limits: self.inner.config.limits.clone(),
            variants: self.inner.engine.variants().to_vec(),
        }
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

    /// Stops taking jobs, deals with the running one as `mode` says, waits for deliveries in
    /// flight, and returns. Waiting jobs stay queued on disk for the next start.
    pub async fn shutdown(&self, mode: ShutdownMode) {
        {
            let mut state = self.inner.state.lock().unwrap();
            state.accepting = false;
            if mode == ShutdownMode::Requeue {
                if let Some(run) = state.running.as_mut() {
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

fn storage(e: StoreError) -> SettingError {
    SettingError::Storage(e.to_string())
}

fn may_cancel(job: &JobRecord, by: &Canceller) -> bool {
    job.origin.user_id == by.user_id || (by.is_admin && job.origin.guild_id == by.guild_id)
}

fn cancel_reason(job: &JobRecord, by: u64) -> String {
    if job.origin.user_id == by {
        "cancelled by its author".into()
    } else {
        format!("cancelled by a moderator ({by})")
    }
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The engine request of a spec.
fn request_for(spec: &JobSpec, image: Option<Arc<RgbImage>>) -> GenerationRequest {
    let mut req =
        GenerationRequest::with_defaults(spec.variant, spec.effective_prompt(), spec.seed);
    req.negative = spec.negative.clone().filter(|n| !n.trim().is_empty());
    req.steps = spec.steps;
    req.cfg = spec.cfg;
    req.eta = spec.eta;
    req.fps = spec.fps;
    req.image = image;
    if let Some(shape) = spec.shape {
        req.height = shape.height;
        req.width = shape.width;
        req.frames = shape.frames;
    }
    req
}

// ---------------------------------------------------------------------------------------------
// The runner.

async fn run_loop(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    loop {
        if *stop.borrow() {
            break;
        }
        let next = {
            let mut state = inner.state.lock().unwrap();
            match state.scheduler.start_next() {
                None => None,
                Some(id) => match state.active.get(&id).cloned() {
                    Some(job) => {
                        state.running = Some(RunningJob {
                            id,
                            progress: None,
                            stop: None,
                            engine_cancel: None,
                            woken: Arc::new(Notify::new()),
                        });
                        Some(job)
                    }
                    None => {
                        // Cannot happen (every queued id has a record); never wedge the queue.
                        tracing::error!(job = %id, "queued job without a record skipped");
                        state.scheduler.finish(id);
                        continue;
                    }
                },
            }
        };
        match next {
            Some(job) => {
                // Everyone behind moved up one; tell them without holding up the GPU.
                let positions = inner.clone();
                tokio::spawn(async move { positions.broadcast_positions().await });
                inner.run_job(job).await;
            }
            None => {
                tokio::select! {
                    _ = inner.wake.notified() => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

/// How a run ended.
enum Ending {
    Done(Box<JobRecord>),
    Failed(String),
    Cancelled(u64),
    Requeue,
}

impl Inner {
    async fn run_job(self: &Arc<Self>, mut job: JobRecord) {
        let id = job.id;
        let now = SystemTime::now();
        if let Err(e) = self.store.call(move |s| s.mark_running(id, now)).await {
            tracing::error!(job = %id, error = %e, "could not record the start");
        }
        job.state = JobState::Running;
        job.started_at = Some(now);
        tracing::info!(job = %id, variant = %job.spec.variant, "job started");

        let ending = self.generate(&mut job).await;
        let now = SystemTime::now();
        let stored = match &ending {
            Ending::Done(done) => {
                let (path, steps, truncated) = (
                    done.result_path.clone().unwrap_or_default(),
                    done.steps_run.unwrap_or(0),
                    done.prompt_truncated,
                );
                self.store
                    .call(move |s| s.mark_done(id, now, &path, steps, truncated))
                    .await
            }
            Ending::Failed(error) => {
                let error = error.clone();
                self.store
                    .call(move |s| s.mark_ended(id, JobState::Failed, now, &error))
                    .await
            }
            Ending::Cancelled(by) => {
                let reason = cancel_reason(&job, *by);
                self.store
                    .call(move |s| s.mark_ended(id, JobState::Cancelled, now, &reason))
                    .await
            }
            Ending::Requeue => self.store.call(move |s| s.mark_queued(id)).await,
        };
        if let Err(e) = stored {
            tracing::error!(job = %id, error = %e, "could not record the end of a job");
        }
        {
            let mut state = self.state.lock().unwrap();
            state.running = None;
            match &ending {
                Ending::Requeue => {
                    state.scheduler.requeue_running();
                    let mut waiting = job.clone();
                    waiting.state = JobState::Queued;
                    waiting.started_at = None;
                    state.active.insert(id, waiting);
                }
                _ => {
                    state.scheduler.finish(id);
                    state.active.remove(&id);
                }
            }
        }
        job.finished_at = Some(now);
        match ending {
            Ending::Done(done) => self.spawn_delivery(*done),
            Ending::Failed(error) => {
                job.state = JobState::Failed;
                job.error = Some(error.clone());
                self.finish_notice(job, JobUpdate::Failed { error }).await
            }
            Ending::Cancelled(by) => {
                job.state = JobState::Cancelled;
                self.finish_notice(job, JobUpdate::Cancelled { by_user: Some(by) })
                    .await
            }
            Ending::Requeue => {
                tracing::info!(job = %id, "job interrupted by shutdown, queued again");
                let position = self.state.lock().unwrap().scheduler.position(id);
                if let Some(position) = position {
                    self.update(&job, JobUpdate::Queued { position }).await;
                }
            }
        }
    }

    /// The stored input image of an image-to-video job, decoded (it was validated at submit).
    async fn input_image(&self, id: JobId) -> Result<Arc<RgbImage>, String> {
        let bytes = self
            .store
            .call(move |s| s.job_image(id))
            .await
            .map_err(|e| format!("the input image could not be read back: {e}"))?
            .ok_or_else(|| "the input image of this job is missing".to_string())?;
        tokio::task::spawn_blocking(move || decode_image(&bytes, &ImageLimits::default()))
            .await
            .map_err(|e| format!("decoding the input image failed: {e}"))?
            .map(Arc::new)
    }

    /// Expansion, engine run and encode. Fills `job`'s result fields on success.
    async fn generate(self: &Arc<Self>, job: &mut JobRecord) -> Ending {
        let id = job.id;
        let image = if job.spec.kind == JobKind::ImageToVideo {
            match self.input_image(id).await {
                Ok(image) => Some(image),
                Err(message) => return Ending::Failed(message),
            }
        } else {
            None
        };
        if job.spec.expand && job.spec.expanded_prompt.is_none() {
            if let Some(ending) = self.expand(job).await {
                return ending;
            }
        }
        if let Some(ending) = self.stop_requested() {
            return ending;
        }

        let request = request_for(&job.spec, image);
        let handle = self.engine.submit(
            request,
            JobOptions {
                preview_every: self.config.preview_every,
            },
        );
        {
            let mut state = self.state.lock().unwrap();
            if let Some(run) = state.running.as_mut() {
                if run.stop.is_some() {
                    handle.cancel.cancel();
                }
                run.engine_cancel = Some(handle.cancel.clone());
            }
        }
        let mut events = handle.events;
        let result = loop {
            match events.recv().await {
                None => break Err(EngineError::Stopped),
                Some(EngineEvent::Started) => {
                    let total = job.spec.steps;
                    self.set_progress(0, total);
                    self.update(
                        job,
                        JobUpdate::Running {
                            step: 0,
                            total,
                            elapsed: Duration::ZERO,
                            remaining: Duration::ZERO,
                            preview_png: None,
                        },
                    )
                    .await;
                }
                Some(EngineEvent::Progress(p)) => {
                    self.set_progress(p.step, p.total);
                    let max_side = self.config.preview_max_side;
                    let preview_png = match p.preview {
                        Some(frame) => {
                            tokio::task::spawn_blocking(move || preview_png(&frame, max_side).ok())
                                .await
                                .ok()
                                .flatten()
                        }
                        None => None,
                    };
                    self.update(
                        job,
                        JobUpdate::Running {
                            step: p.step,
                            total: p.total,
                            elapsed: p.elapsed,
                            remaining: p.remaining,
                            preview_png,
                        },
                    )
                    .await;
                }
                Some(EngineEvent::Finished(result)) => break result,
            }
        };
        let generated = match result {
            Ok(g) => g,
            Err(EngineError::Cancelled) | Err(EngineError::Stopped) => {
                return self
                    .stop_requested()
                    .unwrap_or_else(|| Ending::Failed("the engine stopped".into()))
            }
            Err(e) => return Ending::Failed(e.to_string()),
        };

        self.update(job, JobUpdate::Encoding).await;
        let path = self.config.results_dir.join(format!("{}.mp4", id.0));
        let (video, opts, out) = (generated.video, self.config.encode.clone(), path.clone());
        let encoded = tokio::task::spawn_blocking(move || write_mp4_durably(&video, &opts, &out))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| format!("{e:#}")));
        if let Err(e) = encoded {
            return Ending::Failed(format!("the video could not be encoded: {e}"));
        }
        let mut done = job.clone();
        done.state = JobState::Done;
        done.result_path = Some(path);
        done.steps_run = Some(generated.steps_run);
        done.prompt_truncated = generated.prompt_truncated;
        done.finished_at = Some(SystemTime::now());
        Ending::Done(Box::new(done))
    }

    /// Runs the expander unless stopped meanwhile; `Some` when the job must end instead.
    async fn expand(self: &Arc<Self>, job: &mut JobRecord) -> Option<Ending> {
        let Some(expander) = self.expander.clone() else {
            // Only a job stored while an LLM was configured gets here (the adapter refuses
            // `expand` otherwise); the member still hears why the prompt stayed as written.
            let reason = fallback_line("is not available here");
            self.update(job, JobUpdate::ExpansionSkipped { reason })
                .await;
            return None;
        };
        self.update(job, JobUpdate::Expanding).await;
        let woken = self.state.lock().unwrap().running.as_ref()?.woken.clone();
        let (prompt, kind) = (job.spec.prompt.clone(), job.spec.kind);
        let outcome = tokio::select! {
            outcome = expander.expand(&prompt, kind) => outcome,
            _ = woken.notified() => return self.stop_requested(),
        };
        match outcome {
            ExpandOutcome::Expanded(text) if !text.trim().is_empty() => {
                let settings = self.settings_of(job.origin.guild_id).await;
                if let Some(word) = settings.blocked_word_in(&text) {
                    // The member's own prompt passed the filter; the model's addition did not.
                    tracing::info!(job = %job.id, %word, "expanded prompt has a blocked word");
                    let reason = fallback_line("added a word this server blocks");
                    self.update(job, JobUpdate::ExpansionSkipped { reason })
                        .await;
                    return None;
                }
                let (id, saved) = (job.id, text.clone());
                if let Err(e) = self
                    .store
                    .call(move |s| s.set_expanded_prompt(id, Some(&saved)))
                    .await
                {
                    tracing::warn!(job = %id, error = %e, "could not store the expanded prompt");
                }
                job.spec.expanded_prompt = Some(text.clone());
                if let Some(active) = self.state.lock().unwrap().active.get_mut(&job.id) {
                    active.spec.expanded_prompt = Some(text.clone());
                }
                self.update(job, JobUpdate::Expanded { prompt: text }).await;
            }
            ExpandOutcome::Expanded(_) => {
                let reason = fallback_line("got an empty answer");
                self.update(job, JobUpdate::ExpansionSkipped { reason })
                    .await;
            }
            ExpandOutcome::Unchanged { reason } => {
                tracing::info!(job = %job.id, %reason, "prompt not expanded");
                self.update(job, JobUpdate::ExpansionSkipped { reason })
                    .await;
            }
        }
        None
    }

    /// The ending a stop request asks for, if one was made.
    fn stop_requested(&self) -> Option<Ending> {
        let state = self.state.lock().unwrap();
        match state.running.as_ref()?.stop? {
            StopReason::User(by) => Some(Ending::Cancelled(by)),
            StopReason::Shutdown => Some(Ending::Requeue),
        }
    }

    fn set_progress(&self, step: usize, total: usize) {
        if let Some(run) = self.state.lock().unwrap().running.as_mut() {
            run.progress = Some((step, total));
        }
    }

    async fn settings_of(&self, guild: Option<u64>) -> GuildSettings {
        guild
            .and_then(|g| self.state.lock().unwrap().settings.get(&g).cloned())
            .unwrap_or_else(|| self.config.defaults.clone())
    }

    /// A job update that cannot hold the runner for longer than `notify_timeout`.
    async fn update(&self, job: &JobRecord, update: JobUpdate) {
        let call = self.notifier.job_update(job, update);
        if tokio::time::timeout(self.config.notify_timeout, call)
            .await
            .is_err()
        {
            tracing::warn!(job = %job.id, "job update timed out");
        }
    }

    /// The last word on a job without a video: tell the member, then mark it delivered.
    async fn finish_notice(&self, job: JobRecord, update: JobUpdate) {
        self.update(&job, update).await;
        let id = job.id;
        if let Err(e) = self.store.call(move |s| s.mark_delivered(id, None)).await {
            tracing::warn!(job = %id, error = %e, "could not mark the notice delivered");
        }
    }

    /// Tells every waiting job its current place.
    async fn broadcast_positions(&self) {
        let order = self.state.lock().unwrap().scheduler.order();
        for (id, _) in order {
            // Fresh look: the job may have started or gone since the order was read.
            let current = {
                let state = self.state.lock().unwrap();
                state
                    .scheduler
                    .position(id)
                    .and_then(|p| state.active.get(&id).map(|j| (p, j.clone())))
            };
            if let Some((position, job)) = current {
                self.update(&job, JobUpdate::Queued { position }).await;
            }
        }
    }

    /// Delivers a finished job in the background (at most once at a time per job).
    fn spawn_delivery(self: &Arc<Self>, job: JobRecord) {
        if !self.state.lock().unwrap().delivering.insert(job.id) {
            return;
        }
        let inner = self.clone();
        let mut set = self.deliveries.lock().unwrap();
        // Reap finished ones so the set does not grow without bound.
        while set.try_join_next().is_some() {}
        set.spawn(async move {
            let id = job.id;
            inner.deliver(job).await;
            inner.state.lock().unwrap().delivering.remove(&id);
        });
    }

    async fn deliver(&self, job: JobRecord) {
        let id = job.id;
        match job.state {
            JobState::Done => {}
            JobState::Failed => {
                let error = job.error.clone().unwrap_or_else(|| "unknown error".into());
                return self.finish_notice(job, JobUpdate::Failed { error }).await;
            }
            JobState::Cancelled => {
                return self
                    .finish_notice(job, JobUpdate::Cancelled { by_user: None })
                    .await
            }
            JobState::Queued | JobState::Running => return,
        }
        let Some(path) = job.result_path.clone() else {
            return self.give_up(id, "the job has no video file".into()).await;
        };
        let read_path = path.clone();
        let mp4 = match tokio::task::spawn_blocking(move || std::fs::read(&read_path)).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                return self
                    .give_up(
                        id,
                        format!("the video file {} is unreadable: {e}", path.display()),
                    )
                    .await
            }
            Err(e) => return tracing::error!(job = %id, error = %e, "delivery task failed"),
        };
        let shape = request_for(&job.spec, None);
        let video = DeliveredVideo {
            mp4,
            path,
            width: shape.width as u32,
            height: shape.height as u32,
            frames: shape.frames,
            fps: job.spec.variant.config().defaults.save_fps,
            seed: job.spec.seed,
            steps_run: job.steps_run.unwrap_or(job.spec.steps),
            prompt: job.spec.effective_prompt().to_string(),
            prompt_truncated: job.prompt_truncated,
            elapsed: job.run_time(),
        };
        match self.notifier.deliver(&job, video).await {
            Ok(()) => {
                if let Err(e) = self.store.call(move |s| s.mark_delivered(id, None)).await {
                    // The member has the video; a restart would send it again. Say so loudly.
                    tracing::error!(job = %id, error = %e, "delivered, but could not record it");
                } else {
                    tracing::info!(job = %id, "job delivered");
                }
            }
            Err(DeliveryError::Permanent(reason)) => self.give_up(id, reason).await,
            Err(DeliveryError::Transient(reason)) => {
                tracing::warn!(job = %id, %reason, "delivery failed; will retry at the next start");
            }
        }
    }

    async fn give_up(&self, id: JobId, reason: String) {
        tracing::warn!(job = %id, %reason, "delivery given up");
        if let Err(e) = self
            .store
            .call(move |s| s.mark_delivered(id, Some(&reason)))
            .await
        {
            tracing::error!(job = %id, error = %e, "could not record a failed delivery");
        }
    }
}

/// Encodes to a temporary name, syncs, then renames: the result file is whole or absent.
fn write_mp4_durably(
    video: &crate::video::VideoFrames,
    opts: &EncodeOptions,
    path: &Path,
) -> anyhow::Result<()> {
    let tmp = path.with_extension("mp4.part");
    encode_mp4(video, opts, &tmp)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // The rename itself must reach the disk too.
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
