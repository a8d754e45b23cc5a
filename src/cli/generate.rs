//! `floor33 generate`: one request through the engine actor, with a progress bar, to MP4.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::DeviceArgs;
use crate::engine::image_input::{decode_image, ImageFit, ImageLimits};
use crate::engine::loader;
use crate::engine::{EngineHandle, GenerationRequest, JobOptions, Limits};
use crate::models::config::Variant;
use crate::video::{encode_mp4, EncodeOptions};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// t2v-1024, t2v-512, vc2, i2v, or tiny / tiny-i2v (random weights: smoke tests of the
    /// pipeline, not models).
    #[arg(long, default_value = "vc2")]
    pub variant: String,
    #[arg(long)]
    pub prompt: String,
    /// Input image for image-to-video (PNG, JPEG, WebP, GIF, BMP).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// How the image is fitted to the frame: crop (centre-crop, keeps proportions) or stretch
    /// (what the original script does).
    #[arg(long, default_value = "crop", value_parser = ["crop", "stretch"])]
    pub fit: String,
    /// Negative prompt (replaces the empty prompt in classifier-free guidance).
    #[arg(long)]
    pub negative: Option<String>,
    /// Random seed; printed when not given.
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale.
    #[arg(long)]
    pub cfg: Option<f64>,
    /// DDIM eta (0 deterministic, 1 the original default).
    #[arg(long)]
    pub eta: Option<f64>,
    /// fps conditioning of the model.
    #[arg(long)]
    pub fps: Option<u32>,
    #[arg(long)]
    pub height: Option<usize>,
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long)]
    pub frames: Option<usize>,
    /// Frame rate of the written MP4 (default: the original scripts' 10).
    #[arg(long, value_parser = clap::value_parser!(u32).range(range_i64(&crate::video::mp4::FPS_RANGE)))]
    pub save_fps: Option<u32>,
    /// Checkpoint files (model.ckpt or .safetensors); default: see `floor33 weights path`.
    #[arg(long)]
    pub weights: Vec<PathBuf>,
    #[command(flatten)]
    pub compute: DeviceArgs,
    /// x264 constant rate factor (1..=51, lower is better).
    #[arg(long, default_value_t = 18, value_parser = clap::value_parser!(u8).range(range_i64(&crate::video::mp4::CRF_RANGE)))]
    pub crf: u8,
    #[arg(long, short)]
    pub out: PathBuf,
}

/// A range for clap's integer value parsers.
fn range_i64<T: Copy + Into<i64>>(
    r: &std::ops::RangeInclusive<T>,
) -> std::ops::RangeInclusive<i64> {
    (*r.start()).into()..=(*r.end()).into()
}

/// What can be checked without the model: the output path (the request itself is checked by
/// the engine's limits right after it is built, also before any work).
fn check_output(out: &std::path::Path) -> Result<()> {
    if out.is_dir() {
        anyhow::bail!(
            "--out {} is a directory; give a file name such as out.mp4",
            out.display()
        );
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !parent.is_dir() {
        anyhow::bail!("--out: the directory {} does not exist", parent.display());
    }
    Ok(())
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let variant = Variant::parse(&args.variant)?;
    check_output(&args.out)?;
    let defaults = GenerationRequest::with_defaults(variant, args.prompt.clone(), 0);
    let seed = args.seed.unwrap_or_else(random_seed);
    let request = GenerationRequest {
        negative: args.negative.clone(),
        seed,
        steps: args.steps.unwrap_or(defaults.steps),
        cfg: args.cfg.unwrap_or(defaults.cfg),
        eta: args.eta.unwrap_or(defaults.eta),
        fps: args.fps.unwrap_or(defaults.fps),
        height: args.height.unwrap_or(defaults.height),
        width: args.width.unwrap_or(defaults.width),
        frames: args.frames.unwrap_or(defaults.frames),
        image: match &args.image {
            Some(path) => {
                let bytes =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let image = decode_image(&bytes, &ImageLimits::default())
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                Some(std::sync::Arc::new(image))
            }
            None => None,
        },
        image_fit: if args.fit == "stretch" {
            ImageFit::Stretch
        } else {
            ImageFit::CentreCrop
        },
        ..defaults
    };
    let limits = Limits::default();
    limits
        .check(&request, &variant.config())
        .map_err(anyhow::Error::msg)?;
    if variant.is_random_smoke_model() {
        eprintln!(
            "note: `tiny` is a random-weight smoke model: it tests the pipeline, it draws noise"
        );
    }
    eprintln!("seed {seed}");

    let (device, dtype) = args.compute.select()?;
    let weights = args.weights.clone();
    let spinner = ProgressBar::new_spinner().with_message(format!("loading {variant}"));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let engine = EngineHandle::spawn(
        move || {
            let pipeline = loader::load_pipeline(variant, &weights, &device, dtype)?;
            Ok(vec![pipeline])
        },
        limits,
    )?;
    spinner.finish_and_clear();

    let bar = ProgressBar::new(request.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} step {pos}/{len} {elapsed_precise} (ETA {msg})")
            .expect("static template"),
    );
    let job = engine.submit(
        request.clone(),
        JobOptions {
            preview_every: None,
        },
    );
    let generated = job.wait_blocking(|p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.step as u64);
        bar.set_message(format!("{:.0}s", p.remaining.as_secs_f64()));
    })?;
    bar.finish();
    if let Some(fit) = generated.image_fit {
        eprintln!("image fitted to the frame by {}", fit.name());
    }
    if generated.prompt_truncated {
        eprintln!(
            "note: the prompt is longer than 77 tokens and was cut, as the original model does"
        );
    }
    let mut video = generated.video;
    if let Some(fps) = args.save_fps {
        video.fps = fps;
    }
    let options = EncodeOptions {
        crf: args.crf,
        ..EncodeOptions::default()
    };
    let report = encode_mp4(&video, &options, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} ({}x{}, {} frames, {} bytes) in {:.1}s",
        args.out.display(),
        report.width,
        report.height,
        report.frames,
        report.bytes,
        generated.elapsed.as_secs_f64()
    );
    Ok(())
}

fn random_seed() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Keep seeds short enough to type back into Discord.
    nanos % 4_294_967_296
}
