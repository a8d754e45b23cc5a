//! Metrics and health through the real bot. `floor33 serve` with `[ops] listen` serves
//! `/healthz` and `/readyz` (ready once the models are loaded and the store answers), and
//! `/metrics` counts a `/t2v` run through the fake Discord and a refused one; a bad
//! `ops.listen` stops start-up before Discord is contacted. The Discord adapter counts API
//! errors and retries by kind.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::support::discord_bot::*;
use super::support::fake_discord::payloads::*;
use super::support::fake_discord::FakeDiscord;
use super::support::prometheus::{parse_exposition, value};
use floor33::ops::Metrics;
use serde_json::json;

fn config_text(dir: &Scratch, listen: &str) -> String {
    format!(
        r#"
{engine}
[database]
path = "{}"

[defaults]
default_variant = "tiny"
default_steps = 3
max_steps = 10

[ops]
listen = "{listen}"
"#,
        dir.0.join("floor33.db").display(),
        engine = serve_engine_toml(&["tiny"]),
    )
}

/// A port nothing listens on right now (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

async fn wait_status(addr: SocketAddr, path: &str, want: u16, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = None;
    while Instant::now() < deadline {
        last = get(addr, path).await;
        if let Some((status, body)) = &last {
            if *status == want {
                return body.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{path} did not answer {want} within {secs} s; last: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_reports_health_readiness_and_a_jobs_metrics() {
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("ops-serve");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.0.join("floor33.toml");
    std::fs::write(&config, config_text(&dir, &addr.to_string())).unwrap();
    let mut child = spawn_serve(&fake, &config);

    assert_eq!(wait_status(addr, "/healthz", 200, 90).await, "ok\n");
    let ready = wait_status(addr, "/readyz", 200, 90).await;
    assert_eq!(ready, "models: ok\nstore: ok\n");
    fake.wait_ready(Duration::from_secs(90)).await;

    let (token, _) = fake.send_command(&CommandSpec::new(
        "t2v",
        vec![option("prompt", json!("counted"))],
    ));
    fake.wait_for(Duration::from_secs(120), "the video", |r| {
        r.path.contains(&token)
            && r.status == 200
            && r.files.iter().any(|f| f.filename.ends_with(".mp4"))
    })
    .await;
    // Over the server's max_steps: refused by the core, never queued.
    let (refused, _) = fake.send_command(&CommandSpec::new(
        "t2v",
        vec![
            option("prompt", json!("too long")),
            option("steps", json!(50)),
        ],
    ));
    fake.wait_for(Duration::from_secs(10), "the refusal", |r| {
        r.path.contains(&refused) && r.text().contains("steps")
    })
    .await;

    let (status, text) = get(addr, "/metrics").await.expect("a scrape");
    assert_eq!(status, 200);
    let samples = parse_exposition(&text);
    let tiny = ("variant", "tiny");
    for (state, n) in [
        ("queued", 1.0),
        ("running", 1.0),
        ("done", 1.0),
        ("failed", 0.0),
    ] {
        assert_eq!(
            value(&samples, "floor33_jobs_total", &[tiny, ("state", state)]),
            n,
            "{state}:\n{text}"
        );
    }
    assert_eq!(value(&samples, "floor33_queue_depth", &[]), 0.0);
    assert_eq!(value(&samples, "floor33_jobs_running", &[tiny]), 0.0);
    assert_eq!(
        value(&samples, "floor33_queue_wait_seconds_count", &[tiny]),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "floor33_job_duration_seconds_count",
            &[tiny, ("state", "done")]
        ),
        1.0
    );
    // Three steps: the two after the first are timed.
    assert_eq!(
        value(&samples, "floor33_step_duration_seconds_count", &[tiny]),
        2.0,
        "{text}"
    );
    assert_eq!(
        value(
            &samples,
            "floor33_refusals_total",
            &[("reason", "invalid_parameter")]
        ),
        1.0,
        "{text}"
    );
    assert!(
        !text.contains("floor33_gpu_memory_used_bytes{"),
        "CPU run: no GPU series"
    );

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("floor33 serve did not stop within 120 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(get(addr, "/healthz").await.is_none(), "the listener closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_ops_listen_stops_start_up_before_discord() {
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("ops-bad-listen");
    let config = dir.0.join("floor33.toml");
    std::fs::write(&config, config_text(&dir, "localhost:ninety")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_floor33"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("DISCORD_TOKEN", "binary-token")
        .env(
            "FLOOR33_DISCORD_API_BASE",
            format!("{}/api/v10", fake.api_base()),
        )
        .env("NO_PROXY", "127.0.0.1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`ops.listen`") && stderr.contains("localhost:ninety"),
        "{stderr}"
    );
    assert!(fake.identifies().is_empty(), "Discord was contacted");
    assert!(fake.requests().is_empty(), "Discord was contacted");
}

fn t2v_spec(prompt: &str, steps: u64) -> CommandSpec {
    CommandSpec::new(
        "t2v",
        vec![
            option("prompt", json!(prompt)),
            option("steps", json!(steps)),
        ],
    )
}

/// The Discord adapter counts what Discord refused and what it tried again: a dead interaction
/// token (401, continued in the channel) and uploads refused as too large (413, re-encoded).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn discord_errors_and_retries_are_counted_by_kind() {
    init_logs();
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("ops-discord");
    let metrics = Metrics::new();
    let mut config = service_config(&dir.0);
    config.metrics = metrics.clone();
    let mut options = bot_options(&fake);
    options.notifier.metrics = metrics.clone();
    let bot = start_bot(&fake, config, options).await;

    fake.set_max_file_bytes(Some(3000));
    let (small, _) = fake.send_command(&t2v_spec("fine detail everywhere", 4));
    wait_video(&fake, &small, Duration::from_secs(120)).await;
    fake.set_max_file_bytes(None);

    let (token, _) = fake.send_command(&t2v_spec("a lighthouse at night", 8));
    wait_running(&fake, &token, 1).await;
    fake.expire_token(&token);
    fake.wait_for(Duration::from_secs(120), "the video in the channel", |r| {
        r.path.starts_with("/channels/") && r.files.iter().any(|f| f.filename.ends_with(".mp4"))
    })
    .await;

    let answered = |status| {
        fake.requests()
            .iter()
            .filter(|r| r.status == status)
            .count() as f64
    };
    let (too_large, unauthorized) = (answered(413), answered(401));
    assert!(too_large >= 1.0 && unauthorized >= 1.0, "{}", fake.dump());
    let samples = parse_exposition(&metrics.encode());
    let errors = |kind| {
        value(
            &samples,
            "floor33_discord_api_errors_total",
            &[("kind", kind)],
        )
    };
    let retries = |kind| {
        value(
            &samples,
            "floor33_discord_api_retries_total",
            &[("kind", kind)],
        )
    };
    // Every refusal Discord sent is counted once; each refused video upload was re-encoded.
    assert_eq!(errors("too_large"), too_large);
    assert!((1.0..=too_large).contains(&retries("too_large")));
    // Every 401 sent the view to the channel instead.
    assert_eq!(errors("unauthorized"), unauthorized);
    assert_eq!(retries("unauthorized"), unauthorized);
    assert_eq!(
        value(
            &samples,
            "floor33_jobs_total",
            &[("variant", "tiny"), ("state", "done")]
        ),
        2.0
    );
    stop(bot).await;
}
