//! Prompt expansion end to end: the real bot against the loopback fake Discord, with the tiny
//! model and the real `LlmExpander` talking to the loopback fake OpenAI-compatible server.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::support::discord_bot::*;
use super::support::fake_discord::payloads::*;
use super::support::fake_discord::{FakeDiscord, Recorded};
use super::support::fake_llm::{FakeLlm, Reply};
use floor33::app::App;
use floor33::core::jobs::{JobId, JobRecord};
use floor33::core::{PromptExpander, ServiceConfig};
use floor33::llm::{ExpanderConfig, LlmExpander};
use floor33::models::tokenizer::ClipTokenizer;
use serde_json::{json, Value};

const EXPANDED: &str = "A ginger cat riding a turquoise wave at sunset";

/// The expander `floor33 serve` builds, aimed at the fake LLM. The cache is off so that every
/// LLM call shows up in the fake's count (a Re-roll must not make one of its own).
fn expander(llm: &FakeLlm, timeout: Duration) -> Arc<dyn PromptExpander> {
    let mut cfg = ExpanderConfig::new(&llm.base_url, "fake-model");
    cfg.timeout = timeout;
    cfg.cache_capacity = 0;
    let tokenizer = Arc::new(ClipTokenizer::new().unwrap());
    Arc::new(LlmExpander::new(cfg, tokenizer).unwrap())
}

async fn start_with_expander(
    fake: &FakeDiscord,
    config: ServiceConfig,
    expander: Arc<dyn PromptExpander>,
) -> App {
    let bot = floor33::app::start(bot_options(fake), config, tiny_engine(), Some(expander))
        .await
        .expect("bot starts");
    fake.wait_ready(Duration::from_secs(20)).await;
    bot
}

fn t2v(fake: &FakeDiscord, options: Vec<Value>) -> (String, std::time::Instant) {
    fake.send_command(&CommandSpec::new("t2v", options))
}

/// The stored job a delivered message belongs to (its Re-roll button names it).
async fn stored_job(bot: &App, delivered: &Recorded) -> JobRecord {
    let id = button_id(delivered.json.as_ref().unwrap(), "v1:reroll:")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    bot.service
        .get(JobId(id))
        .await
        .unwrap()
        .expect("job stored")
}

/// The decoded frames of a delivered video.
fn frames(dir: &Path, name: &str, delivered: &Recorded) -> Vec<image::RgbImage> {
    let mp4 = delivered
        .files
        .iter()
        .find(|f| f.filename.ends_with(".mp4"))
        .unwrap();
    let path = dir.join(name);
    std::fs::write(&path, &mp4.bytes).unwrap();
    floor33::video::decode_mp4(&path).unwrap()
}

