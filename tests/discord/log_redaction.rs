//! No credential reaches the log, at any level: the real `floor33 serve` binary runs at
//! `RUST_LOG=trace` against the loopback fake Discord and fake LLM, answers a `/t2v` with prompt
//! expansion (interaction token in callback and webhook URLs, the LLM key in a header), and its
//! whole stderr is searched for the bot token, the interaction token and the LLM key.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::support::discord_bot::{serve_engine_toml, Scratch};
use super::support::fake_discord::payloads::*;
use super::support::fake_discord::FakeDiscord;
use super::support::fake_llm::{FakeLlm, Reply};
use serde_json::json;

const BOT_TOKEN: &str = "MTk4.bot-token-never-logged.x9Q";
const LLM_KEY: &str = "sk-llm-key-never-logged-4242";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trace_level_run_logs_no_token_or_key() {
    let fake = FakeDiscord::start().await;
    let llm = FakeLlm::start(Reply::Content(
        "A corgi running on a sunny beach, waves behind it".into(),
    ))
    .await;
    let dir = Scratch::new("log-redaction");
    let config = dir.0.join("floor33.toml");
    std::fs::write(
        &config,
        format!(
            r#"
{engine}
[database]
path = "{}"

[llm]
base_url = "{}"
api_key_env = "FLOOR33_TEST_LLM_KEY"

[defaults]
default_variant = "tiny"
default_steps = 2

[discord]
cdn_hosts = ["{}"]
insecure_loopback_cdn_for_tests = true
"#,
            dir.0.join("floor33.db").display(),
            llm.base_url,
            fake.cdn_host(),
            engine = serve_engine_toml(&["tiny"]),
        ),
    )
    .unwrap();
    let log_path = dir.0.join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_floor33"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("DISCORD_TOKEN", BOT_TOKEN)
        .env("FLOOR33_TEST_LLM_KEY", LLM_KEY)
        .env(
            "FLOOR33_DISCORD_API_BASE",
            format!("{}/api/v10", fake.api_base()),
        )
        .env("NO_PROXY", "127.0.0.1")
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();

    fake.wait_ready(Duration::from_secs(90)).await;
    assert_eq!(fake.identifies()[0]["token"], format!("Bot {BOT_TOKEN}"));
    let (token, _) = fake.send_command(&CommandSpec::new(
        "t2v",
        vec![
            option("prompt", json!("a corgi")),
            option("expand", json!(true)),
        ],
    ));
    fake.wait_for(Duration::from_secs(120), "the video", |r| {
        r.path.contains(&token)
            && r.status == 200
            && r.files.iter().any(|f| f.filename.ends_with(".mp4"))
    })
    .await;
    assert_eq!(
        llm.requests()[0].authorization.as_deref(),
        Some(format!("Bearer {LLM_KEY}").as_str()),
        "the key was used"
    );

    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "serve did not stop");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let log = std::fs::read_to_string(&log_path).unwrap();
    // A trace-level run that logged nothing would prove nothing.
    assert!(log.lines().count() > 200, "{} lines", log.lines().count());
    assert!(log.contains("TRACE"), "trace level is on");
    let leaks: Vec<(&str, &str)> = [
        ("bot token", BOT_TOKEN),
        ("interaction token", token.as_str()),
        ("LLM key", LLM_KEY),
    ]
    .into_iter()
    .flat_map(|(what, secret)| {
        log.lines()
            .filter(move |l| l.contains(secret))
            .map(move |l| (what, l))
    })
    .collect();
    assert!(
        leaks.is_empty(),
        "{} log lines hold a credential, e.g. {:?}",
        leaks.len(),
        &leaks[..leaks.len().min(5)]
    );
    // And the masking did happen where the credentials would have been.
    assert!(log.contains(floor33::redact::MASK), "nothing was masked");
}
