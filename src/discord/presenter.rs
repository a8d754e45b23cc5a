//! Job state → what the member sees. Pure functions, no Discord calls: the text, the embed and
//! the buttons of the one message a job lives in. Unit tests pin the wording and Discord's
//! size limits here; the adapter only turns a [`View`] into a request.

use crate::engine::image_input::ImageFit;
use std::time::Duration;

use crate::core::jobs::{JobId, JobKind, JobRecord};

/// Discord's limits (message content, embed description, field value, all embed text).
pub const MAX_CONTENT: usize = 2000;
pub const MAX_DESCRIPTION: usize = 4096;
pub const MAX_FIELD: usize = 1024;
pub const MAX_EMBED_TOTAL: usize = 6000;

/// File name of the progress preview; the embed shows it via `attachment://`.
pub const PREVIEW_NAME: &str = "preview.png";

/// Where a job is, as far as the member is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    Queued {
        position: usize,
    },
    Expanding,
    Running {
        step: usize,
        total: usize,
        elapsed: Duration,
        remaining: Duration,
        /// A preview image goes with this update.
        preview: bool,
    },
    /// Sampling is over; the MP4 is being written.
    Encoding,
    Done {
        generation: Duration,
    },
    Failed {
        reason: String,
    },
    Cancelled {
        reason: Option<String>,
    },
}

impl Stage {
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Stage::Done { .. } | Stage::Failed { .. } | Stage::Cancelled { .. }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Cancel,
    Reroll,
    Remix,
    /// The Remix modal's submission.
    RemixSubmit,
}

impl Action {
    fn tag(self) -> &'static str {
        match self {
            Action::Cancel => "cancel",
            Action::Reroll => "reroll",
            Action::Remix => "remix",
            Action::RemixSubmit => "remixed",
        }
    }
}

/// `v1:<action>:<job id>`: names a stored job, so it still means something after a restart.
pub fn custom_id(action: Action, job: JobId) -> String {
    format!("v1:{}:{}", action.tag(), job.0)
}

