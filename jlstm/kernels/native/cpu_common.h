// What the native CPU loops share (lstm_cpu.h, gru_cpu.h): the vector type and its exp, sigmoid and
// tanh; the elastic thread team that runs a loop's iterations with one barrier per step; and the
// register-tiled panel products that do a step's small GEMM.
//
// All arrays are row-major float32; masks and resets are one byte per (t, b).

#pragma once

#include <algorithm>
#include <chrono>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <sched.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace jlstm_native {

constexpr int VW = 8;  // floats per vector: one AVX2 register (GCC vector extensions elsewhere)
typedef float vf __attribute__((vector_size(VW * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(VW * sizeof(int32_t))));

// A register tile is MR rows × 4 vectors (forward and tangent: the 4 gates of VW units; adjoint:
// 4·VW units). Three rows keep 12 accumulators, 3 broadcasts and the weight vector being used within
// AVX2's 16 registers (7 loads for 12 FMAs; two rows: 6 for 8). Measured on a 2-core AVX2 EPYC
// (lower quartile of 15 steady calls, 3 alternating processes each): at B=32, T=128, I=128, H=256
// the forward took 22.0-25.4 ms against 25.7-29.2 with two rows, and at B=64, T=64, I=H=512
// 107-114 ms against 115-137; training was within the noise (83-98 against 83-96 ms).
constexpr int kRows = 3;
constexpr int kVecs = 4;

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(vf));
  return v;
}
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof(vf)); }
// A store that bypasses the caches where it can (an aligned AVX address): for the per-step outputs
// that are read only after the loop (ys, hs, the coefficients), so that they do not evict the weights.
inline void store_out(float* p, vf v) {
#if defined(__AVX__)
  if ((reinterpret_cast<uintptr_t>(p) & 31) == 0) {
    __m256 m;
    std::memcpy(&m, &v, sizeof(m));
    _mm256_stream_ps(p, m);
    return;
  }
#endif
  store(p, v);
}
// Orders this thread's streaming stores before whatever reads them next.
inline void fence_out() {
#if defined(__AVX__)
  _mm_sfence();
#endif
}
static_assert(VW == 8, "splat() lists VW lanes");
// (Not 0 + s: that costs an add per broadcast, since 0 + -0 is +0.)
inline vf splat(float s) { return vf{s, s, s, s, s, s, s, s}; }
// Keep v in a register: otherwise GCC folds the load into every FMA that reads it, and the
// micro-kernels become bound by loads instead of multiply-adds.
inline void pin(vf& v) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __asm__("" : "+x"(v));
#else
  (void)v;
#endif
}

// exp(x) for x <= 0 down to the float range: x = n ln2 + r with |r| <= ln2/2, and
// e^r by its Taylor series to r^7 (relative error below 1e-8 on that interval).
inline vf exp_neg(vf x) {
  x = x < splat(-87.0f) ? splat(-87.0f) : x;
  const vf log2e = splat(1.44269504088896341f);
  vf n = x * log2e;
  // round to nearest: add and subtract 1.5 * 2^23
  const vf magic = splat(12582912.0f);
  n = (n + magic) - magic;
  const vf r = (x - n * splat(0.693145751953125f)) - n * splat(1.428606765330187e-06f);
  vf p = splat(1.0f / 5040.0f);
  p = p * r + splat(1.0f / 720.0f);
  p = p * r + splat(1.0f / 120.0f);
  p = p * r + splat(1.0f / 24.0f);
  p = p * r + splat(1.0f / 6.0f);
  p = p * r + splat(0.5f);
  p = p * r + splat(1.0f);
  p = p * r + splat(1.0f);
  vi e = __builtin_convertvector(n, vi);
  e = (e + 127) << 23;
  vf scale;
  std::memcpy(&scale, &e, sizeof(vf));
  return p * scale;
}

// σ(x) = 1 / (1 + e^{-x}) for x >= 0 and e^x / (1 + e^x) below: e^{-|x|} never overflows.
inline vf sigmoid(vf x) {
  const vf ax = x < splat(0.0f) ? -x : x;
  const vf e = exp_neg(-ax);
  const vf s = splat(1.0f) / (splat(1.0f) + e);
  return x < splat(0.0f) ? e * s : s;
}

