//! Job state → what the member sees. Pure functions, no Discord calls: the text, the embed and
//! the buttons of the one message a job lives in. Unit tests pin the wording and Discord's
//! size limits here; the adapter only turns a [`View`] into a request.

use std::time::Duration;

use crate::core::jobs::{JobId, JobKind, JobRecord};
use crate::core::JobUpdate;

/// Discord's limits (message content, embed description, field value, all embed text).
pub const MAX_CONTENT: usize = 2000;
pub const MAX_DESCRIPTION: usize = 4096;
pub const MAX_FIELD: usize = 1024;
pub const MAX_EMBED_TOTAL: usize = 6000;

/// File name of the progress preview; the embed shows it via `attachment://`.
pub const PREVIEW_NAME: &str = "preview.png";

/// How a view is shown, beyond the job and its update.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Look<'a> {
    /// Prefix the text with the member's mention (the job continues in the channel, where
    /// the member would otherwise not be notified).
    pub mention: bool,
    /// A second line (e.g. why the prompt was not expanded).
    pub note: Option<&'a str>,
    /// A preview image is attached to the message (progress only).
    pub preview: bool,
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

/// The view of `job` after `update` (the core's [`JobUpdate`]; `Expanded` and
/// `ExpansionSkipped` show as sampling about to start).
pub fn render(job: &JobRecord, update: &JobUpdate, look: Look<'_>) -> View {
    let mut content = status_line(job, update);
    if look.mention {
        content = format!("<@{}> {content}", job.origin.user_id);
    }
    if let Some(note) = look.note {
        content = format!("{content}\n-# {note}");
    }
    let buttons = if is_final(update) {
        vec![
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
        ]
    } else {
        vec![Button {
            custom_id: custom_id(Action::Cancel, job.id),
            label: "Cancel",
            style: ButtonStyle::Danger,
        }]
    };
    View {
        content: truncate(&content, MAX_CONTENT),
        embed: embed(job, update, look.preview),
        buttons,
    }
}

/// Nothing follows but Re-roll and Remix.
fn is_final(update: &JobUpdate) -> bool {
    matches!(
        update,
        JobUpdate::Done { .. } | JobUpdate::Failed { .. } | JobUpdate::Cancelled { .. }
    )
}

fn status_line(job: &JobRecord, update: &JobUpdate) -> String {
    match update {
        JobUpdate::Queued { position: 0 } => "⏳ Queued — starting next.".into(),
        JobUpdate::Queued { position } => format!("⏳ Queued — position {position}."),
        JobUpdate::Expanding => "✍️ Expanding the prompt…".into(),
        JobUpdate::Expanded { .. } | JobUpdate::ExpansionSkipped { .. } => {
            progress_line(0, job.spec.sampling_steps(), Duration::ZERO, Duration::ZERO)
        }
        JobUpdate::Running {
            step,
            total,
            elapsed,
            remaining,
            ..
        } => progress_line(*step, *total, *elapsed, *remaining),
        JobUpdate::Encoding => "🎞️ Encoding the video…".into(),
        JobUpdate::Done { generation } => format!("✅ Done in {}.", clock(*generation)),
        JobUpdate::Failed { error } => format!("❌ This video could not be made: {error}"),
        // Who cancelled it, in words, is stored with the job.
        JobUpdate::Cancelled { .. } => match &job.error {
            None => "🚫 Cancelled.".into(),
            Some(reason) => format!("🚫 Cancelled ({reason})."),
        },
    }
}

