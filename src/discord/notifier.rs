//! The core's [`Notifier`] for Discord: job updates become throttled edits of the job's message,
//! and the finished video is attached to it, sized to fit.
//!
//! Where the message lives is decided per call from stored facts, so it works the same after a
//! restart: while the interaction token is young (its snowflake says how young) we edit the
//! interaction's original response; from ~14 minutes on, or as soon as Discord says the token
//! is dead, we continue in the channel with the bot token, mentioning the member, and hand that
//! message's id back to the core (the [`Shown`] result), which keeps it in the store. Every
//! send goes through one path, [`send_with_fallback`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serenity::all::{
    ButtonStyle as SerenityButtonStyle, ChannelId, CreateActionRow, CreateAllowedMentions,
    CreateAttachment, CreateButton, CreateEmbed, CreateEmbedFooter, CreateMessage,
    EditInteractionResponse, EditMessage, Http, MessageId, UserId,
};
use serenity::builder::Builder;

use super::deliver::{self, FittedVideo};
use super::presenter::{self, ButtonStyle, Look, View, PREVIEW_NAME};
use super::throttle::Throttled;
use super::token::{self, Failure};
use crate::core::jobs::{JobId, JobRecord, Origin};
use crate::core::{DeliveredVideo, DeliveryError, JobUpdate, Notifier, Shown};
use crate::ops::{DiscordFailure, Metrics};

/// Upload limit when the interaction's own is unknown (jobs stored before it was recorded):
/// Discord's default.
pub const DEFAULT_ATTACHMENT_LIMIT: u64 = 10 * 1024 * 1024;

/// How many finished jobs we remember, to drop updates that arrive after the final message.
const FINISHED_MEMORY: usize = 4096;

#[derive(Debug, Clone)]
pub struct NotifierOptions {
    /// Least time between two edits of one message.
    pub edit_gap: Duration,
    /// Most re-encodes after Discord refused an upload as too large.
    pub max_refusals: usize,
    /// Where failed API calls and their retries are counted.
    pub metrics: Metrics,
}

impl Default for NotifierOptions {
    fn default() -> Self {
        NotifierOptions {
            edit_gap: Duration::from_millis(1500),
            max_refusals: 4,
            metrics: Metrics::new(),
        }
    }
}

/// One pending progress edit (a `Running` update carries its preview image, if one came).
#[derive(Clone)]
struct Pending {
    job: JobRecord,
    update: JobUpdate,
}

/// Where a job's message is, as far as this process knows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    /// The interaction's original response, through its token.
    Interaction,
    /// A channel message sent with the bot token (`None`: not sent yet).
    Channel(Option<u64>),
}

/// Per-job state: the throttled progress edits and facts learned while sending them.
struct JobChannel {
    throttle: Throttled<Pending>,
    shared: Arc<Mutex<Shared>>,
}

#[derive(Default)]
struct Shared {
    /// Learned: the token is dead, or the message moved to the channel.
    channel_message: Option<Option<u64>>,
    /// A preview image is attached to the message.
    has_preview: bool,
    /// Shown under the status from now on (e.g. expansion skipped).
    note: Option<String>,
    /// A channel message posted by a progress edit that the core has not heard of yet.
    unreported_message: Option<u64>,
}

pub struct DiscordNotifier {
    http: Arc<Http>,
    options: NotifierOptions,
    jobs: Mutex<HashMap<JobId, JobChannel>>,
    finished: Mutex<(HashSet<JobId>, VecDeque<JobId>)>,
}

impl DiscordNotifier {
    pub fn new(http: Arc<Http>, options: NotifierOptions) -> Self {
        DiscordNotifier {
            http,
            options,
            jobs: Mutex::default(),
            finished: Mutex::default(),
        }
    }

    fn is_finished(&self, id: JobId) -> bool {
        self.finished.lock().unwrap().0.contains(&id)
    }

    fn mark_finished(&self, id: JobId) {
        let mut f = self.finished.lock().unwrap();
        if f.0.insert(id) {
            f.1.push_back(id);
            if f.1.len() > FINISHED_MEMORY {
                if let Some(old) = f.1.pop_front() {
                    f.0.remove(&old);
                }
            }
        }
    }

    fn push(&self, job: &JobRecord, update: JobUpdate) {
        let mut jobs = self.jobs.lock().unwrap();
        let entry = jobs.entry(job.id).or_insert_with(|| self.open(job.id));
        entry.throttle.update(Pending {
            job: job.clone(),
            update,
        });
    }

