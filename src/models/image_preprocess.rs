//! CLIP input preparation of `FrozenOpenCLIPImageEmbedderV2.preprocess`:
//! `kornia.geometry.resize(x, (224, 224), 'bicubic', align_corners=True, antialias=True)`, then
//! `(x + 1) / 2` and the CLIP mean/std normalisation. There is no crop, so the aspect ratio is
//! distorted exactly as in the original.
//!
//! The images are small (one conditioning picture per request), so this runs on the host in f32,
//! following torch's CPU kernels step by step (kernel weights, index clamping, summation order);
//! the result agrees with the reference to a few ulp (≤ 1e-6 absolute on the fixtures).

use candle_core::{DType, Device, Result, Tensor};

/// OpenCLIP's image normalisation constants.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// The Keys cubic-convolution parameter of torch's bicubic interpolation.
const CUBIC_A: f32 = -0.75;

/// `(b, 3, H, W)` in [-1, 1] to the normalised `(b, 3, size, size)` CLIP input, on the input's
/// device and dtype.
pub fn clip_preprocess(x: &Tensor, size: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if c != CLIP_MEAN.len() {
        candle_core::bail!("clip_preprocess expects 3 channels, got {c}");
    }
    let data = host_f32(x)?;
    let blurred = antialias_blur_planes(&data, b * c, (h, w), (size, size));
    let mut out = Vec::with_capacity(b * c * size * size);
    for (p, plane) in blurred.chunks_exact(h * w).enumerate() {
        let ch = p % c;
        let resized = bicubic_align_corners(plane, (h, w), (size, size));
        out.extend(
            resized
                .into_iter()
                .map(|v| ((v + 1.0) / 2.0 - CLIP_MEAN[ch]) / CLIP_STD[ch]),
        );
    }
    Tensor::from_vec(out, (b, c, size, size), &Device::Cpu)?
        .to_dtype(x.dtype())?
        .to_device(x.device())
}

/// The tensor kornia hands to the bicubic interpolation when resizing `(b, c, H, W)` to `size`:
/// Gaussian-blurred when either axis shrinks, else `x` itself. Exposed to check the blur alone.
pub fn antialias_blur(x: &Tensor, size: (usize, usize)) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let blurred = antialias_blur_planes(&host_f32(x)?, b * c, (h, w), size);
    Tensor::from_vec(blurred, (b, c, h, w), &Device::Cpu)?
        .to_dtype(x.dtype())?
        .to_device(x.device())
}

fn host_f32(x: &Tensor) -> Result<Vec<f32>> {
    x.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()
}

/// kornia's antialias step over `planes` planes of `(h, w)`: only when some axis shrinks, a
/// separable Gaussian per axis with sigma = max((in/out - 1)/2, 0.001) and an odd kernel of
/// int(max(4 sigma, 3)) taps (an axis that does not shrink gets sigma 0.001, i.e. [0, 1, 0]).
fn antialias_blur_planes(
    data: &[f32],
    planes: usize,
    (h, w): (usize, usize),
    (out_h, out_w): (usize, usize),
) -> Vec<f32> {
    let factors = (h as f64 / out_h as f64, w as f64 / out_w as f64);
    if factors.0.max(factors.1) <= 1.0 || (h, w) == (out_h, out_w) {
        return data.to_vec();
    }
    let kernel_y = gaussian_kernel(factors.0);
    let kernel_x = gaussian_kernel(factors.1);
    let mut out = Vec::with_capacity(data.len());
    let mut tmp = vec![0f32; h * w];
    for plane in data.chunks_exact(h * w).take(planes) {
        // W pass first, then H pass (kornia's filter2d_separable order); reflect borders.
        for y in 0..h {
            let row = &plane[y * w..(y + 1) * w];
            for x in 0..w {
                tmp[y * w + x] = convolve_at(&kernel_x, x, w, |i| row[i]);
            }
        }
        for y in 0..h {
            for x in 0..w {
                out.push(convolve_at(&kernel_y, y, h, |i| tmp[i * w + x]));
            }
        }
    }
    out
}

