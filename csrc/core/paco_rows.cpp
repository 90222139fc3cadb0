#include "core/paco_rows.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>

// Hot loops are compiled for AVX-512 (x86-64-v4), AVX2+FMA (v3) and the baseline ISA; the loader picks one at run
// time (GCC function multiversioning), so one binary uses the widest vectors of the CPU it runs on and still runs on
// any x86-64. CMakeLists.txt also builds the core's unit test with each path alone (GPACO_FORCE_ARCH), so every
// path is tested on a machine that has them all.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(GPACO_NO_MULTIVERSION) && \
    !defined(GPACO_FORCE_ARCH)
#define GPACO_HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GPACO_HOT
#endif

// 16-lane vectors are only ever passed between always-inlined functions, so the AVX argument-passing ABI that GCC
// warns about does not matter here.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace gpaco {

LabelIndex::LabelIndex(const int64_t* labels, int64_t n) {
  if (n == 0) return;
  const auto [lo_it, hi_it] = std::minmax_element(labels, labels + n);
  const int64_t lo = *lo_it, hi = *hi_it;
  columns_.resize(static_cast<size_t>(n));
  sorted_labels_.resize(static_cast<size_t>(n));
  // Labels of a dataset span a small range (classes): a counting sort is linear and stable. Arbitrary int64 labels
  // (SupCon accepts any) fall back to a comparison sort.
  if (hi - lo >= 0 && hi - lo < 4 * n + 1024) {
    std::vector<int64_t> start(static_cast<size_t>(hi - lo + 2), 0);
    for (int64_t j = 0; j < n; ++j) ++start[static_cast<size_t>(labels[j] - lo + 1)];
    for (size_t k = 1; k < start.size(); ++k) start[k] += start[k - 1];
    for (int64_t j = 0; j < n; ++j) {
      const int64_t at = start[static_cast<size_t>(labels[j] - lo)]++;
      columns_[static_cast<size_t>(at)] = j;
      sorted_labels_[static_cast<size_t>(at)] = labels[j];
    }
  } else {
    std::iota(columns_.begin(), columns_.end(), int64_t{0});
    std::stable_sort(columns_.begin(), columns_.end(), [labels](int64_t a, int64_t b) { return labels[a] < labels[b]; });
    for (int64_t k = 0; k < n; ++k) sorted_labels_[static_cast<size_t>(k)] = labels[columns_[static_cast<size_t>(k)]];
  }
  // Dense ids (0 .. distinct - 1) per column, for the masked vector passes over rows with many positives.
  dense_.resize(static_cast<size_t>(n));
  int32_t id = -1;
  for (int64_t k = 0; k < n; ++k) {
    if (k == 0 || sorted_labels_[static_cast<size_t>(k)] != sorted_labels_[static_cast<size_t>(k - 1)]) ++id;
    dense_[static_cast<size_t>(columns_[static_cast<size_t>(k)])] = id;
  }
}

