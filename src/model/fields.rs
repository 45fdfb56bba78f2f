//! The `config.json` fields that every architecture reads the same way
//! ([`HfFields`]: `id2label`, `problem_type`, unknown keys kept), serde
//! helpers for square sizes, and the shared checks.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The Hugging Face fields every family's config shares, flattened into it
/// (`#[serde(flatten)] pub hf: HfFields`, its last field): written after the
/// family's own fields, exactly as when each config spelt them out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HfFields {
    /// `id2label` as a list: index `i` is label `i`. In JSON the keys are strings.
    #[serde(
        default,
        deserialize_with = "id2label_de",
        serialize_with = "id2label_ser"
    )]
    pub id2label: Vec<String>,
    /// `single_label_classification` / `multi_label_classification`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_type: Option<String>,
    /// Everything else in `config.json`, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Keys `to_json` derives (from `id2label` and the family): a stale copy
/// read back would contradict them, so they are dropped when read.
pub(crate) const DERIVED_KEYS: [&str; 4] = ["label2id", "num_labels", "_num_labels", "model_type"];

impl HfFields {
    /// Drops the derived keys, the shared ones and the family's `extra`.
    pub(crate) fn drop_derived(&mut self, family_keys: &[&str]) {
        for key in DERIVED_KEYS.iter().chain(family_keys) {
            self.extra.remove(*key);
        }
    }

    /// The task `problem_type` names: `multi_label_classification` is
    /// multi-label, anything else (or nothing) multi-class, as in
    /// `transformers` (which only infers otherwise from the labels it is
    /// given in training).
    pub fn task(&self) -> crate::task::Task {
        match self.problem_type.as_deref() {
            Some("multi_label_classification") => crate::task::Task::MultiLabel,
            _ => crate::task::Task::MultiClass,
        }
    }
}

/// `image_size` / `patch_size` are ints, or `[h, w]` pairs in some configs:
/// only square sizes are supported.
pub(crate) fn square_size<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        One(i64),
        Pair(Vec<i64>),
    }
    match Size::deserialize(d)? {
        Size::One(v) => Ok(v),
        Size::Pair(v) if v.len() == 2 && v[0] == v[1] => Ok(v[0]),
        Size::Pair(v) => Err(serde::de::Error::custom(format!(
            "only square sizes are supported, got {v:?}"
        ))),
    }
}

pub(crate) fn id2label_de<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let map: Option<BTreeMap<String, String>> = Option::deserialize(d)?;
    let Some(map) = map else {
        return Ok(Vec::new());
    };
    let n = map.len();
    let mut labels = vec![None; n];
    for (key, label) in map {
        let idx: usize = key.parse().map_err(|_| {
            serde::de::Error::custom(format!("id2label key `{key}` is not an integer"))
        })?;
        let slot = labels.get_mut(idx).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "id2label ids must be 0..{} without gaps, found {idx}",
                n - 1
            ))
        })?;
        *slot = Some(label);
    }
    Ok(labels.into_iter().map(|l| l.expect("all filled")).collect())
}

pub(crate) fn id2label_ser<S: Serializer>(labels: &[String], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(labels.len()))?;
    for (i, l) in labels.iter().enumerate() {
        map.serialize_entry(&i.to_string(), l)?;
    }
    map.end()
}

/// Every named size must be positive and the width must split evenly into
/// attention heads (shared by the architectures' `validate`).
pub(crate) fn check_sizes(positive: &[(&str, i64)], hidden: i64, heads: i64) -> Result<(), String> {
    if let Some((name, v)) = positive.iter().find(|(_, v)| *v <= 0) {
        return Err(format!("`{name}` must be positive, got {v}"));
    }
    if hidden % heads != 0 {
        return Err(format!(
            "`hidden_size` {hidden} is not a multiple of `num_attention_heads` {heads}"
        ));
    }
    Ok(())
}
