//! Input images for image-to-video: decoded under strict limits (a decompression bomb or a
//! corrupt file is refused quickly, never exhausting memory), EXIF-oriented, flattened onto
//! white. `frame_fit` then fits it to the model's frame.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage, RgbaImage};

/// Formats accepted from members; everything else is refused by name.
pub const ACCEPTED: &[(ImageFormat, &str)] = &[
    (ImageFormat::Png, "PNG"),
    (ImageFormat::Jpeg, "JPEG"),
    (ImageFormat::WebP, "WebP"),
    (ImageFormat::Gif, "GIF"),
    (ImageFormat::Bmp, "BMP"),
];

/// Bounds applied before and during decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageLimits {
    pub max_bytes: usize,
    pub max_side: u32,
    pub max_pixels: u64,
    /// Upper bound on what the decoder may allocate.
    pub max_alloc: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_bytes: 20 * 1024 * 1024,
            max_side: 8192,
            max_pixels: 40_000_000,
            max_alloc: 512 * 1024 * 1024,
        }
    }
}

/// How an image is fitted to the model's frame. Stored in job specs as `crop` / `stretch`,
/// the words `generate --fit` and `/i2v fit:` take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ImageFit {
    /// Crop the centre to the frame's aspect ratio, then resize (keeps proportions).
    #[default]
    #[serde(rename = "crop")]
    CentreCrop,
    #[serde(rename = "stretch")]
    /// Resize to the frame, distorting the aspect ratio (what the original script does).
    Stretch,
}

impl ImageFit {
    pub fn name(self) -> &'static str {
        match self {
            ImageFit::CentreCrop => "centre-crop",
            ImageFit::Stretch => "stretch",
        }
    }

    /// The option word (`crop` or `stretch`), as `generate --fit` and `/i2v fit:` take it.
    pub fn parse(word: &str) -> Option<ImageFit> {
        match word {
            "crop" => Some(ImageFit::CentreCrop),
            "stretch" => Some(ImageFit::Stretch),
            _ => None,
        }
    }
}

fn accepted_names() -> String {
    ACCEPTED
        .iter()
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads only the header of `bytes`: the size and format checks of [`decode_image`] and the
/// declared dimensions, without decoding a pixel. Cheap enough for an async thread; a header
/// claiming gigapixels is refused here before any decoder allocates for it.
pub fn probe_image(bytes: &[u8], limits: &ImageLimits) -> Result<(u32, u32), String> {
    let decoder = header(bytes, limits)?;
    Ok(decoder.dimensions())
}

/// Decodes `bytes` into an upright RGB image; the error is a sentence for the member. CPU
/// work: call it on a blocking thread.
pub fn decode_image(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, String> {
    let mut decoder = header(bytes, limits)?;
    let orientation = decoder.orientation().ok();
    let mut image = DynamicImage::from_decoder(decoder)
        .map_err(|e| format!("the image is damaged or truncated: {e}"))?;
    if let Some(orientation) = orientation {
        image.apply_orientation(orientation);
    }
    Ok(flatten_onto_white(&image.to_rgba8()))
}

/// The checks shared by [`probe_image`] and [`decode_image`]: byte size, an accepted format,
/// and the header's dimensions within `limits`. Returns the decoder positioned after the
/// header.
fn header<'a>(bytes: &'a [u8], limits: &ImageLimits) -> Result<impl ImageDecoder + 'a, String> {
    if bytes.is_empty() {
        return Err("the image file is empty".into());
    }
    if bytes.len() > limits.max_bytes {
        return Err(format!(
            "the image is {:.1} MB; the limit is {:.0} MB",
            bytes.len() as f64 / 1e6,
            limits.max_bytes as f64 / 1e6
        ));
    }
    let format = image::guess_format(bytes).map_err(|_| {
        format!(
            "this file is not an image I can read (accepted: {})",
            accepted_names()
        )
    })?;
    if !ACCEPTED.iter().any(|(f, _)| *f == format) {
        return Err(format!(
            "{format:?} images are not accepted (accepted: {})",
            accepted_names()
        ));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    // No width/height limit in the decoder: we check the header's size ourselves below, so
    // the member reads the size their file claims rather than "limits exceeded".
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(limits.max_alloc);
    reader.limits(decoder_limits);
    let decoder = reader
        .into_decoder()
        .map_err(|e| format!("the image could not be read: {e}"))?;
    let (w, h) = decoder.dimensions();
    if w > limits.max_side || h > limits.max_side {
        return Err(format!(
            "the image is {w}×{h}; at most {} pixels a side are accepted",
            limits.max_side
        ));
    }
    if w == 0 || h == 0 || w as u64 * h as u64 > limits.max_pixels {
        return Err(format!(
            "the image is {w}×{h}; at most {} megapixels are accepted",
            limits.max_pixels / 1_000_000
        ));
    }
    Ok(decoder)
}

fn flatten_onto_white(rgba: &RgbaImage) -> RgbImage {
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = p[3] as u32;
        let blend = |c: u8| ((c as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        image::Rgb([blend(p[0]), blend(p[1]), blend(p[2])])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn accepts_the_listed_formats_and_refuses_others_by_name() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(8, 6, image::Rgb([10, 200, 30])));
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Gif,
            ImageFormat::Bmp,
        ] {
            let decoded = decode_image(&encode(&img, format), &ImageLimits::default()).unwrap();
            assert_eq!(decoded.dimensions(), (8, 6), "{format:?}");
        }
        let err = decode_image(b"hello, this is text", &ImageLimits::default()).unwrap_err();
        assert!(err.contains("PNG, JPEG, WebP, GIF, BMP"), "{err}");
        let tiff = encode_tiff_header();
        let err = decode_image(&tiff, &ImageLimits::default()).unwrap_err();
        assert!(
            err.contains("not accepted") || err.contains("not an image"),
            "{err}"
        );
    }

    fn encode_tiff_header() -> Vec<u8> {
        let mut v = b"II*\0".to_vec();
        v.extend_from_slice(&[8, 0, 0, 0, 0, 0]);
        v
    }

    #[test]
    fn refuses_oversized_bombs_and_truncated_files_quickly() {
        let limits = ImageLimits {
            max_pixels: 10_000,
            ..ImageLimits::default()
        };
        let big = DynamicImage::ImageRgb8(RgbImage::new(200, 200));
        let err = decode_image(&encode(&big, ImageFormat::Png), &limits).unwrap_err();
        assert!(err.contains("megapixels"), "{err}");
        let png = encode(&big, ImageFormat::Png);
        let err = decode_image(&png[..png.len() / 2], &ImageLimits::default()).unwrap_err();
        assert!(
            err.contains("damaged") || err.contains("could not be read"),
            "{err}"
        );
        let small = ImageLimits {
            max_bytes: 10,
            ..ImageLimits::default()
        };
        assert!(decode_image(&png, &small).unwrap_err().contains("limit"));
    }

    #[test]
    fn transparency_is_flattened_onto_white() {
        let rgba = RgbaImage::from_pixel(4, 4, image::Rgba([0, 0, 0, 0]));
        let png = encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png);
        let rgb = decode_image(&png, &ImageLimits::default()).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
    }
}
