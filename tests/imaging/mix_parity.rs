//! MixUp and CutMix of a batch (`vitrine::train::mix`) against
//! `torchvision.transforms.v2.MixUp` / `CutMix` given the same `lam` and box
//! (`tests/python/mix_parity.py`): the mixed batch and the soft targets
//! agree bit for bit. The random draws are tested by their distribution in
//! `train::mix`'s unit tests.

use tch::{Kind, Tensor};
use vitrine::task::Task;
use vitrine::train::mix::{Mix, Mixer};

fn read_f32(path: &std::path::Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn mixing_matches_torchvision() {
    let dir = crate::common::python_fixtures("tests/python/mix_parity.py");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let x = Tensor::from_slice(&read_f32(&dir.join("x.f32"))).view([4, 3, 6, 10]);
    let ids: Vec<i64> = std::fs::read(dir.join("y.i64"))
        .unwrap()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let y = Tensor::from_slice(&ids);
    let mixer = Mixer::new(1.0, 1.0, Task::MultiClass, 5).unwrap();
    let cases = index["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    for case in cases {
        let mix = match case["kind"].as_str().unwrap() {
            "mixup" => Mix::MixUp {
                lam: case["lam"].as_f64().unwrap(),
            },
            _ => {
                let b: Vec<i64> = serde_json::from_value(case["box"].clone()).unwrap();
                Mix::CutMix {
                    lam: case["lam_adjusted"].as_f64().unwrap(),
                    bbox: (b[0], b[1], b[2], b[3]),
                }
            }
        };
        let (xm, ym) = mixer.apply(mix, &x, &y);
        assert_eq!(ym.kind(), Kind::Float);
        let file = case["file"].as_str().unwrap();
        let got_x = Vec::<f32>::try_from(xm.flatten(0, -1)).unwrap();
        let got_y = Vec::<f32>::try_from(ym.flatten(0, -1)).unwrap();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&got_x),
            bits(&read_f32(&dir.join(format!("{file}.x.f32")))),
            "{case}"
        );
        assert_eq!(
            bits(&got_y),
            bits(&read_f32(&dir.join(format!("{file}.y.f32")))),
            "{case}"
        );
    }
}
