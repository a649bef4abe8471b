// The GRU recurrences of jlstm's native CPU path (jlstm/kernels/native_gru.py), without XLA.
//
// The GRU in PyTorch's form (jlstm.kernels.fused_gru), gate blocks r, z, n of width H:
//   a = x_t W_x + b_x,  e = h_{t-1} W_h + b_h,
//   r = σ(a_r + e_r),  z = σ(a_z + e_z),  n = tanh(a_n + r·e_n),  h_t = (1 - z)·n + z·h_{t-1}.
// Three sequential loops over T, each with one small GEMM per step (two in the forward: the n block
// needs x_t W_x and h_{t-1} W_h apart):
//   * forward:  the gates, h_t and (when saving) the tangent coefficients A_r, A_z, A_n, R, F of
//               fused_gru._coefficients;
//   * tangent:  fused_gru._tangent_loop, u = d_t + ḣ_{t-1} W_h and
//               ḣ_t = A_r·u_r + A_z·u_z + A_n·(ȧ_n + R·u_n) + F·ḣ_{t-1};
//   * adjoint:  its transpose, the reverse loop with one GEMM by W_hᵀ per step.
// The threads share the hidden units as in lstm_cpu.h: each packs its units' weight columns once
// (the three gates of a unit side by side) and meets the others at one barrier per step.

#pragma once

#include "cpu_common.h"

