// Fused CPU training kernels for CMT's convolutional parts, norms and attention, on channels-innermost
// (NHWC) rows, and two forward-only inference ones: activation + eval BatchNorm (act_affine), and the 3x3
// depthwise conv with that as its epilogue.
//
// Why they exist: at proxy resolutions (32-64 px) a CMT training step on a CPU is dominated not by its
// matmuls but by BatchNorm, GELU, LayerNorm and depthwise convolutions on maps with awkward channel
// counts (CMT-Ti's hidden widths are 165, 331, 662, 1324; its stage widths 46 and 92), and by per-op
// overhead around attention matrices with a handful of keys. ATen and oneDNN run the former several
// times slower than for a multiple of 16 channels, and each op is its own pass over memory. These kernels
// do "activation + BatchNorm (training statistics)" in two passes forward and two backward, LayerNorm
// over each row, the 3x3 depthwise conv (with its residual) and the k x k stride-k one of the K/V
// reduction directly on NHWC rows, and the whole lightweight attention per query, for any channel count,
// in fp32 or bf16 (bf16 in and out, float arithmetic inside).
//
// Written with ATen's `at::vec::Vectorized` (the abstraction ATen's own CPU kernels use), compiled for the
// CPU capability torch reports, and threaded with `at::parallel_for`. Statistics are accumulated in
// blocks of float and flushed to double, per thread, then reduced in thread order: deterministic for a
// fixed thread count. Every kernel has a PyTorch reference in `scaling/_fused.py`; tests compare them.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
using BF16 = at::BFloat16;
constexpr int64_t kV = Vec::size();
constexpr int64_t kFlushRows = 64;  // float partial sums are flushed to double every this many rows
// Activation codes of act_bn_*: the one definition; scaling/_fused.py reads them from these two lines.
constexpr int64_t kActNone = 0;
constexpr int64_t kActGelu = 1;

// ------------------------------------------------------------------------------- typed loads/stores
// Up to kV values at p as a float vector (missing lanes zero), and back. bf16 converts in registers.

inline Vec load(const float* p, int64_t n) { return n >= kV ? Vec::loadu(p) : Vec::loadu(p, n); }

inline void store(const Vec& v, float* p, int64_t n) {
  if (n >= kV) {
    v.store(p);
  } else {
    v.store(p, n);
  }
}

#if defined(CPU_CAPABILITY_AVX512)
inline Vec load(const BF16* p, int64_t n) {
  const __m256i raw = n >= kV ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                              : _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), p);
  return Vec(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16)));
}

// Round to nearest even, as ATen's conversion. With AVX512-BF16 (built with -mavx512bf16 where the CPU has it)
// one instruction does it; ATen's portable form takes about nine, and the conversion is then a large share of
// a bf16 element-wise kernel: 10-14% of GELU + BN's time on a Zen 4, more where 512-bit work issues on only two
// ports (Intel's server cores). Normal values round identically; inputs below 2^-126 become zero (ATen keeps
// bf16 subnormals), and a NaN keeps its sign and payload (ATen writes 0xFFFF): values no activation here
// produces, and a NaN stays a NaN.
inline void store(const Vec& v, BF16* p, int64_t n) {
#if defined(__AVX512BF16__)
  const __m256i packed = (__m256i)_mm512_cvtneps_pbh(static_cast<__m512>(v));
#else
  const __m256i packed = at::vec::cvtfp32_bf16(static_cast<__m512>(v));
#endif
  if (n >= kV) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), packed);
  } else {
    _mm256_mask_storeu_epi16(p, static_cast<__mmask16>((1u << n) - 1), packed);
  }
}
#else
inline Vec load(const BF16* p, int64_t n) {
  float lanes[kV] = {};
  for (int64_t i = 0; i < std::min(n, kV); ++i) lanes[i] = static_cast<float>(p[i]);
  return Vec::loadu(lanes);
}

inline void store(const Vec& v, BF16* p, int64_t n) {
  float lanes[kV];
  v.store(lanes);
  for (int64_t i = 0; i < std::min(n, kV); ++i) p[i] = static_cast<BF16>(lanes[i]);
}
#endif

// Per-channel sums over rows, threaded: row_fn(r, partial) adds row r's share into `partial` (width floats,
// per thread); the float partials are flushed into per-thread double totals every `flush_every` rows, and
// the totals are added in thread order. Float speed, double accuracy, deterministic for a fixed thread count.
template <typename RowFn>
std::vector<double> sum_over_rows(int64_t rows, int64_t width, int64_t flush_every, const RowFn& row_fn) {
  const int64_t threads = at::get_num_threads();
  std::vector<double> totals(static_cast<size_t>(threads * width), 0.0);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    double* total = totals.data() + static_cast<size_t>(at::get_thread_num()) * width;
    std::vector<float> partial(width, 0.f);
    for (int64_t r = begin; r < end; ++r) {
      row_fn(r, partial.data());
      if ((r - begin) % flush_every == flush_every - 1 || r == end - 1) {
        for (int64_t i = 0; i < width; ++i) {
          total[i] += partial[i];
          partial[i] = 0.f;
        }
      }
    }
  });
  std::vector<double> out(width, 0.0);
  for (int64_t t = 0; t < threads; ++t)
    for (int64_t i = 0; i < width; ++i) out[i] += totals[t * width + i];
  return out;
}

// ------------------------------------------------------------------------------------ GELU pieces
// Exact (erf) GELU and its derivative: y = v * cdf(v), y' = cdf(v) + v * pdf(v). One exponential serves
// both, since erf's Abramowitz-Stegun 7.1.26 form (|error| < 1.5e-7, ATen's own) needs exp(-v^2 / 2) too.
inline void gelu_with_grad(const Vec v, Vec& y, Vec& d) {
  const Vec one(1.0f), half(0.5f);
  const Vec x = v.abs() * Vec(0.70710678118654752f);
  const Vec e = (Vec(-0.5f) * v * v).exp_u20();
  const Vec t = one / at::vec::fmadd(Vec(0.3275911f), x, one);
  Vec r = at::vec::fmadd(Vec(1.061405429f), t, Vec(-1.453152027f));
  r = at::vec::fmadd(r, t, Vec(1.421413741f));
  r = at::vec::fmadd(r, t, Vec(-0.284496736f));
  r = at::vec::fmadd(r, t, Vec(0.254829592f));
  const Vec erf_abs = one - r * t * e;
  const Vec erf = Vec::blendv(erf_abs, Vec(0.f) - erf_abs, v < Vec(0.f));
  const Vec cdf = half * (one + erf);
  y = v * cdf;
  d = at::vec::fmadd(v * Vec(0.39894228040143268f), e, cdf);
}

// GELU alone (inference): erf by an odd rational function, erf(z) ~ z P(z^2) / Q(z^2) for |z| < 3.92,
// P and Q of degree 5, fitted for this project by iteratively reweighted least squares against float64 erf
// (|error| < 4e-7 evaluated in fp32; ATen's Abramowitz-Stegun form has 1.5e-7 plus rounding). Beyond
// that erf is +-1 to fp32 precision (erf(3.92) = 1 - 5e-8), and the tails are set exactly as ATen's
// GELU gives them, v on the right and v * 0 on the left (-0, NaN for -inf): an error of the fit there
// would grow with |v|. It needs no exponential and no sign select: 10 FMAs, a division and ten more
// cheap ops against about 30 for the exponential form gelu_with_grad keeps (it needs exp(-v^2 / 2) for
// the derivative anyway). About 0.6x the time per element (0.54 vs 0.87 ns on one Zen 3 core); CMT-S runs
// about 15M GELUs per 224-px image, more than any other element-wise pass.
inline Vec gelu_value(const Vec v) {
  const Vec bound(3.92f);
  const Vec scaled = v * Vec(0.70710678118654752f);
  const Vec z = at::vec::clamp(scaled, Vec(0.f) - bound, bound);
  const Vec t = z * z;
  Vec p = at::vec::fmadd(Vec(2.166947751902626e-06f), t, Vec(2.8753673541359603e-04f));
  p = at::vec::fmadd(p, t, Vec(3.609697101637721e-03f));
  p = at::vec::fmadd(p, t, Vec(5.2294403314590454e-02f));
  p = at::vec::fmadd(p, t, Vec(1.8595674633979797e-01f));
  p = at::vec::fmadd(p, t, Vec(1.1283791065216064f));
  Vec q = at::vec::fmadd(Vec(3.943634146708064e-05f), t, Vec(1.1360491625964642e-03f));
  q = at::vec::fmadd(q, t, Vec(1.46542489528656e-02f));
  q = at::vec::fmadd(q, t, Vec(1.1239147931337357e-01f));
  q = at::vec::fmadd(q, t, Vec(4.981326758861542e-01f));
  q = at::vec::fmadd(q, t, Vec(1.0f));
  const Vec half_v = Vec(0.5f) * v;
  const Vec inside = at::vec::fmadd(half_v, z * p / q, half_v);
  const Vec right = Vec::blendv(inside, v, scaled >= bound);
  return Vec::blendv(right, v * Vec(0.f), scaled <= Vec(0.f) - bound);
}

