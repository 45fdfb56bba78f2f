//! ResNet of `transformers` (`ResNetModel`, `ResNetForImageClassification`),
//! written in tch `nn`.
//!
//! Variable paths are spelled as in the Hugging Face checkpoints
//! (`resnet.embedder.embedder.convolution.weight`,
//! `resnet.embedder.embedder.normalization.running_mean`,
//! `resnet.encoder.stages.0.layers.0.shortcut.convolution.weight`,
//! `resnet.encoder.stages.0.layers.0.layer.2.normalization.num_batches_tracked`,
//! `classifier.1.weight`: the head is `Sequential(Flatten, Linear)`).
//! Reference: `transformers/models/resnet/modeling_resnet.py`.
//!
//! Stem: 7x7 stride-2 convolution to `embedding_size`, batch norm,
//! `hidden_act`, 3x3 stride-2 max pool. Stage `s` has `depths[s]` blocks
//! (basic or bottleneck), the first one striding (2, except stage 0 when
//! `downsample_in_first_stage` is false) and projecting its shortcut when
//! the shape changes. Features: the global average of the last stage.
//!
//! Batch norm follows torch: batch statistics and running-statistics
//! updates in training, running statistics in eval; frozen parts
//! ([`ImageClassifier::set_trainable_parts`]) always run as in eval.
//!
//! Optimiser groups: embedder 0, stage `s` `s + 1`, classifier `S + 2`
//! (`S` stages; `S + 1` is unused: ResNet has no final norm).

use std::cell::Cell;

use tch::nn::{self, Module};
use tch::Tensor;

use super::batch_norm::BatchNorm2d;
use super::config::{Activation, ResNetConfig, ResNetLayerType};
use super::layers::follow_kind;
use super::{ImageClassifier, ParamGroup, Trainable, Unit};

/// `ResNetConvLayer`: convolution (no bias, "same" padding), batch norm,
/// optional activation, under `convolution` / `normalization`. Also the
/// shortcut projection (`ResNetShortCut`: 1x1, no activation).
#[derive(Debug)]
struct ConvLayer {
    convolution: nn::Conv2D,
    normalization: BatchNorm2d,
    act: Option<Activation>,
}

impl ConvLayer {
    fn new(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        k: i64,
        stride: i64,
        act: Option<Activation>,
    ) -> Self {
        // `transformers` initialises convolutions with kaiming_normal_(fan_out, relu).
        let cfg = nn::ConvConfig {
            stride,
            padding: k / 2,
            bias: false,
            ws_init: nn::Init::Kaiming {
                dist: nn::init::NormalOrUniform::Normal,
                fan: nn::init::FanInOut::FanOut,
                non_linearity: nn::init::NonLinearity::ReLU,
            },
            ..Default::default()
        };
        Self {
            convolution: nn::conv2d(&p / "convolution", c_in, c_out, k, cfg),
            normalization: BatchNorm2d::new(&p / "normalization", c_out),
            act,
        }
    }

    fn forward(&self, xs: &Tensor, bn_train: bool) -> Tensor {
        let h = self
            .normalization
            .forward(&self.convolution.forward(xs), bn_train);
        match self.act {
            Some(act) => act.apply(&h),
            None => h,
        }
    }
}

/// One residual block (`resnet.encoder.stages.{s}.layers.{b}`): `layer.{i}`
/// convolutions, `shortcut` when the shape changes, then `hidden_act`.
#[derive(Debug)]
pub struct ResNetLayer {
    shortcut: Option<ConvLayer>,
    layer: Vec<ConvLayer>,
    act: Activation,
}

