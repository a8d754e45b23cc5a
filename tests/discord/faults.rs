//! What Discord throws at a long job: a dead interaction token (50027), an interaction older
//! than the token's life, an upload refused as too large (413), and a dropped gateway.

use std::time::Duration;

use super::support::discord_bot::*;
use super::support::fake_discord::payloads::*;
use super::support::fake_discord::FakeDiscord;
use serde_json::json;

fn t2v_spec(prompt: &str, steps: u64) -> CommandSpec {
    CommandSpec::new(
        "t2v",
        vec![
            option("prompt", json!(prompt)),
            option("steps", json!(steps)),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_token_moves_the_job_to_the_channel_with_a_mention() {
    init_logs();
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("dead-token");
    let bot = start_bot(&fake, service_config(&dir.0), bot_options(&fake)).await;

    let (token, _) = fake.send_command(&t2v_spec("a lighthouse at night", 8));
    wait_running(&fake, &token, 1).await;
    fake.expire_token(&token);

    let video = fake
        .wait_for(Duration::from_secs(120), "the video in the channel", |r| {
            r.is("POST", &format!("/channels/{CHANNEL_ID}/messages"))
                && r.files.iter().any(|f| f.filename.ends_with(".mp4"))
        })
        .await;
    let body = video.json.as_ref().unwrap();
    assert!(
        video.content().starts_with(&format!("<@{MEMBER_ID}>")),
        "{}",
        video.content()
    );
    assert_eq!(body["allowed_mentions"]["users"][0], MEMBER_ID.to_string());
    assert_eq!(video.auth.as_deref(), Some("Bot fake-bot-token"));
    assert!(
        fake.requests_for(&token).iter().any(|r| r.status == 401),
        "the fake refused the token"
    );
    // Progress continued in the channel before the video.
    assert!(fake
        .requests()
        .iter()
        .any(|r| r.path.starts_with("/channels/") && r.content().contains("Generating")));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(videos(&fake, None).len(), 1, "delivered once");
    assert!(videos(&fake, Some(&token)).is_empty());
    stop(bot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interaction_older_than_fourteen_minutes_is_answered_in_the_channel() {
    init_logs();
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("old-token");
    let bot = start_bot(&fake, service_config(&dir.0), bot_options(&fake)).await;

    // The snowflake says the interaction was created 14.5 minutes ago.
    let mut spec = t2v_spec("an old request", 4);
    spec.created_ms = now_ms() - 14 * 60 * 1000 - 30_000;
    let (token, _) = fake.send_command(&spec);
    fake.wait_for(Duration::from_secs(120), "the video in the channel", |r| {
        r.is("POST", "/channels/") && r.files.iter().any(|f| f.filename.ends_with(".mp4"))
    })
    .await;
    let webhook_edits = fake
        .requests_for(&token)
        .iter()
        .filter(|r| r.method == "PATCH")
        .count();
    assert_eq!(webhook_edits, 0, "the old token is not used for edits");
    stop(bot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_413_is_answered_with_a_smaller_reencode() {
    init_logs();
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("413");
    let bot = start_bot(&fake, service_config(&dir.0), bot_options(&fake)).await;
    let limit = 3000;
    fake.set_max_file_bytes(Some(limit));

    let (token, _) = fake.send_command(&t2v_spec("fine detail everywhere", 4));
    let video = wait_video(&fake, &token, Duration::from_secs(120)).await;
    let refused: Vec<_> = fake
        .requests_for(&token)
        .into_iter()
        .filter(|r| r.status == 413)
        .collect();
    assert!(
        !refused.is_empty(),
        "the first upload was refused:\n{}",
        fake.dump()
    );
    let first = refused[0]
        .files
        .iter()
        .find(|f| f.filename.ends_with(".mp4"))
        .unwrap()
        .bytes
        .len();
    let mp4 = video
        .files
        .iter()
        .find(|f| f.filename.ends_with(".mp4"))
        .unwrap();
    println!(
        "refused {first} bytes, delivered {} bytes after {} refusals",
        mp4.bytes.len(),
        refused.len()
    );
    assert!(mp4.bytes.len() <= limit && mp4.bytes.len() < first);
    let path = dir.0.join("small.mp4");
    std::fs::write(&path, &mp4.bytes).unwrap();
    assert_eq!(
        floor33::video::probe_mp4(&path).unwrap().frames,
        4,
        "all frames kept"
    );
    stop(bot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_drop_mid_job_resumes_and_delivers_once() {
    init_logs();
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("gateway-drop");
    let bot = start_bot(&fake, service_config(&dir.0), bot_options(&fake)).await;

    let (token, _) = fake.send_command(&t2v_spec("a storm over the sea", 8));
    wait_running(&fake, &token, 1).await;
    fake.drop_gateway();
    fake.wait_until(Duration::from_secs(30), "a RESUME", |f| {
        !f.resumes().is_empty()
    })
    .await;
    let resume = &fake.resumes()[0];
    assert_eq!(resume["session_id"], "sess1");
    assert_eq!(fake.connections(), 2);

    // Events still arrive after the resume.
    let (second, sent) = fake.send_command(&t2v_spec("after the storm", 4));
    let ack = fake
        .wait_for(Duration::from_secs(5), "the second ack", |r| {
            r.is("POST", &format!("/{second}/callback"))
        })
        .await;
    assert!(ack.at - sent < Duration::from_secs(3));

    wait_video(&fake, &token, Duration::from_secs(120)).await;
    wait_video(&fake, &second, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        videos(&fake, Some(&token)).len(),
        1,
        "delivered exactly once"
    );
    assert_eq!(videos(&fake, Some(&second)).len(), 1);
    stop(bot).await;
}
