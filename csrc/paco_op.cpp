// CPU kernels of the fused loss: ATen/BLAS products into a row-block buffer and the per-row core of
// core/paco_rows.h. Exposed to Python as `forward` and `backward`, the whole of the op's two directions (the
// normalization, the sweep, the loss and its reduction, the backward's coefficients), which the cpu backend's
// implementation of the op (gpaco::cpu_forward / cpu_backward, registered with its schema, fake and autograd
// formula in gpaco_kernels/ops/op.py) calls; and `sweep` alone, for benchmarks and tests. The formulas are those of
// ops/spec.py, written here as loops over the anchors so that a small step costs no small tensor ops.
//
// Sweep: anchors are processed in blocks of R rows. For each block, one buffer of R x M (M = C + N + K columns)
// receives the logits (class block copied from S or computed from W; batch and queue from GEMMs with alpha = 1/t);
// the core turns each row into (sum w l, lse, P) and, when gradients are wanted, into G in place; G then feeds
// dAnchors = G C, dContrast += G^T A, dW += G_cls^T A and dS = G_cls. Nothing of size A x M is ever allocated: the
// buffer is sized to stay within a few MB (L3), and the only saved state is per anchor or O((N + C) x D).
//
// With `coef` (a per anchor: upstream gradient x loss scale) the sweep also produces the gradients. The forward
// passes a for an upstream gradient of 1 and lets each row use its own 1/P (known once the row is seen), so that
// with 'mean' or 'sum' the backward only scales them; the backward passes a and 1/P from the saved P.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "core/paco_rows.h"

// MKL's half-precision GEMMs with float32 accumulation and output (CBLAS row-major interface). PyTorch's CPU builds on
// x86-64 link MKL and export these; declared weak, so that a torch without them (another BLAS, another
// architecture) still loads this extension and the half-precision path upcasts to float32 instead.
extern "C" {
__attribute__((weak)) void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                                                  const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta,
                                                  float* c, int ldc);
__attribute__((weak)) void cblas_gemm_f16f16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                                                const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta,
                                                float* c, int ldc);
}

namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // CBLAS enums

bool mkl_half_gemm(at::ScalarType dtype) {
  return dtype == at::kBFloat16 ? cblas_gemm_bf16bf16f32 != nullptr : cblas_gemm_f16f16f32 != nullptr;
}

// Phase times of one sweep, printed to stderr with GPACO_CPU_PROFILE=1: where a step's time goes.
struct PhaseTimer {
  using clock = std::chrono::steady_clock;
  bool on = std::getenv("GPACO_CPU_PROFILE") != nullptr;
  clock::time_point last = clock::now();
  double index = 0, class_block = 0, logits = 0, rows = 0, products = 0;
  void lap(double& into) {
    if (!on) return;
    const auto now = clock::now();
    into += std::chrono::duration<double, std::milli>(now - last).count();
    last = now;
  }
  void report(int64_t A, int64_t M, const char* how) const {
    if (!on) return;
    std::fprintf(stderr,
                 "gpaco cpu sweep %lld x %lld (%s): label index %.2f ms, class block %.2f ms, logit GEMMs %.2f ms, "
                 "row pass %.2f ms, gradient GEMMs %.2f ms\n",
                 static_cast<long long>(A), static_cast<long long>(M), how, index, class_block, logits, rows,
                 products);
  }
};

using at::Tensor;
using OptTensor = c10::optional<Tensor>;

struct Problem {
  Tensor features, labels, queue, queue_labels, center_logits, centers, center_bias;  // undefined when absent
  int64_t num_anchors = 0;
  double temperature = 1, center_temperature = 1;
  double alpha = 1, beta_on = 1, beta_off = 0, gamma = 1, lse_eps = 1e-12;
  bool exclude_positive_class = false, batch_columns = true, batch_column_grad = true;
  int64_t ignore_index = -100;  // only for the label check: ignored anchors arrive with a = 0

  int64_t num_classes() const {
    if (center_logits.defined()) return center_logits.size(1);
    if (centers.defined()) return centers.size(0);
    return 0;
  }
};

