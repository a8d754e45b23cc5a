//! What a caller asks the engine for, and the checks that turn an absurd request into a clear
//! `BadRequest` before any GPU time is spent.

use std::sync::Arc;

use image::RgbImage;

use super::image_input::ImageFit;
use crate::models::config::{ModelConfig, Variant};

/// One text-to-video (or, with `image`, image-to-video) generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    pub variant: Variant,
    pub prompt: String,
    /// Replaces the empty prompt as the unconditional branch of guidance.
    pub negative: Option<String>,
    pub seed: u64,
    pub steps: usize,
    pub cfg: f64,
    pub eta: f64,
    /// fps conditioning of the UNet (ignored by t2v-512, which has none).
    pub fps: u32,
    pub height: usize,
    pub width: usize,
    pub frames: usize,
    /// The conditioning image of image-to-video models (already decoded and upright).
    pub image: Option<Arc<RgbImage>>,
    pub image_fit: ImageFit,
}

impl GenerationRequest {
    /// A request with the original scripts' defaults for `variant`.
    pub fn with_defaults(variant: Variant, prompt: impl Into<String>, seed: u64) -> Self {
        let d = variant.config().defaults;
        GenerationRequest {
            variant,
            prompt: prompt.into(),
            negative: None,
            seed,
            steps: d.steps,
            cfg: d.cfg,
            eta: d.eta,
            fps: d.fps,
            height: d.height,
            width: d.width,
            frames: d.frames,
            image: None,
            image_fit: ImageFit::default(),
        }
    }
}

/// Bounds on request parameters. The defaults admit everything the original scripts and demos
/// use, and refuse what would only waste a GPU (or could never fit on one).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_steps: usize,
    pub max_side: usize,
    pub max_frames: usize,
    pub cfg_range: (f64, f64),
    pub fps_range: (u32, u32),
    pub max_prompt_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_steps: 200,
            max_side: 1024,
            max_frames: 32,
            cfg_range: (1.0, 30.0),
            fps_range: (1, 60),
            max_prompt_chars: 2000,
        }
    }
}

impl Limits {
    /// Checks `req` against these limits and the model's shape constraints. The message is
    /// written for the person who made the request.
    pub fn check(&self, req: &GenerationRequest, model: &ModelConfig) -> Result<(), String> {
        self.check_with_image(req, req.image.is_some(), model)
    }

    /// [`check`](Self::check) for a request whose image is not decoded yet (a job at submit):
    /// `has_image` says whether one will come. Only the image's presence is checked here.
    pub fn check_with_image(
        &self,
        req: &GenerationRequest,
        has_image: bool,
        model: &ModelConfig,
    ) -> Result<(), String> {
        match (model.variant.is_image_to_video(), has_image) {
            (true, false) => return Err(format!("the {} model needs an image", model.variant)),
            (false, true) => {
                return Err(format!(
                "the {} model makes videos from text only; use an image-to-video model for images",
                model.variant
            ))
            }
            _ => {}
        }
        if req.prompt.trim().is_empty() {
            return Err("the prompt is empty".into());
        }
        if req.prompt.chars().count() > self.max_prompt_chars {
            return Err(format!(
                "the prompt is longer than {} characters",
                self.max_prompt_chars
            ));
        }
        // The negative prompt reaches the same tokenizer: the same bound.
        if req
            .negative
            .as_ref()
            .is_some_and(|n| n.chars().count() > self.max_prompt_chars)
        {
            return Err(format!(
                "the negative prompt is longer than {} characters",
                self.max_prompt_chars
            ));
        }
        if req.steps == 0 || req.steps > self.max_steps {
            return Err(format!("steps must be between 1 and {}", self.max_steps));
        }
        if !(self.cfg_range.0..=self.cfg_range.1).contains(&req.cfg) || !req.cfg.is_finite() {
            return Err(format!(
                "cfg must be between {} and {}",
                self.cfg_range.0, self.cfg_range.1
            ));
        }
        if !(0.0..=1.0).contains(&req.eta) {
            return Err("eta must be between 0 and 1".into());
        }
        if !(self.fps_range.0..=self.fps_range.1).contains(&req.fps) {
            return Err(format!(
                "fps must be between {} and {}",
                self.fps_range.0, self.fps_range.1
            ));
        }
        if req.frames == 0 || req.frames > self.max_frames {
            return Err(format!("frames must be between 1 and {}", self.max_frames));
        }
        let multiple = model.size_multiple();
        for (name, value) in [("height", req.height), ("width", req.width)] {
            if value == 0 || value > self.max_side {
                return Err(format!(
                    "{name} must be between {multiple} and {}",
                    self.max_side
                ));
            }
            if value % multiple != 0 {
                return Err(format!(
                    "{name} {value} is not a multiple of {multiple} (the {} model needs sizes in steps of {multiple} pixels)",
                    model.variant
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_absurd_values_are_refused() {
        let limits = Limits::default();
        for variant in [
            Variant::T2v1024,
            Variant::T2v512,
            Variant::Vc2,
            Variant::Tiny,
        ] {
            let req = GenerationRequest::with_defaults(variant, "a cat", 1);
            assert_eq!(limits.check(&req, &variant.config()), Ok(()), "{variant}");
        }
        let cfg = Variant::Vc2.config();
        let base = GenerationRequest::with_defaults(Variant::Vc2, "a cat", 1);
        let bad = [
            GenerationRequest {
                width: 500,
                ..base.clone()
            },
            GenerationRequest {
                height: 4096,
                ..base.clone()
            },
            GenerationRequest {
                steps: 0,
                ..base.clone()
            },
            GenerationRequest {
                cfg: f64::NAN,
                ..base.clone()
            },
            GenerationRequest {
                eta: 1.5,
                ..base.clone()
            },
            GenerationRequest {
                frames: 1000,
                ..base.clone()
            },
            GenerationRequest {
                prompt: "   ".into(),
                ..base.clone()
            },
            GenerationRequest {
                negative: Some("blurry ".repeat(20_000)),
                ..base.clone()
            },
        ];
        for req in bad {
            assert!(limits.check(&req, &cfg).is_err(), "{req:?}");
        }
        let msg = limits
            .check(&GenerationRequest { width: 500, ..base }, &cfg)
            .unwrap_err();
        assert!(msg.contains("multiple of 64"), "{msg}");
    }
}
