//! Test doubles of the engine port (`floor33::core::VideoEngine`).
//!
//! [`ScriptedEngineDouble`]: no model, no device. Each submitted job plays a script of engine
//! events on a thread of its own, and the double records what the core asked (requests,
//! options, which jobs came as one batch) and whether it cancelled.
//!
//! [`RecordingEngineDouble`]: the real engine actor behind the port, with a record of every
//! submit (alone or as one batch) and of every video it made, so a test can prove that jobs
//! shared a sampler batch and compare each job's video with its solo run.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use floor33::core::VideoEngine;
use floor33::engine::{
    CancelToken, EngineError, EngineEvent, EngineHandle, Generated, GenerationRequest, JobHandle,
    JobOptions, Progress,
};
use floor33::models::config::Variant;
use floor33::video::VideoFrames;

/// What the double does with one job.
#[derive(Clone)]
pub enum Script {
    /// `Started`, one `Progress` per step of `total`, then a small video.
    Succeed { total: usize },
    /// `Started`, progress up to `step` of `total`, then waits for the core's cancel and
    /// answers `Cancelled` (as the real engine does at its next step).
    RunUntilCancelled { step: usize, total: usize },
    /// `Started`, then this error.
    Fail(EngineError),
    /// Drops the job without a `Finished` event (an engine thread that died).
    Vanish,
}

/// One `submit` as the double saw it.
pub struct Submission {
    pub request: GenerationRequest,
    pub options: JobOptions,
    pub cancel: CancelToken,
}

#[derive(Clone)]
pub struct ScriptedEngineDouble {
    variants: Vec<Variant>,
    script: Arc<Mutex<Script>>,
    pub submissions: Arc<Mutex<Vec<Submission>>>,
    /// Each `submit_batch` call: the indexes in `submissions` of its jobs.
    pub batches: Arc<Mutex<Vec<Vec<usize>>>>,
}

impl ScriptedEngineDouble {
    pub fn new(variants: &[Variant], script: Script) -> Self {
        ScriptedEngineDouble {
            variants: variants.to_vec(),
            script: Arc::new(Mutex::new(script)),
            submissions: Arc::default(),
            batches: Arc::default(),
        }
    }

    /// The script for the jobs submitted from now on.
    pub fn set_script(&self, script: Script) {
        *self.script.lock().unwrap() = script;
    }

    /// Whether the core cancelled the `n`-th submitted job.
    pub fn cancelled(&self, n: usize) -> bool {
        self.submissions.lock().unwrap()[n].cancel.is_cancelled()
    }

    pub fn submitted(&self) -> usize {
        self.submissions.lock().unwrap().len()
    }

    /// The prompts of every submitted job, in the order the core submitted them.
    pub fn prompts(&self) -> Vec<String> {
        self.submissions
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.request.prompt.clone())
            .collect()
    }

    /// The prompts of each `submit_batch` call.
    pub fn batch_prompts(&self) -> Vec<Vec<String>> {
        let prompts = self.prompts();
        self.batches
            .lock()
            .unwrap()
            .iter()
            .map(|b| b.iter().map(|&i| prompts[i].clone()).collect())
            .collect()
    }
}

/// A 4-frame 16×8 video of one grey.
pub fn small_video(fps: u32) -> VideoFrames {
    VideoFrames::new(
        fps,
        vec![image::RgbImage::from_pixel(16, 8, image::Rgb([90; 3])); 4],
    )
    .unwrap()
}

fn progress(step: usize, total: usize) -> EngineEvent {
    EngineEvent::Progress(Progress {
        step,
        total,
        elapsed: Duration::from_millis(10 * step as u64),
        remaining: Duration::from_millis(10 * (total - step) as u64),
        preview: None,
    })
}

impl VideoEngine for ScriptedEngineDouble {
    fn variants(&self) -> &[Variant] {
        &self.variants
    }

