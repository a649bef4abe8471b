// XLA FFI handlers for the loops of gru_cpu.h: jlstm/kernels/native_gru.py builds this file into the
// native library beside lstm_ffi.cc and registers the three symbols below for CPU.
//
// Shapes are checked again here (the Python side checks them first), so a wrong call fails with an
// error instead of reading out of bounds. Masks and resets are PRED arrays of shape [T, B], or of size
// 0 when absent; so are the optional results (hs and the five coefficients).

#include "ffi_common.h"
#include "gru_cpu.h"

namespace ffi = xla::ffi;
namespace nat = jlstm_native;
namespace gru = jlstm_native::gru;
using namespace jlstm_ffi;  // NOLINT: the shared helpers of ffi_common.h

namespace {

bool coefs_ok(std::initializer_list<const F32*> coefs, int64_t T, int64_t B, int64_t H) {
  for (const F32* c : coefs)
    if (!has(*c, {T, B, H})) return false;
  return true;
}

ffi::Error Forward(ffi::ThreadPool pool, F32 x, F32 wx, F32 wh, F32 bx, F32 bh, F32 h0, Pred m, Pred r, Out hT, Out ys,
                   Out hs, Out Ar, Out Az, Out An, Out R, Out F) {
  const int64_t T = dim(x, 0), B = dim(x, 1), H = dim(h0, 1);
  const bool projected = wx.element_count() == 0 && dim(x, 2) != 0;  // x is x W_x, [T, B, 3H]
  const int64_t I = projected ? 0 : dim(x, 2);
  if (x.dimensions().size() != 3 || H % nat::VW != 0 || (projected ? dim(x, 2) != 3 * H : !has(wx, {I, 3 * H})) ||
      !has(wh, {H, 3 * H}) || !has(bx, {3 * H}) || !has(bh, {3 * H}) || !has(h0, {B, H}) || !mask_ok(m, T, B) ||
      !mask_ok(r, T, B))
    return invalid("GRU", "forward: shapes do not match x [T, B, I], w_x [I, 3H] (or x W_x [T, B, 3H] with an "
                   "empty w_x), w_h [H, 3H], b_x and b_h [3H], h0 [B, H] with H a multiple of 8");
  const size_t seq = static_cast<size_t>(T * B * H);
  Out* outs[5] = {&Ar, &Az, &An, &R, &F};
  const bool save = F->element_count() != 0;
  for (Out* o : outs)
    if ((*o)->element_count() != (save ? seq : 0))
      return invalid("GRU", "forward: the five coefficient results must all be [T, B, H] or all empty");
  if (hs->element_count() != 0 && hs->element_count() != seq)
    return invalid("GRU", "forward: hs must be [T, B, H] or empty");
  gru::ForwardArgs a{static_cast<int>(T), static_cast<int>(B), static_cast<int>(I), static_cast<int>(H),
                     x.typed_data(), wx.typed_data(), wh.typed_data(), bx.typed_data(), bh.typed_data(),
                     h0.typed_data(), optional_mask(m, T, B), optional_mask(r, T, B), hT->typed_data(),
                     ys->typed_data(), optional_out(hs), optional_out(Ar), optional_out(Az), optional_out(An),
                     optional_out(R), optional_out(F)};
  a.projected = projected;
  if (T > 0) {
    const PoolSpawn ps{pool};
    gru::forward(a, ps.threads(), ps.spawn());
  } else {
    std::memcpy(a.hT, a.h0, sizeof(float) * B * H);
  }
  return ffi::Error::Success();
}

ffi::Error Tangent(ffi::ThreadPool pool, F32 drive, F32 an, F32 Ar, F32 Az, F32 An, F32 R, F32 F, Pred m, Pred r, F32 wh,
                   F32 dh0, Out dhT, Out dys) {
  const int64_t T = dim(drive, 0), B = dim(drive, 1), H = dim(dh0, 1);
  if (H % nat::VW != 0 || !has(drive, {T, B, 3 * H}) || !has(an, {T, B, H}) ||
      !coefs_ok({&Ar, &Az, &An, &R, &F}, T, B, H) || !has(wh, {H, 3 * H}) || !has(dh0, {B, H}) ||
      !mask_ok(m, T, B) || !mask_ok(r, T, B))
    return invalid("GRU", "tangent: shapes do not match drive [T, B, 3H], a_n and coefficients [T, B, H], "
                   "w_h [H, 3H], dh0 [B, H]");
  gru::TangentArgs a{static_cast<int>(T), static_cast<int>(B), static_cast<int>(H), drive.typed_data(),
                     an.typed_data(),
                     {Ar.typed_data(), Az.typed_data(), An.typed_data(), R.typed_data(), F.typed_data()},
                     optional_mask(m, T, B), optional_mask(r, T, B), wh.typed_data(), dh0.typed_data(),
                     dhT->typed_data(), dys->typed_data()};
  if (T > 0) {
    const PoolSpawn ps{pool};
    gru::tangent(a, ps.threads(), ps.spawn());
  } else {
    std::memcpy(a.dhT, a.dh0, sizeof(float) * B * H);
  }
  return ffi::Error::Success();
}

ffi::Error Adjoint(ffi::ThreadPool pool, F32 g_dys, F32 g_dhT, F32 Ar, F32 Az, F32 An, F32 R, F32 F, Pred m, Pred r,
                   F32 wh, Out g_drive, Out g_an, Out g_dh0) {
  const int64_t T = dim(g_dys, 0), B = dim(g_dys, 1), H = dim(g_dys, 2);
  if (H % nat::VW != 0 || !has(g_dys, {T, B, H}) || !has(g_dhT, {B, H}) ||
      !coefs_ok({&Ar, &Az, &An, &R, &F}, T, B, H) || !has(wh, {H, 3 * H}) || !mask_ok(m, T, B) || !mask_ok(r, T, B))
    return invalid("GRU", "adjoint: shapes do not match cotangents [T, B, H] and [B, H], coefficients [T, B, H], "
                   "w_h [H, 3H]");
  gru::AdjointArgs a{static_cast<int>(T), static_cast<int>(B), static_cast<int>(H), g_dys.typed_data(),
                     g_dhT.typed_data(),
                     {Ar.typed_data(), Az.typed_data(), An.typed_data(), R.typed_data(), F.typed_data()},
                     optional_mask(m, T, B), optional_mask(r, T, B), wh.typed_data(), g_drive->typed_data(),
                     g_an->typed_data(), g_dh0->typed_data()};
  if (T > 0) {
    const PoolSpawn ps{pool};
    gru::adjoint(a, ps.threads(), ps.spawn());
  } else {
    std::memcpy(a.g_dh0, a.g_dhT, sizeof(float) * B * H);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JlstmGruForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<Pred>().Arg<Pred>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JlstmGruTangent, Tangent,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<Pred>().Arg<Pred>()
                                  .Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JlstmGruAdjoint, Adjoint,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<Pred>().Arg<Pred>()
                                  .Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>());