    fn open(&self, id: JobId) -> JobChannel {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let http = self.http.clone();
        let state = shared.clone();
        let metrics = self.options.metrics.clone();
        let throttle = Throttled::spawn(self.options.edit_gap, move |p: Pending| {
            let (http, state, metrics) = (http.clone(), state.clone(), metrics.clone());
            async move {
                if let Err(e) = send_progress(&http, &metrics, &state, p).await {
                    tracing::debug!(job = %id, error = %e, "progress edit failed");
                }
            }
        });
        JobChannel { throttle, shared }
    }

    /// Stops the job's progress edits; returns what they learned.
    async fn close(&self, id: JobId) -> Shared {
        let channel = self.jobs.lock().unwrap().remove(&id);
        match channel {
            Some(ch) => {
                ch.throttle.finish().await;
                std::mem::take(&mut *ch.shared.lock().unwrap())
            }
            None => Shared::default(),
        }
    }

    /// The last word on a job without a video (failed, cancelled).
    async fn final_notice(&self, job: &JobRecord, update: JobUpdate) -> Shown {
        if self.is_finished(job.id) {
            return Shown::default();
        }
        let shared = self.close(job.id).await;
        self.mark_finished(job.id);
        let note = shared.note.as_deref();
        let sent = send_with_fallback(
            &self.http,
            &self.options.metrics,
            job,
            initial_target(job, &shared),
            SendKind::Final,
            |mention| {
                let look = Look {
                    mention,
                    note,
                    preview: false,
                };
                presenter::render(job, &update, look)
            },
            None,
        )
        .await;
        match sent {
            Ok(posted) => Shown {
                message_id: posted.or(shared.unreported_message),
            },
            Err((_, e)) => {
                tracing::warn!(job = %job.id, error = %e, "could not send the final notice");
                Shown {
                    message_id: shared.unreported_message,
                }
            }
        }
    }

    /// What the job's progress edits learned since the core last heard from us.
    fn unreported(&self, id: JobId) -> Shown {
        let jobs = self.jobs.lock().unwrap();
        let message_id = jobs
            .get(&id)
            .and_then(|ch| ch.shared.lock().unwrap().unreported_message.take());
        Shown { message_id }
    }
}

/// Where to send, from the stored origin and what this process learned.
fn initial_target(job: &JobRecord, shared: &Shared) -> Target {
    if let Some(message) = shared.channel_message {
        return Target::Channel(message);
    }
    // A stored message id is only ever a channel message (see `post_or_edit_channel`).
    if job.origin.message_id.is_some()
        || !token::token_usable(job.origin.interaction_id, SystemTime::now())
    {
        return Target::Channel(job.origin.message_id);
    }
    Target::Interaction
}

async fn send_progress(
    http: &Http,
    metrics: &Metrics,
    state: &Mutex<Shared>,
    p: Pending,
) -> serenity::Result<()> {
    let (start, note, had_preview) = {
        let s = state.lock().unwrap();
        (initial_target(&p.job, &s), s.note.clone(), s.has_preview)
    };
    let (show_preview, file) = match &p.update {
        JobUpdate::Running {
            preview_png: Some(png),
            ..
        } => (
            true,
            Some(CreateAttachment::bytes(png.clone(), PREVIEW_NAME)),
        ),
        // The attached preview stays until the next one or the end of sampling.
        JobUpdate::Running { .. } => (had_preview, None),
        _ => (false, None),
    };
    let sent = send_with_fallback(
        http,
        metrics,
        &p.job,
        start,
        SendKind::Progress,
        |mention| {
            let look = Look {
                mention,
                note: note.as_deref(),
                preview: show_preview,
            };
            presenter::render(&p.job, &p.update, look)
        },
        file,
    )
    .await;
    let mut s = state.lock().unwrap();
    match sent {
        Ok(posted) => {
            if let Some(id) = posted {
                if s.channel_message != Some(Some(id)) {
                    s.unreported_message = Some(id);
                }
                s.channel_message = Some(Some(id));
            }
            s.has_preview = show_preview;
            Ok(())
        }
        Err((target, e)) => {
            if target != start && s.channel_message.is_none() {
                // The token died on the way: later edits go to the channel.
                s.channel_message = Some(p.job.origin.message_id);
            }
            Err(e)
        }
    }
}

/// How a view is sent: where it goes in each place, and what happens to attachments.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SendKind {
    /// A progress edit, with the preview image when one came.
    Progress,
    /// The last notice of a job without a video: the preview is removed.
    Final,
    /// The video: in the channel a new message (so the member is notified), and the progress
    /// message, if any, is left pointing at it.
    Video,
}

