//! `/queue`: what is running and waiting, for admins.

use std::time::SystemTime;

use crate::discord::context::{reply_ephemeral, Context, Error};
use crate::discord::presenter::truncate;

/// What is running and waiting.
#[poise::command(
    slash_command,
    guild_only,
    default_member_permissions = "MANAGE_GUILD",
    required_permissions = "MANAGE_GUILD"
)]
pub async fn queue(ctx: Context<'_>) -> Result<(), Error> {
    ctx.defer_ephemeral().await?;
    let view = ctx
        .data()
        .service
        .queue_view(ctx.guild_id().map(|g| g.get()));
    let mut text = String::new();
    if view.running.is_none() {
        text.push_str("**Running:** nothing\n");
    }
    // The running job, then the other jobs of its sampler batch, if any.
    for r in view.running.iter().chain(&view.also_running) {
        let progress = r
            .progress
            .map(|(s, t)| format!(" — step {s}/{t}"))
            .unwrap_or_default();
        text.push_str(&format!(
            "**Running:** job {} by <@{}> ({}, {}){progress}\n",
            r.id,
            r.user_id,
            r.kind.name(),
            r.variant
        ));
        if let Some(p) = &r.prompt {
            text.push_str(&format!("> {}\n", truncate(p, 120)));
        }
    }
    text.push_str(&format!(
        "**Waiting:** {} of at most {} across the bot\n",
        view.total_waiting, view.cap
    ));
    for e in view.waiting.iter().take(20) {
        let waited = SystemTime::now()
            .duration_since(e.queued_at)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        text.push_str(&format!(
            "{}. job {} by <@{}>, {} steps, waiting {}s: {}\n",
            e.position,
            e.id,
            e.user_id,
            e.steps,
            waited,
            truncate(e.prompt.as_deref().unwrap_or(""), 80)
        ));
    }
    reply_ephemeral(ctx, &truncate(&text, 2000)).await
}