// The inference epilogue shared by act_affine and the depthwise conv: act(v) * scale + shift per channel
// (kAffine false: no affine), i.e. an eval-mode BatchNorm after the activation, in registers. The choices
// are template arguments, so that the loops calling it hold no branch and no flag to reload.
template <bool kGelu, bool kAffine>
inline Vec act_affine_value(Vec v, const float* scale, const float* shift, int64_t c, int64_t n) {
  if constexpr (kGelu) v = gelu_value(v);
  if constexpr (kAffine) v = at::vec::fmadd(v, load(scale + c, n), load(shift + c, n));
  return v;
}

// Calls fn(gelu, affine) with each as a std::bool_constant, for the runtime choice (scale nullptr: no affine).
template <typename Fn>
void dispatch_epilogue(bool gelu, const float* scale, const Fn& fn) {
  using yes = std::true_type;
  using no = std::false_type;
  if (gelu) {
    if (scale) fn(yes{}, yes{}); else fn(yes{}, no{});
  } else {
    if (scale) fn(no{}, yes{}); else fn(no{}, no{});
  }
}

// --------------------------------------------------------------------- activation + affine (inference)
// x (M, C) -> out = act(x) * scale + shift: eval-mode "GELU then BatchNorm" in one pass over memory
// instead of two (and one output instead of two), for any channel count. The pointers are copied into
// locals: read through the lambda's captures, they were reloaded after every store (they might alias
// it), which made this pass twice as slow as its arithmetic.
template <typename T, bool kGelu, bool kAffine>
void act_affine_rows(const T* x, T* out, const float* scale, const float* shift, int64_t begin, int64_t end,
                     int64_t C) {
  for (int64_t r = begin; r < end; ++r) {
    const T* src = x + r * C;
    T* dst = out + r * C;
    for (int64_t c = 0; c < C; c += kV) {
      const int64_t n = std::min(kV, C - c);
      store(act_affine_value<kGelu, kAffine>(load(src + c, n), scale, shift, c, n), dst + c, n);
    }
  }
}

template <typename T>
void act_affine_kernel(const T* x, T* out, const float* scale, const float* shift, int64_t M, int64_t C, bool gelu) {
  dispatch_epilogue(gelu, scale, [&](auto with_gelu, auto with_affine) {
    at::parallel_for(0, M, 1, [=](int64_t begin, int64_t end) {
      act_affine_rows<T, decltype(with_gelu)::value, decltype(with_affine)::value>(x, out, scale, shift, begin,
                                                                                   end, C);
    });
  });
}

// --------------------------------------------------------------------- activation + BatchNorm
// a (M, C) -> y = act(a) (saved, with d = act'(a)), batch statistics of y per channel, and
// out = (y - mean) * invstd * weight + bias. `act`: 0 none (y is a itself), 1 GELU.

template <typename T>
void act_bn_forward_kernel(const T* a, T* y, T* d, T* out, const float* weight, const float* bias, int64_t M,
                           int64_t C, double eps, bool gelu, float* mean_out, float* invstd_out, float* running_mean,
                           float* running_var, double factor) {
  // Shift by the first row so E[x^2] - E[x]^2 does not cancel when the mean is large against the spread.
  std::vector<float> shift(C);
  for (int64_t c = 0; c < C; c += kV) {
    const int64_t n = std::min(kV, C - c);
    Vec v = load(a + c, n), dv;
    if (gelu) gelu_with_grad(v, v, dv);
    store(v, shift.data() + c, n);
  }
  const std::vector<double> total = sum_over_rows(M, 2 * C, kFlushRows, [&](int64_t r, float* s1) {
    float* s2 = s1 + C;
    for (int64_t c = 0; c < C; c += kV) {
      const int64_t n = std::min(kV, C - c);
      Vec v = load(a + r * C + c, n);
      if (gelu) {
        // the statistics take the activated value from the register: y is written once, not read back
        Vec dv;
        gelu_with_grad(v, v, dv);
        store(v, y + r * C + c, n);
        store(dv, d + r * C + c, n);
      }
      const Vec centred = v - load(shift.data() + c, n);
      store(load(s1 + c, n) + centred, s1 + c, n);
      store(at::vec::fmadd(centred, centred, load(s2 + c, n)), s2 + c, n);
    }
  });
  std::vector<float> scale(C), offset(C);
  for (int64_t c = 0; c < C; ++c) {
    const double m1 = total[c] / M;
    const double var = std::max(0.0, total[C + c] / M - m1 * m1);
    const double mean = shift[c] + m1;
    const double invstd = 1.0 / std::sqrt(var + eps);
    mean_out[c] = static_cast<float>(mean);
    invstd_out[c] = static_cast<float>(invstd);
    if (running_mean) {  // as nn.BatchNorm2d: the running variance takes the unbiased batch variance
      running_mean[c] = static_cast<float>((1.0 - factor) * running_mean[c] + factor * mean);
      running_var[c] = static_cast<float>((1.0 - factor) * running_var[c] + factor * var * M / (M - 1));
    }
    scale[c] = static_cast<float>(weight[c] * invstd);
    offset[c] = static_cast<float>(bias[c] - mean * weight[c] * invstd);
  }
  const T* src = gelu ? y : a;
  at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t c = 0; c < C; c += kV) {
        const int64_t n = std::min(kV, C - c);
        const Vec v = at::vec::fmadd(load(src + r * C + c, n), load(scale.data() + c, n), load(offset.data() + c, n));
        store(v, out + r * C + c, n);
      }
    }
  });
}

// g (M, C), y, d as saved -> da, dweight, dbias. With xhat = (y - mean) * invstd:
// dy = weight * invstd * (g - mean(g) - xhat * mean(g * xhat)), da = dy * d (GELU) or dy.
template <typename T>
void act_bn_backward_kernel(const T* g, const T* y, const T* d, T* da, const float* mean, const float* invstd,
                            const float* weight, int64_t M, int64_t C, bool gelu, float* dweight, float* dbias) {
  const std::vector<double> total = sum_over_rows(M, 2 * C, kFlushRows, [&](int64_t r, float* s1) {
    float* s2 = s1 + C;
    for (int64_t c = 0; c < C; c += kV) {
      const int64_t n = std::min(kV, C - c);
      const Vec gv = load(g + r * C + c, n);
      store(load(s1 + c, n) + gv, s1 + c, n);
      store(at::vec::fmadd(gv, load(y + r * C + c, n) - load(mean + c, n), load(s2 + c, n)), s2 + c, n);
    }
  });
  std::vector<float> k_scale(C), k_mean_g(C), k_proj(C);
  for (int64_t c = 0; c < C; ++c) {
    const double inv = invstd[c];
    dbias[c] = static_cast<float>(total[c]);
    dweight[c] = static_cast<float>(total[C + c] * inv);
    k_scale[c] = static_cast<float>(weight[c] * inv);
    k_mean_g[c] = static_cast<float>(total[c] / M);
    k_proj[c] = static_cast<float>(total[C + c] / M * inv * inv);
  }
  at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t c = 0; c < C; c += kV) {
        const int64_t n = std::min(kV, C - c);
        const Vec centred = load(y + r * C + c, n) - load(mean + c, n);
        const Vec inner = load(g + r * C + c, n) - load(k_mean_g.data() + c, n) - centred * load(k_proj.data() + c, n);
        Vec dy = inner * load(k_scale.data() + c, n);
        if (gelu) dy = dy * load(d + r * C + c, n);
        store(dy, da + r * C + c, n);
      }
    }
  });
}

// ------------------------------------------------------------------------------------ LayerNorm
// Over the channels of each row of x (M, C): y = (x - mean) * rstd * weight + bias, saving mean and rstd
// per row. ATen's CPU kernel is fast forward but slow backward for the narrow rows of early CMT stages
// (C = 46: 2.3 ms for 16384 rows, about ten passes' worth), and slower still in bf16.

inline Vec tail_zeroed(const Vec& v, int64_t n) { return n >= kV ? v : Vec::set(Vec(0.f), v, n); }

inline float horizontal_sum(const Vec& v) {
  alignas(64) float lanes[kV];
  v.store(lanes);
  float total = 0.f;
  for (int64_t i = 0; i < kV; ++i) total += lanes[i];
  return total;
}

// Rows [begin, end) of the LayerNorm forward. The pointers are this function's parameters, so locals: read
// through a lambda's captures they were reloaded after every store (as act_affine_rows found).
template <typename T>
void layer_norm_rows(const T* x, const float* weight, const float* bias, double eps, T* y, float* mean_out,
                     float* rstd_out, int64_t begin, int64_t end, int64_t C) {
  for (int64_t r = begin; r < end; ++r) {
    const T* xr = x + r * C;
    Vec acc(0.f);
    for (int64_t c = 0; c < C; c += kV) acc = acc + load(xr + c, std::min(kV, C - c));
    const float mean = horizontal_sum(acc) / C;
    Vec sq(0.f);
    for (int64_t c = 0; c < C; c += kV) {
      const int64_t n = std::min(kV, C - c);
      const Vec centred = tail_zeroed(load(xr + c, n) - Vec(mean), n);
      sq = at::vec::fmadd(centred, centred, sq);
    }
    const float rstd = static_cast<float>(1.0 / std::sqrt(static_cast<double>(horizontal_sum(sq)) / C + eps));
    mean_out[r] = mean;
    rstd_out[r] = rstd;
    for (int64_t c = 0; c < C; c += kV) {
      const int64_t n = std::min(kV, C - c);
      const Vec xhat = (load(xr + c, n) - Vec(mean)) * Vec(rstd);
      store(at::vec::fmadd(xhat, load(weight + c, n), load(bias + c, n)), y + r * C + c, n);
    }
  }
}

