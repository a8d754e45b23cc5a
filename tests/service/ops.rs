//! The ops listener over real HTTP: `/metrics` parses as Prometheus text and moves with the
//! typed calls, `/healthz` answers, `/readyz` turns from 503 to 200 when its probes pass. And
//! the callers: the job service counts a job's life and its refusals, the LLM adapter its
//! fallbacks by reason.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::support::fake_llm::{FakeLlm, Reply};
use super::support::job_fakes::*;
use super::support::prometheus::{parse_exposition, value, Sample};
use floor33::core::refusal::Refusal;
use floor33::core::{JobService, ServiceConfig, ShutdownMode};
use floor33::llm::{ExpandKind, ExpanderConfig, LlmExpander};
use floor33::models::config::Variant;
use floor33::models::tokenizer::ClipTokenizer;
use floor33::ops::{
    probe_fn, DiscordFailure, JobOutcome, LlmFallback, Metrics, OpsServer, Readiness,
};

async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

async fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let (status, content_type, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    parse_exposition(&body)
}

#[tokio::test]
async fn metrics_move_with_the_calls_and_readyz_follows_its_probes() {
    let metrics = Metrics::new();
    let models_loaded = Arc::new(AtomicBool::new(false));
    let flag = models_loaded.clone();
    let readiness = Readiness::new()
        .with(probe_fn("models", move || {
            let loaded = flag.load(Ordering::SeqCst);
            async move {
                loaded
                    .then_some(())
                    .ok_or_else(|| "still loading".to_string())
            }
        }))
        .with(probe_fn("store", || async { Ok(()) }));
    let server = OpsServer::start("127.0.0.1:0".parse().unwrap(), metrics.clone(), readiness)
        .await
        .unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);

    assert_eq!(get(addr, "/healthz").await.0, 200);
    let (status, _, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body, "models: still loading\nstore: ok\n");

    let before = scrape(addr).await;
    assert_eq!(value(&before, "floor33_queue_depth", &[]), 0.0);
    assert_eq!(
        value(
            &before,
            "floor33_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    metrics.set_queue_depth(3);
    metrics.job_queued(Variant::Vc2);
    metrics.job_started(Variant::Vc2, Duration::from_secs(7));
    for _ in 0..4 {
        metrics.step_finished(Variant::Vc2, Duration::from_millis(250));
    }
    metrics.job_finished(Variant::Vc2, JobOutcome::Failed, Duration::from_secs(2));
    metrics.job_cancelled_while_waiting(Variant::Tiny);
    metrics.refused(&Refusal::QueueFull { cap: 3 });
    metrics.refused(&Refusal::QueueFull { cap: 3 });
    metrics.refused(&Refusal::BlockedWord { word: "x".into() });
    metrics.discord_api_error(DiscordFailure::from_status(429));
    metrics.discord_api_retry(DiscordFailure::RateLimited);
    metrics.llm_fallback(LlmFallback::Timeout);
    metrics.set_gpu_memory(0, 1 << 30, 80 << 30);

    let after = scrape(addr).await;
    let vc2 = ("variant", "vc2");
    assert_eq!(value(&after, "floor33_queue_depth", &[]), 3.0);
    for (state, n) in [
        ("queued", 1.0),
        ("running", 1.0),
        ("failed", 1.0),
        ("done", 0.0),
    ] {
        assert_eq!(
            value(&after, "floor33_jobs_total", &[vc2, ("state", state)]),
            n,
            "{state}"
        );
    }
    assert_eq!(
        value(
            &after,
            "floor33_jobs_total",
            &[("variant", "tiny"), ("state", "cancelled")]
        ),
        1.0
    );
    assert_eq!(value(&after, "floor33_jobs_running", &[vc2]), 0.0);
    assert_eq!(value(&after, "floor33_queue_wait_seconds_sum", &[vc2]), 7.0);
    assert_eq!(
        value(
            &after,
            "floor33_job_duration_seconds_count",
            &[vc2, ("state", "failed")]
        ),
        1.0
    );
    assert_eq!(
        value(&after, "floor33_step_duration_seconds_count", &[vc2]),
        4.0
    );
    assert_eq!(
        value(&after, "floor33_step_duration_seconds_sum", &[vc2]),
        1.0
    );
    // The 0.32 s bucket holds all four 0.25 s steps, the 0.16 s one none.
    assert_eq!(
        value(
            &after,
            "floor33_step_duration_seconds_bucket",
            &[vc2, ("le", "0.32")]
        ),
        4.0
    );
    assert_eq!(
        value(
            &after,
            "floor33_step_duration_seconds_bucket",
            &[vc2, ("le", "0.16")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &after,
            "floor33_refusals_total",
            &[("reason", "queue_full")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &after,
            "floor33_refusals_total",
            &[("reason", "blocked_word")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "floor33_discord_api_errors_total",
            &[("kind", "rate_limited")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "floor33_discord_api_retries_total",
            &[("kind", "rate_limited")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "floor33_llm_fallbacks_total",
            &[("reason", "timeout")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "floor33_gpu_memory_total_bytes",
            &[("device", "cuda:0")]
        ),
        (80u64 << 30) as f64
    );

    models_loaded.store(true, Ordering::SeqCst);
    let (status, _, body) = get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "models: ok\nstore: ok\n");
    assert_eq!(get(addr, "/nowhere").await.0, 404);

    server.stop().await;
    let gone = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(gone.is_err(), "the listener still answers after stop");
}

#[tokio::test]
async fn an_address_in_use_is_an_error_naming_the_key() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let err = OpsServer::start(addr, Metrics::new(), Readiness::new())
        .await
        .err()
        .expect("binding a taken port must fail");
    let text = format!("{err:#}");
    assert!(
        text.contains("`ops.listen`") && text.contains(&addr.to_string()),
        "{text}"
    );
}

/// The job service records a job's life in the metrics it is given: queued, started (with its
/// wait), each timed step, done; and a refusal by its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_service_counts_a_jobs_life_and_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let mut config = ServiceConfig::new(dir.path().join("floor33.db"));
    config.defaults.default_variant = Variant::Tiny;
    config.metrics = metrics.clone();
    let notifier = shared(RecordingNotifier::default());
    let service = JobService::start(config, tiny_engine(), notifier.clone(), None)
        .await
        .unwrap();

    let id = service
        .submit(tiny_spec("a red fox", 4), origin(1, 10))
        .await
        .unwrap()
        .id;
    wait_until(120, "delivery", || notifier.delivered() == vec![id]).await;
    let refused = service.submit(tiny_spec("", 4), origin(1, 10)).await;
    assert_eq!(refused.unwrap_err(), Refusal::EmptyPrompt);

    let samples = parse_exposition(&metrics.encode());
    let tiny = ("variant", "tiny");
    for (state, n) in [("queued", 1.0), ("running", 1.0), ("done", 1.0)] {
        assert_eq!(
            value(&samples, "floor33_jobs_total", &[tiny, ("state", state)]),
            n,
            "{state}"
        );
    }
    assert_eq!(value(&samples, "floor33_queue_depth", &[]), 0.0);
    assert_eq!(value(&samples, "floor33_jobs_running", &[tiny]), 0.0);
    assert_eq!(
        value(&samples, "floor33_queue_wait_seconds_count", &[tiny]),
        1.0
    );
    // Four steps: the three after the first report are timed.
    assert_eq!(
        value(&samples, "floor33_step_duration_seconds_count", &[tiny]),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            "floor33_job_duration_seconds_count",
            &[tiny, ("state", "done")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "floor33_refusals_total",
            &[("reason", "empty_prompt")]
        ),
        1.0
    );
    service.shutdown(ShutdownMode::Requeue).await;
}

/// The LLM adapter counts each fallback by what went wrong.
#[tokio::test]
async fn llm_fallbacks_are_counted_by_reason() {
    let metrics = Metrics::new();
    let tokenizer = Arc::new(ClipTokenizer::new().unwrap());
    let cases = [
        (
            Reply::Status(500, r#"{"error":"boom"}"#.into()),
            "error_status",
        ),
        (Reply::Raw("{\"choices\": [".into()), "unusable_answer"),
        (
            Reply::Delayed(
                Duration::from_secs(5),
                Box::new(Reply::Content("late".into())),
            ),
            "timeout",
        ),
    ];
    for (reply, _) in cases.iter().cloned() {
        let fake = FakeLlm::start(reply).await;
        let mut cfg = ExpanderConfig::new(&fake.base_url, "fake-model");
        cfg.timeout = Duration::from_millis(500);
        let expander = LlmExpander::new(cfg, tokenizer.clone())
            .unwrap()
            .with_metrics(metrics.clone());
        expander
            .expand("a cat surfing", ExpandKind::TextToVideo)
            .await;
    }
    let unreachable = {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = ExpanderConfig::new(format!("http://127.0.0.1:{port}/v1"), "fake-model");
        LlmExpander::new(cfg, tokenizer.clone())
            .unwrap()
            .with_metrics(metrics.clone())
    };
    unreachable
        .expand("a cat surfing", ExpandKind::TextToVideo)
        .await;

    let samples = parse_exposition(&metrics.encode());
    for reason in ["error_status", "unusable_answer", "timeout", "unreachable"] {
        assert_eq!(
            value(
                &samples,
                "floor33_llm_fallbacks_total",
                &[("reason", reason)]
            ),
            1.0,
            "{reason}"
        );
    }
}
