//! Model configurations: one constructor per released VideoCrafter checkpoint, plus loading the
//! same structs from a golden fixture's `config.json` so that tests build tiny models of any shape.
//!
//! Field names follow the original YAML configs (`configs/inference_*.yaml`) so that a value can be
//! checked against the original at a glance.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The models floor33 can run. `Tiny` is a random-weight smoke model built in code, not a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// VideoCrafter1 text-to-video 576×1024 (`inference_t2v_1024_v1.0.yaml`).
    T2v1024,
    /// VideoCrafter1 text-to-video 320×512, current config of the re-uploaded checkpoint.
    T2v512,
    /// VideoCrafter2 text-to-video 320×512.
    Vc2,
    /// VideoCrafter1 image-to-video 320×512.
    I2v,
    /// Random weights, tiny shapes: exercises the whole pipeline without downloading anything.
    Tiny,
    /// The image-to-video counterpart of `Tiny`.
    TinyI2v,
}

impl Variant {
    pub const ALL: [Variant; 6] = [
        Variant::T2v1024,
        Variant::T2v512,
        Variant::Vc2,
        Variant::I2v,
        Variant::Tiny,
        Variant::TinyI2v,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::T2v1024 => "t2v-1024",
            Variant::T2v512 => "t2v-512",
            Variant::Vc2 => "vc2",
            Variant::I2v => "i2v",
            Variant::Tiny => "tiny",
            Variant::TinyI2v => "tiny-i2v",
        }
    }

    pub fn parse(name: &str) -> Result<Variant> {
        Variant::ALL
            .into_iter()
            .find(|v| v.name() == name)
            .with_context(|| {
                let names: Vec<_> = Variant::ALL.iter().map(|v| v.name()).collect();
                format!("unknown variant `{name}` (known: {})", names.join(", "))
            })
    }

    pub fn is_image_to_video(self) -> bool {
        matches!(self, Variant::I2v | Variant::TinyI2v)
    }

    /// Random-weight smoke models, which need no checkpoint.
    pub fn is_random_smoke_model(self) -> bool {
        matches!(self, Variant::Tiny | Variant::TinyI2v)
    }

    /// The configuration of the released checkpoint (or of the tiny smoke model).
    pub fn config(self) -> ModelConfig {
        match self {
            Variant::T2v1024 => ModelConfig::t2v_1024(),
            Variant::T2v512 => ModelConfig::t2v_512(),
            Variant::Vc2 => ModelConfig::vc2(),
            Variant::I2v => ModelConfig::i2v(),
            Variant::Tiny => ModelConfig::tiny(),
            Variant::TinyI2v => ModelConfig::tiny_i2v(),
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn default_true() -> bool {
    true
}

/// `lvdm.modules.networks.openaimodel3d.UNetModel` parameters.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub model_channels: usize,
    pub attention_resolutions: Vec<usize>,
    pub num_res_blocks: usize,
    pub channel_mult: Vec<usize>,
    pub num_head_channels: usize,
    #[serde(default = "one")]
    pub transformer_depth: usize,
    pub context_dim: usize,
    #[serde(default = "default_true")]
    pub use_linear: bool,
    #[serde(default)]
    pub temporal_conv: bool,
    #[serde(default = "default_true")]
    pub temporal_attention: bool,
    #[serde(default = "default_true")]
    pub temporal_selfatt_only: bool,
    #[serde(default)]
    pub use_relative_position: bool,
    #[serde(default)]
    pub use_causal_attention: bool,
    pub temporal_length: usize,
    #[serde(default = "default_true")]
    pub addition_attention: bool,
    #[serde(default)]
    pub fps_cond: bool,
    #[serde(default)]
    pub use_image_attention: bool,
}

fn one() -> usize {
    1
}

impl UNetConfig {
    /// The shape shared by all four released UNets; the variants differ only in the flags.
    fn released(temporal_conv: bool, relative: bool, fps_cond: bool, image_attn: bool) -> Self {
        UNetConfig {
            in_channels: 4,
            out_channels: 4,
            model_channels: 320,
            attention_resolutions: vec![4, 2, 1],
            num_res_blocks: 2,
            channel_mult: vec![1, 2, 4, 4],
            num_head_channels: 64,
            transformer_depth: 1,
            context_dim: 1024,
            use_linear: true,
            temporal_conv,
            temporal_attention: true,
            temporal_selfatt_only: true,
            use_relative_position: relative,
            use_causal_attention: false,
            temporal_length: 16,
            addition_attention: true,
            fps_cond,
            use_image_attention: image_attn,
        }
    }

    pub fn time_embed_dim(&self) -> usize {
        self.model_channels * 4
    }

    /// Latent height and width must survive `len(channel_mult) - 1` halvings without rounding,
    /// or the skip connections no longer line up.
    pub fn latent_multiple(&self) -> usize {
        1 << (self.channel_mult.len() - 1)
    }
}

/// `ddconfig` of the AutoencoderKL (Stable Diffusion layout).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct DdConfig {
    pub double_z: bool,
    pub z_channels: usize,
    pub in_channels: usize,
    pub out_ch: usize,
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    #[serde(default)]
    pub attn_resolutions: Vec<usize>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct VaeConfig {
    pub embed_dim: usize,
    pub ddconfig: DdConfig,
    pub scale_factor: f64,
}

impl VaeConfig {
    fn released() -> Self {
        VaeConfig {
            embed_dim: 4,
            ddconfig: DdConfig {
                double_z: true,
                z_channels: 4,
                in_channels: 3,
                out_ch: 3,
                ch: 128,
                ch_mult: vec![1, 2, 4, 4],
                num_res_blocks: 2,
                attn_resolutions: vec![],
            },
            scale_factor: 0.18215,
        }
    }

    /// Pixels per latent cell along each axis.
    pub fn downsample_factor(&self) -> usize {
        1 << (self.ddconfig.ch_mult.len() - 1)
    }
}

/// The OpenCLIP text tower as FrozenOpenCLIPEmbedder(layer="penultimate") uses it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TextEncoderConfig {
    pub width: usize,
    pub heads: usize,
    pub layers: usize,
    pub vocab_size: usize,
    pub context_length: usize,
}

