// The one way the shims (shim.cpp, dist.cpp) hand a C++ failure to Rust:
// a malloc'ed message (freed by `vx_free`), or null for success.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>

namespace vx {

inline char *error_copy(const char *msg) {
  size_t n = std::strlen(msg);
  char *out = static_cast<char *>(std::malloc(n + 1));
  if (out != nullptr) {
    std::memcpy(out, msg, n + 1);
  }
  return out;
}

// Runs `body`, turning any exception into an error message. `unknown`
// names the shim when the exception is not a std::exception.
template <typename F> char *guarded(F body, const char *unknown) {
  try {
    body();
    return nullptr;
  } catch (const c10::Error &e) {
    // Without the C++ backtrace: the message is what callers classify
    // (out of memory, CUDA faults) and show.
    return error_copy(e.what_without_backtrace());
  } catch (const std::exception &e) {
    return error_copy(e.what());
  } catch (...) {
    return error_copy(unknown);
  }
}

} // namespace vx