    fn submit(&self, request: GenerationRequest, options: JobOptions) -> JobHandle {
        let (events, rx) = tokio::sync::mpsc::unbounded_channel();
        let cancel = CancelToken::default();
        let fps = request.fps;
        self.submissions.lock().unwrap().push(Submission {
            request,
            options,
            cancel: cancel.clone(),
        });
        let script = self.script.lock().unwrap().clone();
        let token = cancel.clone();
        std::thread::spawn(move || {
            let send = |e| {
                let _ = events.send(e);
            };
            match script {
                Script::Succeed { total } => {
                    send(EngineEvent::Started);
                    (1..=total).for_each(|s| send(progress(s, total)));
                    send(EngineEvent::Finished(Ok(Generated {
                        video: small_video(fps),
                        steps_run: total,
                        prompt_truncated: false,
                        elapsed: Duration::from_millis(10 * total as u64),
                        image_fit: None,
                    })));
                }
                Script::RunUntilCancelled { step, total } => {
                    send(EngineEvent::Started);
                    (1..=step).for_each(|s| send(progress(s, total)));
                    // Bounded, so a core that never cancels fails the test rather than hangs.
                    for _ in 0..3000 {
                        if token.is_cancelled() {
                            send(EngineEvent::Finished(Err(EngineError::Cancelled)));
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    send(EngineEvent::Finished(Err(EngineError::Internal(
                        "the double was never cancelled".into(),
                    ))));
                }
                Script::Fail(error) => {
                    send(EngineEvent::Started);
                    send(EngineEvent::Finished(Err(error)));
                }
                Script::Vanish => drop(events),
            }
        });
        JobHandle { events: rx, cancel }
    }

    /// Records the batch, then plays each job's script on its own, as `submit` does.
    fn submit_batch(&self, jobs: Vec<(GenerationRequest, JobOptions)>) -> Vec<JobHandle> {
        let first = self.submitted();
        self.batches
            .lock()
            .unwrap()
            .push((first..first + jobs.len()).collect());
        jobs.into_iter()
            .map(|(request, options)| self.submit(request, options))
            .collect()
    }
}

/// The real engine behind the port, recording what went through it.
#[derive(Clone)]
pub struct RecordingEngineDouble {
    pub engine: EngineHandle,
    /// Each submit, in order: its requests (one for `submit`, several for `submit_batch`).
    pub calls: Arc<Mutex<Vec<Vec<GenerationRequest>>>>,
    /// Every video the engine made, with its request's seed.
    pub videos: Arc<Mutex<Vec<(u64, Generated)>>>,
}

impl RecordingEngineDouble {
    pub fn new(engine: EngineHandle) -> Self {
        RecordingEngineDouble {
            engine,
            calls: Arc::default(),
            videos: Arc::default(),
        }
    }

    /// How many requests each submit carried, in order.
    pub fn call_sizes(&self) -> Vec<usize> {
        self.calls.lock().unwrap().iter().map(Vec::len).collect()
    }

    /// The video made for the request with `seed`.
    pub fn video_of(&self, seed: u64) -> Option<Generated> {
        self.videos
            .lock()
            .unwrap()
            .iter()
            .find(|(s, _)| *s == seed)
            .map(|(_, g)| g.clone())
    }

    /// Passes the engine's events on, keeping a copy of the video.
    fn relay(&self, seed: u64, handle: JobHandle) -> JobHandle {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut events = handle.events;
        let videos = self.videos.clone();
        std::thread::spawn(move || {
            while let Some(event) = events.blocking_recv() {
                if let EngineEvent::Finished(Ok(g)) = &event {
                    videos.lock().unwrap().push((seed, g.clone()));
                }
                if tx.send(event).is_err() {
                    // The core went away: dropping `events` tells the engine so.
                    break;
                }
            }
        });
        JobHandle {
            events: rx,
            cancel: handle.cancel,
        }
    }
}

impl VideoEngine for RecordingEngineDouble {
    fn variants(&self) -> &[Variant] {
        self.engine.variants()
    }

    fn submit(&self, request: GenerationRequest, options: JobOptions) -> JobHandle {
        self.calls.lock().unwrap().push(vec![request.clone()]);
        let seed = request.seed;
        self.relay(seed, self.engine.submit(request, options))
    }

    fn submit_batch(&self, jobs: Vec<(GenerationRequest, JobOptions)>) -> Vec<JobHandle> {
        let requests: Vec<GenerationRequest> = jobs.iter().map(|(r, _)| r.clone()).collect();
        self.calls.lock().unwrap().push(requests.clone());
        self.engine
            .submit_batch(jobs)
            .into_iter()
            .zip(&requests)
            .map(|(handle, request)| self.relay(request.seed, handle))
            .collect()
    }
}