impl TextEncoderConfig {
    fn vit_h14() -> Self {
        TextEncoderConfig {
            width: 1024,
            heads: 16,
            layers: 24,
            vocab_size: 49408,
            context_length: 77,
        }
    }

    /// "penultimate": every block but the last runs, then ln_final.
    pub fn layers_run(&self) -> usize {
        self.layers - 1
    }
}

/// Noise schedule and the `scale_arr` correction of LatentDiffusion.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct DiffusionConfig {
    pub timesteps: usize,
    pub linear_start: f64,
    pub linear_end: f64,
    pub scale_factor: f64,
    pub use_scale: bool,
    #[serde(default)]
    pub scale_a: Option<f64>,
    #[serde(default)]
    pub scale_b: Option<f64>,
    #[serde(default)]
    pub mid_step: Option<usize>,
    #[serde(default)]
    pub scale_arr_len: Option<usize>,
}

impl DiffusionConfig {
    fn released(scale_b: Option<f64>, scale_arr_len: usize) -> Self {
        DiffusionConfig {
            timesteps: 1000,
            linear_start: 0.00085,
            linear_end: 0.012,
            scale_factor: 0.18215,
            use_scale: scale_b.is_some(),
            scale_a: scale_b.map(|_| 1.0),
            scale_b,
            mid_step: scale_b.map(|_| 400),
            scale_arr_len: scale_b.map(|_| scale_arr_len),
        }
    }
}

