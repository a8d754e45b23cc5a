//! `floor33 weights …`: download, convert, locate and check checkpoints.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::DType;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::loader::check_source;
use crate::models::config::Variant;
use crate::weights::{self, locate, WeightSource};

#[derive(Debug, Subcommand)]
pub enum WeightsCommand {
    /// Download a variant's checkpoint from Hugging Face (resumes), then convert it to
    /// safetensors under $FLOOR33_WEIGHTS_DIR (default ./weights) for fast memory-mapped loads.
    Download {
        /// t2v-1024, t2v-512, vc2 or i2v.
        variant: String,
        /// Keep only the downloaded checkpoint, do not convert.
        #[arg(long)]
        no_convert: bool,
        /// Store converted weights as f16 (half the disk and RAM; GPUs compute in f16 anyway).
        #[arg(long)]
        f16: bool,
    },
    /// Convert a model.ckpt (PyTorch pickle) to one safetensors file.
    Convert {
        src: PathBuf,
        dst: PathBuf,
        #[arg(long)]
        f16: bool,
    },
    /// Print where a variant's weights are looked for and which file would be used.
    Path { variant: String },
    /// Check a checkpoint strictly against the model's keys and shapes (reads no tensor data).
    Check {
        variant: String,
        /// Files to check (default: the located ones).
        #[arg(long)]
        weights: Vec<PathBuf>,
    },
}

pub fn run(cmd: WeightsCommand) -> Result<()> {
    match cmd {
        WeightsCommand::Download {
            variant,
            no_convert,
            f16,
        } => download(&variant, no_convert, f16),
        WeightsCommand::Convert { src, dst, f16 } => convert(&src, &dst, f16),
        WeightsCommand::Path { variant } => {
            for path in locate::candidates(&variant) {
                let mark = if path.is_file() { "found" } else { "absent" };
                println!("{mark:6} {}", path.display());
            }
            Ok(())
        }
        WeightsCommand::Check { variant, weights } => {
            let variant = Variant::parse(&variant)?;
            let paths = if weights.is_empty() {
                vec![locate::find(variant.name())?]
            } else {
                weights
            };
            let source = WeightSource::open(&paths)?;
            let tensors = check_source(&variant.config(), &source)?;
            println!(
                "{variant}: all {tensors} tensors the model uses are present with the right shapes"
            );
            Ok(())
        }
    }
}

/// Download (SHA-256 verified by the weights module), then check the checkpoint strictly against
/// the model before and after conversion: a file that does not fit the model is never installed
/// under the weights folder.
fn download(variant: &str, no_convert: bool, f16: bool) -> Result<()> {
    let model = Variant::parse(variant)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let ckpt = runtime.block_on(weights::download_variant(variant, None))?;
    println!("{}", ckpt.display());
    let what_to_do = |path: &Path| {
        format!(
            "{} does not fit the {variant} model. Check the variant name; if it is right, the \
             checkpoint on the Hub is not the one floor33 was built for (delete {} and download \
             again, or report it)",
            path.display(),
            ckpt.display()
        )
    };
    check_file(model, &ckpt).with_context(|| what_to_do(&ckpt))?;
    if no_convert {
        return Ok(());
    }
    let dst = locate::weights_dir()
        .join(variant)
        .join("model.safetensors");
    convert(&ckpt, &dst, f16)?;
    if let Err(e) = check_file(model, &dst) {
        // The converter wrote something the model cannot load: never leave it to be found.
        let _ = std::fs::remove_file(&dst);
        return Err(e.context(format!(
            "converting {} produced a file that does not fit the model; it was deleted. \
             Please report this",
            ckpt.display()
        )));
    }
    println!("{}", dst.display());
    Ok(())
}

/// The strict key/shape check of `weights check` (reads no tensor data).
fn check_file(model: Variant, path: &Path) -> Result<usize> {
    let source = WeightSource::open(&[path])?;
    Ok(check_source(&model.config(), &source)?)
}

fn convert(src: &std::path::Path, dst: &std::path::Path, f16: bool) -> Result<()> {
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("converting {bar:40} {bytes}/{total_bytes}")
            .expect("template"),
    );
    weights::convert_to_safetensors(
        src,
        dst,
        f16.then_some(DType::F16),
        &|_| true,
        |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )
    .with_context(|| format!("converting {} to {}", src.display(), dst.display()))?;
    bar.finish();
    Ok(())
}