// tanh(x) = sign(x) (1 - e) / (1 + e) with e = e^{-2|x|}; below |x| = 2^-4 an odd Taylor
// polynomial to x^9 avoids the cancellation in 1 - e.
inline vf tanh_v(vf x) {
  const vf ax = x < splat(0.0f) ? -x : x;
  const vf e = exp_neg(splat(-2.0f) * ax);
  vf t = (splat(1.0f) - e) / (splat(1.0f) + e);
  const vf x2 = x * x;
  vf p = splat(62.0f / 2835.0f);
  p = p * x2 - splat(17.0f / 315.0f);
  p = p * x2 + splat(2.0f / 15.0f);
  p = p * x2 - splat(1.0f / 3.0f);
  const vf small = x + x * x2 * p;
  t = x < splat(0.0f) ? -t : t;
  return ax < splat(0.0625f) ? small : t;
}

// Ask Linux to back a large output with huge pages before it is first written. XLA hands a custom
// call fresh memory for its outputs more often than not (its temporary arena, when over glibc's
// largest mmap threshold of 32 MB, is mmap-ed anew for every execution), and faulting that in 4 KB
// pages cost more than the arithmetic: in a B=32, T=128, H=256 training step, 7,600 page faults a call
// and a quarter of the time in the kernel. The range is rounded out to whole 2 MB pages, since the
// buffers sit 64 bytes into the arena's pages; the advice only makes the neighbouring memory of this
// process eligible for huge pages too. It changes nothing unless transparent huge pages are on
// "madvise" (or "always"), and memory already faulted in stays as it is.
inline void advise_huge(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  if (p == nullptr || bytes < kHuge) return;
  const uintptr_t lo = reinterpret_cast<uintptr_t>(p) & ~(kHuge - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + bytes + kHuge - 1) & ~(kHuge - 1);
  madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

// How a call's work is shared. The loop runs in iterations (packing the weights, then one per
// step), with a barrier after each. In an iteration of n participants, participant j owns the j-th
// of n ranges of unit blocks, so with a steady team each keeps its weights in its own caches. The
// helpers are tasks on the thread pool XLA gives the custom call (its intra-op threads, which would
// otherwise spin beside ours; in plain C++, std::threads). A pool thread may start late (asleep, or
// busy with another operation), so the team is elastic: the caller starts at once (after a short
// wait for the helpers), a helper checks in whenever it starts, and the last participant to reach a
// barrier admits those waiting for the next iteration. Every buffer a step reads or writes is
// shared, so the ranges may change from one iteration to the next. A helper that arrives after the
// last barrier leaves untouched; one that never arrives cannot stall the call.
using Task = std::function<void()>;
using Spawn = std::function<void(Task)>;

constexpr auto kFirstWait = std::chrono::microseconds(100);

// A wait's spin-th round: a pause for the first kSpins rounds (a few microseconds: a step's
// participants usually meet within that), then a yield of the core. A participant that shares its
// core with another (more runnable threads than cores: a second process, XLA's own threads) would
// otherwise hold the core for its whole spin every step: with 4000 pauses (about 90 us on this EPYC)
// B = 4, H = 64 steps took 86 us each instead of 6 in some processes.
constexpr int kSpins = 256;

inline void cpu_relax(int spin) {
  if (spin < kSpins) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#endif
  } else {
    std::this_thread::yield();
  }
}

// body(iteration, j, n): participant j of n does its part of the iteration.
using Body = std::function<void(int, int, int)>;

struct Team {
  static constexpr int kClosed = 1 << 30;
  std::atomic<int> arrived{0};   // helpers that checked in (their tickets), | kClosed once the call ends
  std::atomic<int> admitted{0};  // helpers admitted: participants 1..admitted
  std::atomic<int> size{1};      // participants in the current iteration
  std::atomic<int> start{0};     // the iteration the latest admitted helpers start with
  std::atomic<bool> over{false};
  std::atomic<int> finished{0};  // admitted helpers done
  std::atomic<int> count{0};
  std::atomic<int> gen{0};
  int iterations = 0;
  Body body;
  std::thread::id caller = std::this_thread::get_id();

  // The barrier after iteration `it` of `n` participants. The last to arrive admits the helpers that
  // have checked in, for iteration it + 1, before it releases the others.
  void barrier(int it, int n) {
    const int g = gen.load(std::memory_order_acquire);
    if (count.fetch_add(1, std::memory_order_acq_rel) == n - 1) {
      const int a = arrived.load(std::memory_order_acquire) & ~kClosed;
      if (a > admitted.load(std::memory_order_relaxed)) {
        size.store(1 + a, std::memory_order_relaxed);
        start.store(it + 1, std::memory_order_relaxed);
        admitted.store(a, std::memory_order_release);
      }
      count.store(0, std::memory_order_relaxed);
      gen.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int spin = 0; gen.load(std::memory_order_acquire) == g; ++spin) cpu_relax(spin);
  }

