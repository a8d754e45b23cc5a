//! A test double of the engine port (`floor33::core::VideoEngine`): no model, no device. Each
//! submitted job plays a script of engine events on a thread of its own, and the double
//! records what the core asked (requests, options) and whether it cancelled.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use floor33::core::VideoEngine;
use floor33::engine::{
    CancelToken, EngineError, EngineEvent, Generated, GenerationRequest, JobHandle, JobOptions,
    Progress,
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
}

impl ScriptedEngineDouble {
    pub fn new(variants: &[Variant], script: Script) -> Self {
        ScriptedEngineDouble {
            variants: variants.to_vec(),
            script: Arc::new(Mutex::new(script)),
            submissions: Arc::default(),
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
}
