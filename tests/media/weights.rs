//! Loading, checking, converting and locating checkpoints (src/weights), on small files written
//! here: torch zip checkpoints come from the test-only writer in tests/support/torch_zip.rs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::support::torch_zip::{write_test_checkpoint, TestLayout};
use candle_core::{DType, Device, Tensor};
use floor33::weights::{
    check, checkpoint_for, convert_to_safetensors, download_from, download_variant,
    is_schedule_buffer, not_a_module_weight, record_requests, record_requests_against,
    unused_at_inference, Manifest, PthLayout, SourceFormat, WeightSource, WeightsError,
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");

fn tmp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("floor33-weights-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A few tensors with the real checkpoints' naming, including a scalar and a schedule buffer.
fn sample_tensors(dtype: DType) -> Vec<(&'static str, Tensor)> {
    let dev = Device::Cpu;
    let ramp = |n: usize, scale: f64| {
        Tensor::arange(0f32, n as f32, &dev)
            .unwrap()
            .affine(scale, -0.5)
            .unwrap()
    };
    let t = |x: Tensor| x.to_dtype(dtype).unwrap();
    vec![
        (
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
            t(ramp(12, 0.37).reshape((3, 4)).unwrap()),
        ),
        ("model.diffusion_model.out.2.bias", t(ramp(4, -1.25))),
        (
            "first_stage_model.decoder.conv_in.weight",
            t(ramp(2 * 3 * 3 * 3, 0.01).reshape((2, 3, 3, 3)).unwrap()),
        ),
        (
            "cond_stage_model.model.logit_scale",
            t(Tensor::new(4.6052f32, &dev).unwrap()),
        ),
        ("betas", t(ramp(5, 0.001))),
    ]
}

fn as_f32(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn expected_manifest(tensors: &[(&str, Tensor)]) -> Manifest {
    tensors
        .iter()
        .map(|(n, t)| (n.to_string(), t.dims().to_vec()))
        .collect()
}

/// Loads every tensor through the VarBuilder at `dtype` and compares with the originals.
fn assert_loads(src: &WeightSource, tensors: &[(&str, Tensor)], dtype: DType) {
    let vb = src.var_builder(dtype, &Device::Cpu);
    for (name, want) in tensors {
        let got = vb.get(want.dims(), name).unwrap();
        assert_eq!(got.dtype(), dtype, "{name}");
        assert_eq!(as_f32(&got), as_f32(want), "{name}");
    }
}

#[test]
fn pth_all_layouts_and_storage_dtypes() {
    let dir = tmp_dir("pth");
    let cases = [
        (TestLayout::Bare, PthLayout::Bare),
        (TestLayout::StateDict, PthLayout::StateDict),
        (TestLayout::DeepspeedModule, PthLayout::DeepspeedModule),
    ];
    for (written, detected) in cases {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let tensors = sample_tensors(dtype);
            let path = dir.join(format!("{written:?}-{dtype:?}.ckpt"));
            write_test_checkpoint(&path, &tensors, written).unwrap();

            let src = WeightSource::open(&[&path]).unwrap();
            assert_eq!(src.format(), SourceFormat::Pth(detected));
            assert_eq!(src.manifest(), expected_manifest(&tensors));
            for (name, _) in &tensors {
                assert_eq!(src.dtype(name), Some(dtype));
            }
            // Stored dtype, and cast up to f32 (the reference upcasts the fp16 i2v weights).
            assert_loads(&src, &tensors, dtype);
            assert_loads(&src, &tensors, DType::F32);
            let betas = src.load("betas", &Device::Cpu).unwrap();
            assert_eq!(betas.dtype(), dtype);
        }
    }
}

#[test]
fn pth_values_exact_in_fp32_and_rounded_in_fp16() {
    let dir = tmp_dir("pth-values");
    let f32s = sample_tensors(DType::F32);
    let path = dir.join("fp32.ckpt");
    write_test_checkpoint(&path, &f32s, TestLayout::StateDict).unwrap();
    let src = WeightSource::open(&[&path]).unwrap();
    let vb = src.var_builder(DType::F16, &Device::Cpu);
    let name = f32s[0].0;
    let got = as_f32(&vb.get((3, 4), name).unwrap());
    for (g, w) in got.iter().zip(as_f32(&f32s[0].1)) {
        assert_eq!(*g, half::f16::from_f32(w).to_f32());
    }
}

#[test]
fn var_builder_rejects_wrong_shape_and_missing_key() {
    let dir = tmp_dir("pth-shape");
    let tensors = sample_tensors(DType::F32);
    let path = dir.join("m.ckpt");
    write_test_checkpoint(&path, &tensors, TestLayout::Bare).unwrap();
    let vb = WeightSource::open(&[&path])
        .unwrap()
        .var_builder(DType::F32, &Device::Cpu);
    let err = vb.get((4, 3), tensors[0].0).unwrap_err().to_string();
    assert!(err.contains("shape mismatch"), "{err}");
    assert!(vb.get(3, "model.nope").is_err());
    assert!(vb.contains_tensor("betas"));
    assert!(!vb.contains_tensor("model.nope"));
}

#[test]
fn safetensors_round_trip_over_two_files() {
    let dir = tmp_dir("st");
    let tensors = sample_tensors(DType::F16);
    let (a, b) = tensors.split_at(2);
    let write = |part: &[(&str, Tensor)], file: &str| {
        let map: HashMap<String, Tensor> = part
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        let path = dir.join(file);
        candle_core::safetensors::save(&map, &path).unwrap();
        path
    };
    let paths = [write(a, "a.safetensors"), write(b, "b.safetensors")];
    let src = WeightSource::open(&paths).unwrap();
    assert_eq!(src.format(), SourceFormat::Safetensors);
    assert_eq!(src.manifest(), expected_manifest(&tensors));
    assert_eq!(src.dtype("betas"), Some(DType::F16));
    assert_loads(&src, &tensors, DType::F16);
    assert_loads(&src, &tensors, DType::F32);

    // The same name in two files is ambiguous: refused.
    let dup = [write(a, "c.safetensors"), write(a, "d.safetensors")];
    let err = WeightSource::open(&dup).unwrap_err();
    assert!(err.to_string().contains("two files"), "{err}");
}

#[test]
fn convert_pth_to_f16_safetensors() {
    let dir = tmp_dir("convert");
    let tensors = sample_tensors(DType::F32);
    let ckpt = dir.join("model.ckpt");
    write_test_checkpoint(&ckpt, &tensors, TestLayout::StateDict).unwrap();
    let out = dir.join("model.safetensors");
    let mut calls = Vec::new();
    let keep = |k: &str| !unused_at_inference(k);
    let written = convert_to_safetensors(&ckpt, &out, Some(DType::F16), &keep, |d, t| {
        calls.push((d, t))
    })
    .unwrap();
    assert!(!dir.join("model.safetensors.partial").exists());

    let src = WeightSource::open(&[&out]).unwrap();
    let kept: Vec<_> = tensors.iter().filter(|(n, _)| keep(n)).cloned().collect();
    assert_eq!(kept.len(), tensors.len() - 1, "logit_scale dropped");
    assert_eq!(src.manifest(), expected_manifest(&kept));
    assert_eq!(written, src.manifest());
    for (name, want) in &kept {
        let stored = if is_schedule_buffer(name) {
            DType::F32
        } else {
            DType::F16
        };
        assert_eq!(src.dtype(name), Some(stored), "{name}");
        let got = as_f32(&src.load(name, &Device::Cpu).unwrap());
        for (g, w) in got.iter().zip(as_f32(want)) {
            // Within f16 rounding: relative 2^-11, plus subnormal slack.
            assert!(
                (g - w).abs() <= w.abs() / 2048.0 + 1e-7,
                "{name}: {g} vs {w}"
            );
        }
    }
    let (done, total) = *calls.last().unwrap();
    assert_eq!(done, total);
    let data_bytes: u64 = (12 + 4 + 54) * 2 + 5 * 4;
    assert_eq!(total, data_bytes);
    assert_eq!(calls.first(), Some(&(0, total)));
}

#[test]
fn check_reports_everything_at_once() {
    let m = |pairs: &[(&str, &[usize])]| -> Manifest {
        pairs
            .iter()
            .map(|(k, s)| (k.to_string(), s.to_vec()))
            .collect()
    };
    let requested = m(&[
        ("a.weight", &[2, 3]),
        ("b.weight", &[4]),
        ("c.weight", &[1]),
    ]);
    let available = m(&[
        ("a.weight", &[3, 2]),
        ("c.weight", &[1]),
        ("extra.bias", &[5]),
        ("betas", &[1000]),
        ("cond_stage_model.model.text_projection", &[1024, 1024]),
    ]);
    let err = check(&requested, &available, &not_a_module_weight).unwrap_err();
    let WeightsError::Mismatch(report) = &err else {
        panic!("expected Mismatch, got {err}")
    };
    assert_eq!(report.missing, vec!["b.weight"]);
    assert_eq!(report.unexpected, vec!["extra.bias"]);
    assert_eq!(
        report.shape,
        vec![("a.weight".into(), vec![2, 3], vec![3, 2])]
    );
    let msg = err.to_string();
    for part in [
        "1 missing",
        "1 unexpected",
        "1 shape mismatches",
        "b.weight",
        "extra.bias",
        "a.weight: [2, 3] vs [3, 2]",
    ] {
        assert!(msg.contains(part), "{part:?} not in:\n{msg}");
    }
    assert!(check(&requested, &requested, &|_| false).is_ok());

    // Long lists are cut to 20 lines plus a count.
    let many: Manifest = (0..25).map(|i| (format!("k{i:02}"), vec![1])).collect();
    let msg = check(&many, &Manifest::default(), &|_| false)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("k19") && !msg.contains("k20") && msg.contains("... and 5 more"),
        "{msg}"
    );
}

/// A small model from candle_nn's builders, nested with `pp` like the real modules.
fn tiny_model(vb: candle_nn::VarBuilder) -> candle_core::Result<()> {
    let blk = vb.pp("model.diffusion_model.input_blocks.0.0");
    candle_nn::conv2d(4, 8, 3, Default::default(), blk.clone())?;
    candle_nn::linear(8, 16, vb.pp("model.diffusion_model.time_embed.0"))?;
    candle_nn::linear_no_bias(16, 8, vb.pp("model.diffusion_model.time_embed.2"))?;
    candle_nn::layer_norm(8, 1e-5, vb.pp("cond_stage_model.model.ln_final"))?;
    candle_nn::embedding(10, 8, vb.pp("cond_stage_model.model.token_embedding"))?;
    vb.get((3, 8), "cond_stage_model.model.positional_embedding")?;
    Ok(())
}

#[test]
fn record_requests_lists_exactly_the_requested_keys() {
    let got = record_requests(DType::F32, tiny_model).unwrap();
    let want: Vec<(&str, Vec<usize>)> = vec![
        ("cond_stage_model.model.ln_final.bias", vec![8]),
        ("cond_stage_model.model.ln_final.weight", vec![8]),
        ("cond_stage_model.model.positional_embedding", vec![3, 8]),
        ("cond_stage_model.model.token_embedding.weight", vec![10, 8]),
        ("model.diffusion_model.input_blocks.0.0.bias", vec![8]),
        (
            "model.diffusion_model.input_blocks.0.0.weight",
            vec![8, 4, 3, 3],
        ),
        ("model.diffusion_model.time_embed.0.bias", vec![16]),
        ("model.diffusion_model.time_embed.0.weight", vec![16, 8]),
        ("model.diffusion_model.time_embed.2.weight", vec![8, 16]),
    ];
    let want: Manifest = want.into_iter().map(|(k, s)| (k.to_string(), s)).collect();
    assert_eq!(got, want);

    // Recorded requests checked against a written checkpoint: identical key sets pass.
    let dir = tmp_dir("record");
    let tensors: Vec<(String, Tensor)> = want
        .0
        .iter()
        .map(|(k, s)| {
            (
                k.clone(),
                Tensor::zeros(s.as_slice(), DType::F32, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    let refs: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(k, t)| (k.as_str(), t.clone()))
        .collect();
    let path = dir.join("tiny.ckpt");
    write_test_checkpoint(&path, &refs, TestLayout::StateDict).unwrap();
    let src = WeightSource::open(&[&path]).unwrap();
    check(&got, &src.manifest(), &not_a_module_weight).unwrap();
    tiny_model(src.var_builder(DType::F32, &Device::Cpu)).unwrap();

    // Against a manifest, optional tensors are looked up there.
    let opt = record_requests_against(DType::F16, &want, |vb| {
        if vb.contains_tensor("absent") {
            vb.get(1, "absent")?;
        }
        vb.get_unchecked("cond_stage_model.model.positional_embedding")?;
        Ok(())
    })
    .unwrap();
    assert_eq!(
        opt.keys().collect::<Vec<_>>(),
        ["cond_stage_model.model.positional_embedding"]
    );
}

#[test]
fn record_requests_does_not_allocate() {
    let start = Instant::now();
    // 10^10 f32 values = 40 GB if anything were allocated.
    let got = record_requests(DType::F32, |vb| {
        let l = candle_nn::linear(100_000, 100_000, vb.pp("huge"))?;
        Ok(l)
    })
    .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(got.get("huge.weight"), Some(&[100_000, 100_000][..]));
    assert_eq!(got.n_elements(), 100_000 * 100_000 + 100_000);

    let err = record_requests(DType::F32, |vb| {
        vb.get(3, "x")?;
        vb.get(4, "x")
    });
    assert!(err.is_err(), "one key with two shapes is a model bug");
}

#[test]
fn committed_manifests_parse_and_filters_match_spec() {
    let expect = [
        ("t2v_1024_v1", 1755, 1_584_236_020usize, 13),
        ("t2v_512_v1", 1750, 1_582_184_460, 12),
        ("t2v_512_v2", 2039, 1_850_984_324, 13),
        ("i2v_512_v1", 2520, 2_608_885_125, 13),
    ];
    for (name, n, elems, buffers) in expect {
        let m =
            Manifest::from_json_file(&Path::new(FIXTURES).join(format!("{name}.json"))).unwrap();
        assert_eq!((m.len(), m.n_elements()), (n, elems), "{name}");
        assert_eq!(
            m.keys().filter(|k| is_schedule_buffer(k)).count(),
            buffers,
            "{name}"
        );
        let unused: Vec<_> = m.keys().filter(|k| unused_at_inference(k)).collect();
        // posterior_* (4) + text_projection + logit_scale; i2v adds the embedder's text
        // leftovers (token/positional embedding, ln_final x2, text_projection, logit_scale) and
        // visual proj + ln_post x2.
        let want = if name == "i2v_512_v1" {
            4 + 2 + 6 + 3
        } else {
            4 + 2
        };
        assert_eq!(unused.len(), want, "{name}: {unused:?}");
        assert!(!unused.iter().any(|k| k.contains("visual.transformer")));
        // A model requesting every module weight passes the strict check.
        let requested = m.filter(|k| !not_a_module_weight(k));
        check(&requested, &m, &not_a_module_weight).unwrap();
        // And the JSON written back reads the same.
        assert_eq!(Manifest::from_json_str(&m.to_json(name)).unwrap(), m);
    }
}

#[test]
fn missing_file_says_how_to_download() {
    let err = WeightSource::open(&["/nonexistent/floor33/model.ckpt"]).unwrap_err();
    assert!(matches!(err, WeightsError::NotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/floor33/model.ckpt"), "{msg}");
    assert!(msg.contains("floor33 weights download"), "{msg}");
    assert!(msg.contains("vc2"), "{msg}");
}

#[test]
fn unreadable_files_are_format_errors() {
    let dir = tmp_dir("bad");
    let junk = dir.join("junk.ckpt");
    std::fs::write(&junk, b"this is not a checkpoint").unwrap();
    assert!(matches!(
        WeightSource::open(&[&junk]),
        Err(WeightsError::Format { .. })
    ));

    // A zip whose pickle holds no tensor (e.g. the wrong top-level object) is not "0 tensors".
    let empty = dir.join("empty.ckpt");
    write_test_checkpoint(&empty, &[], TestLayout::StateDict).unwrap();
    let err = WeightSource::open(&[&empty]).unwrap_err().to_string();
    assert!(err.contains("no tensors"), "{err}");

    assert!(WeightSource::open::<&str>(&[]).is_err());
}

#[test]
fn variant_table() {
    assert_eq!(
        checkpoint_for("t2v-1024"),
        Some(("VideoCrafter/Text2Video-1024", "model.ckpt"))
    );
    assert_eq!(
        checkpoint_for("t2v-512"),
        Some(("VideoCrafter/Text2Video-512", "model.ckpt"))
    );
    assert_eq!(
        checkpoint_for("vc2"),
        Some(("VideoCrafter/VideoCrafter2", "model.ckpt"))
    );
    assert_eq!(
        checkpoint_for("i2v"),
        Some(("VideoCrafter/Image2Video-512", "model.ckpt"))
    );
    assert_eq!(checkpoint_for("sd15"), None);
}

#[tokio::test]
async fn download_errors_are_friendly_offline() {
    let dir = tmp_dir("download");
    let err = download_variant("nope", Some(&dir)).await.unwrap_err();
    assert!(matches!(err, WeightsError::UnknownVariant { .. }));
    assert!(err.to_string().contains("t2v-1024"), "{err}");

    // Nothing listens on port 9 locally: same path as being offline, without the network.
    let err = download_from(
        "http://127.0.0.1:9",
        "VideoCrafter/VideoCrafter2",
        "model.ckpt",
        Some(&dir),
        false,
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, WeightsError::Download { .. }), "{msg}");
    assert!(
        msg.contains("cannot reach") && msg.contains("VideoCrafter/VideoCrafter2"),
        "{msg}"
    );
}

#[test]
fn sources_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<WeightSource>();
    shareable::<WeightsError>();
}
