//! Round trips through libx264/MP4 and the tensor -> frame conversion.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use floor33::video::{
    decode_mp4, encode_mp4, encode_mp4_to_vec, frames_from_tensor, preview_png, probe_mp4,
    EncodeOptions, VideoFrames,
};
use image::{Rgb, RgbImage};

const FPS: u32 = 8;

/// Per-test scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("floor33-video-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Smooth moving colour gradients: easy for H.264, so a fair PSNR check.
fn gradients(w: u32, h: u32, n: usize) -> VideoFrames {
    let frames = (0..n)
        .map(|t| {
            let t = t as f32;
            RgbImage::from_fn(w, h, |x, y| {
                let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
                let tau = std::f32::consts::TAU;
                let r = 128.0 + 100.0 * (tau * (u + 0.04 * t)).sin();
                let g = 128.0 + 100.0 * (tau * (v * 0.8 - 0.03 * t)).cos();
                let b = 40.0 + 170.0 * (u * v + 0.02 * t).fract();
                Rgb([r as u8, g as u8, b as u8])
            })
        })
        .collect();
    VideoFrames::new(FPS, frames).unwrap()
}

/// Independent per-pixel noise: the worst case for size.
fn noise(w: u32, h: u32, n: usize) -> VideoFrames {
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 24) as u8
    };
    let frames = (0..n)
        .map(|_| RgbImage::from_fn(w, h, |_, _| Rgb([next(), next(), next()])))
        .collect();
    VideoFrames::new(FPS, frames).unwrap()
}

/// PSNR over the top-left `a`-sized region of `b` (b may be padded larger).
fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    let mut se = 0f64;
    for (x, y, p) in a.enumerate_pixels() {
        let q = b.get_pixel(x, y);
        for c in 0..3 {
            let d = f64::from(p[c]) - f64::from(q[c]);
            se += d * d;
        }
    }
    let mse = se / (a.width() * a.height() * 3) as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0 * 255.0 / mse).log10()
    }
}

/// Top-level MP4 box types in order.
fn top_level_boxes(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 8 <= bytes.len() {
        let size32 = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let kind = String::from_utf8_lossy(&bytes[pos + 4..pos + 8]).into_owned();
        let size = match size32 {
            0 => bytes.len() - pos,
            1 => u64::from_be_bytes(bytes[pos + 8..pos + 16].try_into().unwrap()) as usize,
            s => s,
        };
        assert!(size >= 8, "bad box size {size} for {kind} at {pos}");
        out.push(kind);
        pos += size;
    }
    assert_eq!(pos, bytes.len(), "boxes do not tile the file");
    out
}

fn check_round_trip(src: &VideoFrames, path: &Path, min_psnr: f64) {
    let opts = EncodeOptions::default();
    let report = encode_mp4(src, &opts, path).unwrap();
    let (ew, eh) = ((src.width + 1) & !1, (src.height + 1) & !1);
    assert_eq!((report.width, report.height), (ew, eh));
    assert_eq!(report.frames, src.len());
    assert_eq!(report.bytes, std::fs::metadata(path).unwrap().len());
    eprintln!(
        "{}x{}: {} frames, {} bytes, encoded in {:?}",
        src.width, src.height, report.frames, report.bytes, report.elapsed
    );

    let probe = probe_mp4(path).unwrap();
    assert_eq!(probe.codec_name, "h264");
    assert_eq!(probe.pix_fmt, "yuv420p");
    assert_eq!((probe.width, probe.height), (ew, eh));
    assert_eq!(probe.frames, src.len());
    assert!(
        (probe.fps - f64::from(FPS)).abs() < 1e-6,
        "fps {}",
        probe.fps
    );

    let t0 = std::time::Instant::now();
    let decoded = decode_mp4(path).unwrap();
    eprintln!("  decoded in {:?}", t0.elapsed());
    assert_eq!(decoded.len(), src.len());
    let mut worst = f64::INFINITY;
    for (i, (a, b)) in src.frames.iter().zip(&decoded).enumerate() {
        assert_eq!(b.dimensions(), (ew, eh));
        let p = psnr(a, b);
        assert!(p > min_psnr, "frame {i}: PSNR {p:.2} dB");
        worst = worst.min(p);
    }
    eprintln!("  worst frame PSNR {worst:.2} dB");

    let boxes = top_level_boxes(&std::fs::read(path).unwrap());
    assert_eq!(boxes[0], "ftyp", "{boxes:?}");
    let moov = boxes.iter().position(|b| b == "moov").expect("moov");
    let mdat = boxes.iter().position(|b| b == "mdat").expect("mdat");
    assert!(moov < mdat, "not faststart: {boxes:?}");
}

