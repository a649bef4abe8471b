// XLA FFI handlers for the loops of lstm_cpu.h: jlstm/kernels/native_lstm.py compiles this file
// against jaxlib's headers (jax.ffi.include_dir()) and registers the three symbols below for CPU.
//
// Shapes are checked again here (the Python side checks them first), so a wrong call fails with
// an error instead of reading out of bounds. Masks and resets are PRED arrays of shape [T, B], or
// of size 0 when absent; so are the peepholes w_c ([3, H] diagonal, [H, 3H] full) and the optional
// results (hs, cs and the six coefficients).

#include "ffi_common.h"
#include "lstm_cpu.h"

namespace ffi = xla::ffi;
namespace nat = jlstm_native;
using namespace jlstm_ffi;  // NOLINT: the shared helpers of ffi_common.h

namespace {

ffi::Error Forward(ffi::ThreadPool pool, F32 x, F32 wx, F32 wh, F32 b, F32 wc, F32 h0, F32 c0, Pred m, Pred r, Out hT,
                   Out cT, Out ys, Out hs, Out cs, Out P, Out Qi, Out Qf, Out Qg, Out Qo, Out F) {
  const int64_t T = dim(x, 0), B = dim(x, 1), H = dim(h0, 1);
  const bool projected = wx.element_count() == 0 && dim(x, 2) != 0;  // x is x W_x, [T, B, 4H]
  const int64_t I = projected ? 0 : dim(x, 2);
  if (x.dimensions().size() != 3 || H % nat::VW != 0 || (projected ? dim(x, 2) != 4 * H : !has(wx, {I, 4 * H})) ||
      !has(wh, {H, 4 * H}) || !has(b, {4 * H}) ||
      (wc.element_count() != 0 && !has(wc, {3, H}) && !has(wc, {H, 3 * H})) || !has(h0, {B, H}) ||
      !has(c0, {B, H}) || !mask_ok(m, T, B) || !mask_ok(r, T, B))
    return invalid("LSTM", "forward: shapes do not match x [T, B, I], w_x [I, 4H] (or x W_x [T, B, 4H] with an empty "
                   "w_x), w_h [H, 4H], b [4H], w_c [3, H] (diagonal peepholes), [H, 3H] (full) or empty, h0 and c0 "
                   "[B, H] with H a multiple of 8");
  const size_t seq = static_cast<size_t>(T * B * H);
  float* coef[6] = {optional_out(P), optional_out(Qi), optional_out(Qf), optional_out(Qg), optional_out(Qo),
                    optional_out(F)};
  const bool save = coef[0] != nullptr;
  for (int k = 0; k < 6; ++k)
    if ((coef[k] != nullptr) != save || (save && (k == 0 ? P : k == 1 ? Qi : k == 2 ? Qf : k == 3 ? Qg
                                                  : k == 4 ? Qo : F)->element_count() != seq))
      return invalid("LSTM", "forward: the six coefficient results must all be [T, B, H] or all empty");
  if ((hs->element_count() != 0 && hs->element_count() != seq) || (cs->element_count() != 0 && cs->element_count() != seq))
    return invalid("LSTM", "forward: hs and cs must be [T, B, H] or empty");
  nat::ForwardArgs a{static_cast<int>(T), static_cast<int>(B), static_cast<int>(I), static_cast<int>(H),
                     x.typed_data(), wx.typed_data(), wh.typed_data(), b.typed_data(), h0.typed_data(),
                     c0.typed_data(), has(wc, {3, H}) ? wc.typed_data() : nullptr,
                     has(wc, {H, 3 * H}) ? wc.typed_data() : nullptr, optional_mask(m, T, B), optional_mask(r, T, B),
                     hT->typed_data(),
                     cT->typed_data(), ys->typed_data(), optional_out(hs), optional_out(cs),
                     coef[0], coef[1], coef[2], coef[3], coef[4], coef[5]};
  a.projected = projected;
  if (T > 0) {
    const PoolSpawn ps{pool};
    nat::forward(a, ps.threads(), ps.spawn());
  } else {
    std::memcpy(a.hT, a.h0, sizeof(float) * B * H);
    std::memcpy(a.cT, a.c0, sizeof(float) * B * H);
  }
  return ffi::Error::Success();
}

bool coefs_ok(const F32& P, const F32& Qi, const F32& Qf, const F32& Qg, const F32& Qo, const F32& F,
              int64_t T, int64_t B, int64_t H) {
  for (const F32* c : {&P, &Qi, &Qf, &Qg, &Qo, &F})
    if (!has(*c, {T, B, H})) return false;
  return true;
}

ffi::Error Tangent(ffi::ThreadPool pool, F32 drive, F32 P, F32 Qi, F32 Qf, F32 Qg, F32 Qo, F32 F, Pred m, Pred r, F32 wh, F32 dh0,
                   F32 dc0, Out dhT, Out dcT, Out dys) {
  const int64_t T = dim(drive, 0), B = dim(drive, 1), H = dim(dh0, 1);
  if (H % nat::VW != 0 || !has(drive, {T, B, 4 * H}) || !coefs_ok(P, Qi, Qf, Qg, Qo, F, T, B, H) ||
      !(has(wh, {H, 4 * H}) || has(wh, {2 * H, 4 * H})) || !has(dh0, {B, H}) || !has(dc0, {B, H}) ||
      !mask_ok(m, T, B) || !mask_ok(r, T, B))
    return invalid("LSTM", "tangent: shapes do not match drive [T, B, 4H], coefficients [T, B, H], w_h [H, 4H] "
                   "(or [W_h; W_c] [2H, 4H]), dh0 and dc0 [B, H]");
  nat::TangentArgs a{static_cast<int>(T), static_cast<int>(B), static_cast<int>(H), static_cast<int>(dim(wh, 0)),
                     drive.typed_data(),
                     {P.typed_data(), Qi.typed_data(), Qf.typed_data(), Qg.typed_data(), Qo.typed_data(),
                      F.typed_data()},
                     optional_mask(m, T, B), optional_mask(r, T, B), wh.typed_data(), dh0.typed_data(),
                     dc0.typed_data(), dhT->typed_data(), dcT->typed_data(), dys->typed_data()};
  if (T > 0) {
    const PoolSpawn ps{pool};
    nat::tangent(a, ps.threads(), ps.spawn());
  } else {
    std::memcpy(a.dhT, a.dh0, sizeof(float) * B * H);
    std::memcpy(a.dcT, a.dc0, sizeof(float) * B * H);
  }
  return ffi::Error::Success();
}

ffi::Error Adjoint(ffi::ThreadPool pool, F32 g_dys, F32 g_dhT, F32 g_dcT, F32 P, F32 Qi, F32 Qf, F32 Qg, F32 Qo, F32 F, Pred m, Pred r,
                   F32 wh, Out g_drive, Out g_dh0, Out g_dc0) {
  const int64_t T = dim(g_dys, 0), B = dim(g_dys, 1), H = dim(g_dys, 2);
  if (H % nat::VW != 0 || !has(g_dys, {T, B, H}) || !has(g_dhT, {B, H}) || !has(g_dcT, {B, H}) ||
      !coefs_ok(P, Qi, Qf, Qg, Qo, F, T, B, H) || !(has(wh, {H, 4 * H}) || has(wh, {2 * H, 4 * H})) ||
      !mask_ok(m, T, B) || !mask_ok(r, T, B))
    return invalid("LSTM", "adjoint: shapes do not match cotangents [T, B, H] and [B, H], coefficients [T, B, H], "
                   "w_h [H, 4H] (or [W_h; W_c] [2H, 4H])");
  nat::AdjointArgs a{static_cast<int>(T), static_cast<int>(B), static_cast<int>(H), static_cast<int>(dim(wh, 0)),
                     g_dys.typed_data(),
                     g_dhT.typed_data(), g_dcT.typed_data(),
                     {P.typed_data(), Qi.typed_data(), Qf.typed_data(), Qg.typed_data(), Qo.typed_data(),
                      F.typed_data()},
                     optional_mask(m, T, B), optional_mask(r, T, B), wh.typed_data(), g_drive->typed_data(),
                     g_dh0->typed_data(), g_dc0->typed_data()};
  if (T > 0) {
    const PoolSpawn ps{pool};
    nat::adjoint(a, ps.threads(), ps.spawn());
  } else {
    std::memcpy(a.g_dh0, a.g_dhT, sizeof(float) * B * H);
    std::memcpy(a.g_dc0, a.g_dcT, sizeof(float) * B * H);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JlstmLstmForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<Pred>().Arg<Pred>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JlstmLstmTangent, Tangent,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<Pred>().Arg<Pred>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JlstmLstmAdjoint, Adjoint,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<Pred>().Arg<Pred>()
                                  .Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>());

// The vector width the kernels were built with (H must be a multiple of it).
extern "C" int JlstmLstmVectorWidth() { return nat::VW; }