template <typename T>
void layer_norm_forward_kernel(const T* x, const float* weight, const float* bias, double eps, T* y, float* mean_out,
                               float* rstd_out, int64_t M, int64_t C) {
  at::parallel_for(0, M, 1, [=](int64_t begin, int64_t end) {
    layer_norm_rows(x, weight, bias, eps, y, mean_out, rstd_out, begin, end, C);
  });
}

// With xhat = (x - mean) * rstd and gw = g * weight: dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat)),
// dweight = sum over rows of g * xhat, dbias = sum of g.
template <typename T>
void layer_norm_backward_kernel(const T* g, const T* x, const float* mean, const float* rstd, const float* weight,
                                T* dx, float* dweight, float* dbias, int64_t M, int64_t C) {
  const std::vector<double> total = sum_over_rows(M, 2 * C, kFlushRows, [&](int64_t r, float* s_w) {
    float* s_b = s_w + C;
    const T* gr = g + r * C;
    const T* xr = x + r * C;
    const Vec m(mean[r]), rs(rstd[r]);
    Vec sum_gw(0.f), sum_gw_xhat(0.f);
    for (int64_t c = 0; c < C; c += kV) {
      const int64_t n = std::min(kV, C - c);
      const Vec gv = load(gr + c, n);
      const Vec xhat = tail_zeroed((load(xr + c, n) - m) * rs, n);
      const Vec gw = gv * load(weight + c, n);
      sum_gw = sum_gw + gw;
      sum_gw_xhat = at::vec::fmadd(gw, xhat, sum_gw_xhat);
      store(at::vec::fmadd(gv, xhat, load(s_w + c, n)), s_w + c, n);
      store(load(s_b + c, n) + gv, s_b + c, n);
    }
    const Vec a(horizontal_sum(sum_gw) / C), b(horizontal_sum(sum_gw_xhat) / C);
    for (int64_t c = 0; c < C; c += kV) {
      const int64_t n = std::min(kV, C - c);
      const Vec xhat = (load(xr + c, n) - m) * rs;
      const Vec gw = load(gr + c, n) * load(weight + c, n);
      store(rs * (gw - a - xhat * b), dx + r * C + c, n);
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    dweight[c] = static_cast<float>(total[c]);
    dbias[c] = static_cast<float>(total[C + c]);
  }
}

// --------------------------------------------------------------------- 3x3 depthwise convolution
// x (B, H, W, C), taps (9, C) (tap t = 3 * dy + dx), stride 1, padding 1:
// out[b, h, w] = bias + sum_t taps[t] * x[b, h + dy - 1, w + dx - 1] (+ x[b, h, w] with `residual`).
// The input gradient is the same convolution of g with the taps mirrored; the backward kernel computes it
// and the tap gradients in one pass over the rows, so g and x are read once.

// The three input rows around output row h (nullptr outside the map).
template <typename T>
void neighbour_rows(const T* src, int64_t b, int64_t h, int64_t H, int64_t row, const T* rows[3]) {
  for (int64_t i = 0; i < 3; ++i) {
    const int64_t hh = h + i - 1;
    rows[i] = (hh >= 0 && hh < H) ? src + (b * H + hh) * row : nullptr;
  }
}

// A sliding 3-wide window over one input row (nullptr: a row outside the map), for the channel block at
// c: at output column w it holds the values at w - 1, w and w + 1 (zero outside the map). Moving right
// reuses two of the three, so each input vector is loaded (and, in bf16, converted) once per row instead
// of three times.
template <typename T>
struct RowWindow {
  const T* row;
  int64_t W, C, n;
  Vec left, centre, right;

  RowWindow(const T* row_start, int64_t c, int64_t W_, int64_t C_, int64_t n_)
      : row(row_start ? row_start + c : nullptr), W(W_), C(C_), n(n_) {
    left = Vec(0.f);
    centre = row ? load(row, n) : Vec(0.f);
    right = (row && W > 1) ? load(row + C, n) : Vec(0.f);
  }

  // Shift to output column w + 1, given the window is at w.
  void advance(int64_t w) {
    left = centre;
    centre = right;
    right = (row && w + 2 < W) ? load(row + (w + 2) * C, n) : Vec(0.f);
  }
};

// The taps (9, C) laid out per channel block, (ceil(C / kV), 9, kV), zero-padded: the nine taps of a block
// are then 9 * kV contiguous floats. In the (9, C) layout they sit C floats apart, and for C = 1024 that
// is 4 KiB: the same L1 set for all nine, evicted block after block.
// One copy from any float (9, C) view when C is a multiple of kV (the caller's transposed weight view).
at::Tensor taps_by_block(const at::Tensor& taps) {
  const int64_t C = taps.size(1), blocks = (C + kV - 1) / kV;
  const at::Tensor padded = C == blocks * kV ? taps : at::constant_pad_nd(taps, {0, blocks * kV - C});
  return padded.reshape({9, blocks, kV}).permute({1, 0, 2}).contiguous();
}

// One output pixel's sum at column w for the channel block at c (taps of that block in `tb`), edges
// included: the bias (+ the input itself with `residual`), then the taps that fall inside the map, row by
// row and left to right.
template <typename T>
inline Vec pixel_sum(const T* const rows[3], const float* tb, const Vec base, bool residual, int64_t w, int64_t W,
                     int64_t C, int64_t c, int64_t n) {
  Vec acc = residual ? base + load(rows[1] + w * C + c, n) : base;
  for (int64_t i = 0; i < 3; ++i) {
    if (!rows[i]) continue;
    for (int64_t dx = 0; dx < 3; ++dx) {
      const int64_t column = w + dx - 1;
      if (column >= 0 && column < W)
        acc = at::vec::fmadd(Vec::loadu(tb + (3 * i + dx) * kV), load(rows[i] + column * C + c, n), acc);
    }
  }
  return acc;
}

// Two interior output pixels, w and w + 1, of the channel block at c (n lanes): both neighbours of each
// are inside the row. Inlined into conv_row's two loops, where n is the constant kV for every block but a
// last partial one, so the full blocks take plain loads and stores.
template <typename T, bool kGelu, bool kAffine>
__attribute__((always_inline)) inline void interior_pair(const T* r0, const T* r1, const T* r2, const float* tb,
                                                         const Vec base, bool residual, T* o, int64_t w, int64_t C,
                                                         int64_t c, int64_t n, const float* scale,
                                                         const float* shift) {
  Vec acc0 = residual ? base + load(r1 + w * C + c, n) : base;
  Vec acc1 = residual ? base + load(r1 + (w + 1) * C + c, n) : base;
  const T* const rows[3] = {r0, r1, r2};
  for (int64_t i = 0; i < 3; ++i) {
    if (!rows[i]) continue;
    const T* row = rows[i] + (w - 1) * C + c;
    Vec left = load(row, n), centre = load(row + C, n), right = load(row + 2 * C, n), next = load(row + 3 * C, n);
    const Vec t0 = Vec::loadu(tb + 3 * i * kV), t1 = Vec::loadu(tb + (3 * i + 1) * kV),
              t2 = Vec::loadu(tb + (3 * i + 2) * kV);
    acc0 = at::vec::fmadd(t0, left, acc0);
    acc1 = at::vec::fmadd(t0, centre, acc1);
    acc0 = at::vec::fmadd(t1, centre, acc0);
    acc1 = at::vec::fmadd(t1, right, acc1);
    acc0 = at::vec::fmadd(t2, right, acc0);
    acc1 = at::vec::fmadd(t2, next, acc1);
  }
  store(act_affine_value<kGelu, kAffine>(acc0, scale, shift, c, n), o + w * C + c, n);
  store(act_affine_value<kGelu, kAffine>(acc1, scale, shift, c, n), o + (w + 1) * C + c, n);
}

// One output row, then act(.) * scale + shift (`act_affine_value`); `taps` as `taps_by_block` lays them
// out. Two pixels at a time, and for those the channel blocks in order: each tap and input vector is
// loaded once for the two, and memory is walked in order. The row pointers are locals: read through the
// caller's array, they were reloaded after every store. An earlier version kept a block's nine taps and
// three sliding windows in registers and walked the row one channel block at a time: more than AVX2's 16
// vector registers, and reads C floats apart, which for C = 256 or 1024 fall in the same L1 sets. In
// CMT-S, in one process, this order was 2-10% faster for the whole forward than that one and than four
// pixels at a time. Every pixel sums its taps in pixel_sum's order (the earlier version's), so the
// interior and the edges agree to the bit.
template <typename T, bool kGelu, bool kAffine>
void conv_row(const T* const rows[3], const float* taps, const float* bias, bool residual, T* o, int64_t W,
              int64_t C, const float* scale, const float* shift) {
  const T* const r0 = rows[0];
  const T* const r1 = rows[1];
  const T* const r2 = rows[2];
  const int64_t full = C - C % kV;
  const auto edge = [&](int64_t w) {
    for (int64_t c = 0; c < C; c += kV) {
      const int64_t n = std::min(kV, C - c);
      const Vec base = bias ? load(bias + c, n) : Vec(0.f);
      const Vec acc = pixel_sum(rows, taps + (c / kV) * 9 * kV, base, residual, w, W, C, c, n);
      store(act_affine_value<kGelu, kAffine>(acc, scale, shift, c, n), o + w * C + c, n);
    }
  };
  if (W == 0) return;
  edge(0);
  int64_t w = 1;
  for (; w + 2 < W; w += 2) {  // columns w and w + 1 both have both neighbours
    for (int64_t c = 0; c < full; c += kV) {
      const Vec base = bias ? Vec::loadu(bias + c) : Vec(0.f);
      interior_pair<T, kGelu, kAffine>(r0, r1, r2, taps + (c / kV) * 9 * kV, base, residual, o, w, C, c, kV,
                                       scale, shift);
    }
    if (full < C) {
      const int64_t n = C - full;
      const Vec base = bias ? load(bias + full, n) : Vec(0.f);
      interior_pair<T, kGelu, kAffine>(r0, r1, r2, taps + (full / kV) * 9 * kV, base, residual, o, w, C, full, n,
                                       scale, shift);
    }
  }
  for (; w < W; ++w) edge(w);
}

// Adds one row's contribution to the tap gradients (partial[t * C + c], t < 9) and the bias gradient
// (partial[9 * C + c]); ten accumulators and three row windows per channel block live in registers.
template <typename T>
void tap_grad_row(const T* g, const T* const rows[3], float* partial, int64_t W, int64_t C) {
  for (int64_t c = 0; c < C; c += kV) {
    const int64_t n = std::min(kV, C - c);
    Vec acc[10];
    for (int64_t t = 0; t < 10; ++t) acc[t] = Vec(0.f);
    RowWindow<T> win[3] = {{rows[0], c, W, C, n}, {rows[1], c, W, C, n}, {rows[2], c, W, C, n}};
    for (int64_t w = 0; w < W; ++w) {
      const Vec gv = load(g + w * C + c, n);
      acc[9] = acc[9] + gv;
      for (int64_t i = 0; i < 3; ++i) {
        acc[3 * i] = at::vec::fmadd(gv, win[i].left, acc[3 * i]);
        acc[3 * i + 1] = at::vec::fmadd(gv, win[i].centre, acc[3 * i + 1]);
        acc[3 * i + 2] = at::vec::fmadd(gv, win[i].right, acc[3 * i + 2]);
      }
      for (int64_t i = 0; i < 3; ++i) win[i].advance(w);
    }
    for (int64_t t = 0; t < 10; ++t) {
      float* s = partial + t * C + c;
      store(load(s, n) + acc[t], s, n);
    }
  }
}

template <typename T>
void dwconv3x3_forward_kernel(const T* x, const float* taps, const float* bias, bool residual, T* out, int64_t B,
                              int64_t H, int64_t W, int64_t C, bool gelu, const float* scale, const float* shift) {
  const int64_t row = W * C;
  dispatch_epilogue(gelu, scale, [&](auto with_gelu, auto with_affine) {
    at::parallel_for(0, B * H, 1, [=](int64_t begin, int64_t end) {
      const T* rows[3];
      for (int64_t bh = begin; bh < end; ++bh) {
        neighbour_rows(x, bh / H, bh % H, H, row, rows);
        conv_row<T, decltype(with_gelu)::value, decltype(with_affine)::value>(rows, taps, bias, residual,
                                                                            out + bh * row, W, C, scale, shift);
      }
    });
  });
}

// gx = conv(g, mirrored taps) (+ g with `residual`); dtaps[t, c] = sum of g * shifted x; dbias = sum of g.
template <typename T>
void dwconv3x3_backward_kernel(const T* g, const T* x, const float* mirrored, bool residual, T* gx, float* dtaps,
                               float* dbias, int64_t B, int64_t H, int64_t W, int64_t C) {
  const int64_t row = W * C;
  const int64_t flush_rows = std::max<int64_t>(1, 256 / W);  // float partials hold ~256 positions
  const std::vector<double> total = sum_over_rows(B * H, 10 * C, flush_rows, [&](int64_t bh, float* partial) {
    const int64_t b = bh / H, h = bh % H;
    const T* g_rows[3];
    const T* x_rows[3];
    neighbour_rows(g, b, h, H, row, g_rows);
    neighbour_rows(x, b, h, H, row, x_rows);
    conv_row<T, false, false>(g_rows, mirrored, nullptr, residual, gx + bh * row, W, C, nullptr, nullptr);
    tap_grad_row(g_rows[1], x_rows, partial, W, C);
  });
  for (int64_t i = 0; i < 9 * C; ++i) dtaps[i] = static_cast<float>(total[i]);
  for (int64_t c = 0; c < C; ++c) dbias[c] = static_cast<float>(total[9 * C + c]);
}

// ------------------------------------------------------------ k x k, stride-k depthwise convolution
// The K/V reduction of CMT's attention: each output position is a per-channel weighted sum of one k x k
// patch of x (B, H, W, C), patches not overlapping; taps (k*k, C), tap t = k * u + v. Rows and columns
// past the last whole patch are ignored, as nn.Conv2d does without padding. oneDNN runs this 10-20x
// slower backward in bf16 than in fp32, and neither is fast on odd channel counts.

template <typename T>
void patch_conv_forward_kernel(const T* x, const float* taps, const float* bias, T* out, int64_t B, int64_t H,
                               int64_t W, int64_t C, int64_t k) {
  const int64_t Ho = H / k, Wo = W / k;
  at::parallel_for(0, B * Ho, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bi = begin; bi < end; ++bi) {
      const int64_t b = bi / Ho, i = bi % Ho;
      for (int64_t j = 0; j < Wo; ++j) {
        for (int64_t c = 0; c < C; c += kV) {
          const int64_t n = std::min(kV, C - c);
          Vec acc = bias ? load(bias + c, n) : Vec(0.f);
          for (int64_t u = 0; u < k; ++u) {
            const T* xr = x + ((b * H + i * k + u) * W + j * k) * C + c;
            for (int64_t v = 0; v < k; ++v) {
              acc = at::vec::fmadd(load(taps + (u * k + v) * C + c, n), load(xr + v * C, n), acc);
            }
          }
          store(acc, out + (bi * Wo + j) * C + c, n);
        }
      }
    }
  });
}

