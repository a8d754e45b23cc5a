//! What a job is: the request a member made (`JobSpec`), where it came from (`Origin`), and what
//! became of it (`JobRecord`). Plain data shared by the store, the scheduler and the service; it
//! knows nothing of Discord beyond the ids the adapter needs to answer in the right place.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::engine::image_input::ImageFit;
use crate::models::config::Variant;

/// A job's number: the database row id, so it is unique across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobKind {
    TextToVideo,
    ImageToVideo,
}

impl JobKind {
    pub fn name(self) -> &'static str {
        match self {
            JobKind::TextToVideo => "text-to-video",
            JobKind::ImageToVideo => "image-to-video",
        }
    }
}

/// Output size; `None` in a spec means the model's own default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoShape {
    pub height: usize,
    pub width: usize,
    pub frames: usize,
}

/// Everything needed to run the job again after a restart.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub kind: JobKind,
    #[serde(with = "variant_name")]
    pub variant: Variant,
    /// What the member typed.
    pub prompt: String,
    /// The prompt-expansion result, once the expansion step ran.
    pub expanded_prompt: Option<String>,
    pub negative: Option<String>,
    pub seed: u64,
    pub steps: usize,
    pub cfg: f64,
    pub eta: f64,
    pub fps: u32,
    /// Ask the prompt expander to enrich the prompt before generating.
    pub expand: bool,
    /// Output size override; `None` uses the model's default (tests use tiny shapes).
    #[serde(default)]
    pub shape: Option<VideoShape>,
    /// How an image-to-video job's image is fitted to the frame; rows stored before the
    /// option existed read as crop (what those jobs used).
    #[serde(default)]
    pub image_fit: ImageFit,
    /// The input image (PNG/JPEG/WebP bytes) of an image-to-video job. Stored apart from the
    /// spec (see the store), so it is skipped here.
    #[serde(skip)]
    pub image: Option<Vec<u8>>,
}

impl JobSpec {
    /// The prompt the model sees: the expansion when there is one.
    pub fn effective_prompt(&self) -> &str {
        self.expanded_prompt.as_deref().unwrap_or(&self.prompt)
    }

    /// The steps the sampler really runs for the `steps` asked (the original's uniform DDIM
    /// schedule runs 7 for 6): the total every progress line shows, from the first one on.
    pub fn sampling_steps(&self) -> usize {
        let timesteps = self.variant.config().diffusion.timesteps;
        crate::sampler::schedule::ddim_step_count(timesteps, self.steps)
    }
}

// Hand-written so a 10 MB image does not flood a log line.
impl fmt::Debug for JobSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobSpec")
            .field("kind", &self.kind)
            .field("variant", &self.variant)
            .field("prompt", &self.prompt)
            .field("expanded_prompt", &self.expanded_prompt)
            .field("negative", &self.negative)
            .field("seed", &self.seed)
            .field("steps", &self.steps)
            .field("cfg", &self.cfg)
            .field("eta", &self.eta)
            .field("fps", &self.fps)
            .field("expand", &self.expand)
            .field("shape", &self.shape)
            .field("image_fit", &self.image_fit)
            .field(
                "image",
                &self.image.as_ref().map(|i| format!("{} bytes", i.len())),
            )
            .finish()
    }
}