Tensor defined_or_empty(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

void check_problem(const Problem& p) {
  const auto& f = p.features;
  TORCH_CHECK(f.dim() == 2, "features must have shape (N, D), got ", f.sizes());
  const auto dt = f.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf,
              "the cpu backend takes float32, float64, bfloat16 or float16 features, got ", dt);
  TORCH_CHECK(f.device().is_cpu(), "the cpu backend needs CPU tensors, features is on ", f.device());
  const int64_t N = f.size(0), D = f.size(1);
  TORCH_CHECK(p.labels.dim() == 1 && p.labels.size(0) == N && p.labels.scalar_type() == at::kLong,
              "labels must be int64 of shape (", N, "), got ", p.labels.scalar_type(), " ", p.labels.sizes());
  TORCH_CHECK(p.num_anchors >= 1 && p.num_anchors <= N, "num_anchors must be in [1, ", N, "], got ", p.num_anchors);
  auto same = [&](const Tensor& t, const char* name) {
    if (!t.defined()) return;
    TORCH_CHECK(t.scalar_type() == f.scalar_type(), name, " must have the dtype of features (", f.scalar_type(),
                "), got ", t.scalar_type());
    TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  };
  same(p.queue, "queue");
  same(p.center_logits, "center_logits");
  same(p.centers, "centers");
  if (p.center_bias.defined()) {  // the log prior is computed in the accumulation dtype
    TORCH_CHECK(p.center_bias.scalar_type() == (dt == at::kDouble ? at::kDouble : at::kFloat),
                "center_bias must be float32 (float64 for float64 features), got ", p.center_bias.scalar_type());
    TORCH_CHECK(p.center_bias.device().is_cpu(), "center_bias must be a CPU tensor");
  }
  if (p.queue.defined()) {
    TORCH_CHECK(p.queue.dim() == 2 && p.queue.size(1) == D, "queue must have shape (K, ", D, "), got ",
                p.queue.sizes());
    TORCH_CHECK(p.queue_labels.defined() && p.queue_labels.dim() == 1 && p.queue_labels.size(0) == p.queue.size(0) &&
                    p.queue_labels.scalar_type() == at::kLong,
                "queue_labels must be int64 of shape (", p.queue.size(0), ")");
  }
  TORCH_CHECK(!(p.center_logits.defined() && p.centers.defined()), "pass center_logits or centers, not both");
  if (p.center_logits.defined())
    TORCH_CHECK(p.center_logits.dim() == 2 && p.center_logits.size(0) == p.num_anchors,
                "center_logits must have shape (num_anchors=", p.num_anchors, ", C), got ", p.center_logits.sizes());
  if (p.centers.defined())
    TORCH_CHECK(p.centers.dim() == 2 && p.centers.size(1) == D, "centers must have shape (C, ", D, "), got ",
                p.centers.sizes());
  const int64_t C = p.num_classes();
  if (p.center_bias.defined())
    TORCH_CHECK(p.center_bias.dim() == 1 && p.center_bias.size(0) == C, "center_bias must have shape (", C, ")");
  if (C > 0) {
    // Labels index the class block: checked here too (a plain loop, no tensor op), so that a compiled graph never
    // indexes out of range whatever the Python checks did.
    auto check = [&](const Tensor& t, int64_t n, const char* name) {
      const Tensor c = t.contiguous();
      const int64_t* v = c.data_ptr<int64_t>();
      for (int64_t i = 0; i < n; ++i) {
        TORCH_CHECK(v[i] == p.ignore_index || (v[i] >= 0 && v[i] < C), name, " must be in [0, ", C,
                    ") or equal ignore_index=", p.ignore_index, ", found ", v[i]);
      }
    };
    check(p.labels, p.batch_columns ? N : p.num_anchors, "labels");
    if (p.queue_labels.defined()) check(p.queue_labels, p.queue_labels.size(0), "queue_labels");
  }
}

// Rows per block: the R x M buffer stays near `budget` bytes, R between 8 and 256, and the blocks split the anchors
// evenly (a last block of a few rows would run its GEMMs at a fraction of their speed). The GEMMs that fill and read
// the buffer want R in the hundreds: with every pixel of a 65536-pixel batch as columns, R = 45 (a 12 MB budget) ran
// the logit GEMMs at 77 GFLOP/s and the step in 35 s, R = 128 (32 MB) at the GEMM peak and the step in 20.6 s.
int64_t rows_per_block(int64_t M, int64_t A, size_t elem_size) {
  int64_t budget = 32 << 20;
  if (const char* env = std::getenv("GPACO_CPU_BLOCK_BYTES")) budget = std::max<int64_t>(std::atoll(env), 1024);
  int64_t rows = budget / std::max<int64_t>(M * static_cast<int64_t>(elem_size), 1);
  rows = std::min<int64_t>(std::max<int64_t>(rows, 8), 256);
  const int64_t blocks = (A + rows - 1) / rows;
  return (A + blocks - 1) / blocks;
}

