//! One error type for everything that can go wrong between a checkpoint on disk and a `VarBuilder`.

use std::fmt;
use std::path::PathBuf;

/// How many names of each kind a [`KeyMismatch`] message shows before summarising.
const SHOW_AT_MOST: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The checkpoint file is absent; `hint` says how to get it.
    #[error("checkpoint not found: {}\n  hint: {hint}", path.display())]
    NotFound { path: PathBuf, hint: String },

    /// The checkpoint's keys or shapes do not match what the model asks for.
    #[error(transparent)]
    Mismatch(#[from] KeyMismatch),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The file exists but is not a checkpoint we can read (bad zip, pickle, header, dtype...).
    #[error("{context}: {detail}")]
    Format { context: String, detail: String },

    #[error("unknown model variant {name:?}; known variants: {known}")]
    UnknownVariant { name: String, known: String },

    /// Fetching from the Hugging Face Hub failed (network, auth, disk).
    #[error("downloading {file} from {repo} failed: {detail}")]
    Download {
        repo: String,
        file: String,
        detail: String,
    },
}

impl WeightsError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn format(context: impl Into<String>, detail: impl fmt::Display) -> Self {
        Self::Format {
            context: context.into(),
            detail: detail.to_string(),
        }
    }
}

/// Every difference between a requested and an available key set, collected in one pass so that
/// a wrong checkpoint is diagnosed in one run instead of one key at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyMismatch {
    /// Requested by the model, absent from the checkpoint.
    pub missing: Vec<String>,
    /// In the checkpoint, neither requested nor known to be unused.
    pub unexpected: Vec<String>,
    /// `(key, requested shape, checkpoint shape)`.
    pub shape: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl KeyMismatch {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shape.is_empty()
    }
}

impl std::error::Error for KeyMismatch {}

impl fmt::Display for KeyMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "checkpoint does not match the model: {} missing, {} unexpected, {} shape mismatches",
            self.missing.len(),
            self.unexpected.len(),
            self.shape.len()
        )?;
        list(
            f,
            "missing (requested by the model, not in the checkpoint)",
            &self.missing,
            |k| k.clone(),
        )?;
        list(
            f,
            "unexpected (in the checkpoint, not used by the model)",
            &self.unexpected,
            |k| k.clone(),
        )?;
        list(
            f,
            "shape mismatches (model vs checkpoint)",
            &self.shape,
            |(k, want, got)| format!("{k}: {want:?} vs {got:?}"),
        )
    }
}

fn list<T>(
    f: &mut fmt::Formatter<'_>,
    title: &str,
    items: &[T],
    show: impl Fn(&T) -> String,
) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    write!(f, "\n{title}:")?;
    for item in items.iter().take(SHOW_AT_MOST) {
        write!(f, "\n  {}", show(item))?;
    }
    if items.len() > SHOW_AT_MOST {
        write!(f, "\n  ... and {} more", items.len() - SHOW_AT_MOST)?;
    }
    Ok(())
}
