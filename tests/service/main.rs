//! The job's life without Discord: the job service and its queue, restart safety, LLM prompt
//! expansion against a loopback fake, and the inference actor. One test binary, one link.

#[path = "../support/mod.rs"]
mod support;

mod crafted_configs;
mod engine_actor;
mod expand_llm;
mod queue;
mod restart;
