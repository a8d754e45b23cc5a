//! The transport-agnostic core: jobs, the fair queue, per-guild settings, the store, and the
//! service that runs a job's life between the transport adapter and the engine.

pub mod jobs;
pub mod refusal;
pub mod scheduler;
pub mod service;
pub mod settings;
pub mod store;

pub use jobs::{JobId, JobKind, JobRecord, JobSpec, JobState, Origin, VideoShape};
pub use refusal::Refusal;
pub use scheduler::{MemberLimits, Scheduler};
pub use service::{
    CancelError, CancelOutcome, Canceller, DeliveredVideo, DeliveryError, ExpandOutcome,
    JobService, JobUpdate, Notifier, PromptExpander, QueueEntry, QueueView, ServiceConfig,
    ServiceError, SettingChange, ShutdownMode, Stats, Submitted,
};
pub use settings::{GuildSettings, SettingError, SettingKey, SettingView, SettingsBounds};
pub use store::{Store, StoreError, StoreHandle};
