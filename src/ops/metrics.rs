//! The one registry of floor33's metrics and the typed calls that move them. Names, help texts,
//! label keys and histogram buckets are all here; the rest of the program says what happened.
//!
//! A `Metrics` is cheap to clone (an `Arc`) and every call is a few atomic operations, so the
//! core, the engine and the adapters each hold one and call it inline.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::labels::{DiscordFailure, JobOutcome, LlmFallback, RefusalReason};
use crate::core::jobs::JobState;
use crate::core::refusal::Refusal;
use crate::models::config::Variant;

/// The `Content-Type` of [`Metrics::encode`]'s text (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VariantLabels {
    variant: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    variant: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Waiting in the queue and whole jobs: from half a second to a little over two hours.
fn wait_and_job_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.5, 2.0, 15))
}

/// One denoising step: 10 ms (tiny models on a CPU) to ~40 s (576×1024 on a small GPU).
fn step_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 13))
}

/// The process's metrics. Create one at start-up and hand clones to whoever records.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    queue_depth: Gauge,
    /// Set when the queue is a shared database's: the per-process counts are ignored.
    shared_queue: AtomicBool,
    queue_wait: HistogramFamily<VariantLabels>,
    jobs: Family<JobLabels, Counter>,
    jobs_running: Family<VariantLabels, Gauge>,
    job_duration: HistogramFamily<JobLabels>,
    step_duration: HistogramFamily<VariantLabels>,
    gpu_memory_used: Family<DeviceLabels, Gauge>,
    gpu_memory_total: Family<DeviceLabels, Gauge>,
    refusals: Family<ReasonLabels, Counter>,
    discord_errors: Family<KindLabels, Counter>,
    discord_retries: Family<KindLabels, Counter>,
    llm_fallbacks: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut inner = Inner {
            registry: Registry::with_prefix("floor33"),
            queue_depth: Gauge::default(),
            shared_queue: AtomicBool::new(false),
            queue_wait: Family::new_with_constructor(wait_and_job_buckets),
            jobs: Family::default(),
            jobs_running: Family::default(),
            job_duration: Family::new_with_constructor(wait_and_job_buckets),
            step_duration: Family::new_with_constructor(step_buckets),
            gpu_memory_used: Family::default(),
            gpu_memory_total: Family::default(),
            refusals: Family::default(),
            discord_errors: Family::default(),
            discord_retries: Family::default(),
            llm_fallbacks: Family::default(),
        };
        let registry = &mut inner.registry;
        registry.register(
            "build",
            "The running floor33 version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register(
            "queue_depth",
            "Jobs waiting to run",
            inner.queue_depth.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time a job waited in the queue before it started",
            inner.queue_wait.clone(),
        );
        registry.register(
            "jobs",
            "Jobs that entered each state (queued, running, done, failed, cancelled)",
            inner.jobs.clone(),
        );
        registry.register(
            "jobs_running",
            "Jobs running in this process now",
            inner.jobs_running.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "Time from a job's start to its end, by how it ended",
            inner.job_duration.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "Time of one denoising step",
            inner.step_duration.clone(),
        );
        registry.register(
            "gpu_memory_used_bytes",
            "GPU memory in use on the device (absent on CPU)",
            inner.gpu_memory_used.clone(),
        );
        registry.register(
            "gpu_memory_total_bytes",
            "GPU memory of the device (absent on CPU)",
            inner.gpu_memory_total.clone(),
        );
        registry.register(
            "refusals",
            "Requests refused, by reason",
            inner.refusals.clone(),
        );
        registry.register(
            "discord_api_errors",
            "Discord API calls that failed, by kind of failure",
            inner.discord_errors.clone(),
        );
        registry.register(
            "discord_api_retries",
            "Discord API calls sent again (or another way), by the failure that caused it",
            inner.discord_retries.clone(),
        );
        registry.register(
            "llm_fallbacks",
            "Prompt expansions that fell back to the member's prompt, by reason",
            inner.llm_fallbacks.clone(),
        );
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// The number of jobs waiting, as this process's queue counts them. Ignored once
    /// [`Metrics::follow_shared_queue`] was called: then that count is not the whole queue.
    pub fn set_queue_depth(&self, waiting: usize) {
        if !self.inner.shared_queue.load(Ordering::Relaxed) {
            self.inner.queue_depth.set(saturating_i64(waiting as u64));
        }
    }

    /// From now on `queue_depth` is what [`Metrics::set_shared_queue_depth`] reads from the
    /// database that several processes share (a gateway's or a worker's own queue holds only
    /// part of it).
    pub fn follow_shared_queue(&self) {
        self.inner.shared_queue.store(true, Ordering::Relaxed);
    }

    /// The number of jobs waiting in the shared database.
    pub fn set_shared_queue_depth(&self, waiting: usize) {
        self.inner.queue_depth.set(saturating_i64(waiting as u64));
    }

    /// A job that waited `waited` was started by another process (a gateway learns it from the
    /// database): counted in `queue_wait_seconds` only, the starting process counts the rest.
    pub fn job_started_elsewhere(&self, variant: Variant, waited: Duration) {
        self.inner
            .queue_wait
            .get_or_create(&variant_labels(variant))
            .observe(waited.as_secs_f64());
    }

    /// A job was accepted into the queue (or put back in it at start-up).
    pub fn job_queued(&self, variant: Variant) {
        self.count_state(variant, JobState::Queued);
    }

    /// A job left the queue and started after waiting `waited`.
    pub fn job_started(&self, variant: Variant, waited: Duration) {
        self.count_state(variant, JobState::Running);
        self.inner
            .queue_wait
            .get_or_create(&variant_labels(variant))
            .observe(waited.as_secs_f64());
        self.inner
            .jobs_running
            .get_or_create(&variant_labels(variant))
            .inc();
    }

    /// A started job ended after running for `ran`.
    pub fn job_finished(&self, variant: Variant, outcome: JobOutcome, ran: Duration) {
        self.count_state(variant, outcome.state());
        self.inner
            .job_duration
            .get_or_create(&job_labels(variant, outcome.state()))
            .observe(ran.as_secs_f64());
        self.inner
            .jobs_running
            .get_or_create(&variant_labels(variant))
            .dec();
    }

    /// A running job was stopped by shutdown and put back in the queue; it counts as queued
    /// again and will start again.
    pub fn job_requeued(&self, variant: Variant) {
        self.count_state(variant, JobState::Queued);
        self.inner
            .jobs_running
            .get_or_create(&variant_labels(variant))
            .dec();
    }

    /// A job that had not started was cancelled.
    pub fn job_cancelled_while_waiting(&self, variant: Variant) {
        self.count_state(variant, JobState::Cancelled);
    }

    /// One denoising step of `variant` took `took`.
    pub fn step_finished(&self, variant: Variant, took: Duration) {
        self.inner
            .step_duration
            .get_or_create(&variant_labels(variant))
            .observe(took.as_secs_f64());
    }

    /// GPU memory on CUDA device `ordinal`; never called on a CPU, so no series appear there.
    pub fn set_gpu_memory(&self, ordinal: usize, used_bytes: u64, total_bytes: u64) {
        let labels = DeviceLabels {
            device: format!("cuda:{ordinal}"),
        };
        self.inner
            .gpu_memory_used
            .get_or_create(&labels)
            .set(saturating_i64(used_bytes));
        self.inner
            .gpu_memory_total
            .get_or_create(&labels)
            .set(saturating_i64(total_bytes));
    }

    /// A request was refused.
    pub fn refused(&self, refusal: &Refusal) {
        self.refused_for(RefusalReason::from(refusal));
    }

    pub fn refused_for(&self, reason: RefusalReason) {
        self.inner
            .refusals
            .get_or_create(&ReasonLabels {
                reason: reason.label(),
            })
            .inc();
    }

    /// A Discord API call failed.
    pub fn discord_api_error(&self, failure: DiscordFailure) {
        self.inner
            .discord_errors
            .get_or_create(&KindLabels {
                kind: failure.label(),
            })
            .inc();
    }

    /// A Discord API call that failed with `cause` is tried again (or another way: a smaller
    /// file, the channel instead of the interaction).
    pub fn discord_api_retry(&self, cause: DiscordFailure) {
        self.inner
            .discord_retries
            .get_or_create(&KindLabels {
                kind: cause.label(),
            })
            .inc();
    }

    /// A prompt expansion fell back to the member's own prompt.
    pub fn llm_fallback(&self, reason: LlmFallback) {
        self.inner
            .llm_fallbacks
            .get_or_create(&ReasonLabels {
                reason: reason.label(),
            })
            .inc();
    }

    /// Every metric in Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a label value.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.inner.registry)
        {
            tracing::error!(error = %e, "encoding the metrics failed");
        }
        text
    }

    fn count_state(&self, variant: Variant, state: JobState) {
        self.inner
            .jobs
            .get_or_create(&job_labels(variant, state))
            .inc();
    }
}

