//! Building the serenity client: the HTTP client (proxy mode when a non-Discord API base is
//! configured), the gateway connection, and command registration.
//!
//! With `api_base` set, serenity rewrites `https://discord.com` in every REST URL to that base —
//! but only with its rate limiter off, so the two go together — and the gateway URL comes from
//! that server's `GET /api/v10/gateway`. Production leaves it unset.

use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::Value;
use serenity::all::{GuildId, Http, HttpBuilder};

/// The REST client. Serenity's default reqwest client has no timeout; a hung upload would
/// otherwise hold a job's delivery forever.
pub fn build_http(token: &str, api_base: Option<&str>) -> Result<Http> {
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .build()
        .context("building the HTTP client")?;
    let mut builder = HttpBuilder::new(token).client(client);
    if let Some(base) = api_base {
        builder = builder
            .proxy(base.trim_end_matches('/'))
            .ratelimiter_disabled(true);
    }
    Ok(builder.build())
}

/// Turns poise's command list into registration JSON with the choices only known at run time:
/// `variant` offers the loaded models, and `expand` is dropped when no expander is configured.
pub fn registration_json(
    commands: Vec<serenity::all::CreateCommand>,
    variants: &[String],
    expand_available: bool,
) -> Result<Value> {
    let mut json = serde_json::to_value(commands).context("serializing commands")?;
    if let Some(cmds) = json.as_array_mut() {
        for cmd in cmds {
            if let Some(options) = cmd.get_mut("options").and_then(Value::as_array_mut) {
                patch_options(options, variants, expand_available);
            }
        }
    }
    Ok(json)
}

fn patch_options(options: &mut Vec<Value>, variants: &[String], expand_available: bool) {
    if !expand_available {
        options.retain(|o| o.get("name").and_then(Value::as_str) != Some("expand"));
    }
    for option in options.iter_mut() {
        if option.get("name").and_then(Value::as_str) == Some("variant") {
            let choices: Vec<Value> = variants
                .iter()
                .map(|v| serde_json::json!({"name": v, "value": v}))
                .collect();
            option["choices"] = Value::Array(choices);
        }
        if option.get("name").and_then(Value::as_str) == Some("fit") {
            option["choices"] = serde_json::json!([
                {"name": "crop", "value": "crop"},
                {"name": "stretch", "value": "stretch"},
            ]);
        }
        // Subcommands carry their own options.
        if let Some(inner) = option.get_mut("options").and_then(Value::as_array_mut) {
            patch_options(inner, variants, expand_available);
        }
    }
}

/// Registers the commands globally, or in one guild for development (instant, and no
/// duplicates with the global set).
pub async fn register(http: &Http, json: &Value, dev_guild: Option<u64>) -> Result<usize> {
    let registered = match dev_guild {
        Some(guild) => http
            .create_guild_commands(GuildId::new(guild), json)
            .await
            .with_context(|| format!("registering commands in guild {guild}"))?,
        None => http
            .create_global_commands(json)
            .await
            .context("registering global commands")?,
    };
    Ok(registered.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serenity::all::{CommandOptionType, CreateCommand, CreateCommandOption};

    #[test]
    fn variant_choices_and_expand_follow_the_runtime() {
        let cmd = CreateCommand::new("t2v")
            .description("d")
            .add_option(CreateCommandOption::new(
                CommandOptionType::String,
                "prompt",
                "p",
            ))
            .add_option(CreateCommandOption::new(
                CommandOptionType::String,
                "variant",
                "v",
            ))
            .add_option(CreateCommandOption::new(
                CommandOptionType::Boolean,
                "expand",
                "e",
            ));
        let json =
            registration_json(vec![cmd.clone()], &["tiny".into(), "vc2".into()], false).unwrap();
        let opts = json[0]["options"].as_array().unwrap();
        assert_eq!(opts.len(), 2);
        assert_eq!(opts[1]["choices"][1]["value"], "vc2");
        let json = registration_json(vec![cmd], &["tiny".into()], true).unwrap();
        assert_eq!(json[0]["options"].as_array().unwrap().len(), 3);
    }
}
