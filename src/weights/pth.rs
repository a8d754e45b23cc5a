//! Lazy reader for PyTorch zip checkpoints (`torch.save` since 1.6): the pickle is parsed once to
//! index every tensor; tensor bytes are read from the zip only when a tensor is requested.
//!
//! candle's `PthTensors` is close, but it needs the state-dict key up front (and silently yields
//! no tensors with the wrong one), drops tensors it cannot decode with only a message on stderr,
//! and re-reads the zip directory for every tensor. Here the layout is detected, failures are
//! errors, and one open archive is shared.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use super::error::WeightsError;

/// The deepspeed wrapper prefixes every key with this (the original loader drops `key[16:]`).
const DEEPSPEED_PREFIX: &str = "_forward_module.";

/// Where the state dict sits inside the pickled object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PthLayout {
    /// The top-level object is the state dict itself.
    Bare,
    /// `{'state_dict': {...}, ...}` (PyTorch Lightning).
    StateDict,
    /// `{'module': {'_forward_module.<key>': ...}, ...}` (deepspeed); the prefix is stripped.
    DeepspeedModule,
}

pub(crate) struct PthIndex {
    path: PathBuf,
    layout: PthLayout,
    tensors: BTreeMap<String, TensorInfo>,
    zip: Mutex<zip::ZipArchive<BufReader<File>>>,
}

impl PthIndex {
    pub(crate) fn open(path: &Path) -> Result<Self, WeightsError> {
        let ctx = || format!("reading PyTorch checkpoint {}", path.display());
        let file = File::open(path).map_err(|e| WeightsError::io(ctx(), e))?;
        let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
            WeightsError::format(
                ctx(),
                format!("not a zip archive ({e}); legacy (pre-1.6) torch files are not supported"),
            )
        })?;
        let pkl = zip
            .file_names()
            .filter_map(Result::ok)
            .find(|n| n.ends_with("data.pkl"))
            .map(|n| n.into_owned())
            .ok_or_else(|| WeightsError::format(ctx(), "no data.pkl in the archive"))?;
        let dir = PathBuf::from(pkl.trim_end_matches(".pkl"));
        let object = {
            let entry = zip
                .by_name(&pkl)
                .map_err(|e| WeightsError::format(ctx(), e))?;
            let mut stack = Stack::empty();
            stack
                .read_loop(&mut BufReader::new(entry))
                .map_err(|e| WeightsError::format(ctx(), format!("unpickling data.pkl: {e}")))?;
            stack
                .finalize()
                .map_err(|e| WeightsError::format(ctx(), e))?
        };
        let (layout, state) =
            select_state_dict(object).map_err(|d| WeightsError::format(ctx(), d))?;
        let mut tensors = BTreeMap::new();
        for (key, value) in state {
            let Object::Unicode(name) = &key else {
                continue;
            };
            let name = match layout {
                PthLayout::DeepspeedModule => name.strip_prefix(DEEPSPEED_PREFIX).unwrap_or(name),
                _ => name,
            }
            .to_string();
            let info = match value.into_tensor_info(key, &dir) {
                Ok(Some(info)) => info,
                Ok(None) => continue, // not a tensor (an int, a nested config...)
                Err(e) => return Err(WeightsError::format(ctx(), format!("tensor {name}: {e}"))),
            };
            if tensors.insert(name.clone(), info).is_some() {
                return Err(WeightsError::format(
                    ctx(),
                    format!("duplicate tensor {name}"),
                ));
            }
        }
        if tensors.is_empty() {
            return Err(WeightsError::format(
                ctx(),
                format!("no tensors found in the {layout:?} state dict"),
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            layout,
            tensors,
            zip: Mutex::new(zip),
        })
    }

    pub(crate) fn layout(&self) -> PthLayout {
        self.layout
    }

    /// `(name, shape, stored dtype)` of every tensor.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, &[usize], DType)> {
        self.tensors
            .iter()
            .map(|(n, i)| (n.as_str(), i.layout.dims(), i.dtype))
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub(crate) fn shape(&self, name: &str) -> Option<&Shape> {
        self.tensors.get(name).map(|i| i.layout.shape())
    }

    /// Reads one tensor in its stored dtype onto the CPU.
    pub(crate) fn read(&self, name: &str) -> candle_core::Result<Tensor> {
        let info = self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })?;
        let layout = &info.layout;
        let fortran = !layout.is_contiguous() && layout.is_fortran_contiguous();
        if !layout.is_contiguous() && !fortran {
            candle_core::bail!("{name}: strided tensors are not supported ({layout:?})");
        }
        let elems = layout.shape().elem_count();
        if layout.start_offset() / info.dtype.size_in_bytes() + elems > info.storage_size {
            candle_core::bail!("{name}: tensor runs past the end of its storage");
        }
        let mut zip = self
            .zip
            .lock()
            .map_err(|_| candle_core::Error::Msg("checkpoint reader poisoned".into()))?;
        let mut entry = zip
            .by_name(&info.path)
            .map_err(|e| candle_core::Error::Msg(format!("{name}: {}: {e}", info.path)))?;
        let skip = layout.start_offset() as u64;
        if std::io::copy(&mut (&mut entry).take(skip), &mut std::io::sink())? != skip {
            candle_core::bail!("{name}: storage {} is truncated", info.path);
        }
        let dims = layout.dims();
        if fortran {
            // Column-major: read as the reversed shape, then reverse the axes back.
            let reversed: Vec<usize> = dims.iter().rev().copied().collect();
            let t = read_values(&mut entry, info.dtype, &reversed)?;
            let axes: Vec<usize> = (0..dims.len()).rev().collect();
            t.permute(axes)?.contiguous()
        } else {
            read_values(&mut entry, info.dtype, dims)
        }
    }
}