/// Sampling defaults of the original scripts for this model.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingDefaults {
    pub height: usize,
    pub width: usize,
    pub frames: usize,
    pub steps: usize,
    pub eta: f64,
    pub cfg: f64,
    /// The fps the UNet is conditioned on (ignored by models without `fps_cond`).
    pub fps: u32,
    /// Frame rate of the written MP4.
    pub save_fps: u32,
}

/// i2v image conditioning: OpenCLIP ViT visual tower + Resampler.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct VisionEncoderConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub heads: usize,
    pub layers: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ResamplerConfig {
    pub dim: usize,
    pub depth: usize,
    pub dim_head: usize,
    pub heads: usize,
    pub embedding_dim: usize,
    pub output_dim: usize,
    pub ff_mult: usize,
    pub num_queries: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageConditioningConfig {
    pub vision: VisionEncoderConfig,
    pub resampler: ResamplerConfig,
}

/// Everything needed to build and sample one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub variant: Variant,
    pub unet: UNetConfig,
    pub vae: VaeConfig,
    pub text: TextEncoderConfig,
    pub diffusion: DiffusionConfig,
    pub image: Option<ImageConditioningConfig>,
    pub defaults: SamplingDefaults,
}

impl ModelConfig {
    pub fn t2v_1024() -> Self {
        ModelConfig {
            variant: Variant::T2v1024,
            unet: UNetConfig::released(false, true, true, false),
            vae: VaeConfig::released(),
            text: TextEncoderConfig::vit_h14(),
            diffusion: DiffusionConfig::released(Some(0.3), 1000),
            image: None,
            defaults: SamplingDefaults {
                height: 576,
                width: 1024,
                frames: 16,
                steps: 50,
                eta: 1.0,
                cfg: 12.0,
                fps: 28,
                save_fps: 10,
            },
        }
    }

    pub fn t2v_512() -> Self {
        ModelConfig {
            variant: Variant::T2v512,
            unet: UNetConfig::released(false, true, false, false),
            diffusion: DiffusionConfig::released(None, 0),
            defaults: SamplingDefaults {
                height: 320,
                width: 512,
                fps: 24,
                ..ModelConfig::t2v_1024().defaults
            },
            ..ModelConfig::t2v_1024()
        }
    }

    pub fn vc2() -> Self {
        ModelConfig {
            variant: Variant::Vc2,
            unet: UNetConfig::released(true, false, true, false),
            diffusion: DiffusionConfig::released(Some(0.7), 1400),
            defaults: SamplingDefaults {
                height: 320,
                width: 512,
                fps: 28,
                ..ModelConfig::t2v_1024().defaults
            },
            ..ModelConfig::t2v_1024()
        }
    }

    pub fn i2v() -> Self {
        ModelConfig {
            variant: Variant::I2v,
            unet: UNetConfig::released(true, false, true, true),
            image: Some(ImageConditioningConfig {
                vision: VisionEncoderConfig {
                    image_size: 224,
                    patch_size: 14,
                    width: 1280,
                    heads: 16,
                    layers: 32,
                },
                resampler: ResamplerConfig {
                    dim: 1024,
                    depth: 4,
                    dim_head: 64,
                    heads: 12,
                    embedding_dim: 1280,
                    output_dim: 1024,
                    ff_mult: 4,
                    num_queries: 16,
                },
            }),
            defaults: SamplingDefaults {
                fps: 8,
                ..ModelConfig::vc2().defaults
            },
            ..ModelConfig::vc2()
        }
    }

