//! LoRA models on an engine: one resident base per base model and device,
//! adapters loaded lazily and evicted by a byte budget
//! (`--adapter-cache-bytes`; the bases stay), and batches that mix
//! adapters of one base run as one forward pass
//! ([`crate::model::lora::mixed`]): the base matmuls once over every image,
//! the low-rank terms and heads per adapter.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use prometheus::{IntGaugeVec, Opts, Registry};
use tch::{Device, Tensor};

use crate::model::lora::mixed::{forward_mixed, Group};
use crate::model::lora::{self, Adapter};
use crate::model::Model;

/// `/metrics` of the adapter caches, by device.
#[derive(Clone)]
pub struct AdapterGauges {
    adapters: IntGaugeVec,
    bytes: IntGaugeVec,
    bases: IntGaugeVec,
}

impl AdapterGauges {
    pub fn register(registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["device"]).expect("valid metric");
            let _ = registry.register(Box::new(g.clone()));
            g
        };
        Self {
            adapters: gauge(
                "vitrine_lora_resident_adapters",
                "LoRA adapters resident on the device",
            ),
            bytes: gauge(
                "vitrine_lora_resident_adapter_bytes",
                "Bytes of the LoRA adapters resident on the device",
            ),
            bases: gauge(
                "vitrine_lora_resident_bases",
                "Base models resident on the device for LoRA adapters",
            ),
        }
    }
}

struct ResidentAdapter {
    id: String,
    base: PathBuf,
    adapter: Adapter,
    bytes: u64,
}

/// One engine's LoRA models.
pub struct AdapterCache {
    device: Device,
    name: String,
    budget: u64,
    /// Base directory -> the resident base.
    bases: HashMap<PathBuf, Model>,
    /// Most recently used last.
    adapters: VecDeque<ResidentAdapter>,
    /// Model directory -> its base directory (`None`: not a LoRA model).
    kinds: HashMap<PathBuf, Option<PathBuf>>,
    gauges: Option<AdapterGauges>,
}

impl AdapterCache {
    pub fn new(device: Device, budget: u64, gauges: Option<AdapterGauges>) -> Self {
        Self {
            device,
            name: crate::torch_info::device_name(device),
            budget,
            bases: HashMap::new(),
            adapters: VecDeque::new(),
            kinds: HashMap::new(),
            gauges,
        }
    }

    /// The base directory of the LoRA model in `dir`; `None` for any other
    /// model (or one whose base cannot be resolved: it then fails to load
    /// on the plain path, with its error).
    pub fn base_of(&mut self, dir: &Path) -> Option<PathBuf> {
        if let Some(known) = self.kinds.get(dir) {
            return known.clone();
        }
        let base = lora::is_lora_dir(dir)
            .then(|| lora::read_adapter(dir).ok())
            .flatten()
            .and_then(|file| file.base)
            .and_then(|name| {
                crate::model::resolve_model_source(&name, &crate::model::HubOptions::from_env())
                    .ok()
            });
        self.kinds.insert(dir.to_path_buf(), base.clone());
        base
    }

