//! Lazy reader for PyTorch checkpoints: the zip format (`torch.save` since 1.6) and the legacy
//! one (`_use_new_zipfile_serialization=False`: pickles back to back, then raw storages). The
//! pickle is parsed once, by the bounded unpickler in `pickle.rs`, to index every tensor (where
//! the storages are in the file is `pth_storage.rs`'s job); tensor bytes are read only when a
//! tensor is requested.
//!
//! A checkpoint is untrusted input: at open every tensor is checked, with checked arithmetic,
//! against the bytes its storage really has in the file (zip entry or legacy record), so a read
//! never allocates more than the file holds and never reads outside its storage.
//!
//! candle's `PthTensors` is close, but it needs the state-dict key up front (and silently yields
//! no tensors with the wrong one), drops tensors it cannot decode with only a message on stderr,
//! re-reads the zip directory for every tensor, and its unpickler has no limits. Here the layout
//! is detected, failures are errors, and one open file is shared.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use super::error::WeightsError;
use super::pickle::{TensorRef, Value};
use super::pth_storage::{self, StorageBytes};

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

/// Whether the first bytes of a file are a PyTorch checkpoint's (zip or legacy).
pub(crate) fn is_pytorch(head: &[u8]) -> bool {
    head.starts_with(b"PK\x03\x04") || head.starts_with(&pth_storage::LEGACY_MAGIC)
}

/// One tensor, checked: `span` elements from `offset` lie inside its storage, whose bytes start
/// at `data_start` in the file.
#[derive(Debug, Clone)]
struct TensorEntry {
    dtype: DType,
    shape: Shape,
    /// Element strides, 0 for dims of size 1 (their stride never moves the index).
    stride: Vec<usize>,
    contiguous: bool,
    /// Byte position of the first element the tensor uses.
    first_byte: u64,
    /// Elements from the first used one to the last one, inclusive.
    span: usize,
}

pub(crate) struct PthIndex {
    path: PathBuf,
    layout: PthLayout,
    tensors: BTreeMap<String, TensorEntry>,
    file: Mutex<File>,
}

impl PthIndex {
    pub(crate) fn open(path: &Path) -> Result<Self, WeightsError> {
        let ctx = || format!("reading PyTorch checkpoint {}", path.display());
        let mut file = File::open(path).map_err(|e| WeightsError::io(ctx(), e))?;
        let (object, storages) =
            pth_storage::index(&mut file).map_err(|d| WeightsError::format(ctx(), d))?;

        let (layout, state) =
            select_state_dict(object).map_err(|d| WeightsError::format(ctx(), d))?;
        let mut tensors = BTreeMap::new();
        for (key, value) in state {
            let Value::Str(name) = key else {
                continue;
            };
            let name = match layout {
                PthLayout::DeepspeedModule => name
                    .strip_prefix(DEEPSPEED_PREFIX)
                    .unwrap_or(&name)
                    .to_string(),
                _ => name,
            };
            let Value::Tensor(tensor) = value else {
                continue; // not a tensor (an int, a nested config...)
            };
            let entry = check_tensor(&tensor, &storages)
                .map_err(|d| WeightsError::format(ctx(), format!("tensor {name}: {d}")))?;
            if tensors.insert(name.clone(), entry).is_some() {
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
            file: Mutex::new(file),
        })
    }

    pub(crate) fn layout(&self) -> PthLayout {
        self.layout
    }

    /// `(name, shape, stored dtype)` of every tensor.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, &[usize], DType)> {
        self.tensors
            .iter()
            .map(|(n, e)| (n.as_str(), e.shape.dims(), e.dtype))
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub(crate) fn shape(&self, name: &str) -> Option<&Shape> {
        self.tensors.get(name).map(|e| &e.shape)
    }

    /// Reads one tensor in its stored dtype onto the CPU.
    pub(crate) fn read(&self, name: &str) -> candle_core::Result<Tensor> {
        let entry = self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })?;
        let mut file = self
            .file
            .lock()
            .map_err(|_| candle_core::Error::Msg("checkpoint reader poisoned".into()))?;
        file.seek(SeekFrom::Start(entry.first_byte))?;
        let mut r = BufReader::new(&mut *file);
        match entry.dtype {
            DType::F32 => read_typed::<f32>(&mut r, entry),
            DType::F16 => read_typed::<half::f16>(&mut r, entry),
            DType::BF16 => read_typed::<half::bf16>(&mut r, entry),
            DType::F64 => read_typed::<f64>(&mut r, entry),
            DType::I64 => read_typed::<i64>(&mut r, entry),
            DType::U8 => read_typed::<u8>(&mut r, entry),
            other => candle_core::bail!("{name}: unsupported stored dtype {other:?}"),
        }
        .map_err(|e| candle_core::Error::Msg(format!("{name}: {e}")))
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

