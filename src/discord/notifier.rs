//! The core's [`Notifier`] for Discord: job updates become throttled edits of the job's message,
//! and the finished video is attached to it, sized to fit.
//!
//! Where the message lives is decided per call from stored facts, so it works the same after a
//! restart: while the interaction token is young (its snowflake says how young) we edit the
//! interaction's original response; from ~14 minutes on, or as soon as Discord says the token
//! is dead, we continue in the channel with the bot token, mentioning the member, and remember
//! that message's id in the store.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serenity::all::{
    ButtonStyle as SerenityButtonStyle, ChannelId, CreateActionRow, CreateAllowedMentions,
    CreateAttachment, CreateButton, CreateEmbed, CreateEmbedFooter, CreateMessage,
    EditInteractionResponse, EditMessage, Http, MessageId, UserId,
};
use serenity::builder::Builder;

use super::deliver::{self, FittedVideo};
use super::presenter::{self, ButtonStyle, Stage, View, PREVIEW_NAME};
use super::throttle::Throttled;
use super::token::{self, Failure};
use crate::core::jobs::{JobId, JobRecord};
use crate::core::service::{DeliveredVideo, DeliveryError, JobService, JobUpdate, Notifier};

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
}

impl Default for NotifierOptions {
    fn default() -> Self {
        NotifierOptions {
            edit_gap: Duration::from_millis(1500),
            max_refusals: 4,
        }
    }
}

/// One pending progress edit.
#[derive(Clone)]
struct Pending {
    job: JobRecord,
    stage: Stage,
    preview: Option<Vec<u8>>,
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
    /// The last stage shown, so a note can be added without new progress.
    last: Option<(JobRecord, Stage)>,
}

pub struct DiscordNotifier {
    http: Arc<Http>,
    options: NotifierOptions,
    /// Set once the service exists (it needs this notifier to start).
    service: OnceLock<JobService>,
    jobs: Mutex<HashMap<JobId, JobChannel>>,
    finished: Mutex<(HashSet<JobId>, VecDeque<JobId>)>,
}

impl DiscordNotifier {
    pub fn new(http: Arc<Http>, options: NotifierOptions) -> Self {
        DiscordNotifier {
            http,
            options,
            service: OnceLock::new(),
            jobs: Mutex::default(),
            finished: Mutex::default(),
        }
    }

    pub fn set_service(&self, service: JobService) {
        let _ = self.service.set(service);
    }

