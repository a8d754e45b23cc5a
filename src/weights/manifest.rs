//! Key/shape sets: what a checkpoint holds, what a model asks for, and the strict comparison.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::error::{KeyMismatch, WeightsError};

/// Tensor name -> shape. Sorted, so listings and diffs are stable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest(pub BTreeMap<String, Vec<usize>>);

impl Manifest {
    /// Parses the committed layout (`tests/fixtures/keys/*.json`: an object whose `"keys"` maps
    /// names to shape arrays); a bare `{name: shape}` object is accepted too.
    pub fn from_json_str(json: &str) -> Result<Self, WeightsError> {
        let bad = |detail: String| WeightsError::format("parsing a key manifest", detail);
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        let keys = match value.get("keys") {
            Some(keys) => keys,
            None => &value,
        };
        let keys = keys
            .as_object()
            .ok_or_else(|| bad("expected an object of name -> shape".into()))?;
        let mut out = BTreeMap::new();
        for (name, shape) in keys {
            let shape: Vec<usize> = serde_json::from_value(shape.clone())
                .map_err(|e| bad(format!("shape of {name}: {e}")))?;
            out.insert(name.clone(), shape);
        }
        Ok(Self(out))
    }

    pub fn from_json_file(path: &Path) -> Result<Self, WeightsError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| WeightsError::io(format!("reading {}", path.display()), e))?;
        Self::from_json_str(&text)
    }

    /// Serialises in the committed layout (`name`, `n_tensors`, `n_elements`, `keys`).
    pub fn to_json(&self, name: &str) -> String {
        let keys: serde_json::Map<String, serde_json::Value> = self
            .0
            .iter()
            .map(|(k, s)| (k.clone(), serde_json::json!(s)))
            .collect();
        let doc = serde_json::json!({
            "name": name,
            "n_tensors": self.len(),
            "n_elements": self.n_elements(),
            "keys": keys,
        });
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&[usize]> {
        self.0.get(key).map(Vec::as_slice)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Total number of values over all tensors.
    pub fn n_elements(&self) -> usize {
        self.0.values().map(|s| s.iter().product::<usize>()).sum()
    }

    /// The entries whose key satisfies `keep`.
    pub fn filter(&self, keep: impl Fn(&str) -> bool) -> Self {
        Self(
            self.0
                .iter()
                .filter(|(k, _)| keep(k))
                .map(|(k, s)| (k.clone(), s.clone()))
                .collect(),
        )
    }
}

impl FromIterator<(String, Vec<usize>)> for Manifest {
    fn from_iter<I: IntoIterator<Item = (String, Vec<usize>)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// Builds a model against a recording backend and returns every key/shape it requested.
///
/// Tensors handed to the model are a broadcast scalar zero, so nothing of full size is allocated
/// and even a 1.5B-parameter model lists its keys in milliseconds. Consequences for the builder:
/// `contains_tensor` answers true (optional tensors count as requested), `get_unchecked` fails
/// (no shape to record), and build-time ops that copy a weight (e.g. `contiguous`, a reshape of it)
/// do allocate full size. Asking twice for one key with different shapes is an error.
pub fn record_requests<T>(
    dtype: DType,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> candle_core::Result<Manifest> {
    record(dtype, None, build)
}

/// Like [`record_requests`], but `contains_tensor` and `get_unchecked` answer from `available`,
/// so models with optional tensors record what they would load from that checkpoint.
pub fn record_requests_against<T>(
    dtype: DType,
    available: &Manifest,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> candle_core::Result<Manifest> {
    record(dtype, Some(available.clone()), build)
}

fn record<T>(
    dtype: DType,
    available: Option<Manifest>,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> candle_core::Result<Manifest> {
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let backend = Recorder {
        seen: seen.clone(),
        available,
    };
    let vb = VarBuilder::from_backend(Box::new(backend), dtype, Device::Cpu);
    let model = build(vb)?;
    drop(model);
    let seen = seen
        .lock()
        .map_err(|_| candle_core::Error::Msg("key recorder poisoned".into()))?;
    Ok(Manifest(seen.clone()))
}

struct Recorder {
    seen: Arc<Mutex<BTreeMap<String, Vec<usize>>>>,
    available: Option<Manifest>,
}

impl Recorder {
    fn note(&self, name: &str, shape: &Shape, dtype: DType) -> candle_core::Result<Tensor> {
        let mut seen = self
            .seen
            .lock()
            .map_err(|_| candle_core::Error::Msg("key recorder poisoned".into()))?;
        let dims = shape.dims().to_vec();
        if let Some(before) = seen.get(name) {
            if *before != dims {
                candle_core::bail!("{name} requested twice with shapes {before:?} and {dims:?}");
            }
        }
        seen.insert(name.to_string(), dims);
        // A scalar broadcast to the shape: strides are all zero, so no full-size buffer.
        Tensor::zeros((), dtype, &Device::Cpu)?.broadcast_as(shape)
    }
}

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        _: &Device,
    ) -> candle_core::Result<Tensor> {
        self.note(name, &s, dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        match self.available.as_ref().and_then(|m| m.get(name)) {
            Some(dims) => self.note(name, &Shape::from(dims.to_vec()), dtype),
            None => candle_core::bail!("key recorder: no shape known for {name} (get_unchecked)"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match &self.available {
            Some(m) => m.contains(name),
            None => true,
        }
    }
}

/// Strict comparison of what a model requests with what a checkpoint holds. Keys present in
/// `available` but not requested are an error unless `unused(key)` says they are expected to be
/// skipped. All differences are reported together.
pub fn check(
    requested: &Manifest,
    available: &Manifest,
    unused: &dyn Fn(&str) -> bool,
) -> Result<(), WeightsError> {
    let mut report = KeyMismatch::default();
    for (key, want) in &requested.0 {
        match available.0.get(key) {
            None => report.missing.push(key.clone()),
            Some(got) if got != want => report.shape.push((key.clone(), want.clone(), got.clone())),
            Some(_) => {}
        }
    }
    report.unexpected = available
        .keys()
        .filter(|k| !requested.contains(k) && !unused(k))
        .map(str::to_string)
        .collect();
    if report.is_empty() {
        Ok(())
    } else {
        Err(report.into())
    }
}