struct Grads {
  Tensor features, center_logits, centers;  // undefined when not computed; in the accumulation dtype
};

// Per-anchor gradient coefficients: a (upstream gradient x loss scale, 0 for ignored anchors) and optionally 1/P.
struct Coefficients {
  Tensor a, inv_pos;  // undefined a: no gradient; undefined inv_pos: each row uses its own 1/P
};

// C = alpha op(A) op(B) + beta C, with C in the accumulation dtype (a row block of the buffer or a gradient) and A, B
// in the input dtype: ATen (MKL sgemm/dgemm) for float32/float64, MKL's half GEMMs for bfloat16/float16.
void product(Tensor C, const Tensor& A, bool ta, const Tensor& B, bool tb, double alpha, double beta) {
  const int64_t m = C.size(0), n = C.size(1), k = ta ? A.size(0) : A.size(1);
  if (m == 0 || n == 0) return;
  const auto in = A.scalar_type();
  if (in != at::kBFloat16 && in != at::kHalf) {
    at::addmm_out(C, C, ta ? A.t() : A, tb ? B.t() : B, beta, alpha);
    return;
  }
  TORCH_INTERNAL_ASSERT(A.stride(1) == 1 && B.stride(1) == 1 && C.stride(1) == 1 && C.scalar_type() == at::kFloat);
  if (k == 0) {
    C.mul_(beta);
    return;
  }
  auto gemm = in == at::kBFloat16 ? cblas_gemm_bf16bf16f32 : cblas_gemm_f16f16f32;
  gemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, static_cast<int>(m), static_cast<int>(n),
       static_cast<int>(k), static_cast<float>(alpha), static_cast<const uint16_t*>(A.const_data_ptr()),
       static_cast<int>(A.stride(0)), static_cast<const uint16_t*>(B.const_data_ptr()), static_cast<int>(B.stride(0)),
       static_cast<float>(beta), C.mutable_data_ptr<float>(), static_cast<int>(C.stride(0)));
}

