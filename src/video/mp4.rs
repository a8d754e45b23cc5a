//! H.264 MP4 writing and reading with ffmpeg-next (libx264 + libavformat).
//!
//! Output is yuv420p, High profile, `+faststart` (moov before mdat) so Discord and browsers play
//! it inline. Every packet gets a one-frame duration: without it the MP4 muxer gives the last
//! sample zero length and decoders drop it. yuv420p needs even sizes: odd inputs are padded by
//! one column/row that repeats the edge pixels (no resampling, content untouched); the report
//! gives the size actually written.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg::{
    codec, color, encoder, format, frame, media, threading, Dictionary, Packet, Rational,
};
use ffmpeg_next as ffmpeg;
use image::RgbImage;

use super::frames::VideoFrames;

/// How to encode. `Default` suits a 16-frame 1024x576 clip for a Discord upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodeOptions {
    /// x264 constant rate factor, 1..=51 (lower is better). 0 (lossless) needs a profile
    /// other than High, so it is rejected.
    pub crf: u8,
    /// VBV cap in kbit/s (`vbv-maxrate=K:vbv-bufsize=2K`): CRF alone does not bound the size
    /// of noisy content. With the default 6000 a 2 s clip stays under ~3 MB.
    pub max_kbps: Option<u32>,
    /// x264 preset name (ultrafast .. veryslow).
    pub preset: String,
    /// Resize to this size first; each side is rounded down to even (minimum 2).
    pub scale: Option<(u32, u32)>,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            crf: 18,
            max_kbps: Some(6000),
            preset: "veryfast".to_string(),
            scale: None,
        }
    }
}

/// What `encode_mp4` wrote.
#[derive(Clone, Debug)]
pub struct EncodeReport {
    pub bytes: u64,
    /// Encoded size (after padding or scaling).
    pub width: u32,
    pub height: u32,
    pub frames: usize,
    pub elapsed: Duration,
}

/// What `probe_mp4` found, counting frames by decoding them all.
#[derive(Clone, Debug)]
pub struct ProbeReport {
    pub codec_name: String,
    pub width: u32,
    pub height: u32,
    pub pix_fmt: String,
    pub frames: usize,
    pub fps: f64,
}

/// Initialises FFmpeg once per process and keeps its own log quiet below warnings.
fn init() -> Result<()> {
    static INIT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        ffmpeg::init().map_err(|e| e.to_string())?;
        ffmpeg::log::set_level(ffmpeg::log::Level::Warning);
        Ok(())
    })
    .clone()
    .map_err(|e| anyhow!("initialising FFmpeg: {e}"))
}

fn is_again(e: &ffmpeg::Error) -> bool {
    matches!(e, ffmpeg::Error::Other { errno } if *errno == ffmpeg::error::EAGAIN)
}

/// Picks the swscale input size and the encoded size: with a scale, swscale resizes from the
/// source; without, the source is edge-padded to even dimensions and only converted.
fn plan_sizes(w: u32, h: u32, scale: Option<(u32, u32)>) -> Result<((u32, u32), (u32, u32))> {
    let even_up = |v: u32| v + (v & 1);
    match scale {
        None => Ok(((even_up(w), even_up(h)), (even_up(w), even_up(h)))),
        Some((sw, sh)) => {
            ensure!(
                sw > 0 && sh > 0,
                "scale size must be positive, got {sw}x{sh}"
            );
            let even_down = |v: u32| (v & !1).max(2);
            Ok(((w, h), (even_down(sw), even_down(sh))))
        }
    }
}

/// Copies `src` into an RGB24 frame of at least its size, row by row using the frame's
/// stride (rows are padded for alignment), repeating the last column and row into any extra.
fn fill_rgb(dst: &mut frame::Video, src: &RgbImage) {
    let (sw, sh) = (src.width() as usize, src.height() as usize);
    let (dw, dh) = (dst.width() as usize, dst.height() as usize);
    let stride = dst.stride(0);
    let row_bytes = sw * 3;
    let raw = src.as_raw();
    let data = dst.data_mut(0);
    for y in 0..dh {
        let sy = y.min(sh - 1);
        let srow = &raw[sy * row_bytes..(sy + 1) * row_bytes];
        let drow = &mut data[y * stride..y * stride + dw * 3];
        drow[..row_bytes].copy_from_slice(srow);
        for px in drow[row_bytes..].chunks_exact_mut(3) {
            px.copy_from_slice(&srow[row_bytes - 3..]);
        }
    }
}

