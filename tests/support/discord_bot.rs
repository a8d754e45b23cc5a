//! Runs the real bot (the code `floor33 serve` runs) in-process against the fake Discord, with
//! the random-weight `tiny` model on the CPU.

use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::{DType, Device};
use floor33::app::App;
use floor33::core::jobs::VideoShape;
use floor33::core::service::{ServiceConfig, ShutdownMode};
use floor33::discord::download::DownloadPolicy;
use floor33::discord::notifier::NotifierOptions;
use floor33::discord::BotOptions;
use floor33::engine::{loader, EngineHandle, Limits};
use floor33::models::config::Variant;

use super::fake_discord::FakeDiscord;

pub const TOKEN: &str = "fake-bot-token";

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "floor33-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn tiny_engine() -> EngineHandle {
    engine_with(&[Variant::Tiny])
}

/// The random-weight smoke models named (`Tiny`, `TinyI2v`) on the CPU, loaded the way
/// `floor33 serve` loads its models.
pub fn engine_with(variants: &[Variant]) -> EngineHandle {
    let variants = variants.to_vec();
    EngineHandle::spawn(
        move || {
            variants
                .iter()
                .map(|v| loader::load_pipeline(*v, &[], &Device::Cpu, DType::F32))
                .collect()
        },
        Limits::default(),
    )
    .unwrap()
}

/// Service settings for tests: the tiny model, few steps, frequent previews.
pub fn service_config(dir: &Path) -> ServiceConfig {
    let mut c = ServiceConfig::new(dir.join("floor33.db"));
    c.defaults.default_variant = Variant::Tiny;
    c.defaults.default_steps = 4;
    c.defaults.max_steps = 50;
    c.preview_every = Some(Duration::from_millis(100));
    c.preview_max_side = 64;
    c
}

pub fn bot_options(fake: &FakeDiscord) -> BotOptions {
    let mut download = DownloadPolicy::default();
    download.allowed_hosts.push(fake.cdn_host());
    // The fake CDN is plain http on a loopback port.
    download.insecure_loopback_for_tests = true;
    download.max_bytes = 64 * 1024;
    BotOptions {
        token: TOKEN.into(),
        api_base: Some(fake.api_base()),
        dev_guild: None,
        download,
        notifier: NotifierOptions {
            edit_gap: Duration::from_millis(300),
            ..NotifierOptions::default()
        },
        video_shape: Some(VideoShape {
            height: 32,
            width: 48,
            frames: 4,
        }),
    }
}

/// Starts the bot and waits until it is connected with its commands registered.
pub async fn start_bot(fake: &FakeDiscord, config: ServiceConfig, options: BotOptions) -> App {
    start_bot_on(fake, config, options, tiny_engine()).await
}

/// [`start_bot`] on the given engine.
pub async fn start_bot_on(
    fake: &FakeDiscord,
    config: ServiceConfig,
    options: BotOptions,
    engine: EngineHandle,
) -> App {
    let bot = floor33::app::start(options, config, engine, None)
        .await
        .expect("bot starts");
    fake.wait_ready(Duration::from_secs(20)).await;
    bot
}

pub async fn stop(bot: App) {
    tokio::time::timeout(Duration::from_secs(60), bot.shutdown(ShutdownMode::Requeue))
        .await
        .expect("bot stops within a minute");
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("floor33=info")),
        )
        .with_test_writer()
        .try_init();
}

/// The first request about `token` that carries an MP4, once there is one.
pub async fn wait_video(
    fake: &FakeDiscord,
    token: &str,
    timeout: Duration,
) -> super::fake_discord::Recorded {
    fake.wait_for(timeout, "a video for the interaction", |r| {
        r.path.contains(token)
            && r.status == 200
            && r.files.iter().any(|f| f.filename.ends_with(".mp4"))
    })
    .await
}

