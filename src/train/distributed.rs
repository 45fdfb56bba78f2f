//! Data-parallel training: one job on several ranks of one node, each a
//! thread of its own with its own copy of the model, in one c10d process
//! group (Gloo, `torchx::dist`). What DistributedDataParallel does, with
//! c10d's own pieces:
//! - rank 0 broadcasts the initial (or restored) weights and buffers;
//! - each rank reads a disjoint shard of every epoch's shuffled order
//!   (DistributedSampler: the same seeded order on every rank, padded to a
//!   multiple of the world size); here each global batch of `batch_size`
//!   is cut into `world` contiguous parts, so rank r's batch is exactly the
//!   r-th micro-batch a single rank would run with `micro_batch =
//!   batch_size / world`;
//! - gradients are averaged by c10d's `Reducer`, in buckets that overlap
//!   the backward pass;
//! - buffers (batch-norm statistics) follow rank 0 before every step
//!   (`broadcast_buffers`);
//! - losses are averaged, and evaluation is sharded and its logits
//!   gathered, so loss, metrics and the confusion matrix are the whole
//!   split's on every rank;
//! - a stop (cancel, shutdown, lost lease) is agreed on by all ranks at a
//!   step boundary, so no rank waits in a collective for one that left;
//! - rank 0 alone writes checkpoints, the model and events.
//!
//! Several CUDA devices (NCCL) and several nodes are not built yet: the
//! submit check refuses them by name (`train/devices.rs`).

use std::time::Duration;

use tch::{Kind, Tensor};

use super::config::{JobConfig, MicroBatch};
use super::{Events, StopFlag, TrainError, TrainOutcome, TrainSpec};
use crate::torchx::dist::{GradReducer, ProcessGroup, ReduceOp, Store, BUCKET_BYTES};

/// How long a rank waits for the others in the rendezvous and in any one
/// collective: a rank that failed makes the others fail after this.
pub const COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(300);

/// One rank's membership of the job's process group.
pub struct Ranks {
    group: ProcessGroup,
    reducer: Option<GradReducer>,
}

impl Ranks {
    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    pub fn world(&self) -> usize {
        self.group.world()
    }

    pub fn is_leader(&self) -> bool {
        self.rank() == 0
    }

    fn failed(context: &str) -> impl Fn(crate::torchx::TorchError) -> TrainError + '_ {
        move |e| TrainError::retry(format!("{context} (c10d): {}", e.0))
    }

    /// Copies rank 0's values into every rank's tensors, in one broadcast
    /// per dtype (the tensors flattened into one buffer).
    pub fn broadcast_from_leader(&self, ts: &[Tensor]) -> Result<(), TrainError> {
        tch::no_grad(|| -> Result<(), TrainError> {
            for kind in kinds_of(ts) {
                let same: Vec<&Tensor> = ts.iter().filter(|t| t.kind() == kind).collect();
                let flat =
                    Tensor::cat(&same.iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(), 0);
                self.group
                    .broadcast(std::slice::from_ref(&flat), 0)
                    .map_err(Self::failed("broadcasting from rank 0"))?;
                let mut at = 0;
                for t in same {
                    let n = t.numel() as i64;
                    t.shallow_clone()
                        .copy_(&flat.narrow(0, at, n).reshape(t.size()));
                    at += n;
                }
            }
            Ok(())
        })
    }

    /// Builds the gradient reducer over the trainable parameters (the same
    /// order on every rank).
    pub fn attach_reducer(&mut self, params: &[Tensor]) -> Result<(), TrainError> {
        let reducer = GradReducer::new(&self.group, params, BUCKET_BYTES)
            .map_err(Self::failed("building the gradient reducer"))?;
        tracing::debug!(buckets = reducer.buckets(), "gradient reducer");
        self.reducer = Some(reducer);
        Ok(())
    }

    /// Arms the next backward pass to average its gradients over ranks.
    pub fn arm_backward(&self) -> Result<(), String> {
        match &self.reducer {
            Some(r) => r.prepare().map_err(|e| e.0),
            None => Ok(()),
        }
    }

    /// The mean of a scalar over the ranks.
    pub fn mean(&self, t: &Tensor) -> Result<Tensor, TrainError> {
        let out = t.detach().to_kind(Kind::Float).contiguous().copy();
        self.group
            .all_reduce(std::slice::from_ref(&out), ReduceOp::Avg)
            .map_err(Self::failed("averaging the loss"))?;
        Ok(out)
    }

    /// Whether any rank was asked to stop (all ranks agree).
    pub fn any(&self, local: bool) -> Result<bool, TrainError> {
        let t = Tensor::from_slice(&[local as i32]);
        self.group
            .all_reduce(std::slice::from_ref(&t), ReduceOp::Max)
            .map_err(Self::failed("agreeing on a stop"))?;
        Ok(i32::try_from(&t).unwrap_or(1) != 0)
    }

    /// This rank's positions in an evaluation split of `n` samples: a
    /// contiguous block of `ceil(n / world)`, padded by wrapping around.
    pub fn eval_shard(&self, n: usize) -> Vec<usize> {
        let per = n.div_ceil(self.world());
        (self.rank() * per..(self.rank() + 1) * per)
            .map(|i| i % n.max(1))
            .collect()
    }

    /// Every rank's evaluation rows (from [`Ranks::eval_shard`]) as the
    /// whole split's `n` rows, on every rank: each rank writes its block
    /// into zeros and a sum all-reduce joins them (adding zeros is exact).
    pub fn gather_rows(&self, local: &Tensor, n: usize) -> Result<Tensor, TrainError> {
        let per = local.size()[0];
        let mut shape = local.size();
        shape[0] = per * self.world() as i64;
        let full = Tensor::zeros(&shape, (Kind::Float, local.device()));
        full.narrow(0, self.rank() as i64 * per, per)
            .copy_(&local.to_kind(Kind::Float));
        self.group
            .all_reduce(std::slice::from_ref(&full), ReduceOp::Sum)
            .map_err(Self::failed("gathering evaluation outputs"))?;
        Ok(full.narrow(0, 0, n as i64))
    }
}

