//! Diffusion sampling: the noise schedule, DDIM, and reproducible noise.

pub mod ddim;
pub mod noise;
pub mod schedule;