/// kornia `get_gaussian_kernel1d` for the antialias sigma of a resize `factor`, computed in f32
/// like the reference (sigma becomes a float32 tensor) and normalised to sum 1.
fn gaussian_kernel(factor: f64) -> Vec<f32> {
    let sigma = ((factor - 1.0) / 2.0).max(0.001);
    let mut size = (4.0 * sigma).max(3.0) as usize;
    if size.is_multiple_of(2) {
        size += 1;
    }
    let sigma = sigma as f32;
    let center = (size / 2) as f32;
    let gauss: Vec<f32> = (0..size)
        .map(|i| {
            let x = i as f32 - center;
            (-(x * x) / (2.0 * (sigma * sigma))).exp()
        })
        .collect();
    let sum: f32 = gauss.iter().sum();
    gauss.into_iter().map(|g| g / sum).collect()
}

/// One output tap of a centred 1-D correlation with reflect (no edge repeat) padding.
fn convolve_at(kernel: &[f32], pos: usize, len: usize, at: impl Fn(usize) -> f32) -> f32 {
    let radius = (kernel.len() / 2) as isize;
    kernel
        .iter()
        .enumerate()
        .map(|(k, wk)| wk * at(reflect(pos as isize + k as isize - radius, len)))
        .sum()
}

fn reflect(i: isize, len: usize) -> usize {
    let n = len as isize;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let mut i = i.rem_euclid(period);
    if i >= n {
        i = period - i;
    }
    i as usize
}

/// Source indices (clamped to the image) and cubic weights of each output position along one
/// axis, as torch's `upsample_bicubic2d` with `align_corners=True` computes them in f32.
fn cubic_taps(in_len: usize, out_len: usize) -> Vec<([usize; 4], [f32; 4])> {
    let scale = if out_len > 1 {
        (in_len - 1) as f32 / (out_len - 1) as f32
    } else {
        0.0
    };
    (0..out_len)
        .map(|o| {
            let real = scale * o as f32;
            let index = (real.floor() as i64).min(in_len as i64 - 1);
            let t = (real - index as f32).clamp(0.0, 1.0);
            let idx = std::array::from_fn(|j| {
                (index - 1 + j as i64).clamp(0, in_len as i64 - 1) as usize
            });
            (idx, cubic_weights(t))
        })
        .collect()
}

fn cubic_weights(t: f32) -> [f32; 4] {
    let a = CUBIC_A;
    // The |x| <= 1 and 1 < |x| < 2 pieces of the Keys kernel, written with fused multiply-adds:
    // the reference's CPU build contracts these polynomials, and so matches more bits this way.
    let near = |x: f32| ((a + 2.0).mul_add(x, -(a + 3.0)) * x).mul_add(x, 1.0);
    let far = |x: f32| {
        a.mul_add(x, -5.0 * a)
            .mul_add(x, 8.0 * a)
            .mul_add(x, -4.0 * a)
    };
    [far(t + 1.0), near(t), near(1.0 - t), far((1.0 - t) + 1.0)]
}

/// Bicubic resize of one `(h, w)` plane; rows are combined after interpolating along W, the
/// order of torch's CPU kernel (whose accumulations the compiler also fuses).
fn bicubic_align_corners(
    plane: &[f32],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<f32> {
    if (h, w) == (oh, ow) {
        return plane.to_vec();
    }
    let taps_y = cubic_taps(h, oh);
    let taps_x = cubic_taps(w, ow);
    let mut out = Vec::with_capacity(oh * ow);
    for (iy, wy) in &taps_y {
        for (ix, wx) in &taps_x {
            let mut acc = 0f32;
            for (r, &y) in iy.iter().enumerate() {
                let row = &plane[y * w..(y + 1) * w];
                let mut t = row[ix[0]] * wx[0];
                for j in 1..4 {
                    t = row[ix[j]].mul_add(wx[j], t);
                }
                if r == 0 {
                    acc = t * wy[0];
                } else {
                    acc = t.mul_add(wy[r], acc);
                }
            }
            out.push(acc);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_indices() {
        let got: Vec<usize> = (-3..8).map(|i| reflect(i, 5)).collect();
        assert_eq!(got, vec![3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]);
    }

    #[test]
    fn small_sigma_kernel_is_identity() {
        assert_eq!(gaussian_kernel(0.5), vec![0.0, 1.0, 0.0]);
    }

    #[test]
    fn cubic_weights_sum_to_one() {
        for t in [0.0f32, 0.25, 0.5, 0.9] {
            let s: f32 = cubic_weights(t).iter().sum();
            assert!((s - 1.0).abs() < 1e-6);
        }
        assert_eq!(cubic_weights(0.0), [0.0, 1.0, 0.0, 0.0]);
    }
}
