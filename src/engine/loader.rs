//! Turning a variant name and weight files into a ready [`Pipeline`]: find the files, check
//! every key and shape against what the model will request (one readable list of all
//! differences, before any tensor is read), take the schedule buffers from the checkpoint when
//! it has them, then build.

use std::path::PathBuf;

use candle_core::{DType, Device};

use super::error::EngineError;
use super::pipeline::{Networks, Pipeline};
use crate::models::config::{ModelConfig, Variant};
use crate::models::text_encoder::is_skipped_block_key;
use crate::sampler::schedule::NoiseSchedule;
use crate::weights::{self, WeightSource};

/// Loads `variant` from `paths` (or the default locations when empty). `tiny` needs no files.
pub fn load_pipeline(
    variant: Variant,
    paths: &[PathBuf],
    device: &Device,
    dtype: DType,
) -> Result<Pipeline, EngineError> {
    let config = variant.config();
    if variant.is_random_smoke_model() {
        return Pipeline::random(config, device, dtype);
    }
    let paths = if paths.is_empty() {
        vec![weights::locate::find(variant.name())
            .map_err(|e| EngineError::WeightsMissing(e.to_string()))?]
    } else {
        paths.to_vec()
    };
    let source = WeightSource::open(&paths).map_err(|e| match e {
        weights::WeightsError::NotFound { .. } => EngineError::WeightsMissing(e.to_string()),
        other => EngineError::BadWeights(other.to_string()),
    })?;
    load_from_source(config, &source, device, dtype)
}

/// Strictly checked build from an opened weight source.
pub fn load_from_source(
    config: ModelConfig,
    source: &WeightSource,
    device: &Device,
    dtype: DType,
) -> Result<Pipeline, EngineError> {
    let tensors = check_source(&config, source)?;
    let schedule = schedule_from(source, &config)?;
    tracing::info!(variant = %config.variant, tensors, "weights checked");
    Pipeline::from_var_builder(config, source.var_builder(dtype, device), schedule)
}

/// Compares the keys and shapes `config`'s model requests with the source's, reading no tensor
/// data. Returns the number of tensors the model uses.
pub fn check_source(config: &ModelConfig, source: &WeightSource) -> Result<usize, EngineError> {
    let requested = weights::record_requests(DType::F32, |vb| Networks::new(config, vb))
        .map_err(|e| EngineError::Internal(format!("listing model keys: {e}")))?;
    weights::check(&requested, &source.manifest(), &|key| {
        unused_key(config, key)
    })
    .map_err(|e| EngineError::BadWeights(e.to_string()))?;
    Ok(requested.len())
}

/// Checkpoint tensors this model never reads: the documented unused set plus the text tower's
/// last block (the original runs every block but the last).
pub fn unused_key(config: &ModelConfig, key: &str) -> bool {
    weights::not_a_module_weight(key) || is_skipped_block_key(&config.text, key)
}

/// The checkpoint's own `alphas_cumprod`/`scale_arr` when present (the i2v checkpoint stores
/// them in f16, and the original samples with those values), else the config's.
fn schedule_from(
    source: &WeightSource,
    config: &ModelConfig,
) -> Result<NoiseSchedule, EngineError> {
    let read = |name: &str| -> Result<Option<Vec<f32>>, EngineError> {
        if source.dtype(name).is_none() {
            return Ok(None);
        }
        let t = source
            .load(name, &Device::Cpu)
            .map_err(|e| EngineError::BadWeights(e.to_string()))?;
        Ok(Some(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?))
    };
    let from_config = NoiseSchedule::from_config(&config.diffusion);
    match read("alphas_cumprod")? {
        Some(ac) if ac.len() == from_config.alphas_cumprod.len() => {
            let scale = if config.diffusion.use_scale {
                read("scale_arr")?.or(from_config.scale_arr)
            } else {
                None
            };
            Ok(NoiseSchedule::from_buffers(ac, scale))
        }
        _ => Ok(from_config),
    }
}

/// Loads several models for one device, in order. A model that does not fit beside the ones
/// already loaded (or fails for any other reason) is reported and skipped, so the service still
/// runs with what fits; the caller says so to the operator.
pub fn load_pipelines(
    requested: &[(Variant, Vec<PathBuf>)],
    device: &Device,
    dtype: DType,
) -> (Vec<Pipeline>, Vec<(Variant, EngineError)>) {
    let mut loaded = Vec::new();
    let mut failed = Vec::new();
    for (variant, paths) in requested {
        match load_pipeline(*variant, paths, device, dtype) {
            Ok(pipeline) => {
                tracing::info!(%variant, "model loaded");
                loaded.push(pipeline);
            }
            Err(err) => {
                match &err {
                    EngineError::OutOfMemory(_) => tracing::warn!(
                        %variant,
                        beside = ?loaded.iter().map(|p: &Pipeline| p.config().variant.name()).collect::<Vec<_>>(),
                        "not enough device memory to keep this model loaded beside the others; it is not served"
                    ),
                    other => {
                        tracing::warn!(%variant, error = %other, "model not loaded; it is not served")
                    }
                }
                failed.push((*variant, err));
            }
        }
    }
    (loaded, failed)
}
