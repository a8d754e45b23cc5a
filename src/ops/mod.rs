//! What an operator watches: a metrics registry with a typed API ([`Metrics`]), readiness probes
//! ([`ReadinessProbe`]) and the small HTTP listener that serves them (`/metrics` in Prometheus
//! text format, `/healthz`, `/readyz`; `[ops] listen` in the config, off by default).
//!
//! Callers record what happened in domain terms (`metrics.job_finished(variant, outcome, took)`)
//! and never see a metric name or label string: those live in `metrics.rs` only, so a scrape's
//! shape changes in one place.

pub mod health;
pub mod labels;
pub mod listener;
pub mod metrics;

pub use health::{probe_fn, Readiness, ReadinessProbe, ReadinessReport};
pub use labels::{DiscordFailure, JobOutcome, LlmFallback, RefusalReason};
pub use listener::OpsServer;
pub use metrics::Metrics;
