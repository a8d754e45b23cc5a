//! The transport-agnostic core: jobs, queue, settings, store, and the steps of a job.

pub mod expand;