// One sweep over all anchor blocks: (sum w l, lse, P) of every anchor, and the gradients in g when k.a is defined.
// T is the accumulation dtype (float, or double for float64 inputs); the inputs may be bfloat16/float16, multiplied
// as such (product) into the float32 buffer, where the row pass runs.
template <typename T>
void sweep(const Problem& p, const Coefficients& k, Tensor& wl, Tensor& lse, Tensor& pos, Grads& g) {
  PhaseTimer timer;
  const Tensor feats = p.features.contiguous();
  const Tensor labels = p.labels.contiguous();
  const int64_t A = p.num_anchors, N = feats.size(0);
  const int64_t C = p.num_classes();
  const int64_t NB = p.batch_columns ? N : 0;
  const Tensor queue = p.queue.defined() ? p.queue.contiguous() : Tensor();
  const int64_t K = queue.defined() ? queue.size(0) : 0;
  const int64_t M = C + NB + K;
  const bool want_grad = k.a.defined();
  const auto acc = feats.options().dtype(c10::CppTypeToScalarType<T>::value);
  const bool half = feats.scalar_type() == at::kBFloat16 || feats.scalar_type() == at::kHalf;

  gpaco::LabelIndex batch_index, queue_index;
  if (NB > 0) batch_index = gpaco::LabelIndex(labels.data_ptr<int64_t>(), N);
  Tensor queue_labels;
  if (K > 0) {
    queue_labels = p.queue_labels.contiguous();
    queue_index = gpaco::LabelIndex(queue_labels.data_ptr<int64_t>(), K);
  }
  gpaco::RowConfig<T> cfg;
  cfg.num_classes = C;
  cfg.batch_cols = NB;
  cfg.queue_cols = K;
  cfg.class_scale = T(1.0 / p.center_temperature);
  cfg.sample_scale = T(1.0 / p.temperature);
  cfg.alpha = T(p.alpha);
  cfg.gamma = T(p.gamma);
  cfg.beta_on = T(p.beta_on);
  cfg.beta_off = T(p.beta_off);
  cfg.exclude_positive_class = p.exclude_positive_class;
  cfg.lse_eps = T(p.lse_eps);
  cfg.batch_index = &batch_index;
  cfg.queue_index = &queue_index;

  Tensor centers = p.centers.defined() ? p.centers.contiguous() : Tensor();
  Tensor bias_scaled;  // b / tc, added to the class block
  if (p.center_bias.defined()) bias_scaled = (p.center_bias.to(acc.dtype()) * (1.0 / p.center_temperature)).contiguous();
  const Tensor logits_in = p.center_logits.defined() ? p.center_logits.contiguous() : Tensor();
  const Tensor coef = want_grad ? k.a.to(acc.dtype()).contiguous() : Tensor();
  const Tensor inv_pos = k.inv_pos.defined() ? k.inv_pos.to(acc.dtype()).contiguous() : Tensor();

  const int64_t R = rows_per_block(M, A, sizeof(T));
  Tensor buffer = at::empty({R, std::max<int64_t>(M, 1)}, acc);
  // Half inputs: G is rounded to the input dtype for the gradient products (float16 after scaling, below).
  Tensor half_buffer = half && want_grad ? at::empty({R, std::max<int64_t>(M, 1)}, feats.options()) : Tensor();
  T* wl_ptr = wl.data_ptr<T>();
  T* lse_ptr = lse.data_ptr<T>();
  T* pos_ptr = pos.data_ptr<T>();
  const int64_t* label_ptr = labels.data_ptr<int64_t>();
  const T* coef_ptr = want_grad ? coef.data_ptr<T>() : nullptr;
  const T* inv_pos_ptr = inv_pos.defined() ? inv_pos.data_ptr<T>() : nullptr;
  timer.lap(timer.index);

  for (int64_t r0 = 0; r0 < A; r0 += R) {
    const int64_t rows = std::min(R, A - r0);
    Tensor block = buffer.narrow(0, 0, rows).narrow(1, 0, M);
    Tensor anchors = feats.narrow(0, r0, rows);
    Tensor cls = block.narrow(1, 0, C), smp_b = block.narrow(1, C, NB), smp_q = block.narrow(1, C + NB, K);
    if (C > 0) {
      if (logits_in.defined()) {
        // One pass: l = S / tc (+ b / tc), converted from the input dtype.
        T* out = cls.data_ptr<T>();
        const T scale = T(1.0 / p.center_temperature);
        const T* bias = bias_scaled.defined() ? bias_scaled.data_ptr<T>() : nullptr;
        const int64_t ld = block.stride(0);
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits_in.scalar_type(), "gpaco_class_block", [&] {
          const scalar_t* in = logits_in.data_ptr<scalar_t>() + r0 * logits_in.stride(0);
          const int64_t ld_in = logits_in.stride(0);
          at::parallel_for(0, rows, 16, [&](int64_t b, int64_t e) {
            for (int64_t i = b; i < e; ++i) {
              for (int64_t c = 0; c < C; ++c) {
                const T v = static_cast<T>(in[i * ld_in + c]) * scale;
                out[i * ld + c] = bias ? v + bias[c] : v;
              }
            }
          });
        });
      } else {
        product(cls, anchors, false, centers, true, 1.0 / p.center_temperature, 0.0);
        if (bias_scaled.defined()) cls.add_(bias_scaled);
      }
    }
    timer.lap(timer.class_block);
    if (NB > 0) product(smp_b, anchors, false, feats, true, 1.0 / p.temperature, 0.0);
    if (K > 0) product(smp_q, anchors, false, queue, true, 1.0 / p.temperature, 0.0);
    timer.lap(timer.logits);

    T* base = block.data_ptr<T>();
    const int64_t ld = block.stride(0);
    at::parallel_for(0, rows, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const int64_t a = r0 + i;
        const T* c = want_grad ? coef_ptr + a : nullptr;
        const T* ip = inv_pos_ptr != nullptr ? inv_pos_ptr + a : nullptr;
        auto res = gpaco::paco_row<T>(cfg, base + i * ld, p.batch_columns ? a : -1, label_ptr[a], c, ip);
        wl_ptr[a] = res.wl;
        lse_ptr[a] = res.lse;
        pos_ptr[a] = res.pos;
      }
    });
    timer.lap(timer.rows);
    if (!want_grad) continue;

    // block now holds G (already times each segment's 1/temperature).
    if (g.center_logits.defined() && C > 0) g.center_logits.narrow(0, r0, rows).copy_(cls);
    Tensor gsrc = block;
    double unscale = 1.0;
    if (half) {
      // float16 holds 6e-8 .. 65504: G (whose rows carry 1/A after a mean) is scaled by a power of two that brings
      // its largest entry near 2^14 before the rounding, and the products undo it (exact). bfloat16 has float32's
      // range and is rounded as it is.
      double scale = 1.0;
      if (feats.scalar_type() == at::kHalf) {
        const double top = block.abs().max().item<double>();
        if (top > 0 && std::isfinite(top)) scale = std::exp2(std::floor(std::log2(16384.0 / top)));
      }
      gsrc = half_buffer.narrow(0, 0, rows).narrow(1, 0, M);
      gsrc.copy_(scale == 1.0 ? block : block * scale);
      unscale = 1.0 / scale;
    }
    Tensor g_cls = gsrc.narrow(1, 0, C), g_b = gsrc.narrow(1, C, NB), g_q = gsrc.narrow(1, C + NB, K);
    if (g.features.defined()) {
      Tensor g_anchor = g.features.narrow(0, r0, rows);
      if (NB > 0) product(g_anchor, g_b, false, feats, false, unscale, 1.0);
      if (K > 0) product(g_anchor, g_q, false, queue, false, unscale, 1.0);
      if (centers.defined() && C > 0) product(g_anchor, g_cls, false, centers, false, unscale, 1.0);
      // The batch rows as columns; without batch_column_grad they are detached copies.
      if (NB > 0 && p.batch_column_grad) product(g.features, g_b, true, anchors, false, unscale, 1.0);
    }
    if (g.centers.defined() && C > 0) product(g.centers, g_cls, true, anchors, false, unscale, 1.0);
    timer.lap(timer.products);
  }
  timer.report(A, M, half ? "half-precision GEMMs" : (sizeof(T) == 8 ? "float64" : "float32"));
}

