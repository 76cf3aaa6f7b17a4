// Attention of a step's new tokens over their sequences' paged histories.
//
// Work is split into items of one sequence, one kv head and a block of up to 16 of its
// new tokens (decode: one token, so an item is a (sequence, kv head) pair). An item
// reads its sequence's keys and values for that kv head once, in tiles of up to 32
// positions within a page (a contiguous run there: read in place when float32, widened
// to float32 otherwise), and serves every q head of the kv head's group and every token
// of the block from each tile with an online softmax: per query a running maximum, a
// running sum of exponentials and a float32 accumulator, rescaled when the maximum
// grows, so no score matrix is ever stored and a history of any length costs a fixed
// amount of scratch. Decode is memory-bound: each cached key and value is read once per
// (sequence, kv head). Rows of an item go through a tile in pairs, so that each key and
// value vector loaded serves two queries (prefill: 9% less time per token on the ~100M
// Llama's 512-token steps, decode 8%), and the scores of four keys are summed by one
// transpose rather than four horizontal sums.
// q and out may be of another element type than the storage (a float32 model over a
// 16-bit cache): queries are widened to float32 and outputs rounded to their own type.
// Items run on the cache's thread pool when there are several and
// enough bytes to read. The inner loops use 8-wide vectors (GCC/Clang vector
// extensions) and are compiled for AVX-512, for AVX2/FMA and for baseline x86-64 (function
// multiversioning picks one at load time).
#pragma once

#include <cstdint>
#include <vector>

#include "kv/paged_kv_cache.h"
#include "kv/thread_pool.h"

namespace disco {
namespace kv {

// One layer of the cache and one step's queries, as the kernel reads them.
struct AttentionArgs {
  DType dtype;         // of the keys and values stored
  DType io_dtype;      // of q and out (may differ: float32 queries over a 16-bit cache)
  int64_t num_heads, num_kv_heads, head_dim, page_size;
  const void* keys;    // this layer: [page][kv_head][slot][dim]
  const void* values;
  const std::vector<StepEntry>* step;
  const std::vector<const int32_t*>* page_tables;  // one per step entry
  const void* q;       // [row][head][dim]
  void* out;           // [row][head][dim]
  float scale;
};

// Reads keys and values up to and including each row's position (they must already hold
// the step's new tokens) and writes every row of `out`.
void attend(const AttentionArgs& a, ThreadPool& pool);

}  // namespace kv
}  // namespace disco
