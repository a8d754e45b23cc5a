//! Shared test helpers (fixtures, fakes). Each test binary uses only part of it.
#![allow(dead_code)]

pub mod crafted_ckpt;
pub mod discord_bot;
pub mod engine_double;
pub mod fake_discord;
pub mod fake_hub;
pub mod fake_llm;
pub mod golden;
pub mod job_fakes;
pub mod prometheus;
pub mod test_pg;
pub mod torch_zip;