  void run(int j, int first) {
    for (int it = first; it < iterations; ++it) {
      const int n = size.load(std::memory_order_acquire);
      body(it, j, n);
      if (it + 1 < iterations) barrier(it, n);
    }
  }

  // A helper: take a ticket unless the call has ended, wait to be admitted, run, report. A task run
  // on the caller's own thread (a pool that runs tasks inline when it cannot schedule them) returns
  // at once: it would wait for an admission that only the caller's progress can bring.
  void help() {
    if (std::this_thread::get_id() == caller) return;
    int t = arrived.load(std::memory_order_acquire);
    do {
      if (t & kClosed) return;
    } while (!arrived.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel));
    for (int spin = 0; admitted.load(std::memory_order_acquire) <= t; ++spin) {
      if (over.load(std::memory_order_acquire)) return;
      cpu_relax(spin);
    }
    run(t + 1, start.load(std::memory_order_acquire));
    finished.fetch_add(1, std::memory_order_release);
  }
};

// Run `iterations` iterations of body with the caller and up to `helpers` spawned tasks.
inline void run_team(int helpers, const Spawn& spawn, int iterations, Body body) {
  auto team = std::make_shared<Team>();
  team->iterations = iterations;
  team->body = std::move(body);
  for (int k = 0; k < helpers; ++k) spawn([team] { team->help(); });
  // Give the helpers a moment to check in, so that they share the first iteration too.
  const auto deadline = std::chrono::steady_clock::now() + kFirstWait;
  for (int spin = 0; (team->arrived.load(std::memory_order_acquire) & ~Team::kClosed) < helpers; ++spin) {
    if ((spin & 63) == 0 && std::chrono::steady_clock::now() > deadline) break;
    cpu_relax(0);
  }
  const int a = team->arrived.load(std::memory_order_acquire) & ~Team::kClosed;
  team->size.store(1 + a, std::memory_order_relaxed);
  team->admitted.store(a, std::memory_order_release);
  team->run(0, 0);
  team->arrived.fetch_or(Team::kClosed, std::memory_order_acq_rel);
  team->over.store(true, std::memory_order_release);
  const int admitted = team->admitted.load(std::memory_order_acquire);
  for (int spin = 0; team->finished.load(std::memory_order_acquire) < admitted; ++spin) cpu_relax(spin);
}

// The participants for a loop whose step does `flops` floating-point operations: one per 150k flops
// of a step (a step ends at a barrier), at most `threads` (the pool's size, or the CPUs this process
// may use). On a 2-core EPYC a second thread made B = 1, H = 256 steps with the inputs projected
// first (524k flops) 1.7x faster (3.9 against 6.5 ms for 256 steps). Below that the gain was smaller
// (B = 4, H = 64, 131k flops: 0.57 against 0.73 ms when calls repeat) and turned into a loss right
// after an XLA program, whose idle pool threads still spin beside the team (1.9 against 1.1 ms), so
// smaller steps run on one thread. JLSTM_NATIVE_THREADS=n asks for n whatever the size.
inline int participants(double flops, int threads) {
  if (const char* env = std::getenv("JLSTM_NATIVE_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  const int by_work = static_cast<int>(std::max(1.0, flops / 1.5e5));
  return std::max(1, std::min(threads, by_work));
}

// Thread j's share [lo, hi) of `blocks` blocks.
inline void share(int blocks, int j, int n, int* lo, int* hi) {
  *lo = static_cast<int>(static_cast<int64_t>(blocks) * j / n);
  *hi = static_cast<int>(static_cast<int64_t>(blocks) * (j + 1) / n);
}

// The CPUs this process may run on.
inline int cpu_count() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// acc[r][v] += Σ_k a[r][k] w[k][v]: MR rows against a packed panel of NV vectors per k. The loop
// order keeps accumulators, operands and one temporary within 16 vector registers: broadcast the
// MR row values first where MR <= NV, else load the NV weight vectors first.
template <int MR, int NV>
inline void tile(vf (&acc)[MR][NV], const float* const* a, int K, const float* w) {
  for (int k = 0; k < K; ++k) {
    const float* wk = w + static_cast<int64_t>(k) * NV * VW;
    if constexpr (MR <= NV) {
      vf s[MR];
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) s[r] = splat(a[r][k]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        vf wv = load(wk + v * VW);
        pin(wv);
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) acc[r][v] += s[r] * wv;
      }
    } else {
      vf wv[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        wv[v] = load(wk + v * VW);
        pin(wv[v]);
      }
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const vf s = splat(a[r][k]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[r][v] += s * wv[v];
      }
    }
  }
}

