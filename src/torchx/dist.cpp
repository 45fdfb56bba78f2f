// PyTorch's own distributed engine (c10d), as shipped in the pinned wheel,
// for data-parallel training: a TCPStore rendezvous (rank 0 hosts it), a
// Gloo process group (CPU tensors), broadcast, all-reduce, and c10d's
// Reducer, which all-reduces gradients in buckets while the backward pass
// is still running (what DistributedDataParallel uses).
//
// Compiled by build.rs only when the Gloo headers (Debian's libgloo-dev)
// are found; the Rust side (src/torchx/dist.rs) is then built with
// `cfg(vitrine_c10d)`. Same conventions as shim.cpp: handles are pointers
// we allocate, every function returns NULL or a malloc'd error message,
// and no C++ exception crosses into Rust.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "guarded.h"
#include <string>
#include <vector>

typedef at::Tensor *tensor;

namespace {

template <typename F> char *dist_guarded(F body) {
  return vx::guarded(body, "unknown C++ exception in the vitrine c10d shim");
}

std::vector<at::Tensor> dist_list(const tensor *ts, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; i++) {
    if (ts[i] == nullptr) {
      throw std::invalid_argument("null tensor in a tensor list");
    }
    out.push_back(*ts[i]);
  }
  return out;
}

// What a Rust handle to a store or a process group points at.
struct Store {
  c10::intrusive_ptr<c10d::TCPStore> store;
};
// The Reducer wants a `ProcessGroup`, the front that dispatches by device
// type to a backend; here one backend, Gloo, for CPU tensors.
struct Group {
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
};
struct Reducer {
  std::unique_ptr<c10d::Reducer> reducer;
};

c10d::ReduceOp reduce_op(int32_t code) {
  switch (code) {
  case 0:
    return c10d::ReduceOp(c10d::ReduceOp::SUM);
  case 1:
    return c10d::ReduceOp(c10d::ReduceOp::AVG);
  case 2:
    return c10d::ReduceOp(c10d::ReduceOp::MAX);
  default:
    throw std::invalid_argument("unknown reduce op code " + std::to_string(code));
  }
}

} // namespace

extern "C" {

// A TCPStore at host:port. `is_server`: this call hosts it (rank 0); port 0
// then picks a free port, returned in `*bound_port`. Clients wait up to
// `timeout_ms` for the server.
char *vx_dist_store_new(const char *host, uint16_t port, bool is_server, int64_t timeout_ms,
                        void **out, uint16_t *bound_port) {
  return dist_guarded([&] {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server;
    // Ranks join the process group, which is the barrier: the server does
    // not wait for them here (it must return its port first).
    opts.waitWorkers = false;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    *bound_port = store->getPort();
    *out = new Store{store};
  });
}

void vx_dist_store_free(void *store) { delete static_cast<Store *>(store); }

// A Gloo process group of `world` ranks over `store`; this is `rank`.
// Blocks until every rank has joined (or `timeout_ms` passes). `hostname`
// is the address the other ranks reach this one at.
char *vx_dist_gloo_new(void *store, const char *hostname, int32_t rank, int32_t world,
                       int64_t timeout_ms, void **out) {
  return dist_guarded([&] {
    auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(timeout_ms));
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(hostname));
    auto s = static_cast<Store *>(store)->store;
    auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(s, rank, world, opts);
    auto pg = c10::make_intrusive<c10d::ProcessGroup>(s, rank, world);
    pg->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
    pg->setBackend(at::kCPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
    *out = new Group{pg};
  });
}

void vx_dist_group_free(void *group) { delete static_cast<Group *>(group); }

// Aborts the group's pending and future collectives (a rank was lost).
char *vx_dist_group_abort(void *group) {
  return dist_guarded([&] { static_cast<Group *>(group)->pg->abort(); });
}

// Broadcasts each tensor from `root`, in place, and waits.
char *vx_dist_broadcast(void *group, const tensor *ts, size_t n, int32_t root) {
  return dist_guarded([&] {
    auto tensors = dist_list(ts, n);
    auto pg = static_cast<Group *>(group)->pg;
    for (auto &t : tensors) {
      std::vector<at::Tensor> one{t};
      c10d::BroadcastOptions o;
      o.rootRank = root;
      pg->broadcast(one, o)->wait();
    }
  });
}

// All-reduces each tensor in place (0 sum, 1 average, 2 max) and waits.
char *vx_dist_all_reduce(void *group, const tensor *ts, size_t n, int32_t op) {
  return dist_guarded([&] {
    auto tensors = dist_list(ts, n);
    auto pg = static_cast<Group *>(group)->pg;
    for (auto &t : tensors) {
      std::vector<at::Tensor> one{t};
      c10d::AllreduceOptions o;
      o.reduceOp = reduce_op(op);
      pg->allreduce(one, o)->wait();
    }
  });
}

// A barrier over the group.
char *vx_dist_barrier(void *group) {
  return dist_guarded([&] { static_cast<Group *>(group)->pg->barrier()->wait(); });
}

// c10d's Reducer over `params` (leaves that require grad, in the model's
// order), with DistributedDataParallel's bucketing: a first bucket of
// `first_bucket_bytes`, then `bucket_bytes`, the last parameters' bucket
// first (the backward pass produces their gradients first). It hooks each
// parameter's gradient accumulator; after `vx_dist_reducer_prepare`, the
// next backward pass all-reduces (averages) the gradients bucket by bucket
// as they become ready and writes the averages into `.grad` before
// `backward()` returns.
char *vx_dist_reducer_new(void *group, const tensor *params, size_t n, int64_t bucket_bytes,
                          int64_t first_bucket_bytes, void **out, size_t *buckets) {
  return dist_guarded([&] {
    auto ps = dist_list(params, n);
    auto pg = static_cast<Group *>(group)->pg;
    std::vector<size_t> limits{static_cast<size_t>(first_bucket_bytes),
                               static_cast<size_t>(bucket_bytes)};
    std::vector<bool> sparse(n, false);
    auto [indices, per_bucket] = c10d::compute_bucket_assignment_by_size(ps, limits, sparse);
    std::reverse(indices.begin(), indices.end());
    std::reverse(per_bucket.begin(), per_bucket.end());
    std::vector<int64_t> caps(per_bucket.begin(), per_bucket.end());
    std::unordered_map<size_t, std::string> names;
    *buckets = indices.size();
    auto r = std::make_unique<c10d::Reducer>(ps, indices, pg, sparse, bucket_bytes,
                                             /*find_unused_parameters=*/false,
                                             /*gradient_as_bucket_view=*/false, names,
                                             first_bucket_bytes,
                                             /*skip_all_reduce_unused_params=*/false,
                                             /*use_python_reducer=*/false, caps);
    *out = new Reducer{std::move(r)};
  });
}

void vx_dist_reducer_free(void *reducer) { delete static_cast<Reducer *>(reducer); }

// Arms the reducer for the next backward pass (DDP's forward does this):
// on the first call also rebuilds the buckets in the order the gradients
// were ready (a collective: every rank calls it at the same point).
char *vx_dist_reducer_prepare(void *reducer) {
  return dist_guarded([&] {
    auto &r = *static_cast<Reducer *>(reducer)->reducer;
    r.prepare_for_forward();
    r.rebuild_buckets();
    r.prepare_for_backward({});
  });
}

} // extern "C"