// dx at a patch position = tap * g of its output (zero outside whole patches); dtaps[t, c] = sum of g * x at
// tap t; dbias = sum of g.
template <typename T>
void patch_conv_backward_kernel(const T* g, const T* x, const float* taps, T* dx, float* dtaps, float* dbias,
                                int64_t B, int64_t H, int64_t W, int64_t C, int64_t k) {
  const int64_t Ho = H / k, Wo = W / k, kk = k * k;
  const std::vector<double> total = sum_over_rows(B * Ho, (kk + 1) * C, kFlushRows, [&](int64_t bi, float* partial) {
    const int64_t b = bi / Ho, i = bi % Ho;
    for (int64_t j = 0; j < Wo; ++j) {
      for (int64_t c = 0; c < C; c += kV) {
        const int64_t n = std::min(kV, C - c);
        const Vec gv = load(g + (bi * Wo + j) * C + c, n);
        store(load(partial + kk * C + c, n) + gv, partial + kk * C + c, n);
        for (int64_t u = 0; u < k; ++u) {
          const int64_t at_row = ((b * H + i * k + u) * W + j * k) * C + c;
          for (int64_t v = 0; v < k; ++v) {
            float* s = partial + (u * k + v) * C + c;
            store(at::vec::fmadd(gv, load(x + at_row + v * C, n), load(s, n)), s, n);
            store(gv * load(taps + (u * k + v) * C + c, n), dx + at_row + v * C, n);
          }
        }
      }
    }
  });
  for (int64_t t = 0; t < kk * C; ++t) dtaps[t] = static_cast<float>(total[t]);
  for (int64_t c = 0; c < C; ++c) dbias[c] = static_cast<float>(total[kk * C + c]);
}

// ------------------------------------------------------------------------ lightweight attention
// CMT's attention has few keys (the K/V map is the query map shrunk k-fold: 1-64 keys at proxy
// resolutions), so each query's work is a handful of length-d dot products and axpys, and ATen's path
// (transposes, batched matmuls of 16x4 matrices, a separate softmax, an fp32 upcast under bf16) is all
// overhead. This computes, for every batch b, query n and head i, straight on the projection outputs:
//   p = softmax(scale * q[b, n, i] . k[b, :, i] + bias[i, n, :]),   out[b, n, i] = sum_m p[m] v[b, m, i]
// with q (B, N, h*d), k and v (B, M, h*d) rows, head i in columns [i*d, (i+1)*d), bias (h, N, M) float.
// The probabilities (B, h, N, M, float) are saved for the backward.

// Dot product of two length-d rows (float accumulation).
template <typename T>
inline float row_dot(const T* a, const T* b, int64_t d) {
  Vec acc(0.f);
  for (int64_t c = 0; c < d; c += kV) {
    const int64_t n = std::min(kV, d - c);
    acc = at::vec::fmadd(load(a + c, n), load(b + c, n), acc);  // missing lanes load as zero
  }
  return horizontal_sum(acc);
}

