//! Fakes for the job service: a notifier that records what members would see, a scripted prompt
//! expander, and the tiny random-weight engine.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use candle_core::{DType, Device};
use floor33::core::{
    DeliveredVideo, DeliveryError, ExpandOutcome, JobId, JobKind, JobRecord, JobSpec, JobUpdate,
    Notifier, Origin, PromptExpander, Shown, VideoShape,
};
use floor33::engine::{EngineHandle, Limits, Pipeline};
use floor33::models::config::{ModelConfig, Variant};

/// Records every update and delivery; can be told to fail deliveries.
#[derive(Default)]
pub struct RecordingNotifier {
    pub updates: Mutex<Vec<(JobId, JobUpdate)>>,
    pub deliveries: Mutex<Vec<(JobId, DeliveredVideo)>>,
    /// Deliveries still to fail with a transient error.
    pub fail_next: AtomicUsize,
    /// Jobs whose stored row could not be read, as members were told: (job, user, reason).
    pub lost: Mutex<Vec<(JobId, u64, String)>>,
}

#[async_trait]
impl Notifier for RecordingNotifier {
    async fn job_update(&self, job: &JobRecord, update: JobUpdate) -> Shown {
        self.updates.lock().unwrap().push((job.id, update));
        Shown::default()
    }

    async fn deliver(
        &self,
        job: &JobRecord,
        video: DeliveredVideo,
    ) -> Result<Shown, DeliveryError> {
        let failing = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(DeliveryError::Transient("fake outage".into()));
        }
        self.deliveries.lock().unwrap().push((job.id, video));
        Ok(Shown::default())
    }

    async fn job_lost(&self, id: JobId, origin: &Origin, reason: &str) -> bool {
        self.lost
            .lock()
            .unwrap()
            .push((id, origin.user_id, reason.to_string()));
        true
    }
}

impl RecordingNotifier {
    pub fn delivered(&self) -> Vec<JobId> {
        self.deliveries
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn updates_of(&self, id: JobId) -> Vec<JobUpdate> {
        self.updates
            .lock()
            .unwrap()
            .iter()
            .filter(|(j, _)| *j == id)
            .map(|(_, u)| u.clone())
            .collect()
    }

    /// The job reached a running step of at least `step`.
    pub fn reached_step(&self, id: JobId, step: usize) -> bool {
        self.updates_of(id)
            .iter()
            .any(|u| matches!(u, JobUpdate::Running { step: s, .. } if *s >= step))
    }

    pub fn has(&self, id: JobId, pred: impl Fn(&JobUpdate) -> bool) -> bool {
        self.updates_of(id).iter().any(pred)
    }
}

/// Polls `cond` until it holds; panics with `what` after `secs` seconds.
pub async fn wait_until(secs: u64, what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Expands by appending a fixed phrase, counting its calls.
#[derive(Default)]
pub struct SuffixExpander {
    pub calls: AtomicUsize,
    pub suffix: String,
}

#[async_trait]
impl PromptExpander for SuffixExpander {
    async fn expand(&self, prompt: &str, _kind: JobKind) -> ExpandOutcome {
        self.calls.fetch_add(1, Ordering::SeqCst);
        ExpandOutcome::Expanded(format!("{prompt}, {}", self.suffix))
    }
}

/// The tiny random-weight models (text- and image-to-video) on the CPU.
pub fn tiny_engine() -> EngineHandle {
    EngineHandle::spawn(
        || {
            Ok(vec![
                Pipeline::random(ModelConfig::tiny(), &Device::Cpu, DType::F32)?,
                Pipeline::random(ModelConfig::tiny_i2v(), &Device::Cpu, DType::F32)?,
            ])
        },
        Limits::default(),
    )
    .expect("tiny engine")
}

/// A small, fast tiny-model request.
pub fn tiny_spec(prompt: &str, steps: usize) -> JobSpec {
    JobSpec {
        kind: JobKind::TextToVideo,
        variant: Variant::Tiny,
        prompt: prompt.into(),
        expanded_prompt: None,
        negative: None,
        seed: 7,
        steps,
        cfg: 7.5,
        eta: 1.0,
        fps: 8,
        expand: false,
        shape: Some(VideoShape {
            height: 32,
            width: 48,
            frames: 4,
        }),
        image_fit: Default::default(),
        image: None,
    }
}

pub fn origin(guild: u64, user: u64) -> Origin {
    Origin {
        guild_id: Some(guild),
        channel_id: 1000 + guild,
        user_id: user,
        interaction_id: 1,
        interaction_token: "interaction-token".into(),
        application_id: 2,
        message_id: None,
        attachment_size_limit: None,
    }
}

pub fn shared(n: RecordingNotifier) -> Arc<RecordingNotifier> {
    Arc::new(n)
}
