//! The inference actor: one thread owns the device and the loaded pipelines, takes jobs over a
//! channel one at a time, streams progress events, honours cancellation between steps, and
//! answers every job with a result or a typed error — a panic in model code included.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::mpsc as tokio_mpsc;

use super::error::EngineError;
use super::pipeline::{Generated, Pipeline};
use super::request::{GenerationRequest, Limits};
use crate::models::config::Variant;
use crate::sampler::ddim::Flow;

/// Shared flag a job's owner sets to stop it at the next step boundary.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Progress of a running job.
#[derive(Debug, Clone)]
pub struct Progress {
    pub step: usize,
    pub total: usize,
    pub elapsed: Duration,
    pub remaining: Duration,
    /// Decoded middle frame of the current prediction, when one was due.
    pub preview: Option<image::RgbImage>,
}

#[derive(Debug, Clone)]
pub enum EngineEvent {
    /// The actor took the job off its queue.
    Started,
    Progress(Progress),
    /// Always the last event of a job.
    Finished(Result<Generated, EngineError>),
}

/// How a submitter wants its progress.
#[derive(Debug, Clone)]
pub struct JobOptions {
    /// Minimum time between two preview images; `None` for no previews.
    pub preview_every: Option<Duration>,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            preview_every: Some(Duration::from_millis(1500)),
        }
    }
}

struct Job {
    request: GenerationRequest,
    options: JobOptions,
    events: tokio_mpsc::UnboundedSender<EngineEvent>,
    cancel: CancelToken,
}

/// The submitter's side of one job.
pub struct JobHandle {
    pub events: tokio_mpsc::UnboundedReceiver<EngineEvent>,
    pub cancel: CancelToken,
}

impl JobHandle {
    /// Blocks until the job finishes, passing every progress event to `on_progress`.
    pub fn wait_blocking(
        mut self,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<Generated, EngineError> {
        while let Some(event) = self.events.blocking_recv() {
            match event {
                EngineEvent::Started => {}
                EngineEvent::Progress(p) => on_progress(&p),
                EngineEvent::Finished(result) => return result,
            }
        }
        Err(EngineError::Stopped)
    }
}

/// Cheap, cloneable handle to the actor.
#[derive(Clone)]
pub struct EngineHandle {
    jobs: mpsc::Sender<Job>,
    variants: Arc<Vec<Variant>>,
}

impl EngineHandle {
    /// A handle that runs nothing but names `variants`: a gateway's, whose workers serve them.
    /// A job submitted to it ends at once with [`EngineError::Stopped`].
    pub fn without_models(variants: Vec<Variant>) -> EngineHandle {
        let (jobs, _) = mpsc::channel();
        EngineHandle {
            jobs,
            variants: Arc::new(variants),
        }
    }

    /// Starts the actor thread. `load` runs ON that thread (device contexts stay there) and
    /// returns the pipelines to serve; a load error is returned here.
    pub fn spawn<F>(load: F, limits: Limits) -> Result<EngineHandle, EngineError>
    where
        F: FnOnce() -> Result<Vec<Pipeline>, EngineError> + Send + 'static,
    {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("floor33-engine".into())
            .spawn(move || {
                let loaded = std::panic::catch_unwind(AssertUnwindSafe(load))
                    .unwrap_or_else(|p| Err(EngineError::Internal(panic_text(&p))));
                let pipelines = match loaded {
                    Ok(pipelines) => pipelines,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let by_variant: HashMap<Variant, Pipeline> = pipelines
                    .into_iter()
                    .map(|p| (p.config().variant, p))
                    .collect();
                let _ = ready_tx.send(Ok(by_variant.keys().copied().collect::<Vec<_>>()));
                run(by_variant, jobs_rx, limits);
            })
            .map_err(|e| EngineError::Internal(format!("cannot start engine thread: {e}")))?;
        let variants = ready_rx
            .recv()
            .map_err(|_| EngineError::Internal("engine thread died while loading".into()))??;
        Ok(EngineHandle {
            jobs: jobs_tx,
            variants: Arc::new(variants),
        })
    }

    /// The models this engine serves.
    pub fn variants(&self) -> &[Variant] {
        &self.variants
    }

    /// Queues a job. Events arrive on the returned handle; the last one is `Finished`.
    pub fn submit(&self, request: GenerationRequest, options: JobOptions) -> JobHandle {
        let (events_tx, events_rx) = tokio_mpsc::unbounded_channel();
        let cancel = CancelToken::default();
        let job = Job {
            request,
            options,
            events: events_tx,
            cancel: cancel.clone(),
        };
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            let _ = job
                .events
                .send(EngineEvent::Finished(Err(EngineError::Stopped)));
        }
        JobHandle {
            events: events_rx,
            cancel,
        }
    }
}

fn panic_text(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic in the engine".into())
}

/// The actor loop: ends when every handle is dropped.
fn run(pipelines: HashMap<Variant, Pipeline>, jobs: mpsc::Receiver<Job>, limits: Limits) {
    while let Ok(job) = jobs.recv() {
        if job.cancel.is_cancelled() {
            let _ = job
                .events
                .send(EngineEvent::Finished(Err(EngineError::Cancelled)));
            continue;
        }
        let _ = job.events.send(EngineEvent::Started);
        let result = match pipelines.get(&job.request.variant) {
            None => Err(EngineError::ModelNotLoaded(job.request.variant.to_string())),
            Some(pipeline) => {
                std::panic::catch_unwind(AssertUnwindSafe(|| run_job(pipeline, &job, &limits)))
                    .unwrap_or_else(|p| Err(EngineError::Internal(panic_text(&p))))
            }
        };
        match &result {
            Ok(g) => {
                tracing::info!(variant = %job.request.variant, seconds = g.elapsed.as_secs_f64(), "job finished")
            }
            Err(EngineError::Cancelled) => tracing::info!("job cancelled"),
            Err(e) => tracing::warn!(error = %e, "job failed"),
        }
        let _ = job.events.send(EngineEvent::Finished(result));
    }
}

fn run_job(pipeline: &Pipeline, job: &Job, limits: &Limits) -> Result<Generated, EngineError> {
    let mut last_preview: Option<Instant> = None;
    pipeline.generate(&job.request, limits, &mut |p| {
        if job.cancel.is_cancelled() {
            return Flow::Stop;
        }
        let due = match (job.options.preview_every, last_preview) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(every), Some(at)) => at.elapsed() >= every,
        };
        let preview = if due && p.step < p.total {
            last_preview = Some(Instant::now());
            match pipeline.preview_frame(p.pred_x0) {
                Ok(frame) => Some(frame),
                Err(e) => {
                    tracing::warn!(error = %e, "preview failed");
                    None
                }
            }
        } else {
            None
        };
        let event = EngineEvent::Progress(Progress {
            step: p.step,
            total: p.total,
            elapsed: p.elapsed,
            remaining: p.remaining,
            preview,
        });
        // A submitter that went away no longer wants the video.
        if job.events.send(event).is_err() {
            return Flow::Stop;
        }
        if job.cancel.is_cancelled() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    })
}
