//! One-off conversion of a checkpoint to a single safetensors file, so later loads are mmapped
//! instead of unzipped (SPEC/notes: ~275 MB/s from the zip vs ~0.2 s per GB from a mapping).
//!
//! Memory: the header is computed from the index before any data is read, then tensors are
//! streamed one at a time, so peak RSS is about three copies of the largest tensor (read, cast,
//! byte serialisation): ~0.6 GB for these checkpoints (the 49408x1024 fp32 token embedding), not
//! the 6-7 GB of the whole model.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::error::WeightsError;
use super::keys::is_schedule_buffer;
use super::manifest::Manifest;
use super::source::WeightSource;

/// Writes the tensors of `src` (any format [`WeightSource`] opens) whose name passes `keep` to
/// `dst` as one safetensors file. With `dtype`, floating-point tensors are cast to it, except the
/// schedule buffers, which keep their stored precision for the sampler. `progress(done, total)`
/// is called in output bytes. The file is written under a temporary name (`<dst>.partial`) and
/// renamed at the end, so an interrupted conversion never leaves a plausible-looking `dst`, and a
/// failed one removes the temporary file. Returns what was written.
pub fn convert_to_safetensors(
    src: &Path,
    dst: &Path,
    dtype: Option<DType>,
    keep: &dyn Fn(&str) -> bool,
    mut progress: impl FnMut(u64, u64),
) -> Result<Manifest, WeightsError> {
    let source = WeightSource::open(&[src])?;
    let plan = plan(&source, dtype, keep)?;
    let total = plan
        .iter()
        .try_fold(0u64, |sum, p| sum.checked_add(p.bytes))
        .ok_or_else(|| WeightsError::format("converting", "total size overflows"))?;
    let header = header_json(&plan, src)?;

    let tmp = PartialFile(temporary_path(dst));
    write_all(&source, &plan, &header, &tmp.0, total, &mut progress)?;
    // After the rename the guard's removal finds nothing, which it ignores.
    std::fs::rename(&tmp.0, dst)
        .map_err(|e| WeightsError::io(format!("renaming to {}", dst.display()), e))?;
    Ok(plan.into_iter().map(|p| (p.name, p.shape)).collect())
}

/// The temporary output; removed when dropped, so a failed or panicking conversion leaves no
/// half-written file.
struct PartialFile(PathBuf);

impl Drop for PartialFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn write_all(
    source: &WeightSource,
    plan: &[Planned],
    header: &[u8],
    tmp: &Path,
    total: u64,
    progress: &mut impl FnMut(u64, u64),
) -> Result<(), WeightsError> {
    let ctx = || format!("writing {}", tmp.display());
    let file = File::create(tmp).map_err(|e| WeightsError::io(ctx(), e))?;
    let mut out = BufWriter::with_capacity(8 << 20, file);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .and_then(|_| out.write_all(header))
        .map_err(|e| WeightsError::io(ctx(), e))?;

    let mut done = 0u64;
    progress(done, total);
    for item in plan {
        let tensor = source
            .load(&item.name, &Device::Cpu)?
            .to_dtype(item.dtype)
            .map_err(|e| WeightsError::format(format!("casting {}", item.name), e))?;
        tensor
            .write_bytes(&mut out)
            .map_err(|e| WeightsError::format(ctx(), format!("tensor {}: {e}", item.name)))?;
        done += item.bytes;
        progress(done, total);
    }
    let file = out
        .into_inner()
        .map_err(|e| WeightsError::io(ctx(), e.into_error()))?;
    file.sync_all().map_err(|e| WeightsError::io(ctx(), e))
}

struct Planned {
    name: String,
    shape: Vec<usize>,
    dtype: DType,
    bytes: u64,
}

fn plan(
    source: &WeightSource,
    dtype: Option<DType>,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Vec<Planned>, WeightsError> {
    let mut plan = Vec::new();
    for (name, shape) in source.manifest().0 {
        if !keep(&name) {
            continue;
        }
        let stored = source
            .dtype(&name)
            .ok_or_else(|| WeightsError::format("converting", format!("no dtype for {name}")))?;
        let out = match dtype {
            Some(d) if stored.is_float() && !is_schedule_buffer(&name) => d,
            _ => stored,
        };
        safetensors_dtype(out)?;
        let bytes = shape
            .iter()
            .try_fold(out.size_in_bytes() as u64, |n, &d| n.checked_mul(d as u64))
            .ok_or_else(|| WeightsError::format("converting", format!("{name}: size overflows")))?;
        plan.push(Planned {
            name,
            shape,
            dtype: out,
            bytes,
        });
    }
    if plan.is_empty() {
        return Err(WeightsError::format("converting", "no tensor selected"));
    }
    Ok(plan)
}

/// The safetensors header: `{name: {dtype, shape, data_offsets}}` with offsets in write order,
/// padded with spaces to a multiple of 8 bytes so the data is aligned.
fn header_json(plan: &[Planned], src: &Path) -> Result<Vec<u8>, WeightsError> {
    let mut map = serde_json::Map::new();
    let source_name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    map.insert(
        "__metadata__".into(),
        serde_json::json!({ "format": "pt", "converted_from": source_name }),
    );
    let mut offset = 0u64;
    for p in plan {
        map.insert(
            p.name.clone(),
            serde_json::json!({
                "dtype": safetensors_dtype(p.dtype)?,
                "shape": p.shape,
                "data_offsets": [offset, offset + p.bytes],
            }),
        );
        offset += p.bytes;
    }
    let mut header = serde_json::to_vec(&map)
        .map_err(|e| WeightsError::format("writing safetensors header", e))?;
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    Ok(header)
}

fn safetensors_dtype(d: DType) -> Result<&'static str, WeightsError> {
    Ok(match d {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F64 => "F64",
        DType::I64 => "I64",
        DType::U8 => "U8",
        other => {
            return Err(WeightsError::format(
                "converting",
                format!("dtype {other:?} is not written by this converter"),
            ))
        }
    })
}

fn temporary_path(dst: &Path) -> PathBuf {
    let mut name = dst.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dst.with_file_name(name)
}
