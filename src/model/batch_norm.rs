//! `nn.BatchNorm2d` of torch with its three buffers, named as in a torch
//! state dict: `weight`, `bias`, `running_mean`, `running_var` and the int64
//! scalar `num_batches_tracked`.
//!
//! tch's own `nn::BatchNorm` has no `num_batches_tracked`, which every
//! `transformers` checkpoint of a batch-norm network carries (a saved model
//! without it makes `from_pretrained` warn about missing keys), and ties its
//! train/eval switch to the forward's `train` flag, while a frozen stage must
//! run in eval mode inside a training forward.

use tch::{nn, Kind, Tensor};

/// torch's defaults (`nn.BatchNorm2d(c)`), which `transformers`' ResNet uses.
const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

thread_local! {
    /// Set while activation checkpointing recomputes a unit on this thread.
    static RECOMPUTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` as the recomputation of a forward pass that already ran:
/// batch norms in training mode normalise with the batch's statistics as
/// before but neither move the running statistics nor count the batch
/// again (torch's checkpointing leaves that to the user).
pub fn recomputing<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            RECOMPUTING.with(|r| r.set(self.0));
        }
    }
    let _reset = Reset(RECOMPUTING.with(|r| r.replace(true)));
    f()
}

/// A 2-D batch norm over `[B, C, H, W]`; the running statistics are
/// variables of the `VarStore` that are not trained (no gradient, not in
/// `trainable_variables`), so they load from and save to the checkpoint.
#[derive(Debug)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    /// `[]` int64: training forwards so far, as torch counts them.
    num_batches_tracked: Tensor,
}

impl BatchNorm2d {
    /// Weight 1, bias 0, running mean 0, variance 1, count 0 (torch's init).
    pub fn new(p: nn::Path, channels: i64) -> Self {
        let num_batches_tracked = p.add(
            "num_batches_tracked",
            Tensor::zeros([], (Kind::Int64, p.device())),
            false,
        );
        Self {
            weight: p.var("weight", &[channels], nn::Init::Const(1.)),
            bias: p.var("bias", &[channels], nn::Init::Const(0.)),
            running_mean: p.zeros_no_train("running_mean", &[channels]),
            running_var: p.ones_no_train("running_var", &[channels]),
            num_batches_tracked,
        }
    }

    /// With `update` (torch's train mode): normalises with the batch's
    /// statistics, moves the running ones 10% towards them (unbiased
    /// variance) and counts the batch. Without (eval mode, or a frozen
    /// layer in training): normalises with the running statistics.
    pub fn forward(&self, xs: &Tensor, update: bool) -> Tensor {
        if update && RECOMPUTING.with(|r| r.get()) {
            return Tensor::batch_norm(
                xs,
                Some(&self.weight),
                Some(&self.bias),
                None::<&Tensor>,
                None::<&Tensor>,
                true,
                MOMENTUM,
                EPS,
                true,
            );
        }
        if update {
            tch::no_grad(|| {
                let mut count = self.num_batches_tracked.shallow_clone();
                let _ = count.g_add_scalar_(1);
            });
        }
        Tensor::batch_norm(
            xs,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            update,
            MOMENTUM,
            EPS,
            true,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn training_updates_the_running_statistics_and_counts_batches() {
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = BatchNorm2d::new(vs.root() / "bn", 2);
        let x = Tensor::arange(16, (Kind::Float, Device::Cpu)).reshape([2, 2, 2, 2]);
        let _ = bn.forward(&x, false);
        let vars = vs.variables();
        assert_eq!(vars["bn.num_batches_tracked"].int64_value(&[]), 0);
        assert_eq!(vars["bn.running_mean"].double_value(&[0]), 0.0);
        let y = bn.forward(&x, true);
        assert_eq!(vars["bn.num_batches_tracked"].int64_value(&[]), 1);
        assert_eq!(vars["bn.num_batches_tracked"].kind(), Kind::Int64);
        // Channel 0 holds 0..4 and 8..12: mean 5.5; 10% of it.
        let m = vars["bn.running_mean"].double_value(&[0]);
        assert!((m - 0.55).abs() < 1e-6, "{m}");
        // Batch statistics: each channel normalised to mean 0.
        let mean = y.mean_dim([0i64, 2, 3].as_slice(), false, Kind::Float);
        assert!(mean.abs().max().double_value(&[]) < 1e-6);
        // Only weight and bias train.
        assert_eq!(vs.trainable_variables().len(), 2);
    }
}
