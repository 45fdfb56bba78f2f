//! serde helpers for `config.json` fields that every architecture reads the
//! same way (`id2label`, square sizes) and their shared checks.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serializer};

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