/// Sends one view where the job's message is: edits the interaction's response while its token
/// lives, and when Discord says the token is dead, continues in the channel (mentioning the
/// member) and sends there. `Ok` carries the channel message id, when the view went to the
/// channel; `Err` also says where the last attempt went.
async fn send_with_fallback(
    http: &Http,
    metrics: &Metrics,
    job: &JobRecord,
    start: Target,
    how: SendKind,
    view_for: impl Fn(bool) -> View,
    file: Option<CreateAttachment>,
) -> Result<Option<u64>, (Target, serenity::Error)> {
    let mut target = start;
    loop {
        let view = view_for(matches!(target, Target::Channel(_)));
        let result = match target {
            Target::Interaction => {
                let mut edit = edit_interaction(&view, file.clone());
                if how == SendKind::Final {
                    edit = edit.clear_attachments();
                }
                edit.execute(http, &job.origin.interaction_token)
                    .await
                    .map(|_| None)
            }
            Target::Channel(previous) if how == SendKind::Video => {
                let posted =
                    post_or_edit_channel(http, job, Target::Channel(None), &view, file.clone())
                        .await;
                if let (Ok(_), Some(old)) = (&posted, previous) {
                    let done = EditMessage::new()
                        .content(format!("{} The video is below.", view.content))
                        .components(vec![]);
                    let _ = ChannelId::new(job.origin.channel_id)
                        .edit_message(http, MessageId::new(old), done)
                        .await;
                }
                posted.map(Some)
            }
            Target::Channel(_) => post_or_edit_channel(http, job, target, &view, file.clone())
                .await
                .map(Some),
        };
        match result {
            Ok(posted) => return Ok(posted),
            Err(e)
                if target == Target::Interaction && token::classify(&e) == Failure::TokenDead =>
            {
                tracing::info!(job = %job.id, "interaction token is dead; continuing in the channel");
                let failure = DiscordFailure::from_serenity(&e);
                metrics.discord_api_error(failure);
                metrics.discord_api_retry(failure);
                target = Target::Channel(job.origin.message_id);
            }
            Err(e) => {
                metrics.discord_api_error(DiscordFailure::from_serenity(&e));
                return Err((target, e));
            }
        }
    }
}

/// Edits the job's channel message, or posts it (mentioning the member); returns its id.
async fn post_or_edit_channel(
    http: &Http,
    job: &JobRecord,
    target: Target,
    view: &View,
    file: Option<CreateAttachment>,
) -> serenity::Result<u64> {
    let channel = ChannelId::new(job.origin.channel_id);
    if let Target::Channel(Some(message)) = target {
        let mut b = EditMessage::new()
            .content(view.content.clone())
            .embed(embed(view))
            .components(rows(view));
        if let Some(f) = file.clone() {
            b = b.new_attachment(f);
        }
        match channel.edit_message(http, MessageId::new(message), b).await {
            Ok(_) => return Ok(message),
            // Deleted meanwhile: post a new one below.
            Err(e) if token::classify(&e) == Failure::MessageGone => {}
            Err(e) => return Err(e),
        }
    }
    let mut b = CreateMessage::new()
        .content(view.content.clone())
        .embed(embed(view))
        .components(rows(view))
        .allowed_mentions(CreateAllowedMentions::new().users([UserId::new(job.origin.user_id)]));
    if let Some(f) = file {
        b = b.add_file(f);
    }
    let message = channel.send_message(http, b).await?;
    Ok(message.id.get())
}

fn edit_interaction(view: &View, file: Option<CreateAttachment>) -> EditInteractionResponse {
    let mut b = EditInteractionResponse::new()
        .content(view.content.clone())
        .embed(embed(view))
        .components(rows(view))
        .allowed_mentions(CreateAllowedMentions::new().empty_users().empty_roles());
    if let Some(f) = file {
        b = b.new_attachment(f);
    }
    b
}

pub fn embed(view: &View) -> CreateEmbed {
    let e = &view.embed;
    let mut b = CreateEmbed::new()
        .title(e.title.clone())
        .description(e.description.clone())
        .colour(e.color)
        .footer(CreateEmbedFooter::new(e.footer.clone()));
    for f in &e.fields {
        b = b.field(f.name.clone(), f.value.clone(), f.inline);
    }
    if let Some(image) = &e.image {
        b = b.image(image.clone());
    }
    b
}

pub fn rows(view: &View) -> Vec<CreateActionRow> {
    if view.buttons.is_empty() {
        return vec![];
    }
    let buttons = view
        .buttons
        .iter()
        .map(|b| {
            CreateButton::new(b.custom_id.clone())
                .label(b.label)
                .style(match b.style {
                    ButtonStyle::Primary => SerenityButtonStyle::Primary,
                    ButtonStyle::Secondary => SerenityButtonStyle::Secondary,
                    ButtonStyle::Danger => SerenityButtonStyle::Danger,
                })
        })
        .collect();
    vec![CreateActionRow::Buttons(buttons)]
}