Tensor zeros_or_undefined(const Tensor& like, bool wanted, const at::TensorOptions& acc) {
  return wanted && like.defined() ? at::zeros(like.sizes(), acc) : Tensor();
}

Tensor or_empty(const Tensor& t, const at::TensorOptions& acc) { return t.defined() ? t : at::empty({0}, acc); }

Tensor upcast(const Tensor& t) { return t.defined() ? t.to(at::kFloat) : t; }

// The whole CPU kernel: returns (sum w l, lse, P, grad_features, grad_center_logits, grad_centers) in the
// accumulation dtype (float32, float64 for float64 inputs), the gradients (0,)-shaped where not wanted. Inputs
// float32, float64, bfloat16 or float16 on the CPU; the caller has checked shapes.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> sweep_op(
    const Tensor& features, const Tensor& labels, const OptTensor& queue, const OptTensor& queue_labels,
    const OptTensor& center_logits, const OptTensor& centers, const OptTensor& center_bias, int64_t num_anchors,
    double temperature, double center_temperature, double alpha, double beta_on, double beta_off, double gamma,
    bool exclude_positive_class, int64_t ignore_index, bool batch_columns, double lse_eps, bool batch_column_grad, const OptTensor& coef,
    const OptTensor& inv_pos, bool need_features, bool need_center_logits, bool need_centers, bool half_products) {
  Problem p;
  p.features = features;
  p.labels = labels;
  p.queue = defined_or_empty(queue);
  p.queue_labels = defined_or_empty(queue_labels);
  p.center_logits = defined_or_empty(center_logits);
  p.centers = defined_or_empty(centers);
  p.center_bias = defined_or_empty(center_bias);
  p.num_anchors = num_anchors;
  p.temperature = temperature;
  p.center_temperature = center_temperature;
  p.alpha = alpha;
  p.beta_on = beta_on;
  p.beta_off = beta_off;
  p.gamma = gamma;
  p.exclude_positive_class = exclude_positive_class;
  p.ignore_index = ignore_index;
  p.batch_columns = batch_columns;
  p.lse_eps = lse_eps;
  p.batch_column_grad = batch_column_grad;
  check_problem(p);
  const auto in = features.scalar_type();
  const bool half_in = in == at::kBFloat16 || in == at::kHalf;
  TORCH_CHECK(!half_products || !half_in || mkl_half_gemm(in), "half_products=True, but this torch does not provide ",
              "MKL's half-precision GEMM for ", in);
  if (half_in && !half_products) {
    // The portable path: float32 products from inputs upcast once. The class logits are not products: the class
    // block converts them row block by row block.
    p.features = upcast(p.features);
    p.queue = upcast(p.queue);
    p.centers = upcast(p.centers);
  }
  Coefficients k;
  k.a = defined_or_empty(coef);
  k.inv_pos = defined_or_empty(inv_pos);
  if (k.a.defined())
    TORCH_CHECK(k.a.dim() == 1 && k.a.size(0) == num_anchors, "coef must have shape (", num_anchors, ")");
  if (k.inv_pos.defined())
    TORCH_CHECK(k.inv_pos.dim() == 1 && k.inv_pos.size(0) == num_anchors, "inv_pos must have shape (", num_anchors,
                ")");
  const auto acc = features.options().dtype(in == at::kDouble ? at::kDouble : at::kFloat);
  Tensor wl = at::empty({num_anchors}, acc), lse = at::empty({num_anchors}, acc), pos = at::empty({num_anchors}, acc);
  Grads g;
  const bool grads = k.a.defined();
  g.features = zeros_or_undefined(features, grads && need_features, acc);
  g.center_logits = zeros_or_undefined(p.center_logits, grads && need_center_logits, acc);
  g.centers = zeros_or_undefined(p.centers, grads && need_centers, acc);
  if (in == at::kDouble) {
    sweep<double>(p, k, wl, lse, pos, g);
  } else {
    sweep<float>(p, k, wl, lse, pos, g);
  }
  return {wl, lse, pos, or_empty(g.features, acc), or_empty(g.center_logits, acc), or_empty(g.centers, acc)};
}


