//! Making the finished video fit Discord's upload limit. The stored MP4 goes out as is when it
//! fits; otherwise it is decoded and re-encoded down a ladder — lower bitrate first, then a
//! smaller size — until it fits. A 413 from Discord (the real limit was lower than the
//! interaction said) restarts the descent below the size that was refused.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::video::{decode_mp4, encode_mp4_to_vec, EncodeOptions, VideoFrames};

/// Room left for the multipart framing and rounding on Discord's side.
const MARGIN: f64 = 0.98;

/// One rung: quality settings and a scale factor (percent of the original size).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rung {
    crf: u8,
    max_kbps: u32,
    scale_pct: u32,
}

const LADDER: [Rung; 8] = [
    Rung {
        crf: 23,
        max_kbps: 4000,
        scale_pct: 100,
    },
    Rung {
        crf: 26,
        max_kbps: 2000,
        scale_pct: 100,
    },
    Rung {
        crf: 30,
        max_kbps: 1000,
        scale_pct: 100,
    },
    Rung {
        crf: 30,
        max_kbps: 700,
        scale_pct: 75,
    },
    Rung {
        crf: 32,
        max_kbps: 450,
        scale_pct: 50,
    },
    Rung {
        crf: 34,
        max_kbps: 250,
        scale_pct: 50,
    },
    Rung {
        crf: 36,
        max_kbps: 150,
        scale_pct: 33,
    },
    Rung {
        crf: 40,
        max_kbps: 80,
        scale_pct: 25,
    },
];

/// An MP4 ready to upload.
#[derive(Debug, Clone)]
pub struct FittedVideo {
    pub bytes: Vec<u8>,
    /// How many re-encodes it took (0: the stored file as is).
    pub reencodes: usize,
    /// Ladder position to continue from after a 413.
    next_rung: usize,
}

impl FittedVideo {
    /// A file sent as it is.
    pub fn unchanged(bytes: Vec<u8>) -> Self {
        FittedVideo {
            bytes,
            reencodes: 0,
            next_rung: 0,
        }
    }
}

/// The largest file accepted under an interaction's `attachment_size_limit`.
pub fn budget(attachment_size_limit: u64) -> u64 {
    (attachment_size_limit as f64 * MARGIN) as u64
}

/// The stored MP4 if it fits `limit` bytes, else a re-encode that does.
pub fn fit_file(path: &Path, limit: u64) -> Result<FittedVideo> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 <= budget(limit) {
        return Ok(FittedVideo::unchanged(bytes));
    }
    let frames = load_frames(path)?;
    fit_frames(&frames, budget(limit), 0)
}

/// After Discord refused `refused` (413): a smaller re-encode, well under what was refused.
pub fn shrink_after_refusal(path: &Path, refused: &FittedVideo) -> Result<FittedVideo> {
    let target = (refused.bytes.len() as f64 * 0.7) as u64;
    let frames = load_frames(path)?;
    let mut next = fit_frames(&frames, target, refused.next_rung)?;
    next.reencodes += refused.reencodes;
    Ok(next)
}

fn load_frames(path: &Path) -> Result<VideoFrames> {
    let probe = crate::video::probe_mp4(path)?;
    let frames = decode_mp4(path)?;
    VideoFrames::new(probe.fps.round().max(1.0) as u32, frames)
}

/// Walks the ladder from `start` until an encoding is at most `max_bytes`.
pub fn fit_frames(frames: &VideoFrames, max_bytes: u64, start: usize) -> Result<FittedVideo> {
    for (i, rung) in LADDER.iter().enumerate().skip(start) {
        let opts = EncodeOptions {
            crf: rung.crf,
            max_kbps: Some(rung.max_kbps),
            preset: "veryfast".into(),
            scale: scaled(frames, rung.scale_pct),
        };
        let bytes = encode_mp4_to_vec(frames, &opts)?;
        tracing::debug!(
            rung = i,
            bytes = bytes.len(),
            max_bytes,
            "re-encoded for upload"
        );
        if bytes.len() as u64 <= max_bytes {
            return Ok(FittedVideo {
                bytes,
                reencodes: i + 1 - start,
                next_rung: i + 1,
            });
        }
    }
    bail!("the video does not fit in {max_bytes} bytes even at the smallest size")
}

fn scaled(frames: &VideoFrames, pct: u32) -> Option<(u32, u32)> {
    if pct >= 100 {
        return None;
    }
    let s = |v: u32| ((v * pct / 100).max(16)) & !1;
    Some((s(frames.width), s(frames.height)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy_frames(w: u32, h: u32, n: usize) -> VideoFrames {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let frames = (0..n)
            .map(|_| image::RgbImage::from_fn(w, h, |_, _| image::Rgb(rng.random())))
            .collect();
        VideoFrames::new(8, frames).unwrap()
    }

    #[test]
    fn descends_until_it_fits() {
        let frames = noisy_frames(128, 96, 8);
        let full = encode_mp4_to_vec(&frames, &EncodeOptions::default()).unwrap();
        let target = full.len() as u64 / 4;
        let fitted = fit_frames(&frames, target, 0).unwrap();
        assert!(fitted.bytes.len() as u64 <= target);
        assert!(fitted.reencodes >= 1);
        assert!(
            fit_frames(&frames, 100, 0).is_err(),
            "nothing fits 100 bytes"
        );
    }

    #[test]
    fn a_file_that_fits_is_sent_unchanged_and_a_refusal_shrinks_it() {
        let frames = noisy_frames(64, 64, 4);
        let bytes = encode_mp4_to_vec(&frames, &EncodeOptions::default()).unwrap();
        let dir = std::env::temp_dir().join(format!("floor33-deliver-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.mp4");
        std::fs::write(&path, &bytes).unwrap();
        let first = fit_file(&path, 10 * 1024 * 1024).unwrap();
        assert_eq!(first.bytes, bytes);
        assert_eq!(first.reencodes, 0);
        let smaller = shrink_after_refusal(&path, &first).unwrap();
        assert!(smaller.bytes.len() < bytes.len() * 7 / 10 + 1);
        assert!(smaller.reencodes >= 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