/// Where a job came from and where its answers go. The interaction token lets the adapter edit
/// the original reply for 15 minutes; it is a credential, so `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub guild_id: Option<u64>,
    pub channel_id: u64,
    pub user_id: u64,
    pub interaction_id: u64,
    pub interaction_token: String,
    pub application_id: u64,
    /// The message holding the job's progress, once the adapter knows it.
    pub message_id: Option<u64>,
    /// The largest upload the interaction allows (Discord says per interaction: it depends on
    /// the guild's boosts). Stored so a delivery after a restart still fits; rows written
    /// before this field existed read as `None` (the adapter's default applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment_size_limit: Option<u64>,
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Origin")
            .field("guild_id", &self.guild_id)
            .field("channel_id", &self.channel_id)
            .field("user_id", &self.user_id)
            .field("interaction_id", &self.interaction_id)
            .field("interaction_token", &"<redacted>")
            .field("application_id", &self.application_id)
            .field("message_id", &self.message_id)
            .field("attachment_size_limit", &self.attachment_size_limit)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Done,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(name: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A job as the store knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    /// `image` is not loaded here (see [`crate::core::store::Store::job_image`]).
    pub spec: JobSpec,
    pub origin: Origin,
    pub state: JobState,
    /// Fair-queueing round (see the scheduler); with `id`, the job's place in the queue.
    pub round: u64,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    /// Why it failed (or who cancelled it), in words for the member.
    pub error: Option<String>,
    /// The encoded MP4 of a done job.
    pub result_path: Option<std::path::PathBuf>,
    pub steps_run: Option<usize>,
    pub prompt_truncated: bool,
    /// The notifier confirmed the delivery (or it was given up for good).
    pub delivered: bool,
}

impl JobRecord {
    /// A job as it is when it enters the queue (its input image stays in the store).
    pub fn queued(
        id: JobId,
        spec: JobSpec,
        origin: Origin,
        round: u64,
        created_at: SystemTime,
    ) -> Self {
        JobRecord {
            id,
            spec: JobSpec {
                image: None,
                ..spec
            },
            origin,
            state: JobState::Queued,
            round,
            created_at,
            started_at: None,
            finished_at: None,
            error: None,
            result_path: None,
            steps_run: None,
            prompt_truncated: false,
            delivered: false,
        }
    }

    /// Run time of a finished job.
    pub fn run_time(&self) -> Option<Duration> {
        self.finished_at?.duration_since(self.started_at?).ok()
    }
}

// ---------------------------------------------------------------------------------------------
// New jobs from stored ones: the Re-roll and Remix buttons.

/// What a member changes when remixing a job: the Remix form's fields, as typed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemixEdit {
    pub prompt: String,
    /// Empty for none.
    pub negative: String,
    /// Empty for a new random seed.
    pub seed: String,
}

impl JobSpec {
    /// A Re-roll: the same settings (and the same expanded prompt), a new seed.
    ///
    /// The stored expansion goes along and the service does not expand a spec that has one,
    /// so a Re-roll costs no LLM call. `expand` stays as the member chose it, so a later Remix
    /// of the new job expands its new prompt again. A job whose expansion fell back has none
    /// and is expanded again, like any job that asks for it, if this bot still can.
    pub fn reroll(&self, expand_available: bool) -> JobSpec {
        let mut spec = self.clone();
        spec.seed = new_seed(spec.seed);
        spec.expand &= spec.expanded_prompt.is_some() || expand_available;
        spec
    }

    /// A Remix: the member's edited prompt, negative prompt and seed over the stored job.
    ///
    /// The old expansion does not describe the edited text, so it is dropped, and the new
    /// prompt is expanded if the original job asked for expansion and this bot still can. The
    /// error is one sentence for the member.
    pub fn remix(&self, edit: &RemixEdit, expand_available: bool) -> Result<JobSpec, String> {
        let max = super::validate::MAX_SEED;
        let seed = match edit.seed.trim() {
            "" => new_seed(self.seed),
            s => match s.parse::<u64>() {
                Ok(v) if v <= max => v,
                _ => {
                    return Err(format!(
                        "The seed must be a whole number between 0 and {max}."
                    ))
                }
            },
        };
        let mut spec = self.clone();
        spec.prompt = edit.prompt.trim().to_string();
        spec.expanded_prompt = None;
        spec.expand &= expand_available;
        spec.negative = Some(edit.negative.trim().to_string()).filter(|n| !n.is_empty());
        spec.seed = seed;
        Ok(spec)
    }
}

