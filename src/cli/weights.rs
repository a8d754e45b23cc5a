//! `floor33 weights …`: download, convert, locate and check checkpoints.

use std::path::PathBuf;

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
        } => {
            let runtime = tokio::runtime::Runtime::new()?;
            let ckpt = runtime.block_on(weights::download_variant(&variant, None))?;
            println!("{}", ckpt.display());
            if !no_convert {
                let dst = locate::weights_dir()
                    .join(&variant)
                    .join("model.safetensors");
                convert(&ckpt, &dst, f16)?;
                println!("{}", dst.display());
            }
            Ok(())
        }
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