    /// Logits per request of `requests` (`(model id, model dir, pixels)`,
    /// every model an adapter on `base`), in their order: one forward pass
    /// of the base, the requests sorted by adapter into contiguous groups.
    pub fn forward(
        &mut self,
        base: &Path,
        requests: &[(&str, &Path, &Tensor)],
    ) -> Result<Vec<Tensor>, String> {
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by_key(|&i| requests[i].0);
        let pinned: Vec<&str> = requests.iter().map(|r| r.0).collect();
        for &(id, dir, _) in requests {
            self.ensure(id, dir, base, &pinned)?;
        }
        let model = &self.bases[base];
        let mut groups: Vec<Group<'_>> = Vec::new();
        let mut ids: Vec<&str> = Vec::new();
        for &i in &order {
            let (id, _, pixels) = requests[i];
            let images = pixels.size()[0];
            match ids.last() {
                Some(last) if *last == id => groups.last_mut().unwrap().images += images,
                _ => {
                    let adapter = &self.adapters.iter().find(|a| a.id == id).unwrap().adapter;
                    groups.push(Group { adapter, images });
                    ids.push(id);
                }
            }
        }
        let x = Tensor::cat(&order.iter().map(|&i| requests[i].2).collect::<Vec<_>>(), 0)
            .to_device(self.device);
        let per_group = forward_mixed(model, &groups, &x).map_err(|e| e.to_string())?;
        // Each request's rows of its group's logits (the groups follow the
        // sorted order; a group's width is its adapter's label count).
        let mut per_request: Vec<Option<Tensor>> = (0..requests.len()).map(|_| None).collect();
        let (mut group, mut at) = (0, 0);
        for (k, &i) in order.iter().enumerate() {
            if k > 0 && requests[order[k - 1]].0 != requests[i].0 {
                group += 1;
                at = 0;
            }
            let n = requests[i].2.size()[0];
            per_request[i] = Some(per_group[group].narrow(0, at, n).to_device(Device::Cpu));
            at += n;
        }
        Ok(per_request.into_iter().map(Option::unwrap).collect())
    }

