//! The networks of VideoCrafter, one file per block family; weight paths mirror the original
//! state-dict keys so that a checkpoint key leads straight to the code that uses it.

pub mod attention;
pub mod config;
pub mod conv;
pub mod embeddings;
pub mod image_encoder;
pub mod image_preprocess;
pub mod kernels;
pub mod norm;
pub mod precision;
pub mod random_init;
pub mod resampler;
pub mod resblock;
pub mod text_encoder;
pub mod tokenizer;
pub mod transformer;
pub mod unet;
pub mod vae;
