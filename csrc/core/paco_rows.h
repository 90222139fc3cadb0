// Kernel core of the CPU backend: the per-row work of the fused loss, with no dependency on torch.
//
// The op layer (csrc/paco_op.cpp) fills a row block of logits with ATen/BLAS products, laid out per row as
// [class block (C) | batch (N) | queue (K)], each already divided by its temperature. One call of paco_row turns
// one row of that buffer into the anchor's loss, lse and P and, when asked, overwrites it in place with the gradient
// of the loss with respect to the raw similarities (dL/dl times the segment's 1/temperature), ready for the products
// G C and G^T A. Positive columns are found through LabelIndex (label -> sorted columns), so the hot loops over the
// whole row are plain max / exp-and-sum / scale passes with no label reads.
#pragma once

#include <cstdint>
#include <vector>

namespace gpaco {

// Columns of each label, for finding an anchor's positives without comparing labels across the whole row.
class LabelIndex {
 public:
  LabelIndex() = default;
  LabelIndex(const int64_t* labels, int64_t n);
  // Columns whose label equals `label`, in increasing order: [begin, end).
  const int64_t* begin(int64_t label) const;
  const int64_t* end(int64_t label) const;
  int64_t size() const { return static_cast<int64_t>(columns_.size()); }
  // Dense id (0 .. distinct labels - 1) of every column, and of a label (-1 when no column has it).
  const int32_t* dense_ids() const { return dense_.data(); }
  int32_t dense_id(int64_t label) const;

 private:
  std::vector<int64_t> sorted_labels_;  // labels in increasing order
  std::vector<int64_t> columns_;        // the column of each entry of sorted_labels_
  std::vector<int32_t> dense_;          // per column: the rank of its label among the distinct labels
};

// Scalars and column layout shared by all rows of one call.
template <typename T>
struct RowConfig {
  int64_t num_classes = 0;  // C: width of the class block (0: none)
  int64_t batch_cols = 0;   // N: batch columns (0 when batch rows are not contrast columns)
  int64_t queue_cols = 0;   // K
  T class_scale = 1;        // 1 / tc: chain factor from a class logit to its raw value
  T sample_scale = 1;       // 1 / t
  T alpha = 1, beta_on = 1, beta_off = 0, gamma = 1;  // beta_on/off: class weight of the own / another class
  bool exclude_positive_class = false;
  T lse_eps = T(1e-12);
  const LabelIndex* batch_index = nullptr;
  const LabelIndex* queue_index = nullptr;

  int64_t width() const { return num_classes + batch_cols + queue_cols; }
};

template <typename T>
struct RowResult {
  T wl = 0;   // sum of w l
  T lse = 0;  // m + log(sum of d exp(l - m) + lse_eps)
  T pos = 0;  // P, the sum of w
};

// One anchor row. `row` holds width() logits and is overwritten: with the gradient G = a (w / P - d exp(l - lse))
// (times each segment's 1/temperature) when `coef` is not null, otherwise with exp(l - max). *coef is a, the
// anchor's upstream gradient times the loss scale (0 for an ignored anchor); *inv_pos is 1/P (0 for an anchor that
// adds no loss), or, when inv_pos is null, the row's own 1/P (0 when P = 0). `self_col` is the anchor's own batch
// column (its row in features), `label` its label.
template <typename T>
RowResult<T> paco_row(const RowConfig<T>& cfg, T* row, int64_t self_col, int64_t label, const T* coef,
                      const T* inv_pos);

// Vectorizable building blocks, exposed for the unit test.
float exp_approx(float x);
void exp_shift_inplace(float* x, int64_t n, float shift);  // x = exp(x - shift)

}  // namespace gpaco
