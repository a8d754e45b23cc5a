//! Admin controls and the scheduler's limits as members meet them through Discord: admin
//! commands refused at run time to a member without Manage Server (whatever the server's
//! command overrides show), an admin's `/config set` applying to the next `/t2v`, and the
//! queue-full and cooldown refusals told ephemerally, naming the limit.

use std::time::Duration;

use super::support::discord_bot::*;
use super::support::fake_discord::payloads::*;
use super::support::fake_discord::{FakeDiscord, Recorded};
use serde_json::{json, Value};

fn t2v(fake: &FakeDiscord, prompt: &str, steps: Option<u64>, invoker: Invoker) -> String {
    let mut options = vec![option("prompt", json!(prompt))];
    if let Some(s) = steps {
        options.push(option("steps", json!(s)));
    }
    let mut spec = CommandSpec::new("t2v", options);
    spec.invoker = invoker;
    fake.send_command(&spec).0
}

fn admin_command(fake: &FakeDiscord, mut spec: CommandSpec, invoker: Invoker) -> String {
    spec.invoker = invoker;
    fake.send_command(&spec).0
}

fn config_set(fake: &FakeDiscord, key: &str, value: &str, invoker: Invoker) -> String {
    let spec = CommandSpec::subcommand(
        "config",
        "set",
        vec![option("key", json!(key)), option("value", json!(value))],
    );
    admin_command(fake, spec, invoker)
}

/// The first request for `token` whose body says something (an answer, a refusal).
async fn answer(fake: &FakeDiscord, token: &str) -> Recorded {
    fake.wait_for(Duration::from_secs(30), "an answer", |r| {
        r.path.contains(token) && r.json.as_ref().is_some_and(has_text)
    })
    .await
}

fn has_text(j: &Value) -> bool {
    let content = j.get("content").or_else(|| j["data"].get("content"));
    content
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty())
}