impl ResNetLayer {
    fn new(p: nn::Path, c: &ResNetConfig, c_in: i64, c_out: i64, stride: i64) -> Self {
        let shortcut = (c_in != c_out || stride != 1)
            .then(|| ConvLayer::new(&p / "shortcut", c_in, c_out, 1, stride, None));
        let l = &p / "layer";
        // The convolutions inside a block use ReLU whatever `hidden_act` says.
        let relu = Some(Activation::Relu);
        let layer = match c.layer_type {
            ResNetLayerType::Basic => vec![
                ConvLayer::new(&l / 0, c_in, c_out, 3, stride, relu),
                ConvLayer::new(&l / 1, c_out, c_out, 3, 1, None),
            ],
            ResNetLayerType::Bottleneck => {
                let reduced = c_out / 4;
                let (s1, s2) = if c.downsample_in_bottleneck {
                    (stride, 1)
                } else {
                    (1, stride)
                };
                vec![
                    ConvLayer::new(&l / 0, c_in, reduced, 1, s1, relu),
                    ConvLayer::new(&l / 1, reduced, reduced, 3, s2, relu),
                    ConvLayer::new(&l / 2, reduced, c_out, 1, 1, None),
                ]
            }
        };
        Self {
            shortcut,
            layer,
            act: c.hidden_act,
        }
    }

    fn forward(&self, xs: &Tensor, bn_train: bool) -> Tensor {
        let mut h = xs.shallow_clone();
        for conv in &self.layer {
            h = conv.forward(&h, bn_train);
        }
        let residual = match &self.shortcut {
            Some(s) => s.forward(xs, bn_train),
            None => xs.shallow_clone(),
        };
        self.act.apply(&(h + residual))
    }
}

/// The backbone (`resnet`): stem (`embedder`), stages, average pool.
#[derive(Debug)]
pub struct ResNetModel {
    embedder: ConvLayer,
    /// Stage `s`, block `b`.
    pub stages: Vec<Vec<ResNetLayer>>,
}

impl ResNetModel {
    /// Builds `ResNetModel` under `p` (normally `root / "resnet"`), setting
    /// the optimiser group of each part.
    pub fn new(p: nn::Path, c: &ResNetConfig) -> Self {
        let embedder = ConvLayer::new(
            &p.set_group(0) / "embedder" / "embedder",
            c.num_channels,
            c.embedding_size,
            7,
            2,
            Some(c.hidden_act),
        );
        let enc = &p / "encoder" / "stages";
        let mut c_in = c.embedding_size;
        let stages = c
            .hidden_sizes
            .iter()
            .zip(&c.depths)
            .enumerate()
            .map(|(s, (&c_out, &depth))| {
                let stage = (&enc / s).set_group(s + 1) / "layers";
                let stride = if s > 0 || c.downsample_in_first_stage {
                    2
                } else {
                    1
                };
                let blocks = (0..depth as usize)
                    .map(|b| {
                        let (i, st) = if b == 0 { (c_in, stride) } else { (c_out, 1) };
                        ResNetLayer::new(&stage / b, c, i, c_out, st)
                    })
                    .collect();
                c_in = c_out;
                blocks
            })
            .collect();
        Self { embedder, stages }
    }

    /// `[B, hidden_sizes[-1], H', W']`: the last stage's output. Batch norm
    /// uses batch statistics (and updates the running ones) where
    /// `bn_train(stage)` says so; the stem is stage `None`.
    pub fn last_hidden_state(
        &self,
        pixel_values: &Tensor,
        bn_train: impl Fn(Option<usize>) -> bool,
    ) -> Tensor {
        let mut xs = self.stem(pixel_values, bn_train(None));
        for (s, stage) in self.stages.iter().enumerate() {
            let train = bn_train(Some(s));
            for layer in stage {
                xs = layer.forward(&xs, train);
            }
        }
        xs
    }

    /// The embedder: convolution, batch norm, activation, max pool.
    fn stem(&self, pixel_values: &Tensor, bn_train: bool) -> Tensor {
        self.embedder.forward(pixel_values, bn_train).max_pool2d(
            [3, 3],
            [2, 2],
            [1, 1],
            [1, 1],
            false,
        )
    }

