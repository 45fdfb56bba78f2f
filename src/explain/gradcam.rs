//! Grad-CAM (Selvaraju et al., 2017): the last stage's map `A` (`[C, h,
//! w]`), each channel weighed by the mean gradient of the label's logit
//! over it, summed and clipped at zero: `relu(sum_c mean(dy/dA_c) A_c)`.
//! Scaled as `pytorch-grad-cam` scales it (shift to 0, divide by the
//! max, resize to the input, and once more after the resize), so the maps
//! equal that library's `GradCAM` on the same `transformers` layer.

use tch::Tensor;

use crate::model::ImageClassifier;

/// One map `[H, W]` per target label; `None` if the network has no map
/// for Grad-CAM ([`ImageClassifier::cam_cut`]).
pub fn gradcam(net: &dyn ImageClassifier, pixels: &Tensor, targets: &[i64]) -> Option<Vec<Tensor>> {
    let (height, width) = super::spatial(pixels);
    let (body, head) = net.cam_cut()?;
    let map = tch::no_grad(|| body(pixels))
        .detach()
        .set_requires_grad(true);
    let logits = head(&map);
    let maps = targets
        .iter()
        .map(|&t| {
            let score = logits.select(1, t).sum(logits.kind());
            let grad = Tensor::run_backward(&[&score], &[&map], true, false)
                .pop()
                .expect("one gradient per input");
            tch::no_grad(|| {
                let weights = grad.mean_dim([2i64, 3].as_slice(), true, None);
                let cam = (weights * &map).sum_dim_intlist(1, false, None).relu();
                let cam = super::min_max(&cam.select(0, 0).to_kind(tch::Kind::Float));
                super::min_max(&super::resize(&cam, height, width))
            })
        })
        .collect();
    Some(maps)
}
