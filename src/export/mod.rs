//! ONNX export: a trained model written as an ONNX file from its own
//! structure and weights, through prost messages of the ONNX schema
//! ([`onnx_proto`]); no Python and no tracing.
//!
//! - [`graph`]: the graph builder (nodes, initializers, attributes).
//! - [`ops`]: shared layers (linear, norms, convolution, activations, attention).
//! - [`transformer`]: ViT and DINOv2; [`cnn`]: ConvNeXt and ResNet; [`swin`]: Swin.
//! - [`command`]: `vitrine export`.
//! - [`metadata`]: labels, task, thresholds and preprocessing, in the file and beside it.
//! - [`queue`]: the server's bounded export queue and its disk cache.
//!
//! Every shape but the batch is static (the model's input size, as its
//! preprocessing produces it), so window layouts, masks, biases and
//! resampled position embeddings are constants computed here with tch.

mod cnn;
pub mod command;
pub mod error;
pub mod graph;
pub mod metadata;
pub mod onnx_proto;
mod ops;
pub mod queue;
mod swin;
mod transformer;

use std::ops::RangeInclusive;
use std::path::Path;

use prost::Message;

pub use error::ExportError;
pub use graph::Precision;
pub use metadata::ExportMetadata;
pub use queue::ExportQueue;

use crate::model::{Model, ModelConfig};
use crate::task::Task;
use crate::train::TrainedModel;
use graph::{value_info, Graph};
use metadata::TensorSpec;
use onnx_proto::{DataType, ModelProto, OperatorSetIdProto};

/// The opsets the graphs are written for (17: `LayerNormalization`).
pub const OPSETS: RangeInclusive<i64> = 17..=21;
pub const DEFAULT_OPSET: i64 = 17;
/// `model_type`s with an ONNX writer.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "vit",
    "dinov2",
    "dinov2_with_registers",
    "convnext",
    "resnet",
    "swin",
];
/// The export formats (`--format`, `?format=`).
pub const FORMATS: &[&str] = &["onnx"];

/// Protobuf's limit on one message.
const MAX_BYTES: usize = (2 << 30) - (1 << 20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportOptions {
    pub opset: i64,
    /// A symbolic batch axis; else the batch is 1.
    pub dynamic_batch: bool,
    pub precision: Precision,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            opset: DEFAULT_OPSET,
            dynamic_batch: false,
            precision: Precision::Fp32,
        }
    }
}

impl ExportOptions {
    pub fn check(&self) -> Result<(), ExportError> {
        if !OPSETS.contains(&self.opset) {
            return Err(ExportError::UnsupportedOpset(self.opset));
        }
        Ok(())
    }
}

/// An exported model: the `.onnx` bytes and the metadata they carry.
pub struct Exported {
    pub onnx: Vec<u8>,
    pub metadata: ExportMetadata,
}

/// The IR version an opset's files declare (the lowest that has it).
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=18 => 8,
        19 | 20 => 9,
        _ => 10,
    }
}

/// Refuses an architecture without a writer, by name, before anything is loaded.
pub fn check_architecture(config: &ModelConfig) -> Result<(), ExportError> {
    let name = config.model_type();
    if SUPPORTED_ARCHITECTURES.contains(&name) {
        Ok(())
    } else {
        Err(ExportError::UnsupportedArchitecture(name.to_string()))
    }
}

/// Exports the model directory `dir` (read on the CPU).
pub fn export_dir(dir: &Path, opts: &ExportOptions) -> Result<Exported, ExportError> {
    opts.check()?;
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    check_architecture(&config)?;
    let trained = TrainedModel::load(dir)?;
    let model = crate::model::load_pretrained(dir, tch::Device::Cpu, None)?;
    export(&model, &trained, opts)
}

