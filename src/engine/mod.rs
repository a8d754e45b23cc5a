//! The inference engine: requests, the pipeline that runs a model, and the actor that owns the
//! device. The CLI talks to it through [`EngineHandle`]; the core through its `VideoEngine`
//! port, which `app/engine_port.rs` implements for the handle (the engine never imports the
//! core).

pub mod actor;
pub mod device;
pub mod error;
pub mod frame_fit;
pub mod image_input;
pub mod loader;
pub mod memory;
pub mod pipeline;
pub mod request;

pub use actor::{CancelToken, EngineEvent, EngineHandle, JobHandle, JobOptions, Progress};
pub use error::EngineError;
pub use pipeline::{batch_compatible, Generated, Pipeline};
pub use request::{GenerationRequest, Limits};
