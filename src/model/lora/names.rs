//! PEFT's key names for an adapter of this service's networks.
//!
//! vitrine's variables carry the checkpoint names (`transformers` 4's
//! module tree, which `save_pretrained` still writes). PEFT names an
//! adapter's tensors after the modules *in memory*, and in the pinned
//! `transformers` 5 those moved: ViT's
//! `vit.encoder.layer.N.attention.attention.query` is
//! `vit.layers.N.attention.q_proj`, DINOv2's
//! `dinov2.encoder.layer.N.attention.attention.query` is
//! `dinov2.encoder.layer.N.attention.q_proj`, Swin's
//! `swin.encoder.layers.S.blocks.B.attention.self.query` is
//! `swin.encoder.layers.S.blocks.B.attention.q_proj`. Adapters are written
//! with the new names and read in either.

/// Every PEFT key of a model starts so.
pub const PREFIX: &str = "base_model.model.";

/// The name vitrine uses for a target PEFT or `transformers` may spell
/// otherwise (`q_proj` is `query`).
pub fn canonical_target(name: &str) -> Option<&'static str> {
    Some(match name {
        "query" | "q_proj" => "query",
        "key" | "k_proj" => "key",
        "value" | "v_proj" => "value",
        _ => return None,
    })
}

/// The pinned `transformers`' module name of a target (`query` is `q_proj`).
pub fn peft_target(canonical: &str) -> &'static str {
    match canonical {
        "query" => "q_proj",
        "key" => "k_proj",
        _ => "v_proj",
    }
}

/// The in-memory module path (`transformers` 5) of a tap's checkpoint path.
pub fn module_path(site: &str) -> String {
    let mut parts: Vec<&str> = site.split('.').collect();
    let short = parts.pop().unwrap_or_default();
    parts.pop(); // `attention` (ViT, DINOv2) or `self` (Swin)
    let path = format!("{}.{}", parts.join("."), peft_target(short));
    match path.strip_prefix("vit.encoder.layer.") {
        Some(rest) => format!("vit.layers.{rest}"),
        None => path,
    }
}

/// `base_model.model.<module>.lora_<A|B>.weight`.
pub fn lora_key(module: &str, which: char) -> String {
    format!("{PREFIX}{module}.lora_{which}.weight")
}

/// `base_model.model.<name>` for a head variable (`classifier.weight`).
pub fn head_key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// The head variable of a saved key, in PEFT's plain form or with the
/// `modules_to_save` wrapper older PEFT versions wrote.
pub fn head_variable(key: &str) -> Option<String> {
    let rest = key.strip_prefix(PREFIX)?;
    let rest = rest.replace(".modules_to_save.default.", ".");
    rest.starts_with("classifier.").then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_paths_follow_transformers_5() {
        assert_eq!(
            module_path("vit.encoder.layer.3.attention.attention.query"),
            "vit.layers.3.attention.q_proj"
        );
        assert_eq!(
            module_path("dinov2.encoder.layer.0.attention.attention.value"),
            "dinov2.encoder.layer.0.attention.v_proj"
        );
        assert_eq!(
            module_path("swin.encoder.layers.1.blocks.0.attention.self.key"),
            "swin.encoder.layers.1.blocks.0.attention.k_proj"
        );
        assert_eq!(
            head_variable("base_model.model.classifier.modules_to_save.default.weight").as_deref(),
            Some("classifier.weight")
        );
        assert_eq!(head_variable("base_model.model.vit.x"), None);
    }
}