fn text_of(r: &Recorded) -> String {
    let j = r.json.as_ref().unwrap();
    j.get("content")
        .or_else(|| j["data"].get("content"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Ephemeral: flag 64 on the message, or on the callback's data.
fn is_ephemeral(r: &Recorded) -> bool {
    let j = r.json.as_ref().unwrap();
    j["flags"] == 64 || j["data"]["flags"] == 64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_commands_are_refused_to_members_at_run_time() {
    init_logs();
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("admin-perms");
    let bot = start_bot(&fake, service_config(&dir.0), bot_options(&fake)).await;

    let attempts = [
        CommandSpec::subcommand(
            "config",
            "set",
            vec![
                option("key", json!("max_steps")),
                option("value", json!("7")),
            ],
        ),
        CommandSpec::subcommand("config", "show", vec![]),
        CommandSpec::subcommand("config", "reset", vec![option("key", json!("max_steps"))]),
        CommandSpec::new("queue", vec![]),
        CommandSpec::new("stats", vec![]),
        CommandSpec::new("cancel", vec![option("job", json!(1))]),
    ];
    for spec in attempts {
        let what = format!(
            "/{} {}",
            spec.name,
            spec.options
                .first()
                .map_or("", |o| o["name"].as_str().unwrap_or(""))
        );
        let token = admin_command(&fake, spec, Invoker::member());
        let r = answer(&fake, &token).await;
        let text = text_of(&r);
        assert!(text.contains("for server admins"), "{what}: {text}");
        assert!(is_ephemeral(&r), "{what}: refused privately");
    }
    // Nothing changed: the setting is still the bot's default, and no audit line was written.
    let settings = bot.service.settings(Some(GUILD_ID)).await.unwrap();
    assert_eq!(settings.max_steps, 50);
    assert!(bot
        .service
        .audit_log(GUILD_ID, 10)
        .await
        .unwrap()
        .is_empty());

    // The same command from an admin goes through.
    let token = config_set(&fake, "max_steps", "7", Invoker::admin());
    let text = text_of(&answer(&fake, &token).await);
    assert!(text.contains("max_steps") && text.contains('7'), "{text}");
    stop(bot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admins_setting_applies_to_the_next_t2v() {
    init_logs();
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("admin-set");
    let bot = start_bot(&fake, service_config(&dir.0), bot_options(&fake)).await;

    let token = config_set(&fake, "max_steps", "10", Invoker::admin());
    let text = text_of(&answer(&fake, &token).await);
    assert!(text.contains("`max_steps`: `50` → `10`"), "{text}");
    let token = config_set(&fake, "default_steps", "3", Invoker::admin());
    let text = text_of(&answer(&fake, &token).await);
    assert!(text.contains("`default_steps`: `4` → `3`"), "{text}");

    // Above the new maximum: refused, naming it.
    let token = t2v(&fake, "too many steps", Some(20), Invoker::member());
    let text = wait_refusal(&fake, &token).await;
    assert!(text.contains("between 1 and 10"), "{text}");

    // No steps given: the new default.
    let token = t2v(&fake, "a quiet lake", None, Invoker::member());
    let video = wait_video(&fake, &token, Duration::from_secs(120)).await;
    assert_eq!(
        embed_field(video.json.as_ref().unwrap(), "Steps").as_deref(),
        Some("3")
    );

    // The change is in /config show with who made it.
    let token = admin_command(
        &fake,
        CommandSpec::subcommand("config", "show", vec![]),
        Invoker::admin(),
    );
    let text = text_of(&answer(&fake, &token).await);
    assert!(text.contains("`max_steps` = `10`"), "{text}");
    assert!(text.contains("`default_steps`: `4` → `3`"), "{text}");
    stop(bot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_full_and_cooldown_are_refused_naming_the_limit() {
    init_logs();
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("limits");
    let mut config = service_config(&dir.0);
    config.global_cap = 1;
    let bot = start_bot(&fake, config, bot_options(&fake)).await;

    // One running, one waiting: the queue (cap 1) is full for a third member.
    let running = t2v(&fake, "a long one", Some(40), Invoker::numbered(1));
    wait_running(&fake, &running, 1).await;
    let waiting = t2v(&fake, "waits", Some(2), Invoker::numbered(2));
    fake.wait_until(Duration::from_secs(20), "the queued view", |f| {
        f.original(&waiting)
            .is_some_and(|m| m["content"].as_str().unwrap().contains("position 1"))
    })
    .await;
    let token = t2v(&fake, "no room", Some(2), Invoker::numbered(3));
    let text = wait_refusal(&fake, &token).await;
    assert!(
        text.contains("queue is full") && text.contains("1 videos waiting"),
        "{text}"
    );

    // A cooldown set by an admin: a member's second request within it is refused, saying how
    // long to wait and what the cooldown is.
    let token = config_set(&fake, "cooldown_s", "600", Invoker::admin());
    let text = text_of(&answer(&fake, &token).await);
    assert!(text.contains("cooldown_s"), "{text}");
    let id = bot
        .service
        .queue_view(Some(GUILD_ID))
        .running
        .map(|j| j.id)
        .expect("a running job");
    let token = admin_command(
        &fake,
        CommandSpec::new("cancel", vec![option("job", json!(id.0))]),
        Invoker::admin(),
    );
    answer(&fake, &token).await;
    fake.wait_until(Duration::from_secs(60), "the queue to empty", |f| {
        videos(f, Some(&waiting)).len() == 1
    })
    .await;
    let first = t2v(&fake, "first of two", Some(2), Invoker::numbered(4));
    wait_video(&fake, &first, Duration::from_secs(120)).await;
    let token = t2v(&fake, "second of two", Some(2), Invoker::numbered(4));
    let text = wait_refusal(&fake, &token).await;
    assert!(
        text.contains("Please wait") && text.contains("cooldown is 10m"),
        "{text}"
    );
    stop(bot).await;
}
