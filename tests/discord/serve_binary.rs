//! `floor33 serve --config <file>` as an operator runs it: the binary reads the config and
//! `DISCORD_TOKEN`, talks to the Discord named by `FLOOR33_DISCORD_API_BASE` (the fake here),
//! registers its commands, answers `/t2v` and `/i2v` (its image from a CDN host the config
//! allows), and exits cleanly on SIGTERM.

use std::process::Command;
use std::time::{Duration, Instant};

use super::support::discord_bot::{serve_engine_toml, spawn_serve, videos, wait_video, Scratch};
use super::support::fake_discord::payloads::*;
use super::support::fake_discord::FakeDiscord;
use super::support::fake_discord::Recorded;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_binary_connects_answers_and_stops_on_sigterm() {
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("serve-bin");
    let config = dir.0.join("floor33.toml");
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

[discord]
cdn_hosts = ["{}"]
insecure_loopback_cdn_for_tests = true
"#,
            dir.0.join("floor33.db").display(),
            fake.cdn_host(),
            engine = serve_engine_toml(&["tiny", "tiny-i2v"]),
        ),
    )
    .unwrap();
    let mut child = spawn_serve(&fake, &config);

    fake.wait_ready(Duration::from_secs(90)).await;
    assert_eq!(fake.identifies()[0]["token"], "Bot binary-token");
    let names: Vec<String> = fake
        .commands()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    for name in ["t2v", "i2v", "config", "queue", "cancel", "stats"] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} registered: {names:?}"
        );
    }

    let (token, sent) = fake.send_command(&CommandSpec::new(
        "t2v",
        vec![option("prompt", json!("from the binary"))],
    ));
    let ack = fake
        .wait_for(Duration::from_secs(5), "the ack", |r| {
            r.is("POST", &format!("/{token}/callback"))
        })
        .await;
    assert!(ack.at - sent < Duration::from_secs(3));
    let t2v_video = wait_video(&fake, &token, Duration::from_secs(120)).await;
    assert_decodes(&dir.0, "t2v.mp4", &t2v_video);

    // /i2v: the image comes from a host the config's `discord.cdn_hosts` allows.
    let mut png = Vec::new();
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 50]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let url = fake.serve_cdn("in.png", "image/png", png.clone());
    let att = snowflake();
    let mut spec = CommandSpec::new(
        "i2v",
        vec![
            attachment_option("image", att),
            option("prompt", json!("it moves")),
        ],
    );
    spec.attachments = vec![attachment(
        att,
        "in.png",
        "image/png",
        png.len() as u64,
        &url,
    )];
    let (i2v_token, _) = fake.send_command(&spec);
    let video = fake
        .wait_for(Duration::from_secs(120), "the i2v video", |r| {
            r.path.contains(&i2v_token)
                && r.status == 200
                && r.files.iter().any(|f| f.filename.ends_with(".mp4"))
        })
        .await;
    assert!(video.text().contains("tiny-i2v"), "{}", video.text());
    assert_decodes(&dir.0, "i2v.mp4", &video);

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("floor33 serve did not stop within 120 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(status.success(), "{status:?}");
    // Counted once the process is gone, so that no late duplicate can still arrive.
    assert_eq!(videos(&fake, Some(&token)).len(), 1, "one /t2v delivery");
    assert_eq!(
        videos(&fake, Some(&i2v_token)).len(),
        1,
        "one /i2v delivery"
    );
}

/// The delivered MP4 decodes to the tiny models' default 16 frames of 48×32.
fn assert_decodes(dir: &std::path::Path, name: &str, delivered: &Recorded) {
    let mp4 = delivered
        .files
        .iter()
        .find(|f| f.filename.ends_with(".mp4"))
        .expect("an mp4 part");
    let path = dir.join(name);
    std::fs::write(&path, &mp4.bytes).unwrap();
    let frames = floor33::video::decode_mp4(&path).unwrap();
    assert_eq!(frames.len(), 16, "{name}");
    assert!(frames.iter().all(|f| f.dimensions() == (48, 32)), "{name}");
}

/// A database that cannot be opened (here a file that is not SQLite) is reported and the
/// process exits before anything talks to Discord.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_database_is_reported_before_discord_is_contacted() {
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("serve-bad-db");
    let db = dir.0.join("floor33.db");
    std::fs::write(&db, vec![0x5a; 4096]).unwrap();
    let config = dir.0.join("floor33.toml");
    std::fs::write(
        &config,
        format!(
            "[engine]\ndevice = \"cpu\"\ndtype = \"f32\"\n[[engine.variants]]\nname = \"tiny\"\n\n\
             [defaults]\ndefault_variant = \"tiny\"\n[database]\npath = \"{}\"\n",
            db.display()
        ),
    )
    .unwrap();
    let api_base = format!("{}/api/v10", fake.api_base());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_floor33"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("DISCORD_TOKEN", "binary-token")
            .env("FLOOR33_DISCORD_API_BASE", api_base)
            .env("NO_PROXY", "127.0.0.1")
            .output()
            .unwrap()
    });
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .expect("serve exits on a bad database")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("floor33.db") || stderr.to_lowercase().contains("database"),
        "{stderr}"
    );
    assert!(fake.identifies().is_empty(), "the gateway was reached");
    assert!(fake.requests().is_empty(), "Discord's API was called");
}