    /// Random-weight smoke model: the VC2 architecture at toy width (as in the golden fixtures),
    /// a 2× VAE, 32×48 pixels. Produces coloured noise, quickly, on a CPU.
    pub fn tiny() -> Self {
        ModelConfig {
            variant: Variant::Tiny,
            unet: UNetConfig {
                model_channels: 32,
                attention_resolutions: vec![1],
                num_res_blocks: 1,
                channel_mult: vec![1, 1],
                num_head_channels: 8,
                context_dim: 32,
                ..UNetConfig::released(true, false, true, false)
            },
            vae: VaeConfig {
                ddconfig: DdConfig {
                    ch: 32,
                    ch_mult: vec![1, 2],
                    num_res_blocks: 1,
                    ..VaeConfig::released().ddconfig
                },
                ..VaeConfig::released()
            },
            text: TextEncoderConfig {
                width: 32,
                heads: 2,
                layers: 3,
                ..TextEncoderConfig::vit_h14()
            },
            diffusion: DiffusionConfig::released(Some(0.7), 1400),
            image: None,
            defaults: SamplingDefaults {
                height: 32,
                width: 48,
                frames: 16,
                steps: 10,
                eta: 1.0,
                cfg: 12.0,
                fps: 28,
                save_fps: 10,
            },
        }
    }

    /// `tiny` with the i2v additions: image cross-attention, a toy ViT and Resampler.
    pub fn tiny_i2v() -> Self {
        let tiny = ModelConfig::tiny();
        ModelConfig {
            variant: Variant::TinyI2v,
            unet: UNetConfig {
                use_image_attention: true,
                ..tiny.unet.clone()
            },
            image: Some(ImageConditioningConfig {
                vision: VisionEncoderConfig {
                    image_size: 224,
                    patch_size: 14,
                    width: 48,
                    heads: 3,
                    layers: 2,
                },
                resampler: ResamplerConfig {
                    dim: 32,
                    depth: 2,
                    dim_head: 8,
                    heads: 3,
                    embedding_dim: 48,
                    output_dim: tiny.unet.context_dim,
                    ff_mult: 4,
                    num_queries: 16,
                },
            }),
            defaults: SamplingDefaults {
                fps: 8,
                ..tiny.defaults.clone()
            },
            ..tiny
        }
    }

    /// Builds the configuration of a golden fixture folder's `config_<variant>.json`.
    pub fn from_fixture_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading fixture config {}", path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing fixture config {}", path.display()))?;
        let field = |name: &str| {
            json.get(name)
                .cloned()
                .with_context(|| format!("{} has no `{name}`", path.display()))
        };
        let variant = match field("variant")?.as_str() {
            Some("vc1_1024") => Variant::T2v1024,
            Some("vc1_512") => Variant::T2v512,
            Some("vc2") => Variant::Vc2,
            Some("i2v") => Variant::I2v,
            other => bail!("unknown fixture variant {other:?}"),
        };
        let unet: UNetConfig = serde_json::from_value(field("unet")?)?;
        let vae: VaeConfig = serde_json::from_value(field("vae")?)?;
        let text: TextEncoderConfig = serde_json::from_value(field("text_encoder")?)?;
        let diffusion: DiffusionConfig = serde_json::from_value(field("diffusion")?)?;
        let image = if variant == Variant::I2v {
            Some(ImageConditioningConfig {
                vision: serde_json::from_value(field("vision_encoder")?)?,
                resampler: serde_json::from_value(field("resampler")?)?,
            })
        } else {
            None
        };
        let sampling = field("sampling")?;
        let hw = &sampling["pixel_hw"];
        let defaults = SamplingDefaults {
            height: hw[0].as_u64().unwrap_or(0) as usize,
            width: hw[1].as_u64().unwrap_or(0) as usize,
            frames: sampling["frames"].as_u64().unwrap_or(16) as usize,
            steps: sampling["ddim_steps"].as_u64().unwrap_or(50) as usize,
            eta: 1.0,
            cfg: 12.0,
            fps: sampling["fps_ddim"].as_u64().unwrap_or(24) as u32,
            save_fps: 10,
        };
        Ok(ModelConfig {
            variant,
            unet,
            vae,
            text,
            diffusion,
            image,
            defaults,
        })
    }

    /// Pixel sizes must map onto whole latent cells at every UNet level.
    pub fn size_multiple(&self) -> usize {
        self.vae.downsample_factor() * self.unet.latent_multiple()
    }
}