template <typename T>
void attention_forward_kernel(const T* q, const T* k, const T* v, const float* bias, float scale, T* out, float* probs,
                              int64_t B, int64_t N, int64_t M, int64_t heads, int64_t d) {
  const int64_t C = heads * d;
  at::parallel_for(0, B * N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bn = begin; bn < end; ++bn) {
      const int64_t b = bn / N, n = bn % N;
      for (int64_t i = 0; i < heads; ++i) {
        const T* qv = q + bn * C + i * d;
        float* p = probs + ((b * heads + i) * N + n) * M;
        const float* bias_row = bias + (i * N + n) * M;
        float top = -INFINITY;
        for (int64_t m = 0; m < M; ++m) {
          p[m] = scale * row_dot(qv, k + (b * M + m) * C + i * d, d) + bias_row[m];
          top = std::max(top, p[m]);
        }
        float total = 0.f;
        for (int64_t m = 0; m < M; ++m) {
          p[m] = std::exp(p[m] - top);
          total += p[m];
        }
        const float inv = 1.f / total;
        for (int64_t m = 0; m < M; ++m) p[m] *= inv;
        T* o = out + bn * C + i * d;
        for (int64_t c = 0; c < d; c += kV) {
          const int64_t n_lanes = std::min(kV, d - c);
          Vec acc(0.f);
          for (int64_t m = 0; m < M; ++m) {
            acc = at::vec::fmadd(Vec(p[m]), load(v + (b * M + m) * C + i * d + c, n_lanes), acc);
          }
          store(acc, o + c, n_lanes);
        }
      }
    }
  });
}

// Inference (no probabilities kept): the same softmax attention, as small GEMMs in registers. Per image and
// head the keys are laid out transposed, kt[c][m] (float, zero-padded to a multiple of kBlock vectors), and
// the values as vf[m][c] (float, padded likewise). A query's logits are then d broadcast FMAs into kBlock
// vectors of keys at a time (no horizontal sum per key, as the training kernel's row_dot has), its softmax
// runs on those vectors, and its output is M broadcast FMAs into kBlock vectors of channels, divided by the
// softmax's sum at the end. With M = 49 keys and d = 64 (every CMT stage at 224 px), that is 4 (AVX-512)
// or 8 (AVX2) vectors per row: where ATen's explicit path runs a scale, two bmm, an add, a softmax and a
// transpose copy per block, with their dispatch and memory passes (benchmarks/RESULTS.md).
constexpr int64_t kBlock = 4;  // vectors per register block
constexpr int64_t kBlockLanes = kBlock * kV;

inline int64_t padded_to_block(int64_t n) { return (n + kBlockLanes - 1) / kBlockLanes * kBlockLanes; }

// Where key or value row m of image b starts: rows of `row` elements apart, images `image` apart. A row
// stride above C reads keys and values straight out of a merged (B, M, 2C) projection (`fuse_for_inference`
// runs the K and V projections as one GEMM) without copying them apart first.
struct RowLayout {
  int64_t image, row;
};

// kt (B*heads, d, Mp) and vf (B*heads, M, dp) from k and v rows (B, M, heads*d) laid out as `kl` and `vl`, as
// float; the padding is left as the caller's zero-initialised buffers have it.
template <typename T>
void attention_operands(const T* k, const T* v, RowLayout kl, RowLayout vl, float* kt, float* vf, int64_t B,
                        int64_t M, int64_t heads, int64_t d, int64_t Mp, int64_t dp) {
  at::parallel_for(0, B * heads, 1, [=](int64_t begin, int64_t end) {
    for (int64_t bi = begin; bi < end; ++bi) {
      const int64_t b = bi / heads, i = bi % heads;
      float* kt_head = kt + bi * d * Mp;
      float* vf_head = vf + bi * M * dp;
      for (int64_t m = 0; m < M; ++m) {
        const T* k_row = k + b * kl.image + m * kl.row + i * d;
        const T* v_row = v + b * vl.image + m * vl.row + i * d;
        float* vf_row = vf_head + m * dp;
        for (int64_t c = 0; c < d; ++c) {
          kt_head[c * Mp + m] = static_cast<float>(k_row[c]);
          vf_row[c] = static_cast<float>(v_row[c]);
        }
      }
    }
  });
}

// acc[r][u] += scalars[r * scalar_stride + j] * rows[j * row_stride + u * kV .. + kV) for j < count: R rows of
// kBlock vectors, each loaded vector shared by the R rows. Both products of the attention are this: the
// logits (scalars the queries' channels, rows the transposed keys) and the output (scalars the
// probabilities, rows the values).
template <int64_t R>
inline void broadcast_fma_block(const float* scalars, int64_t scalar_stride, const float* rows, int64_t row_stride,
                                int64_t count, Vec (&acc)[R][kBlock]) {
  for (int64_t j = 0; j < count; ++j) {
    Vec operands[kBlock];
    for (int64_t u = 0; u < kBlock; ++u) operands[u] = Vec::loadu(rows + j * row_stride + u * kV);
    for (int64_t r = 0; r < R; ++r) {
      const Vec scalar(scalars[r * scalar_stride + j]);
      for (int64_t u = 0; u < kBlock; ++u) acc[r][u] = at::vec::fmadd(scalar, operands[u], acc[r][u]);
    }
  }
}

// R query rows of one head (q_rows C apart, their bias rows M apart, outputs C apart): out = softmax(scale *
// q . kt + bias) vf. R rows at once give R * kBlock independent sums (one row's kBlock alone wait on the
// FMA latency) and share each loaded key and value vector. `qf` (R * d floats) and `logits` (R * Mp
// floats) are the caller's scratch.
template <int64_t R, typename T>
inline void attention_rows(const T* q, int64_t C, const float* kt, const float* vf, const float* bias, float scale,
                           T* out, int64_t M, int64_t d, int64_t Mp, int64_t dp, float* qf, float* logits) {
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t c = 0; c < d; c += kV) {
      const int64_t n = std::min(kV, d - c);
      store(load(q + r * C + c, n) * Vec(scale), qf + r * d + c, n);  // (q * scale) . k, as the module has it
    }
  }
  for (int64_t m0 = 0; m0 < Mp; m0 += kBlockLanes) {
    Vec acc[R][kBlock];
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t u = 0; u < kBlock; ++u) {
        const int64_t m = m0 + u * kV;
        acc[r][u] = m < M ? load(bias + r * M + m, std::min(kV, M - m)) : Vec(0.f);
      }
    }
    broadcast_fma_block<R>(qf, d, kt + m0, Mp, d, acc);  // logits += q[c] * kt[c] over the channels
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t u = 0; u < kBlock; ++u) {
        const int64_t m = m0 + u * kV;
        if (m + kV > M) acc[r][u] = m < M ? Vec::set(Vec(-INFINITY), acc[r][u], M - m) : Vec(-INFINITY);  // no key
        acc[r][u].store(logits + r * Mp + m);
      }
    }
  }
  float inv[R];
  for (int64_t r = 0; r < R; ++r) {
    float* row = logits + r * Mp;
    const Vec peak(at::vec::reduce_all<float>([](const Vec& a, const Vec& b) { return at::vec::maximum(a, b); },
                                              row, Mp));
    Vec total(0.f);
    for (int64_t m = 0; m < Mp; m += kV) {
      const Vec e = (Vec::loadu(row + m) - peak).exp();
      e.store(row + m);
      total = total + e;
    }
    inv[r] = 1.f / horizontal_sum(total);
  }
  for (int64_t c0 = 0; c0 < dp; c0 += kBlockLanes) {
    Vec acc[R][kBlock];
    for (int64_t r = 0; r < R; ++r)
      for (int64_t u = 0; u < kBlock; ++u) acc[r][u] = Vec(0.f);
    broadcast_fma_block<R>(logits, Mp, vf + c0, dp, M, acc);  // out += p[m] * vf[m] over the keys
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t u = 0; u < kBlock; ++u) {
        const int64_t c = c0 + u * kV;
        if (c < d) store(acc[r][u] * Vec(inv[r]), out + r * C + c, std::min(kV, d - c));
      }
    }
  }
}

// Rows handled together: as many as keep R * kBlock sums and kBlock operands in the vector registers (32
// with AVX-512, 16 with AVX2).
constexpr int64_t kRowsAtOnce = kV >= 16 ? 4 : 2;

