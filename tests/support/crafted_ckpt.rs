//! TEST-ONLY builder of hostile PyTorch checkpoints: a tiny pickle assembler plus a zip (or
//! legacy) wrapper, so each crafted case reads as the opcodes it is made of.

use std::io::Write;
use std::path::Path;

/// Pickle bytes under construction (protocol 2 opcodes).
#[derive(Default, Clone)]
pub struct Pk(pub Vec<u8>);

impl Pk {
    pub fn new() -> Self {
        Self(vec![0x80, 2])
    }

    pub fn op(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }

    pub fn repeat(mut self, byte: u8, n: usize) -> Self {
        self.0.extend(std::iter::repeat_n(byte, n));
        self
    }

    pub fn str(self, s: &str) -> Self {
        self.op(b"X")
            .op(&(s.len() as u32).to_le_bytes())
            .op(s.as_bytes())
    }

    /// LONG1 with 8 bytes: any i64.
    pub fn int(self, v: i64) -> Self {
        self.op(&[0x8a, 8]).op(&v.to_le_bytes())
    }

    pub fn global(self, module: &str, name: &str) -> Self {
        self.op(b"c").op(format!("{module}\n{name}\n").as_bytes())
    }

    pub fn int_tuple(self, vs: &[i64]) -> Self {
        vs.iter().fold(self.op(b"("), |p, &v| p.int(v)).op(b"t")
    }

    /// BINPERSID of `('storage', torch.<class>, key, 'cpu', numel)`.
    pub fn storage(self, class: &str, key: &str, numel: i64) -> Self {
        self.op(b"(")
            .str("storage")
            .global("torch", class)
            .str(key)
            .str("cpu")
            .int(numel)
            .op(b"tQ")
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, {})` over float storage `key`.
    pub fn tensor(self, key: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Self {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .op(b"(")
            .storage("FloatStorage", key, numel)
            .int(offset)
            .int_tuple(size)
            .int_tuple(stride)
            .op(&[0x89])
            .op(b"}tR")
    }

    /// `{name: <value built by f>}` followed by STOP: a bare state dict of one entry.
    pub fn state_dict(name: &str, f: impl FnOnce(Pk) -> Pk) -> Self {
        f(Pk::new().op(b"}").str(name)).op(b"s.")
    }
}

/// A torch zip checkpoint: `archive/data.pkl` plus stored entries `archive/data/<key>`.
pub fn write_zip(path: &Path, pickle: &[u8], storages: &[(&str, Vec<u8>)]) {
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    zip.start_file("archive/data.pkl", options).unwrap();
    zip.write_all(pickle).unwrap();
    for (key, bytes) in storages {
        zip.start_file(format!("archive/data/{key}"), options)
            .unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// A legacy (non-zip) checkpoint: magic, version, system info, `object`, the key list, then
/// `records` written as they are (8-byte element count + raw bytes each, or anything crafted).
pub fn write_legacy(path: &Path, object: &[u8], keys: &[&str], records: &[u8]) {
    let mut out = vec![
        0x80, 2, 0x8a, 10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.',
    ];
    out.extend_from_slice(&[0x80, 2, b'M', 0xe9, 0x03, b'.']);
    out.extend(
        Pk::new()
            .op(b"}")
            .str("little_endian")
            .op(&[0x88])
            .op(b"s.")
            .0,
    );
    out.extend_from_slice(object);
    out.extend(
        keys.iter()
            .fold(Pk::new().op(b"]("), |p, k| p.str(k))
            .op(b"e.")
            .0,
    );
    out.extend_from_slice(records);
    std::fs::write(path, out).unwrap();
}