/// Checks a tensor against its storage's real bytes and works out what to read.
fn check_tensor(
    t: &TensorRef,
    storages: &HashMap<String, StorageBytes>,
) -> Result<TensorEntry, String> {
    let dtype = t
        .storage
        .dtype
        .clone()
        .map_err(|class| format!("storage type {class} is not supported"))?;
    let elem = dtype.size_in_bytes() as u64;
    let bytes = storages
        .get(&t.storage.key)
        .ok_or_else(|| format!("storage {} is not in the file", t.storage.key))?;
    let declared = t
        .storage
        .numel
        .checked_mul(elem)
        .filter(|&b| b <= bytes.len)
        .ok_or_else(|| {
            format!(
                "storage {} declares {} elements of {elem} bytes but the file holds {} bytes",
                t.storage.key, t.storage.numel, bytes.len
            )
        })?;
    let numel = t
        .shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .ok_or("its element count overflows")?;
    // Index of the last element, in elements from the storage's start.
    let mut last = t.offset;
    for (&d, &s) in t.shape.iter().zip(&t.stride) {
        if d > 1 {
            last = (d - 1)
                .checked_mul(s)
                .and_then(|step| last.checked_add(step))
                .ok_or("its extent overflows")?;
        }
    }
    let storage_numel = declared / elem;
    if numel > 0 && last >= storage_numel {
        return Err(format!(
            "offset {} with size {:?} and stride {:?} reaches element {last}, past its storage of {storage_numel}",
            t.offset, t.shape, t.stride
        ));
    }
    if numel > storage_numel {
        return Err(format!(
            "{numel} elements from a storage of {storage_numel} (broadcast views are not supported)"
        ));
    }
    let to_usize =
        |v: u64| usize::try_from(v).map_err(|_| "too large for this machine".to_string());
    let dims = t
        .shape
        .iter()
        .map(|&d| to_usize(d))
        .collect::<Result<Vec<_>, _>>()?;
    let stride = t
        .shape
        .iter()
        .zip(&t.stride)
        .map(|(&d, &s)| if d > 1 { to_usize(s) } else { Ok(0) })
        .collect::<Result<Vec<_>, _>>()?;
    let span = if numel == 0 {
        0
    } else {
        to_usize(last - t.offset + 1)?
    };
    let contiguous = span == to_usize(numel)? && is_row_major(&dims, &stride);
    let first_byte = t
        .offset
        .checked_mul(elem)
        .and_then(|b| b.checked_add(bytes.start))
        .ok_or("its offset overflows")?;
    Ok(TensorEntry {
        dtype,
        shape: Shape::from(dims),
        stride,
        contiguous,
        first_byte,
        span,
    })
}

fn is_row_major(dims: &[usize], stride: &[usize]) -> bool {
    let mut expect = 1usize;
    for (&d, &s) in dims.iter().zip(stride).rev() {
        if d > 1 && s != expect {
            return false;
        }
        expect = expect.saturating_mul(d);
    }
    true
}

/// Mirrors the original loader: `module` (deepspeed), else `state_dict`, else the object itself.
fn select_state_dict(object: Value) -> Result<(PthLayout, Vec<(Value, Value)>), String> {
    let Value::Dict(mut top) = object else {
        return Err(format!("top-level object is {}, not a dict", object.kind()));
    };
    for (key, layout) in [
        ("module", PthLayout::DeepspeedModule),
        ("state_dict", PthLayout::StateDict),
    ] {
        if let Some(pos) = top.iter().position(|(k, v)| {
            matches!(k, Value::Str(s) if s == key) && matches!(v, Value::Dict(_))
        }) {
            let (_, inner) = top.swap_remove(pos);
            let Value::Dict(inner) = inner else {
                unreachable!("matched a dict above")
            };
            return Ok((layout, inner));
        }
    }
    Ok((PthLayout::Bare, top))
}

/// Reads the tensor's span of little-endian values straight into a buffer, then picks its
/// elements out when it is a strided view.
#[cfg(target_endian = "little")]
fn read_typed<T: candle_core::WithDType + Default>(
    r: &mut impl Read,
    entry: &TensorEntry,
) -> candle_core::Result<Tensor> {
    let mut values = vec![T::default(); entry.span];
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
    if !entry.contiguous {
        values = gather(&values, entry.shape.dims(), &entry.stride);
    }
    Tensor::from_vec(values, entry.shape.dims(), &Device::Cpu)
}

/// The elements of a strided view in row-major order. `check_tensor` guarantees every index is
/// inside `span` and strides of size-1 dims are 0.
fn gather<T: Copy>(span: &[T], dims: &[usize], stride: &[usize]) -> Vec<T> {
    let n: usize = dims.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut index = vec![0usize; dims.len()];
    let mut at = 0usize;
    for _ in 0..n {
        out.push(span[at]);
        for d in (0..dims.len()).rev() {
            index[d] += 1;
            if index[d] < dims[d] {
                at += stride[d];
                break;
            }
            at -= stride[d] * (dims[d] - 1);
            index[d] = 0;
        }
    }
    out
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
