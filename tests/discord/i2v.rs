//! `/i2v` input images: the bot's own download refuses what is not a usable image, clearly and
//! only to the member; a good image is fetched from the (fake) CDN and, with an image-to-video
//! model loaded, animated.

use std::io::Cursor;
use std::time::Duration;

use super::support::discord_bot::*;
use super::support::fake_discord::payloads::*;
use super::support::fake_discord::FakeDiscord;
use floor33::discord::download::{fetch_image, AttachmentMeta, DownloadError};
use floor33::models::config::Variant;
use serde_json::json;

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 99]));
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn i2v(
    fake: &FakeDiscord,
    name: &str,
    content_type: &str,
    declared: u64,
    bytes: Vec<u8>,
) -> String {
    let url = fake.serve_cdn(name, content_type, bytes);
    let att_id = snowflake();
    let mut spec = CommandSpec::new(
        "i2v",
        vec![
            attachment_option("image", att_id),
            option("prompt", json!("the waves move")),
        ],
    );
    spec.attachments = vec![attachment(att_id, name, content_type, declared, &url)];
    fake.send_command(&spec).0
}

fn cdn_hits(fake: &FakeDiscord, name: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.path == format!("/cdn/{name}"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn i2v_refuses_bad_images_clearly_and_downloads_good_ones() {
    init_logs();
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("i2v");

    // This bot loads no image-to-video model: it says so without downloading anything.
    let bot = start_bot(&fake, service_config(&dir.0), bot_options(&fake)).await;
    let good = png(64, 40);
    let token = i2v(&fake, "good.png", "image/png", good.len() as u64, good);
    let text = wait_refusal(&fake, &token).await;
    assert!(text.contains("Image-to-video is not available"), "{text}");
    assert_eq!(cdn_hits(&fake, "good.png"), 0);
    stop(bot).await;

    let engine = engine_with(&[Variant::Tiny, Variant::TinyI2v]);
    let bot = start_bot_on(&fake, service_config(&dir.0), bot_options(&fake), engine).await;

    // A text file: refused from its declared type, never downloaded.
    let token = i2v(
        &fake,
        "notes.txt",
        "text/plain",
        12,
        b"hello there\n".to_vec(),
    );
    let text = wait_refusal(&fake, &token).await;
    assert!(
        text.contains("notes.txt") && text.contains("not a PNG, JPEG or WebP"),
        "{text}"
    );
    assert_eq!(cdn_hits(&fake, "notes.txt"), 0);

    // Declared bigger than the cap (64 KiB in tests): refused before downloading.
    let token = i2v(&fake, "huge.png", "image/png", 5 * 1024 * 1024, png(8, 8));
    let text = wait_refusal(&fake, &token).await;
    assert!(
        text.contains("huge.png") && text.contains("5.0 MiB"),
        "{text}"
    );
    assert_eq!(cdn_hits(&fake, "huge.png"), 0);

    // Declared small, but the body is larger: the cap holds while streaming.
    let token = i2v(&fake, "liar.png", "image/png", 1000, vec![0u8; 200 * 1024]);
    let text = wait_refusal(&fake, &token).await;
    assert!(text.contains("liar.png") && text.contains("MiB"), "{text}");
    assert_eq!(cdn_hits(&fake, "liar.png"), 1);

    // Says PNG, is not one.
    let mut corrupt = png(16, 16);
    corrupt.truncate(40);
    let token = i2v(
        &fake,
        "broken.png",
        "image/png",
        corrupt.len() as u64,
        corrupt,
    );
    let text = wait_refusal(&fake, &token).await;
    assert!(
        text.contains("broken.png") && text.contains("could not be read as an image"),
        "{text}"
    );
    assert_eq!(cdn_hits(&fake, "broken.png"), 1);

    // A good image is downloaded once and animated.
    let good = png(64, 40);
    let token = i2v(&fake, "good2.png", "image/png", good.len() as u64, good);
    wait_video(&fake, &token, Duration::from_secs(120)).await;
    assert_eq!(cdn_hits(&fake, "good2.png"), 1);
    stop(bot).await;
}

#[tokio::test]
async fn download_checks_status_host_and_content() {
    let fake = FakeDiscord::start().await;
    let mut policy = bot_options(&fake).download;
    policy.timeout = Duration::from_secs(5);
    let client = reqwest::Client::new();
    let meta = |name: &str, url: String, size: u64| AttachmentMeta {
        filename: name.into(),
        content_type: Some("image/png".into()),
        size,
        url,
    };
    let bytes = png(20, 10);
    let url = fake.serve_cdn("ok.png", "image/png", bytes.clone());
    let img = fetch_image(
        &client,
        &meta("ok.png", url.clone(), bytes.len() as u64),
        &policy,
    )
    .await
    .unwrap();
    assert_eq!((img.width, img.height, img.bytes), (20, 10, bytes));

    let missing = format!("{}/cdn/missing.png", fake.api_base());
    let e = fetch_image(&client, &meta("missing.png", missing, 10), &policy)
        .await
        .unwrap_err();
    assert_eq!(e, DownloadError::Status { status: 404 });

    let elsewhere = url.replace("127.0.0.1", "localhost");
    let e = fetch_image(&client, &meta("ok.png", elsewhere, 10), &policy)
        .await
        .unwrap_err();
    assert!(matches!(e, DownloadError::HostNotAllowed { .. }), "{e:?}");
}

/// With an image-to-video model loaded, `/i2v` makes a video from the downloaded image, and its
/// Re-roll and Remix buttons run again on the same stored image.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn i2v_generates_and_its_buttons_reuse_the_stored_image() {
    init_logs();
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("i2v-gen");
    let engine = engine_with(&[Variant::Tiny, Variant::TinyI2v]);
    let bot = start_bot_on(&fake, service_config(&dir.0), bot_options(&fake), engine).await;

    let image = png(64, 40);
    let url = fake.serve_cdn("cat.png", "image/png", image.clone());
    let att_id = snowflake();
    let mut spec = CommandSpec::new(
        "i2v",
        vec![
            attachment_option("image", att_id),
            option("prompt", json!("the cat blinks")),
            option("seed", json!(11)),
            option("steps", json!(3)),
        ],
    );
    spec.attachments = vec![attachment(
        att_id,
        "cat.png",
        "image/png",
        image.len() as u64,
        &url,
    )];
    let (token, sent) = fake.send_command(&spec);
    let ack = fake
        .wait_for(Duration::from_secs(5), "the deferral", |r| {
            r.is("POST", &format!("/{token}/callback"))
        })
        .await;
    assert!(ack.at - sent < Duration::from_secs(3));

    let done = wait_video(&fake, &token, Duration::from_secs(120)).await;
    assert_eq!(done.method, "PATCH", "the video is in the original message");
    let body = done.json.as_ref().unwrap();
    assert_eq!(body["embeds"][0]["description"], "the cat blinks");
    assert_eq!(embed_field(body, "Variant").as_deref(), Some("tiny-i2v"));
    assert_eq!(
        embed_field(body, "Image fit").as_deref(),
        Some("centre-crop")
    );
    assert_eq!(embed_field(body, "Seed").as_deref(), Some("11"));
    assert_eq!(embed_field(body, "Steps").as_deref(), Some("3"));
    assert_eq!(probe_posted(&dir.0, &done), (4, 48, 32));
    assert_eq!(cdn_hits(&fake, "cat.png"), 1);

    // Re-roll: the same image and settings, a new seed; the CDN is not asked again (its signed
    // URL may have expired by then), the stored image is used.
    let message = fake.original(&token).unwrap();
    let (reroll, _) = fake.click(
        &button_id(&message, "v1:reroll:"),
        &message,
        &Invoker::member(),
    );
    let video = wait_video(&fake, &reroll, Duration::from_secs(120)).await;
    let body = video.json.as_ref().unwrap();
    assert_eq!(body["embeds"][0]["description"], "the cat blinks");
    assert_eq!(embed_field(body, "Variant").as_deref(), Some("tiny-i2v"));
    assert_eq!(embed_field(body, "Steps").as_deref(), Some("3"));
    assert_ne!(embed_field(body, "Seed").as_deref(), Some("11"));
    assert_eq!(probe_posted(&dir.0, &video), (4, 48, 32));

    // Remix: a new prompt on the same image.
    let (remix, _) = fake.click(
        &button_id(&message, "v1:remix:"),
        &message,
        &Invoker::member(),
    );
    let modal = fake
        .wait_for(Duration::from_secs(5), "the modal", |r| {
            r.is("POST", &format!("/{remix}/callback"))
        })
        .await;
    let modal_id = modal.json.as_ref().unwrap()["data"]["custom_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (submitted, _) = fake.submit_modal(
        &modal_id,
        &[("prompt", "the cat yawns"), ("negative", ""), ("seed", "5")],
        &Invoker::member(),
        None,
    );
    let video = wait_video(&fake, &submitted, Duration::from_secs(120)).await;
    let body = video.json.as_ref().unwrap();
    assert_eq!(body["embeds"][0]["description"], "the cat yawns");
    assert_eq!(embed_field(body, "Variant").as_deref(), Some("tiny-i2v"));
    assert_eq!(embed_field(body, "Seed").as_deref(), Some("5"));
    assert_eq!(probe_posted(&dir.0, &video), (4, 48, 32));
    assert_eq!(cdn_hits(&fake, "cat.png"), 1, "one download in all");
    stop(bot).await;
}

/// Sends `/i2v` on `name` (served by the fake CDN) with extra options; returns the token.
fn i2v_with(
    fake: &FakeDiscord,
    name: &str,
    image: Vec<u8>,
    extra: Vec<serde_json::Value>,
) -> String {
    let declared = image.len() as u64;
    let url = fake.serve_cdn(name, "image/png", image);
    let att_id = snowflake();
    let mut options = vec![
        attachment_option("image", att_id),
        option("prompt", json!("the tide rolls in")),
    ];
    options.extend(extra);
    let mut spec = CommandSpec::new("i2v", options);
    spec.attachments = vec![attachment(att_id, name, "image/png", declared, &url)];
    fake.send_command(&spec).0
}

/// `fit:stretch` is what runs and what is shown; it changes the frames (a wide image, so a
/// centre crop and a stretch see different pixels), and the same choice repeats exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn i2v_fit_stretch_is_shown_and_changes_the_output() {
    init_logs();
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("i2v-fit");
    let engine = engine_with(&[Variant::Tiny, Variant::TinyI2v]);
    let bot = start_bot_on(&fake, service_config(&dir.0), bot_options(&fake), engine).await;
    let wide = png(120, 30);
    let run = |name: &str, fit: Option<&str>| {
        let mut extra = vec![option("seed", json!(5)), option("steps", json!(2))];
        if let Some(fit) = fit {
            extra.push(option("fit", json!(fit)));
        }
        i2v_with(&fake, name, wide.clone(), extra)
    };
    let mut mp4s = Vec::new();
    for (name, fit, shown) in [
        ("s1.png", Some("stretch"), "stretch"),
        ("c1.png", None, "centre-crop"),
        ("s2.png", Some("stretch"), "stretch"),
    ] {
        let token = run(name, fit);
        let done = wait_video(&fake, &token, Duration::from_secs(120)).await;
        let body = done.json.as_ref().unwrap();
        assert_eq!(
            embed_field(body, "Image fit").as_deref(),
            Some(shown),
            "{name}"
        );
        assert_eq!(probe_posted(&dir.0, &done), (4, 48, 32));
        let mp4 = done
            .files
            .iter()
            .find(|f| f.filename.ends_with(".mp4"))
            .unwrap();
        mp4s.push(mp4.bytes.clone());
    }
    assert_ne!(mp4s[0], mp4s[1], "stretch and crop gave the same video");
    assert_eq!(mp4s[0], mp4s[2], "the same stretch run twice differs");

    // Re-roll keeps the stretch.
    let token = run("s3.png", Some("stretch"));
    wait_video(&fake, &token, Duration::from_secs(120)).await;
    let message = fake.original(&token).unwrap();
    let (reroll, _) = fake.click(
        &button_id(&message, "v1:reroll:"),
        &message,
        &Invoker::member(),
    );
    let video = wait_video(&fake, &reroll, Duration::from_secs(120)).await;
    let body = video.json.as_ref().unwrap();
    assert_eq!(embed_field(body, "Image fit").as_deref(), Some("stretch"));

    let token = run("bad-fit.png", Some("squash"));
    let text = wait_refusal(&fake, &token).await;
    assert!(text.contains("crop") && text.contains("squash"), "{text}");
    assert_eq!(cdn_hits(&fake, "bad-fit.png"), 0);
    stop(bot).await;
}

/// A member in cooldown hears so at once; the image is never fetched from the CDN.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn i2v_in_cooldown_is_refused_before_the_image_is_fetched() {
    init_logs();
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("i2v-cooldown");
    let mut config = service_config(&dir.0);
    config.defaults.cooldown_s = 600;
    let engine = engine_with(&[Variant::Tiny, Variant::TinyI2v]);
    let bot = start_bot_on(&fake, config, bot_options(&fake), engine).await;

    let first = i2v_with(
        &fake,
        "first.png",
        png(64, 40),
        vec![option("steps", json!(1))],
    );
    wait_video(&fake, &first, Duration::from_secs(120)).await;
    assert_eq!(cdn_hits(&fake, "first.png"), 1);

    let second = i2v_with(&fake, "second.png", png(64, 40), vec![]);
    let text = wait_refusal(&fake, &second).await;
    assert!(text.contains("cooldown") || text.contains("wait"), "{text}");
    assert_eq!(
        cdn_hits(&fake, "second.png"),
        0,
        "fetched despite the cooldown"
    );
    stop(bot).await;
}
