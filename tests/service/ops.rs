//! The ops listener over real HTTP: `/metrics` parses as Prometheus text and moves with the
//! typed calls, `/healthz` answers, `/readyz` turns from 503 to 200 when its probes pass.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::support::prometheus::{parse_exposition, value, Sample};
use floor33::core::refusal::Refusal;
use floor33::models::config::Variant;
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