pub fn parse_custom_id(id: &str) -> Option<(Action, JobId)> {
    let mut parts = id.split(':');
    if parts.next()? != "v1" {
        return None;
    }
    let action = match parts.next()? {
        "cancel" => Action::Cancel,
        "reroll" => Action::Reroll,
        "remix" => Action::Remix,
        "remixed" => Action::RemixSubmit,
        _ => return None,
    };
    let job = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((action, JobId(job)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ButtonStyle {
    Primary,
    Secondary,
    Danger,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Button {
    pub custom_id: String,
    pub label: &'static str,
    pub style: ButtonStyle,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub value: String,
    pub inline: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Embed {
    pub title: String,
    pub description: String,
    pub fields: Vec<Field>,
    pub color: u32,
    /// `attachment://preview.png` while a preview is attached.
    pub image: Option<String>,
    pub footer: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub content: String,
    pub embed: Embed,
    pub buttons: Vec<Button>,
}

const BLUE: u32 = 0x5865f2;
const GREEN: u32 = 0x57f287;
const RED: u32 = 0xed4245;
const GREY: u32 = 0x99aab5;

/// The view of `job` at `stage`. `mention` prefixes the text (used when the job continues in
/// the channel, where the member would otherwise not be notified).
/// `note` is a second line (e.g. why the prompt was not expanded).
pub fn render(job: &JobRecord, stage: &Stage, mention: bool, note: Option<&str>) -> View {
    let mut content = status_line(stage);
    if mention {
        content = format!("<@{}> {content}", job.origin.user_id);
    }
    if let Some(note) = note {
        content = format!("{content}\n-# {note}");
    }
    let buttons = match stage {
        Stage::Queued { .. } | Stage::Expanding | Stage::Running { .. } | Stage::Encoding => {
            vec![Button {
                custom_id: custom_id(Action::Cancel, job.id),
                label: "Cancel",
                style: ButtonStyle::Danger,
            }]
        }
        Stage::Done { .. } | Stage::Failed { .. } | Stage::Cancelled { .. } => vec![
            Button {
                custom_id: custom_id(Action::Reroll, job.id),
                label: "Re-roll",
                style: ButtonStyle::Primary,
            },
            Button {
                custom_id: custom_id(Action::Remix, job.id),
                label: "Remix",
                style: ButtonStyle::Secondary,
            },
        ],
    };
    View {
        content: truncate(&content, MAX_CONTENT),
        embed: embed(job, stage),
        buttons,
    }
}

fn status_line(stage: &Stage) -> String {
    match stage {
        Stage::Queued { position: 0 } => "⏳ Queued — starting next.".into(),
        Stage::Queued { position } => format!("⏳ Queued — position {position}."),
        Stage::Expanding => "✍️ Expanding the prompt…".into(),
        Stage::Running {
            step,
            total,
            elapsed,
            remaining,
            ..
        } => {
            let pct = if *total == 0 { 0 } else { step * 100 / total };
            format!(
                "🎬 Generating — step {step} of {total} ({pct}%) {} · {} elapsed · about {} left",
                bar(*step, *total),
                clock(*elapsed),
                clock(*remaining)
            )
        }
        Stage::Encoding => "🎞️ Encoding the video…".into(),
        Stage::Done { generation } => format!("✅ Done in {}.", clock(*generation)),
        Stage::Failed { reason } => format!("❌ This video could not be made: {reason}"),
        Stage::Cancelled { reason: None } => "🚫 Cancelled.".into(),
        Stage::Cancelled {
            reason: Some(reason),
        } => format!("🚫 Cancelled ({reason})."),
    }
}

/// `▰▰▰▱▱▱▱▱▱▱`: ten segments.
fn bar(step: usize, total: usize) -> String {
    let filled = (step * 10).checked_div(total).unwrap_or(0).min(10);
    format!("{}{}", "▰".repeat(filled), "▱".repeat(10 - filled))
}

/// `m:ss`, or `h:mm:ss` past an hour.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

fn embed(job: &JobRecord, stage: &Stage) -> Embed {
    let spec = &job.spec;
    let title = match spec.kind {
        JobKind::TextToVideo => "Text to video",
        JobKind::ImageToVideo => "Image to video",
    };
    let mut fields = Vec::new();
    if let Some(expanded) = &spec.expanded_prompt {
        fields.push(field("Expanded prompt", expanded, false));
    }
    if let Some(negative) = spec.negative.as_deref().filter(|n| !n.is_empty()) {
        fields.push(field("Negative", negative, false));
    }
    fields.push(field("Seed", &spec.seed.to_string(), true));
    fields.push(field("Steps", &spec.steps.to_string(), true));
    fields.push(field("CFG", &format!("{}", spec.cfg), true));
    fields.push(field("ETA", &format!("{}", spec.eta), true));
    fields.push(field("FPS", &spec.fps.to_string(), true));
    fields.push(field("Variant", spec.variant.name(), true));
    if spec.kind == JobKind::ImageToVideo {
        // Jobs use the engine's default fit (the service sets no other).
        fields.push(field("Image fit", ImageFit::default().name(), true));
    }
    if let Stage::Done { generation } = stage {
        fields.push(field(
            "Generation time",
            &format!("{:.1} s", generation.as_secs_f64()),
            true,
        ));
    }
    if job.prompt_truncated {
        fields.push(field(
            "Note",
            "The prompt was longer than the model reads (77 tokens); the end was cut.",
            false,
        ));
    }
    let color = match stage {
        Stage::Done { .. } => GREEN,
        Stage::Failed { .. } => RED,
        Stage::Cancelled { .. } => GREY,
        _ => BLUE,
    };
    let image = match stage {
        Stage::Running { preview: true, .. } => Some(format!("attachment://{PREVIEW_NAME}")),
        _ => None,
    };
    let mut e = Embed {
        title: title.into(),
        description: truncate(&spec.prompt, MAX_DESCRIPTION),
        fields,
        color,
        image,
        footer: format!(
            "Job {} · requested by member {}",
            job.id, job.origin.user_id
        ),
    };
    fit_embed(&mut e);
    e
}

fn field(name: &str, value: &str, inline: bool) -> Field {
    Field {
        name: name.into(),
        value: truncate(value, MAX_FIELD),
        inline,
    }
}

fn embed_len(e: &Embed) -> usize {
    e.title.chars().count()
        + e.description.chars().count()
        + e.footer.chars().count()
        + e.fields
            .iter()
            .map(|f| f.name.chars().count() + f.value.chars().count())
            .sum::<usize>()
}

/// Shortens the description until all embed text fits Discord's 6000-character total.
fn fit_embed(e: &mut Embed) {
    let total = embed_len(e);
    if total > MAX_EMBED_TOTAL {
        let over = total - MAX_EMBED_TOTAL;
        let keep = e.description.chars().count().saturating_sub(over);
        e.description = truncate(&e.description, keep);
    }
}

/// At most `max` characters, ending with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The text of a refusal: one short line, for an ephemeral reply.
pub fn refusal(text: &str) -> String {
    truncate(&format!("⚠️ {text}"), MAX_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::jobs::{JobSpec, JobState, Origin};
    use crate::models::config::Variant;

    fn job(prompt: &str) -> JobRecord {
        JobRecord {
            id: JobId(12),
            spec: JobSpec {
                kind: JobKind::TextToVideo,
                variant: Variant::Vc2,
                prompt: prompt.into(),
                expanded_prompt: None,
                negative: None,
                seed: 42,
                steps: 25,
                cfg: 12.0,
                eta: 1.0,
                fps: 28,
                expand: false,
                shape: None,
                image: None,
            },
            origin: Origin {
                guild_id: Some(1),
                channel_id: 2,
                user_id: 3,
                interaction_id: 4,
                interaction_token: "t".into(),
                application_id: 5,
                message_id: None,
                attachment_size_limit: None,
            },
            state: JobState::Queued,
            round: 0,
            created_at: std::time::SystemTime::now(),
            started_at: None,
            finished_at: None,
            error: None,
            result_path: None,
            steps_run: None,
            prompt_truncated: false,
            delivered: false,
        }
    }

    #[test]
    fn custom_ids_round_trip_and_reject_garbage() {
        for a in [
            Action::Cancel,
            Action::Reroll,
            Action::Remix,
            Action::RemixSubmit,
        ] {
            assert_eq!(
                parse_custom_id(&custom_id(a, JobId(77))),
                Some((a, JobId(77)))
            );
        }
        for bad in [
            "v2:cancel:1",
            "v1:explode:1",
            "v1:cancel:x",
            "v1:cancel:1:2",
            "",
        ] {
            assert_eq!(parse_custom_id(bad), None, "{bad}");
        }
        assert!(custom_id(Action::RemixSubmit, JobId(i64::MAX)).len() <= 100);
    }

    #[test]
    fn views_follow_the_job() {
        let j = job("a cat surfing");
        let q = render(&j, &Stage::Queued { position: 3 }, false, None);
        assert_eq!(q.content, "⏳ Queued — position 3.");
        assert_eq!(q.buttons.len(), 1);
        assert_eq!(q.buttons[0].custom_id, "v1:cancel:12");
        let r = render(
            &j,
            &Stage::Running {
                step: 10,
                total: 25,
                elapsed: Duration::from_secs(14),
                remaining: Duration::from_secs(21),
                preview: true,
            },
            false,
            None,
        );
        assert_eq!(
            r.content,
            "🎬 Generating — step 10 of 25 (40%) ▰▰▰▰▱▱▱▱▱▱ · 0:14 elapsed · about 0:21 left"
        );
        assert_eq!(r.embed.image.as_deref(), Some("attachment://preview.png"));
        let d = render(
            &j,
            &Stage::Done {
                generation: Duration::from_millis(42_100),
            },
            true,
            Some("note"),
        );
        assert_eq!(d.content, "<@3> ✅ Done in 0:42.\n-# note");
        let labels: Vec<_> = d.buttons.iter().map(|b| b.label).collect();
        assert_eq!(labels, ["Re-roll", "Remix"]);
        let names: Vec<_> = d.embed.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Seed",
                "Steps",
                "CFG",
                "ETA",
                "FPS",
                "Variant",
                "Generation time"
            ]
        );
        assert_eq!(d.embed.fields[0].value, "42");
        assert!(d.embed.footer.contains("#12"));
    }

    #[test]
    fn an_expanded_job_shows_both_prompts_and_a_fallback_is_one_line() {
        let mut j = job("a cat surfing");
        j.spec.expand = true;
        let e = render(&j, &Stage::Expanding, false, None);
        assert_eq!(e.content, "✍️ Expanding the prompt…");
        assert_eq!(e.buttons[0].label, "Cancel");

        j.spec.expanded_prompt = Some("A ginger cat riding a turquoise wave at sunset".into());
        let d = render(
            &j,
            &Stage::Done {
                generation: Duration::from_secs(3),
            },
            false,
            None,
        );
        assert_eq!(d.embed.description, "a cat surfing", "the original");
        assert_eq!(d.embed.fields[0].name, "Expanded prompt");
        assert_eq!(
            d.embed.fields[0].value,
            "A ginger cat riding a turquoise wave at sunset"
        );

        j.spec.expanded_prompt = None;
        let note = crate::core::expand::fallback_line("timed out");
        let d = render(
            &j,
            &Stage::Done {
                generation: Duration::from_secs(3),
            },
            false,
            Some(&note),
        );
        assert_eq!(
            d.content,
            "✅ Done in 0:03.\n-# Prompt expansion timed out; your prompt was used as written."
        );
        assert!(d.embed.fields.iter().all(|f| f.name != "Expanded prompt"));
    }

    #[test]
    fn long_text_fits_discord_limits() {
        let mut j = job(&"word ".repeat(2000));
        j.spec.expanded_prompt = Some("x".repeat(3000));
        j.spec.negative = Some("n".repeat(3000));
        let v = render(
            &j,
            &Stage::Failed {
                reason: "e".repeat(5000),
            },
            true,
            None,
        );
        assert!(v.content.chars().count() <= MAX_CONTENT);
        assert!(v.embed.description.chars().count() <= MAX_DESCRIPTION);
        assert!(v
            .embed
            .fields
            .iter()
            .all(|f| f.value.chars().count() <= MAX_FIELD));
        assert!(embed_len(&v.embed) <= MAX_EMBED_TOTAL);
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(clock(Duration::from_secs(3725)), "1:02:05");
    }
}