// z[b0 + r][·] += Σ_k rows[b0 + r][k0 + k] panel[k][·] for r < MR, k < kc: one register tile.
template <int MR, int NV>
inline void row_tile(float* z, int b0, const float* const* rows, int k0, int kc, const float* pk) {
  const float* a[MR];
  vf acc[MR][NV];
  for (int r = 0; r < MR; ++r) {
    a[r] = rows[b0 + r] + k0;
    for (int v = 0; v < NV; ++v) acc[r][v] = load(z + (static_cast<int64_t>(b0 + r) * NV + v) * VW);
  }
  tile<MR, NV>(acc, a, kc, pk);
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) store(z + (static_cast<int64_t>(b0 + r) * NV + v) * VW, acc[r][v]);
}

// z[b][·] += Σ_k rows[b][k] panel[k][·] for all B rows: z is (B, NV·VW), the panel K × NV vectors.
// K is walked in chunks whose panel part (KC × NV vectors, 8 KB) stays in L1 while every row tile
// of the batch reads it; the rows come from L2, the partial sums go through z. The last rows of a
// batch that is not a multiple of MR take narrower tiles (no wasted FMAs at B = 1 or 2). Blocking
// the rows too, 32 at a time, read each weight chunk once per row block: at B = 64, H = 512 the
// forward slowed from 0.95x to 0.65-0.78x XLA's time.
template <int MR, int NV>
inline void panel_product(float* z, int B, const float* const* rows, int K, const float* panel) {
  constexpr int KC = 256 / NV;
  for (int k0 = 0; k0 < K; k0 += KC) {
    const int kc = std::min(KC, K - k0);
    const float* pk = panel + static_cast<int64_t>(k0) * NV * VW;
    for (int b0 = 0; b0 < B; b0 += MR) {
      const int n = std::min(MR, B - b0);
      if (n == MR) {
        row_tile<MR, NV>(z, b0, rows, k0, kc, pk);
      } else if (MR > 2 && n == 2) {
        row_tile<2, NV>(z, b0, rows, k0, kc, pk);
      } else {
        for (int r = 0; r < n; ++r) row_tile<1, NV>(z, b0 + r, rows, k0, kc, pk);
      }
    }
  }
}

// The gate panel of the units [u0, u0 + VW) from rows [k0, k0 + K) of a (·, NG·H) weight of NG gate
// blocks: panel[k][g * VW + l] = w[k0 + k][g * H + u0 + l].
template <int NG>
inline void pack_gates(float* panel, const float* w, int k0, int K, int H, int u0) {
  for (int k = 0; k < K; ++k)
    for (int g = 0; g < NG; ++g)
      std::memcpy(panel + (static_cast<int64_t>(k) * NG + g) * VW,
                  w + static_cast<int64_t>(k0 + k) * NG * H + g * H + u0, VW * sizeof(float));
}

// A participant's working memory: a GEMM's rows of z, and row pointers (up to three operands).
struct Scratch {
  std::vector<float> z;
  std::vector<const float*> a, b, c;
  void size(int B, int vectors) {
    z.resize(static_cast<size_t>(B) * vectors * VW);
    a.resize(B);
    b.resize(B);
    c.resize(B);
  }
};