/// `vitrine_training_ranks{device}`: the ranks training now on this node,
/// by the claiming worker's device (a 2-rank CPU job counts 2). Cheap to
/// clone.
#[derive(Clone)]
pub struct RankGauge(prometheus::IntGaugeVec);

impl Default for RankGauge {
    fn default() -> Self {
        Self(
            prometheus::IntGaugeVec::new(
                prometheus::Opts::new(
                    "vitrine_training_ranks",
                    "Data-parallel ranks training now, by the worker's device",
                ),
                &["device"],
            )
            .expect("valid metric"),
        )
    }
}

impl RankGauge {
    /// The gauge registered in `registry` (once per registry).
    pub fn registered(registry: &prometheus::Registry) -> Self {
        let me = Self::default();
        let _ = registry.register(Box::new(me.0.clone()));
        me
    }

    /// Counts `ranks` on `device` until the returned guard is dropped.
    pub fn hold(&self, device: &str, ranks: usize) -> RankHold {
        let g = self.0.with_label_values(&[device]);
        g.add(ranks as i64);
        RankHold(g, ranks as i64)
    }
}

/// Ranks counted in [`RankGauge`] while it lives.
pub struct RankHold(prometheus::IntGauge, i64);

impl Drop for RankHold {
    fn drop(&mut self) {
        self.0.sub(self.1);
    }
}

fn kinds_of(ts: &[Tensor]) -> Vec<Kind> {
    let mut kinds: Vec<Kind> = Vec::new();
    for t in ts {
        if !kinds.contains(&t.kind()) {
            kinds.push(t.kind());
        }
    }
    kinds
}

/// The recipe one rank steps with: its share of the global batch (and of
/// a fixed micro-batch); everything else as the job says.
pub fn local_config(cfg: &JobConfig, ranks: Option<&Ranks>) -> JobConfig {
    let mut local = cfg.clone();
    if let Some(r) = ranks {
        local.batch_size = cfg.batch_size / r.world() as u32;
        if let Some(MicroBatch::Size(n)) = cfg.micro_batch {
            local.micro_batch = Some(MicroBatch::Size(n.min(local.batch_size)));
        }
    }
    local
}

/// This rank's share of an epoch's `order` (the same on every rank): the
/// order padded by wrapping to a multiple of `world`, then each global
/// batch of `world * local_batch` cut into `world` equal contiguous parts,
/// of which this rank keeps part `rank`.
pub fn shard(order: &[usize], rank: usize, world: usize, local_batch: usize) -> Vec<usize> {
    let n = order.len();
    let padded = n.div_ceil(world) * world;
    let global = world * local_batch;
    let mut out = Vec::with_capacity(padded / world);
    let mut start = 0;
    while start < padded {
        let len = global.min(padded - start);
        let part = len / world;
        let from = start + rank * part;
        out.extend((from..from + part).map(|i| order[i % n]));
        start += len;
    }
    out
}

