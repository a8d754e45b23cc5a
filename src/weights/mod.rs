//! Checkpoints: strict loading of the original VideoCrafter files, key manifests, conversion to
//! safetensors, and downloading from the Hugging Face Hub.

mod download;
mod error;
mod keys;
mod manifest;

pub use download::{
    cached, checkpoint_for, download, download_from, download_hint, download_variant,
    variant_names,
};
pub use error::{KeyMismatch, WeightsError};
pub use keys::{is_schedule_buffer, not_a_module_weight, unused_at_inference};
pub use manifest::{check, record_requests, record_requests_against, Manifest};
