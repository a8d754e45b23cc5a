//! floor33: VideoCrafter text-to-video and image-to-video in candle, served to Discord.
//!
//! Flow: Discord adapter → core (validate → submit → runner → delivery; jobs, queue, settings,
//! store) → engine actor (pipelines → models, sampler) → video → core → Discord adapter. The
//! LLM prompt expander ([`llm`]) is an outbound adapter behind a core port, like the engine
//! and the notifier. [`app`] is the one place that starts and stops it all.

pub mod app;
pub mod cli;
pub mod config;
pub mod core;
pub mod discord;
pub mod engine;
pub mod llm;
pub mod models;
pub mod ops;
pub mod redact;
pub mod sampler;
pub mod video;
pub mod weights;
