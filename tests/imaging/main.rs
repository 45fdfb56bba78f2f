//! Decoding and preprocessing images: limits, formats as `transformers`
//! loads them, pixel parity with its image processors, and preprocessors
//! that leave the size open.

#[path = "../common/mod.rs"]
mod common;

mod decode;
mod formats;
mod mix_parity;
mod model_size;
mod pillow_parity;
mod randaugment_parity;
