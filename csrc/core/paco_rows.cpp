#include "core/paco_rows.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>

// Hot loops are compiled for AVX2+FMA and for the baseline ISA; the loader picks one at run time (GCC function
// multiversioning), so one binary is fast here and still runs on any x86-64.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(GPACO_NO_MULTIVERSION)
#define GPACO_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define GPACO_HOT
#endif

// 8-lane vectors are only ever passed between always-inlined functions, so the AVX argument-passing ABI that GCC
// warns about does not matter here.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace gpaco {

LabelIndex::LabelIndex(const int64_t* labels, int64_t n) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [labels](int64_t a, int64_t b) { return labels[a] < labels[b]; });
  sorted_labels_.resize(order.size());
  columns_ = order;
  for (size_t k = 0; k < order.size(); ++k) sorted_labels_[k] = labels[order[k]];
}

const int64_t* LabelIndex::begin(int64_t label) const {
  auto it = std::lower_bound(sorted_labels_.begin(), sorted_labels_.end(), label);
  return columns_.data() + (it - sorted_labels_.begin());
}

const int64_t* LabelIndex::end(int64_t label) const {
  auto it = std::upper_bound(sorted_labels_.begin(), sorted_labels_.end(), label);
  return columns_.data() + (it - sorted_labels_.begin());
}

// exp(x) as 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2], p the degree-6 Taylor polynomial: relative error below
// 3e-7 (about 2 ulp) for x in [-87, 88]; inputs below -87 give 0 (exp(-87) = 1.6e-38 is at the edge of float anyway).
// Branch-free, with a rounding trick instead of floor(), written once for any lane type: float (the scalar tail)
// and GCC's 8-lane vector type, which lowers to AVX2 in the AVX2 clone and to pairs of SSE registers otherwise.
#define GPACO_INLINE static inline __attribute__((always_inline))

template <typename V, typename I>
GPACO_INLINE V exp_lanes(V x) {
  const V zero{};  // zero lanes, so the constants broadcast for vectors and scalars alike (not x - x: NaN for inf)
  const V lo = zero - 87.0f;
  const V hi = lo + 175.0f;
  // NaN takes the exponent path as 0 (converting NaN to an integer and shifting it is undefined behaviour) and is
  // returned as NaN at the end: a NaN logit must reach the loss.
  const V xc = x < lo ? lo : (x > hi ? hi : (x == x ? x : zero));
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low mantissa bits
  const V n = (xc * 1.44269504088896341f + magic) - magic;
  const V r = (xc - n * 0.693145751953125f) - n * 1.428606765330187e-06f;  // ln2 split in two for accuracy
  V p = r * (1.0f / 720.0f) + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  I bits;
  if constexpr (std::is_same_v<V, float>) {
    bits = (static_cast<int32_t>(n) + 127) << 23;
  } else {
    bits = (__builtin_convertvector(n, I) + 127) << 23;
  }
  V scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < lo ? zero : (x == x ? p * scale : x);
}

typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));

GPACO_INLINE f8 load8(const float* p) {
  f8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

GPACO_INLINE void store8(float* p, f8 v) { std::memcpy(p, &v, sizeof(v)); }

float exp_approx(float x) { return exp_lanes<float, int32_t>(x); }

namespace {

GPACO_HOT float max_of(const float* x, int64_t n) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  f8 m8 = {neg_inf, neg_inf, neg_inf, neg_inf, neg_inf, neg_inf, neg_inf, neg_inf};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const f8 v = load8(x + j);
    m8 = v > m8 ? v : m8;
  }
  float m = neg_inf;
  for (int k = 0; k < 8; ++k) m = m8[k] > m ? m8[k] : m;
  for (; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

GPACO_HOT float sum_of(const float* x, int64_t n) {
  f8 s8 = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) s8 += load8(x + j);
  float s = 0.0f;
  for (int k = 0; k < 8; ++k) s += s8[k];
  for (; j < n; ++j) s += x[j];
  return s;
}

// x = exp(x - shift); returns the sum (8 float lanes, combined in double).
GPACO_HOT double exp_shift_sum(float* x, int64_t n, float shift) {
  f8 s8 = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const f8 e = exp_lanes<f8, i8>(load8(x + j) - shift);
    store8(x + j, e);
    s8 += e;
  }
  double total = 0.0;
  for (int k = 0; k < 8; ++k) total += s8[k];
  for (; j < n; ++j) {
    x[j] = exp_lanes<float, int32_t>(x[j] - shift);
    total += x[j];
  }
  return total;
}

GPACO_HOT void affine_inplace(float* x, int64_t n, float mul, float add) {
  for (int64_t j = 0; j < n; ++j) x[j] = x[j] * mul + add;
}

double max_of(const double* x, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

double sum_of(const double* x, int64_t n) {
  double s = 0.0;
  for (int64_t j = 0; j < n; ++j) s += x[j];
  return s;
}

double exp_shift_sum(double* x, int64_t n, double shift) {
  double total = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    x[j] = std::exp(x[j] - shift);
    total += x[j];
  }
  return total;
}

void affine_inplace(double* x, int64_t n, double mul, double add) {
  for (int64_t j = 0; j < n; ++j) x[j] = x[j] * mul + add;
}

// Sum of row[offset + c] over the columns c of `label` in `index`, skipping column `skip`; adds the count to *count.
template <typename T>
T gather_sum(const LabelIndex* index, int64_t label, const T* seg, int64_t skip, int64_t* count) {
  T total = 0;
  for (const int64_t* c = index->begin(label); c != index->end(label); ++c) {
    if (*c == skip) continue;
    total += seg[*c];
    ++*count;
  }
  return total;
}