// --- the op's forward and backward, whole -------------------------------------------------------------------------
// What ops/spec.py states in PyTorch (normalized inputs, the per-anchor loss, the reduction, the backward's
// coefficients and the normalization's backward), done here around the sweep: one call per direction, so that a
// small step costs its products and a few loops over A, not dozens of small tensor ops from Python.

constexpr double kNormEps = 1e-12;  // ops/spec.py NORM_EPS

// Rows divided by max(|row|, eps), computed in the accumulation dtype and rounded once to the input's.
Tensor unit_rows(const Tensor& x) {
  if (!x.defined()) return x;
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor xf = x.to(acc);
  return (xf / at::linalg_vector_norm(xf, 2, {1}, true).clamp_min(kNormEps)).to(x.scalar_type());
}

// The op's inputs as the sweep takes them: normalized with `normalize`, as given otherwise (absent ones stay absent).
OptTensor unit_rows_if(bool normalize, const OptTensor& t) {
  return normalize && t.has_value() ? OptTensor(unit_rows(*t)) : t;
}

// d/dx of x / max(|x|, eps) applied to g: (g - u <u, g>) / |x|, or g / eps where the norm was clamped.
Tensor normalize_backward(const Tensor& raw, const Tensor& g) {
  const Tensor x = raw.to(g.scalar_type());
  const Tensor norm = at::linalg_vector_norm(x, 2, {1}, true);
  const Tensor clamped = norm.clamp_min(kNormEps);
  const Tensor u = x / clamped;
  const Tensor radial = at::where(norm <= kNormEps, at::zeros_like(norm), (u * g).sum(1, true));
  return (g - u * radial) / clamped;
}

enum Reduction : int64_t { kNone = 0, kSum = 1, kMean = 2 };

// The first element of a CPU tensor, read from its memory (no tensor op: a step's scalars cost nothing to read).
double first_value(const Tensor& t) {
  double v = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t.scalar_type(), "gpaco_first_value",
                                  [&] { v = static_cast<double>(*t.const_data_ptr<scalar_t>()); });
  return v;
}

struct StepParams {
  int64_t num_anchors, ignore_index, reduction;
  double loss_scale;
  bool normalize;
};