/// File name of a delivered video: the seed in it, so a saved file says how to make it again.
fn video_name(job: &JobRecord) -> String {
    format!("floor33-{}-seed{}.mp4", job.id.0, job.spec.seed)
}

impl DiscordNotifier {
    async fn send_video(
        &self,
        job: &JobRecord,
        video: &DeliveredVideo,
        shared: &Shared,
    ) -> Result<Shown, DeliveryError> {
        // Stored with the job, so it holds after a restart too.
        let limit = job
            .origin
            .attachment_size_limit
            .unwrap_or(DEFAULT_ATTACHMENT_LIMIT);
        let (path, mp4) = (video.path.clone(), video.mp4.clone());
        let mut fitted = blocking(move || {
            if (mp4.len() as u64) <= deliver::budget(limit) {
                Ok(FittedVideo::unchanged(mp4))
            } else {
                deliver::fit_file(&path, limit)
            }
        })
        .await?;
        let done = JobUpdate::Done {
            generation: video.elapsed.unwrap_or_default(),
        };
        let mut start = initial_target(job, shared);
        let mut refusals = 0;
        loop {
            let file = CreateAttachment::bytes(fitted.bytes.clone(), video_name(job));
            let sent = send_with_fallback(
                &self.http,
                &self.options.metrics,
                job,
                start,
                SendKind::Video,
                |mention| {
                    let look = Look {
                        mention,
                        note: shared.note.as_deref(),
                        preview: false,
                    };
                    presenter::render(job, &done, look)
                },
                Some(file),
            )
            .await;
            let (target, error) = match sent {
                Ok(posted) => {
                    tracing::info!(
                        job = %job.id,
                        bytes = fitted.bytes.len(),
                        reencodes = fitted.reencodes,
                        in_channel = posted.is_some(),
                        "video delivered"
                    );
                    return Ok(Shown {
                        message_id: posted.or(shared.unreported_message),
                    });
                }
                Err(failed) => failed,
            };
            // A retry starts where the last attempt went (the token may have died).
            start = target;
            match token::classify(&error) {
                Failure::TooLarge if refusals < self.options.max_refusals => {
                    refusals += 1;
                    self.options
                        .metrics
                        .discord_api_retry(DiscordFailure::TooLarge);
                    tracing::info!(
                        job = %job.id,
                        bytes = fitted.bytes.len(),
                        "upload refused as too large; re-encoding smaller"
                    );
                    let (path, refused) = (video.path.clone(), fitted.clone());
                    fitted =
                        blocking(move || deliver::shrink_after_refusal(&path, &refused)).await?;
                }
                Failure::TooLarge => {
                    return Err(DeliveryError::Permanent(format!(
                        "Discord refused even a {}-byte video",
                        fitted.bytes.len()
                    )))
                }
                _ => return Err(DeliveryError::Transient(error.to_string())),
            }
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, DeliveryError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DeliveryError::Transient(e.to_string()))?
        .map_err(|e| DeliveryError::Permanent(format!("{e:#}")))
}

#[async_trait]
impl Notifier for DiscordNotifier {
    async fn job_update(&self, job: &JobRecord, update: JobUpdate) -> Shown {
        if self.is_finished(job.id) {
            return Shown::default();
        }
        match update {
            JobUpdate::Failed { .. } | JobUpdate::Cancelled { .. } | JobUpdate::Done { .. } => {
                return self.final_notice(job, update).await
            }
            JobUpdate::ExpansionSkipped { ref reason } => {
                tracing::info!(job = %job.id, %reason, "prompt expansion skipped");
                let mut jobs = self.jobs.lock().unwrap();
                let ch = jobs.entry(job.id).or_insert_with(|| self.open(job.id));
                // Already one full sentence (core's `fallback_line`): shown as is.
                ch.shared.lock().unwrap().note = Some(reason.clone());
            }
            _ => {}
        }
        self.push(job, update);
        self.unreported(job.id)
    }

    async fn deliver(
        &self,
        job: &JobRecord,
        video: DeliveredVideo,
    ) -> Result<Shown, DeliveryError> {
        let shared = self.close(job.id).await;
        let result = self.send_video(job, &video, &shared).await;
        if result.is_ok() {
            self.mark_finished(job.id);
        }
        result
    }

    async fn job_lost(&self, id: JobId, origin: &Origin, reason: &str) -> bool {
        // A new channel message: the interaction token is likely dead after a restart.
        let text = format!(
            "<@{}> Your video job {id} failed: {reason}.",
            origin.user_id
        );
        let message = CreateMessage::new()
            .content(text)
            .allowed_mentions(CreateAllowedMentions::new().users([UserId::new(origin.user_id)]));
        match ChannelId::new(origin.channel_id)
            .send_message(&self.http, message)
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "could not tell the member of a lost job");
                false
            }
        }
    }
}
