//! Checkpoints written by real `torch.save` (tests/fixtures/torch/make_ckpt.py; the torch version
//! is recorded in expected.json), in the zip and the legacy format: every tensor's dtype, shape
//! and values must come out exactly as torch stored them, including transposed, strided, offset
//! and storage-sharing views, a Parameter, a 0-d scalar and an int64 buffer.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Device};
use floor33::weights::{PthLayout, SourceFormat, WeightSource};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torch")
        .join(name)
}

struct Expected {
    dtype: DType,
    shape: Vec<usize>,
    values: Vec<f64>,
}

fn expected() -> BTreeMap<String, Expected> {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["tensors"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, t)| {
            let dtype = match t["dtype"].as_str().unwrap() {
                "float32" => DType::F32,
                "float16" => DType::F16,
                "bfloat16" => DType::BF16,
                "float64" => DType::F64,
                "int64" => DType::I64,
                other => panic!("fixture dtype {other}"),
            };
            let shape = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let values = t["f64_bits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| f64::from_bits(v.as_u64().unwrap()))
                .collect();
            (
                name.clone(),
                Expected {
                    dtype,
                    shape,
                    values,
                },
            )
        })
        .collect()
}

fn assert_matches_torch(file: &str) {
    let src = WeightSource::open(&[fixture(file)]).unwrap();
    assert_eq!(
        src.format(),
        SourceFormat::Pth(PthLayout::StateDict),
        "{file}"
    );
    let want = expected();
    let manifest = src.manifest().0;
    assert_eq!(
        manifest.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{file}: tensor names"
    );
    for (name, e) in &want {
        assert_eq!(manifest[name], e.shape, "{file}: {name} shape");
        assert_eq!(src.dtype(name), Some(e.dtype), "{file}: {name} dtype");
        let t = src.load(name, &Device::Cpu).unwrap();
        assert_eq!(t.dtype(), e.dtype, "{file}: {name} loaded dtype");
        assert_eq!(t.dims(), e.shape.as_slice(), "{file}: {name} loaded shape");
        // Every stored dtype converts to f64 exactly (the int64 value is below 2^53).
        let got: Vec<f64> = t
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(got, e.values, "{file}: {name} values");
    }
}

#[test]
fn zip_checkpoint_from_torch_save_reads_exactly() {
    assert_matches_torch("state_dict_zip.ckpt");
}

#[test]
fn legacy_checkpoint_from_torch_save_reads_exactly() {
    assert_matches_torch("state_dict_legacy.ckpt");
}

#[test]
fn torch_views_are_what_the_fixture_claims() {
    // Guards the fixture: the view tensors really are views (else the test proves less).
    let want = expected();
    let strided = &want["views.strided"];
    assert_eq!(strided.shape, vec![3, 3]);
    // base[1:, ::2] starts at base[1][0], which is the transposed view's second element.
    let transposed = &want["views.transposed"];
    assert_eq!(transposed.shape, vec![6, 4]);
    assert_eq!(
        strided.values[0], transposed.values[1],
        "starts at storage offset 6"
    );
    assert_eq!(
        strided.values[1],
        transposed.values[2 * 4 + 1],
        "every other column"
    );
    let head = &want["views.shared_head"];
    let tail = &want["views.shared_tail"];
    assert_eq!((head.values.len(), tail.values.len()), (4, 4));
    assert_eq!(
        tail.values[0],
        6.0 * -0.125 + 2.0,
        "starts at storage offset 6"
    );
}
