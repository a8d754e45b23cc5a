//! Cancel, Re-roll and Remix buttons end to end, including clicks on messages from before a
//! restart (the custom ids name stored jobs).

use std::time::Duration;

use super::support::discord_bot::*;
use super::support::fake_discord::payloads::*;
use super::support::fake_discord::FakeDiscord;
use serde_json::{json, Value};

fn t2v(fake: &FakeDiscord, prompt: &str, steps: u64, invoker: Invoker) -> String {
    let mut spec = CommandSpec::new(
        "t2v",
        vec![
            option("prompt", json!(prompt)),
            option("steps", json!(steps)),
        ],
    );
    spec.invoker = invoker;
    fake.send_command(&spec).0
}

/// The ephemeral answer to a click (deferred ephemerally, then edited).
async fn click_answer(fake: &FakeDiscord, token: &str) -> String {
    fake.wait_for(Duration::from_secs(30), "the click's answer", |r| {
        r.method == "PATCH" && r.path.contains(token)
    })
    .await
    .content()
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_while_queued_and_while_running() {
    init_logs();
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("cancel");
    let bot = start_bot(&fake, service_config(&dir.0), bot_options(&fake)).await;

    let running = t2v(&fake, "a long one", 40, Invoker::numbered(1));
    wait_running(&fake, &running, 1).await;
    let queued = t2v(&fake, "waits behind it", 4, Invoker::numbered(2));
    fake.wait_until(Duration::from_secs(20), "the queued view", |f| {
        f.original(&queued)
            .is_some_and(|m| m["content"].as_str().unwrap().contains("position 1"))
    })
    .await;
    let queued_msg = fake.original(&queued).unwrap();

    // Someone else's job: refused, and nothing changes.
    let (t, _) = fake.click(
        &button_id(&queued_msg, "v1:cancel:"),
        &queued_msg,
        &Invoker::numbered(3),
    );
    let answer = click_answer(&fake, &t).await;
    assert!(answer.contains("not yours"), "{answer}");

    // The author cancels the waiting job: it leaves the queue and its message says so.
    let (t, _) = fake.click(
        &button_id(&queued_msg, "v1:cancel:"),
        &queued_msg,
        &Invoker::numbered(2),
    );
    let answer = click_answer(&fake, &t).await;
    assert!(answer.contains("removed from the queue"), "{answer}");
    fake.wait_until(Duration::from_secs(20), "the cancelled view", |f| {
        f.original(&queued)
            .is_some_and(|m| m["content"].as_str().unwrap().contains("Cancelled"))
    })
    .await;

    // An admin cancels the running job: it stops at its next step.
    let running_msg = fake.original(&running).unwrap();
    let running_job = button_id(&running_msg, "v1:cancel:")["v1:cancel:".len()..].to_string();
    let (t, _) = fake.click(
        &button_id(&running_msg, "v1:cancel:"),
        &running_msg,
        &Invoker::admin(),
    );
    let answer = click_answer(&fake, &t).await;
    assert!(answer.contains("stops at its next step"), "{answer}");
    fake.wait_until(Duration::from_secs(60), "the running job to stop", |f| {
        f.original(&running)
            .is_some_and(|m| m["content"].as_str().unwrap().contains("Cancelled"))
    })
    .await;
    let final_msg = fake.original(&running).unwrap();
    // The cancelled message offers Re-roll of that same job, and no Cancel any more.
    assert_eq!(
        button_id(&final_msg, "v1:reroll:"),
        format!("v1:reroll:{running_job}")
    );
    let ids: Vec<&str> = final_msg["components"][0]["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["custom_id"].as_str())
        .collect();
    assert!(
        !ids.iter().any(|id| id.starts_with("v1:cancel:")),
        "{ids:?}"
    );
    assert!(
        videos(&fake, Some(&running)).is_empty(),
        "no video for a cancelled job"
    );
    stop(bot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reroll_and_remix_work_also_after_a_restart() {
    init_logs();
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("reroll");
    let bot = start_bot(&fake, service_config(&dir.0), bot_options(&fake)).await;

    let first = t2v(&fake, "a red fox in snow", 4, Invoker::member());
    let first_video = wait_video(&fake, &first, Duration::from_secs(120)).await;
    let first_seed = embed_field(first_video.json.as_ref().unwrap(), "Seed").unwrap();
    let message = fake.original(&first).unwrap();

    // Re-roll: same prompt and steps, another seed, in a new message.
    let (reroll, _) = fake.click(
        &button_id(&message, "v1:reroll:"),
        &message,
        &Invoker::member(),
    );
    let ack = fake
        .wait_for(Duration::from_secs(5), "the re-roll ack", |r| {
            r.is("POST", &format!("/{reroll}/callback"))
        })
        .await;
    assert_eq!(ack.json.as_ref().unwrap()["type"], 5);
    let video = wait_video(&fake, &reroll, Duration::from_secs(120)).await;
    let body = video.json.as_ref().unwrap();
    assert_eq!(body["embeds"][0]["description"], "a red fox in snow");
    assert_eq!(embed_field(body, "Steps").as_deref(), Some("4"));
    assert_ne!(embed_field(body, "Seed").unwrap(), first_seed);

    // Restart: a new process, same database.
    stop(bot).await;
    let readies = fake.ready_count();
    let bot = start_bot(&fake, service_config(&dir.0), bot_options(&fake)).await;
    fake.wait_until(Duration::from_secs(20), "the second READY", |f| {
        f.ready_count() > readies
    })
    .await;

    // Remix on the pre-restart message: a modal prefilled with the original prompt...
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
    let data = &modal.json.as_ref().unwrap();
    assert_eq!(data["type"], 9, "a modal");
    let modal_id = data["data"]["custom_id"].as_str().unwrap().to_string();
    assert!(modal_id.starts_with("v1:remixed:"));
    let inputs: Vec<&Value> = data["data"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| &row["components"][0])
        .collect();
    assert_eq!(inputs[0]["value"], "a red fox in snow");

    // ...whose submission makes a new video from the new prompt, with the old settings.
    let (submitted, _) = fake.submit_modal(
        &modal_id,
        &[
            ("prompt", "a blue fox in snow"),
            ("negative", ""),
            ("seed", "7"),
        ],
        &Invoker::member(),
        None,
    );
    let video = wait_video(&fake, &submitted, Duration::from_secs(120)).await;
    let body = video.json.as_ref().unwrap();
    assert_eq!(body["embeds"][0]["description"], "a blue fox in snow");
    assert_eq!(embed_field(body, "Seed").as_deref(), Some("7"));
    assert_eq!(embed_field(body, "Steps").as_deref(), Some("4"));

    // Re-roll after the restart too.
    let (reroll2, _) = fake.click(
        &button_id(&message, "v1:reroll:"),
        &message,
        &Invoker::member(),
    );
    let video = wait_video(&fake, &reroll2, Duration::from_secs(120)).await;
    assert_eq!(
        video.json.as_ref().unwrap()["embeds"][0]["description"],
        "a red fox in snow"
    );
    stop(bot).await;
}