/// Frame rates the encoder accepts (checked again by callers before any work, e.g. the CLI).
pub const FPS_RANGE: std::ops::RangeInclusive<u32> = 1..=1000;
/// x264 CRF values accepted (see [`EncodeOptions::crf`]).
pub const CRF_RANGE: std::ops::RangeInclusive<u8> = 1..=51;

/// Encodes `frames` as H.264 MP4 at `path` (overwritten). On failure any partial file is removed.
pub fn encode_mp4(frames: &VideoFrames, opts: &EncodeOptions, path: &Path) -> Result<EncodeReport> {
    init()?;
    ensure!(!frames.frames.is_empty(), "no frames to encode");
    ensure!(
        FPS_RANGE.contains(&frames.fps),
        "fps {} out of range",
        frames.fps
    );
    ensure!(
        CRF_RANGE.contains(&opts.crf),
        "crf {} outside 1..=51",
        opts.crf
    );
    ensure!(!opts.preset.is_empty(), "empty x264 preset");
    for (i, f) in frames.frames.iter().enumerate() {
        ensure!(
            f.dimensions() == (frames.width, frames.height) && f.width() > 0 && f.height() > 0,
            "frame {i} is {:?}, clip says {}x{}",
            f.dimensions(),
            frames.width,
            frames.height
        );
    }
    let start = Instant::now();
    let result = encode_inner(frames, opts, path);
    match result {
        Ok((width, height)) => {
            let bytes = std::fs::metadata(path)
                .with_context(|| format!("stat {}", path.display()))?
                .len();
            Ok(EncodeReport {
                bytes,
                width,
                height,
                frames: frames.frames.len(),
                elapsed: start.elapsed(),
            })
        }
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e.context(format!("encoding {}", path.display())))
        }
    }
}