template <typename T>
void attention_inference_kernel(const T* q, const T* k, const T* v, RowLayout kl, RowLayout vl, const float* bias,
                                float scale, T* out, int64_t B, int64_t N, int64_t M, int64_t heads, int64_t d) {
  const int64_t C = heads * d, Mp = padded_to_block(M), dp = padded_to_block(d);
  std::vector<float> kt(B * heads * d * Mp), vf(B * heads * M * dp);  // zero-initialised: the padding
  attention_operands(k, v, kl, vl, kt.data(), vf.data(), B, M, heads, d, Mp, dp);
  const float* kt_all = kt.data();
  const float* vf_all = vf.data();
  const int64_t tiles = (N + kRowsAtOnce - 1) / kRowsAtOnce;  // per image
  at::parallel_for(0, B * tiles, 4, [=](int64_t begin, int64_t end) {
    std::vector<float> scratch(kRowsAtOnce * (d + Mp));
    float* qf = scratch.data();
    float* logits = qf + kRowsAtOnce * d;
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / tiles, n0 = (bt % tiles) * kRowsAtOnce;
      const int64_t rows = std::min(kRowsAtOnce, N - n0);
      for (int64_t i = 0; i < heads; ++i) {
        const int64_t bi = b * heads + i;
        const auto rows_from = [&](auto count, int64_t n) {  // count rows from query n of image b, head i
          const int64_t bn = b * N + n;
          attention_rows<decltype(count)::value>(q + bn * C + i * d, C, kt_all + bi * d * Mp, vf_all + bi * M * dp,
                                                 bias + (i * N + n) * M, scale, out + bn * C + i * d, M, d, Mp, dp,
                                                 qf, logits);
        };
        if (rows == kRowsAtOnce) {
          rows_from(std::integral_constant<int64_t, kRowsAtOnce>{}, n0);
        } else {  // the image's last, partial tile: row by row
          for (int64_t n = n0; n < n0 + rows; ++n) rows_from(std::integral_constant<int64_t, 1>{}, n);
        }
      }
    }
  });
}

// With dp[m] = g . v[m] and dl = p * (dp - sum_m p dp): dq = scale * sum_m dl[m] k[m], dk[m] += scale * dl[m] q,
// dv[m] += p[m] g, dbias[i, n, m] = sum over b of dl[m]. Threads split the batch, so each thread owns the
// dk and dv rows of its images (accumulated in float scratch) and a float share of dbias, added up in
// thread order: deterministic for a fixed thread count.
template <typename T>
void attention_backward_kernel(const T* g, const T* q, const T* k, const T* v, const float* probs, float scale, T* dq,
                               T* dk, T* dv, float* dbias, int64_t B, int64_t N, int64_t M, int64_t heads, int64_t d) {
  const int64_t C = heads * d;
  const int64_t bias_size = heads * N * M;
  // parallel_for hands out at most one chunk of images per thread, so at most min(threads, B) shares.
  const int64_t shares = std::min<int64_t>(at::get_num_threads(), B);
  std::vector<float> bias_parts(static_cast<size_t>(shares * bias_size), 0.f);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    float* bias_part = bias_parts.data() + static_cast<size_t>(at::get_thread_num()) * bias_size;
    std::vector<float> dk_acc(M * C), dv_acc(M * C), dl(M);
    for (int64_t b = begin; b < end; ++b) {
      std::fill(dk_acc.begin(), dk_acc.end(), 0.f);
      std::fill(dv_acc.begin(), dv_acc.end(), 0.f);
      for (int64_t n = 0; n < N; ++n) {
        const int64_t bn = b * N + n;
        for (int64_t i = 0; i < heads; ++i) {
          const T* gv = g + bn * C + i * d;
          const T* qv = q + bn * C + i * d;
          const float* p = probs + ((b * heads + i) * N + n) * M;
          float weighted = 0.f;
          for (int64_t m = 0; m < M; ++m) {
            dl[m] = row_dot(gv, v + (b * M + m) * C + i * d, d);
            weighted += p[m] * dl[m];
          }
          float* bias_row = bias_part + (i * N + n) * M;
          for (int64_t m = 0; m < M; ++m) {
            dl[m] = p[m] * (dl[m] - weighted);
            bias_row[m] += dl[m];
          }
          for (int64_t c = 0; c < d; c += kV) {
            const int64_t n_lanes = std::min(kV, d - c);
            const Vec gc = load(gv + c, n_lanes), qc = load(qv + c, n_lanes);
            Vec dq_c(0.f);
            for (int64_t m = 0; m < M; ++m) {
              const int64_t at_m = m * C + i * d + c;
              dq_c = at::vec::fmadd(Vec(dl[m]), load(k + (b * M + m) * C + i * d + c, n_lanes), dq_c);
              float* dk_m = dk_acc.data() + at_m;
              store(at::vec::fmadd(Vec(scale * dl[m]), qc, load(dk_m, n_lanes)), dk_m, n_lanes);
              store(at::vec::fmadd(Vec(p[m]), gc, load(dv_acc.data() + at_m, n_lanes)), dv_acc.data() + at_m, n_lanes);
            }
            store(dq_c * Vec(scale), dq + bn * C + i * d + c, n_lanes);
          }
        }
      }
      for (int64_t j = 0; j < M * C; j += kV) {
        const int64_t n_lanes = std::min(kV, M * C - j);
        store(load(dk_acc.data() + j, n_lanes), dk + b * M * C + j, n_lanes);
        store(load(dv_acc.data() + j, n_lanes), dv + b * M * C + j, n_lanes);
      }
    }
  });
  at::parallel_for(0, bias_size, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      double total = 0.0;
      for (int64_t t = 0; t < shares; ++t) total += bias_parts[t * bias_size + j];
      dbias[j] = static_cast<float>(total);
    }
  });
}

// ------------------------------------------------------------------------------------ op entries

void check_rows(const at::Tensor& t, int64_t dims, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), what, ": expected a CPU tensor");
  TORCH_CHECK(t.dim() == dims && t.is_contiguous(), what, ": expected a contiguous ", dims, "-d tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, what,
              ": expected float32 or bfloat16, got ", t.scalar_type());
}

// An incoming gradient in the dtype, shape and contiguous layout of the tensor it belongs to.
at::Tensor like(const at::Tensor& grad, const at::Tensor& of) {
  return grad.to(of.scalar_type()).contiguous().view(of.sizes());
}

// Calls fn with a value of the element type of t (float or bf16, which check_rows has ensured).
template <typename Fn>
void dispatch_float_or_bf16(const at::Tensor& t, const Fn& fn) {
  if (t.scalar_type() == at::kBFloat16) {
    fn(BF16{});
  } else {
    fn(float{});
  }
}

// t as float, checked to hold n values, in t's own layout: t itself when it is float already, without even a
// dispatched no-op (`to` and `detach` cost about a microsecond each, and a forward makes hundreds of these
// calls; no autograd runs below a kernel, so the parameters need no detaching).
at::Tensor checked_float(const at::Tensor& t, int64_t n, const char* what) {
  TORCH_CHECK(t.numel() == n, what, ": expected ", n, " values, got ", t.numel());
  return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat);
}

at::Tensor as_float_vector(const at::Tensor& t, int64_t n, const char* what) {
  return checked_float(t, n, what).contiguous();
}

// An uninitialised float32 tensor on t's device: statistics and parameter gradients stay float in bf16.
at::Tensor float_empty(const at::Tensor& t, at::IntArrayRef sizes) {
  return at::empty(sizes, t.options().dtype(at::kFloat));
}

// An optional bias as float32 (undefined when absent).
at::Tensor optional_float_vector(const std::optional<at::Tensor>& bias, int64_t n, const char* what) {
  return (bias.has_value() && bias->defined()) ? as_float_vector(*bias, n, what) : at::Tensor();
}

std::vector<at::Tensor> act_bn_forward(const at::Tensor& a, const at::Tensor& weight, const at::Tensor& bias,
                                       const std::optional<at::Tensor>& running_mean,
                                       const std::optional<at::Tensor>& running_var, double factor, double eps,
                                       int64_t act) {
  check_rows(a, 2, "act_bn_forward");
  const int64_t M = a.size(0), C = a.size(1);
  TORCH_CHECK(M > 1, "act_bn_forward: batch statistics need more than one value per channel");
  TORCH_CHECK(act == kActNone || act == kActGelu, "unknown activation code ", act);
  const bool gelu = act == kActGelu;
  const at::Tensor w = as_float_vector(weight, C, "act_bn_forward weight");
  const at::Tensor b = as_float_vector(bias, C, "act_bn_forward bias");
  float* rm = nullptr;
  float* rv = nullptr;
  if (running_mean.has_value() && running_mean->defined()) {
    for (const at::Tensor* t : {&*running_mean, &*running_var}) {
      TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == C,
                  "act_bn_forward: running statistics must be contiguous float32 vectors of ", C);
    }
    rm = running_mean->data_ptr<float>();
    rv = running_var->data_ptr<float>();
  }
  at::Tensor out = at::empty_like(a);
  at::Tensor y = gelu ? at::empty_like(a) : a;
  at::Tensor d = gelu ? at::empty_like(a) : at::empty({0}, a.options());
  at::Tensor mean = float_empty(a, {C}), invstd = float_empty(a, {C});
  dispatch_float_or_bf16(a, [&](auto tag) {
    using scalar_t = decltype(tag);
    act_bn_forward_kernel<scalar_t>(a.const_data_ptr<scalar_t>(), gelu ? y.data_ptr<scalar_t>() : nullptr,
                                    gelu ? d.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(),
                                    w.const_data_ptr<float>(), b.const_data_ptr<float>(), M, C, eps, gelu,
                                    mean.data_ptr<float>(), invstd.data_ptr<float>(), rm, rv, factor);
  });
  return {out, y, d, mean, invstd};
}

