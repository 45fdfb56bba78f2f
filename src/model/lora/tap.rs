//! The place a LoRA adapter enters a network: a linear layer with a tap.
//!
//! [`LoraLinear`] is the base `nn::Linear` (its variables keep their
//! checkpoint names, so loading and saving the base are unchanged) plus a
//! [`LoraPlan`] saying which low-rank terms to add in the next forward
//! passes. One term with no row range is the single adapter of a training
//! job or of a model served alone; several terms over row ranges are a
//! mixed batch of several adapters on one shared base: the base matmul runs
//! once over the whole batch, and each adapter's `B·A·x` only over its own
//! rows (contiguous, as the engine sorts requests by adapter).
//!
//! Row ranges are counted in images. A layer whose leading dimension is a
//! multiple of the images (Swin's windows: `[B * nW, N, C]`, batch
//! outermost) scales them by that multiple.

use std::cell::RefCell;

use tch::nn::{self, Module};
use tch::Tensor;

/// One adapter's low-rank term on one linear layer.
#[derive(Debug)]
pub struct LoraTerm {
    /// `[r, in]`.
    pub a: Tensor,
    /// `[out, r]`.
    pub b: Tensor,
    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub scale: f64,
    /// Dropout on the term's input, in training only (as PEFT).
    pub dropout: f64,
    /// `(first image, images)`; `None`: the whole batch.
    pub rows: Option<(i64, i64)>,
}

impl LoraTerm {
    fn shallow_clone(&self) -> Self {
        Self {
            a: self.a.shallow_clone(),
            b: self.b.shallow_clone(),
            ..*self
        }
    }

    /// `scale · B · A · dropout(x)` for `x` of any rank `[..., in]`.
    fn delta(&self, x: &Tensor, train: bool) -> Tensor {
        let x = if train && self.dropout > 0.0 {
            x.dropout(self.dropout, true)
        } else {
            x.shallow_clone()
        };
        let a = self.a.to_kind(x.kind());
        let b = self.b.to_kind(x.kind());
        x.matmul(&a.tr()).matmul(&b.tr()) * self.scale
    }
}

/// The terms of the next forward passes and the images in their batch.
#[derive(Debug, Default)]
pub struct LoraPlan {
    pub terms: Vec<LoraTerm>,
    /// Images in the batch the row ranges refer to (unused without ranges).
    pub images: i64,
}

/// A linear layer LoRA can adapt.
#[derive(Debug)]
pub struct LoraLinear {
    pub linear: nn::Linear,
    /// The layer's checkpoint path (`vit.encoder.layer.0.attention.attention.query`).
    pub path: String,
    plan: RefCell<LoraPlan>,
}

impl LoraLinear {
    pub fn new(linear: nn::Linear, path: String) -> Self {
        Self {
            linear,
            path,
            plan: RefCell::new(LoraPlan::default()),
        }
    }

    /// The layer's last path component (`query`, `value`, ...).
    pub fn short_name(&self) -> &str {
        self.path.rsplit('.').next().unwrap_or(&self.path)
    }

    /// `(in, out)` features.
    pub fn shape(&self) -> (i64, i64) {
        let s = self.linear.ws.size();
        (s[1], s[0])
    }

    /// Replaces the plan (an empty one removes every term).
    pub fn set_plan(&self, plan: LoraPlan) {
        *self.plan.borrow_mut() = plan;
    }

    pub fn clear(&self) {
        self.set_plan(LoraPlan::default());
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.linear.forward(x);
        let plan = self.plan.borrow();
        match plan.terms.as_slice() {
            [] => y,
            [term] if term.rows.is_none() => y + term.delta(x, train),
            terms => y + grouped_delta(x, terms, plan.images, train),
        }
    }

    /// The plan's terms, shallow copies (for tests and diagnostics).
    pub fn terms(&self) -> Vec<LoraTerm> {
        self.plan
            .borrow()
            .terms
            .iter()
            .map(LoraTerm::shallow_clone)
            .collect()
    }
}

/// The low-rank terms of a mixed batch: each term over its rows, zeros
/// where no adapter applies, assembled in row order.
fn grouped_delta(x: &Tensor, terms: &[LoraTerm], images: i64, train: bool) -> Tensor {
    let rows = x.size()[0];
    let per_image = if images > 0 { rows / images } else { 1 };
    let mut ranges: Vec<(i64, i64, &LoraTerm)> = terms
        .iter()
        .map(|t| {
            let (first, n) = t.rows.unwrap_or((0, images));
            (first * per_image, n * per_image, t)
        })
        .collect();
    ranges.sort_by_key(|r| r.0);
    let out_features = terms[0].b.size()[0];
    let mut pieces = Vec::with_capacity(ranges.len() * 2 + 1);
    let mut at = 0;
    let gap = |n: i64| {
        let mut shape = x.size();
        shape[0] = n;
        *shape.last_mut().unwrap() = out_features;
        Tensor::zeros(shape, (x.kind(), x.device()))
    };
    for (start, n, term) in ranges {
        if start > at {
            pieces.push(gap(start - at));
        }
        pieces.push(term.delta(&x.narrow(0, start, n), train));
        at = start + n;
    }
    if at < rows {
        pieces.push(gap(rows - at));
    }
    Tensor::cat(&pieces, 0)
}
