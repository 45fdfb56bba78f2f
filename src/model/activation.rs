//! The MLP activation of a checkpoint (`hidden_act`), shared by every
//! architecture's config.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The activation of the MLP blocks (`hidden_act`), as `transformers.activations.ACT2FN`.
///
/// Every parameter-free entry of `ACT2FN` is supported; `prelu` and `xielu`
/// (learned parameters no ViT or DINOv2 checkpoint has) are refused by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`, `gelu_python`: exact, erf-based.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`, `gelu_accurate`,
    /// `gelu_python_tanh`: the tanh approximation (the same function,
    /// written differently; they agree to float rounding).
    GeluTanh,
    /// `gelu_10`: exact GELU clipped to [-10, 10].
    Gelu10,
    /// `quick_gelu`: `x * sigmoid(1.702 x)`.
    QuickGelu,
    Relu,
    /// `relu2`: `relu(x)^2`.
    Relu2,
    /// `relu6`: `min(max(x, 0), 6)`.
    Relu6,
    /// `leaky_relu`: slope 0.01 below zero (`nn.LeakyReLU()`).
    LeakyRelu,
    /// `silu` or `swish`.
    Silu,
    /// `mish`: `x * tanh(softplus(x))`.
    Mish,
    Hardswish,
    Tanh,
    Sigmoid,
    /// `sqrtsoftplus`: `sqrt(softplus(x))`.
    SqrtSoftplus,
    /// `laplace`: `0.5 * (1 + erf((x - mu) / (sigma * sqrt(2))))`, MEGA's constants.
    Laplace,
    /// `linear`: the identity.
    Linear,
}

impl Activation {
    pub const NAMES: &'static [&'static str] = &[
        "gelu",
        "gelu_python",
        "gelu_new",
        "gelu_pytorch_tanh",
        "gelu_fast",
        "gelu_accurate",
        "gelu_python_tanh",
        "gelu_10",
        "quick_gelu",
        "relu",
        "relu2",
        "relu6",
        "leaky_relu",
        "silu",
        "swish",
        "mish",
        "hardswish",
        "tanh",
        "sigmoid",
        "sqrtsoftplus",
        "laplace",
        "linear",
    ];

    pub fn apply(self, xs: &tch::Tensor) -> tch::Tensor {
        match self {
            Self::Gelu => xs.gelu("none"),
            Self::GeluTanh => xs.gelu("tanh"),
            Self::Gelu10 => xs.gelu("none").clamp(-10.0, 10.0),
            Self::QuickGelu => xs * (xs * 1.702).sigmoid(),
            Self::Relu => xs.relu(),
            Self::Relu2 => xs.relu().square(),
            Self::Relu6 => xs.clamp(0.0, 6.0),
            Self::LeakyRelu => xs.leaky_relu(),
            Self::Silu => xs.silu(),
            Self::Mish => xs.mish(),
            Self::Hardswish => xs.hardswish(),
            Self::Tanh => xs.tanh(),
            Self::Sigmoid => xs.sigmoid(),
            Self::SqrtSoftplus => xs.softplus().sqrt(),
            Self::Laplace => {
                // transformers' literals (rounded 1/sqrt(2) and 1/(2 sqrt(pi))), kept as written.
                #[allow(clippy::approx_constant)]
                let (mu, sigma) = (0.707107, 0.282095);
                ((xs - mu) / (sigma * std::f64::consts::SQRT_2)).erf() * 0.5 + 0.5
            }
            Self::Linear => xs.shallow_clone(),
        }
    }

    /// The name written back to `config.json`: one `transformers` maps to
    /// the same function.
    fn name(self) -> &'static str {
        match self {
            Self::Gelu => "gelu",
            Self::GeluTanh => "gelu_pytorch_tanh",
            Self::Gelu10 => "gelu_10",
            Self::QuickGelu => "quick_gelu",
            Self::Relu => "relu",
            Self::Relu2 => "relu2",
            Self::Relu6 => "relu6",
            Self::LeakyRelu => "leaky_relu",
            Self::Silu => "silu",
            Self::Mish => "mish",
            Self::Hardswish => "hardswish",
            Self::Tanh => "tanh",
            Self::Sigmoid => "sigmoid",
            Self::SqrtSoftplus => "sqrtsoftplus",
            Self::Laplace => "laplace",
            Self::Linear => "linear",
        }
    }
}

impl std::str::FromStr for Activation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "gelu" | "gelu_python" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "gelu_accurate"
            | "gelu_python_tanh" => Self::GeluTanh,
            "gelu_10" => Self::Gelu10,
            "quick_gelu" => Self::QuickGelu,
            "relu" => Self::Relu,
            "relu2" => Self::Relu2,
            "relu6" => Self::Relu6,
            "leaky_relu" => Self::LeakyRelu,
            "silu" | "swish" => Self::Silu,
            "mish" => Self::Mish,
            "hardswish" => Self::Hardswish,
            "tanh" => Self::Tanh,
            "sigmoid" => Self::Sigmoid,
            "sqrtsoftplus" => Self::SqrtSoftplus,
            "laplace" => Self::Laplace,
            "linear" => Self::Linear,
            other => {
                return Err(format!(
                    "unsupported hidden_act `{other}` (supported: {})",
                    Self::NAMES.join(", ")
                ))
            }
        })
    }
}

impl<'de> Deserialize<'de> for Activation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Activation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}