std::vector<at::Tensor> act_bn_backward(const at::Tensor& grad, const at::Tensor& y, const at::Tensor& d,
                                        const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& weight,
                                        int64_t act) {
  check_rows(y, 2, "act_bn_backward");
  const int64_t M = y.size(0), C = y.size(1);
  TORCH_CHECK(act == kActNone || act == kActGelu, "unknown activation code ", act);
  const bool gelu = act == kActGelu;
  const at::Tensor g = like(grad, y);
  const at::Tensor w = as_float_vector(weight, C, "act_bn_backward weight");
  at::Tensor da = at::empty_like(y);
  at::Tensor dweight = float_empty(y, {C}), dbias = float_empty(y, {C});
  dispatch_float_or_bf16(y, [&](auto tag) {
    using scalar_t = decltype(tag);
    act_bn_backward_kernel<scalar_t>(g.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
                                     gelu ? d.const_data_ptr<scalar_t>() : nullptr, da.data_ptr<scalar_t>(),
                                     mean.const_data_ptr<float>(), invstd.const_data_ptr<float>(),
                                     w.const_data_ptr<float>(), M, C, gelu, dweight.data_ptr<float>(),
                                     dbias.data_ptr<float>());
  });
  return {da, dweight, dbias};
}

// act(x) * scale + shift per channel of x (M, C) into out (which may be x itself); no affine without a scale.
void act_affine_into(const at::Tensor& x, at::Tensor& out, const std::optional<at::Tensor>& scale,
                     const std::optional<at::Tensor>& shift, int64_t act, const char* what) {
  check_rows(x, 2, what);
  const int64_t M = x.size(0), C = x.size(1);
  TORCH_CHECK(act == kActNone || act == kActGelu, "unknown activation code ", act);
  TORCH_CHECK(scale.has_value() == shift.has_value(), what, ": scale and shift come together");
  const at::Tensor s = optional_float_vector(scale, C, "act_affine scale");
  const at::Tensor b = optional_float_vector(shift, C, "act_affine shift");
  dispatch_float_or_bf16(x, [&](auto tag) {
    using scalar_t = decltype(tag);
    act_affine_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                s.defined() ? s.const_data_ptr<float>() : nullptr,
                                b.defined() ? b.const_data_ptr<float>() : nullptr, M, C, act == kActGelu);
  });
}

at::Tensor act_affine(const at::Tensor& x, const std::optional<at::Tensor>& scale,
                      const std::optional<at::Tensor>& shift, int64_t act) {
  at::Tensor out = at::empty_like(x);
  act_affine_into(x, out, scale, shift, act, "act_affine");
  return out;
}

// In place: for a map no one else holds (a convolution's fresh output), no new allocation and one stream
// over memory instead of a read stream and a write stream.
at::Tensor& act_affine_(at::Tensor& x, const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                        int64_t act) {
  act_affine_into(x, x, scale, shift, act, "act_affine_");
  return x;
}

// An eval-mode BatchNorm's per-channel scale = weight / sqrt(running_var + eps) and shift = bias -
// running_mean * scale, in float32: one call where the same in tensor ops was five (about 25 us a BN, 100
// BNs in a CMT-S forward).
std::vector<at::Tensor> bn_eval_affine(const at::Tensor& running_mean, const at::Tensor& running_var,
                                       const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                       double eps) {
  const int64_t C = running_mean.numel();
  const at::Tensor mean = as_float_vector(running_mean, C, "bn_eval_affine running_mean");
  const at::Tensor var = as_float_vector(running_var, C, "bn_eval_affine running_var");
  const at::Tensor w = optional_float_vector(weight, C, "bn_eval_affine weight");
  const at::Tensor b = optional_float_vector(bias, C, "bn_eval_affine bias");
  at::Tensor scale = at::empty({C}, mean.options()), shift = at::empty({C}, mean.options());
  const float* m = mean.const_data_ptr<float>();
  const float* v = var.const_data_ptr<float>();
  const float* wp = w.defined() ? w.const_data_ptr<float>() : nullptr;
  const float* bp = b.defined() ? b.const_data_ptr<float>() : nullptr;
  float* sc = scale.data_ptr<float>();
  float* sh = shift.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    sc[c] = (wp ? wp[c] : 1.f) / std::sqrt(v[c] + static_cast<float>(eps));
    sh[c] = (bp ? bp[c] : 0.f) - m[c] * sc[c];
  }
  return {scale, shift};
}

// The 3x3 depthwise conv, optionally followed (inference) by act(.) * scale + shift in the same pass.
at::Tensor dwconv3x3_forward(const at::Tensor& x, const at::Tensor& taps, const std::optional<at::Tensor>& bias,
                             bool residual, int64_t act, const std::optional<at::Tensor>& scale,
                             const std::optional<at::Tensor>& shift) {
  check_rows(x, 4, "dwconv3x3_forward");
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  TORCH_CHECK(act == kActNone || act == kActGelu, "unknown activation code ", act);
  const at::Tensor t = taps_by_block(checked_float(taps, 9 * C, "dwconv3x3_forward taps").reshape({9, C}));
  const at::Tensor b = optional_float_vector(bias, C, "dwconv3x3_forward bias");
  const at::Tensor s = optional_float_vector(scale, C, "dwconv3x3_forward scale");
  const at::Tensor sh = optional_float_vector(shift, C, "dwconv3x3_forward shift");
  TORCH_CHECK(s.defined() == sh.defined(), "dwconv3x3_forward: scale and shift come together");
  at::Tensor out = at::empty_like(x);
  dispatch_float_or_bf16(x, [&](auto tag) {
    using scalar_t = decltype(tag);
    dwconv3x3_forward_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), t.const_data_ptr<float>(),
                                       b.defined() ? b.const_data_ptr<float>() : nullptr, residual,
                                       out.data_ptr<scalar_t>(), B, H, W, C, act == kActGelu,
                                       s.defined() ? s.const_data_ptr<float>() : nullptr,
                                       sh.defined() ? sh.const_data_ptr<float>() : nullptr);
  });
  return out;
}

std::vector<at::Tensor> dwconv3x3_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& taps,
                                           bool residual) {
  check_rows(x, 4, "dwconv3x3_backward");
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const at::Tensor g = like(grad, x);
  // The input gradient: the same convolution with the 3x3 taps mirrored (tap t -> 8 - t), no bias.
  const at::Tensor taps_9c = checked_float(taps, 9 * C, "dwconv3x3_backward taps").reshape({9, C});
  const at::Tensor mirrored = taps_by_block(taps_9c.flip(0));
  at::Tensor gx = at::empty_like(x);
  at::Tensor dtaps = float_empty(x, {9, C}), dbias = float_empty(x, {C});
  dispatch_float_or_bf16(x, [&](auto tag) {
    using scalar_t = decltype(tag);
    dwconv3x3_backward_kernel<scalar_t>(g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                        mirrored.const_data_ptr<float>(), residual, gx.data_ptr<scalar_t>(),
                                        dtaps.data_ptr<float>(), dbias.data_ptr<float>(), B, H, W, C);
  });
  return {gx, dtaps, dbias};
}

std::vector<at::Tensor> layer_norm_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                           double eps) {
  check_rows(x, 2, "layer_norm_forward");
  const int64_t M = x.size(0), C = x.size(1);
  const at::Tensor w = as_float_vector(weight, C, "layer_norm_forward weight");
  const at::Tensor b = as_float_vector(bias, C, "layer_norm_forward bias");
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = float_empty(x, {M}), rstd = float_empty(x, {M});
  dispatch_float_or_bf16(x, [&](auto tag) {
    using scalar_t = decltype(tag);
    layer_norm_forward_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), w.const_data_ptr<float>(),
                                        b.const_data_ptr<float>(), eps, y.data_ptr<scalar_t>(),
                                        mean.data_ptr<float>(), rstd.data_ptr<float>(), M, C);
  });
  return {y, mean, rstd};
}

std::vector<at::Tensor> layer_norm_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean,
                                            const at::Tensor& rstd, const at::Tensor& weight) {
  check_rows(x, 2, "layer_norm_backward");
  const int64_t M = x.size(0), C = x.size(1);
  const at::Tensor g = like(grad, x);
  const at::Tensor w = as_float_vector(weight, C, "layer_norm_backward weight");
  at::Tensor dx = at::empty_like(x);
  at::Tensor dweight = float_empty(x, {C}), dbias = float_empty(x, {C});
  dispatch_float_or_bf16(x, [&](auto tag) {
    using scalar_t = decltype(tag);
    layer_norm_backward_kernel<scalar_t>(g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                         mean.const_data_ptr<float>(), rstd.const_data_ptr<float>(),
                                         w.const_data_ptr<float>(), dx.data_ptr<scalar_t>(),
                                         dweight.data_ptr<float>(), dbias.data_ptr<float>(), M, C);
  });
  return {dx, dweight, dbias};
}