/// The metadata an export of the model directory `dir` with `opts` would
/// carry, from its config and card alone: no weights are read, nothing is
/// exported.
pub fn metadata_of_dir(dir: &Path, opts: &ExportOptions) -> Result<ExportMetadata, ExportError> {
    opts.check()?;
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    check_architecture(&config)?;
    let trained = TrainedModel::load(dir)?;
    Ok(metadata_of(&config, &trained, opts))
}

/// The input size the graph is written for: what the preprocessing
/// produces, else the checkpoint's square size.
fn input_size(config: &ModelConfig, trained: &TrainedModel) -> (i64, i64) {
    let side = config.image_size();
    trained
        .pipeline
        .output_size()
        .map_or((side, side), |(h, w)| (i64::from(h), i64::from(w)))
}

/// What the file's `metadata_props` and the sidecar say about it.
fn metadata_of(
    config: &ModelConfig,
    trained: &TrainedModel,
    opts: &ExportOptions,
) -> ExportMetadata {
    let (h, w) = input_size(config, trained);
    let batch = (!opts.dynamic_batch).then_some(1);
    let input_shape = [batch, Some(config.num_channels()), Some(h), Some(w)];
    let output_shape = [batch, Some(config.labels().len() as i64)];
    ExportMetadata {
        format: metadata::FORMAT.into(),
        model_type: config.model_type().into(),
        task: trained.task,
        labels: trained.labels.clone(),
        thresholds: trained.thresholds.clone(),
        temperatures: trained.calibration().map(|c| c.temperatures.clone()),
        input: TensorSpec {
            name: "pixel_values".into(),
            shape: input_shape.to_vec(),
        },
        outputs: ["logits", "probabilities"]
            .map(|name| TensorSpec {
                name: name.into(),
                shape: output_shape.to_vec(),
            })
            .to_vec(),
        probabilities: match trained.task {
            Task::MultiClass => "softmax",
            Task::MultiLabel => "sigmoid",
        }
        .into(),
        preprocessing: trained.pipeline.spec(),
        opset: opts.opset,
        precision: opts.precision.name().into(),
        producer: format!("vitrine {}", env!("CARGO_PKG_VERSION")),
    }
}

