// What the FFI handlers of lstm_ffi.cc and gru_ffi.cc share: buffer types, shape checks, optional
// operands and results (size 0 when absent), and the thread pool XLA lends a call.

#pragma once

#include "cpu_common.h"
#include "xla/ffi/api/ffi.h"

#include <initializer_list>
#include <string>

namespace jlstm_ffi {

namespace ffi = xla::ffi;
namespace nat = jlstm_native;

using F32 = ffi::Buffer<ffi::F32>;
using Pred = ffi::Buffer<ffi::PRED>;
using Out = ffi::ResultBuffer<ffi::F32>;

inline int64_t dim(const F32& a, size_t i) { return i < a.dimensions().size() ? a.dimensions()[i] : -1; }

inline bool has(const F32& a, std::initializer_list<int64_t> shape) {
  auto d = a.dimensions();
  if (d.size() != shape.size()) return false;
  size_t i = 0;
  for (int64_t s : shape) if (d[i++] != s) return false;
  return true;
}

inline const uint8_t* optional_mask(const Pred& m, int64_t T, int64_t B) {
  if (m.element_count() == 0) return nullptr;
  if (static_cast<int64_t>(m.element_count()) != T * B) return nullptr;
  return reinterpret_cast<const uint8_t*>(m.typed_data());
}

inline bool mask_ok(const Pred& m, int64_t T, int64_t B) {
  return m.element_count() == 0 || static_cast<int64_t>(m.element_count()) == T * B;
}

// An invalid-argument error that names the kernel ("LSTM", "GRU") and what did not match.
inline ffi::Error invalid(const char* kernel, const std::string& what) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, std::string("jlstm native ") + kernel + ": " + what);
}

inline float* optional_out(Out& o) { return o->element_count() == 0 ? nullptr : o->typed_data(); }

// The helpers of a call run on XLA's intra-op thread pool (see cpu_common.h: run_team).
struct PoolSpawn {
  ffi::ThreadPool& pool;
  int threads() const {
    const int64_t n = pool.num_threads();
    return n > 0 ? static_cast<int>(n) : 1;
  }
  nat::Spawn spawn() const {
    ffi::ThreadPool* p = &pool;
    return [p](nat::Task task) { p->Schedule(std::move(task)); };
  }
};

}  // namespace jlstm_ffi
