//! The fake Discord's payloads are what serenity expects: every builder's output deserializes
//! with serenity's own types (the fake also checks this on every send).

use super::support::fake_discord::payloads::*;
use serde_json::json;

#[test]
fn interactions_deserialize_in_serenity() {
    let mut spec = CommandSpec::new(
        "t2v",
        vec![
            option("prompt", json!("a cat")),
            option("steps", json!(4)),
            option("cfg", json!(7.5)),
            option("expand", json!(false)),
        ],
    );
    spec.attachments = vec![attachment(
        9,
        "in.png",
        "image/png",
        10,
        "http://127.0.0.1:1/cdn/in.png",
    )];
    spec.options.push(attachment_option("image", 9));
    let (_, _, cmd) = command_interaction(&spec);
    validate_interaction(&cmd);
    let parsed: serenity::all::Interaction = serde_json::from_value(cmd).unwrap();
    let serenity::all::Interaction::Command(ci) = parsed else {
        panic!("not a command")
    };
    assert_eq!(ci.data.name, "t2v");
    assert_eq!(ci.attachment_size_limit as u64, DEFAULT_ATTACHMENT_LIMIT);
    assert_eq!(ci.user.id.get(), MEMBER_ID);
    assert!(ci.member.as_ref().unwrap().permissions.is_some());
    assert_eq!(ci.data.resolved.attachments.len(), 1);

    let sub = CommandSpec::subcommand(
        "config",
        "set",
        vec![
            option("key", json!("max_steps")),
            option("value", json!("20")),
        ],
    );
    validate_interaction(&command_interaction(&sub).2);

    let msg = message(
        snowflake(),
        CHANNEL_ID,
        bot_user(),
        &json!({"content": "hi", "components": [{"type": 1, "components": [{"type": 2, "style": 1, "label": "Re-roll", "custom_id": "v1:reroll:1"}]}]}),
        vec![],
        Some(snowflake()),
    );
    validate_message(&msg);
    let (_, _, click) = component_interaction(
        "v1:reroll:1",
        &msg,
        &Invoker::member(),
        DEFAULT_ATTACHMENT_LIMIT,
    );
    validate_interaction(&click);
    let (_, _, modal) = modal_submit(
        "v1:remixed:1",
        &[("prompt", "a dog")],
        &Invoker::admin(),
        Some(&msg),
        DEFAULT_ATTACHMENT_LIMIT,
    );
    validate_interaction(&modal);
}

#[test]
fn gateway_frames_deserialize_in_serenity() {
    validate_gateway(&hello(41250));
    validate_gateway(&ready(1, "sess", "ws://127.0.0.1:1/ws"));
    validate_gateway(&resumed(2));
    validate_gateway(&json!({"op": 11, "d": null, "s": null, "t": null}));
}

#[test]
fn snowflakes_carry_their_time() {
    let ms = now_ms() - 15 * 60 * 1000;
    let id = snowflake_at(ms);
    assert_eq!((id >> 22) + 1_420_070_400_000, ms);
}
