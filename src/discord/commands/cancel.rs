//! `/cancel <job>`: stop any job of this server, for admins (members use the Cancel button on
//! their own jobs).

use crate::core::jobs::JobId;
use crate::core::{CancelOutcome, Canceller};
use crate::discord::context::{reply_ephemeral, Context, Error};

/// Cancel a waiting or running job.
#[poise::command(
    slash_command,
    guild_only,
    default_member_permissions = "MANAGE_GUILD",
    required_permissions = "MANAGE_GUILD"
)]
pub async fn cancel(
    ctx: Context<'_>,
    #[description = "Job number (shown under each video)"]
    #[min = 1]
    job: i64,
) -> Result<(), Error> {
    ctx.defer_ephemeral().await?;
    let by = Canceller {
        user_id: ctx.author().id.get(),
        guild_id: ctx.guild_id().map(|g| g.get()),
        is_admin: true,
    };
    let text = cancel_text(ctx.data().service.cancel(JobId(job), by).await, JobId(job));
    reply_ephemeral(ctx, &text).await
}

/// The member-facing answer to a cancel request.
pub fn cancel_text(result: Result<CancelOutcome, crate::core::CancelError>, job: JobId) -> String {
    match result {
        Ok(CancelOutcome::Removed) => format!("Job {job} was removed from the queue."),
        Ok(CancelOutcome::Stopping) => format!("Job {job} stops at its next step."),
        Err(e) => crate::discord::presenter::refusal(&format!("{}.", capital(&e.to_string()))),
    }
}

fn capital(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
