//! Files in and out: H.264/MP4 round trips, `floor33 generate` end to end, and checkpoint
//! loading, checking, converting and locating. One test binary, one link.

#[path = "../support/mod.rs"]
mod support;

mod bench_cli;
mod generate_cli;
mod generate_cli_limits;
mod mp4;
mod weights;
mod weights_crafted;
mod weights_download;
mod weights_torch;
