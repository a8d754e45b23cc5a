//! Where a variant's weights are looked for, in order: `$FLOOR33_WEIGHTS_DIR` (default
//! `./weights`) `/<variant>/model.safetensors`, then `.../model.ckpt`, then the Hugging Face
//! cache that `floor33 weights download` fills.

use std::path::PathBuf;

use super::download::{cached, checkpoint_for};
use super::error::WeightsError;

/// The folder holding converted weights, one sub-folder per variant.
pub fn weights_dir() -> PathBuf {
    std::env::var_os("FLOOR33_WEIGHTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("weights"))
}

/// Candidate paths for `variant`, best first (safetensors are memory-mapped: fastest to load).
pub fn candidates(variant: &str) -> Vec<PathBuf> {
    let dir = weights_dir().join(variant);
    let mut paths = vec![dir.join("model.safetensors"), dir.join("model.ckpt")];
    if let Some((repo, file)) = checkpoint_for(variant) {
        if let Some(path) = cached(repo, file, None) {
            paths.push(path);
        }
    }
    paths
}

/// The first existing candidate, or `NotFound` with the download hint.
pub fn find(variant: &str) -> Result<PathBuf, WeightsError> {
    let candidates = candidates(variant);
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| WeightsError::NotFound {
            path: candidates[0].clone(),
            hint: format!(
                "download it with `floor33 weights download {variant}` (it is then found here), \
                 or pass the file with --weights"
            ),
        })
}
