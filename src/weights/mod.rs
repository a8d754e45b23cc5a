//! Checkpoints: strict loading of the original VideoCrafter files, key manifests, conversion to
//! safetensors, and downloading from the Hugging Face Hub.
//!
//! Models read their weights through [`WeightSource::var_builder`] using the original key names;
//! [`record_requests`] + [`check`] verify, before any data is read, that a checkpoint has exactly
//! the tensors a model asks for.

mod convert;
mod download;
mod error;
mod keys;
pub mod locate;
mod manifest;
mod pickle;
mod pth;
mod pth_storage;
mod source;

pub use convert::convert_to_safetensors;
pub use download::{
    cached, checkpoint_for, download, download_from, download_hint, download_variant, variant_names,
};
pub use error::{KeyMismatch, WeightsError};
pub use keys::{is_schedule_buffer, not_a_module_weight, unused_at_inference};
pub use manifest::{check, record_requests, record_requests_against, Manifest};
pub use pth::PthLayout;
pub use source::{SourceFormat, WeightSource};
