//! Opening checkpoints: memory-mapped safetensors (one or several files) or one PyTorch
//! checkpoint, behind one type that lists its tensors and hands out a `VarBuilder`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::download::download_hint;
use super::error::WeightsError;
use super::manifest::Manifest;
use super::pth::{is_pytorch, PthBackend, PthIndex, PthLayout};

/// What kind of file a [`WeightSource`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Safetensors,
    Pth(PthLayout),
}

/// A checkpoint opened for reading. Cheap to keep around: tensors are read on request.
pub struct WeightSource {
    paths: Vec<PathBuf>,
    files: Files,
    /// name -> (shape, stored dtype), collected once at open.
    entries: BTreeMap<String, (Vec<usize>, DType)>,
}

enum Files {
    Safetensors(Arc<MmapedSafetensors>),
    Pth(Arc<PthIndex>),
}

impl WeightSource {
    /// Opens `.safetensors` files (several are merged; a name in two files is an error) or exactly
    /// one PyTorch checkpoint (`model.ckpt`, `.pth`; zip or legacy format). The kind is sniffed from the file
    /// contents, not the extension. A missing file gives [`WeightsError::NotFound`] with a
    /// download hint.
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<Self, WeightsError> {
        let paths: Vec<PathBuf> = paths.iter().map(|p| p.as_ref().to_path_buf()).collect();
        if paths.is_empty() {
            return Err(WeightsError::format(
                "opening weights",
                "no checkpoint path given",
            ));
        }
        let mut zips = 0;
        for path in &paths {
            if !path.is_file() {
                return Err(WeightsError::NotFound {
                    path: path.clone(),
                    hint: download_hint(),
                });
            }
            if is_pytorch_file(path)? {
                zips += 1;
            }
        }
        match zips {
            0 => Self::open_safetensors(paths),
            1 if paths.len() == 1 => Self::open_pth(paths),
            _ => Err(WeightsError::format(
                "opening weights",
                "a PyTorch checkpoint must be opened alone (several files are only supported as safetensors)",
            )),
        }
    }

    fn open_safetensors(paths: Vec<PathBuf>) -> Result<Self, WeightsError> {
        let ctx = || format!("reading safetensors {}", display_paths(&paths));
        // SAFETY: the mapping is read-only; like every mmap it assumes the files are not truncated
        // or rewritten while in use, which holds for checkpoints we only read.
        let st = unsafe { MmapedSafetensors::multi(&paths) }
            .map_err(|e| WeightsError::format(ctx(), e))?;
        let mut entries = BTreeMap::new();
        for (name, view) in st.tensors() {
            let dtype = DType::try_from(view.dtype())
                .map_err(|e| WeightsError::format(ctx(), format!("tensor {name}: {e}")))?;
            if entries
                .insert(name.clone(), (view.shape().to_vec(), dtype))
                .is_some()
            {
                return Err(WeightsError::format(
                    ctx(),
                    format!("tensor {name} is in two files"),
                ));
            }
        }
        Ok(Self {
            paths,
            files: Files::Safetensors(Arc::new(st)),
            entries,
        })
    }

    fn open_pth(paths: Vec<PathBuf>) -> Result<Self, WeightsError> {
        let index = PthIndex::open(&paths[0])?;
        let entries = index
            .entries()
            .map(|(n, s, d)| (n.to_string(), (s.to_vec(), d)))
            .collect();
        Ok(Self {
            paths,
            files: Files::Pth(Arc::new(index)),
            entries,
        })
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    pub fn format(&self) -> SourceFormat {
        match &self.files {
            Files::Safetensors(_) => SourceFormat::Safetensors,
            Files::Pth(p) => SourceFormat::Pth(p.layout()),
        }
    }

    /// Every stored tensor's name and shape.
    pub fn manifest(&self) -> Manifest {
        self.entries
            .iter()
            .map(|(n, (s, _))| (n.clone(), s.clone()))
            .collect()
    }

    /// The stored dtype of a tensor (e.g. to tell an fp16 checkpoint from an fp32 one).
    pub fn dtype(&self, name: &str) -> Option<DType> {
        self.entries.get(name).map(|(_, d)| *d)
    }

    /// Every stored tensor's dtype.
    pub fn dtypes(&self) -> BTreeMap<String, DType> {
        self.entries
            .iter()
            .map(|(n, (_, d))| (n.clone(), *d))
            .collect()
    }

    /// Loads one tensor in its stored dtype, e.g. a schedule buffer for the sampler.
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor, WeightsError> {
        let (_, dtype) = self.entries.get(name).ok_or_else(|| {
            WeightsError::format(
                format!("reading {}", display_paths(&self.paths)),
                format!("no tensor named {name}"),
            )
        })?;
        self.backend()
            .get_unchecked(name, *dtype, device)
            .map_err(|e| WeightsError::format(format!("loading {name}"), e))
    }

    /// A `VarBuilder` over the original key names; tensors are read (safetensors: from the
    /// mapping) when the model asks for them, shape-checked, and cast to `dtype`.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(self.backend(), dtype, device.clone())
    }

    fn backend(&self) -> Box<dyn SimpleBackend + 'static> {
        match &self.files {
            Files::Safetensors(st) => Box::new(SharedSafetensors(st.clone())),
            Files::Pth(index) => Box::new(PthBackend(index.clone())),
        }
    }
}

impl std::fmt::Debug for WeightSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightSource")
            .field("paths", &self.paths)
            .field("format", &self.format())
            .field("tensors", &self.entries.len())
            .finish()
    }
}

/// Lets several `VarBuilder`s share one set of mappings.
struct SharedSafetensors(Arc<MmapedSafetensors>);

impl SimpleBackend for SharedSafetensors {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        // Check the header shape first so a mismatch costs no copy.
        if let Ok(view) = self.0.get(name) {
            if view.shape() != s.dims() {
                return Err(candle_core::Error::UnexpectedShape {
                    msg: format!("shape mismatch for {name}"),
                    expected: s,
                    got: view.shape().into(),
                }
                .bt());
            }
        }
        SimpleBackend::get(self.0.as_ref(), s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        SimpleBackend::get_unchecked(self.0.as_ref(), name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.get(name).is_ok()
    }
}

fn is_pytorch_file(path: &Path) -> Result<bool, WeightsError> {
    let mut magic = [0u8; 16];
    let mut file = std::fs::File::open(path)
        .map_err(|e| WeightsError::io(format!("opening {}", path.display()), e))?;
    let n = file
        .read(&mut magic)
        .map_err(|e| WeightsError::io(format!("reading {}", path.display()), e))?;
    Ok(is_pytorch(&magic[..n]))
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
