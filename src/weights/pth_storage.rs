//! Where a PyTorch checkpoint keeps its pickle and each storage's bytes: the entries of the zip
//! format, or the records after the pickles of the legacy format. Every range is checked to lie
//! inside the file, so the tensor checks in `pth.rs` can bound reads by real bytes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

use super::pickle::{self, Limits, StorageRef, Value};

/// The largest pickle we parse (a real `model.ckpt` has ~200 KB of pickle).
pub(super) const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// The first pickle of a legacy file: protocol 2, then LONG1 of torch's magic number.
pub(super) const LEGACY_MAGIC: [u8; 14] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
];

/// Where a storage's bytes are in the file.
#[derive(Debug, Clone, Copy)]
pub(super) struct StorageBytes {
    pub start: u64,
    pub len: u64,
}

/// Parses the pickle and locates every storage a tensor in it uses.
pub(super) fn index(file: &mut File) -> Result<(Value, HashMap<String, StorageBytes>), String> {
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut head = [0u8; LEGACY_MAGIC.len()];
    let n = read_up_to(file, &mut head).map_err(|e| e.to_string())?;
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    if head[..n].starts_with(&LEGACY_MAGIC) {
        index_legacy(file, file_len)
    } else {
        index_zip(file, file_len)
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn unpickle_limits(len: usize) -> Limits {
    // At most a handful of values per pickle byte: a real pickle spends one to three.
    let limits = Limits::default();
    Limits {
        max_cost: limits.max_cost.min(1024 + 8 * len as u64),
        ..limits
    }
}

/// The zip layout: `<name>/data.pkl` plus one stored entry per storage, `<name>/data/<key>`.
fn index_zip(
    file: &mut File,
    file_len: u64,
) -> Result<(Value, HashMap<String, StorageBytes>), String> {
    let mut zip = zip::ZipArchive::new(BufReader::new(&mut *file))
        .map_err(|e| format!("neither a zip archive ({e}) nor a legacy torch file"))?;
    let pkl = zip
        .file_names()
        .filter_map(Result::ok)
        .find(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .map(|n| n.into_owned())
        .ok_or("no data.pkl in the archive")?;
    if let Ok(mut order) = zip.by_name(&pkl.replace("data.pkl", "byteorder")) {
        let mut text = String::new();
        (&mut order).take(16).read_to_string(&mut text).ok();
        if text.trim() == "big" {
            return Err("the checkpoint was saved big-endian; not supported".into());
        }
    }
    let dir = pkl.trim_end_matches(".pkl").to_string();
    let bytes = {
        let entry = zip.by_name(&pkl).map_err(|e| format!("{pkl}: {e}"))?;
        if entry.size() > MAX_PICKLE_BYTES {
            return Err(format!(
                "{pkl} is {} bytes, more than the {MAX_PICKLE_BYTES} a checkpoint pickle needs",
                entry.size()
            ));
        }
        let mut bytes = Vec::new();
        entry
            .take(MAX_PICKLE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading {pkl}: {e}"))?;
        bytes
    };
    let (object, _) = pickle::unpickle(&bytes, unpickle_limits(bytes.len()))
        .map_err(|e| format!("unpickling {pkl}: {e}"))?;
    drop(bytes);

    let mut storages = HashMap::new();
    for storage in referenced_storages(&object) {
        if storages.contains_key(&storage.key) {
            continue;
        }
        let name = format!("{dir}/{}", storage.key);
        let entry = zip
            .by_name_raw(name.as_bytes())
            .map_err(|e| format!("storage {name}: {e}"))?;
        if entry.compression() != zip::CompressionMethod::Stored || entry.encrypted() {
            return Err(format!(
                "storage {name} is compressed or encrypted; torch.save stores storages uncompressed"
            ));
        }
        let start = entry
            .data_start()
            .ok_or_else(|| format!("storage {name}: no data offset"))?;
        let len = entry.size();
        let end = start.checked_add(len);
        if entry.compressed_size() != len || end.is_none_or(|end| end > file_len) {
            return Err(format!(
                "storage {name} claims {len} bytes at {start}, past the end of the {file_len}-byte file"
            ));
        }
        storages.insert(storage.key.clone(), StorageBytes { start, len });
    }
    Ok((object, storages))
}

/// The legacy layout: magic, protocol version, system info and the object, each a pickle; then a
/// pickle listing the storage keys; then per key an 8-byte element count and the raw elements.
fn index_legacy(
    file: &mut File,
    file_len: u64,
) -> Result<(Value, HashMap<String, StorageBytes>), String> {
    let mut head = Vec::new();
    (&mut *file)
        .take(MAX_PICKLE_BYTES)
        .read_to_end(&mut head)
        .map_err(|e| format!("reading: {e}"))?;
    let mut pos = 0usize;
    let mut next = |what: &str| -> Result<Value, String> {
        let rest = &head[pos..];
        let (value, used) = pickle::unpickle(rest, unpickle_limits(rest.len()))
            .map_err(|e| format!("unpickling the {what} (at byte {pos}): {e}"))?;
        pos += used;
        Ok(value)
    };
    next("magic number")?;
    if next("protocol version")? != Value::Int(1001) {
        return Err("unknown legacy torch protocol version (expected 1001)".into());
    }
    if let Value::Dict(info) = next("system info")? {
        let big = info
            .iter()
            .any(|(k, v)| *k == Value::Str("little_endian".into()) && *v == Value::Bool(false));
        if big {
            return Err("the checkpoint was saved big-endian; not supported".into());
        }
    }
    let object = next("object")?;
    let Value::List(keys) = next("storage key list")? else {
        return Err("the storage key list is not a list".into());
    };

    let referenced: HashMap<&str, &StorageRef> = referenced_storages(&object)
        .map(|s| (s.key.as_str(), s))
        .collect();
    let mut storages = HashMap::new();
    let mut at = pos as u64;
    for key in keys {
        let Value::Str(key) = key else {
            return Err("a storage key is not a string".into());
        };
        let storage = referenced
            .get(key.as_str())
            .ok_or_else(|| format!("storage {key} is listed but no tensor uses it"))?;
        let elem = element_size(storage)?;
        let mut count = [0u8; 8];
        file.seek(SeekFrom::Start(at))
            .and_then(|_| file.read_exact(&mut count))
            .map_err(|e| format!("storage {key}: its size record at byte {at} is cut off ({e})"))?;
        let len = u64::from_le_bytes(count)
            .checked_mul(elem)
            .ok_or_else(|| format!("storage {key}: size overflows"))?;
        let start = at + 8;
        let end = start
            .checked_add(len)
            .filter(|&end| end <= file_len)
            .ok_or_else(|| {
                format!("storage {key} claims {len} bytes at {start}, past the end of the {file_len}-byte file")
            })?;
        storages.insert(key, StorageBytes { start, len });
        at = end;
    }
    Ok((object, storages))
}

/// Every storage a tensor in `object` uses (walks containers; depth is bounded by the unpickler).
fn referenced_storages(object: &Value) -> impl Iterator<Item = &StorageRef> {
    let mut out = Vec::new();
    let mut todo = vec![object];
    while let Some(v) = todo.pop() {
        match v {
            Value::Tensor(t) => out.push(&t.storage),
            Value::Storage(s) => out.push(s),
            Value::Tuple(items) | Value::List(items) | Value::Set(items) => todo.extend(items),
            Value::Dict(pairs) => {
                for (k, v) in pairs {
                    todo.push(k);
                    todo.push(v);
                }
            }
            Value::Object(o) => {
                todo.push(&o.0);
                todo.push(&o.1);
            }
            _ => {}
        }
    }
    out.into_iter()
}

/// Bytes per element of a storage, also for types we do not load (to step over them).
fn element_size(storage: &StorageRef) -> Result<u64, String> {
    Ok(match &storage.dtype {
        Ok(d) => d.size_in_bytes() as u64,
        Err(class) => match class.as_str() {
            "torch.BoolStorage"
            | "torch.CharStorage"
            | "torch.QUInt8Storage"
            | "torch.QInt8Storage" => 1,
            "torch.ShortStorage" => 2,
            "torch.IntStorage" | "torch.QInt32Storage" => 4,
            "torch.ComplexFloatStorage" => 8,
            "torch.ComplexDoubleStorage" => 16,
            other => return Err(format!("storage {}: unknown type {other}", storage.key)),
        },
    })
}
