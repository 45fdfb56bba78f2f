// The few libtorch (ATen) calls vitrine needs that tch does not expose, or
// exposes only through deprecated functions that print a warning per call.
//
// Conventions (the Rust side is src/torchx/mod.rs):
// - A tensor handle is what tch calls `*mut C_tensor`: an `at::Tensor*`
//   allocated with `new` (tch frees it with `delete`).
// - Every function returns NULL on success, or an error message allocated
//   with `malloc` that the caller releases with `vx_free`. No C++ exception
//   ever crosses into Rust.
// - Devices and dtypes travel as small integer codes of our own (see
//   `device_type` and `scalar_type` below), so nothing depends on the
//   numbering of c10's enums.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/Exception.h>

#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <stdexcept>

#include "guarded.h"
#include <string>
#include <vector>

typedef at::Tensor *tensor;

namespace {

using vx::error_copy;

template <typename F> char *guarded(F body) {
  return vx::guarded(body, "unknown C++ exception in the vitrine libtorch shim");
}

// 0 = CPU, 1 = CUDA.
at::DeviceType device_type(int32_t code) {
  switch (code) {
  case 0:
    return at::kCPU;
  case 1:
    return at::kCUDA;
  default:
    throw std::invalid_argument("unknown device type code " + std::to_string(code));
  }
}

// 0 = float32, 1 = float16, 2 = bfloat16.
at::ScalarType scalar_type(int32_t code) {
  switch (code) {
  case 0:
    return at::kFloat;
  case 1:
    return at::kHalf;
  case 2:
    return at::kBFloat16;
  default:
    throw std::invalid_argument("unknown dtype code " + std::to_string(code));
  }
}

int32_t scalar_type_code(at::ScalarType t) {
  switch (t) {
  case at::kFloat:
    return 0;
  case at::kHalf:
    return 1;
  case at::kBFloat16:
    return 2;
  default:
    return -1;
  }
}

std::vector<at::Tensor> list(const tensor *ts, size_t n) {
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

std::optional<at::Tensor> optional(tensor t) {
  if (t == nullptr) {
    return std::nullopt;
  }
  return *t;
}

} // namespace

extern "C" {

void vx_free(char *p) { std::free(p); }

// --- autocast (all of it thread-local in ATen) -----------------------------

char *vx_autocast_get(int32_t device, bool *enabled, int32_t *dtype) {
  return guarded([&] {
    auto t = device_type(device);
    *enabled = at::autocast::is_autocast_enabled(t);
    *dtype = scalar_type_code(at::autocast::get_autocast_dtype(t));
  });
}

char *vx_autocast_set(int32_t device, bool enabled, int32_t dtype) {
  return guarded([&] {
    auto t = device_type(device);
    at::autocast::set_autocast_dtype(t, scalar_type(dtype));
    at::autocast::set_autocast_enabled(t, enabled);
  });
}

char *vx_autocast_increment_nesting(int64_t *depth) {
  return guarded([&] { *depth = at::autocast::increment_nesting(); });
}

char *vx_autocast_decrement_nesting(int64_t *depth) {
  return guarded([&] { *depth = at::autocast::decrement_nesting(); });
}

char *vx_autocast_clear_cache() {
  return guarded([&] { at::autocast::clear_cache(); });
}

// --- TF32 (process-wide in ATen) ------------------------------------------

// `setAllowTF32CuBLAS` keeps the legacy matmul precision and the newer
// per-backend setting in step; ATen refuses to run a matmul when the two
// disagree (its "mix of the legacy and new APIs" check).
char *vx_tf32_set(bool matmul, bool cudnn) {
  return guarded([&] {
    auto &ctx = at::globalContext();
    ctx.setAllowTF32CuBLAS(matmul);
    ctx.setAllowTF32CuDNN(cudnn);
  });
}

char *vx_tf32_get(bool *matmul, bool *cudnn) {
  return guarded([&] {
    auto &ctx = at::globalContext();
    *matmul = ctx.float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL) ==
              at::Float32Precision::TF32;
    *cudnn = ctx.float32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV) ==
             at::Float32Precision::TF32;
  });
}

// --- optimiser kernels -----------------------------------------------------

char *vx_fused_adamw(const tensor *params, const tensor *grads, const tensor *exp_avgs,
                     const tensor *exp_avg_sqs, const tensor *state_steps, size_t n, double lr,
                     double beta1, double beta2, double weight_decay, double eps,
                     tensor grad_scale, tensor found_inf) {
  return guarded([&] {
    auto p = list(params, n);
    auto g = list(grads, n);
    auto m = list(exp_avgs, n);
    auto v = list(exp_avg_sqs, n);
    auto s = list(state_steps, n);
    std::vector<at::Tensor> max_exp_avg_sqs; // amsgrad = false
    at::_fused_adamw_(p, g, m, v, max_exp_avg_sqs, s, lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false, optional(grad_scale),
                      optional(found_inf));
  });
}

char *vx_amp_unscale(const tensor *grads, size_t n, tensor found_inf, tensor inv_scale) {
  return guarded([&] {
    auto g = list(grads, n);
    at::_amp_foreach_non_finite_check_and_unscale_(g, *found_inf, *inv_scale);
  });
}

// `out` receives `n` new tensors: the L2 norm of each input.
char *vx_foreach_norm(const tensor *ts, size_t n, tensor *out) {
  return guarded([&] {
    auto norms = at::_foreach_norm(list(ts, n), 2);
    for (size_t i = 0; i < n; i++) {
      out[i] = new at::Tensor(norms[i]);
    }
  });
}

