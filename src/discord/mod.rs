//! The Discord adapter: slash commands and buttons in, job views and videos out.
//!
//! It stays thin on purpose: parse, call the core, render. Commands ([`commands`], one file
//! each; buttons and the Remix form in [`components`]) parse their options, acknowledge within
//! Discord's three seconds, and hand a job to the core, which owns every job rule. The core
//! tells the [`notifier`] how the job moves, and the notifier renders [`presenter`] views into
//! throttled ([`throttle`]), token-age-aware ([`token`]) message edits and finally the video,
//! sized to fit the upload limit ([`deliver`]). [`bot`] holds the connection, [`context`] what
//! every handler can reach, [`client`] the HTTP client and command registration, [`download`]
//! the input-image fetch. Start-up and shutdown order is [`crate::app`]'s.

pub mod bot;
pub mod client;
pub mod commands;
pub mod components;
pub mod context;
pub mod deliver;
pub mod download;
pub mod notifier;
pub mod presenter;
pub mod throttle;
pub mod token;

pub use bot::{connect, proxy_base, BotOptions, Connected, RunningBot};