/// Writes `model` as ONNX: input `pixel_values` `[N, C, H, W]` float32 at
/// the size its preprocessing produces, outputs `logits` and
/// `probabilities` `[N, labels]` float32.
pub fn export(
    model: &Model,
    trained: &TrainedModel,
    opts: &ExportOptions,
) -> Result<Exported, ExportError> {
    opts.check()?;
    check_architecture(&model.config)?;
    let (h, w) = input_size(&model.config, trained);
    let metadata = metadata_of(&model.config, trained, opts);

    let weights = ops::Weights::new(model.vs.variables());
    let mut g = Graph::new(opts.opset, opts.precision);
    let mut pixels = "pixel_values".to_string();
    if opts.precision == Precision::Fp16 {
        pixels = g.node(
            "Cast",
            &[&pixels],
            vec![graph::attr_int("to", DataType::Float16 as i64)],
        );
    }
    let logits = tch::no_grad(|| -> Result<String, ExportError> {
        match &model.config {
            ModelConfig::Vit(c) => transformer::vit(&mut g, &weights, c, &pixels, (h, w)),
            ModelConfig::Dinov2(c) => transformer::dinov2(&mut g, &weights, c, &pixels, (h, w)),
            ModelConfig::ConvNext(c) => cnn::convnext(&mut g, &weights, c, &pixels),
            ModelConfig::ResNet(c) => cnn::resnet(&mut g, &weights, c, &pixels),
            ModelConfig::Swin(c) => swin::swin(&mut g, &weights, c, &pixels, (h, w)),
        }
    })?;
    let to_f32 = graph::attr_int("to", DataType::Float as i64);
    g.node_to("Cast", &[&logits], vec![to_f32], "logits");
    match trained.task {
        Task::MultiClass => {
            g.node_to(
                "Softmax",
                &["logits"],
                vec![graph::attr_int("axis", -1)],
                "probabilities",
            );
        }
        Task::MultiLabel => {
            g.node_to("Sigmoid", &["logits"], vec![], "probabilities");
        }
    }
    if g.weight_bytes() > MAX_BYTES {
        return Err(ExportError::TooLarge(g.weight_bytes()));
    }

    let input_shape = &metadata.input.shape;
    let output_shape = &metadata.outputs[0].shape;
    let graph = g.finish(
        model.config.model_type(),
        vec![value_info("pixel_values", DataType::Float, input_shape)],
        vec![
            value_info("logits", DataType::Float, output_shape),
            value_info("probabilities", DataType::Float, output_shape),
        ],
    );
    let proto = ModelProto {
        ir_version: ir_version(opts.opset),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opts.opset,
        }],
        producer_name: "vitrine".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        metadata_props: metadata.props(),
        ..Default::default()
    };
    Ok(Exported {
        onnx: proto.encode_to_vec(),
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::onnx_proto::*;
    use super::*;

    /// A tiny graph through the builder, encoded and decoded with prost.
    #[test]
    fn a_model_round_trips_through_protobuf() {
        let mut g = Graph::new(17, Precision::Fp32);
        let w = g
            .weight("w", &tch::Tensor::from_slice(&[1.5f32, -2.0]).view([1, 2]))
            .unwrap();
        let y = g.node("MatMul", &["x", &w], vec![graph::attr_int("keepdims", 0)]);
        g.node_to("Identity", &[&y], vec![], "y");
        let graph = g.finish(
            "tiny",
            vec![value_info("x", DataType::Float, &[None, Some(1)])],
            vec![value_info("y", DataType::Float, &[None, Some(2)])],
        );
        let model = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(graph),
            metadata_props: vec![StringStringEntryProto {
                key: "labels".into(),
                value: "[\"a\"]".into(),
            }],
            ..Default::default()
        };
        let bytes = model.encode_to_vec();
        let back = ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, model);
        let graph = back.graph.unwrap();
        let t = &graph.initializer[0];
        assert_eq!(
            (t.dims.clone(), t.data_type),
            (vec![1, 2], DataType::Float as i32)
        );
        let values: Vec<f32> = t
            .raw_data
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(values, [1.5, -2.0]);
        // A zero-valued attribute is still present (the checker wants one value field).
        assert_eq!(graph.node[0].attribute[0].i, Some(0));
        // Field 14 of ModelProto is metadata_props, as in onnx.proto.
        let entry = model.metadata_props[0].encode_to_vec();
        let mut field = vec![14 << 3 | 2, entry.len() as u8];
        field.extend_from_slice(&entry);
        assert!(bytes.windows(field.len()).any(|w| w == field));
    }

    #[test]
    fn fp16_weights_are_half_precision_bits() {
        let t = graph::float_tensor(
            "h",
            &tch::Tensor::from_slice(&[1.0f32, -2.0]),
            Precision::Fp16,
        )
        .unwrap();
        assert_eq!(t.data_type, DataType::Float16 as i32);
        assert_eq!(t.raw_data, [0x00, 0x3c, 0x00, 0xc0]);
    }

    #[test]
    fn refusals_name_what_is_refused() {
        for opset in [0, 16, 22] {
            let opts = ExportOptions {
                opset,
                ..Default::default()
            };
            let err = opts.check().unwrap_err();
            assert_eq!(err.code(), Some("unsupported_opset"));
            assert!(err.to_string().contains(&format!("opset {opset}")), "{err}");
        }
        let err = ExportError::UnsupportedArchitecture("beit".into());
        assert_eq!(err.code(), Some("unsupported_architecture"));
        assert!(err.to_string().contains("`beit`"));
        assert!(
            err.to_string().contains("swin"),
            "lists the supported ones: {err}"
        );
        assert_eq!(ExportError::MissingWeight("x".into()).code(), None);
        assert_eq!(ir_version(17), 8);
        assert_eq!(ir_version(21), 10);
    }
}
