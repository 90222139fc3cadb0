// Unit test of the kernel core: exp_approx against std::exp, and paco_row (sum w l, lse, P and the in-place
// gradient) against a naive per-column evaluation of the loss, for float and double, on rows with and without a class
// block, queue, self column, ignored label, smoothing and exclusion. Built by CMake, run by ctest, also under
// AddressSanitizer and UndefinedBehaviorSanitizer.
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "core/paco_rows.h"

namespace {

int failures = 0;

void expect_close(double got, double want, double tol, const char* what, int row) {
  if (!(std::fabs(got - want) <= tol * (1.0 + std::fabs(want)))) {
    std::printf("FAIL %s (row %d): got %.12g want %.12g\n", what, row, got, want);
    ++failures;
  }
}

struct Case {
  int64_t C, N, K;
  double alpha, beta, gamma, smooth;
  bool exclude;
  double lse_eps;
  double masked_boost = 0.0;  // added to the masked columns (self, excluded own class): they then hold the max
};

// Naive: per column weights w, d from the labels, then the formulas of the loss.
template <typename T>
void check_case(const Case& cs, std::mt19937& gen, double tol) {
  std::normal_distribution<double> normal(0.0, 2.0);
  std::uniform_int_distribution<int64_t> pick(0, 3);
  const int64_t M = cs.C + cs.N + cs.K;
  std::vector<int64_t> batch_labels(cs.N), queue_labels(cs.K);
  for (auto& v : batch_labels) v = pick(gen);
  for (auto& v : queue_labels) v = pick(gen);
  gpaco::LabelIndex bi(batch_labels.data(), cs.N), qi(queue_labels.data(), cs.K);
  gpaco::RowConfig<T> cfg;
  cfg.num_classes = cs.C;
  cfg.batch_cols = cs.N;
  cfg.queue_cols = cs.K;
  cfg.class_scale = T(1.25);
  cfg.sample_scale = T(2.5);
  cfg.alpha = T(cs.alpha);
  cfg.gamma = T(cs.gamma);
  cfg.beta_on = T(cs.beta * (1 - cs.smooth));
  cfg.beta_off = T(cs.C > 1 ? cs.beta * cs.smooth / (cs.C - 1) : 0.0);
  cfg.exclude_positive_class = cs.exclude;
  cfg.lse_eps = T(cs.lse_eps);
  cfg.batch_index = &bi;
  cfg.queue_index = &qi;
  for (int row_id = 0; row_id < 6; ++row_id) {
    const int64_t self = cs.N > 0 ? row_id % cs.N : -1;
    const int64_t label = row_id == 5 ? -100 : (cs.N > 0 ? batch_labels[self] : pick(gen));
    std::vector<double> l(M), w(M, 0.0), d(M, 0.0);
    for (auto& v : l) v = normal(gen);
    if (self >= 0) l[cs.C + self] += cs.masked_boost;
    if (cs.exclude && label >= 0 && label < cs.C) l[label] += cs.masked_boost;
    for (int64_t c = 0; c < cs.C; ++c) {
      const bool own = c == label;
      w[c] = own ? double(cfg.beta_on) : double(cfg.beta_off);
      d[c] = (cs.exclude && own) ? 0.0 : 1.0;
    }
    for (int64_t j = 0; j < cs.N; ++j) {
      w[cs.C + j] = (j != self && batch_labels[j] == label) ? cs.alpha : 0.0;
      d[cs.C + j] = j != self ? cs.gamma : 0.0;
    }
    for (int64_t k = 0; k < cs.K; ++k) {
      w[cs.C + cs.N + k] = queue_labels[k] == label ? cs.alpha : 0.0;
      d[cs.C + cs.N + k] = cs.gamma;
    }
    double m = -INFINITY, z = 0, wl = 0, P = 0;
    for (int64_t j = 0; j < M; ++j) m = std::max(m, l[j]);
    for (int64_t j = 0; j < M; ++j) {
      z += d[j] * std::exp(l[j] - m);
      wl += w[j] * l[j];
      P += w[j];
    }
    const double lse = m + std::log(z + cs.lse_eps);
    const bool valid = P > 0 && label != -100;
    // The caller's coefficients: a = upstream x loss scale (0 when ignored), and 1/P passed in (even rows) or left
    // to the row to compute from its own P (odd rows, as the forward with gradients does).
    const double a = label != -100 ? 1.7 * -0.7 : 0.0;
    const T coef = T(a), inv_pos = T(valid ? 1.0 / P : 0.0);
    std::vector<T> buf(M);
    for (int64_t j = 0; j < M; ++j) buf[j] = T(l[j]);
    auto res = gpaco::paco_row<T>(cfg, buf.data(), self, label, &coef, row_id % 2 == 0 ? &inv_pos : nullptr);
    expect_close(res.wl, wl, tol, "sum w l", row_id);
    expect_close(res.pos, P, tol, "P", row_id);
    if (valid) expect_close(res.lse, lse, tol, "lse", row_id);
    for (int64_t j = 0; j < M; ++j) {
      const double scale = j < cs.C ? 1.25 : 2.5;
      const double g = valid ? a * (w[j] / P - d[j] * std::exp(l[j] - lse)) * scale : 0.0;
      expect_close(buf[j], g, tol, "gradient", row_id);
    }
  }
}

// A NaN logit (from NaN features, queue rows or class logits) must reach the loss, lse and gradient, never crash or
// read out of bounds (this test also runs under ASan and UBSan).
template <typename T>
void check_nan_propagates() {
  std::vector<int64_t> labels = {0, 1, 0, 2, 1};
  gpaco::LabelIndex index(labels.data(), 5);
  gpaco::RowConfig<T> cfg;
  cfg.num_classes = 3;
  cfg.batch_cols = 5;
  cfg.class_scale = T(1);
  cfg.sample_scale = T(1);
  cfg.alpha = T(1);
  cfg.gamma = T(1);
  cfg.beta_on = T(1);
  cfg.lse_eps = T(1e-12);
  cfg.batch_index = &index;
  cfg.queue_index = &index;
  for (int where = 0; where < 8; ++where) {
    // Not the self column alone (index 4): NaN features make the anchor's whole row NaN, never that entry only.
    if (where == 4) continue;
    std::vector<T> row(8, T(0.5));
    row[where] = std::numeric_limits<T>::quiet_NaN();
    const T coef = T(-1);
    auto res = gpaco::paco_row<T>(cfg, row.data(), 1, 0, &coef, nullptr);
    // Every column but the masked self column is in the denominator: the NaN must reach lse (and so the loss).
    if (!std::isnan(double(res.lse))) {
      std::printf("FAIL NaN at column %d did not reach the sums (wl %g, lse %g)\n", where, double(res.wl),
                  double(res.lse));
      ++failures;
    }
    bool any_nan = false;
    for (T g : row) any_nan |= std::isnan(double(g));
    if (!any_nan) {
      std::printf("FAIL NaN at column %d did not reach the gradient\n", where);
      ++failures;
    }
  }
}

}  // namespace

