//! Tensor -> 8-bit RGB frames, matching VideoCrafter's `save_videos` conversion exactly.
//!
//! The original does, in float32: `clamp(-1, 1)`, `(x + 1) / 2`, `* 255`, then `.to(uint8)`,
//! which truncates toward zero (so 0.0 maps to 127, not 128). We do the same arithmetic on
//! the host in f32 rather than with tensor ops, so no fused or reordered op can move a value
//! across an integer boundary.

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder, RgbImage};

/// A clip of equally sized RGB frames at a constant frame rate.
#[derive(Clone, Debug)]
pub struct VideoFrames {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub frames: Vec<RgbImage>,
}

impl VideoFrames {
    /// Builds a clip, checking that there is at least one frame and that all share one size.
    pub fn new(fps: u32, frames: Vec<RgbImage>) -> Result<Self> {
        ensure!(fps > 0, "fps must be positive");
        let first = frames.first().context("a video needs at least one frame")?;
        let (width, height) = first.dimensions();
        ensure!(width > 0 && height > 0, "frames must not be empty images");
        for (i, f) in frames.iter().enumerate() {
            ensure!(
                f.dimensions() == (width, height),
                "frame {i} is {:?}, expected {:?}",
                f.dimensions(),
                (width, height)
            );
        }
        Ok(Self {
            width,
            height,
            fps,
            frames,
        })
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True when the clip has no frames (only possible if built by hand).
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

/// The `save_videos` pixel mapping for one value: clamp, shift to [0, 1], scale, truncate.
#[inline]
pub fn to_u8(v: f32) -> u8 {
    // NaN stays NaN through clamp and `as u8` maps it to 0 (the usual result of torch's cast).
    (((v.clamp(-1.0, 1.0) + 1.0) / 2.0) * 255.0) as u8
}

/// Converts one decoded sample `(3, t, H, W)` (a leading batch dim of 1 is also accepted)
/// of any float dtype, on any device, into frames.
pub fn frames_from_tensor(video: &Tensor, fps: u32) -> Result<VideoFrames> {
    let video = match video.rank() {
        5 if video.dim(0)? == 1 => video.squeeze(0)?,
        5 => bail!(
            "expected one sample, got a batch of shape {:?}; split it first",
            video.dims()
        ),
        4 => video.clone(),
        _ => bail!(
            "expected a (3, t, H, W) video tensor, got {:?}",
            video.dims()
        ),
    };
    let (c, t, h, w) = video.dims4()?;
    ensure!(
        c == 3,
        "expected 3 channels, got {c} (shape {:?})",
        video.dims()
    );
    ensure!(
        t > 0 && h > 0 && w > 0,
        "empty video tensor {:?}",
        video.dims()
    );
    match video.dtype() {
        DType::F32 | DType::F16 | DType::BF16 | DType::F64 => {}
        other => bail!("expected a float video tensor, got {other:?}"),
    }
    // Widening f16/bf16 -> f32 is exact, as is torch's `.float()`; f64 narrows like torch would
    // if the model ran in double (it does not).
    let data: Vec<f32> = video
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()
        .context("reading the video tensor back to the host")?;

    let plane = h * w;
    let frames = (0..t)
        .map(|f| {
            let r = &data[f * plane..(f + 1) * plane];
            let g = &data[(t + f) * plane..(t + f + 1) * plane];
            let b = &data[(2 * t + f) * plane..(2 * t + f + 1) * plane];
            let mut buf = Vec::with_capacity(plane * 3);
            for i in 0..plane {
                buf.extend_from_slice(&[to_u8(r[i]), to_u8(g[i]), to_u8(b[i])]);
            }
            RgbImage::from_raw(w as u32, h as u32, buf).context("frame buffer size")
        })
        .collect::<Result<Vec<_>>>()?;
    VideoFrames::new(fps, frames)
}

/// Small PNG of a frame for progress messages: longest side at most `max_side` (never
/// enlarged), fast compression, since these are sent often and only looked at briefly.
pub fn preview_png(frame: &RgbImage, max_side: u32) -> Result<Vec<u8>> {
    ensure!(max_side > 0, "max_side must be positive");
    let (w, h) = frame.dimensions();
    ensure!(w > 0 && h > 0, "cannot preview an empty image");
    let long = w.max(h);
    let small;
    let img = if long > max_side {
        let scale = |v: u32| ((u64::from(v) * u64::from(max_side) / u64::from(long)) as u32).max(1);
        small = image::imageops::thumbnail(frame, scale(w), scale(h));
        &small
    } else {
        frame
    };
    let mut out = Vec::new();
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            ExtendedColorType::Rgb8,
        )
        .context("encoding preview PNG")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_matches_torch_truncation() {
        assert_eq!(to_u8(-1.5), 0);
        assert_eq!(to_u8(-1.0), 0);
        assert_eq!(to_u8(0.0), 127);
        assert_eq!(to_u8(0.999), 254);
        assert_eq!(to_u8(1.0), 255);
        assert_eq!(to_u8(7.0), 255);
        assert_eq!(to_u8(f32::NAN), 0);
    }

    #[test]
    fn preview_keeps_aspect_and_never_enlarges() {
        let img = RgbImage::from_pixel(1024, 576, image::Rgb([10, 20, 30]));
        let png = preview_png(&img, 256).unwrap();
        let back = image::load_from_memory(&png).unwrap();
        assert_eq!((back.width(), back.height()), (256, 144));
        let tiny = RgbImage::new(40, 30);
        let back = image::load_from_memory(&preview_png(&tiny, 256).unwrap()).unwrap();
        assert_eq!((back.width(), back.height()), (40, 30));
    }
}
