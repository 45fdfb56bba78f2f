//! One forward pass of a shared base for a batch that mixes adapters.
//!
//! The rows of the batch are grouped by adapter (contiguous ranges). The
//! base's matmuls run once over the whole batch; at every tap, each
//! adapter's low-rank term runs over its own rows only (`tap.rs`), and each
//! group's features go through its adapter's own head. No adapter runs the
//! full model alone, and the base's weights are never changed, so any
//! number of adapters share one resident copy.

use tch::Tensor;

use super::adapter::{sites, Adapter};
use super::tap::LoraPlan;
use crate::model::error::Result;
use crate::model::Model;

/// A run of consecutive images for one adapter.
pub struct Group<'a> {
    pub adapter: &'a Adapter,
    /// Images in this group (the groups follow each other in the batch).
    pub images: i64,
}

/// Logits per group (`[images, adapter's labels]` each) of `pixel_values`
/// (`[sum of images, C, H, W]`, on `base`'s device), inference mode.
/// The taps are cleared afterwards, even when the pass fails.
pub fn forward_mixed(
    base: &Model,
    groups: &[Group<'_>],
    pixel_values: &Tensor,
) -> Result<Vec<Tensor>> {
    let sites = sites(base)?;
    let total: i64 = groups.iter().map(|g| g.images).sum();
    let mut plans: std::collections::HashMap<&str, LoraPlan> = std::collections::HashMap::new();
    let mut heads = Vec::with_capacity(groups.len());
    let mut first = 0;
    for g in groups {
        for m in &g.adapter.modules {
            let site = sites.get_key_value(m.path.as_str()).ok_or_else(|| {
                super::refusal(
                    "adapter_base_mismatch",
                    format!("the base has no `{}`", m.path),
                )
            })?;
            let plan = plans.entry(site.0.as_str()).or_insert_with(|| LoraPlan {
                terms: vec![],
                images: total,
            });
            plan.terms.push(g.adapter.term(m, Some((first, g.images))));
        }
        heads.push((first, g.images, head_of(g.adapter)?));
        first += g.images;
    }
    for (path, plan) in plans {
        sites[path].set_plan(plan);
    }
    let _clear = ClearOnDrop(&sites);
    let features = tch::no_grad(|| base.net.features(pixel_values, false));
    Ok(heads
        .into_iter()
        .map(|(start, n, (w, b))| {
            let f = features.narrow(0, start, n);
            f.linear(
                &w.to_kind(f.kind()),
                b.map(|b| b.to_kind(f.kind())).as_ref(),
            )
        })
        .collect())
}

/// `(weight, bias)` of an adapter's classifier.
fn head_of(adapter: &Adapter) -> Result<(Tensor, Option<Tensor>)> {
    let find = |suffix: &str| {
        adapter
            .head
            .iter()
            .find(|(n, _)| n.ends_with(suffix))
            .map(|(_, t)| t.shallow_clone())
    };
    let weight = find(".weight").ok_or_else(|| {
        super::refusal(
            "invalid_lora",
            "the adapter has no classifier head (`modules_to_save: [\"classifier\"]`)".into(),
        )
    })?;
    Ok((weight, find(".bias")))
}

struct ClearOnDrop<'a>(&'a std::collections::HashMap<String, &'a super::LoraLinear>);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        for s in self.0.values() {
            s.clear();
        }
    }
}
