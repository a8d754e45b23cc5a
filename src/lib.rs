//! floor33: VideoCrafter text-to-video and image-to-video in candle, served to Discord.

pub mod weights;