// (loss in the features' dtype, () or (A,), and the number of counted anchors, (1,)) from the sweep's sums.
std::tuple<Tensor, Tensor> finalize(const Tensor& wl, const Tensor& lse, const Tensor& pos, const Tensor& labels,
                                    const StepParams& s, at::ScalarType out_dtype) {
  const int64_t A = s.num_anchors;
  const Tensor lab = labels.contiguous();
  const int64_t* y = lab.data_ptr<int64_t>();
  Tensor losses = at::empty({A}, wl.options());
  double total = 0, counted = 0;
  AT_DISPATCH_FLOATING_TYPES(wl.scalar_type(), "gpaco_finalize", [&] {
    const scalar_t *w = wl.data_ptr<scalar_t>(), *l = lse.data_ptr<scalar_t>(), *P = pos.data_ptr<scalar_t>();
    scalar_t* out = losses.data_ptr<scalar_t>();
    for (int64_t i = 0; i < A; ++i) {
      const bool kept = y[i] != s.ignore_index;
      counted += kept;
      // Anchors without positives add 0 (the published PaCo code divides 0 by 0 there); lse is not read for them.
      out[i] = kept && P[i] > 0 ? static_cast<scalar_t>(s.loss_scale * (w[i] - P[i] * l[i]) / P[i]) : scalar_t(0);
      total += out[i];
    }
  });
  Tensor n = at::full({1}, counted, wl.options());
  if (s.reduction == kNone) return {losses.to(out_dtype), n};
  const double value = s.reduction == kSum ? total : total / std::max(counted, 1.0);
  return {at::scalar_tensor(value, wl.options().dtype(out_dtype)), n};
}