/// Trains `spec`'s job on `world` CPU ranks of this node, each on a thread
/// of its own; returns rank 0's outcome (the one that wrote the model).
/// Ranks rendezvous at a `TCPStore` rank 0 hosts on a free local port.
pub fn run(
    spec: TrainSpec,
    events: Events,
    stop: StopFlag,
    world: usize,
) -> Result<TrainOutcome, TrainError> {
    let store = Store::host("127.0.0.1", 0, COLLECTIVE_TIMEOUT)
        .map_err(|e| TrainError::retry(format!("hosting the rendezvous: {}", e.0)))?;
    let port = store.port();
    tracing::info!(job = %spec.job_id, world, port, "data-parallel training");
    // A failed rank leaves the others waiting in their next collective
    // until COLLECTIVE_TIMEOUT; they then fail too, and the job is retried.
    let mut others = Vec::new();
    for rank in 1..world {
        let (rank_spec, stop) = (follower_spec(&spec), stop.clone());
        others.push(
            std::thread::Builder::new()
                .name(format!("vitrine-rank-{rank}"))
                .spawn(move || {
                    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
                    join(None, port, rank, world)
                        .and_then(|ranks| super::session::run_rank(rank_spec, tx, stop, ranks))
                })
                .map_err(|e| TrainError::retry(format!("spawning rank {rank}: {e}")))?,
        );
    }
    let leader = join(Some(store), port, 0, world)
        .and_then(|ranks| super::session::run_rank(spec, events, stop, ranks));
    let mut first_error = leader.as_ref().err().map(|e| e.to_string());
    for (i, t) in others.into_iter().enumerate() {
        let r = t
            .join()
            .unwrap_or_else(|_| Err(TrainError::retry("a rank's thread panicked")));
        if let (Err(e), None) = (r, &first_error) {
            first_error = Some(format!("rank {}: {e}", i + 1));
        }
    }
    match (leader, first_error) {
        (Ok(outcome), None) => Ok(outcome),
        (Err(e), _) => Err(e),
        (Ok(_), Some(e)) => Err(TrainError::retry(e)),
    }
}

/// Joins the process group: rank 0 with the store it hosts, the others by
/// connecting to it.
fn join(store: Option<Store>, port: u16, rank: usize, world: usize) -> Result<Ranks, TrainError> {
    let err = |e: crate::torchx::TorchError| {
        TrainError::retry(format!("rank {rank} joining the process group: {}", e.0))
    };
    let store = match store {
        Some(s) => s,
        None => Store::connect("127.0.0.1", port, COLLECTIVE_TIMEOUT).map_err(err)?,
    };
    let group =
        ProcessGroup::gloo(&store, "127.0.0.1", rank, world, COLLECTIVE_TIMEOUT).map_err(err)?;
    // The group keeps its own reference to the store.
    Ok(Ranks {
        group,
        reducer: None,
    })
}

/// A follower rank's spec: the same job and inputs, no artefact store
/// (rank 0 uploads), its own scratch for the linear probe's features.
fn follower_spec(spec: &TrainSpec) -> TrainSpec {
    TrainSpec {
        job_id: spec.job_id.clone(),
        config: spec.config.clone(),
        dataset_dir: spec.dataset_dir.clone(),
        base_model_dir: spec.base_model_dir.clone(),
        work_dir: spec.work_dir.clone(),
        device: spec.device,
        artifacts: None,
        decode_budget: spec.decode_budget.clone(),
        input_cache: spec.input_cache.clone(),
        oom_above_micro_batch: spec.oom_above_micro_batch,
    }
}

impl TrainSpec {
    /// Where rank `rank` writes what is its own (rank 0: the work dir).
    pub(super) fn rank_scratch(&self, rank: usize) -> std::path::PathBuf {
        match rank {
            0 => self.work_dir.clone(),
            r => self.work_dir.join(format!("rank-{r}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_disjoint_padded_and_cut_per_global_batch() {
        let order: Vec<usize> = (0..10).map(|i| 9 - i).collect();
        let a = shard(&order, 0, 2, 2);
        let b = shard(&order, 1, 2, 2);
        // Global batches of 4: [9 8 | 7 6], [5 4 | 3 2], [1 | 0].
        assert_eq!(a, vec![9, 8, 5, 4, 1]);
        assert_eq!(b, vec![7, 6, 3, 2, 0]);
        // 7 samples on 2 ranks: padded to 8 with the first sample again.
        let order: Vec<usize> = (0..7).collect();
        let (a, b) = (shard(&order, 0, 2, 4), shard(&order, 1, 2, 4));
        assert_eq!((a.len(), b.len()), (4, 4));
        assert_eq!(a, vec![0, 1, 2, 3]);
        assert_eq!(b, vec![4, 5, 6, 0]);
    }
}