/// A random seed other than `old`, so a Re-roll always makes a different video.
fn new_seed(old: u64) -> u64 {
    loop {
        let seed = rand::random::<u32>() as u64;
        if seed != old {
            return seed;
        }
    }
}

/// Milliseconds since the Unix epoch, the store's time format.
pub fn to_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

pub(crate) mod variant_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::models::config::Variant;

    pub fn serialize<S: Serializer>(v: &Variant, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Variant, D::Error> {
        let name = String::deserialize(d)?;
        Variant::parse(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_debug_redacts_the_token() {
        let origin = Origin {
            guild_id: Some(1),
            channel_id: 2,
            user_id: 3,
            interaction_id: 4,
            interaction_token: "very-secret-token".into(),
            application_id: 5,
            message_id: None,
            attachment_size_limit: None,
        };
        let text = format!("{origin:?}");
        assert!(!text.contains("very-secret-token"), "{text}");
        assert!(text.contains("redacted"));
    }

    fn stored() -> JobSpec {
        JobSpec {
            kind: JobKind::TextToVideo,
            variant: Variant::T2v512,
            prompt: "a cat".into(),
            expanded_prompt: Some("a cat surfing at dusk".into()),
            negative: Some("blur".into()),
            seed: 7,
            steps: 20,
            cfg: 9.0,
            eta: 0.5,
            fps: 8,
            expand: true,
            shape: None,
            image_fit: ImageFit::Stretch,
            image: Some(vec![1, 2, 3]),
        }
    }

    #[test]
    fn reroll_keeps_everything_but_the_seed() {
        let old = stored();
        let new = old.reroll(false);
        assert_ne!(new.seed, old.seed);
        assert_eq!(
            JobSpec {
                seed: old.seed,
                ..new.clone()
            },
            old
        );
        // The stored expansion goes along, so `expand` holds even without an LLM now.
        assert!(new.expand);
    }

    #[test]
    fn a_spec_stored_before_the_fit_option_reads_as_crop() {
        let mut json = serde_json::to_value(stored()).unwrap();
        assert_eq!(json["image_fit"], "stretch");
        json.as_object_mut().unwrap().remove("image_fit");
        let old: JobSpec = serde_json::from_value(json).unwrap();
        assert_eq!(old.image_fit, ImageFit::CentreCrop);
    }

    #[test]
    fn reroll_without_an_expansion_expands_only_where_it_can() {
        let old = JobSpec {
            expanded_prompt: None,
            ..stored()
        };
        assert!(old.reroll(true).expand);
        assert!(!old.reroll(false).expand);
    }

    #[test]
    fn remix_drops_the_expansion_and_takes_the_edits() {
        let old = stored();
        let edit = RemixEdit {
            prompt: "  a dog  ".into(),
            negative: "  ".into(),
            seed: "42".into(),
        };
        let new = old.remix(&edit, true).unwrap();
        assert_eq!(new.prompt, "a dog");
        assert_eq!(new.expanded_prompt, None);
        assert_eq!(new.negative, None);
        assert_eq!(new.seed, 42);
        assert!(new.expand);
        assert_eq!(new.image, old.image);
        assert_eq!((new.steps, new.variant), (old.steps, old.variant));
        assert!(!old.remix(&edit, false).unwrap().expand);
    }

    #[test]
    fn remix_with_an_empty_seed_picks_a_new_one_and_refuses_a_bad_one() {
        let old = stored();
        let edit = RemixEdit {
            prompt: "a dog".into(),
            negative: "rain".into(),
            seed: String::new(),
        };
        let new = old.remix(&edit, true).unwrap();
        assert_ne!(new.seed, old.seed);
        assert_eq!(new.negative.as_deref(), Some("rain"));
        for bad in ["-1", "abc", "9007199254740992"] {
            let edit = RemixEdit {
                seed: bad.into(),
                ..edit.clone()
            };
            let err = old.remix(&edit, true).unwrap_err();
            assert!(
                err.starts_with("The seed must be a whole number"),
                "{bad}: {err}"
            );
        }
    }
}
