//! The runner: one task takes jobs from the scheduler one at a time (one GPU) — or, with
//! `max_batch` above 1, the next job and the waiting jobs that can share its sampler batch —
//! expands the prompt when asked, runs the engine, reports each job's progress and encodes its
//! MP4; then hands each job to [`delivery`](super::delivery).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use image::RgbImage;
use tokio::sync::Notify;

use super::jobs::{JobId, JobKind, JobRecord, JobState};
use super::ports::{fallback_line, ExpandOutcome, JobUpdate, Shown};
use super::service::{Inner, RunningJob, StopReason};
use super::store::StoreError;
use super::submit::cancel_reason;
use super::validate::request_for;
use crate::engine::image_input::{decode_image, ImageLimits};
use crate::engine::{
    batch_compatible, EngineError, EngineEvent, GenerationRequest, JobHandle, JobOptions,
};
use crate::ops::{JobOutcome, LlmFallback};
use crate::video::{encode_mp4, preview_png, EncodeOptions};

pub(super) async fn run_loop(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    loop {
        if *stop.borrow() {
            break;
        }
        let (taken, jobs) = {
            let mut guard = inner.state.lock().unwrap();
            let state = &mut *guard;
            let active = &state.active;
            let taken = state
                .scheduler
                .start_batch(inner.config.max_batch, |first, other| {
                    match (active.get(&first), active.get(&other)) {
                        (Some(a), Some(b)) => batch_mates(a, b),
                        _ => false,
                    }
                });
            inner
                .config
                .metrics
                .set_queue_depth(state.scheduler.waiting_len());
            let mut jobs = Vec::with_capacity(taken.len());
            for &id in &taken {
                match state.active.get(&id).cloned() {
                    Some(job) => {
                        state.running.push(RunningJob {
                            id,
                            progress: None,
                            stop: None,
                            engine_cancel: None,
                            woken: Arc::new(Notify::new()),
                        });
                        jobs.push(job);
                    }
                    None => {
                        // Cannot happen (every queued id has a record); never wedge the queue.
                        tracing::error!(job = %id, "queued job without a record skipped");
                        state.scheduler.finish(id);
                    }
                }
            }
            (taken.len(), jobs)
        };
        if !jobs.is_empty() {
            // Everyone behind moved up; tell them without holding up the GPU.
            let positions = inner.clone();
            tokio::spawn(async move { positions.broadcast_positions().await });
            inner.run_batch(jobs).await;
        } else if taken == 0 {
            inner.idle.notify_one();
            tokio::select! {
                _ = inner.wake.notified() => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// Whether a waiting job may share the sampler batch of the job that starts next: the same
/// kind and an engine request the sampler can batch (variant, size, frames, steps, eta).
/// A job whose prompt still needs expanding takes no batch-mates and is no one's: it runs
/// alone, as before batching, so that no batch waits on an LLM. The one rule for both the
/// runner and a cluster worker's claim ([`Store::claim_batch`](super::store::Store::claim_batch)).
pub(super) fn batch_mates(first: &JobRecord, other: &JobRecord) -> bool {
    let expands = |job: &JobRecord| job.spec.expand && job.spec.expanded_prompt.is_none();
    !expands(first)
        && !expands(other)
        && first.spec.kind == other.spec.kind
        && batch_compatible(
            &request_for(&first.spec, None),
            &request_for(&other.spec, None),
        )
}

/// How a run ended.
enum Ending {
    Done(Box<JobRecord>),
    Failed(String),
    Cancelled(u64),
    Requeue,
    /// A worker's lease ran out unrenewed (the database was out of reach): the job is no
    /// longer this worker's to end, and it writes nothing about it.
    LeaseLost,
}

impl Inner {
    /// Runs the jobs the scheduler started together (one, or the compatible jobs of one
    /// sampler batch): each is started, prepared, followed and ended on its own, so a job that
    /// fails, is cancelled or is requeued does so alone; the engine runs the prepared ones as
    /// one batch.
    async fn run_batch(self: &Arc<Self>, jobs: Vec<JobRecord>) {
        let options = JobOptions {
            preview_every: self.config.preview_every,
        };
        let mut ready = Vec::with_capacity(jobs.len());
        let mut requests = Vec::with_capacity(jobs.len());
        for mut job in jobs {
            let ran = self.start(&mut job).await;
            match self.prepare(&mut job).await {
                Ok(request) => {
                    ready.push((job, ran));
                    requests.push((request, options.clone()));
                }
                Err(ending) => self.conclude(job, ran, ending).await,
            }
        }
        if ready.is_empty() {
            return;
        }
        let handles = if requests.len() == 1 {
            let (request, options) = requests.pop().expect("one request");
            vec![self.engine.submit(request, options)]
        } else {
            tracing::info!(jobs = requests.len(), "jobs started as one batch");
            self.engine.submit_batch(requests)
        };
        {
            let mut state = self.state.lock().unwrap();
            for ((job, _), handle) in ready.iter().zip(&handles) {
                if let Some(run) = state.running.iter_mut().find(|r| r.id == job.id) {
                    if run.stop.is_some() {
                        handle.cancel.cancel();
                    }
                    run.engine_cancel = Some(handle.cancel.clone());
                }
            }
        }
        let runs = ready
            .into_iter()
            .zip(handles)
            .map(|((mut job, ran), handle)| async move {
                let ending = self.follow(&mut job, handle).await;
                self.conclude(job, ran, ending).await;
            });
        futures_util::future::join_all(runs).await;
    }

    /// Records the start of a job; returns when it began running.
    async fn start(&self, job: &mut JobRecord) -> std::time::Instant {
        let id = job.id;
        let now = SystemTime::now();
        if let Err(e) = self.store.call(move |s| s.mark_running(id, now)).await {
            tracing::error!(job = %id, error = %e, "could not record the start");
        }
        job.state = JobState::Running;
        job.started_at = Some(now);
        tracing::info!(job = %id, variant = %job.spec.variant, "job started");
        let waited = now.duration_since(job.created_at).unwrap_or_default();
        self.config.metrics.job_started(job.spec.variant, waited);
        std::time::Instant::now()
    }

    /// Records how a job ended, takes it out of the running jobs and tells its member (or
    /// hands the video to delivery).
    async fn conclude(
        self: &Arc<Self>,
        mut job: JobRecord,
        ran: std::time::Instant,
        ending: Ending,
    ) {
        let id = job.id;
        let metrics = &self.config.metrics;
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
            // Nothing to write: the store would refuse it, or cannot be reached.
            Ending::LeaseLost => Err(StoreError::LeaseLost(id)),
        };
        if let Err(StoreError::LeaseLost(_)) = stored {
            // Another worker took the job over (ours stalled past its lease), or will once the
            // database gives it back: that worker alone ends and delivers it.
            tracing::warn!(job = %id, "lease lost; the job is left to the worker that holds it");
            let mut state = self.state.lock().unwrap();
            state.running.retain(|r| r.id != id);
            state.scheduler.finish(id);
            state.active.remove(&id);
            return;
        }
        if let Err(e) = stored {
            tracing::error!(job = %id, error = %e, "could not record the end of a job");
        }
        {
            let mut state = self.state.lock().unwrap();
            state.running.retain(|r| r.id != id);
            match &ending {
                Ending::Requeue => {
                    state.scheduler.requeue(id);
                    metrics.set_queue_depth(state.scheduler.waiting_len());
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
        let variant = job.spec.variant;
        match &ending {
            Ending::Done(_) => metrics.job_finished(variant, JobOutcome::Done, ran.elapsed()),
            Ending::Failed(_) => metrics.job_finished(variant, JobOutcome::Failed, ran.elapsed()),
            Ending::Cancelled(_) => {
                metrics.job_finished(variant, JobOutcome::Cancelled, ran.elapsed())
            }
            Ending::Requeue => metrics.job_requeued(variant),
            // Left above, before anything was recorded.
            Ending::LeaseLost => {}
        }
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
            Ending::LeaseLost => {}
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

    /// The input image and the expansion: the engine request of a job, or how it ends first.
    async fn prepare(self: &Arc<Self>, job: &mut JobRecord) -> Result<GenerationRequest, Ending> {
        let id = job.id;
        let image = if job.spec.kind == JobKind::ImageToVideo {
            match self.input_image(id).await {
                Ok(image) => Some(image),
                Err(message) => return Err(Ending::Failed(message)),
            }
        } else {
            None
        };
        if job.spec.expand && job.spec.expanded_prompt.is_none() {
            if let Some(ending) = self.expand(job).await {
                return Err(ending);
            }
        }
        if let Some(ending) = self.stop_requested(id) {
            return Err(ending);
        }
        Ok(request_for(&job.spec, image))
    }

    /// Follows a job's engine run (progress to its member) and encodes its video. Fills
    /// `job`'s result fields on success.
    async fn follow(&self, job: &mut JobRecord, handle: JobHandle) -> Ending {
        let id = job.id;
        let mut events = handle.events;
        // The last step reported, to time the steps between two reports (the first report
        // also carries the prompt encoding, so timing starts there).
        let mut last_step: Option<(usize, Duration)> = None;
        let result = loop {
            match events.recv().await {
                None => break Err(EngineError::Stopped),
                Some(EngineEvent::Started) => {
                    let total = job.spec.sampling_steps();
                    self.set_progress(id, 0, total);
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
                    self.set_progress(id, p.step, p.total);
                    if let Some((step, at)) = last_step.filter(|(s, _)| p.step > *s) {
                        let steps = (p.step - step) as u32;
                        let each = p.elapsed.saturating_sub(at) / steps;
                        for _ in 0..steps {
                            self.config.metrics.step_finished(job.spec.variant, each);
                        }
                    }
                    last_step = Some((p.step, p.elapsed));
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
                    .stop_requested(id)
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
        if let Some(fit) = generated.image_fit {
            // What the engine did is what the member is shown (and Re-roll repeats).
            done.spec.image_fit = fit;
        }
        done.finished_at = Some(SystemTime::now());
        Ending::Done(Box::new(done))
    }

    /// Runs the expander unless stopped meanwhile; `Some` when the job must end instead.
    async fn expand(self: &Arc<Self>, job: &mut JobRecord) -> Option<Ending> {
        let Some(expander) = self.expander.clone() else {
            // Only a job stored while an LLM was configured gets here (the adapter refuses
            // `expand` otherwise); the member still hears why the prompt stayed as written.
            let reason = fallback_line("is not available here");
            self.config.metrics.llm_fallback(LlmFallback::NotConfigured);
            self.update(job, JobUpdate::ExpansionSkipped { reason })
                .await;
            return None;
        };
        self.update(job, JobUpdate::Expanding).await;
        let woken = self
            .state
            .lock()
            .unwrap()
            .running
            .iter()
            .find(|r| r.id == job.id)?
            .woken
            .clone();
        let (prompt, kind) = (job.spec.prompt.clone(), job.spec.kind);
        let outcome = tokio::select! {
            outcome = expander.expand(&prompt, kind) => outcome,
            _ = woken.notified() => return self.stop_requested(job.id),
        };
        match outcome {
            ExpandOutcome::Expanded(text) if !text.trim().is_empty() => {
                let settings = match self.settings(job.origin.guild_id).await {
                    Ok(settings) => settings,
                    Err(e) => {
                        // Unchecked text never runs: the member's own (checked) prompt does.
                        tracing::warn!(job = %job.id, error = %e, "settings unreadable, expansion dropped");
                        let reason =
                            fallback_line("could not be checked against this server's rules");
                        self.update(job, JobUpdate::ExpansionSkipped { reason })
                            .await;
                        return None;
                    }
                };
                if let Some(word) = settings.blocked_word_in(&text) {
                    // The member's own prompt passed the filter; the model's addition did not.
                    tracing::info!(job = %job.id, %word, "expanded prompt has a blocked word");
                    let reason = fallback_line("added a word this server blocks");
                    self.config.metrics.llm_fallback(LlmFallback::BlockedWord);
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
                self.config
                    .metrics
                    .llm_fallback(LlmFallback::UnusableAnswer);
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

    /// The ending a stop request for the running job `id` asks for, if one was made.
    fn stop_requested(&self, id: JobId) -> Option<Ending> {
        let state = self.state.lock().unwrap();
        match state.running.iter().find(|r| r.id == id)?.stop? {
            StopReason::User(by) => Some(Ending::Cancelled(by)),
            StopReason::Shutdown => Some(Ending::Requeue),
            StopReason::LeaseLost => Some(Ending::LeaseLost),
        }
    }

    fn set_progress(&self, id: JobId, step: usize, total: usize) {
        let mut state = self.state.lock().unwrap();
        if let Some(run) = state.running.iter_mut().find(|r| r.id == id) {
            run.progress = Some((step, total));
        }
    }

    /// A job update that cannot hold the runner for longer than `notify_timeout`.
    pub(super) async fn update(&self, job: &JobRecord, update: JobUpdate) {
        let call = self.notifier.job_update(job, update);
        match tokio::time::timeout(self.config.notify_timeout, call).await {
            Ok(shown) => self.remember(job.id, shown).await,
            Err(_) => tracing::warn!(job = %job.id, "job update timed out"),
        }
    }

    /// Keeps what the notifier learned (a new message id), for edits after a restart.
    pub(super) async fn remember(&self, id: JobId, shown: Shown) {
        let Some(message_id) = shown.message_id else {
            return;
        };
        if let Some(job) = self.state.lock().unwrap().active.get_mut(&id) {
            job.origin.message_id = Some(message_id);
        }
        if let Err(e) = self
            .store
            .call(move |s| s.set_message_id(id, message_id))
            .await
        {
            tracing::warn!(job = %id, error = %e, "could not store the message id");
        }
    }

    /// Tells every waiting job its current place.
    pub(super) async fn broadcast_positions(&self) {
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
