//! Video output: decoded latent video tensor -> RGB frames -> H.264 MP4 (and back, for checks).
//!
//! `frames` reproduces VideoCrafter's `save_videos` pixel conversion bit for bit; `mp4` wraps
//! libx264/libavformat through ffmpeg-next with the settings that play inline on Discord.

pub mod frames;
pub mod mp4;

pub use frames::{frames_from_tensor, preview_png, VideoFrames};
pub use mp4::{
    decode_mp4, encode_mp4, encode_mp4_to_vec, probe_mp4, EncodeOptions, EncodeReport, ProbeReport,
};
