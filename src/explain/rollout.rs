//! Attention rollout (Abnar & Zuidema, 2020): how much each patch flows
//! into the CLS token through all layers. Per layer, the attention is
//! averaged over heads, the residual connection added (`A + I`) and each
//! row renormalised; the layers' matrices are multiplied from the first
//! up. The CLS token's row over the patch tokens (registers and CLS
//! excluded) is the map: laid on the patch grid, divided by its maximum
//! and resized to the input. It does not depend on the label.

use tch::{Kind, Tensor};

use crate::model::ImageClassifier;

/// `[h, w]` on the patch grid, not yet scaled; `None` for networks without
/// global self-attention.
pub fn rollout(net: &dyn ImageClassifier, pixels: &Tensor) -> Option<Tensor> {
    let (height, width) = super::spatial(pixels);
    tch::no_grad(|| {
        let (maps, prefix) = net.attention_maps(pixels)?;
        let n = maps.first()?.size()[3];
        let eye = Tensor::eye(n, (Kind::Float, pixels.device()));
        let mut flow = eye.copy();
        for probs in &maps {
            let a = probs
                .select(0, 0)
                .to_kind(Kind::Float)
                .mean_dim(0, false, None)
                + &eye;
            let a = &a / a.sum_dim_intlist(-1, true, None);
            flow = a.matmul(&flow);
        }
        let patches = n - prefix;
        let (gh, gw) = grid(patches, height, width);
        Some(flow.get(0).narrow(0, prefix, patches).reshape([gh, gw]))
    })
}

/// The rollout scaled to `[0, 1]` (divided by its maximum) at `[H, W]`.
pub fn heat_map(rollout: &Tensor, height: i64, width: i64) -> Tensor {
    tch::no_grad(|| super::resize(&(rollout / rollout.max()), height, width))
}

/// The patch grid of `patches` tokens for an `height` x `width` input.
fn grid(patches: i64, height: i64, width: i64) -> (i64, i64) {
    let patch = ((height * width) as f64 / patches as f64).sqrt();
    let gh = (height as f64 / patch).round() as i64;
    (gh, patches / gh.max(1))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_grid_follows_the_input_shape() {
        assert_eq!(super::grid(196, 224, 224), (14, 14));
        assert_eq!(super::grid(16 * 8, 224, 112), (16, 8));
    }
}