int32_t LabelIndex::dense_id(int64_t label) const {
  const int64_t* b = begin(label);
  if (b == end(label)) return -1;
  return dense_[static_cast<size_t>(*b)];
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

constexpr int kLanes = 16;
typedef float fv __attribute__((vector_size(4 * kLanes)));
typedef int32_t iv __attribute__((vector_size(4 * kLanes)));

GPACO_INLINE fv loadv(const float* p) {
  fv v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

GPACO_INLINE iv loadi(const int32_t* p) {
  iv v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

GPACO_INLINE void storev(float* p, fv v) { std::memcpy(p, &v, sizeof(v)); }

GPACO_INLINE fv splat(float x) { return fv{} + x; }

float exp_approx(float x) { return exp_lanes<float, int32_t>(x); }

namespace {

GPACO_HOT float max_of(const float* x, int64_t n) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  fv mv = splat(neg_inf);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const fv v = loadv(x + j);
    mv = v > mv ? v : mv;
  }
  float m = neg_inf;
  for (int k = 0; k < kLanes; ++k) m = mv[k] > m ? mv[k] : m;
  for (; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

GPACO_HOT float sum_of(const float* x, int64_t n) {
  fv sv = splat(0.0f);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) sv += loadv(x + j);
  float s = 0.0f;
  for (int k = 0; k < kLanes; ++k) s += sv[k];
  for (; j < n; ++j) s += x[j];
  return s;
}

// x = exp(x - shift); returns the sum (16 float lanes, combined in double).
GPACO_HOT double exp_shift_sum(float* x, int64_t n, float shift) {
  fv sv = splat(0.0f);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const fv e = exp_lanes<fv, iv>(loadv(x + j) - shift);
    storev(x + j, e);
    sv += e;
  }
  double total = 0.0;
  for (int k = 0; k < kLanes; ++k) total += sv[k];
  for (; j < n; ++j) {
    x[j] = exp_lanes<float, int32_t>(x[j] - shift);
    total += x[j];
  }
  return total;
}

GPACO_HOT void affine_inplace(float* x, int64_t n, float mul, float add) {
  for (int64_t j = 0; j < n; ++j) x[j] = x[j] * mul + add;
}

// Sum of x over the columns whose dense label id is `id` (a vector pass with a mask: for rows with many positives,
// cheaper than gathering them one by one).
GPACO_HOT double masked_sum(const float* x, const int32_t* ids, int64_t n, int32_t id) {
  fv sv = splat(0.0f);
  const fv zero = splat(0.0f);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) sv += (loadi(ids + j) == id) ? loadv(x + j) : zero;
  double total = 0.0;
  for (int k = 0; k < kLanes; ++k) total += sv[k];
  for (; j < n; ++j) total += ids[j] == id ? x[j] : 0.0f;
  return total;
}

// x += value on the columns whose dense label id is `id`.
GPACO_HOT void masked_add(float* x, const int32_t* ids, int64_t n, int32_t id, float value) {
  const fv add = splat(value), zero = splat(0.0f);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) storev(x + j, loadv(x + j) + ((loadi(ids + j) == id) ? add : zero));
  for (; j < n; ++j) x[j] += ids[j] == id ? value : 0.0f;
}

double masked_sum(const double* x, const int32_t* ids, int64_t n, int32_t id) {
  double total = 0.0;
  for (int64_t j = 0; j < n; ++j) total += ids[j] == id ? x[j] : 0.0;
  return total;
}

void masked_add(double* x, const int32_t* ids, int64_t n, int32_t id, double value) {
  for (int64_t j = 0; j < n; ++j) x[j] += ids[j] == id ? value : 0.0;
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

// A row with more positives than this fraction of a segment's columns is handled by masked vector passes over the
// whole segment instead of gathering its positive columns one by one (few classes: a third of a 50 000-column row).
constexpr int64_t kDenseFraction = 16;

// Sum of seg[c] over the columns c of `label` in `index`, skipping column `skip`; adds the count to *count.
template <typename T>
T gather_sum(const LabelIndex* index, int64_t label, const T* seg, int64_t skip, int64_t* count) {
  const int64_t* b = index->begin(label);
  const int64_t* e = index->end(label);
  const int64_t found = e - b, n = index->size();
  if (found * kDenseFraction > n) {
    const int32_t id = index->dense_id(label);
    const int32_t* ids = index->dense_ids();
    const bool has_skip = skip >= 0 && skip < n && ids[skip] == id;
    *count += found - (has_skip ? 1 : 0);
    if (!has_skip) return static_cast<T>(masked_sum(seg, ids, n, id));
    // The skipped column is left out of the pass, not subtracted afterwards (it may hold the row's max).
    return static_cast<T>(masked_sum(seg, ids, skip, id) + masked_sum(seg + skip + 1, ids + skip + 1, n - skip - 1, id));
  }
  T total = 0;
  for (const int64_t* c = b; c != e; ++c) {
    if (*c == skip) continue;
    total += seg[*c];
    ++*count;
  }
  return total;
}

template <typename T>
void gather_add(const LabelIndex* index, int64_t label, T* seg, int64_t skip, T value) {
  const int64_t* b = index->begin(label);
  const int64_t* e = index->end(label);
  const int64_t n = index->size();
  if ((e - b) * kDenseFraction > n) {
    const int32_t id = index->dense_id(label);
    const int32_t* ids = index->dense_ids();
    if (skip >= 0 && skip < n && ids[skip] == id) {
      masked_add(seg, ids, skip, id, value);
      masked_add(seg + skip + 1, ids + skip + 1, n - skip - 1, id, value);
    } else {
      masked_add(seg, ids, n, id, value);
    }
    return;
  }
  for (const int64_t* c = b; c != e; ++c) {
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
