//! Text-to-video pipeline: tokenize → text encoder → DDIM with the UNet → per-frame VAE decode.
//! Owns one loaded model; the actor owns the pipelines and the device.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::error::EngineError;
use super::frame_fit::frame_tensor;
use super::image_input::ImageFit;
use super::request::{GenerationRequest, Limits};
use crate::models::config::ModelConfig;
use crate::models::image_encoder::ImageConditioner;
use crate::models::random_init::RandomWeights;
use crate::models::text_encoder::TextEncoder;
use crate::models::tokenizer::ClipTokenizer;
use crate::models::unet::UNetModel;
use crate::models::vae::AutoencoderKL;
use crate::sampler::ddim::{self, Conditioning, Flow};
use crate::sampler::noise::{NoiseSource, SeededNoise};
use crate::sampler::schedule::{DdimSchedule, NoiseSchedule};
use crate::video::{frames_from_tensor, VideoFrames};

/// Progress after one denoising step.
pub struct StepProgress<'a> {
    /// 1-based.
    pub step: usize,
    pub total: usize,
    pub elapsed: Duration,
    /// Estimated time left, from the mean step time so far (decode excluded).
    pub remaining: Duration,
    /// f32 `(1, 4, t, h, w)` prediction of the clean latents at this step.
    pub pred_x0: &'a Tensor,
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generated {
    pub video: VideoFrames,
    /// Steps actually run (DDIM's uniform schedule can run more than asked, see the sampler).
    pub steps_run: usize,
    /// The prompt was longer than 77 tokens and was cut as the original does.
    pub prompt_truncated: bool,
    pub elapsed: Duration,
    /// How the conditioning image was fitted to the frame (image-to-video only).
    pub image_fit: Option<ImageFit>,
}

/// The networks of one model, each built under its original key prefix.
pub struct Networks {
    pub text_encoder: TextEncoder,
    pub unet: UNetModel,
    pub vae: AutoencoderKL,
    /// Image-to-video only: ViT-H/14 visual tower + Resampler.
    pub image: Option<ImageConditioner>,
}

impl Networks {
    pub fn new(config: &ModelConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Networks {
            text_encoder: TextEncoder::new(vb.pp("cond_stage_model.model"), &config.text)?,
            unet: UNetModel::new(vb.pp("model.diffusion_model"), &config.unet)?,
            vae: AutoencoderKL::new(vb.pp("first_stage_model"), &config.vae)?,
            image: match &config.image {
                Some(image) => Some(ImageConditioner::new(vb.clone(), image)?),
                None => None,
            },
        })
    }
}

pub struct Pipeline {
    config: ModelConfig,
    tokenizer: ClipTokenizer,
    networks: Networks,
    schedule: NoiseSchedule,
    device: Device,
    dtype: DType,
}

