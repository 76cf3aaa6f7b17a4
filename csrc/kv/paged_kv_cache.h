// The paged KV cache of one worker: the keys and values of every sequence it serves,
// for its own kv heads (tensor parallelism gives each worker H/N query heads and
// KV/N kv heads), stored in fixed-size pages.
//
// Why pages. Sequences grow a token at a time and leave in any order; a buffer per
// sequence would have to be sized for the longest possible history or be reallocated
// and copied as it grows. With pages (vLLM's blocks, MLC-LLM's pages) a sequence owns
// a list of page ids -- its page table -- and takes a page from the free list each
// time its length crosses a page boundary; removing it returns its pages at once.
// Memory is one allocation made up front (`num_pages` pages), waste is under one page
// per sequence, and the attention kernel follows the page table.
//
// Layout. Keys and values are two arrays [layer][page][kv_head][slot][dim]: for one
// layer and kv head, a page's `page_size` tokens are one contiguous block of
// page_size x head_dim elements, which the kernel reads once per (sequence, kv head)
// and uses for all the q heads of that kv head's group.
//
// A step. begin_forward(ids, lengths) reserves the pages the step needs (all or none)
// and commits the new lengths; attention(layer, ...) then writes that layer's new keys
// and values at the committed positions and attends. Every public method takes the
// cache's lock, so threads of one process may share a cache safely (one call at a time).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "kv/thread_pool.h"

namespace disco {
namespace kv {

// Misuse of the cache (unknown sequence, bad arguments); disco.errors.KVCacheError.
struct KVError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// begin_forward needs more pages than are free; disco.errors.OutOfPagesError.
struct OutOfPages : KVError {
  OutOfPages(const std::string& what, int64_t needed, int64_t free)
      : KVError(what), needed(needed), free(free) {}
  int64_t needed;
  int64_t free;
};

// Element type of the storage, and of q, k, v, out (which may differ from the storage's:
// a float32 model over a 16-bit cache). Codes shared with disco/kv_cache.py.
enum class DType : int32_t { kF32 = 0, kF16 = 1, kBF16 = 2 };
size_t dtype_size(DType t);

struct Options {
  int64_t num_layers = 1;
  int64_t num_kv_heads = 1;   // this worker's kv heads
  int64_t head_dim = 64;
  int64_t num_pages = 0;      // pages per layer; a page holds page_size tokens of every layer
  int64_t page_size = 16;     // tokens per page
  DType dtype = DType::kF32;
  int num_threads = 1;        // threads of the attention kernel, the caller's included
};

// One sequence's part of the current step: rows [row, row + count) of q/k/v/out are
// its tokens at positions [start, start + count).
struct StepEntry {
  int64_t seq_id;
  int64_t start;
  int64_t count;
  int64_t row;
};

class PagedKVCache {
 public:
  explicit PagedKVCache(const Options& o);

  const Options& options() const { return o_; }

  void add_sequence(int64_t seq_id);
  void remove_sequence(int64_t seq_id);

  // The next step appends lengths[i] tokens to ids[i]: reserves the pages (OutOfPages,
  // and nothing changes, when too few are free) and commits the new lengths.
  void begin_forward(const std::vector<int64_t>& ids, const std::vector<int64_t>& lengths);

  // Positions of the step's tokens, in row order; the step's number of rows.
  std::vector<int64_t> positions();
  int64_t step_rows();

  // For each row: writes k, v (rows x num_kv_heads x head_dim) into `layer`'s pages,
  // then out[row, h] = softmax(scale * q[row, h] . K^T) V over the row's sequence up to
  // and including the row's position; kv head h / (num_heads / num_kv_heads).
  // q, out: rows x num_heads x head_dim. q, k, v and out are all of `io_dtype` (k and v
  // are rounded to the cache's dtype as they are written), C-contiguous, with the
  // shapes the bindings check; `rows` must equal the step's (checked under the lock, so
  // another thread's begin_forward cannot slip in between). Runs without the Python GIL.
  void attention(int64_t layer, int64_t rows, int64_t num_heads, DType io_dtype, const void* q, const void* k,
                 const void* v, void* out, float scale);

  int64_t seq_length(int64_t seq_id);
  std::vector<int64_t> sequences();
  int64_t num_free_pages();
  // The page table of a sequence (for tests and diagnostics).
  std::vector<int32_t> pages(int64_t seq_id);
  // The storage, [layer][page][kv_head][slot][dim] each (the bindings expose it as arrays).
  char* keys() { return keys_.get(); }
  char* values() { return values_.get(); }

 private:
  struct Sequence {
    int64_t length = 0;
    std::vector<int32_t> pages;
  };
  struct FreeDeleter {
    void operator()(void* p) const;
  };

  Sequence& find(int64_t seq_id, const char* where);
  void check_step(const char* where);
  size_t layer_elems() const { return size_t(o_.num_pages) * o_.num_kv_heads * o_.page_size * o_.head_dim; }

  Options o_;
  std::unique_ptr<char, FreeDeleter> keys_, values_;  // [layer][page][kv_head][slot][dim]
  std::vector<int32_t> free_pages_;                   // a stack: freed pages are reused first
  std::map<int64_t, Sequence> seqs_;
  std::vector<StepEntry> step_;
  std::string no_step_;    // why there is no current step ("" once begin_forward succeeded)
  ThreadPool pool_;
  std::mutex mu_;
};

}  // namespace kv
}  // namespace disco