int main() {
  for (float x = -90.0f; x <= 0.0f; x += 0.01f) {
    const double want = std::exp(double(x));
    const double got = gpaco::exp_approx(x);
    if (x > -87.0f && std::fabs(got - want) > 4e-7 * want) {
      std::printf("FAIL exp_approx(%g) = %.9g, want %.9g\n", x, got, want);
      ++failures;
    }
  }
  // The vector path (8 lanes) and the scalar tail, on values spread over the range that matters.
  std::vector<float> v(1003);
  for (size_t k = 0; k < v.size(); ++k) v[k] = -80.0f + 80.0f * float(k) / float(v.size());
  std::vector<float> expected(v.size());
  for (size_t k = 0; k < v.size(); ++k) expected[k] = float(std::exp(double(v[k]) + 1.0));
  gpaco::exp_shift_inplace(v.data(), int64_t(v.size()), -1.0f);
  for (size_t k = 0; k < v.size(); ++k) expect_close(v[k], expected[k], 1e-6, "exp_shift_inplace", int(k));

  std::mt19937 gen(1234);
  const Case cases[] = {
      {7, 13, 11, 0.7, 1.0, 0.5, 0.0, false, 1e-12},  // everything
      {7, 13, 0, 0.5, 0.9, 1.2, 0.1, true, 1e-12},   // smoothing, exclusion, no queue
      {0, 19, 0, 1.0, 1.0, 1.0, 0.0, false, 0.0},    // SupCon: batch only, no epsilon
      {5, 0, 0, 0.0, 1.0, 0.0, 0.0, true, 0.0},      // PSC: classes only
      {1, 9, 17, 0.3, 2.0, 0.0, 0.0, false, 1e-12},  // one class, gamma 0
      {4, 1, 3, 1.0, 1.0, 1.0, 0.2, false, 1e-12},   // a single batch column (the anchor itself)
      // The masked self column / excluded own class hold the max, 25 above the rest: the denominator must not be
      // formed by subtracting them (float cancellation), and the 1e-12 inside the log is then felt.
      {3, 13, 5, 0.7, 1.0, 0.5, 0.0, false, 1e-12, 25.0},
      {6, 9, 0, 0.5, 1.0, 1.0, 0.1, true, 0.0, 25.0},
  };
  for (const auto& cs : cases) {
    check_case<double>(cs, gen, 1e-10);
    check_case<float>(cs, gen, 2e-5);
  }
  check_nan_propagates<float>();
  check_nan_propagates<double>();
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("paco_rows: all checks passed\n");
  return 0;
}
