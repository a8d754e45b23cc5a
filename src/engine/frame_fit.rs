//! Fitting the conditioning picture to the video frame, as the original's image loader does
//! (`load_image_batch`: `cv2.resize(float32 RGB, (W, H), INTER_LINEAR)`, then
//! `(v / 255 - 0.5) * 2`): bilinear with pixel centres at +0.5, no antialias when shrinking,
//! edges clamped, all in f32 with no rounding to 8 bits in between. `stretch` is exactly that;
//! the default `crop` first cuts the largest centred window with the frame's aspect ratio.

use candle_core::{Device, Tensor};
use image::RgbImage;

use super::image_input::ImageFit;

/// `image` fitted to `width`×`height` as the `(1, 3, height, width)` f32 tensor in [-1, 1]
/// that the image embedder takes.
pub fn frame_tensor(image: &RgbImage, width: usize, height: usize, fit: ImageFit) -> Tensor {
    let (x0, y0, cw, ch) = window(
        image.width() as usize,
        image.height() as usize,
        width,
        height,
        fit,
    );
    let stride = image.width() as usize * 3;
    let source = &image.as_raw()[y0 * stride + x0 * 3..];
    let resized = resize_linear(source, stride, (ch, cw), (height, width));
    // Interleaved rows to channel planes, scaled as the original's loader scales.
    let mut planes = vec![0f32; 3 * height * width];
    for (i, px) in resized.chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            planes[c * height * width + i] = (v / 255.0 - 0.5) * 2.0;
        }
    }
    Tensor::from_vec(planes, (1, 3, height, width), &Device::Cpu).expect("length matches")
}

/// The source window `(x, y, w, h)` that `fit` maps onto the frame.
fn window(
    w: usize,
    h: usize,
    frame_w: usize,
    frame_h: usize,
    fit: ImageFit,
) -> (usize, usize, usize, usize) {
    let (cw, ch) = match fit {
        ImageFit::Stretch => (w, h),
        ImageFit::CentreCrop if w * frame_h > h * frame_w => ((h * frame_w / frame_h).max(1), h),
        ImageFit::CentreCrop => (w, (w * frame_h / frame_w).max(1)),
    };
    ((w - cw) / 2, (h - ch) / 2, cw, ch)
}

/// Source index and weight of the second tap for each output position along one axis:
/// `f = (d + 0.5) · src/dst - 0.5` in f64, `s = floor(f)`, weight `f - s` rounded to f32. This
/// agrees with OpenCV 4.11's float resize to one ulp (rounding `f` to f32 before the floor was
/// off by up to 20 ulp).
fn taps(src: usize, dst: usize) -> Vec<(isize, f32)> {
    let scale = 1.0 / (dst as f64 / src as f64);
    (0..dst)
        .map(|d| {
            let f = (d as f64 + 0.5) * scale - 0.5;
            let s = f.floor();
            (s as isize, (f - s) as f32)
        })
        .collect()
}

