//! The job's life without Discord: the job service and its queue, restart safety, LLM prompt
//! expansion against a loopback fake, the inference actor, and the ops listener (metrics and
//! health over HTTP). One test binary, one link.

#[path = "../support/mod.rs"]
mod support;

mod batch;
mod batch_runner;
mod cluster_worker;
mod crafted_configs;
mod crafted_rows;
mod engine_actor;
mod engine_port;
mod expand_llm;
mod ops;
mod queue;
mod restart;
