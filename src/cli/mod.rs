//! Command-line interface: one file per subcommand.

mod bench;
mod generate;
mod serve;
mod weights;

use anyhow::Result;
use clap::{Parser, Subcommand};

pub use generate::GenerateArgs;

#[derive(Debug, Parser)]
#[command(
    name = "floor33",
    version,
    about = "VideoCrafter text-to-video in Rust, for Discord"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate one video and write it as MP4.
    Generate(Box<GenerateArgs>),
    /// Download, convert or check model weights.
    #[command(subcommand)]
    Weights(weights::WeightsCommand),
    /// Time one UNet forward and one full generation (random weights, any size).
    Bench(bench::BenchArgs),
    /// Run the Discord bot (token from DISCORD_TOKEN).
    Serve(serve::ServeArgs),
}

/// Where a command computes: shared by `generate` and `bench`.
#[derive(Debug, clap::Args)]
pub struct DeviceArgs {
    /// auto (CUDA when built with it and present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// auto (f16 on GPU, f32 on CPU), f32, f16, bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
}

impl DeviceArgs {
    pub fn select(&self) -> Result<(candle_core::Device, candle_core::DType)> {
        let device = crate::engine::device::select_device(&self.device)?;
        let dtype = crate::engine::device::select_dtype(&self.dtype, &device)?;
        Ok((device, dtype))
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(*args),
        Command::Weights(cmd) => weights::run(cmd),
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => serve::run(args),
    }
}

/// Logs to stderr; `RUST_LOG` overrides the default `info` level. Every line goes through
/// [`crate::redact`], so no level (trace included) shows a token or key.
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(crate::redact::RedactingStderr)
        .try_init();
}