/// The ephemeral refusal sent for `token` (the deferred reply is deleted first).
pub async fn wait_refusal(fake: &FakeDiscord, token: &str) -> String {
    let r = fake
        .wait_for(Duration::from_secs(30), "an ephemeral refusal", |r| {
            r.method == "POST"
                && r.path.ends_with(&format!("/{token}"))
                && r.json.as_ref().is_some_and(|j| j["flags"] == 64)
        })
        .await;
    assert!(
        fake.requests_for(token)
            .iter()
            .any(|r| r.method == "DELETE"),
        "the public placeholder is deleted"
    );
    r.content().to_string()
}

/// Waits until the job of `token` shows a running step ≥ `step`.
pub async fn wait_running(fake: &FakeDiscord, token: &str, step: usize) {
    fake.wait_until(Duration::from_secs(120), "the job to run", |f| {
        f.requests_for(token).iter().any(|r| {
            let c = r.content();
            c.contains("Generating")
                && c.split("step ")
                    .nth(1)
                    .and_then(|t| t.split(' ').next())
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| n >= step)
        })
    })
    .await;
}

/// The mp4 parts of every successful upload for `token` (or in the channel when `None`).
pub fn videos(fake: &FakeDiscord, token: Option<&str>) -> Vec<super::fake_discord::Recorded> {
    fake.requests()
        .into_iter()
        .filter(|r| match token {
            Some(t) => r.path.contains(t),
            None => r.path.starts_with("/channels/"),
        })
        .filter(|r| r.status == 200 && r.files.iter().any(|f| f.filename.ends_with(".mp4")))
        .collect()
}

/// The custom id of the button starting with `prefix` on a message.
pub fn button_id(message: &serde_json::Value, prefix: &str) -> String {
    message["components"][0]["components"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["custom_id"].as_str())
        .find(|id| id.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} button on {message:#}"))
        .to_string()
}

/// An embed field of a message body.
pub fn embed_field(body: &serde_json::Value, name: &str) -> Option<String> {
    body["embeds"][0]["fields"]
        .as_array()?
        .iter()
        .find(|f| f["name"] == name)
        .and_then(|f| f["value"].as_str())
        .map(str::to_string)
}

/// Decodes the MP4 a request carries: (frames, width, height).
pub fn probe_posted(dir: &Path, r: &super::fake_discord::Recorded) -> (usize, u32, u32) {
    let mp4 = r
        .files
        .iter()
        .find(|f| f.filename.ends_with(".mp4"))
        .expect("an mp4 part");
    assert_eq!(mp4.content_type, "video/mp4");
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("posted-{n}.mp4"));
    std::fs::write(&path, &mp4.bytes).unwrap();
    let probe = floor33::video::probe_mp4(&path).unwrap();
    (probe.frames, probe.width, probe.height)
}

/// The `[engine]` table of a `floor33 serve` test configuration: the CPU in f32, serving the
/// named tiny models (their random weights need no files).
pub fn serve_engine_toml(variants: &[&str]) -> String {
    let mut toml = "[engine]\ndevice = \"cpu\"\ndtype = \"f32\"\n".to_string();
    for name in variants {
        toml.push_str(&format!("[[engine.variants]]\nname = \"{name}\"\n"));
    }
    toml
}

/// Starts the real `floor33 serve` binary against `fake` with `config`.
pub fn spawn_serve(fake: &super::fake_discord::FakeDiscord, config: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_floor33"))
        .args(["serve", "--config"])
        .arg(config)
        .env("DISCORD_TOKEN", "binary-token")
        .env(
            "FLOOR33_DISCORD_API_BASE",
            format!("{}/api/v10", fake.api_base()),
        )
        .env("NO_PROXY", "127.0.0.1")
        .env("RUST_LOG", "floor33=info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Starts `floor33 serve --role <role>` (plus `extra` arguments) against `fake`; its stderr
/// goes to `log`.
pub fn spawn_role(
    fake: &super::fake_discord::FakeDiscord,
    config: &Path,
    role: &str,
    log: &Path,
) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_floor33"))
        .args(["serve", "--role", role, "--config"])
        .arg(config)
        .env("DISCORD_TOKEN", "binary-token")
        .env(
            "FLOOR33_DISCORD_API_BASE",
            format!("{}/api/v10", fake.api_base()),
        )
        .env("NO_PROXY", "127.0.0.1")
        .env("RUST_LOG", "floor33=info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}
