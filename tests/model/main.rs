//! The models on libtorch: ViT, DINOv2, Swin, ConvNeXt and ResNet against `transformers` (and the
//! real DINOv2-small against onnxruntime), what a submission checks of a
//! base model up front, and libtorch itself.

#[path = "../common/mod.rs"]
mod common;

mod calibration_parity;
mod cnn_parity;
mod dinov2_parity;
mod dinov2_real;
mod explain_parity;
mod lora;
mod onnx_export;
mod preflight;
mod support;
mod swin_parity;
mod tch_smoke;
mod vit_parity;