namespace jlstm_native {
namespace gru {

// Three gate vectors a tile: four rows keep 12 accumulators, the 3 weight vectors and a broadcast in
// AVX2's 16 registers (tile()'s weights-first order).
constexpr int kRows = 4;
constexpr int kGates = 3;

struct ForwardArgs {
  int T, B, I, H;                  // I = 0 where x is projected (x W_x, [T, B, 3H], without b_x)
  const float *x, *wx, *wh, *bx, *bh, *h0;
  const uint8_t *m, *r;            // [T, B] or null
  float *hT, *ys;                  // [B, H], [T, B, H]
  float *hs;                       // [T, B, H] carried states (with a mask), or null
  float *Ar, *Az, *An, *R, *F;     // [T, B, H] each, or all null (no coefficients)
  bool projected = false;
};

// The forward loop. Iteration 0 packs each unit block's panels (rows of W_x, then of W_h); iteration
// t + 1 is step t: per unit block the input GEMM into zx = [a_r + b_hr, a_z + b_hz, a_n] and the
// recurrent one into zh = [e_r - b_hr, e_z - b_hz, e_n] (the r and z blocks take both biases in zx),
// then the gates and the outputs.
inline void forward(const ForwardArgs& A, int threads, const Spawn& spawn) {
  const int T = A.T, B = A.B, I = A.I, H = A.H;
  const int nb = H / VW;
  const int n = std::min(participants(6.0 * B * (I + H) * H, threads), nb);
  const size_t px = static_cast<size_t>(I) * kGates * VW, panel = px + static_cast<size_t>(H) * kGates * VW;
  std::vector<float> packed(nb * panel);
  std::vector<float> hbuf(2 * static_cast<size_t>(B) * H);
  std::vector<Scratch> scratch(n);
  const std::vector<float> zero(H, 0.0f);
  std::memcpy(hbuf.data(), A.h0, sizeof(float) * B * H);
  const bool save = A.F != nullptr;
  const size_t seq = sizeof(float) * T * B * H;
  for (float* out : {A.ys, A.hs, A.Ar, A.Az, A.An, A.R, A.F}) advise_huge(out, seq);
  const size_t xrow = A.projected ? static_cast<size_t>(kGates) * H : I;
  run_team(n - 1, spawn, T + 1, [&](int it, int j, int nt) {
    int lo, hi;
    share(nb, j, nt, &lo, &hi);
    if (it == 0) {
      for (int ub = lo; ub < hi; ++ub) {
        float* p = packed.data() + ub * panel;
        pack_gates<kGates>(p, A.wx, 0, I, H, ub * VW);
        pack_gates<kGates>(p + px, A.wh, 0, H, H, ub * VW);
      }
      return;
    }
    const int t = it - 1;
    Scratch& sc = scratch[j];
    sc.size(B, 2 * kGates);
    float* zx = sc.z.data();
    float* zh = zx + static_cast<size_t>(B) * kGates * VW;
    const float* hprev = hbuf.data() + static_cast<size_t>(t & 1) * B * H;
    float* hnext = hbuf.data() + static_cast<size_t>((t + 1) & 1) * B * H;
    const float* xt = A.x + static_cast<size_t>(t) * B * xrow;
    const uint8_t* mt = A.m ? A.m + static_cast<size_t>(t) * B : nullptr;
    const uint8_t* rt = A.r ? A.r + static_cast<size_t>(t) * B : nullptr;
    const size_t off_t = static_cast<size_t>(t) * B * H;
    for (int b = 0; b < B; ++b) {
      sc.a[b] = xt + static_cast<size_t>(b) * I;
      sc.b[b] = (rt && rt[b]) ? zero.data() : hprev + static_cast<size_t>(b) * H;
    }
    for (int ub = lo; ub < hi; ++ub) {
      const float* p = packed.data() + ub * panel;
      const int u0 = ub * VW;
      const vf bhn = load(A.bh + 2 * H + u0);
      for (int b = 0; b < B; ++b)
        for (int g = 0; g < kGates; ++g) {
          vf bias = load(A.bx + g * H + u0);
          if (g < 2) bias += load(A.bh + g * H + u0);
          if (A.projected) bias += load(xt + b * xrow + g * H + u0);
          store(zx + (b * kGates + g) * VW, bias);
          store(zh + (b * kGates + g) * VW, g < 2 ? splat(0.0f) : bhn);
        }
      if (I > 0) panel_product<kRows, kGates>(zx, B, sc.a.data(), I, p);
      panel_product<kRows, kGates>(zh, B, sc.b.data(), H, p + px);
      for (int b = 0; b < B; ++b) {
        const float* zxb = zx + b * kGates * VW;
        const float* zhb = zh + b * kGates * VW;
        const size_t o = static_cast<size_t>(b) * H + u0;
        const bool reset = rt && rt[b];
        const bool valid = !mt || mt[b];
        const vf hp = reset ? splat(0.0f) : load(hprev + o);
        const vf rg = sigmoid(load(zxb) + load(zhb));
        const vf zg = sigmoid(load(zxb + VW) + load(zhb + VW));
        const vf en = load(zhb + 2 * VW);
        const vf ng = tanh_v(load(zxb + 2 * VW) + rg * en);
        const vf one = splat(1.0f), zv = splat(0.0f);
        const vf h_new = (one - zg) * ng + zg * hp;
        const vf h_next = valid ? h_new : hp;
        store(hnext + o, h_next);
        store_out(A.ys + off_t + o, valid ? h_new : zv);
        if (A.hs) store_out(A.hs + off_t + o, h_next);
        if (save) {
          const vf an = (one - zg) * (one - ng * ng);
          store_out(A.Ar + off_t + o, valid ? an * en * rg * (one - rg) : zv);
          store_out(A.Az + off_t + o, valid ? (hp - ng) * zg * (one - zg) : zv);
          store_out(A.An + off_t + o, valid ? an : zv);
          store_out(A.R + off_t + o, rg);
          store_out(A.F + off_t + o, valid ? (reset ? zv : zg) : one);
        }
      }
    }
    fence_out();
  });
  std::memcpy(A.hT, hbuf.data() + static_cast<size_t>(T & 1) * B * H, sizeof(float) * B * H);
}

struct Coefs {
  const float *Ar, *Az, *An, *R, *F;  // [T, B, H] each
};

struct TangentArgs {
  int T, B, H;
  const float *drive, *an;  // [T, B, 3H], [T, B, H]
  Coefs c;
  const uint8_t *m, *r;
  const float *wh, *dh0;
  float *dhT, *dys;
};

// The tangent recurrence (fused_gru._tangent_loop), linear in (drive, an, dh0); iterations as in
// forward().
inline void tangent(const TangentArgs& A, int threads, const Spawn& spawn) {
  const int T = A.T, B = A.B, H = A.H, G = kGates * H;
  const int nb = H / VW;
  const int n = std::min(participants(6.0 * B * H * H, threads), nb);
  const size_t panel = static_cast<size_t>(H) * kGates * VW;
  std::vector<float> packed(nb * panel);
  std::vector<float> hbuf(2 * static_cast<size_t>(B) * H);
  std::vector<Scratch> scratch(n);
  const std::vector<float> zero(H, 0.0f);
  std::memcpy(hbuf.data(), A.dh0, sizeof(float) * B * H);
  advise_huge(A.dys, sizeof(float) * T * B * H);
  run_team(n - 1, spawn, T + 1, [&](int it, int j, int nt) {
    int lo, hi;
    share(nb, j, nt, &lo, &hi);
    if (it == 0) {
      for (int ub = lo; ub < hi; ++ub) pack_gates<kGates>(packed.data() + ub * panel, A.wh, 0, H, H, ub * VW);
      return;
    }
    const int t = it - 1;
    Scratch& sc = scratch[j];
    sc.size(B, kGates);
    float* z = sc.z.data();
    const float* hprev = hbuf.data() + static_cast<size_t>(t & 1) * B * H;
    float* hnext = hbuf.data() + static_cast<size_t>((t + 1) & 1) * B * H;
    const uint8_t* mt = A.m ? A.m + static_cast<size_t>(t) * B : nullptr;
    const uint8_t* rt = A.r ? A.r + static_cast<size_t>(t) * B : nullptr;
    const size_t off_t = static_cast<size_t>(t) * B * H;
    const float* dt = A.drive + static_cast<size_t>(t) * B * G;
    for (int b = 0; b < B; ++b) sc.a[b] = (rt && rt[b]) ? zero.data() : hprev + static_cast<size_t>(b) * H;
    for (int ub = lo; ub < hi; ++ub) {
      for (int b = 0; b < B; ++b)
        for (int g = 0; g < kGates; ++g)
          store(z + (b * kGates + g) * VW, load(dt + static_cast<size_t>(b) * G + g * H + ub * VW));
      panel_product<kRows, kGates>(z, B, sc.a.data(), H, packed.data() + ub * panel);
      for (int b = 0; b < B; ++b) {
        const float* zb = z + b * kGates * VW;
        const size_t o = static_cast<size_t>(b) * H + ub * VW;
        const size_t oc = off_t + o;
        const vf dh_new = load(A.c.Ar + oc) * load(zb) + load(A.c.Az + oc) * load(zb + VW) +
                          load(A.c.An + oc) * (load(A.an + oc) + load(A.c.R + oc) * load(zb + 2 * VW)) +
                          load(A.c.F + oc) * load(hprev + o);
        store(hnext + o, dh_new);
        store_out(A.dys + oc, (!mt || mt[b]) ? dh_new : splat(0.0f));
      }
    }
    fence_out();
  });
  std::memcpy(A.dhT, hbuf.data() + static_cast<size_t>(T & 1) * B * H, sizeof(float) * B * H);
}

struct AdjointArgs {
  int T, B, H;
  const float *g_dys, *g_dhT;  // cotangents of the tangent loop's outputs
  Coefs c;
  const uint8_t *m, *r;
  const float* wh;
  float *g_drive, *g_an, *g_dh0;  // [T, B, 3H], [T, B, H], [B, H]
};

// The transpose of tangent(): the reverse loop of cpu_common.h (reverse_loop). For step t and its
// units, g = h̄ + ȳ (where valid) is the cotangent of ḣ_t: g_drive = [A_r·g, A_z·g, A_n·R·g],
// g_an = A_n·g, and F·g passes to h̄_{t-1} beside the GEMM by W_hᵀ.
inline void adjoint(const AdjointArgs& A, int threads, const Spawn& spawn) {
  const int T = A.T, B = A.B, H = A.H, G = kGates * H;
  std::vector<float> hbar(A.g_dhT, A.g_dhT + static_cast<size_t>(B) * H);
  advise_huge(A.g_an, sizeof(float) * T * B * H);
  auto cotangents = [&](bool valid, size_t o, size_t oc, float* row, const float* hb_all, float* pass) {
    const vf g = load(hb_all + o) + (valid ? load(A.g_dys + oc) : splat(0.0f));
    const vf an = load(A.c.An + oc) * g;
    store(row, load(A.c.Ar + oc) * g);
    store(row + H, load(A.c.Az + oc) * g);
    store(row + 2 * H, load(A.c.R + oc) * an);
    store_out(A.g_an + oc, an);
    store(pass + o, load(A.c.F + oc) * g);
  };
  reverse_loop(T, B, H, H, G, A.wh, A.m, A.r, A.g_drive, hbar.data(), nullptr, threads, spawn, cotangents);
  std::memcpy(A.g_dh0, hbar.data(), sizeof(float) * B * H);
}

}  // namespace gru
}  // namespace jlstm_native
