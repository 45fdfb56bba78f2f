//! libtorch is linked and trains: a tiny model's loss falls.

use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

#[test]
fn a_tiny_mlp_learns_xor_like_data() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let model = nn::seq()
        .add(nn::linear(&root / "l1", 2, 16, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(&root / "l2", 16, 2, Default::default()));
    let x = Tensor::rand([256, 2], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let y = x
        .select(1, 0)
        .multiply(&x.select(1, 1))
        .gt(0.0)
        .to_kind(Kind::Int64);
    let mut opt = nn::AdamW::default().build(&vs, 1e-2).unwrap();
    let loss_at = |m: &nn::Sequential| m.forward(&x).cross_entropy_for_logits(&y).double_value(&[]);
    let first = loss_at(&model);
    for _ in 0..200 {
        let loss = model.forward(&x).cross_entropy_for_logits(&y);
        opt.backward_step(&loss);
    }
    let last = loss_at(&model);
    assert!(last < first * 0.5, "loss {first} -> {last}");
    let acc = model
        .forward(&x)
        .argmax(1, false)
        .eq_tensor(&y)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    assert!(acc > 0.9, "accuracy {acc}");
}
