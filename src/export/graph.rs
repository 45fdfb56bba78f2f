//! Building an ONNX graph: nodes appended in topological order, weights as
//! initializers in the graph's precision, and small constructors for
//! attributes. The layers every architecture shares are in [`super::ops`].

use tch::{Kind, Tensor};

use super::error::ExportError;
use super::onnx_proto::{
    tensor_shape_proto::{dimension, Dimension},
    type_proto, AttributeProto, AttributeType, DataType, GraphProto, NodeProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The element type of the weights and of the computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    Fp16,
}

impl Precision {
    pub fn data_type(self) -> DataType {
        match self {
            Self::Fp32 => DataType::Float,
            Self::Fp16 => DataType::Float16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Fp16 => "fp16",
        }
    }
}

/// A graph under construction.
pub struct Graph {
    pub opset: i64,
    pub precision: Precision,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    next: usize,
}

impl Graph {
    pub fn new(opset: i64, precision: Precision) -> Self {
        Self {
            opset,
            precision,
            nodes: Vec::new(),
            initializers: Vec::new(),
            next: 0,
        }
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{hint}_{}", self.next)
    }

    /// Appends `op(inputs)` with one output, whose name it returns.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.node_n(op, inputs, attrs, 1).remove(0)
    }

    /// Appends `op(inputs)` with `outputs` outputs.
    pub fn node_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        outputs: usize,
    ) -> Vec<String> {
        let name = self.fresh(op);
        let output: Vec<String> = (0..outputs).map(|i| format!("{name}:{i}")).collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: output.clone(),
            name,
            op_type: op.to_string(),
            attribute: attrs,
            ..Default::default()
        });
        output
    }

    /// Appends `op(inputs)` writing the graph value `output` (a graph output).
    pub fn node_to(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>, output: &str) {
        let name = self.fresh(op);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name,
            op_type: op.to_string(),
            attribute: attrs,
            ..Default::default()
        });
    }

    /// A float constant in the graph's precision, named `name` (a
    /// checkpoint variable's name where it is one), from a tensor of any
    /// float kind on any device.
    pub fn weight(&mut self, name: &str, t: &Tensor) -> Result<String, ExportError> {
        let tensor = float_tensor(name, t, self.precision)?;
        self.initializers.push(tensor);
        Ok(name.to_string())
    }

    /// A float constant computed at export time (no checkpoint name).
    pub fn constant(&mut self, hint: &str, t: &Tensor) -> Result<String, ExportError> {
        let name = self.fresh(hint);
        self.weight(&name, t)
    }

    /// A 0-d float constant in the graph's precision.
    pub fn scalar(&mut self, v: f64) -> String {
        let name = self.fresh("const");
        let t = Tensor::from(v as f32);
        self.initializers
            .push(float_tensor(&name, &t, self.precision).expect("a scalar converts"));
        name
    }

    /// A 1-d int64 constant (shapes, axes, indices).
    pub fn ints(&mut self, values: &[i64]) -> String {
        let name = self.fresh("ints");
        self.initializers.push(TensorProto {
            dims: vec![values.len() as i64],
            data_type: DataType::Int64 as i32,
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name
    }

    /// A 0-d int64 constant (a `Gather` index that drops the axis).
    pub fn int_scalar(&mut self, v: i64) -> String {
        let name = self.fresh("int");
        self.initializers.push(TensorProto {
            dims: vec![],
            data_type: DataType::Int64 as i32,
            name: name.clone(),
            raw_data: v.to_le_bytes().to_vec(),
        });
        name
    }

    /// Bytes of weights so far (the 2 GiB protobuf limit applies to the file).
    pub fn weight_bytes(&self) -> usize {
        self.initializers.iter().map(|t| t.raw_data.len()).sum()
    }

    pub fn finish(
        self,
        name: &str,
        inputs: Vec<ValueInfoProto>,
        outputs: Vec<ValueInfoProto>,
    ) -> GraphProto {
        GraphProto {
            node: self.nodes,
            name: name.to_string(),
            initializer: self.initializers,
            input: inputs,
            output: outputs,
            ..Default::default()
        }
    }
}

/// A `TensorProto` of `t` in `precision`, little-endian raw data.
pub fn float_tensor(
    name: &str,
    t: &Tensor,
    precision: Precision,
) -> Result<TensorProto, ExportError> {
    let t = t.detach().to_device(tch::Device::Cpu).contiguous();
    let dims = t.size();
    let flat = t.flatten(0, -1);
    let raw_data: Vec<u8> = match precision {
        Precision::Fp32 => Vec::<f32>::try_from(flat.to_kind(Kind::Float))
            .map_err(|e| ExportError::Tensor(format!("{name}: {e}")))?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        Precision::Fp16 => Vec::<i16>::try_from(flat.to_kind(Kind::Half).view_dtype(Kind::Int16))
            .map_err(|e| ExportError::Tensor(format!("{name}: {e}")))?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    };
    Ok(TensorProto {
        dims,
        data_type: precision.data_type() as i32,
        name: name.to_string(),
        raw_data,
    })
}

/// A graph input or output: a tensor of `elem` with `dims`, where `None`
/// is the symbolic batch axis `batch`.
pub fn value_info(name: &str, elem: DataType, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => dimension::Value::DimValue(*v),
                None => dimension::Value::DimParam("batch".into()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: Some(v),
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f: Some(v),
        ..Default::default()
    }
}
