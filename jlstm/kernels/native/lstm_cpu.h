// The LSTM recurrences of jlstm's native CPU path (jlstm/kernels/native_lstm.py), without XLA.
//
// Three sequential loops over T, each with one small GEMM per step:
//   * forward:  z_t = [x_t, h_{t-1}] [W_x; W_h] + b (+ c_{t-1} W_c with full peepholes), the gates
//               (with diagonal peepholes, if any), c_t, h_t, and (when saving) the backward
//               coefficients P, Q_i, Q_f, Q_g, Q_o, F of jlstm.kernels.fused_lstm;
//   * tangent:  the linear recurrence of fused_lstm._tangent_loop, u_t = d_t + dh_{t-1} W_h
//               (+ dc_{t-1} W_c with full peepholes);
//   * adjoint:  its transpose, the reverse loop with one GEMM dz_t W_hᵀ (and dz_t W_cᵀ) per step.
//
// Each loop splits the hidden units over threads. A thread owns a contiguous range of units: it
// packs the weight columns of its units once per call (all four gates of a unit side by side),
// computes their GEMM tile and finishes the element-wise work while the tile is in registers,
// then waits at one barrier per step, since the next step's GEMM reads every unit's output.
//
// All arrays are row-major float32; masks and resets are one byte per (t, b).

#pragma once

#include "cpu_common.h"

