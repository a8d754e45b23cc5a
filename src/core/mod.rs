//! The transport-agnostic core: a job's life, one step per file, and the state it lives in.
//!
//! A job's life, in the order it happens:
//! - [`ports`]: what the core needs from outside (the [`Notifier`] a transport implements,
//!   the [`PromptExpander`] the LLM client implements, the [`VideoEngine`] the engine adapter
//!   implements) and [`JobUpdate`], the one vocabulary for what happened to a job.
//! - [`validate`]: a member's options merged over the guild's defaults, and every rule a job
//!   must meet before it is stored.
//! - [`submit`]: into the store and the queue (and out again: cancel).
//! - [`runner`]: one job at a time through the expander and the engine, then encoding — or,
//!   with `max_batch` above 1, the next job and the compatible waiting jobs as one engine
//!   batch, each still on its own path.
//! - [`delivery`]: the video (or the last notice) to the notifier, until it is confirmed.
//! - [`views`]: what adapters may show of the queue and the counts.
//!
//! The state and its rules: [`jobs`] (what a job is; Re-roll and Remix derive from a stored
//! job here), [`scheduler`] (the fair queue), [`settings`] (per-guild settings), [`store`]
//! (the database), [`service`] (the [`JobService`] handle: start, shutdown, settings).
//! [`cluster`] is the same life split over processes sharing PostgreSQL: a gateway that stores
//! jobs and workers that claim, run and deliver them.
//!
//! The core imports no adapter and no configuration file type: the operator's configuration
//! converts into [`ServiceConfig`], and adapters plug in through the ports.

pub mod cluster;
pub mod delivery;
pub mod jobs;
pub mod ports;
pub mod refusal;
pub mod runner;
pub mod scheduler;
pub mod service;
pub mod settings;
pub mod store;
pub mod submit;
pub mod validate;
pub mod views;

pub use jobs::{JobId, JobKind, JobRecord, JobSpec, JobState, Origin, RemixEdit, VideoShape};
pub use ports::{
    fallback_line, DeliveredVideo, DeliveryError, ExpandOutcome, JobUpdate, Notifier,
    PromptExpander, Shown, VideoEngine,
};
pub use refusal::Refusal;
pub use scheduler::{MemberLimits, Scheduler};
pub use service::{JobService, ServiceConfig, ServiceError, ShutdownMode};
pub use settings::{GuildSettings, SettingError, SettingKey, SettingView, SettingsBounds};
pub use store::{Store, StoreError, StoreHandle};
pub use submit::{CancelError, CancelOutcome, Canceller, Submitted};
pub use validate::{apply_options, RequestOptions, MAX_SEED};
pub use views::{QueueEntry, QueueView, SettingChange, Stats};
