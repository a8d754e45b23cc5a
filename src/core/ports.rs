//! Ports: what the core needs from outside, as traits the adapters implement. The transport
//! (Discord) implements [`Notifier`], the LLM client implements [`PromptExpander`], the engine
//! adapter (`src/engine/port.rs`) implements [`VideoEngine`] (requests in,
//! [`EngineEvent`](crate::engine::EngineEvent)s out). [`JobUpdate`] is the one vocabulary for
//! "what happened to a job" that every adapter renders.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use thiserror::Error;

use super::jobs::{JobId, JobKind, JobRecord, Origin};
use crate::engine::{GenerationRequest, JobHandle, JobOptions};
use crate::models::config::Variant;

/// The inference engine as the core drives it: the models it serves (what submit accepts and
/// settings may name), and one generation per request, its events (started, progress, the
/// result) on the returned handle with a cancel token the core sets to stop it at its next
/// step. The engine's limits are the core's own configuration (`ServiceConfig::limits`), and
/// readiness is the app's concern, so neither is here.
pub trait VideoEngine: Send + Sync + 'static {
    fn variants(&self) -> &[Variant];
    /// Queues a job; the last event on the handle is `Finished` (a handle whose events end
    /// without one means the engine stopped).
    fn submit(&self, request: GenerationRequest, options: JobOptions) -> JobHandle;
    /// Queues compatible jobs (same variant, shape, frames, steps and eta) to run as one
    /// sampler batch: one handle per request, in order, each with its own events and its own
    /// cancel token that stops that job alone. The default submits them one by one (the jobs
    /// then run one after another), which is all a test double needs.
    fn submit_batch(&self, jobs: Vec<(GenerationRequest, JobOptions)>) -> Vec<JobHandle> {
        jobs.into_iter()
            .map(|(request, options)| self.submit(request, options))
            .collect()
    }
}

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
    /// The video is made. The service hands it to [`Notifier::deliver`] rather than sending
    /// this as an update; it names the state a transport shows along with the video.
    Done {
        generation: Duration,
    },
    Failed {
        error: String,
    },
    Cancelled {
        by_user: Option<u64>,
    },
}

/// A finished video, ready to be sent. Fitting it to the transport's size limit is the
/// adapter's job (it can re-encode from `path` with other [`EncodeOptions`](crate::video::EncodeOptions)).
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
    /// undelivered and is delivered again at the next start or [`JobService::redeliver_pending`](super::JobService::redeliver_pending).
    #[error("delivery failed, will retry: {0}")]
    Transient(String),
    /// Will never work (channel gone, no permission): recorded, not retried.
    #[error("delivery failed for good: {0}")]
    Permanent(String),
}

/// What a transport learned while showing a job that the store should keep, so that the job's
/// next message lands in the same place after a restart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shown {
    /// The transport's id of the message that shows the job, when it is new.
    pub message_id: Option<u64>,
}

/// The adapter's side: how the service talks back to members.
#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// Progress and state changes. Called at every step of a running job: throttle edits here.
    async fn job_update(&self, job: &JobRecord, update: JobUpdate) -> Shown;
    /// Sends a done job's video. `Ok` marks the job delivered.
    async fn deliver(&self, job: &JobRecord, video: DeliveredVideo)
        -> Result<Shown, DeliveryError>;
    /// Tells the member of a stored job that could not be read back (only its origin could)
    /// that it failed, with `reason`. `true` once told; a transport that cannot say so keeps
    /// the default, and the reason stays in the operator's log and the job's row.
    async fn job_lost(&self, _id: JobId, _origin: &Origin, _reason: &str) -> bool {
        false
    }
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

/// The one line a member sees when expansion falls back, e.g. `fallback_line("timed out")`:
/// every reason (the expander's and the service's) reads as the same kind of full sentence.
pub fn fallback_line(why: &str) -> String {
    format!("Prompt expansion {why}; your prompt was used as written.")
}