namespace jlstm_native {

struct ForwardArgs {
  int T, B, I, H;                        // I = 0 where x is projected
  const float *x, *wx, *wh, *b, *h0, *c0;
  const float* wd;                       // diagonal peepholes [3, H] (w_ci, w_cf, w_co), or null
  const float* wf;                       // full peepholes [H, 3H] ([W_ci | W_cf | W_co]), or null
  const uint8_t *m, *r;                  // [T, B] or null
  float *hT, *cT, *ys;                   // hT, cT [B, H]; ys [T, B, H]
  float *hs;                             // [T, B, H] carried states (with a mask), or null
  float *cs;                             // [T, B, H] carried cell states (with peepholes), or null
  float *P, *Qi, *Qf, *Qg, *Qo, *F;      // [T, B, H] each, or all null (no residuals)
  bool projected = false;
};

// The forward loop. Iteration 0 packs each unit block's gate panel (rows of [W_x; W_h]; with full
// peepholes then the rows of W_c, three gates wide: i, f and o); iteration t + 1 is step t: per unit
// block, the GEMM over all rows (c_{t-1} W_c into a tile of its own), the cell update and the outputs. Where x is projected (x W_x from one GEMM before the loop, [T, B, 4H];
// then I = 0), a step reads only W_h: at B = 1 a step is a matrix-vector product, bound by reading
// the weights. h and c are double-buffered: a step's GEMM reads every unit's h_{t-1} (and, with
// full peepholes, c_{t-1}) while the units' new states are written.
inline void forward(const ForwardArgs& A, int threads, const Spawn& spawn) {
  const int T = A.T, B = A.B, I = A.I, H = A.H, K = I + H;
  const int nb = H / VW;
  const int n = std::min(participants(8.0 * B * K * H + (A.wf ? 6.0 * B * H * H : 0.0), threads), nb);
  const size_t pc = static_cast<size_t>(K) * 4 * VW;  // where the W_c panel starts
  const size_t panel = pc + (A.wf ? static_cast<size_t>(H) * 3 * VW : 0);
  std::vector<float> packed(nb * panel);
  std::vector<float> hbuf(2 * static_cast<size_t>(B) * H), cbuf(2 * static_cast<size_t>(B) * H);
  std::vector<Scratch> scratch(n);
  const std::vector<float> zero(H, 0.0f);
  std::memcpy(hbuf.data(), A.h0, sizeof(float) * B * H);
  std::memcpy(cbuf.data(), A.c0, sizeof(float) * B * H);
  const bool save = A.P != nullptr;
  const size_t seq = sizeof(float) * T * B * H;
  for (float* out : {A.ys, A.hs, A.cs, A.P, A.Qi, A.Qf, A.Qg, A.Qo, A.F}) advise_huge(out, seq);
  run_team(n - 1, spawn, T + 1, [&](int it, int j, int nt) {
    int lo, hi;
    share(nb, j, nt, &lo, &hi);
    if (it == 0) {
      for (int ub = lo; ub < hi; ++ub) {
        float* p = packed.data() + ub * panel;
        pack_gates<4>(p, A.wx, 0, I, H, ub * VW);
        pack_gates<4>(p + static_cast<size_t>(I) * 4 * VW, A.wh, 0, H, H, ub * VW);
        if (A.wf) pack_gates<3>(p + pc, A.wf, 0, H, H, ub * VW);
      }
      return;
    }
    const int t = it - 1;
    Scratch& sc = scratch[j];
    sc.size(B, 4 + (A.wf ? 3 : 0));
    float* z = sc.z.data();
    float* zc = z + static_cast<size_t>(B) * 4 * VW;  // c_{t-1} W_c: the i, f and o blocks
    const float* hprev = hbuf.data() + static_cast<size_t>(t & 1) * B * H;
    float* hnext = hbuf.data() + static_cast<size_t>((t + 1) & 1) * B * H;
    const float* cprev = cbuf.data() + static_cast<size_t>(t & 1) * B * H;
    float* cnext = cbuf.data() + static_cast<size_t>((t + 1) & 1) * B * H;
    const float* xt = A.x + static_cast<size_t>(t) * B * (A.projected ? 4 * H : I);
    const uint8_t* mt = A.m ? A.m + static_cast<size_t>(t) * B : nullptr;
    const uint8_t* rt = A.r ? A.r + static_cast<size_t>(t) * B : nullptr;
    const size_t off_t = static_cast<size_t>(t) * B * H;
    for (int b = 0; b < B; ++b) {
      sc.a[b] = xt + static_cast<size_t>(b) * I;
      sc.b[b] = (rt && rt[b]) ? zero.data() : hprev + static_cast<size_t>(b) * H;
      sc.c[b] = (rt && rt[b]) ? zero.data() : cprev + static_cast<size_t>(b) * H;
    }
    for (int ub = lo; ub < hi; ++ub) {
      const float* p = packed.data() + ub * panel;
      for (int b = 0; b < B; ++b)
        for (int g = 0; g < 4; ++g) {
          const vf bias = load(A.b + g * H + ub * VW);
          store(z + (b * 4 + g) * VW,
                !A.projected ? bias : bias + load(xt + static_cast<size_t>(b) * 4 * H + g * H + ub * VW));
        }
      panel_product<kRows, 4>(z, B, sc.a.data(), I, p);
      panel_product<kRows, 4>(z, B, sc.b.data(), H, p + static_cast<size_t>(I) * 4 * VW);
      if (A.wf) {
        std::fill(zc, zc + static_cast<size_t>(B) * 3 * VW, 0.0f);
        panel_product<kRows, 3>(zc, B, sc.c.data(), H, p + pc);
      }
      for (int b = 0; b < B; ++b) {
        const float* zb = z + b * 4 * VW;
        const size_t o = static_cast<size_t>(b) * H + ub * VW;
        const bool reset = rt && rt[b];
        const bool valid = !mt || mt[b];
        const vf c_prev = reset ? splat(0.0f) : load(cprev + o);
        vf zi = load(zb), zf = load(zb + VW), zo = load(zb + 3 * VW);
        if (A.wf) {
          const float* zcb = zc + b * 3 * VW;
          zi += load(zcb);
          zf += load(zcb + VW);
          zo += load(zcb + 2 * VW);
        }
        if (A.wd) {  // diagonal peepholes: i and f see c_{t-1}, o sees c_t
          zi += load(A.wd + ub * VW) * c_prev;
          zf += load(A.wd + H + ub * VW) * c_prev;
        }
        const vf ig = sigmoid(zi), fg = sigmoid(zf), gg = tanh_v(load(zb + 2 * VW));
        const vf c_new = fg * c_prev + ig * gg;
        if (A.wd) zo += load(A.wd + 2 * H + ub * VW) * c_new;
        const vf og = sigmoid(zo);
        const vf tc = tanh_v(c_new);
        const vf h_new = og * tc;
        if (valid) {
          store(cnext + o, c_new);
          store(hnext + o, h_new);
          store_out(A.ys + off_t + o, h_new);
        } else {
          store(cnext + o, c_prev);
          store(hnext + o, load(hprev + o));
          store_out(A.ys + off_t + o, splat(0.0f));
        }
        if (A.hs) store_out(A.hs + off_t + o, load(hnext + o));
        if (A.cs) store_out(A.cs + off_t + o, valid ? c_new : c_prev);
        if (save) {  // diagonal peepholes add w_co·Q_o to P and w_ci·Q_i + w_cf·Q_f to F
          const vf one = splat(1.0f), zv = splat(0.0f);
          const vf qi = gg * ig * (one - ig), qf = c_prev * fg * (one - fg), qo = tc * og * (one - og);
          vf P = og * (one - tc * tc), F = fg;
          if (A.wd) {
            P += load(A.wd + 2 * H + ub * VW) * qo;
            F += load(A.wd + ub * VW) * qi + load(A.wd + H + ub * VW) * qf;
          }
          store_out(A.Qi + off_t + o, valid ? qi : zv);
          store_out(A.Qf + off_t + o, valid ? qf : zv);
          store_out(A.Qg + off_t + o, valid ? ig * (one - gg * gg) : zv);
          store_out(A.Qo + off_t + o, valid ? qo : zv);
          store_out(A.P + off_t + o, valid ? P : zv);
          store_out(A.F + off_t + o, valid ? (reset ? zv : F) : one);
        }
      }
    }
    fence_out();
  });
  std::memcpy(A.hT, hbuf.data() + static_cast<size_t>(T & 1) * B * H, sizeof(float) * B * H);
  std::memcpy(A.cT, cbuf.data() + static_cast<size_t>(T & 1) * B * H, sizeof(float) * B * H);
}

struct Coefs {
  const float *P, *Qi, *Qf, *Qg, *Qo, *F;  // [T, B, H] each
};

struct TangentArgs {
  int T, B, H, R;      // R: the rows of w_h, H, or 2H for [W_h; W_c] with full peepholes
  const float* drive;  // [T, B, 4H]
  Coefs c;
  const uint8_t *m, *r;
  const float *wh, *dh0, *dc0;
  float *dhT, *dcT, *dys;
};

// The tangent recurrence (fused_lstm._tangent_loop), linear in (drive, dh0, dc0); iterations as in
// forward(). With full peepholes the step's GEMM is [dh_{t-1}, dc_{t-1}] [W_h; W_c] (W_c with a zero
// g block), so dc is double-buffered like dh.
inline void tangent(const TangentArgs& A, int threads, const Spawn& spawn) {
  const int T = A.T, B = A.B, H = A.H, R = A.R;
  const int nb = H / VW;
  const int n = std::min(participants(8.0 * B * R * H, threads), nb);
  const size_t panel = static_cast<size_t>(R) * 4 * VW;
  std::vector<float> packed(nb * panel);
  std::vector<float> hbuf(2 * static_cast<size_t>(B) * H), cbuf(2 * static_cast<size_t>(B) * H);
  std::vector<Scratch> scratch(n);
  const std::vector<float> zero(H, 0.0f);
  std::memcpy(hbuf.data(), A.dh0, sizeof(float) * B * H);
  std::memcpy(cbuf.data(), A.dc0, sizeof(float) * B * H);
  advise_huge(A.dys, sizeof(float) * T * B * H);
  run_team(n - 1, spawn, T + 1, [&](int it, int j, int nt) {
    int lo, hi;
    share(nb, j, nt, &lo, &hi);
    if (it == 0) {
      for (int ub = lo; ub < hi; ++ub) pack_gates<4>(packed.data() + ub * panel, A.wh, 0, R, H, ub * VW);
      return;
    }
    const int t = it - 1;
    Scratch& sc = scratch[j];
    sc.size(B, 4);
    float* z = sc.z.data();
    const float* hprev = hbuf.data() + static_cast<size_t>(t & 1) * B * H;
    float* hnext = hbuf.data() + static_cast<size_t>((t + 1) & 1) * B * H;
    const float* cprev = cbuf.data() + static_cast<size_t>(t & 1) * B * H;
    float* cnext = cbuf.data() + static_cast<size_t>((t + 1) & 1) * B * H;
    const uint8_t* mt = A.m ? A.m + static_cast<size_t>(t) * B : nullptr;
    const uint8_t* rt = A.r ? A.r + static_cast<size_t>(t) * B : nullptr;
    const size_t off_t = static_cast<size_t>(t) * B * H;
    const float* dt = A.drive + static_cast<size_t>(t) * B * 4 * H;
    for (int b = 0; b < B; ++b) {
      sc.a[b] = (rt && rt[b]) ? zero.data() : hprev + static_cast<size_t>(b) * H;
      sc.b[b] = (rt && rt[b]) ? zero.data() : cprev + static_cast<size_t>(b) * H;
    }
    for (int ub = lo; ub < hi; ++ub) {
      const float* p = packed.data() + ub * panel;
      for (int b = 0; b < B; ++b)
        for (int g = 0; g < 4; ++g)
          store(z + (b * 4 + g) * VW, load(dt + static_cast<size_t>(b) * 4 * H + g * H + ub * VW));
      panel_product<kRows, 4>(z, B, sc.a.data(), H, p);
      if (R > H) panel_product<kRows, 4>(z, B, sc.b.data(), H, p + static_cast<size_t>(H) * 4 * VW);
      for (int b = 0; b < B; ++b) {
        const float* zb = z + b * 4 * VW;
        const size_t o = static_cast<size_t>(b) * H + ub * VW;
        const size_t oc = off_t + o;
        const vf dc_new = load(A.c.F + oc) * load(cprev + o) + load(zb) * load(A.c.Qi + oc) +
                          load(zb + VW) * load(A.c.Qf + oc) + load(zb + 2 * VW) * load(A.c.Qg + oc);
        const vf dh_new = load(zb + 3 * VW) * load(A.c.Qo + oc) + load(A.c.P + oc) * dc_new;
        store(cnext + o, dc_new);
        store_out(A.dys + oc, dh_new);
        store(hnext + o, (!mt || mt[b]) ? dh_new : load(hprev + o));
      }
    }
    fence_out();
  });
  std::memcpy(A.dhT, hbuf.data() + static_cast<size_t>(T & 1) * B * H, sizeof(float) * B * H);
  std::memcpy(A.dcT, cbuf.data() + static_cast<size_t>(T & 1) * B * H, sizeof(float) * B * H);
}

struct AdjointArgs {
  int T, B, H, R;  // R: the rows of w_h, as in TangentArgs
  const float *g_dys, *g_dhT, *g_dcT;  // cotangents of the tangent loop's outputs
  Coefs c;
  const uint8_t *m, *r;
  const float* wh;
  float *g_drive, *g_dh0, *g_dc0;  // [T, B, 4H], [B, H], [B, H]
};

// The transpose of tangent(): the reverse loop of cpu_common.h (reverse_loop), with h̄ passing a masked
// step unchanged and the carried c̄ in g_dc0 (plus, with full peepholes, the GEMM's part by W_cᵀ).
inline void adjoint(const AdjointArgs& A, int threads, const Spawn& spawn) {
  const int T = A.T, B = A.B, H = A.H, G = 4 * H;
  std::vector<float> hbar(A.g_dhT, A.g_dhT + static_cast<size_t>(B) * H);
  std::vector<float> cpart(static_cast<size_t>(B) * H, 0.0f);  // c̄'s part from W_cᵀ (full peepholes)
  std::memcpy(A.g_dc0, A.g_dcT, sizeof(float) * B * H);  // the carried c̄, in place
  auto cotangents = [&](bool valid, size_t o, size_t oc, float* row, const float* hb_all, float* pass) {
    const vf hb = load(hb_all + o);
    const vf hn = load(A.g_dys + oc) + (valid ? hb : splat(0.0f));
    store(pass + o, valid ? splat(0.0f) : hb);
    const vf cn = load(A.g_dc0 + o) + load(cpart.data() + o) + hn * load(A.c.P + oc);
    store(row, cn * load(A.c.Qi + oc));
    store(row + H, cn * load(A.c.Qf + oc));
    store(row + 2 * H, cn * load(A.c.Qg + oc));
    store(row + 3 * H, hn * load(A.c.Qo + oc));
    store(A.g_dc0 + o, cn * load(A.c.F + oc));
  };
  reverse_loop(T, B, H, A.R, G, A.wh, A.m, A.r, A.g_drive, hbar.data(), cpart.data(), threads, spawn,
               cotangents);
  std::memcpy(A.g_dh0, hbar.data(), sizeof(float) * B * H);
  for (size_t k = 0; k < cpart.size(); ++k) A.g_dc0[k] += cpart[k];  // step 0's part (zeros without W_c)
}

}  // namespace jlstm_native
