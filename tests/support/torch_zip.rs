//! TEST-ONLY writer of PyTorch zip checkpoints (the `torch.save` format), so loader tests need no
//! torch: pickle protocol 2 in `archive/data.pkl`, one raw little-endian storage per tensor in
//! `archive/data/N`, plus `archive/version` and `archive/byteorder`. It writes only what the
//! loaders must read (dicts, OrderedDicts, `_rebuild_tensor_v2` tensors, ints); not a general
//! pickler.

use std::io::Write;
use std::path::Path;

use candle_core::{DType, Tensor};

/// Where the state dict goes in the pickled object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestLayout {
    /// The OrderedDict of tensors is the top-level object.
    Bare,
    /// `{'state_dict': OrderedDict, 'epoch': 3, 'global_step': 1234}`.
    StateDict,
    /// `{'module': OrderedDict('_forward_module.' + key), 'dp_world_size': 1}`.
    DeepspeedModule,
}

/// Writes `tensors` (CPU tensors; their dtype is the stored dtype) as a torch zip checkpoint.
pub fn write_test_checkpoint(
    path: &Path,
    tensors: &[(&str, Tensor)],
    layout: TestLayout,
) -> anyhow::Result<()> {
    let mut p = Pickle::default();
    p.op(&[0x80, 2]); // PROTO 2
    match layout {
        TestLayout::Bare => p.state_dict(tensors, "")?,
        TestLayout::StateDict => {
            p.op(b"}");
            p.unicode("state_dict");
            p.state_dict(tensors, "")?;
            p.op(b"s");
            for (k, v) in [("epoch", 3), ("global_step", 1234)] {
                p.unicode(k);
                p.int(v);
                p.op(b"s");
            }
        }
        TestLayout::DeepspeedModule => {
            p.op(b"}");
            p.unicode("module");
            p.state_dict(tensors, "_forward_module.")?;
            p.op(b"s");
            p.unicode("dp_world_size");
            p.int(1);
            p.op(b"s");
        }
    }
    p.op(b".");

    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path)?);
    zip.start_file("archive/data.pkl", options)?;
    zip.write_all(&p.bytes)?;
    zip.start_file("archive/byteorder", options)?;
    zip.write_all(b"little")?;
    for (i, (_, t)) in tensors.iter().enumerate() {
        zip.start_file(format!("archive/data/{i}"), options)?;
        // Serialise first: element-wise writes straight into the zip writer are very slow.
        let mut bytes = Vec::with_capacity(t.elem_count() * t.dtype().size_in_bytes());
        t.write_bytes(&mut bytes)?;
        zip.write_all(&bytes)?;
    }
    zip.start_file("archive/version", options)?;
    zip.write_all(b"3\n")?;
    zip.finish()?;
    Ok(())
}

#[derive(Default)]
struct Pickle {
    bytes: Vec<u8>,
    memo: Vec<(String, u8)>,
}

impl Pickle {
    fn op(&mut self, b: &[u8]) {
        self.bytes.extend_from_slice(b);
    }

    /// GLOBAL, memoised with BINPUT/BINGET the way torch's pickler repeats classes.
    fn global(&mut self, module: &str, name: &str) {
        let key = format!("{module}.{name}");
        if let Some((_, id)) = self.memo.iter().find(|(k, _)| *k == key) {
            let id = *id;
            self.op(&[b'h', id]);
            return;
        }
        self.op(b"c");
        self.op(format!("{module}\n{name}\n").as_bytes());
        let id = self.memo.len() as u8;
        self.op(&[b'q', id]);
        self.memo.push((key, id));
    }

    fn unicode(&mut self, s: &str) {
        self.op(b"X");
        self.op(&(s.len() as u32).to_le_bytes());
        self.op(s.as_bytes());
    }

    fn int(&mut self, v: usize) {
        match v {
            0..=0xff => self.op(&[b'K', v as u8]),
            0x100..=0xffff => {
                self.op(b"M");
                self.op(&(v as u16).to_le_bytes());
            }
            _ => {
                self.op(b"J");
                self.op(&(v as i32).to_le_bytes());
            }
        }
    }

    fn int_tuple(&mut self, vs: &[usize]) {
        if vs.is_empty() {
            self.op(b")");
            return;
        }
        self.op(b"(");
        for &v in vs {
            self.int(v);
        }
        self.op(b"t");
    }

    fn ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(b")R");
    }

    fn state_dict(&mut self, tensors: &[(&str, Tensor)], prefix: &str) -> anyhow::Result<()> {
        self.ordered_dict();
        self.op(b"(");
        for (i, (name, t)) in tensors.iter().enumerate() {
            self.unicode(&format!("{prefix}{name}"));
            self.tensor(i, t)?;
        }
        self.op(b"u");
        Ok(())
    }

    /// `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`.
    fn tensor(&mut self, storage: usize, t: &Tensor) -> anyhow::Result<()> {
        let class = match t.dtype() {
            DType::F32 => "FloatStorage",
            DType::F16 => "HalfStorage",
            DType::BF16 => "BFloat16Storage",
            DType::F64 => "DoubleStorage",
            other => anyhow::bail!("test writer: no storage class for {other:?}"),
        };
        let dims = t.dims().to_vec();
        let mut strides = vec![1usize; dims.len()];
        for i in (0..dims.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * dims[i + 1];
        }
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(b"(");
        // persistent id: ('storage', torch.<Class>, key, 'cpu', numel)
        self.op(b"(");
        self.unicode("storage");
        self.global("torch", class);
        self.unicode(&storage.to_string());
        self.unicode("cpu");
        self.int(t.elem_count());
        self.op(b"tQ");
        self.int(0);
        self.int_tuple(&dims);
        self.int_tuple(&strides);
        self.op(&[0x89]); // NEWFALSE: requires_grad
        self.ordered_dict(); // backward hooks
        self.op(b"tR");
        Ok(())
    }
}
