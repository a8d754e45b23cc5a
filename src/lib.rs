//! floor33: VideoCrafter text-to-video and image-to-video in candle, served to Discord.
//!
//! Flow: Discord adapter → core (jobs, queue, settings, store) → engine actor
//! (pipelines → models, sampler) → video → core → Discord adapter.

pub mod cli;
pub mod config;
pub mod core;
pub mod discord;
pub mod engine;
pub mod models;
pub mod ops;
pub mod sampler;
pub mod video;
pub mod weights;
