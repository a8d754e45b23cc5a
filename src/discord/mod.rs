//! The Discord adapter: slash commands and buttons in, job views and videos out.
//!
//! It stays thin on purpose. Commands parse their options, acknowledge within Discord's three
//! seconds, and hand a job to the core; the core tells the [`notifier`] how the job moves, and
//! the notifier renders [`presenter`] views into throttled, token-age-aware message edits and
//! finally the video, sized to fit the upload limit.

pub mod bot;
pub mod client;
pub mod commands;
pub mod components;
pub mod deliver;
pub mod download;
pub mod notifier;
pub mod presenter;
pub mod throttle;
pub mod token;

pub use bot::{proxy_base, start, BotOptions, RunningBot};
