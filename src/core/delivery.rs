//! Delivery: a finished job's video goes to the notifier, and only its success marks the
//! job delivered; a failed or cancelled job gets its last notice the same way. Deliveries run
//! in the background, at most one per job, and are tried again at the next start.

use std::sync::Arc;

use super::jobs::{JobId, JobRecord, JobState};
use super::ports::{DeliveredVideo, DeliveryError, JobUpdate};
use super::service::Inner;
use super::validate::request_for;

impl Inner {
    /// The last word on a job without a video: tell the member, then mark it delivered.
    pub(super) async fn finish_notice(&self, job: JobRecord, update: JobUpdate) {
        self.update(&job, update).await;
        let id = job.id;
        if let Err(e) = self.store.call(move |s| s.mark_delivered(id, None)).await {
            tracing::warn!(job = %id, error = %e, "could not mark the notice delivered");
        }
    }

    /// Delivers a finished job in the background (at most once at a time per job).
    pub(super) fn spawn_delivery(self: &Arc<Self>, job: JobRecord) {
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
        // A worker's video is kept in the database until delivered (any worker may deliver
        // it, see `cluster`); a single process reads its own file.
        let kept = match self.store.call(move |s| s.job_video(id)).await {
            Ok(kept) => kept,
            Err(e) => {
                return tracing::warn!(job = %id, error = %e, "delivery postponed: the database did not answer")
            }
        };
        let read_path = path.clone();
        let read = move || match kept {
            Some(bytes) => Ok(bytes),
            None => std::fs::read(&read_path),
        };
        let mp4 = match tokio::task::spawn_blocking(read).await {
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
            Ok(shown) => {
                self.remember(id, shown).await;
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