    /// `[B, hidden_sizes[-1]]`: the spatial average (`pooler_output`, flattened).
    pub fn pooled(&self, last_hidden_state: &Tensor) -> Tensor {
        last_hidden_state.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}

/// `ResNetForImageClassification`: a linear classifier (`classifier.1`) on
/// the pooled features.
#[derive(Debug)]
pub struct ResNetForImageClassification {
    pub resnet: ResNetModel,
    pub classifier: nn::Linear,
    /// See [`ImageClassifier::set_trainable_parts`].
    trained_parts: Cell<Trainable>,
}

impl ResNetForImageClassification {
    /// Whether the batch norms of `stage` (`None`: the stem) normalise with
    /// batch statistics and update the running ones: in training, for the
    /// parts that train.
    fn bn_train(&self, stage: Option<usize>, train: bool) -> bool {
        let part = stage.map_or(ParamGroup::Embeddings, ParamGroup::Layer);
        train && self.trained_parts.get().includes(part, self.num_layers())
    }

    /// Builds the network under `root` with a head of `num_labels` outputs,
    /// initialised as torch's `nn.Linear` (which `transformers` copies for
    /// ResNet): kaiming_uniform(a = sqrt(5)) weight, uniform(+-1/sqrt(fan_in)) bias.
    pub fn new(root: &nn::Path, c: &ResNetConfig, num_labels: i64) -> Self {
        let resnet = ResNetModel::new(root / "resnet", c);
        let head = root.set_group(c.depths.len() + 2);
        let linear = nn::LinearConfig {
            ws_init: nn::Init::Kaiming {
                dist: nn::init::NormalOrUniform::Uniform,
                fan: nn::init::FanInOut::FanIn,
                non_linearity: nn::init::NonLinearity::ExplicitGain((1.0f64 / 3.0).sqrt()),
            },
            ..Default::default()
        };
        let classifier = nn::linear(
            &head / "classifier" / 1,
            *c.hidden_sizes
                .last()
                .expect("validated: one stage at least"),
            num_labels,
            linear,
        );
        Self {
            resnet,
            classifier,
            trained_parts: Cell::new(Trainable::All),
        }
    }
}

impl ImageClassifier for ResNetForImageClassification {
    /// `[B, hidden_sizes[-1]]`: the average of the last stage.
    fn features(&self, pixel_values: &Tensor, train: bool) -> Tensor {
        // Inputs follow the weights' dtype, as for the transformers.
        let pixel_values = follow_kind(pixel_values, &self.resnet.embedder.convolution.ws);
        let h = self
            .resnet
            .last_hidden_state(&pixel_values, |s| self.bn_train(s, train));
        self.resnet.pooled(&h)
    }

    fn chain(&self, train: bool) -> Vec<Unit<'_>> {
        let m = &self.resnet;
        let mut units: Vec<Unit<'_>> = vec![Box::new(move |x: &Tensor| {
            m.stem(
                &follow_kind(x, &m.embedder.convolution.ws),
                self.bn_train(None, train),
            )
        })];
        for (s, stage) in m.stages.iter().enumerate() {
            units.push(Box::new(move |x: &Tensor| {
                let update = self.bn_train(Some(s), train);
                stage
                    .iter()
                    .fold(x.shallow_clone(), |xs, layer| layer.forward(&xs, update))
            }));
        }
        units.push(Box::new(move |h: &Tensor| self.head(&m.pooled(h))));
        units
    }

    fn head(&self, features: &Tensor) -> Tensor {
        self.classifier.forward(features)
    }

    fn num_layers(&self) -> usize {
        self.resnet.stages.len()
    }

    fn cam_cut(&self) -> Option<(Unit<'_>, Unit<'_>)> {
        super::cut_before_head(self.chain(false))
    }

    fn set_trainable_parts(&self, which: Trainable) {
        self.trained_parts.set(which);
    }
}
