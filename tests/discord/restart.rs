//! Restart safety through the fake Discord: a job interrupted by a hard kill (SIGKILL) of the
//! real `floor33 serve` binary is run again by the next process on the same database and
//! reaches the member exactly once; and what the interaction told us (its upload limit) still
//! holds when the video is delivered by a later process.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::support::discord_bot::*;
use super::support::fake_discord::payloads::*;
use super::support::fake_discord::FakeDiscord;
use serde_json::json;

fn write_config(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("floor33.toml");
    std::fs::write(
        &config,
        format!(
            r#"
{engine}
[database]
path = "{}"

[defaults]
default_variant = "tiny"
default_steps = 2
"#,
            dir.join("floor33.db").display(),
            engine = serve_engine_toml(&["tiny"]),
        ),
    )
    .unwrap();
    config
}

/// Kills the child if a test fails before it is stopped.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn wait_exit(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            panic!("floor33 serve did not stop within {secs} s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_job_then_restart_delivers_exactly_one_video() {
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("sigkill");
    let config = write_config(&dir.0);

    let mut first = Guard(Some(spawn_serve(&fake, &config)));
    fake.wait_ready(Duration::from_secs(90)).await;
    let (token, _) = fake.send_command(&CommandSpec::new(
        "t2v",
        vec![
            option("prompt", json!("survives a crash")),
            // About a second a step at tiny's default shape: the kill lands mid-job.
            option("steps", json!(6)),
        ],
    ));
    // Mid-job: the member has seen it running.
    wait_running(&fake, &token, 1).await;
    let child = first.0.as_mut().unwrap();
    child.kill().unwrap(); // SIGKILL: no shutdown code runs
    let status = wait_exit(child, 10).await;
    first.0 = None;
    assert!(!status.success(), "killed, not exited: {status:?}");
    assert!(
        videos(&fake, Some(&token)).is_empty() && videos(&fake, None).is_empty(),
        "no video before the kill"
    );
    let progress_before = fake.requests_for(&token).len();

    // A new process on the same database takes the job up again and delivers it.
    let readies = fake.ready_count();
    let mut second = Guard(Some(spawn_serve(&fake, &config)));
    fake.wait_until(Duration::from_secs(90), "the second READY", |f| {
        f.ready_count() > readies
    })
    .await;
    let video = wait_video(&fake, &token, Duration::from_secs(300)).await;
    assert_eq!(
        video.method, "PATCH",
        "delivered in the original message, whose token is still valid"
    );
    assert!(fake.requests_for(&token).len() > progress_before);
    let (frames, width, height) = probe_posted(&dir.0, &video);
    assert_eq!(
        (frames, width, height),
        (16, 48, 32),
        "tiny's default shape"
    );

    // Exactly one video, across both processes, in the message or the channel.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all = videos(&fake, Some(&token)).len() + videos(&fake, None).len();
    assert_eq!(all, 1, "one video in all:\n{}", fake.dump());

    let child = second.0.as_mut().unwrap();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = wait_exit(child, 120).await;
    second.0 = None;
    assert!(status.success(), "{status:?}");
    assert_eq!(
        videos(&fake, Some(&token)).len() + videos(&fake, None).len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_interactions_upload_limit_holds_for_a_delivery_after_a_restart() {
    init_logs();
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("limit-restart");
    let bot = start_bot(&fake, service_config(&dir.0), bot_options(&fake)).await;

    // A server whose uploads are small (the tiny model's file is larger than this).
    let limit = 3000;
    let mut spec = CommandSpec::new(
        "t2v",
        vec![
            option("prompt", json!("fine detail everywhere")),
            option("steps", json!(20)),
        ],
    );
    spec.attachment_size_limit = limit;
    let (token, _) = fake.send_command(&spec);
    wait_running(&fake, &token, 1).await;

    // The process stops mid-job; the next one knows the limit only from the database.
    stop(bot).await;
    assert!(videos(&fake, Some(&token)).is_empty());
    let readies = fake.ready_count();
    let bot = start_bot(&fake, service_config(&dir.0), bot_options(&fake)).await;
    fake.wait_until(Duration::from_secs(20), "the second READY", |f| {
        f.ready_count() > readies
    })
    .await;
    let video = wait_video(&fake, &token, Duration::from_secs(120)).await;
    let mp4 = video
        .files
        .iter()
        .find(|f| f.filename.ends_with(".mp4"))
        .unwrap();
    assert!(
        mp4.bytes.len() as u64 <= limit,
        "{} bytes over the interaction's {limit}",
        mp4.bytes.len()
    );
    // Made to fit by re-encoding (smaller, if need be), every frame kept.
    assert_eq!(probe_posted(&dir.0, &video).0, 4, "all frames kept");
    stop(bot).await;
}