char *vx_foreach_mul_tensor(const tensor *ts, size_t n, tensor factor) {
  return guarded([&] { at::_foreach_mul_(list(ts, n), *factor); });
}

char *vx_foreach_zero(const tensor *ts, size_t n) {
  return guarded([&] { at::_foreach_zero_(list(ts, n)); });
}

char *vx_set_grads_none(const tensor *ts, size_t n) {
  return guarded([&] {
    for (size_t i = 0; i < n; i++) {
      ts[i]->mutable_grad().reset();
    }
  });
}

// --- memory ----------------------------------------------------------------

// A pinned (page-locked) copy of a CPU tensor. Without the deprecated
// `device` argument that tch's `pin_memory(Device)` always passes.
char *vx_pin_memory(tensor t, tensor *out) {
  return guarded([&] { *out = new at::Tensor(t->pin_memory()); });
}

// --- random generators -----------------------------------------------------

// The default generator of the CPU, or of device `index` of another type.
at::Generator default_generator(int32_t device, int32_t index) {
  auto t = device_type(device);
  at::Device d = t == at::kCPU ? at::Device(at::kCPU)
                               : at::Device(t, static_cast<c10::DeviceIndex>(index));
  return at::globalContext().defaultGenerator(d);
}

// Seeds one device's default generator only (`torch.manual_seed` reseeds
// the CPU's and every GPU's).
char *vx_manual_seed(int32_t device, int32_t index, uint64_t seed) {
  return guarded([&] {
    auto gen = default_generator(device, index);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_current_seed(seed);
  });
}

char *vx_current_seed(int32_t device, int32_t index, uint64_t *seed) {
  return guarded([&] {
    auto gen = default_generator(device, index);
    std::lock_guard<std::mutex> lock(gen.mutex());
    *seed = gen.current_seed();
  });
}

// The whole state of one device's default generator (seed and position),
// as a byte tensor: what activation checkpointing saves before a unit's
// forward pass and restores to replay its dropout in the recomputation.
char *vx_rng_get_state(int32_t device, int32_t index, tensor *out) {
  return guarded([&] {
    auto gen = default_generator(device, index);
    std::lock_guard<std::mutex> lock(gen.mutex());
    *out = new at::Tensor(gen.get_state());
  });
}

char *vx_rng_set_state(int32_t device, int32_t index, tensor state) {
  return guarded([&] {
    auto gen = default_generator(device, index);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(*state);
  });
}

// --- device facts ----------------------------------------------------------

// The compute capability of CUDA device `index`, through the CUDA runtime
// that libtorch_cuda already loaded (looked up by name, so no CUDA headers
// or link-time dependency are needed). `major` = -1 when unknown.
char *vx_cuda_capability(int32_t index, int32_t *major, int32_t *minor) {
  return guarded([&] {
    *major = -1;
    *minor = -1;
    if (index < 0 || index >= at::detail::getCUDAHooks().getNumGPUs()) {
      return;
    }
    typedef int (*get_attribute_fn)(int *, int, int);
    auto get = reinterpret_cast<get_attribute_fn>(dlsym(RTLD_DEFAULT, "cudaDeviceGetAttribute"));
    if (get == nullptr) {
      return;
    }
    // cudaDevAttrComputeCapabilityMajor = 75, ...Minor = 76 (stable ABI).
    int a = -1, b = -1;
    if (get(&a, 75, index) == 0 && get(&b, 76, index) == 0) {
      *major = a;
      *minor = b;
    }
  });
}

// Makes a stream from CUDA's pool the current stream of device `index` on
// the calling thread (the current stream is thread-local), so that work
// queued by this thread (an inference engine, a training job) does not wait
// behind another thread's kernels on the default stream. Through c10's
// device-agnostic guard interface: no CUDA headers needed.
char *vx_cuda_use_pool_stream(int32_t index, int64_t *stream_id) {
  return guarded([&] {
    c10::impl::VirtualGuardImpl impl(c10::DeviceType::CUDA);
    c10::Device device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index));
    c10::Stream stream = impl.getStreamFromGlobalPool(device, /*isHighPriority=*/false);
    impl.exchangeStream(stream);
    *stream_id = stream.id();
  });
}

// --- timing events ----------------------------------------------------------

// A timing event of device `index` (c10's device-agnostic `Event`, so no
// CUDA headers), recorded on the calling thread's current stream. The step
// clock of training brackets the GPU's work with two of them: their
// elapsed time is what the GPU spent, not what the host spent queuing it.
char *vx_event_record(int32_t device, int32_t index, void **event) {
  return guarded([&] {
    auto t = device_type(device);
    c10::Device d(t, static_cast<c10::DeviceIndex>(index));
    auto *e = new c10::Event(t, c10::EventFlag::BACKEND_DEFAULT);
    try {
      c10::impl::VirtualGuardImpl impl(t);
      e->record(impl.getStream(d));
    } catch (...) {
      delete e;
      throw;
    }
    *event = e;
  });
}

// Milliseconds between two recorded events, waiting for `end` first.
char *vx_event_elapsed_ms(void *start, void *end, double *ms) {
  return guarded([&] {
    auto *b = static_cast<c10::Event *>(end);
    b->synchronize();
    *ms = static_cast<c10::Event *>(start)->elapsedTime(*b);
  });
}

void vx_event_free(void *event) { delete static_cast<c10::Event *>(event); }

} // extern "C"