impl Pipeline {
    /// Builds from a root VarBuilder whose paths are the original checkpoint keys.
    pub fn from_var_builder(
        config: ModelConfig,
        vb: VarBuilder,
        schedule: NoiseSchedule,
    ) -> Result<Self, EngineError> {
        let networks = Networks::new(&config, vb.clone())
            .map_err(|e| EngineError::BadWeights(e.to_string()))?;
        let tokenizer =
            ClipTokenizer::new().map_err(|e| EngineError::Internal(format!("tokenizer: {e}")))?;
        Ok(Self {
            config,
            tokenizer,
            networks,
            schedule,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    /// A model of `config`'s shapes with deterministic random weights: the `tiny` smoke model,
    /// or full-size shapes for benchmarks.
    pub fn random(config: ModelConfig, device: &Device, dtype: DType) -> Result<Self, EngineError> {
        let schedule = NoiseSchedule::from_config(&config.diffusion);
        let vb = RandomWeights::var_builder(0x0f1_0033, dtype, device);
        Self::from_var_builder(config, vb, schedule)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn unet(&self) -> &UNetModel {
        &self.networks.unet
    }

    /// Text contexts `(n, 77, C)` in the model dtype; also whether any prompt was truncated.
    pub fn encode_prompts(&self, prompts: &[&str]) -> Result<(Tensor, bool), EngineError> {
        let tokens: Vec<_> = prompts.iter().map(|p| self.tokenizer.encode(p)).collect();
        let truncated = tokens.iter().any(|t| t.truncated());
        let rows: Vec<Vec<u32>> = tokens.into_iter().map(|t| t.ids).collect();
        let context = self.networks.text_encoder.encode_ids(&rows, &self.device)?;
        Ok((context, truncated))
    }

    /// Image-to-video models: the request image's tokens and the unconditional (grey image)
    /// tokens, each `(1, 16, C)`, that `generate` appends to the text contexts. `None` for
    /// text-to-video models.
    pub fn image_contexts(
        &self,
        req: &GenerationRequest,
    ) -> Result<Option<(Tensor, Tensor)>, EngineError> {
        let Some(conditioner) = &self.networks.image else {
            return Ok(None);
        };
        let image = req
            .image
            .as_ref()
            .ok_or_else(|| EngineError::BadRequest("this model needs an image".into()))?;
        // The original resizes the input to the frame size before CLIP preprocessing.
        let pixels =
            frame_tensor(image, req.width, req.height, req.image_fit).to_device(&self.device)?;
        let image_tokens = conditioner.embed(&pixels)?;
        let grey_tokens = conditioner.uncond_embed(1, &self.device, self.dtype)?;
        Ok(Some((image_tokens, grey_tokens)))
    }

    /// Runs one request. `on_step` sees every step and may stop the run (then `Cancelled`).
    pub fn generate(
        &self,
        req: &GenerationRequest,
        limits: &Limits,
        on_step: &mut dyn FnMut(StepProgress) -> Flow,
    ) -> Result<Generated, EngineError> {
        self.generate_with_noise(req, limits, &mut SeededNoise::new(req.seed), on_step)
    }

    /// [`Pipeline::generate`] with x_T and the per-step draws taken from `noise` instead of the
    /// request's seed, so a test can replay a reference run's recorded noise.
    pub fn generate_with_noise(
        &self,
        req: &GenerationRequest,
        limits: &Limits,
        noise: &mut dyn NoiseSource,
        on_step: &mut dyn FnMut(StepProgress) -> Flow,
    ) -> Result<Generated, EngineError> {
        limits
            .check(req, &self.config)
            .map_err(EngineError::BadRequest)?;
        let started = Instant::now();
        let prepared = self.prepare(req)?;
        let x_t = noise.next(&self.latent_shape(req).into(), &self.device)?;
        let ddim = DdimSchedule::new(&self.schedule, req.steps, req.eta);
        let cond = prepared.conditioning(req);
        let loop_started = Instant::now();
        let latents = ddim::sample(
            &self.networks.unet,
            &ddim,
            x_t,
            &cond,
            noise,
            &mut |report| on_step(progress(&report, started, loop_started)),
        )?
        .ok_or(EngineError::Cancelled)?;
        self.finish(req, &prepared, &latents, ddim.steps.len(), started)
    }

    /// Runs several requests as one sampler batch: each keeps its own seed, prompts, guidance,
    /// fps and image, and its video equals (up to the floating-point order of a larger batch)
    /// the one it gets alone. `on_step(i, progress)` sees request `i`'s steps and may stop that
    /// request alone (its result is then `Cancelled`); the others finish.
    ///
    /// Requests that fail their own checks get their error and the rest run; requests that are
    /// valid but not [`batch_compatible`] with the first valid one make the whole call an error.
    pub fn generate_batch(
        &self,
        reqs: &[GenerationRequest],
        limits: &Limits,
        on_step: &mut dyn FnMut(usize, StepProgress) -> Flow,
    ) -> Result<Vec<Result<Generated, EngineError>>, EngineError> {
        let started = Instant::now();
        let mut results: Vec<Option<Result<Generated, EngineError>>> = reqs
            .iter()
            .map(|req| {
                let check = limits.check(req, &self.config);
                check.err().map(|e| Err(EngineError::BadRequest(e)))
            })
            .collect();
        let valid: Vec<usize> = (0..reqs.len()).filter(|&i| results[i].is_none()).collect();
        let Some(&first) = valid.first() else {
            return Ok(results.into_iter().flatten().collect());
        };
        if let Some(&odd) = valid
            .iter()
            .find(|&&i| !batch_compatible(&reqs[first], &reqs[i]))
        {
            return Err(EngineError::BadRequest(format!(
                "requests {first} and {odd} cannot share a batch: variant, size, frames, steps \
                 and eta must match"
            )));
        }
        let prepared = valid
            .iter()
            .map(|&i| self.prepare(&reqs[i]))
            .collect::<Result<Vec<_>, _>>()?;
        let mut noises: Vec<SeededNoise> = valid
            .iter()
            .map(|&i| SeededNoise::new(reqs[i].seed))
            .collect();
        let shape: candle_core::Shape = self.latent_shape(&reqs[first]).into();
        let mut jobs = Vec::with_capacity(valid.len());
        for ((&i, prep), noise) in valid.iter().zip(&prepared).zip(noises.iter_mut()) {
            let x_t = noise.next(&shape, &self.device)?;
            jobs.push(ddim::BatchJob {
                x_t,
                cond: prep.conditioning(&reqs[i]),
                noise,
            });
        }
        let ddim = DdimSchedule::new(&self.schedule, reqs[first].steps, reqs[first].eta);
        let loop_started = Instant::now();
        let latents =
            ddim::sample_batch(&self.networks.unet, &ddim, &mut jobs, &mut |j, report| {
                on_step(valid[j], progress(&report, started, loop_started))
            })?;
        for ((&i, prep), latent) in valid.iter().zip(&prepared).zip(latents) {
            results[i] = Some(match latent {
                Some(latent) => self.finish(&reqs[i], prep, &latent, ddim.steps.len(), started),
                None => Err(EngineError::Cancelled),
            });
        }
        Ok(results.into_iter().flatten().collect())
    }

    /// The text (and image) conditioning of one request.
    fn prepare(&self, req: &GenerationRequest) -> Result<Prepared, EngineError> {
        let negative = req.negative.as_deref().unwrap_or("");
        let (contexts, truncated) = self.encode_prompts(&[&req.prompt, negative])?;
        let mut context = contexts.narrow(0, 0, 1)?;
        let mut uncond = contexts.narrow(0, 1, 1)?;
        if let Some((image_tokens, grey_tokens)) = self.image_contexts(req)? {
            context = Tensor::cat(&[&context, &image_tokens.to_dtype(context.dtype())?], 1)?;
            uncond = Tensor::cat(&[&uncond, &grey_tokens.to_dtype(context.dtype())?], 1)?;
        }
        Ok(Prepared {
            context,
            uncond,
            truncated,
        })
    }

    /// `(1, 4, t, h, w)` latents of `req`.
    fn latent_shape(&self, req: &GenerationRequest) -> (usize, usize, usize, usize, usize) {
        let factor = self.config.vae.downsample_factor();
        (
            1,
            self.config.unet.in_channels,
            req.frames,
            req.height / factor,
            req.width / factor,
        )
    }

    /// Decodes one request's final latents into its result.
    fn finish(
        &self,
        req: &GenerationRequest,
        prepared: &Prepared,
        latents: &Tensor,
        steps_run: usize,
        started: Instant,
    ) -> Result<Generated, EngineError> {
        let video = self.decode(latents)?;
        Ok(Generated {
            video: frames_from_tensor(&video.get(0)?, self.config.defaults.save_fps)
                .map_err(|e| EngineError::Internal(e.to_string()))?,
            steps_run,
            prompt_truncated: prepared.truncated,
            elapsed: started.elapsed(),
            image_fit: self.networks.image.as_ref().map(|_| req.image_fit),
        })
    }

    /// f32 latents `(b, 4, t, h, w)` to a `(b, 3, t, H, W)` video in [-1, 1]-ish (f32).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor, EngineError> {
        // The decoder takes f32 latents and returns f32 whatever its own dtype.
        let video = self.networks.vae.decode_video(latents)?;
        Ok(video.to_dtype(DType::F32)?)
    }

    /// Decodes the middle frame of a latent prediction: a faithful, cheap progress preview.
    pub fn preview_frame(&self, pred_x0: &Tensor) -> Result<image::RgbImage, EngineError> {
        let middle = pred_x0.dim(2)? / 2;
        let latent = pred_x0.narrow(2, middle, 1)?;
        let frame = self.decode(&latent)?.get(0)?;
        let frames =
            frames_from_tensor(&frame, 1).map_err(|e| EngineError::Internal(e.to_string()))?;
        frames
            .frames
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::Internal("empty preview".into()))
    }
}

/// Whether two requests can share one sampler batch: the same model, latent shape and DDIM
/// schedule. Seeds, prompts, guidance, fps and images may differ.
pub fn batch_compatible(a: &GenerationRequest, b: &GenerationRequest) -> bool {
    a.variant == b.variant
        && (a.height, a.width, a.frames, a.steps) == (b.height, b.width, b.frames, b.steps)
        && a.eta.to_bits() == b.eta.to_bits()
}

/// A request's conditioning, computed once before sampling.
struct Prepared {
    context: Tensor,
    uncond: Tensor,
    truncated: bool,
}

impl Prepared {
    fn conditioning(&self, req: &GenerationRequest) -> Conditioning<'_> {
        Conditioning {
            context: &self.context,
            uncond_context: Some(&self.uncond),
            guidance_scale: req.cfg,
            fps: req.fps as f64,
        }
    }
}

/// The progress report of one step of a run that started at `started` (sampling at
/// `loop_started`).
fn progress<'a>(
    report: &ddim::StepReport<'a>,
    started: Instant,
    loop_started: Instant,
) -> StepProgress<'a> {
    let step = report.index + 1;
    let elapsed = loop_started.elapsed();
    let remaining = elapsed.mul_f64((report.total - step) as f64 / step as f64);
    StepProgress {
        step,
        total: report.total,
        elapsed: started.elapsed(),
        remaining,
        pred_x0: report.pred_x0,
    }
}
