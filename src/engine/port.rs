//! The engine adapter: the actor's handle as the core's [`VideoEngine`] port. The rest of the
//! engine knows nothing of the core; this file is where the two meet.

use super::actor::{EngineHandle, JobHandle, JobOptions};
use super::request::GenerationRequest;
use crate::core::VideoEngine;
use crate::models::config::Variant;

impl VideoEngine for EngineHandle {
    fn variants(&self) -> &[Variant] {
        EngineHandle::variants(self)
    }

    fn submit(&self, request: GenerationRequest, options: JobOptions) -> JobHandle {
        EngineHandle::submit(self, request, options)
    }
}
