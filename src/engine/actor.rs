//! The inference actor: one thread owns the device and the loaded pipelines, takes work over a
//! channel — one job, or several compatible jobs to run as one sampler batch — streams each
//! job's progress events, honours each job's cancellation between steps, and answers every job
//! with a result or a typed error — a panic in model code included.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::mpsc as tokio_mpsc;

use super::error::EngineError;
use super::pipeline::{batch_compatible, Generated, Pipeline, StepProgress};
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

/// What the actor takes off its channel: the jobs of one submit (one, or a batch).
type Work = Vec<Job>;

/// Cheap, cloneable handle to the actor.
#[derive(Clone)]
pub struct EngineHandle {
    jobs: mpsc::Sender<Work>,
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
        let (jobs_tx, jobs_rx) = mpsc::channel::<Work>();
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
        self.submit_batch(vec![(request, options)])
            .pop()
            .expect("one handle per request")
    }

    /// Queues several jobs to run as one sampler batch ([`Pipeline::generate_batch`]): one
    /// handle per request, in order, each with its own events (its own `Started`, progress,
    /// previews and `Finished`) and its own cancel token, which stops that job alone. Jobs
    /// that are not [`batch_compatible`] with the first are run one after another instead.
    pub fn submit_batch(&self, jobs: Vec<(GenerationRequest, JobOptions)>) -> Vec<JobHandle> {
        let mut handles = Vec::with_capacity(jobs.len());
        let work: Work = jobs
            .into_iter()
            .map(|(request, options)| {
                let (events_tx, events_rx) = tokio_mpsc::unbounded_channel();
                let cancel = CancelToken::default();
                handles.push(JobHandle {
                    events: events_rx,
                    cancel: cancel.clone(),
                });
                Job {
                    request,
                    options,
                    events: events_tx,
                    cancel,
                }
            })
            .collect();
        if let Err(mpsc::SendError(work)) = self.jobs.send(work) {
            for job in work {
                let _ = job
                    .events
                    .send(EngineEvent::Finished(Err(EngineError::Stopped)));
            }
        }
        handles
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
fn run(pipelines: HashMap<Variant, Pipeline>, work: mpsc::Receiver<Work>, limits: Limits) {
    while let Ok(jobs) = work.recv() {
        // Jobs cancelled while they waited end here, before any work.
        let (cancelled, mut jobs): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|job| job.cancel.is_cancelled());
        for job in cancelled {
            let _ = job
                .events
                .send(EngineEvent::Finished(Err(EngineError::Cancelled)));
        }
        let together = jobs.len() > 1
            && jobs
                .iter()
                .all(|job| batch_compatible(&jobs[0].request, &job.request));
        if together {
            run_batch(&pipelines, &jobs, &limits);
            continue;
        }
        for job in jobs.drain(..) {
            // A later job of a split batch may have been cancelled while an earlier one ran.
            if job.cancel.is_cancelled() {
                let _ = job
                    .events
                    .send(EngineEvent::Finished(Err(EngineError::Cancelled)));
                continue;
            }
            run_one(&pipelines, &job, &limits);
        }
    }
}

fn run_one(pipelines: &HashMap<Variant, Pipeline>, job: &Job, limits: &Limits) {
    let _ = job.events.send(EngineEvent::Started);
    let result = match pipelines.get(&job.request.variant) {
        None => Err(EngineError::ModelNotLoaded(job.request.variant.to_string())),
        Some(pipeline) => {
            std::panic::catch_unwind(AssertUnwindSafe(|| run_job(pipeline, job, limits)))
                .unwrap_or_else(|p| Err(EngineError::Internal(panic_text(&p))))
        }
    };
    log_end(&job.request, &result);
    let _ = job.events.send(EngineEvent::Finished(result));
}

fn log_end(request: &GenerationRequest, result: &Result<Generated, EngineError>) {
    match result {
        Ok(g) => {
            tracing::info!(variant = %request.variant, seconds = g.elapsed.as_secs_f64(), "job finished")
        }
        Err(EngineError::Cancelled) => tracing::info!("job cancelled"),
        Err(e) => tracing::warn!(error = %e, "job failed"),
    }
}

/// Runs compatible jobs as one sampler batch. Each job hears its own events; a job stopped by
/// its token (or whose submitter went away) gets its `Finished(Cancelled)` at once, the others
/// go on. A panic or an error of the whole batch ends every job not yet finished with it.
fn run_batch(pipelines: &HashMap<Variant, Pipeline>, jobs: &[Job], limits: &Limits) {
    for job in jobs {
        let _ = job.events.send(EngineEvent::Started);
    }
    let variant = jobs[0].request.variant;
    let Some(pipeline) = pipelines.get(&variant) else {
        for job in jobs {
            let _ = job
                .events
                .send(EngineEvent::Finished(Err(EngineError::ModelNotLoaded(
                    variant.to_string(),
                ))));
        }
        return;
    };
    tracing::info!(%variant, jobs = jobs.len(), "batch started");
    let requests: Vec<GenerationRequest> = jobs.iter().map(|j| j.request.clone()).collect();
    let mut reporters: Vec<Reporter> = jobs.iter().map(Reporter::new).collect();
    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
        pipeline.generate_batch(&requests, limits, &mut |i, p| {
            let flow = reporters[i].step(pipeline, &p);
            if flow == Flow::Stop {
                // Stopped here: its owner hears it now, not when the batch ends.
                reporters[i].finished = true;
                let _ = jobs[i]
                    .events
                    .send(EngineEvent::Finished(Err(EngineError::Cancelled)));
                tracing::info!("job cancelled");
            }
            flow
        })
    }))
    .unwrap_or_else(|p| Err(EngineError::Internal(panic_text(&p))));
    match ran {
        Ok(results) => {
            for ((job, reporter), result) in jobs.iter().zip(&reporters).zip(results) {
                if !reporter.finished {
                    log_end(&job.request, &result);
                    let _ = job.events.send(EngineEvent::Finished(result));
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "batch failed");
            for (job, reporter) in jobs.iter().zip(&reporters) {
                if !reporter.finished {
                    let _ = job.events.send(EngineEvent::Finished(Err(e.clone())));
                }
            }
        }
    }
}

/// One job's side of a run: its cancel token, its previews' pace and its events.
struct Reporter<'a> {
    job: &'a Job,
    last_preview: Option<Instant>,
    /// Its `Finished` was sent already.
    finished: bool,
}

impl<'a> Reporter<'a> {
    fn new(job: &'a Job) -> Self {
        Reporter {
            job,
            last_preview: None,
            finished: false,
        }
    }

    /// Reports one step of the job; `Stop` when it must not go on.
    fn step(&mut self, pipeline: &Pipeline, p: &StepProgress) -> Flow {
        let job = self.job;
        if job.cancel.is_cancelled() {
            return Flow::Stop;
        }
        let due = match (job.options.preview_every, self.last_preview) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(every), Some(at)) => at.elapsed() >= every,
        };
        let preview = if due && p.step < p.total {
            self.last_preview = Some(Instant::now());
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
    }
}

fn run_job(pipeline: &Pipeline, job: &Job, limits: &Limits) -> Result<Generated, EngineError> {
    let mut reporter = Reporter::new(job);
    pipeline.generate(&job.request, limits, &mut |p| reporter.step(pipeline, &p))
}