#[test]
fn round_trip_512x320() {
    let dir = Scratch::new("512");
    check_round_trip(&gradients(512, 320, 16), &dir.file("a.mp4"), 30.0);
}

#[test]
fn round_trip_64x48() {
    let dir = Scratch::new("64");
    check_round_trip(&gradients(64, 48, 16), &dir.file("a.mp4"), 30.0);
}

#[test]
fn odd_sizes_are_edge_padded() {
    let dir = Scratch::new("odd");
    check_round_trip(&gradients(63, 47, 16), &dir.file("a.mp4"), 30.0);
    // A single odd frame, and odd scale targets (rounded down to even).
    let one = gradients(33, 17, 1);
    let path = dir.file("one.mp4");
    let r = encode_mp4(&one, &EncodeOptions::default(), &path).unwrap();
    assert_eq!((r.width, r.height), (34, 18));
    assert_eq!(probe_mp4(&path).unwrap().frames, 1);
    let opts = EncodeOptions {
        scale: Some((31, 21)),
        ..Default::default()
    };
    let r = encode_mp4(&gradients(63, 47, 4), &opts, &path).unwrap();
    assert_eq!((r.width, r.height), (30, 20));
    let p = probe_mp4(&path).unwrap();
    assert_eq!((p.width, p.height, p.frames), (30, 20, 4));
}

#[test]
fn scale_downsizes() {
    let dir = Scratch::new("scale");
    let path = dir.file("a.mp4");
    let opts = EncodeOptions {
        scale: Some((256, 160)),
        ..Default::default()
    };
    let r = encode_mp4(&gradients(512, 320, 16), &opts, &path).unwrap();
    assert_eq!((r.width, r.height), (256, 160));
    let decoded = decode_mp4(&path).unwrap();
    assert_eq!(decoded.len(), 16);
    assert_eq!(decoded[0].dimensions(), (256, 160));
}

#[test]
fn vbv_cap_shrinks_noisy_content() {
    let src = noise(512, 320, 16);
    let uncapped = EncodeOptions {
        max_kbps: None,
        ..Default::default()
    };
    let capped = EncodeOptions {
        max_kbps: Some(1000),
        ..Default::default()
    };
    let a = encode_mp4_to_vec(&src, &uncapped).unwrap();
    let b = encode_mp4_to_vec(&src, &capped).unwrap();
    eprintln!(
        "noise 512x320: uncapped {} B, capped at 1000 kbps {} B",
        a.len(),
        b.len()
    );
    assert!(
        b.len() < a.len() / 2,
        "capped {} vs uncapped {}",
        b.len(),
        a.len()
    );
    // 2 s at 1000 kbit/s plus at most one 2000 kbit buffer: ~500 kB.
    assert!(b.len() < 600_000, "capped size {}", b.len());
    assert_eq!(&b[4..8], b"ftyp");
}

#[test]
fn default_cap_keeps_noisy_1024x576_under_8mb() {
    let src = noise(1024, 576, 16);
    let t0 = std::time::Instant::now();
    let bytes = encode_mp4_to_vec(&src, &EncodeOptions::default()).unwrap();
    eprintln!(
        "noise 1024x576 default opts: {} B in {:?}",
        bytes.len(),
        t0.elapsed()
    );
    assert!(bytes.len() < 8_000_000, "{} bytes", bytes.len());
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let dir = Scratch::new("bad");
    let path = dir.file("a.mp4");
    let src = gradients(64, 48, 2);
    let bad_crf = EncodeOptions {
        crf: 0,
        ..Default::default()
    };
    assert!(encode_mp4(&src, &bad_crf, &path).is_err());
    let bad_preset = EncodeOptions {
        preset: "warp-speed".into(),
        ..Default::default()
    };
    assert!(encode_mp4(&src, &bad_preset, &path).is_err());
    assert!(!path.exists(), "partial file left behind");
    let mismatched = VideoFrames {
        width: 64,
        height: 48,
        fps: 8,
        frames: vec![RgbImage::new(64, 48), RgbImage::new(32, 48)],
    };
    assert!(encode_mp4(&mismatched, &EncodeOptions::default(), &path).is_err());
    assert!(VideoFrames::new(8, vec![]).is_err());
    assert!(probe_mp4(&dir.file("missing.mp4")).is_err());
    std::fs::write(&path, b"not an mp4 at all").unwrap();
    assert!(decode_mp4(&path).is_err());
}

