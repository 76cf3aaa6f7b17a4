#include "kv/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "ccl/dtypes.h"

namespace disco {
namespace kv {
namespace {

constexpr int64_t kKeyTile = 32;     // positions staged per online-softmax step
constexpr int64_t kQueryBlock = 16;  // new tokens of one sequence per work item
// Below this many bytes of keys and values to read, a step runs on the calling thread:
// waking the pool would cost more than it saves.
constexpr int64_t kParallelBytes = 256 << 10;

// Storage element types: how to widen to float32 and round back.
struct F32 {
  using T = float;
  static float load(float x) { return x; }
  static float store(float x) { return x; }
};
struct F16 {
  using T = uint16_t;
  static float load(uint16_t x) { return ccl::f16_to_f32(x); }
  static uint16_t store(float x) { return ccl::f32_to_f16(x); }
};
struct BF16 {
  using T = uint16_t;
  static float load(uint16_t x) { return ccl::bf16_to_f32(x); }
  static uint16_t store(float x) { return ccl::f32_to_bf16(x); }
};

struct WorkItem {
  int64_t entry;    // index into the step
  int64_t kv_head;
  int64_t first;    // new tokens [first, last) of the entry
  int64_t last;
};

// Online-softmax state of one query row.
struct Row {
  const float* q;   // scaled query, float32
  float* acc;       // sum of p_i * v_i so far
  float max;        // largest score so far
  float sum;        // sum of p_i = exp(score_i - max) so far
  int64_t limit;    // the row attends to positions < limit
};

// Folds positions [p0, p0 + n) of the staged tile into `r`: kt is [dim][kKeyTile]
// (transposed, so the scores of a tile are one vectorisable loop per dim), vt is
// [kKeyTile][dim].
inline void fold_tile(Row& r, int64_t p0, int64_t n, const float* kt, const float* vt, int64_t dim,
                      float* scores) {
  const int64_t valid = std::min(n, r.limit - p0);
  if (valid <= 0) return;
  for (int64_t i = 0; i < valid; ++i) scores[i] = 0.f;
  for (int64_t d = 0; d < dim; ++d) {
    const float qd = r.q[d];
    const float* kd = kt + d * kKeyTile;
    for (int64_t i = 0; i < valid; ++i) scores[i] += qd * kd[i];
  }
  float new_max = r.max;
  for (int64_t i = 0; i < valid; ++i) new_max = std::max(new_max, scores[i]);
  if (new_max > r.max) {  // rescale what was summed under the old maximum
    const float c = std::exp(r.max - new_max);  // 0 for the first tile (max = -inf)
    r.sum *= c;
    for (int64_t d = 0; d < dim; ++d) r.acc[d] *= c;
    r.max = new_max;
  }
  for (int64_t i = 0; i < valid; ++i) {
    const float p = std::exp(scores[i] - new_max);
    r.sum += p;
    const float* vi = vt + i * dim;
    for (int64_t d = 0; d < dim; ++d) r.acc[d] += p * vi[d];
  }
}

template <typename E>
void attend_item(const AttentionArgs& a, const WorkItem& w) {
  using T = typename E::T;
  const int64_t group = a.num_heads / a.num_kv_heads, dim = a.head_dim, S = a.page_size;
  const StepEntry& e = (*a.step)[w.entry];
  const int32_t* table = (*a.page_tables)[w.entry];
  const int64_t ntok = w.last - w.first, nrows = ntok * group;

  // Scratch: scaled queries and accumulators per row, the staged tile, its scores.
  std::vector<float> scratch(2 * nrows * dim + 2 * kKeyTile * dim + kKeyTile);
  float* qf = scratch.data();
  float* acc = qf + nrows * dim;
  float* kt = acc + nrows * dim;
  float* vt = kt + kKeyTile * dim;
  float* scores = vt + kKeyTile * dim;

  // Row t * group + g: new token first + t, q head kv_head * group + g.
  std::vector<Row> rows(nrows);
  const T* q = static_cast<const T*>(a.q);
  for (int64_t t = 0; t < ntok; ++t) {
    const int64_t row = e.row + w.first + t;
    for (int64_t g = 0; g < group; ++g) {
      const int64_t r = t * group + g;
      const T* src = q + (row * a.num_heads + w.kv_head * group + g) * dim;
      for (int64_t d = 0; d < dim; ++d) qf[r * dim + d] = E::load(src[d]) * a.scale;
      rows[r] = Row{qf + r * dim, acc + r * dim, -std::numeric_limits<float>::infinity(), 0.f,
                    e.start + w.first + t + 1};
    }
  }

  const T* keys = static_cast<const T*>(a.keys);
  const T* values = static_cast<const T*>(a.values);
  const int64_t end = e.start + w.last;  // the block's last token sees positions < end
  for (int64_t p0 = 0; p0 < end; p0 += kKeyTile) {
    const int64_t n = std::min(kKeyTile, end - p0);
    for (int64_t i = 0; i < n; ++i) {  // stage: follow the page table, widen to float32
      const int64_t pos = p0 + i;
      const int64_t block = ((int64_t)table[pos / S] * a.num_kv_heads + w.kv_head) * S + pos % S;
      const T* kp = keys + block * dim;
      const T* vp = values + block * dim;
      for (int64_t d = 0; d < dim; ++d) {
        kt[d * kKeyTile + i] = E::load(kp[d]);
        vt[i * dim + d] = E::load(vp[d]);
      }
    }
    for (Row& r : rows) fold_tile(r, p0, n, kt, vt, dim, scores);
  }

  T* out = static_cast<T*>(a.out);
  for (int64_t t = 0; t < ntok; ++t) {
    const int64_t row = e.row + w.first + t;
    for (int64_t g = 0; g < group; ++g) {
      const Row& r = rows[t * group + g];
      T* dst = out + (row * a.num_heads + w.kv_head * group + g) * dim;
      const float inv = 1.f / r.sum;
      for (int64_t d = 0; d < dim; ++d) dst[d] = E::store(r.acc[d] * inv);
    }
  }
}

template <typename E>
void attend_all(const AttentionArgs& a, ThreadPool& pool) {
  std::vector<WorkItem> items;
  int64_t bytes = 0;  // keys and values read, summed over items
  for (int64_t i = 0; i < (int64_t)a.step->size(); ++i) {
    const StepEntry& e = (*a.step)[i];
    for (int64_t first = 0; first < e.count; first += kQueryBlock) {
      const int64_t last = std::min(e.count, first + kQueryBlock);
      for (int64_t h = 0; h < a.num_kv_heads; ++h) items.push_back({i, h, first, last});
      bytes += (e.start + last) * a.num_kv_heads * a.head_dim * 2 * (int64_t)sizeof(typename E::T);
    }
  }
  // Longest histories first, so that the last items to start are the short ones.
  std::stable_sort(items.begin(), items.end(), [&](const WorkItem& x, const WorkItem& y) {
    return (*a.step)[x.entry].start + x.last > (*a.step)[y.entry].start + y.last;
  });
  auto run = [&](int64_t i) { attend_item<E>(a, items[i]); };
  if (bytes < kParallelBytes) {
    for (int64_t i = 0; i < (int64_t)items.size(); ++i) run(i);
  } else {
    pool.parallel_for((int64_t)items.size(), run);
  }
}

}  // namespace

void attend(const AttentionArgs& a, ThreadPool& pool) {
  switch (a.dtype) {
    case DType::kF32: return attend_all<F32>(a, pool);
    case DType::kF16: return attend_all<F16>(a, pool);
    case DType::kBF16: return attend_all<BF16>(a, pool);
  }
}

}  // namespace kv
}  // namespace disco