fn progress_line(step: usize, total: usize, elapsed: Duration, remaining: Duration) -> String {
    let pct = (step * 100).checked_div(total).unwrap_or(0);
    format!(
        "🎬 Generating — step {step} of {total} ({pct}%) {} · {} elapsed · about {} left",
        bar(step, total),
        clock(elapsed),
        clock(remaining)
    )
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

fn embed(job: &JobRecord, update: &JobUpdate, preview: bool) -> Embed {
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
        fields.push(field("Image fit", spec.image_fit.name(), true));
    }
    if let JobUpdate::Done { generation } = update {
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
    let color = match update {
        JobUpdate::Done { .. } => GREEN,
        JobUpdate::Failed { .. } => RED,
        JobUpdate::Cancelled { .. } => GREY,
        _ => BLUE,
    };
    let image = match update {
        JobUpdate::Running { .. } if preview => Some(format!("attachment://{PREVIEW_NAME}")),
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
                image_fit: Default::default(),
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
        let q = render(&j, &JobUpdate::Queued { position: 3 }, Look::default());
        assert_eq!(q.content, "⏳ Queued — position 3.");
        assert_eq!(q.buttons.len(), 1);
        assert_eq!(q.buttons[0].custom_id, "v1:cancel:12");
        let r = render(
            &j,
            &JobUpdate::Running {
                step: 10,
                total: 25,
                elapsed: Duration::from_secs(14),
                remaining: Duration::from_secs(21),
                preview_png: None,
            },
            Look {
                preview: true,
                ..Look::default()
            },
        );
        assert_eq!(
            r.content,
            "🎬 Generating — step 10 of 25 (40%) ▰▰▰▰▱▱▱▱▱▱ · 0:14 elapsed · about 0:21 left"
        );
        assert_eq!(r.embed.image.as_deref(), Some("attachment://preview.png"));
        let d = render(
            &j,
            &JobUpdate::Done {
                generation: Duration::from_millis(42_100),
            },
            Look {
                mention: true,
                note: Some("note"),
                preview: false,
            },
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
        let e = render(&j, &JobUpdate::Expanding, Look::default());
        assert_eq!(e.content, "✍️ Expanding the prompt…");
        assert_eq!(e.buttons[0].label, "Cancel");

        j.spec.expanded_prompt = Some("A ginger cat riding a turquoise wave at sunset".into());
        let d = render(
            &j,
            &JobUpdate::Done {
                generation: Duration::from_secs(3),
            },
            Look::default(),
        );
        assert_eq!(d.embed.description, "a cat surfing", "the original");
        assert_eq!(d.embed.fields[0].name, "Expanded prompt");
        assert_eq!(
            d.embed.fields[0].value,
            "A ginger cat riding a turquoise wave at sunset"
        );

        j.spec.expanded_prompt = None;
        let note = crate::core::fallback_line("timed out");
        let d = render(
            &j,
            &JobUpdate::Done {
                generation: Duration::from_secs(3),
            },
            Look {
                note: Some(&note),
                ..Look::default()
            },
        );
        assert_eq!(
            d.content,
            "✅ Done in 0:03.\n-# Prompt expansion timed out; your prompt was used as written."
        );
        assert!(d.embed.fields.iter().all(|f| f.name != "Expanded prompt"));
    }

    #[test]
    fn core_updates_map_onto_the_member_view() {
        let mut j = job("a cat surfing");
        j.spec.steps = 25;
        // An expansion that finished (or fell back) shows sampling about to start.
        for update in [
            JobUpdate::Expanded { prompt: "x".into() },
            JobUpdate::ExpansionSkipped { reason: "y".into() },
        ] {
            let v = render(&j, &update, Look::default());
            assert!(
                v.content.starts_with("🎬 Generating — step 0 of 25 (0%)"),
                "{}",
                v.content
            );
        }
        // Without an attached preview the embed points at none.
        let r = render(
            &j,
            &JobUpdate::Running {
                step: 1,
                total: 25,
                elapsed: Duration::ZERO,
                remaining: Duration::ZERO,
                preview_png: None,
            },
            Look::default(),
        );
        assert_eq!(r.embed.image, None);
        // Who cancelled comes from the stored job.
        let c = render(&j, &JobUpdate::Cancelled { by_user: None }, Look::default());
        assert_eq!(c.content, "🚫 Cancelled.");
        j.error = Some("cancelled by its author".into());
        let c = render(
            &j,
            &JobUpdate::Cancelled { by_user: Some(3) },
            Look::default(),
        );
        assert_eq!(c.content, "🚫 Cancelled (cancelled by its author).");
        assert_eq!(c.buttons.len(), 2);
    }

    #[test]
    fn long_text_fits_discord_limits() {
        let mut j = job(&"word ".repeat(2000));
        j.spec.expanded_prompt = Some("x".repeat(3000));
        j.spec.negative = Some("n".repeat(3000));
        let v = render(
            &j,
            &JobUpdate::Failed {
                error: "e".repeat(5000),
            },
            Look {
                mention: true,
                ..Look::default()
            },
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
