//! `/t2v` end to end: the real bot against the loopback fake Discord, with the tiny model.

use std::time::Duration;

use super::support::discord_bot::*;
use super::support::fake_discord::payloads::*;
use super::support::fake_discord::FakeDiscord;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t2v_acks_fast_streams_progress_and_posts_a_decodable_mp4() {
    init_logs();
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("t2v-happy");
    let bot = start_bot(&fake, service_config(&dir.0), bot_options(&fake)).await;

    // Registration: the commands, their numeric bounds, the variant choices, admin hiding.
    let cmds = fake.commands();
    let t2v = cmds
        .iter()
        .find(|c| c["name"] == "t2v")
        .expect("t2v registered");
    let opt = |name: &str| {
        t2v["options"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(opt("steps")["min_value"].as_f64(), Some(1.0));
    assert_eq!(opt("steps")["max_value"].as_f64(), Some(200.0));
    assert_eq!(opt("cfg")["max_value"].as_f64(), Some(30.0));
    assert_eq!(opt("variant")["choices"][0]["value"], "tiny");
    assert!(
        t2v["options"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["name"] != "expand"),
        "no expander configured"
    );
    for admin in ["config", "queue", "cancel", "stats"] {
        let c = cmds.iter().find(|c| c["name"] == admin).unwrap();
        assert_eq!(
            c["default_member_permissions"], "32",
            "{admin} hidden from members"
        );
    }

    let spec = CommandSpec::new(
        "t2v",
        vec![
            option("prompt", json!("a cat surfing a wave")),
            option("seed", json!(42)),
            option("steps", json!(6)),
        ],
    );
    let (token, sent) = fake.send_command(&spec);
    let ack = fake
        .wait_for(Duration::from_secs(5), "the deferral", |r| {
            r.is("POST", &format!("/{token}/callback"))
        })
        .await;
    let latency = ack.at - sent;
    println!("ack latency: {latency:?}");
    assert!(latency < Duration::from_secs(3), "acked in {latency:?}");
    assert_eq!(
        ack.json.as_ref().unwrap()["type"],
        5,
        "deferred channel message"
    );

    let done = fake
        .wait_for(Duration::from_secs(120), "the video", |r| {
            r.path.contains(&token)
                && r.method == "PATCH"
                && r.files.iter().any(|f| f.filename.ends_with(".mp4"))
        })
        .await;
    let edits: Vec<_> = fake
        .requests_for(&token)
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    let texts: Vec<String> = edits.iter().map(|r| r.content().to_string()).collect();
    assert!(texts.iter().any(|t| t.contains("Queued")), "{texts:#?}");
    // 6 steps asked run 7 (the original's uniform DDIM schedule, 1000 // 6 = 166): every
    // progress line, the first included, shows the total the sampler really runs.
    let progress: Vec<&String> = texts.iter().filter(|t| t.contains("Generating")).collect();
    assert!(
        !progress.is_empty() && progress.iter().all(|t| t.contains(" of 7 ")),
        "{texts:#?}"
    );
    assert!(
        edits
            .iter()
            .any(|r| r.files.iter().any(|f| f.filename == "preview.png")),
        "a progress preview was attached"
    );
    // In order: the queue view first, then progress whose step never goes back (a coalesced
    // edit always carries the latest state), and the video once, in the last edit.
    let first_progress = texts
        .iter()
        .position(|t| t.contains("Generating"))
        .expect("a progress edit");
    assert!(
        texts[..first_progress].iter().any(|t| t.contains("Queued")),
        "{texts:#?}"
    );
    let shown_steps: Vec<usize> = texts
        .iter()
        .filter(|t| t.contains("Generating"))
        .filter_map(|t| t.split("step ").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    assert!(!shown_steps.is_empty(), "{texts:#?}");
    assert!(
        shown_steps.windows(2).all(|w| w[0] <= w[1]),
        "{shown_steps:?}"
    );
    let with_video: Vec<usize> = edits
        .iter()
        .enumerate()
        .filter(|(_, r)| r.files.iter().any(|f| f.filename.ends_with(".mp4")))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        with_video,
        vec![edits.len() - 1],
        "one video, in the last edit"
    );

    let body = done.json.as_ref().unwrap();
    assert!(done.content().contains("Done"), "{}", done.content());
    let embed = &body["embeds"][0];
    assert_eq!(embed["description"], "a cat surfing a wave");
    let field = |name: &str| {
        embed["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .map(|f| f["value"].as_str().unwrap().to_string())
    };
    assert_eq!(field("Seed").as_deref(), Some("42"));
    assert_eq!(field("Steps").as_deref(), Some("6"));
    assert_eq!(field("Variant").as_deref(), Some("tiny"));
    assert!(field("Generation time").is_some());
    let buttons: Vec<String> = body["components"][0]["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["custom_id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        buttons.iter().any(|b| b.starts_with("v1:reroll:")),
        "{buttons:?}"
    );
    assert!(
        buttons.iter().any(|b| b.starts_with("v1:remix:")),
        "{buttons:?}"
    );
    assert!(
        !buttons.iter().any(|b| b.starts_with("v1:cancel:")),
        "{buttons:?}"
    );

    let mp4 = done
        .files
        .iter()
        .find(|f| f.filename.ends_with(".mp4"))
        .unwrap();
    assert_eq!(mp4.content_type, "video/mp4");
    assert!(mp4.filename.contains("seed42"), "{}", mp4.filename);
    let path = dir.0.join("posted.mp4");
    std::fs::write(&path, &mp4.bytes).unwrap();
    let probe = floor33::video::probe_mp4(&path).unwrap();
    assert_eq!(probe.frames, 4, "the frames asked for");
    assert_eq!((probe.width, probe.height), (48, 32));
    // Nothing after the final message.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let last = fake
        .requests_for(&token)
        .into_iter()
        .rfind(|r| r.method == "PATCH")
        .unwrap();
    assert_eq!(last.at, done.at, "no edit after the video");
    stop(bot).await;
}