fn variant_labels(variant: Variant) -> VariantLabels {
    VariantLabels {
        variant: variant.name(),
    }
}

fn job_labels(variant: Variant, state: JobState) -> JobLabels {
    JobLabels {
        variant: variant.name(),
        state: state.name(),
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_job_shows_in_states_durations_and_running() {
        let m = Metrics::new();
        m.job_queued(Variant::Tiny);
        m.job_started(Variant::Tiny, Duration::from_secs(3));
        let text = m.encode();
        assert!(
            text.contains("floor33_jobs_running{variant=\"tiny\"} 1\n"),
            "{text}"
        );
        m.job_finished(Variant::Tiny, JobOutcome::Done, Duration::from_millis(1500));
        let text = m.encode();
        assert!(text.contains("floor33_jobs_total{variant=\"tiny\",state=\"queued\"} 1\n"));
        assert!(text.contains("floor33_jobs_total{variant=\"tiny\",state=\"done\"} 1\n"));
        assert!(text.contains("floor33_jobs_running{variant=\"tiny\"} 0\n"));
        assert!(text
            .contains("floor33_job_duration_seconds_sum{variant=\"tiny\",state=\"done\"} 1.5\n"));
        assert!(text.contains("floor33_queue_wait_seconds_count{variant=\"tiny\"} 1\n"));
        assert!(text.contains("floor33_build_info{version=\""), "{text}");
    }

    #[test]
    fn a_shared_queue_depth_wins_over_the_local_count() {
        let m = Metrics::new();
        m.set_queue_depth(3);
        assert!(m.encode().contains("floor33_queue_depth 3\n"));
        m.follow_shared_queue();
        m.set_shared_queue_depth(40);
        m.set_queue_depth(1);
        let text = m.encode();
        assert!(text.contains("floor33_queue_depth 40\n"), "{text}");
        m.job_started_elsewhere(Variant::Tiny, Duration::from_secs(2));
        let text = m.encode();
        assert!(text.contains("floor33_queue_wait_seconds_count{variant=\"tiny\"} 1\n"));
        assert!(!text.contains("floor33_jobs_running{"), "{text}");
    }

    #[test]
    fn no_gpu_series_until_the_engine_reports_one() {
        let m = Metrics::new();
        assert!(!m.encode().contains("floor33_gpu_memory_used_bytes{"));
        m.set_gpu_memory(1, 2048, 8192);
        let text = m.encode();
        assert!(text.contains("floor33_gpu_memory_used_bytes{device=\"cuda:1\"} 2048\n"));
        assert!(text.contains("floor33_gpu_memory_total_bytes{device=\"cuda:1\"} 8192\n"));
    }
}