// The reverse loop of an adjoint, the transpose of a tangent loop whose step reads h_{t-1}'s tangent
// (and, where R = 2H, c_{t-1}'s too) through one GEMM by W [R, G] (G = gates·H; the rows [H, 2H) are
// the cell state's). Hidden units are grouped by kVecs blocks (single blocks for the rest), and
// participants own ranges of groups. Iteration 0 packs each group's panels of Wᵀ (panel[k][l] =
// w[u0 + l][k], and from row H + u0 for the second); iteration 1 + i first finishes h̄ entering step
// t = T - i for the participant's groups, as pass (left by the previous iteration) plus g_drive_t W_hᵀ
// unless step t reset, and (R = 2H) sets extra to g_drive_t W_cᵀ (zero at a reset); then, for step
// t - 1 and each batch row b and unit block of the participant's, cotangents(valid, o, oc, row, hbar,
// pass) forms the gate cotangents into row (g_drive_{t-1}'s [b, u0:], which the next iteration's GEMMs
// read) and the block's pass. valid: the step's mask at b (true without one); o = b·H + u0, the
// block's offset in [B, H] arrays, and oc = (t - 1)·B·H + o in [T, B, H] ones. hbar starts as the
// final state's cotangent and ends as the initial state's; extra (B·H, zeros at the start) ends as
// the cell state's part entering step 0.
template <class Cotangents>
inline void reverse_loop(int T, int B, int H, int R, int G, const float* w, const uint8_t* masks,
                         const uint8_t* resets, float* g_drive, float* hbar, float* extra, int threads,
                         const Spawn& spawn, Cotangents cotangents) {
  const int nb = H / VW, parts = R / H;
  std::vector<std::pair<int, int>> groups;  // (first block, blocks)
  for (int ub = 0; ub < nb;) {
    const int width = nb - ub >= kVecs ? kVecs : 1;
    groups.emplace_back(ub, width);
    ub += width;
  }
  const int ng = static_cast<int>(groups.size());
  const int n = std::min(participants(2.0 * B * G * R, threads), ng);
  const size_t part = static_cast<size_t>(nb) * G * VW;  // one part's panels, all groups
  std::vector<float> packed(parts * part);
  std::vector<float> pass(static_cast<size_t>(B) * H);
  std::vector<Scratch> scratch(n);
  advise_huge(g_drive, sizeof(float) * T * B * G);
  run_team(n - 1, spawn, T + 2, [&](int it, int j, int nt) {
    int lo, hi;
    share(ng, j, nt, &lo, &hi);
    if (lo >= hi) return;
    if (it == 0) {
      for (int gi = lo; gi < hi; ++gi)
        for (int q = 0; q < parts; ++q) {
          const auto [ub, width] = groups[gi];
          float* p = packed.data() + q * part + static_cast<size_t>(ub) * G * VW;
          for (int k = 0; k < G; ++k)
            for (int l = 0; l < width * VW; ++l)
              p[static_cast<size_t>(k) * width * VW + l] = w[static_cast<size_t>(q * H + ub * VW + l) * G + k];
        }
      return;
    }
    const int i = it - 1;
    if (i > 0) {  // h̄ (and the cell state's part) entering step t = T - i, for this participant's groups
      const int t = T - i;
      const uint8_t* rt = resets ? resets + static_cast<size_t>(t) * B : nullptr;
      const float* u = g_drive + static_cast<size_t>(t) * B * G;
      Scratch& sc = scratch[j];
      sc.size(B, kVecs);
      float* z = sc.z.data();
      for (int b = 0; b < B; ++b) sc.a[b] = u + static_cast<size_t>(b) * G;
      for (int gi = lo; gi < hi; ++gi)
        for (int q = 0; q < parts; ++q) {
          const auto [ub, width] = groups[gi];
          const float* p = packed.data() + q * part + static_cast<size_t>(ub) * G * VW;
          std::fill(z, z + static_cast<size_t>(B) * width * VW, 0.0f);
          if (width == kVecs) {
            panel_product<kRows, kVecs>(z, B, sc.a.data(), G, p);
          } else {
            panel_product<kRows, 1>(z, B, sc.a.data(), G, p);
          }
          for (int b = 0; b < B; ++b) {
            const bool reset = rt && rt[b];
            for (int v = 0; v < width; ++v) {
              const size_t o = static_cast<size_t>(b) * H + (ub + v) * VW;
              const vf rec = reset ? splat(0.0f) : load(z + (static_cast<size_t>(b) * width + v) * VW);
              if (q == 0) {
                store(hbar + o, rec + load(pass.data() + o));
              } else {
                store(extra + o, rec);
              }
            }
          }
        }
    }
    if (i < T) {  // the gate cotangents of step T - 1 - i, for this participant's units
      const int t = T - 1 - i;
      const uint8_t* mt = masks ? masks + static_cast<size_t>(t) * B : nullptr;
      const int ub0 = groups[lo].first, ub1 = hi < ng ? groups[hi].first : nb;
      for (int b = 0; b < B; ++b) {
        const bool valid = !mt || mt[b];
        float* row = g_drive + (static_cast<size_t>(t) * B + b) * G;
        for (int ub = ub0; ub < ub1; ++ub) {
          const size_t o = static_cast<size_t>(b) * H + ub * VW;
          cotangents(valid, o, static_cast<size_t>(t) * B * H + o, row + ub * VW, hbar, pass.data());
        }
      }
      fence_out();
    }
  });
}

}  // namespace jlstm_native
