//! `/stats`: jobs done and failed, mean time, queue length, for admins.

use crate::discord::context::{reply_ephemeral, Context, Error};
use crate::discord::presenter::clock;

/// Jobs done, failed, mean time and queue length.
#[poise::command(
    slash_command,
    guild_only,
    default_member_permissions = "MANAGE_GUILD",
    required_permissions = "MANAGE_GUILD"
)]
pub async fn stats(ctx: Context<'_>) -> Result<(), Error> {
    ctx.defer_ephemeral().await?;
    let s = ctx
        .data()
        .service
        .stats(ctx.guild_id().map(|g| g.get()))
        .await?;
    let c = &s.counts;
    let mean = c.mean_run_time.map(clock).unwrap_or_else(|| "—".into());
    let text = format!(
        "**This server:** {} done ({} in the last day), {} failed, {} cancelled, {} waiting, {} running\n\
         **Mean generation time:** {mean}\n\
         **Queue:** {} waiting of at most {}; running: {}\n\
         **Up for:** {}",
        c.done,
        c.done_last_day,
        c.failed,
        c.cancelled,
        c.queued,
        c.running,
        s.total_waiting,
        s.cap,
        s.running.map(|j| j.to_string()).unwrap_or_else(|| "nothing".into()),
        clock(s.uptime),
    );
    reply_ephemeral(ctx, &text).await
}