    /// Loads the base and the adapter `id` when not resident, evicting the
    /// least recently used adapters (not those of this batch) past the
    /// budget.
    fn ensure(&mut self, id: &str, dir: &Path, base: &Path, pinned: &[&str]) -> Result<(), String> {
        if let Some(pos) = self.adapters.iter().position(|a| a.id == id) {
            let a = self.adapters.remove(pos).unwrap();
            self.adapters.push_back(a);
            return Ok(());
        }
        if !self.bases.contains_key(base) {
            let model = crate::model::load_pretrained(base, self.device, Some(&["base".into()]))
                .map_err(|e| format!("loading base model {}: {e:#}", base.display()))?;
            tracing::info!(base = %base.display(), device = %self.name, "LoRA base resident");
            self.bases.insert(base.to_path_buf(), model);
        }
        let file = lora::read_adapter(dir).map_err(|e| format!("loading adapter {id}: {e}"))?;
        let adapter = Adapter::from_file(&file, &self.bases[base])
            .map_err(|e| format!("loading adapter {id}: {e}"))?;
        let bytes = adapter
            .named_tensors()
            .iter()
            .map(|(_, t)| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
            .sum();
        self.adapters.push_back(ResidentAdapter {
            id: id.to_string(),
            base: base.to_path_buf(),
            adapter,
            bytes,
        });
        self.evict(pinned);
        Ok(())
    }

    fn evict(&mut self, pinned: &[&str]) {
        while self.resident_bytes() > self.budget {
            let Some(pos) = self
                .adapters
                .iter()
                .position(|a| !pinned.contains(&a.id.as_str()))
            else {
                break;
            };
            let gone = self.adapters.remove(pos).unwrap();
            tracing::debug!(model = %gone.id, base = %gone.base.display(), "LoRA adapter evicted");
        }
        self.publish();
    }

    pub fn resident_bytes(&self) -> u64 {
        self.adapters.iter().map(|a| a.bytes).sum()
    }

    pub fn resident_adapters(&self) -> usize {
        self.adapters.len()
    }

    fn publish(&self) {
        if let Some(g) = &self.gauges {
            let d = [self.name.as_str()];
            g.adapters
                .with_label_values(&d)
                .set(self.adapters.len() as i64);
            g.bytes
                .with_label_values(&d)
                .set(self.resident_bytes() as i64);
            g.bases.with_label_values(&d).set(self.bases.len() as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::lora::LoraSpec;
    use crate::model::ProblemType;
    use tch::Kind;

    /// A tiny ViT base and `n` LoRA model directories on it (random B, so
    /// every adapter differs), `labels + i` labels each.
    fn models(dir: &Path, n: usize) -> (PathBuf, Vec<PathBuf>) {
        let config = crate::model::ModelConfig::from_json(
            serde_json::json!({"model_type": "vit", "hidden_size": 16, "num_hidden_layers": 2,
                "num_attention_heads": 2, "intermediate_size": 32, "image_size": 16, "patch_size": 8}),
            Path::new("config.json"),
        )
        .unwrap();
        tch::manual_seed(3);
        let base =
            Model::from_config(config.clone(), vec!["a".into(), "b".into()], Device::Cpu).unwrap();
        let base_dir = dir.join("base");
        crate::model::save_pretrained(&base, &base_dir, ProblemType::SingleLabel).unwrap();
        let dirs = (0..n)
            .map(|i| {
                let labels = (0..2 + i).map(|l| format!("l{l}")).collect();
                let model = Model::from_config(config.clone(), labels, Device::Cpu).unwrap();
                let spec = LoraSpec {
                    r: 1 + i as i64,
                    ..LoraSpec::default()
                };
                let adapter = Adapter::init(&model, &spec).unwrap();
                for m in &adapter.modules {
                    let _ = m.b.detach().uniform_(-0.5, 0.5);
                }
                let out = dir.join(format!("m{i}"));
                let base = base_dir.to_str().unwrap();
                lora::save_adapter(&model, &adapter, &out, base, ProblemType::SingleLabel).unwrap();
                out
            })
            .collect();
        (base_dir, dirs)
    }

    #[test]
    fn a_mixed_batch_on_one_base_answers_as_each_merged_model() {
        let tmp = tempfile::tempdir().unwrap();
        let (base, dirs) = models(tmp.path(), 3);
        let registry = Registry::new();
        let mut cache = AdapterCache::new(
            Device::Cpu,
            u64::MAX,
            Some(AdapterGauges::register(&registry)),
        );
        assert_eq!(cache.base_of(&dirs[0]), Some(base.clone()));
        assert_eq!(cache.base_of(&base), None);
        let ids = ["m0", "m1", "m2", "m1", "m0"];
        let pixels: Vec<Tensor> = (0..ids.len())
            .map(|i| Tensor::randn([1 + i as i64 % 2, 3, 16, 16], (Kind::Float, Device::Cpu)))
            .collect();
        let requests: Vec<(&str, &Path, &Tensor)> = ids
            .iter()
            .zip(&pixels)
            .map(|(id, x)| (*id, dirs[id[1..].parse::<usize>().unwrap()].as_path(), x))
            .collect();
        let got = cache.forward(&base, &requests).unwrap();
        for ((id, dir, x), logits) in requests.iter().zip(&got) {
            let merged = crate::model::load_pretrained(dir, Device::Cpu, None).unwrap();
            let want = merged.logits(x).unwrap();
            let d = (logits - &want).abs().max().double_value(&[]);
            assert!(d <= 1e-5, "{id}: {d}");
        }
        assert_eq!((cache.resident_adapters(), cache.bases.len()), (3, 1));
        let text = String::from_utf8(
            prometheus::TextEncoder::new()
                .encode_to_string(&registry.gather())
                .unwrap()
                .into_bytes(),
        )
        .unwrap();
        assert!(
            text.contains("vitrine_lora_resident_adapters{device=\"cpu\"} 3"),
            "{text}"
        );
    }

    #[test]
    fn adapters_past_the_byte_budget_are_evicted_but_not_from_their_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let (base, dirs) = models(tmp.path(), 3);
        let mut cache = AdapterCache::new(Device::Cpu, 1, None);
        let x = Tensor::randn([1, 3, 16, 16], (Kind::Float, Device::Cpu));
        let both = [("m0", dirs[0].as_path(), &x), ("m1", dirs[1].as_path(), &x)];
        cache.forward(&base, &both).unwrap();
        assert_eq!(
            cache.resident_adapters(),
            2,
            "the batch's own adapters stay"
        );
        cache
            .forward(&base, &[("m2", dirs[2].as_path(), &x)])
            .unwrap();
        assert_eq!(cache.resident_adapters(), 1);
        assert_eq!(cache.bases.len(), 1, "the base stays");
    }
}