template <typename T>
void gather_add(const LabelIndex* index, int64_t label, T* seg, int64_t skip, T value) {
  for (const int64_t* c = index->begin(label); c != index->end(label); ++c) {
    if (*c != skip) seg[*c] += value;
  }
}

// x = exp(x - shift) for all n columns; returns the sum without column `skip` (when 0 <= skip < n). Leaving the
// column out of the sum, instead of subtracting it afterwards, matters: a masked self column often holds the row's
// max (exp = 1) next to a true denominator of 1e-8, which a subtraction would cancel to noise.
template <typename T>
T exp_shift_sum_except(T* x, int64_t n, T shift, int64_t skip) {
  if (skip < 0 || skip >= n) return static_cast<T>(exp_shift_sum(x, n, shift));
  const double before = exp_shift_sum(x, skip, shift);
  const double after = exp_shift_sum(x + skip + 1, n - skip - 1, shift);
  exp_shift_sum(x + skip, 1, shift);  // still exponentiated: the gradient pass reads it
  return static_cast<T>(before + after);
}

}  // namespace

void exp_shift_inplace(float* x, int64_t n, float shift) { exp_shift_sum(x, n, shift); }

template <typename T>
RowResult<T> paco_row(const RowConfig<T>& cfg, T* row, int64_t self_col, int64_t label, const T* coef,
                      const T* inv_pos) {
  const int64_t C = cfg.num_classes, N = cfg.batch_cols, K = cfg.queue_cols;
  T* cls = row;
  T* batch = row + C;
  T* queue = row + C + N;
  const bool own_class = label >= 0 && label < C;  // false for ignored anchors and when there is no class block
  const bool has_self = N > 0 && self_col >= 0 && self_col < N;
  const int64_t skip = has_self ? self_col : -1;

  // The max over every column (masked ones too), as the published code and the reference take it.
  const T m = max_of(row, cfg.width());

  // Positive weights and the weighted sum of positive logits, read before exp overwrites the logits.
  T wl = 0, pos = 0;
  if (C > 0) {
    if (cfg.beta_off != 0) {
      wl += cfg.beta_off * sum_of(cls, C);
      pos += cfg.beta_off * static_cast<T>(C);
    }
    if (own_class) {
      wl += (cfg.beta_on - cfg.beta_off) * cls[label];
      pos += cfg.beta_on - cfg.beta_off;
    }
  }
  int64_t batch_pos = 0, queue_pos = 0;
  if (N > 0 && cfg.alpha != 0) wl += cfg.alpha * gather_sum(cfg.batch_index, label, batch, skip, &batch_pos);
  if (K > 0 && cfg.alpha != 0) wl += cfg.alpha * gather_sum(cfg.queue_index, label, queue, int64_t{-1}, &queue_pos);
  pos += cfg.alpha * static_cast<T>(batch_pos + queue_pos);

  // exp(l - m) in place, summed per segment over the columns whose weight d is not 0.
  const int64_t excluded_class = cfg.exclude_positive_class && own_class ? label : int64_t{-1};
  const T z_cls = C > 0 ? exp_shift_sum_except(cls, C, m, excluded_class) : T(0);
  const T z = z_cls + cfg.gamma * exp_shift_sum_except(batch, N + K, m, skip);

  RowResult<T> out;
  out.wl = wl;
  out.pos = pos;
  out.lse = m + std::log(z + cfg.lse_eps);
  if (coef == nullptr) return out;

  // G = a (w / P - d e / (Z + eps)) times the segment's 1/temperature. A row without positives adds no loss and
  // takes no gradient (the caller's 1/P is 0 there; computed here, it is 0 for P = 0).
  const T ip = inv_pos != nullptr ? *inv_pos : (pos > 0 ? T(1) / pos : T(0));
  const T a = ip != 0 ? *coef : T(0);
  if (a == 0) {
    std::fill(row, row + cfg.width(), T(0));
    return out;
  }
  const T inv_z = T(1) / (z + cfg.lse_eps);
  if (C > 0) {
    const T sc = a * cfg.class_scale;
    // The excluded own class has d = 0: zero its exp before the affine pass rather than adding the term back
    // afterwards (when it holds the max, that term is e / (Z + eps) with Z tiny, and the difference cancels).
    if (excluded_class >= 0) cls[excluded_class] = T(0);
    affine_inplace(cls, C, -sc * inv_z, sc * cfg.beta_off * ip);
    if (own_class) cls[label] += sc * (cfg.beta_on - cfg.beta_off) * ip;
  }
  if (N + K > 0) {
    const T ss = a * cfg.sample_scale;
    affine_inplace(batch, N + K, -ss * cfg.gamma * inv_z, T(0));
    if (has_self) batch[self_col] = 0;
    if (cfg.alpha != 0) {
      if (N > 0) gather_add(cfg.batch_index, label, batch, skip, ss * cfg.alpha * ip);
      if (K > 0) gather_add(cfg.queue_index, label, queue, int64_t{-1}, ss * cfg.alpha * ip);
    }
  }
  return out;
}

template RowResult<float> paco_row<float>(const RowConfig<float>&, float*, int64_t, int64_t, const float*,
                                          const float*);
template RowResult<double> paco_row<double>(const RowConfig<double>&, double*, int64_t, int64_t, const double*,
                                            const double*);

}  // namespace gpaco
