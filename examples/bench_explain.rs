//! What an explanation costs against the prediction it explains: one
//! image at 224x224 through the real DINOv2-small (attention rollout,
//! integrated gradients) and a randomly initialised ConvNeXt-T-sized
//! network (Grad-CAM, integrated gradients), each timed against a plain
//! forward pass of the same network in the same process.
//!
//! Usage: bench_explain THREADS DINOV2_DIR [IG_STEPS] (DINOV2_DIR from
//! `scripts/fetch-dinov2-small.sh`). Prints one JSON line per method.

use std::time::Instant;

use tch::{Device, Kind, Tensor};
use vitrine::explain::{self, Method};
use vitrine::model::{load_pretrained, Model, ModelConfig};

fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn model_normalisation(model: &Model) -> vitrine::imaging::Normalisation {
    let cfg: vitrine::imaging::PreprocessorConfig =
        serde_json::from_value(model.preprocessor_json.clone()).expect("a preprocessor config");
    vitrine::imaging::Pipeline::from_preprocessor(&cfg, None).normalisation()
}

fn convnext_tiny() -> Model {
    let json = serde_json::json!({"model_type": "convnext", "hidden_sizes": [96, 192, 384, 768],
        "depths": [3, 3, 9, 3], "image_size": 224, "patch_size": 4});
    let config = ModelConfig::from_json(json, std::path::Path::new("config.json")).unwrap();
    let labels = (0..10).map(|i| format!("c{i}")).collect();
    Model::from_config(config, labels, Device::Cpu).unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: i32 = args.get(1).map_or(2, |a| a.parse().expect("THREADS"));
    let dinov2 = args.get(2).expect("DINOV2_DIR");
    let steps: usize = args.get(3).map_or(32, |a| a.parse().expect("IG_STEPS"));
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let x = Tensor::randn([1, 3, 224, 224], (Kind::Float, Device::Cpu));
    // The backbone is real; its new head (10 labels) is random.
    let labels: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    let models = [
        (
            "dinov2-small",
            load_pretrained(std::path::Path::new(dinov2), Device::Cpu, Some(&labels)).unwrap(),
        ),
        ("convnext-tiny (random)", convnext_tiny()),
    ];
    for (name, mut model) in models {
        model.vs.freeze();
        let net = model.net.as_ref();
        let path = explain::PathOptions {
            steps,
            baseline: explain::integrated::Baseline::Mean,
            normalisation: model_normalisation(&model),
        };
        let forward = median_ms(5, || {
            let _ = tch::no_grad(|| net.forward_t(&x, false));
        });
        for method in Method::for_family(model.config.model_type()) {
            let runs = if method == Method::IntegratedGradients {
                1
            } else {
                5
            };
            let ms = median_ms(runs, || {
                explain::explain(net, &x, method, &[0], &path).unwrap();
            });
            println!(
                "{}",
                serde_json::json!({"model": name, "method": method.name(), "threads": threads,
                    "ig_steps": (method == Method::IntegratedGradients).then_some(steps),
                    "forward_ms": (forward * 10.0).round() / 10.0, "explain_ms": (ms * 10.0).round() / 10.0,
                    "x_forward": (ms / forward * 10.0).round() / 10.0})
            );
        }
    }
}
