//! The engine adapter: the actor's handle as the core's [`VideoEngine`] port. It lives with the
//! wiring, not in `engine/`, so the engine knows nothing of the core; this file is where the two
//! meet.

use crate::core::VideoEngine;
use crate::engine::{EngineHandle, GenerationRequest, JobHandle, JobOptions};
use crate::models::config::Variant;

impl VideoEngine for EngineHandle {
    fn variants(&self) -> &[Variant] {
        EngineHandle::variants(self)
    }

    fn submit(&self, request: GenerationRequest, options: JobOptions) -> JobHandle {
        EngineHandle::submit(self, request, options)
    }

    fn submit_batch(&self, jobs: Vec<(GenerationRequest, JobOptions)>) -> Vec<JobHandle> {
        EngineHandle::submit_batch(self, jobs)
    }
}