/// Bilinear resize of interleaved RGB f32 rows, horizontal pass then vertical, each output the
/// two-tap sum `a·(1 - t) + b·t`. Columns outside the pixel centres take the edge pixel; rows
/// outside are clamped to the edge row and still weighted (as OpenCV's row buffer does).
/// Row `y` of the `sh`×`sw` source starts at `src[y * stride]`; only two rows are ever
/// converted to f32 at a time, so a large upload costs no large buffer.
fn resize_linear<T: Copy + Into<f32>>(
    src: &[T],
    stride: usize,
    (sh, sw): (usize, usize),
    (dh, dw): (usize, usize),
) -> Vec<f32> {
    // Outside the pixel centres a column takes the edge pixel with weight 1 (exact).
    let columns: Vec<(usize, usize, f32, f32)> = taps(sw, dw)
        .into_iter()
        .map(|(s, t)| match s {
            s if s < 0 => (0, 0, 1.0, 0.0),
            s if s as usize >= sw - 1 => (sw - 1, sw - 1, 1.0, 0.0),
            s => (s as usize, s as usize + 1, 1.0 - t, t),
        })
        .collect();
    let horizontal = |y: usize| -> Vec<f32> {
        let row = &src[y * stride..y * stride + sw * 3];
        let mut out = Vec::with_capacity(dw * 3);
        for &(a, b, wa, wb) in &columns {
            out.extend((0..3).map(|c| row[a * 3 + c].into() * wa + row[b * 3 + c].into() * wb));
        }
        out
    };
    let clamp_row = |s: isize| s.clamp(0, sh as isize - 1) as usize;
    let mut out = Vec::with_capacity(dh * dw * 3);
    for (s, t) in taps(sh, dh) {
        let (r0, r1) = (horizontal(clamp_row(s)), horizontal(clamp_row(s + 1)));
        out.extend(r0.iter().zip(&r1).map(|(a, b)| a * (1.0 - t) + b * t));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixel(t: &Tensor, x: usize, y: usize) -> [f32; 3] {
        let v = t.get(0).unwrap();
        [0, 1, 2].map(|c| {
            v.get(c)
                .unwrap()
                .get(y)
                .unwrap()
                .get(x)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
    }

    #[test]
    fn centre_crop_keeps_the_middle_and_stretch_keeps_everything() {
        // Left third red, middle green, right third blue; a square frame from a 3:1 image.
        let img = RgbImage::from_fn(300, 100, |x, _| match x / 100 {
            0 => image::Rgb([255, 0, 0]),
            1 => image::Rgb([0, 255, 0]),
            _ => image::Rgb([0, 0, 255]),
        });
        let cropped = frame_tensor(&img, 64, 64, ImageFit::CentreCrop);
        assert_eq!(cropped.dims(), &[1, 3, 64, 64]);
        assert_eq!(pixel(&cropped, 0, 32), [-1.0, 1.0, -1.0]);
        assert_eq!(pixel(&cropped, 63, 32), [-1.0, 1.0, -1.0]);
        let stretched = frame_tensor(&img, 64, 64, ImageFit::Stretch);
        assert_eq!(pixel(&stretched, 0, 32), [1.0, -1.0, -1.0]);
        assert_eq!(pixel(&stretched, 63, 32), [-1.0, -1.0, 1.0]);
    }

    #[test]
    fn scales_pixels_like_the_original_loader() {
        let img = RgbImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                image::Rgb([0, 255, 51])
            } else {
                image::Rgb([255, 0, 102])
            }
        });
        let t = frame_tensor(&img, 2, 1, ImageFit::Stretch);
        assert_eq!(t.dims(), &[1, 3, 1, 2]);
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = [-1.0, 1.0, 1.0, -1.0, -0.6, -0.2];
        for (got, want) in v.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{v:?}");
        }
    }

    #[test]
    fn shrinking_samples_without_antialias_and_growing_interpolates() {
        // 4 → 2 columns: centres land at 0.5 and 2.5, so each output averages a pair.
        let row = [0f32, 10.0, 100.0, 1000.0];
        let src: Vec<f32> = row.iter().flat_map(|&v| [v, v, v]).collect();
        let out = resize_linear(&src, 12, (1, 4), (1, 2));
        assert_eq!(out, vec![5.0, 5.0, 5.0, 550.0, 550.0, 550.0]);
        // 4 → 3 columns: centres at 0.1667, 1.5 and 2.8333 take two taps, no wider kernel.
        let out = resize_linear(&src, 12, (1, 4), (1, 3));
        let expect = [10.0 / 6.0, 55.0, 100.0 / 6.0 + 1000.0 * 5.0 / 6.0];
        for (got, want) in out.chunks(3).map(|p| p[0]).zip(expect) {
            assert!((got - want).abs() < 1e-3, "{got} vs {want}");
        }
        // 2 → 4: the outer outputs fall outside the pixel centres and copy the edge.
        let out = resize_linear(&[0u8, 0, 0, 8, 8, 8], 6, (1, 2), (1, 4));
        assert_eq!(
            out.chunks(3).map(|p| p[0]).collect::<Vec<_>>(),
            vec![0.0, 2.0, 6.0, 8.0]
        );
    }
}