#[test]
fn tensor_conversion_clamps_and_truncates() {
    // (3, t=2, H=1, W=4); R carries the probe values, G/B tag frame and channel order.
    let r = [-1.5f32, 1.0, 0.0, 0.999, -1.0, 2.0, -0.5, 0.5];
    let g = [-1.0f32; 8];
    let b = [1.0f32, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
    let data: Vec<f32> = r.iter().chain(&g).chain(&b).copied().collect();
    let t = Tensor::from_vec(data, (3, 2, 1, 4), &Device::Cpu).unwrap();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let v = frames_from_tensor(&t.to_dtype(dtype).unwrap(), 8).unwrap();
        assert_eq!((v.width, v.height, v.fps, v.len()), (4, 1, 8, 2));
        let f0: Vec<[u8; 3]> = v.frames[0].pixels().map(|p| p.0).collect();
        let f1: Vec<[u8; 3]> = v.frames[1].pixels().map(|p| p.0).collect();
        // 0.999 rounds to 0.99902344 in f16 (still 254) but to 1.0 in bf16 (255).
        let r3 = if dtype == DType::BF16 { 255 } else { 254 };
        assert_eq!(
            f0,
            vec![[0, 0, 255], [255, 0, 255], [127, 0, 255], [r3, 0, 255]],
            "{dtype:?}"
        );
        // -0.5 -> 63.75 -> 63; 0.5 -> 191.25 -> 191.
        assert_eq!(
            f1,
            vec![[0, 0, 127], [255, 0, 127], [63, 0, 127], [191, 0, 127]],
            "{dtype:?}"
        );
    }
    // A leading batch of one is accepted; bigger batches and wrong channel counts are not.
    let v = frames_from_tensor(&t.unsqueeze(0).unwrap(), 8).unwrap();
    assert_eq!(v.len(), 2);
    let two = Tensor::zeros((2, 3, 2, 4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(frames_from_tensor(&two, 8).is_err());
    let four = Tensor::zeros((4, 2, 4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(frames_from_tensor(&four, 8).is_err());
    let ints = Tensor::zeros((3, 2, 4, 4), DType::U8, &Device::Cpu).unwrap();
    assert!(frames_from_tensor(&ints, 8).is_err());
}

#[test]
fn tensor_to_mp4_end_to_end() {
    let dir = Scratch::new("tensor");
    // Smooth ramps in [-1, 1] laid out (3, t, H, W).
    let (t, h, w) = (16usize, 64usize, 96usize);
    let mut data = Vec::with_capacity(3 * t * h * w);
    for c in 0..3 {
        for f in 0..t {
            for y in 0..h {
                for x in 0..w {
                    let v = match c {
                        0 => x as f32 / w as f32,
                        1 => y as f32 / h as f32,
                        _ => f as f32 / t as f32,
                    };
                    data.push(v * 2.0 - 1.0);
                }
            }
        }
    }
    let tensor = Tensor::from_vec(data, (3, t, h, w), &Device::Cpu).unwrap();
    let frames = frames_from_tensor(&tensor, FPS).unwrap();
    assert_eq!((frames.width, frames.height, frames.len()), (96, 64, 16));
    check_round_trip(&frames, &dir.file("t.mp4"), 30.0);
    let png = preview_png(&frames.frames[0], 48).unwrap();
    let back = image::load_from_memory(&png).unwrap();
    assert_eq!((back.width(), back.height()), (48, 32));
}