fn progress_texts(fake: &FakeDiscord, token: &str) -> Vec<String> {
    fake.requests_for(token)
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.content().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t2v_expand_shows_both_prompts_and_the_engine_runs_on_the_expansion() {
    init_logs();
    let fake = FakeDiscord::start().await;
    // Chatty, quoted and late, as real models are: the bot cleans it, and the delay keeps
    // the "expanding" state on screen long enough to be seen between throttled edits.
    let llm = FakeLlm::start(Reply::Delayed(
        Duration::from_millis(900),
        Box::new(Reply::Content(format!(
            "Sure! Here is your prompt:\n\n\"{EXPANDED}\""
        ))),
    ))
    .await;
    let dir = Scratch::new("expand-happy");
    let bot = start_with_expander(
        &fake,
        service_config(&dir.0),
        expander(&llm, Duration::from_secs(10)),
    )
    .await;

    // With an expander configured, both generating commands offer `expand`.
    for name in ["t2v", "i2v"] {
        let cmd = fake
            .commands()
            .into_iter()
            .find(|c| c["name"] == name)
            .unwrap();
        let expand = cmd["options"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "expand")
            .unwrap_or_else(|| panic!("/{name} offers expand"))
            .clone();
        assert_eq!(expand["type"], 5, "a boolean");
        assert_ne!(expand["required"], true);
    }

    let (token, sent) = t2v(
        &fake,
        vec![
            option("prompt", json!("a cat surfing")),
            option("seed", json!(42)),
            option("steps", json!(4)),
            option("expand", json!(true)),
        ],
    );
    let ack = fake
        .wait_for(Duration::from_secs(5), "the deferral", |r| {
            r.is("POST", &format!("/{token}/callback"))
        })
        .await;
    assert!(ack.at - sent < Duration::from_secs(3), "acked in time");
    let done = wait_video(&fake, &token, Duration::from_secs(120)).await;

    // The LLM was asked once, after the acknowledgement, with the member's words.
    let calls = llm.requests();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].at > ack.at, "expansion runs after the ack");
    let messages = calls[0].body["messages"].as_array().unwrap();
    assert_eq!(messages.last().unwrap()["content"], "a cat surfing");

    let texts = progress_texts(&fake, &token);
    assert!(
        texts.iter().any(|t| t.contains("Expanding the prompt")),
        "{texts:#?}"
    );
    let body = done.json.as_ref().unwrap();
    assert!(done.content().contains("Done"), "{}", done.content());
    assert!(
        !done.content().contains('\n'),
        "no fallback note: {}",
        done.content()
    );
    assert_eq!(body["embeds"][0]["description"], "a cat surfing");
    assert_eq!(
        embed_field(body, "Expanded prompt").as_deref(),
        Some(EXPANDED)
    );

    let job = stored_job(&bot, &done).await;
    assert_eq!(job.spec.prompt, "a cat surfing");
    assert_eq!(job.spec.expanded_prompt.as_deref(), Some(EXPANDED));

    // What the engine saw: the tiny model is deterministic, so the same seed and settings
    // on the expanded text written out by hand give the same frames, and on the original
    // text different ones. Neither of these asks for expansion, so no LLM call.
    let plain = |prompt: &str| {
        vec![
            option("prompt", json!(prompt)),
            option("seed", json!(42)),
            option("steps", json!(4)),
            option("expand", json!(false)),
        ]
    };
    let (same_token, _) = t2v(&fake, plain(EXPANDED));
    let same = wait_video(&fake, &same_token, Duration::from_secs(120)).await;
    let (orig_token, _) = t2v(&fake, plain("a cat surfing"));
    let orig = wait_video(&fake, &orig_token, Duration::from_secs(120)).await;
    let expanded_frames = frames(&dir.0, "expanded.mp4", &done);
    assert_eq!(expanded_frames.len(), 4);
    assert!(
        expanded_frames == frames(&dir.0, "same.mp4", &same),
        "the expanded job ran on the expanded prompt"
    );
    assert!(
        expanded_frames != frames(&dir.0, "orig.mp4", &orig),
        "not on the original one"
    );
    assert_eq!(llm.hits(), 1, "expand:false makes no LLM call");
    assert_eq!(
        embed_field(orig.json.as_ref().unwrap(), "Expanded prompt"),
        None,
        "nothing expanded, nothing shown"
    );
    stop(bot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_llm_falls_back_to_the_original_prompt_with_a_one_line_notice() {
    init_logs();
    let fake = FakeDiscord::start().await;
    let llm = FakeLlm::start(Reply::Status(500, r#"{"error":"model crashed"}"#.into())).await;
    let dir = Scratch::new("expand-fallback");
    // This guild expands by default: the member does not pass `expand` at all.
    let mut config = service_config(&dir.0);
    config.defaults.expand_by_default = true;
    let bot = start_with_expander(&fake, config, expander(&llm, Duration::from_secs(1))).await;

    let cases = [
        (
            "a lighthouse in a storm",
            "Prompt expansion got an error from the language model; your prompt was used as written.",
        ),
        (
            "a paper boat on a river",
            "Prompt expansion timed out; your prompt was used as written.",
        ),
    ];
    for (i, (prompt, notice)) in cases.into_iter().enumerate() {
        if i == 1 {
            // Slower than the expander's 1 s limit.
            llm.set_reply(Reply::Delayed(
                Duration::from_secs(5),
                Box::new(Reply::Content(EXPANDED.into())),
            ));
        }
        let (token, _) = t2v(
            &fake,
            vec![option("prompt", json!(prompt)), option("steps", json!(4))],
        );
        let done = wait_video(&fake, &token, Duration::from_secs(120)).await;
        assert_eq!(llm.hits(), i + 1, "the guild default asked for expansion");

        // Delivered all the same, on the member's words, with one line saying why.
        let body = done.json.as_ref().unwrap();
        assert_eq!(body["embeds"][0]["description"], prompt);
        assert_eq!(embed_field(body, "Expanded prompt"), None);
        let content = done.content();
        let lines: Vec<&str> = content.lines().collect();
        assert_eq!(lines.len(), 2, "{content}");
        assert!(lines[0].contains("Done"), "{content}");
        assert_eq!(lines[1], format!("-# {notice}"));
        let job = stored_job(&bot, &done).await;
        assert_eq!(job.spec.expanded_prompt, None);
        assert_eq!(job.spec.effective_prompt(), prompt);
    }
    stop(bot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reroll_keeps_the_expansion_without_the_llm_and_remix_starts_from_the_original() {
    init_logs();
    let fake = FakeDiscord::start().await;
    let fox = "A red fox leaping through deep snow at dawn";
    let llm = FakeLlm::start(Reply::Content(fox.into())).await;
    let dir = Scratch::new("expand-buttons");
    let bot = start_with_expander(
        &fake,
        service_config(&dir.0),
        expander(&llm, Duration::from_secs(10)),
    )
    .await;

    let (first, _) = t2v(
        &fake,
        vec![
            option("prompt", json!("a fox")),
            option("steps", json!(4)),
            option("expand", json!(true)),
        ],
    );
    let first_video = wait_video(&fake, &first, Duration::from_secs(120)).await;
    assert_eq!(llm.hits(), 1);
    let first_seed = embed_field(first_video.json.as_ref().unwrap(), "Seed").unwrap();
    let message = fake.original(&first).unwrap();

    // Re-roll: the stored expansion again, a new seed, and no second LLM call.
    let (reroll, _) = fake.click(
        &button_id(&message, "v1:reroll:"),
        &message,
        &Invoker::member(),
    );
    let video = wait_video(&fake, &reroll, Duration::from_secs(120)).await;
    let body = video.json.as_ref().unwrap();
    assert_eq!(body["embeds"][0]["description"], "a fox");
    assert_eq!(embed_field(body, "Expanded prompt").as_deref(), Some(fox));
    assert_ne!(embed_field(body, "Seed").unwrap(), first_seed);
    assert_eq!(llm.hits(), 1, "a Re-roll does not ask the LLM again");
    let texts = progress_texts(&fake, &reroll);
    assert!(!texts.iter().any(|t| t.contains("Expanding")), "{texts:#?}");
    assert!(!video.content().contains('\n'), "{}", video.content());
    let job = stored_job(&bot, &video).await;
    assert_eq!(job.spec.expanded_prompt.as_deref(), Some(fox));

    // Remix: the modal holds what the member wrote, not the expansion...
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
    let data = modal.json.as_ref().unwrap();
    assert_eq!(data["type"], 9, "a modal");
    assert_eq!(
        data["data"]["components"][0]["components"][0]["value"],
        "a fox"
    );
    let modal_id = data["data"]["custom_id"].as_str().unwrap().to_string();

    // ...and the edited prompt is expanded afresh, since the original job asked for it.
    let rain = "A fox trotting through heavy rain in a pine forest";
    llm.set_reply(Reply::Content(rain.into()));
    let (submitted, _) = fake.submit_modal(
        &modal_id,
        &[
            ("prompt", "a fox in the rain"),
            ("negative", ""),
            ("seed", ""),
        ],
        &Invoker::member(),
        None,
    );
    let video = wait_video(&fake, &submitted, Duration::from_secs(120)).await;
    assert_eq!(llm.hits(), 2);
    let sent = &llm.requests()[1].body["messages"];
    assert_eq!(
        sent.as_array().unwrap().last().unwrap()["content"],
        "a fox in the rain"
    );
    let body = video.json.as_ref().unwrap();
    assert_eq!(body["embeds"][0]["description"], "a fox in the rain");
    assert_eq!(embed_field(body, "Expanded prompt").as_deref(), Some(rain));
    stop(bot).await;
}