    /// Shows the first view of a just-submitted job, unless the service already moved it on.
    pub fn submitted(&self, job: &JobRecord, position: usize) {
        if self.is_finished(job.id) || self.jobs.lock().unwrap().contains_key(&job.id) {
            return;
        }
        self.push(job, Stage::Queued { position }, None);
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

    fn push(&self, job: &JobRecord, stage: Stage, preview: Option<Vec<u8>>) {
        let mut jobs = self.jobs.lock().unwrap();
        let entry = jobs.entry(job.id).or_insert_with(|| self.open(job.id));
        entry.shared.lock().unwrap().last = Some((job.clone(), stage.clone()));
        entry.throttle.update(Pending {
            job: job.clone(),
            stage,
            preview,
        });
    }

    fn open(&self, id: JobId) -> JobChannel {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let http = self.http.clone();
        let service = self.service.get().cloned();
        let state = shared.clone();
        let throttle = Throttled::spawn(self.options.edit_gap, move |p: Pending| {
            let (http, service, state) = (http.clone(), service.clone(), state.clone());
            async move {
                if let Err(e) = send_progress(&http, service.as_ref(), &state, p).await {
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
    async fn final_notice(&self, job: &JobRecord, stage: Stage) {
        if self.is_finished(job.id) {
            return;
        }
        let shared = self.close(job.id).await;
        self.mark_finished(job.id);
        let note = shared.note.clone();
        let mut target = initial_target(job, &shared);
        for _ in 0..2 {
            let view = presenter::render(
                job,
                &stage,
                matches!(target, Target::Channel(_)),
                note.as_deref(),
            );
            let result = match target {
                Target::Interaction => {
                    let b = edit_interaction(&view, None).clear_attachments();
                    b.execute(&*self.http, &job.origin.interaction_token)
                        .await
                        .map(|_| ())
                }
                Target::Channel(_) => {
                    post_or_edit_channel(&self.http, self.service.get(), job, target, &view, None)
                        .await
                        .map(|_| ())
                }
            };
            match result {
                Ok(()) => return,
                Err(e)
                    if target == Target::Interaction
                        && token::classify(&e) == Failure::TokenDead =>
                {
                    tracing::info!(job = %job.id, "interaction token is dead; continuing in the channel");
                    target = Target::Channel(job.origin.message_id);
                }
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "could not send the final notice");
                    return;
                }
            }
        }
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
    service: Option<&JobService>,
    state: &Mutex<Shared>,
    p: Pending,
) -> serenity::Result<()> {
    let (mut target, note, had_preview) = {
        let s = state.lock().unwrap();
        (initial_target(&p.job, &s), s.note.clone(), s.has_preview)
    };
    let show_preview =
        p.preview.is_some() || (had_preview && matches!(p.stage, Stage::Running { .. }));
    let stage = match p.stage.clone() {
        Stage::Running {
            step,
            total,
            elapsed,
            remaining,
            ..
        } => Stage::Running {
            step,
            total,
            elapsed,
            remaining,
            preview: show_preview,
        },
        other => other,
    };
    for _ in 0..2 {
        let mention = matches!(target, Target::Channel(_));
        let view = presenter::render(&p.job, &stage, mention, note.as_deref());
        let file = p
            .preview
            .clone()
            .map(|png| CreateAttachment::bytes(png, PREVIEW_NAME));
        let result = match target {
            Target::Interaction => edit_interaction(&view, file)
                .execute(http, &p.job.origin.interaction_token)
                .await
                .map(|_| None),
            Target::Channel(_) => post_or_edit_channel(http, service, &p.job, target, &view, file)
                .await
                .map(Some),
        };
        match result {
            Ok(channel_message) => {
                let mut s = state.lock().unwrap();
                if let Some(id) = channel_message {
                    s.channel_message = Some(Some(id));
                }
                s.has_preview = show_preview;
                return Ok(());
            }
            Err(e)
                if target == Target::Interaction && token::classify(&e) == Failure::TokenDead =>
            {
                tracing::info!(job = %p.job.id, "interaction token is dead; continuing in the channel");
                state.lock().unwrap().channel_message = Some(p.job.origin.message_id);
                target = Target::Channel(p.job.origin.message_id);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Edits the job's channel message, or posts it (mentioning the member) and stores its id.
async fn post_or_edit_channel(
    http: &Http,
    service: Option<&JobService>,
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
    let id = message.id.get();
    if let Some(service) = service {
        if let Err(e) = service.set_message_id(job.id, id).await {
            tracing::warn!(job = %job.id, error = %e, "could not store the channel message id");
        }
    }
    Ok(id)
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
    ) -> Result<(), DeliveryError> {
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
        let stage = Stage::Done {
            generation: video.elapsed.unwrap_or_default(),
        };
        let mut target = initial_target(job, shared);
        let mut refusals = 0;
        loop {
            let mention = matches!(target, Target::Channel(_));
            let view = presenter::render(job, &stage, mention, shared.note.as_deref());
            let file = CreateAttachment::bytes(fitted.bytes.clone(), video_name(job));
            let result = match target {
                Target::Interaction => edit_interaction(&view, Some(file))
                    .execute(&*self.http, &job.origin.interaction_token)
                    .await
                    .map(|_| ()),
                Target::Channel(previous) => {
                    // A new message, so the member is notified; the progress message (if any)
                    // is left pointing at it.
                    let posted = post_or_edit_channel(
                        &self.http,
                        self.service.get(),
                        job,
                        Target::Channel(None),
                        &view,
                        Some(file),
                    )
                    .await;
                    if posted.is_ok() {
                        if let Some(old) = previous {
                            let done = EditMessage::new()
                                .content(format!("{} The video is below.", view.content))
                                .components(vec![]);
                            let _ = ChannelId::new(job.origin.channel_id)
                                .edit_message(&*self.http, MessageId::new(old), done)
                                .await;
                        }
                    }
                    posted.map(|_| ())
                }
            };
            let failure = match &result {
                Ok(()) => {
                    tracing::info!(
                        job = %job.id,
                        bytes = fitted.bytes.len(),
                        reencodes = fitted.reencodes,
                        in_channel = mention,
                        "video delivered"
                    );
                    return Ok(());
                }
                Err(e) => token::classify(e),
            };
            let error = result.unwrap_err();
            match failure {
                Failure::TokenDead if target == Target::Interaction => {
                    tracing::info!(job = %job.id, "interaction token is dead; delivering in the channel");
                    target = Target::Channel(job.origin.message_id);
                }
                Failure::TooLarge if refusals < self.options.max_refusals => {
                    refusals += 1;
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

/// Step 0 of a job about to sample.
fn starting(job: &JobRecord) -> Stage {
    Stage::Running {
        step: 0,
        total: job.spec.steps,
        elapsed: Duration::ZERO,
        remaining: Duration::ZERO,
        preview: false,
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
    async fn job_update(&self, job: &JobRecord, update: JobUpdate) {
        if self.is_finished(job.id) {
            return;
        }
        let stage = match update {
            JobUpdate::Queued { position } => Stage::Queued { position },
            JobUpdate::Expanding => Stage::Expanding,
            JobUpdate::Expanded { .. } => starting(job),
            JobUpdate::ExpansionSkipped { reason } => {
                tracing::info!(job = %job.id, %reason, "prompt expansion skipped");
                {
                    let mut jobs = self.jobs.lock().unwrap();
                    let ch = jobs.entry(job.id).or_insert_with(|| self.open(job.id));
                    // Already one full sentence (core's `fallback_line`): shown as is.
                    ch.shared.lock().unwrap().note = Some(reason);
                }
                starting(job)
            }
            JobUpdate::Running {
                step,
                total,
                elapsed,
                remaining,
                preview_png,
            } => {
                let preview = preview_png.is_some();
                self.push(
                    job,
                    Stage::Running {
                        step,
                        total,
                        elapsed,
                        remaining,
                        preview,
                    },
                    preview_png,
                );
                return;
            }
            JobUpdate::Encoding => Stage::Encoding,
            JobUpdate::Failed { error } => {
                return self
                    .final_notice(job, Stage::Failed { reason: error })
                    .await
            }
            JobUpdate::Cancelled { .. } => {
                let reason = job.error.clone();
                return self.final_notice(job, Stage::Cancelled { reason }).await;
            }
        };
        self.push(job, stage, None);
    }

    async fn deliver(&self, job: &JobRecord, video: DeliveredVideo) -> Result<(), DeliveryError> {
        let shared = self.close(job.id).await;
        let result = self.send_video(job, &video, &shared).await;
        if result.is_ok() {
            self.mark_finished(job.id);
        }
        result
    }
}
