//! What every command and button handler can reach, in a module of its own so that the command
//! files and the bot's start-up ([`super::bot`]) do not import each other.

use super::download::DownloadPolicy;
use crate::core::jobs::VideoShape;
use crate::core::JobService;

pub type Error = anyhow::Error;
pub type Context<'a> = poise::Context<'a, Data, Error>;

/// The adapter's shared state: the core's handle and what the operator configured for Discord.
pub struct Data {
    pub service: JobService,
    /// For input images (not serenity's client: own timeout, no Discord auth header).
    pub downloader: reqwest::Client,
    pub download: DownloadPolicy,
    /// Output size for every job, when not the model's own (see
    /// [`BotOptions::video_shape`](super::BotOptions::video_shape)).
    pub video_shape: Option<VideoShape>,
}

impl Data {
    pub fn new(
        service: JobService,
        download: DownloadPolicy,
        video_shape: Option<VideoShape>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        // The hardened client: https only, every redirect hop checked against the allow-list.
        let downloader =
            super::download::client(&download).context("building the download client")?;
        Ok(Data {
            service,
            downloader,
            download,
            video_shape,
        })
    }
}

/// Replies so only the invoker sees it (after `defer_ephemeral`, or as the first answer).
pub async fn reply_ephemeral(ctx: Context<'_>, text: &str) -> Result<(), Error> {
    ctx.send(
        poise::CreateReply::default()
            .content(text)
            .ephemeral(true)
            .allowed_mentions(serenity::all::CreateAllowedMentions::new()),
    )
    .await?;
    Ok(())
}