impl std::fmt::Debug for PthIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PthIndex")
            .field("path", &self.path)
            .field("layout", &self.layout)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Mirrors the original loader: `module` (deepspeed), else `state_dict`, else the object itself.
fn select_state_dict(object: Object) -> Result<(PthLayout, Vec<(Object, Object)>), String> {
    let top = object
        .dict()
        .map_err(|o| format!("top-level object is not a dict: {}", short(&o)))?;
    for (key, layout) in [
        ("module", PthLayout::DeepspeedModule),
        ("state_dict", PthLayout::StateDict),
    ] {
        if let Some(pos) = top.iter().position(|(k, v)| {
            matches!(k, Object::Unicode(s) if s == key) && matches!(v, Object::Dict(_))
        }) {
            let mut top = top;
            let (_, inner) = top.swap_remove(pos);
            return Ok((layout, inner.dict().unwrap_or_default()));
        }
    }
    Ok((PthLayout::Bare, top))
}

fn short(o: &Object) -> String {
    let s = format!("{o:?}");
    s.chars().take(200).collect()
}

/// Reads `shape.product()` little-endian values straight into the tensor's own buffer.
fn read_values(r: &mut impl Read, dtype: DType, dims: &[usize]) -> candle_core::Result<Tensor> {
    let n: usize = dims.iter().product();
    match dtype {
        DType::F32 => read_typed::<f32>(r, n, dims),
        DType::F16 => read_typed::<half::f16>(r, n, dims),
        DType::BF16 => read_typed::<half::bf16>(r, n, dims),
        DType::F64 => read_typed::<f64>(r, n, dims),
        DType::I64 => read_typed::<i64>(r, n, dims),
        DType::U8 => read_typed::<u8>(r, n, dims),
        other => candle_core::bail!("unsupported stored dtype {other:?}"),
    }
}

#[cfg(target_endian = "little")]
fn read_typed<T: candle_core::WithDType + Default>(
    r: &mut impl Read,
    n: usize,
    dims: &[usize],
) -> candle_core::Result<Tensor> {
    let mut values = vec![T::default(); n];
    // SAFETY: the element types above are plain numbers for which every bit pattern is valid, the
    // byte view covers exactly the vector's initialised storage, and the file is little-endian
    // like the host (checked by the cfg).
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(
            values.as_mut_ptr().cast::<u8>(),
            std::mem::size_of_val(values.as_slice()),
        )
    };
    r.read_exact(bytes)?;
    Tensor::from_vec(values, dims, &Device::Cpu)
}

/// `VarBuilder` backend over a shared index: loads each tensor when asked, checks its shape
/// before reading, then casts and moves it.
pub(crate) struct PthBackend(pub(crate) Arc<PthIndex>);

impl PthBackend {
    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.0.read(name)?;
        // Cast on the CPU when that shrinks the transfer, else on the device.
        if dtype.size_in_bytes() < t.dtype().size_in_bytes() {
            t.to_dtype(dtype)?.to_device(dev)
        } else {
            t.to_device(dev)?.to_dtype(dtype)
        }
    }
}

impl SimpleBackend for PthBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some(stored) = self.0.shape(name) {
            if stored != &s {
                return Err(candle_core::Error::UnexpectedShape {
                    msg: format!("shape mismatch for {name}"),
                    expected: s,
                    got: stored.clone(),
                }
                .bt());
            }
        }
        self.load(name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}
