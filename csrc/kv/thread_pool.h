// A fixed set of threads that run the iterations of one loop at a time: the attention
// kernel's work items (a sequence's kv head, or a block of its new tokens). Threads are
// made once per cache and sleep between calls, so a decode step pays a wake-up, not a
// thread creation, per layer.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
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

  // fn(i) for every i in [0, n), each exactly once, iterations handed out one at a time
  // (uneven items balance themselves); returns when all have finished. `fn` must not
  // throw. One loop at a time: callers serialise (the cache holds its lock).
  // Every helper joins every loop (finding nothing left if it wakes late) before the
  // loop returns, so no helper can carry one loop's `fn` into the next.
  // In a process forked from the one that made the pool, the loop runs on the caller
  // alone (fork copies only the calling thread).
  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

 private:
  // What the helpers share with the caller. In a forked child it records helpers that
  // do not exist there (destroying its condition variables would wait for them), so
  // the pool of a forked child leaks it instead.
  struct State {
    std::vector<std::thread> helpers;
    std::mutex mu;
    std::condition_variable wake;   // a new loop, or stop
    std::condition_variable done;   // every helper finished the current loop
    const std::function<void(int64_t)>* fn = nullptr;
    int64_t n = 0;
    std::atomic<int64_t> next{0};
    uint64_t generation = 0;        // counts loops, so a helper joins each one once
    size_t pending = 0;             // helpers that have not yet finished the current loop
    bool stop = false;
  };

  static void helper_main(State* s);
  static void run_items(State* s);

  std::unique_ptr<State> state_;
  int owner_pid_;                   // the process that made the helpers
};

}  // namespace kv
}  // namespace disco
