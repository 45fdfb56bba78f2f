//! Gradient all-reduce of data-parallel training on the CPU: 2 Gloo ranks
//! (threads of one process, as `train/distributed.rs` runs them) on a
//! ViT-B/16 (86 M fp32 parameters), c10d's `Reducer` with DDP's buckets.
//!
//! Usage: bench_allreduce [STEPS] [BATCH]   (defaults 3 and 2)
//!
//! Measures, per step and rank (1 libtorch thread per rank):
//! - `allreduce_ms`: the gradients all-reduced alone, bucket by bucket
//!   (what the reducer sends, with no backward pass running);
//! - `local_step_ms`: forward + backward with both ranks computing and no
//!   communication;
//! - `ddp_step_ms`: the same step with the reducer armed (gradients
//!   averaged in buckets while the backward pass runs);
//! - `hidden_share`: 1 - (ddp - local) / allreduce, the share of the
//!   all-reduce time the backward pass hid.
//!
//! Prints one JSON line (the figures in `docs/benchmarks.md`).

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};
use vitrine::model::{Model, ModelConfig};
use vitrine::torchx::dist::{GradReducer, ProcessGroup, ReduceOp, Store, BUCKET_BYTES};

const TIMEOUT: Duration = Duration::from_secs(600);

fn vit_b16() -> Model {
    let config = ModelConfig::from_json(
        serde_json::json!({"model_type": "vit", "hidden_size": 768, "num_hidden_layers": 12,
            "num_attention_heads": 12, "intermediate_size": 3072, "image_size": 224,
            "patch_size": 16, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}),
        std::path::Path::new("config.json"),
    )
    .expect("a ViT-B/16 config");
    let labels = (0..1000).map(|i| format!("c{i}")).collect();
    Model::from_config(config, labels, Device::Cpu).expect("a ViT-B/16")
}

/// Mean milliseconds of `steps` runs of `f` (after one warm-up run).
fn time_ms(steps: usize, barrier: &Barrier, mut f: impl FnMut()) -> f64 {
    barrier.wait();
    f();
    barrier.wait();
    let t = Instant::now();
    for _ in 0..steps {
        f();
    }
    barrier.wait();
    t.elapsed().as_secs_f64() * 1e3 / steps as f64
}

struct RankFigures {
    params: i64,
    buckets: usize,
    bucket_mb: Vec<f64>,
    allreduce_ms: f64,
    local_step_ms: f64,
    ddp_step_ms: f64,
}

fn rank(group: ProcessGroup, barrier: Arc<Barrier>, steps: usize, batch: i64) -> RankFigures {
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let model = vit_b16();
    let params: Vec<Tensor> = model
        .vs
        .trainable_variables()
        .into_iter()
        .map(|t| t.set_requires_grad(true))
        .collect();
    let count: i64 = params.iter().map(Tensor::numel).map(|n| n as i64).sum();
    // The buckets DDP's assignment makes (25 MiB, in reverse order), as
    // flat tensors: what the reducer all-reduces.
    let mut buckets: Vec<Vec<i64>> = vec![vec![]];
    let mut bytes = 0i64;
    for p in params.iter().rev() {
        let b = p.numel() as i64 * 4;
        if bytes + b > BUCKET_BYTES && bytes > 0 {
            buckets.push(vec![]);
            bytes = 0;
        }
        buckets.last_mut().unwrap().push(p.numel() as i64);
        bytes += b;
    }
    let flats: Vec<Tensor> = buckets
        .iter()
        .map(|b| Tensor::ones([b.iter().sum::<i64>()], (Kind::Float, Device::Cpu)))
        .collect();
    let bucket_mb = flats.iter().map(|t| t.numel() as f64 * 4.0 / 1e6).collect();
    let allreduce_ms = time_ms(steps, &barrier, || {
        for f in &flats {
            group
                .all_reduce(std::slice::from_ref(f), ReduceOp::Avg)
                .unwrap();
        }
    });
    drop(flats);
    let xs = Tensor::randn([batch, 3, 224, 224], (Kind::Float, Device::Cpu));
    let step = |reducer: Option<&GradReducer>| {
        for p in &params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        if let Some(r) = reducer {
            r.prepare().unwrap();
        }
        let loss = model.net.forward_t(&xs, true).square().mean(Kind::Float);
        loss.backward();
    };
    let local_step_ms = time_ms(steps, &barrier, || step(None));
    let reducer = GradReducer::new(&group, &params, BUCKET_BYTES).unwrap();
    let ddp_step_ms = time_ms(steps, &barrier, || step(Some(&reducer)));
    RankFigures {
        params: count,
        buckets: reducer.buckets(),
        bucket_mb,
        allreduce_ms,
        local_step_ms,
        ddp_step_ms,
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let steps: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let batch: i64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(2);
    anyhow::ensure!(
        vitrine::torchx::dist::available(),
        "{}",
        vitrine::torchx::dist::UNAVAILABLE
    );
    let store = Store::host("127.0.0.1", 0, TIMEOUT).map_err(|e| anyhow::anyhow!(e.0))?;
    let port = store.port();
    let barrier = Arc::new(Barrier::new(2));
    let other = {
        let barrier = barrier.clone();
        std::thread::spawn(move || {
            let store = Store::connect("127.0.0.1", port, TIMEOUT).unwrap();
            let group = ProcessGroup::gloo(&store, "127.0.0.1", 1, 2, TIMEOUT).unwrap();
            rank(group, barrier, steps, batch)
        })
    };
    let group =
        ProcessGroup::gloo(&store, "127.0.0.1", 0, 2, TIMEOUT).map_err(|e| anyhow::anyhow!(e.0))?;
    let r0 = rank(group, barrier, steps, batch);
    let r1 = other.join().expect("rank 1");
    let mean = |f: fn(&RankFigures) -> f64| (f(&r0) + f(&r1)) / 2.0;
    let (ar, local, ddp) = (
        mean(|r| r.allreduce_ms),
        mean(|r| r.local_step_ms),
        mean(|r| r.ddp_step_ms),
    );
    let exposed = (ddp - local).max(0.0);
    println!(
        "{}",
        serde_json::json!({
            "ranks": 2, "backend": "gloo", "threads_per_rank": 1, "batch_per_rank": batch,
            "steps": steps, "parameters": r0.params, "gradient_mb": r0.params as f64 * 4.0 / 1e6,
            "reducer_buckets": r0.buckets, "bucket_mb": r0.bucket_mb,
            "allreduce_ms": ar, "local_step_ms": local, "ddp_step_ms": ddp,
            "exposed_ms": exposed, "hidden_share": (1.0 - exposed / ar).clamp(0.0, 1.0),
        })
    );
    Ok(())
}
