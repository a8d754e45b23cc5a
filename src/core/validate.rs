//! Validation: what a member asked for, merged over the guild's defaults ([`apply_options`]),
//! and every rule a job must meet before it is stored ([`validate`]), checked here so that a
//! bad request is refused at once rather than failing after its wait in the queue. The
//! transport only parses its options into [`RequestOptions`].

use std::sync::Arc;

use image::RgbImage;

use super::jobs::{JobKind, JobSpec, Origin};
use super::refusal::Refusal;
use super::settings::GuildSettings;
use crate::engine::image_input::{probe_image, ImageLimits};
use crate::engine::{GenerationRequest, Limits};
use crate::models::config::Variant;

/// Checks a job against the guild's settings, the loaded models and the engine's limits.
pub fn validate(
    spec: &JobSpec,
    origin: &Origin,
    s: &GuildSettings,
    loaded: &[Variant],
    limits: &Limits,
) -> Result<(), Refusal> {
    if !s.channel_allowed(origin.channel_id) {
        return Err(Refusal::ChannelNotAllowed {
            allowed: s.allowed_channels.clone(),
        });
    }
    if spec.prompt.trim().is_empty() {
        return Err(Refusal::EmptyPrompt);
    }
    let len = spec.prompt.chars().count();
    if len > s.max_prompt_len {
        return Err(Refusal::PromptTooLong {
            len,
            max: s.max_prompt_len,
        });
    }
    // A Re-roll carries its stored expansion: it meets today's blocked words too.
    for text in [
        Some(spec.prompt.as_str()),
        spec.expanded_prompt.as_deref(),
        spec.negative.as_deref(),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(word) = s.blocked_word_in(text) {
            return Err(Refusal::BlockedWord {
                word: word.to_string(),
            });
        }
    }
    if !loaded.contains(&spec.variant) {
        return Err(Refusal::ModelNotLoaded {
            variant: spec.variant.name().to_string(),
            loaded: loaded.iter().map(|v| v.name().to_string()).collect(),
        });
    }
    match spec.kind {
        JobKind::ImageToVideo if spec.image.is_none() => {
            return Err(Refusal::Invalid(
                "image-to-video needs an input image".into(),
            ))
        }
        JobKind::ImageToVideo if !spec.variant.is_image_to_video() => {
            return Err(Refusal::Invalid(format!(
                "the model `{}` makes videos from text, not from an image",
                spec.variant
            )))
        }
        JobKind::TextToVideo if spec.variant.is_image_to_video() => {
            return Err(Refusal::Invalid(format!(
                "the model `{}` needs an input image",
                spec.variant
            )))
        }
        _ => {}
    }
    if spec.steps == 0 || spec.steps > s.max_steps {
        return Err(Refusal::Invalid(format!(
            "steps must be between 1 and {} on this server",
            s.max_steps
        )));
    }
    // Only the image's header here (async thread, before any place is held): a header that
    // claims too many pixels is refused without decoding. The pixels are decoded once, on a
    // blocking thread: by the adapter that fetched them (Discord's download check) and by the
    // runner when the job starts.
    if let Some(bytes) = &spec.image {
        probe_image(bytes, &ImageLimits::default())
            .map_err(|m| Refusal::Invalid(capitalise(&m)))?;
    }
    // The engine's own checks (cfg, eta, fps, size), so that a bad request is refused now
    // rather than failing after its wait in the queue.
    limits
        .check_with_image(
            &request_for(spec, None),
            spec.image.is_some(),
            &spec.variant.config(),
        )
        .map_err(|m| Refusal::Invalid(capitalise(&m)))
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The engine request of a spec.
pub(super) fn request_for(spec: &JobSpec, image: Option<Arc<RgbImage>>) -> GenerationRequest {
    let mut req =
        GenerationRequest::with_defaults(spec.variant, spec.effective_prompt(), spec.seed);
    req.negative = spec.negative.clone().filter(|n| !n.trim().is_empty());
    req.steps = spec.steps;
    req.cfg = spec.cfg;
    req.eta = spec.eta;
    req.fps = spec.fps;
    req.image = image;
    req.image_fit = spec.image_fit;
    if let Some(shape) = spec.shape {
        req.height = shape.height;
        req.width = shape.width;
        req.frames = shape.frames;
    }
    req
}

// ---------------------------------------------------------------------------------------------
// Merging a member's options over the guild's defaults.

/// Largest seed a member can give (2^53 − 1: what Discord can carry in an integer option).
pub const MAX_SEED: u64 = (1 << 53) - 1;

/// What a member may choose for a `/t2v` or `/i2v` job; `None` keeps the guild's default.
#[derive(Debug, Clone, Default)]
pub struct RequestOptions {
    pub negative: Option<String>,
    pub seed: Option<u64>,
    pub steps: Option<u32>,
    pub cfg: Option<f64>,
    pub eta: Option<f64>,
    pub fps: Option<u32>,
    pub variant: Option<String>,
    pub expand: Option<bool>,
}

/// Checks a requested model against the loaded ones.
pub fn parse_variant(name: &str, loaded: &[Variant]) -> Result<Variant, String> {
    match Variant::parse(name) {
        Ok(v) if loaded.contains(&v) => Ok(v),
        _ => Err(format!(
            "The model `{name}` is not loaded on this bot (loaded: {}).",
            loaded
                .iter()
                .map(|v| v.name())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Applies the member's choices over the defaults in `spec` (from
/// [`JobService::default_spec`](super::JobService::default_spec)). The transport may enforce
/// ranges of its own; these checks catch what a modified client or a stale registration lets
/// through. An image-to-video job runs on the first loaded image-to-video model unless the
/// member named one (the guild's default model makes videos from text). The error is one
/// sentence for the member.
pub fn apply_options(
    spec: &mut JobSpec,
    o: &RequestOptions,
    loaded: &[Variant],
    expand_available: bool,
) -> Result<(), String> {
    if spec.kind == JobKind::ImageToVideo {
        match loaded.iter().find(|v| v.is_image_to_video()) {
            Some(v) => spec.variant = *v,
            None => {
                return Err(
                    "Image-to-video is not available on this bot: no image-to-video \
                            model is loaded."
                        .into(),
                )
            }
        }
    }
    if let Some(v) = &o.variant {
        spec.variant = parse_variant(v, loaded)?;
    }
    if let Some(n) = &o.negative {
        spec.negative = Some(n.clone()).filter(|n| !n.trim().is_empty());
    }
    if let Some(seed) = o.seed {
        if seed > MAX_SEED {
            return Err(format!("The seed must be between 0 and {MAX_SEED}."));
        }
        spec.seed = seed;
    }
    if let Some(steps) = o.steps {
        spec.steps = steps as usize;
    }
    if let Some(cfg) = o.cfg {
        if !cfg.is_finite() {
            return Err("cfg must be a number.".into());
        }
        spec.cfg = cfg;
    }
    if let Some(eta) = o.eta {
        if !(0.0..=1.0).contains(&eta) {
            return Err("eta must be between 0 and 1.".into());
        }
        spec.eta = eta;
    }
    if let Some(fps) = o.fps {
        spec.fps = fps;
    }
    match o.expand {
        Some(true) if !expand_available => {
            return Err("Prompt expansion is not available on this bot.".into())
        }
        Some(e) => spec.expand = e,
        None => spec.expand &= expand_available,
    }
    match spec.kind {
        JobKind::TextToVideo if spec.variant.is_image_to_video() => Err(format!(
            "The model `{}` needs an input image: use /i2v.",
            spec.variant
        )),
        JobKind::ImageToVideo if !spec.variant.is_image_to_video() => Err(format!(
            "The model `{}` makes videos from text; /i2v needs an image-to-video model.",
            spec.variant
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOADED: [Variant; 2] = [Variant::Tiny, Variant::TinyI2v];

    fn spec(prompt: &str) -> JobSpec {
        JobSpec {
            kind: JobKind::TextToVideo,
            variant: Variant::Tiny,
            prompt: prompt.into(),
            expanded_prompt: None,
            negative: None,
            seed: 1,
            steps: 4,
            cfg: 7.5,
            eta: 1.0,
            fps: 8,
            expand: false,
            shape: None,
            image_fit: Default::default(),
            image: None,
        }
    }

    fn origin(channel: u64) -> Origin {
        Origin {
            guild_id: Some(1),
            channel_id: channel,
            user_id: 2,
            interaction_id: 3,
            interaction_token: "t".into(),
            application_id: 4,
            message_id: None,
            attachment_size_limit: None,
        }
    }

    fn check(spec: &JobSpec, s: &GuildSettings) -> Result<(), Refusal> {
        validate(spec, &origin(10), s, &LOADED, &Limits::default())
    }

    #[test]
    fn a_plain_job_passes() {
        assert_eq!(check(&spec("a fox"), &GuildSettings::default()), Ok(()));
    }

    #[test]
    fn guild_rules_refuse_channel_prompt_and_words() {
        let s = GuildSettings {
            allowed_channels: vec![11],
            ..GuildSettings::default()
        };
        assert!(matches!(
            check(&spec("a fox"), &s),
            Err(Refusal::ChannelNotAllowed { .. })
        ));
        let s = GuildSettings {
            blocked_words: vec!["wolf".into()],
            max_prompt_len: 10,
            ..GuildSettings::default()
        };
        assert_eq!(check(&spec("  "), &s), Err(Refusal::EmptyPrompt));
        assert_eq!(
            check(&spec("a very long fox"), &s),
            Err(Refusal::PromptTooLong { len: 15, max: 10 })
        );
        assert_eq!(
            check(&spec("a Wolf"), &s),
            Err(Refusal::BlockedWord {
                word: "wolf".into()
            })
        );
        // A Re-roll's stored expansion meets today's blocked words too.
        let reroll = JobSpec {
            expanded_prompt: Some("a grey wolf howls".into()),
            ..spec("a dog")
        };
        assert!(matches!(
            check(&reroll, &s),
            Err(Refusal::BlockedWord { .. })
        ));
    }

    #[test]
    fn model_kind_and_steps_are_checked() {
        let s = GuildSettings::default();
        let t2v512 = JobSpec {
            variant: Variant::T2v512,
            ..spec("a fox")
        };
        assert!(matches!(
            check(&t2v512, &s),
            Err(Refusal::ModelNotLoaded { .. })
        ));
        let wrong = JobSpec {
            variant: Variant::TinyI2v,
            ..spec("a fox")
        };
        assert_eq!(
            check(&wrong, &s),
            Err(Refusal::Invalid(
                "the model `tiny-i2v` needs an input image".into()
            ))
        );
        let no_image = JobSpec {
            kind: JobKind::ImageToVideo,
            variant: Variant::TinyI2v,
            ..spec("a fox")
        };
        assert!(matches!(check(&no_image, &s), Err(Refusal::Invalid(_))));
        let too_many = JobSpec {
            steps: 101,
            ..spec("a fox")
        };
        assert_eq!(
            check(&too_many, &s),
            Err(Refusal::Invalid(
                "steps must be between 1 and 100 on this server".into()
            ))
        );
        let bad_cfg = JobSpec {
            cfg: 99.0,
            ..spec("a fox")
        };
        let refused = check(&bad_cfg, &s).unwrap_err().to_string();
        assert!(refused.starts_with(char::is_uppercase), "{refused}");
    }

    fn i2v(image: Vec<u8>) -> JobSpec {
        JobSpec {
            kind: JobKind::ImageToVideo,
            variant: Variant::TinyI2v,
            image: Some(image),
            ..spec("the clouds drift")
        }
    }

    fn encoded(format: image::ImageFormat) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(8, 8, image::Rgb([20, 90, 200]))
            .write_to(&mut out, format)
            .unwrap();
        out.into_inner()
    }

    /// Rewrites the PNG chunk `kind` with `edit` applied to its data and a correct CRC, so
    /// the decoder gets past the checksum to the crafted content.
    fn patch_png_chunk(png: &mut Vec<u8>, kind: &[u8; 4], edit: impl Fn(&mut Vec<u8>)) {
        let mut at = 8;
        while at + 8 <= png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            if &png[at + 4..at + 8] == kind {
                let mut data = png[at + 8..at + 8 + len].to_vec();
                edit(&mut data);
                let mut crc = flate2::Crc::new();
                crc.update(kind);
                crc.update(&data);
                let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
                chunk.extend_from_slice(kind);
                chunk.extend_from_slice(&data);
                chunk.extend_from_slice(&crc.sum().to_be_bytes());
                png.splice(at..at + 12 + len, chunk);
                return;
            }
            at += 12 + len;
        }
        panic!("no {kind:?} chunk");
    }

    #[test]
    fn a_header_claiming_huge_dimensions_is_refused_without_decoding() {
        let mut png = encoded(image::ImageFormat::Png);
        patch_png_chunk(&mut png, b"IHDR", |d| {
            d[0..4].copy_from_slice(&60_000u32.to_be_bytes());
            d[4..8].copy_from_slice(&60_000u32.to_be_bytes());
        });
        let refused = check(&i2v(png), &GuildSettings::default()).unwrap_err();
        // The size the file claims is named: it came from the header, not from a decoder
        // that ran out of its allocation limit.
        assert_eq!(
            refused.to_string(),
            "The image is 60000×60000; at most 8192 pixels a side are accepted"
        );

        let mut jpeg = encoded(image::ImageFormat::Jpeg);
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpeg[sof + 5..sof + 7].copy_from_slice(&60_000u16.to_be_bytes());
        jpeg[sof + 7..sof + 9].copy_from_slice(&60_000u16.to_be_bytes());
        let refused = check(&i2v(jpeg), &GuildSettings::default()).unwrap_err();
        assert!(refused.to_string().contains("60000×60000"), "{refused}");
    }

    #[test]
    fn submit_reads_only_the_image_header() {
        assert_eq!(
            check(
                &i2v(encoded(image::ImageFormat::Png)),
                &GuildSettings::default()
            ),
            Ok(())
        );
        // A sound header over pixel data no decoder can read: validation passes because it
        // does not decode (the Discord download check and the runner do, off the async
        // threads); a full decode here would refuse it.
        let mut png = encoded(image::ImageFormat::Png);
        patch_png_chunk(&mut png, b"IDAT", |d| d.iter_mut().for_each(|b| *b = 0));
        assert!(crate::engine::image_input::decode_image(&png, &ImageLimits::default()).is_err());
        assert_eq!(check(&i2v(png), &GuildSettings::default()), Ok(()));
        // What is not an image at all is still refused by its header.
        let refused = check(&i2v(b"GIF89a but not".to_vec()), &GuildSettings::default());
        assert!(matches!(refused, Err(Refusal::Invalid(_))), "{refused:?}");
    }

    #[test]
    fn options_override_the_defaults() {
        let mut s = spec("a fox");
        let o = RequestOptions {
            negative: Some("  ".into()),
            seed: Some(MAX_SEED),
            steps: Some(9),
            cfg: Some(3.0),
            eta: Some(0.0),
            fps: Some(12),
            variant: Some("tiny".into()),
            expand: None,
        };
        s.expand = true;
        apply_options(&mut s, &o, &LOADED, false).unwrap();
        assert_eq!(s.negative, None);
        assert_eq!(
            (s.seed, s.steps, s.cfg, s.eta, s.fps),
            (MAX_SEED, 9, 3.0, 0.0, 12)
        );
        // A guild default of "expand" is dropped where no expander is plugged in.
        assert!(!s.expand);
    }

    #[test]
    fn options_are_refused_with_one_sentence() {
        let refuse = |o: RequestOptions, kind: JobKind, loaded: &[Variant]| {
            let mut s = JobSpec {
                kind,
                ..spec("a fox")
            };
            apply_options(&mut s, &o, loaded, false).unwrap_err()
        };
        let t2v = JobKind::TextToVideo;
        assert_eq!(
            refuse(
                RequestOptions {
                    seed: Some(MAX_SEED + 1),
                    ..Default::default()
                },
                t2v,
                &LOADED
            ),
            format!("The seed must be between 0 and {MAX_SEED}.")
        );
        assert_eq!(
            refuse(
                RequestOptions {
                    variant: Some("vc2".into()),
                    ..Default::default()
                },
                t2v,
                &LOADED
            ),
            "The model `vc2` is not loaded on this bot (loaded: tiny, tiny-i2v)."
        );
        assert_eq!(
            refuse(
                RequestOptions {
                    expand: Some(true),
                    ..Default::default()
                },
                t2v,
                &LOADED
            ),
            "Prompt expansion is not available on this bot."
        );
        assert_eq!(
            refuse(
                RequestOptions {
                    variant: Some("tiny-i2v".into()),
                    ..Default::default()
                },
                t2v,
                &LOADED
            ),
            "The model `tiny-i2v` needs an input image: use /i2v."
        );
        assert_eq!(
            refuse(
                RequestOptions {
                    variant: Some("tiny".into()),
                    ..Default::default()
                },
                JobKind::ImageToVideo,
                &LOADED
            ),
            "The model `tiny` makes videos from text; /i2v needs an image-to-video model."
        );
        assert!(refuse(
            RequestOptions::default(),
            JobKind::ImageToVideo,
            &[Variant::Tiny]
        )
        .starts_with("Image-to-video is not available on this bot"));
    }

    #[test]
    fn image_to_video_runs_on_the_loaded_image_model() {
        let mut s = JobSpec {
            kind: JobKind::ImageToVideo,
            ..spec("a fox")
        };
        apply_options(&mut s, &RequestOptions::default(), &LOADED, false).unwrap();
        assert_eq!(s.variant, Variant::TinyI2v);
    }
}