// The forward: (loss, lse, P, counted, and with unit_gradients the gradients for an upstream gradient of 1).
std::vector<Tensor> forward_op(
    const Tensor& features, const Tensor& labels, const OptTensor& queue, const OptTensor& queue_labels,
    const OptTensor& center_logits, const OptTensor& centers, const OptTensor& center_bias, int64_t num_anchors,
    double temperature, double center_temperature, double alpha, double beta_on, double beta_off, double gamma,
    double loss_scale, bool exclude_positive_class, int64_t ignore_index, bool batch_columns, double lse_eps,
    bool batch_column_grad, bool normalize, int64_t reduction, bool unit_gradients, bool half_products) {
  const StepParams s{num_anchors, ignore_index, reduction, loss_scale, normalize};
  const auto acc = features.options().dtype(features.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  OptTensor coef;
  if (unit_gradients) {
    // a = loss scale on every counted anchor (the gradient of an upstream 1); each row then uses its own 1/P.
    const Tensor lab = labels.contiguous();
    const int64_t* y = lab.data_ptr<int64_t>();
    Tensor a = at::empty({num_anchors}, acc.dtype(at::kDouble));
    double* ap = a.data_ptr<double>();
    for (int64_t i = 0; i < num_anchors; ++i) ap[i] = y[i] != ignore_index ? loss_scale : 0.0;
    coef = a;
  }
  auto [wl, lse, pos, gf, gs, gw] =
      sweep_op(normalize ? unit_rows(features) : features, labels, unit_rows_if(normalize, queue), queue_labels,
               center_logits, unit_rows_if(normalize, centers), center_bias, num_anchors, temperature,
               center_temperature, alpha, beta_on, beta_off, gamma, exclude_positive_class, ignore_index,
               batch_columns, lse_eps, batch_column_grad, coef, OptTensor(), true, center_logits.has_value(),
               centers.has_value(), half_products);
  auto [loss, counted] = finalize(wl, lse, pos, labels, s, features.scalar_type());
  return {loss, lse, pos, counted, gf, gs, gw};
}

// The backward: the three gradients in the dtypes of their inputs, (0,) where not needed.
std::vector<Tensor> backward_op(
    const Tensor& features, const Tensor& labels, const OptTensor& queue, const OptTensor& queue_labels,
    const OptTensor& center_logits, const OptTensor& centers, const OptTensor& center_bias, int64_t num_anchors,
    double temperature, double center_temperature, double alpha, double beta_on, double beta_off, double gamma,
    double loss_scale, bool exclude_positive_class, int64_t ignore_index, bool batch_columns, double lse_eps,
    bool batch_column_grad, bool normalize, int64_t reduction, const Tensor& lse, const Tensor& pos,
    const Tensor& counted, const Tensor& grad_loss, const Tensor& unit_features, const Tensor& unit_center_logits,
    const Tensor& unit_centers, bool need_features, bool need_center_logits, bool need_centers, bool half_products) {
  const int64_t A = num_anchors;
  need_center_logits = need_center_logits && center_logits.has_value();
  need_centers = need_centers && centers.has_value();
  const auto acc = lse.options();
  const double n = std::max(first_value(counted), 1.0);
  Tensor gf, gs, gw;
  if (reduction != kNone && unit_features.numel() > 0) {
    // One upstream gradient for every anchor ('mean', 'sum'): the forward's unit gradients, scaled.
    const double g = first_value(grad_loss) / (reduction == kMean ? n : 1.0);
    if (need_features) gf = unit_features * g;
    if (need_center_logits) gs = unit_center_logits * g;
    if (need_centers) gw = unit_centers * g;
  } else {
    // Per-anchor (a, 1/P) from each anchor's upstream gradient; both 0 where the anchor adds no loss.
    const Tensor lab = labels.contiguous();
    const int64_t* y = lab.data_ptr<int64_t>();
    const Tensor gl = grad_loss.to(at::kDouble).contiguous();
    const double* gp = gl.data_ptr<double>();
    const Tensor P = pos.to(at::kDouble).contiguous();
    const double* pp = P.data_ptr<double>();
    Tensor a = at::empty({A}, acc.dtype(at::kDouble)), inv_pos = at::empty({A}, acc.dtype(at::kDouble));
    double *ap = a.data_ptr<double>(), *ip = inv_pos.data_ptr<double>();
    for (int64_t i = 0; i < A; ++i) {
      const double g = reduction == kNone ? gp[i] : gp[0] / (reduction == kMean ? n : 1.0);
      const bool valid = y[i] != ignore_index && pp[i] > 0;
      ap[i] = valid ? g * loss_scale : 0.0;
      ip[i] = valid ? 1.0 / pp[i] : 0.0;
    }
    auto swept = sweep_op(normalize ? unit_rows(features) : features, labels, unit_rows_if(normalize, queue),
                          queue_labels, center_logits, unit_rows_if(normalize, centers), center_bias, num_anchors,
                          temperature, center_temperature, alpha, beta_on, beta_off, gamma, exclude_positive_class,
                          ignore_index, batch_columns, lse_eps, batch_column_grad, a, inv_pos, need_features,
                          need_center_logits, need_centers, half_products);
    if (need_features) gf = std::get<3>(swept);
    if (need_center_logits) gs = std::get<4>(swept);
    if (need_centers) gw = std::get<5>(swept);
  }
  if (normalize) {
    if (gf.defined()) gf = normalize_backward(features, gf);
    if (gw.defined()) gw = normalize_backward(*centers, gw);
  }
  auto finish = [&](const Tensor& g, const OptTensor& like) {
    return g.defined() ? g.to(like->scalar_type()).contiguous() : at::empty({0}, acc);
  };
  return {finish(gf, features), finish(gs, center_logits), finish(gw, centers)};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "gpaco_kernels CPU kernels, called by the cpu backend of the op (gpaco_kernels/ops/cpu_backend.py)";
  module.def("sweep", &sweep_op, "(sum w l, lse, P) of every anchor and, with coef, the gradients",
             pybind11::call_guard<pybind11::gil_scoped_release>());
  module.def("forward", &forward_op, "the op's forward: (loss, lse, P, counted, unit gradients)",
             pybind11::call_guard<pybind11::gil_scoped_release>());
  module.def("backward", &backward_op, "the op's backward: the three gradients in their inputs' dtypes",
             pybind11::call_guard<pybind11::gil_scoped_release>());
  module.def(
      "product",
      [](Tensor C, const Tensor& A, bool ta, const Tensor& B, bool tb, double alpha, double beta) {
        TORCH_CHECK(C.dim() == 2 && A.dim() == 2 && B.dim() == 2 && A.scalar_type() == B.scalar_type(),
                    "product: 2-D C, A, B with A and B of one dtype");
        product(C, A, ta, B, tb, alpha, beta);
      },
      "C = alpha op(A) op(B) + beta C with the kernels' own GEMM for A's dtype (benchmarks time the floor with it)",
      pybind11::call_guard<pybind11::gil_scoped_release>());
  module.def(
      "mkl_half_gemm", [](const std::string& dtype) { return mkl_half_gemm(dtype == "float16" ? at::kHalf : at::kBFloat16); },
      "whether this torch provides MKL's GEMM for 'bfloat16' or 'float16' inputs with float32 output");
}
