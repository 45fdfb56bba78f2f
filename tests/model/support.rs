//! What the parity tests share: reading a fixture's reference tensors and
//! model directory, and comparing tensors with a stated tolerance.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

/// The fp32 bar of every logits and features comparison.
pub const TOL: f64 = 1e-4;

/// `<root>/<name>/io.safetensors`: inputs and `transformers`' outputs.
pub fn io_of(root: &Path, name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(root.join(name).join("io.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

/// `<root>/<name>/model`: the checkpoint `transformers` saved.
pub fn model_dir_of(root: &Path, name: &str) -> PathBuf {
    root.join(name).join("model")
}

/// The largest absolute difference, computed in fp64.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

pub fn assert_close_tol(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let d = max_diff(got, want);
    println!("{what}: max abs diff {d:.3e}");
    assert!(d <= tol, "{what}: max abs diff {d} > {tol}");
}

pub fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_close_tol(what, got, want, TOL);
}

pub fn labels(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}