at::Tensor patch_conv_forward(const at::Tensor& x, const at::Tensor& taps, const std::optional<at::Tensor>& bias,
                              int64_t k) {
  check_rows(x, 4, "patch_conv_forward");
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  TORCH_CHECK(k >= 1 && H >= k && W >= k, "patch_conv_forward: a ", k, "x", k, " patch does not fit a ", H, "x", W,
              " map");
  const at::Tensor t = as_float_vector(taps, k * k * C, "patch_conv_forward taps");
  const at::Tensor b = optional_float_vector(bias, C, "patch_conv_forward bias");
  at::Tensor out = at::empty({B, H / k, W / k, C}, x.options());
  dispatch_float_or_bf16(x, [&](auto tag) {
    using scalar_t = decltype(tag);
    patch_conv_forward_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), t.const_data_ptr<float>(),
                                        b.defined() ? b.const_data_ptr<float>() : nullptr, out.data_ptr<scalar_t>(),
                                        B, H, W, C, k);
  });
  return out;
}

std::vector<at::Tensor> patch_conv_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& taps,
                                            int64_t k) {
  check_rows(x, 4, "patch_conv_backward");
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const at::Tensor g = grad.to(x.scalar_type()).contiguous();
  TORCH_CHECK(g.dim() == 4 && g.size(0) == B && g.size(1) == H / k && g.size(2) == W / k && g.size(3) == C,
              "patch_conv_backward: the gradient does not match the forward's output");
  const at::Tensor t = as_float_vector(taps, k * k * C, "patch_conv_backward taps");
  // Positions past the last whole patch get no gradient; only then does dx need zeroing first.
  at::Tensor dx = (H % k || W % k) ? at::zeros_like(x) : at::empty_like(x);
  at::Tensor dtaps = float_empty(x, {k * k, C}), dbias = float_empty(x, {C});
  dispatch_float_or_bf16(x, [&](auto tag) {
    using scalar_t = decltype(tag);
    patch_conv_backward_kernel<scalar_t>(g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                         t.const_data_ptr<float>(), dx.data_ptr<scalar_t>(), dtaps.data_ptr<float>(),
                                         dbias.data_ptr<float>(), B, H, W, C, k);
  });
  return {dx, dtaps, dbias};
}

// A 3-d view whose rows are contiguous and evenly spaced (any image and row strides): a slice of wider rows.
void check_row_view(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), what, ": expected a CPU tensor");
  TORCH_CHECK(t.dim() == 3 && (t.stride(2) == 1 || t.size(2) == 1), what, ": expected a 3-d tensor of contiguous rows");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, what,
              ": expected float32 or bfloat16, got ", t.scalar_type());
}

RowLayout row_layout(const at::Tensor& t) { return {t.stride(0), t.stride(1)}; }

// q (B, N, C), k and v (B, M, C) rows of one dtype and a (heads, N, M) bias, checked; the bias as float. k and
// v are contiguous, or with `kv_row_views` any views of contiguous rows (`check_row_view`).
at::Tensor checked_attention_operands(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& bias, int64_t heads, const char* what,
                                      bool kv_row_views = false) {
  check_rows(q, 3, what);
  if (kv_row_views) {
    check_row_view(k, what);
    check_row_view(v, what);
  } else {
    check_rows(k, 3, what);
    check_rows(v, 3, what);
  }
  const int64_t B = q.size(0), N = q.size(1), C = q.size(2), M = k.size(1);
  TORCH_CHECK(heads > 0 && C % heads == 0, what, ": ", C, " channels do not split into ", heads, " heads");
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == B && k.size(2) == C && M > 0,
              what, ": keys and values must be (", B, ", M, ", C, ")");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              what, ": q, k and v must share a dtype");
  TORCH_CHECK(bias.device().is_cpu() && bias.dim() == 3 && bias.size(0) == heads && bias.size(1) == N &&
                  bias.size(2) == M,
              what, ": the bias must be a CPU tensor of (heads, queries, keys) = (", heads, ", ", N, ", ", M,
              "), got ", bias.sizes());
  return as_float_vector(bias, heads * N * M, what);
}

std::vector<at::Tensor> attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                          const at::Tensor& bias, int64_t heads, double scale) {
  const at::Tensor bias_f = checked_attention_operands(q, k, v, bias, heads, "attention_forward");
  const int64_t B = q.size(0), N = q.size(1), C = q.size(2), M = k.size(1);
  at::Tensor out = at::empty_like(q);
  at::Tensor probs = float_empty(q, {B, heads, N, M});
  dispatch_float_or_bf16(q, [&](auto tag) {
    using scalar_t = decltype(tag);
    attention_forward_kernel<scalar_t>(q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(),
                                       v.const_data_ptr<scalar_t>(), bias_f.const_data_ptr<float>(),
                                       static_cast<float>(scale), out.data_ptr<scalar_t>(), probs.data_ptr<float>(),
                                       B, N, M, heads, C / heads);
  });
  return {out, probs};
}

// The attention forward for inference: the output only (see attention_inference_kernel). k and v may be views
// of wider rows: the two halves of a merged K/V projection, read in place.
at::Tensor attention_inference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                               int64_t heads, double scale) {
  const at::Tensor bias_f = checked_attention_operands(q, k, v, bias, heads, "attention_inference", true);
  const int64_t B = q.size(0), N = q.size(1), C = q.size(2), M = k.size(1);
  at::Tensor out = at::empty_like(q);
  dispatch_float_or_bf16(q, [&](auto tag) {
    using scalar_t = decltype(tag);
    attention_inference_kernel<scalar_t>(q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(),
                                         v.const_data_ptr<scalar_t>(), row_layout(k), row_layout(v),
                                         bias_f.const_data_ptr<float>(),
                                         static_cast<float>(scale), out.data_ptr<scalar_t>(), B, N, M, heads,
                                         C / heads);
  });
  return out;
}

std::vector<at::Tensor> attention_backward(const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v, const at::Tensor& probs, int64_t heads,
                                           double scale) {
  check_rows(q, 3, "attention_backward q");
  const int64_t B = q.size(0), N = q.size(1), C = q.size(2), M = k.size(1);
  const at::Tensor g = like(grad, q);
  TORCH_CHECK(probs.scalar_type() == at::kFloat && probs.is_contiguous() && probs.numel() == B * heads * N * M,
              "attention_backward: probabilities must be the forward's");
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  at::Tensor dbias = float_empty(q, {heads, N, M});
  dispatch_float_or_bf16(q, [&](auto tag) {
    using scalar_t = decltype(tag);
    attention_backward_kernel<scalar_t>(g.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(),
                                        k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
                                        probs.const_data_ptr<float>(), static_cast<float>(scale),
                                        dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(),
                                        dbias.data_ptr<float>(), B, N, M, heads, C / heads);
  });
  return {dq, dk, dv, dbias};
}

}  // namespace

TORCH_LIBRARY(cmt_scale, m) {
  m.def("act_bn_forward(Tensor a, Tensor weight, Tensor bias, Tensor(a!)? running_mean, Tensor(b!)? running_var, "
        "float factor, float eps, int act) -> Tensor[]");
  m.def("act_bn_backward(Tensor grad, Tensor y, Tensor d, Tensor mean, Tensor invstd, Tensor weight, int act) -> Tensor[]");
  m.def("layer_norm_forward(Tensor x, Tensor weight, Tensor bias, float eps) -> Tensor[]");
  m.def("layer_norm_backward(Tensor grad, Tensor x, Tensor mean, Tensor rstd, Tensor weight) -> Tensor[]");
  m.def("act_affine(Tensor x, Tensor? scale, Tensor? shift, int act) -> Tensor");
  m.def("act_affine_(Tensor(a!) x, Tensor? scale, Tensor? shift, int act) -> Tensor(a!)");
  m.def("bn_eval_affine(Tensor running_mean, Tensor running_var, Tensor? weight, Tensor? bias, float eps) -> Tensor[]");
  m.def("dwconv3x3_forward(Tensor x, Tensor taps, Tensor? bias, bool residual, int act=0, Tensor? scale=None, "
        "Tensor? shift=None) -> Tensor");
  m.def("dwconv3x3_backward(Tensor grad, Tensor x, Tensor taps, bool residual) -> Tensor[]");
  m.def("patch_conv_forward(Tensor x, Tensor taps, Tensor? bias, int k) -> Tensor");
  m.def("patch_conv_backward(Tensor grad, Tensor x, Tensor taps, int k) -> Tensor[]");
  m.def("attention_forward(Tensor q, Tensor k, Tensor v, Tensor bias, int heads, float scale) -> Tensor[]");
  m.def("attention_inference(Tensor q, Tensor k, Tensor v, Tensor bias, int heads, float scale) -> Tensor");
  m.def("attention_backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor probs, int heads, float scale) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(cmt_scale, CPU, m) {
  m.impl("act_bn_forward", &act_bn_forward);
  m.impl("act_bn_backward", &act_bn_backward);
  m.impl("layer_norm_forward", &layer_norm_forward);
  m.impl("layer_norm_backward", &layer_norm_backward);
  m.impl("act_affine", &act_affine);
  m.impl("act_affine_", &act_affine_);
  m.impl("bn_eval_affine", &bn_eval_affine);
  m.impl("dwconv3x3_forward", &dwconv3x3_forward);
  m.impl("dwconv3x3_backward", &dwconv3x3_backward);
  m.impl("patch_conv_forward", &patch_conv_forward);
  m.impl("patch_conv_backward", &patch_conv_backward);
  m.impl("attention_forward", &attention_forward);
  m.impl("attention_inference", &attention_inference);
  m.impl("attention_backward", &attention_backward);
}
