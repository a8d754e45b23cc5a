//! `/config show|set|reset`: a server's settings, for its admins. Hidden from members by
//! `default_member_permissions` and checked again at run time (`required_permissions`), since
//! a server's own permission overrides can show the command to anyone.

use std::time::UNIX_EPOCH;

use super::Invocation;
use crate::discord::context::{reply_ephemeral, Context, Error};
use crate::discord::presenter::truncate;

/// Show or change this server's video settings.
#[poise::command(
    slash_command,
    guild_only,
    subcommands("show", "set", "reset"),
    subcommand_required,
    default_member_permissions = "MANAGE_GUILD",
    required_permissions = "MANAGE_GUILD"
)]
pub async fn config(_ctx: Context<'_>) -> Result<(), Error> {
    Ok(())
}

/// Every setting with its value, and the recent changes.
#[poise::command(slash_command, guild_only, required_permissions = "MANAGE_GUILD")]
pub async fn show(ctx: Context<'_>) -> Result<(), Error> {
    ctx.defer_ephemeral().await?;
    let Some(guild) = ctx.guild_id() else {
        return Ok(());
    };
    let service = &ctx.data().service;
    let mut text = String::from("**Settings**\n");
    for s in service.settings_view(guild.get()).await? {
        let marker = if s.overridden {
            format!(" (default `{}`)", s.default)
        } else {
            String::new()
        };
        text.push_str(&format!(
            "`{}` = `{}`{marker} — {}\n",
            s.key.name(),
            s.value,
            s.description
        ));
    }
    let log = service.audit_log(guild.get(), 5).await?;
    if !log.is_empty() {
        text.push_str("\n**Recent changes**\n");
        for e in log {
            let secs =
                e.at.duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
            text.push_str(&format!(
                "<t:{secs}:R> <@{}> {} `{}`: `{}` → `{}`\n",
                e.user_id, e.action, e.key, e.old, e.new
            ));
        }
    }
    reply_ephemeral(ctx, &truncate(&text, 2000)).await
}

/// Change one setting.
#[poise::command(slash_command, guild_only, required_permissions = "MANAGE_GUILD")]
pub async fn set(
    ctx: Context<'_>,
    #[description = "Setting to change"] key: String,
    #[description = "New value"]
    #[max_length = 1000]
    value: String,
) -> Result<(), Error> {
    ctx.defer_ephemeral().await?;
    let Some(guild) = ctx.guild_id() else {
        return Ok(());
    };
    let result = ctx
        .data()
        .service
        .set_setting(guild.get(), ctx.author().id.get(), &key, &value)
        .await;
    answer(ctx, result).await
}

/// Return one setting to the bot's default.
#[poise::command(slash_command, guild_only, required_permissions = "MANAGE_GUILD")]
pub async fn reset(
    ctx: Context<'_>,
    #[description = "Setting to reset"] key: String,
) -> Result<(), Error> {
    ctx.defer_ephemeral().await?;
    let Some(guild) = ctx.guild_id() else {
        return Ok(());
    };
    let result = ctx
        .data()
        .service
        .reset_setting(guild.get(), ctx.author().id.get(), &key)
        .await;
    answer(ctx, result).await
}

async fn answer(
    ctx: Context<'_>,
    result: Result<crate::core::SettingChange, crate::core::settings::SettingError>,
) -> Result<(), Error> {
    match result {
        Ok(change) => {
            reply_ephemeral(
                ctx,
                &format!(
                    "`{}`: `{}` → `{}`",
                    change.key.name(),
                    change.old,
                    change.new
                ),
            )
            .await
        }
        Err(e) => {
            if let Context::Application(a) = ctx {
                super::log_refusal(&Invocation::from_command(a.interaction), &e.to_string());
            }
            reply_ephemeral(ctx, &crate::discord::presenter::refusal(&e.to_string())).await
        }
    }
}