fn encode_inner(frames: &VideoFrames, opts: &EncodeOptions, path: &Path) -> Result<(u32, u32)> {
    let ((src_w, src_h), (out_w, out_h)) = plan_sizes(frames.width, frames.height, opts.scale)?;
    let fps = frames.fps as i32;
    let enc_tb = Rational(1, fps);

    let x264 = encoder::find_by_name("libx264").context("this FFmpeg has no libx264 encoder")?;
    let mut octx = format::output_as(path, "mp4").context("opening MP4 output")?;
    let global_header = octx.format().flags().contains(format::Flags::GLOBAL_HEADER);

    let mut cfg = codec::context::Context::new_with_codec(x264)
        .encoder()
        .video()
        .context("libx264 context")?;
    cfg.set_width(out_w);
    cfg.set_height(out_h);
    cfg.set_format(Pixel::YUV420P);
    cfg.set_time_base(enc_tb);
    cfg.set_frame_rate(Some(Rational(fps, 1)));
    // swscale's default RGB->YUV matrix is BT.601 limited range; tag it so players invert it.
    cfg.set_colorspace(color::Space::SMPTE170M);
    cfg.set_color_range(color::Range::MPEG);
    if global_header {
        cfg.set_flags(codec::Flags::GLOBAL_HEADER);
    }
    let mut x264_opts = Dictionary::new();
    x264_opts.set("preset", &opts.preset);
    x264_opts.set("profile", "high");
    x264_opts.set("crf", &opts.crf.to_string());
    if let Some(k) = opts.max_kbps {
        ensure!(k > 0, "max_kbps must be positive");
        x264_opts.set(
            "x264-params",
            &format!("vbv-maxrate={k}:vbv-bufsize={}", 2 * k),
        );
    }
    let mut enc = cfg.open_with(x264_opts).with_context(|| {
        format!(
            "opening libx264 (preset {:?}, crf {})",
            opts.preset, opts.crf
        )
    })?;

    let stream_index = {
        let mut ost = octx.add_stream(x264).context("adding video stream")?;
        ost.set_parameters(&enc);
        ost.set_time_base(enc_tb);
        ost.set_avg_frame_rate(Rational(fps, 1));
        ost.index()
    };
    let mut mux_opts = Dictionary::new();
    mux_opts.set("movflags", "+faststart");
    let ignored: Vec<String> = octx
        .write_header_with(mux_opts)
        .context("writing MP4 header")?
        .iter()
        .map(|(k, _)| k.to_string())
        .collect();
    if !ignored.is_empty() {
        bail!("MP4 muxer ignored options {ignored:?}");
    }
    // The muxer chooses its own time base during write_header.
    let ost_tb = octx
        .stream(stream_index)
        .context("output stream vanished")?
        .time_base();

    let mut scaler = scaling::Context::get(
        Pixel::RGB24,
        src_w,
        src_h,
        Pixel::YUV420P,
        out_w,
        out_h,
        scaling::Flags::BICUBIC | scaling::Flags::ACCURATE_RND,
    )
    .context("creating RGB->YUV converter")?;
    let mut rgb = frame::Video::new(Pixel::RGB24, src_w, src_h);
    let write = |enc: &mut encoder::Video, octx: &mut format::context::Output| -> Result<()> {
        let mut pkt = Packet::empty();
        loop {
            match enc.receive_packet(&mut pkt) {
                Ok(()) => {
                    pkt.set_stream(stream_index);
                    pkt.set_duration(1);
                    pkt.rescale_ts(enc_tb, ost_tb);
                    pkt.write_interleaved(octx).context("writing packet")?;
                }
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(e) if is_again(&e) => return Ok(()),
                Err(e) => return Err(e).context("receiving packet from libx264"),
            }
        }
    };
    for (i, img) in frames.frames.iter().enumerate() {
        fill_rgb(&mut rgb, img);
        // A fresh YUV frame each time: the encoder may still reference the previous one.
        let mut yuv = frame::Video::empty();
        scaler.run(&rgb, &mut yuv).context("RGB->YUV conversion")?;
        yuv.set_pts(Some(i as i64));
        enc.send_frame(&yuv)
            .with_context(|| format!("sending frame {i} to libx264"))?;
        write(&mut enc, &mut octx)?;
    }
    enc.send_eof().context("flushing libx264")?;
    write(&mut enc, &mut octx)?;
    octx.write_trailer().context("writing MP4 trailer")?;
    Ok((out_w, out_h))
}

/// Encodes through a temporary file (the faststart pass needs a seekable output) and returns
/// the MP4 bytes.
pub fn encode_mp4_to_vec(frames: &VideoFrames, opts: &EncodeOptions) -> Result<Vec<u8>> {
    let tmp = TempPath::new("mp4")?;
    encode_mp4(frames, opts, &tmp.0)?;
    std::fs::read(&tmp.0).with_context(|| format!("reading back {}", tmp.0.display()))
}

/// A unique path in the temp dir, deleted on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new(ext: &str) -> Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("floor33-{}-{nanos}-{n}.{ext}", std::process::id());
        Ok(Self(std::env::temp_dir().join(name)))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Decodes every frame of the best video stream; with `rgb`, also converts them to RGB24.
