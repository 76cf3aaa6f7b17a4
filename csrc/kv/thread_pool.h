// A fixed set of threads that run the iterations of one loop at a time: the attention
// kernel's work items (a sequence's kv head, or a block of its new tokens). Threads are
// made once per cache and sleep between calls, so a decode step pays a wake-up, not a
// thread creation, per layer.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace disco {
namespace kv {

class ThreadPool {
 public:
  // `num_threads` threads take part in each loop: the caller and num_threads - 1 helpers.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(helpers_.size()) + 1; }

  // fn(i) for every i in [0, n), each exactly once, iterations handed out one at a time
  // (uneven items balance themselves); returns when all have finished. `fn` must not
  // throw. One loop at a time: callers serialise (the cache holds its lock).
  // Every helper joins every loop (finding nothing left if it wakes late) before the
  // loop returns, so no helper can carry one loop's `fn` into the next.
  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

 private:
  void helper_main();
  void run_items();

  std::vector<std::thread> helpers_;
  std::mutex mu_;
  std::condition_variable wake_;   // a new loop, or stop
  std::condition_variable done_;   // every helper finished the current loop
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  std::atomic<int64_t> next_{0};
  uint64_t generation_ = 0;        // counts loops, so a helper joins each one once
  size_t pending_ = 0;             // helpers that have not yet finished the current loop
  bool stop_ = false;
};

}  // namespace kv
}  // namespace disco