fn decode(path: &Path, rgb: bool) -> Result<(ProbeReport, Vec<RgbImage>)> {
    init()?;
    let mut ictx =
        format::input(path).with_context(|| format!("opening {} for reading", path.display()))?;
    let (index, params, fps) = {
        let stream = ictx
            .streams()
            .best(media::Type::Video)
            .with_context(|| format!("{} has no video stream", path.display()))?;
        let avg = stream.avg_frame_rate();
        let rate = if avg.denominator() != 0 && avg.numerator() != 0 {
            avg
        } else {
            stream.rate()
        };
        let fps = if rate.denominator() != 0 {
            f64::from(rate)
        } else {
            0.0
        };
        (stream.index(), stream.parameters(), fps)
    };
    let mut ctx = codec::context::Context::from_parameters(params).context("decoder parameters")?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    ctx.set_threading(threading::Config {
        kind: threading::Type::Frame,
        count: threads,
        ..Default::default()
    });
    let codec_id = ctx.id();
    let mut dec = ctx.decoder().video().context("opening video decoder")?;
    let codec_name = dec
        .codec()
        .map(|c| c.name().to_string())
        .unwrap_or_else(|| codec_id.name().to_string());

    let mut images = Vec::new();
    let mut count = 0usize;
    let mut first_fmt: Option<Pixel> = None;
    let mut scaler: Option<scaling::Context> = None;
    let mut decoded = frame::Video::empty();
    let mut receive = |dec: &mut ffmpeg::decoder::Video| -> Result<()> {
        loop {
            match dec.receive_frame(&mut decoded) {
                Ok(()) => {
                    count += 1;
                    first_fmt.get_or_insert(decoded.format());
                    if rgb {
                        images.push(to_rgb(&decoded, &mut scaler)?);
                    }
                }
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(e) if is_again(&e) => return Ok(()),
                Err(e) => return Err(e).context("decoding frame"),
            }
        }
    };
    let mut pkt = Packet::empty();
    loop {
        match pkt.read(&mut ictx) {
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => break,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        if pkt.stream() != index {
            continue;
        }
        dec.send_packet(&pkt).context("sending packet to decoder")?;
        receive(&mut dec)?;
    }
    dec.send_eof().context("flushing decoder")?;
    receive(&mut dec)?;

    let fmt = first_fmt.unwrap_or_else(|| dec.format());
    let report = ProbeReport {
        codec_name,
        width: dec.width(),
        height: dec.height(),
        pix_fmt: fmt
            .descriptor()
            .map_or_else(|| format!("{fmt:?}"), |d| d.name().to_string()),
        frames: count,
        fps,
    };
    Ok((report, images))
}

/// Converts a decoded frame to RGB24 (BT.601, matching the encoder side), rebuilding the
/// converter if the frame's size or format changes mid-stream.
fn to_rgb(src: &frame::Video, scaler: &mut Option<scaling::Context>) -> Result<RgbImage> {
    let (w, h, fmt) = (src.width(), src.height(), src.format());
    let stale = scaler
        .as_ref()
        .is_none_or(|s| s.input().format != fmt || s.input().width != w || s.input().height != h);
    if stale {
        *scaler = Some(
            scaling::Context::get(
                fmt,
                w,
                h,
                Pixel::RGB24,
                w,
                h,
                scaling::Flags::BICUBIC | scaling::Flags::ACCURATE_RND,
            )
            .context("creating YUV->RGB converter")?,
        );
    }
    let s = scaler.as_mut().context("converter missing")?;
    let mut out = frame::Video::empty();
    s.run(src, &mut out).context("YUV->RGB conversion")?;
    let stride = out.stride(0);
    let row = w as usize * 3;
    let data = out.data(0);
    let mut buf = Vec::with_capacity(row * h as usize);
    for y in 0..h as usize {
        buf.extend_from_slice(&data[y * stride..y * stride + row]);
    }
    RgbImage::from_raw(w, h, buf).context("RGB frame size")
}

/// Opens an MP4 and decodes it fully to report codec, size, pixel format and true frame count.
pub fn probe_mp4(path: &Path) -> Result<ProbeReport> {
    decode(path, false).map(|(r, _)| r)
}

/// Decodes all frames of an MP4 to RGB (used to check what was written or posted).
pub fn decode_mp4(path: &Path) -> Result<Vec<RgbImage>> {
    decode(path, true).map(|(_, f)| f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_pad_odd_and_round_scale_down() {
        assert_eq!(plan_sizes(64, 48, None).unwrap(), ((64, 48), (64, 48)));
        assert_eq!(plan_sizes(63, 47, None).unwrap(), ((64, 48), (64, 48)));
        assert_eq!(
            plan_sizes(1024, 576, Some((513, 289))).unwrap(),
            ((1024, 576), (512, 288))
        );
        assert_eq!(plan_sizes(5, 5, Some((1, 1))).unwrap(), ((5, 5), (2, 2)));
        assert!(plan_sizes(5, 5, Some((0, 4))).is_err());
    }
}
