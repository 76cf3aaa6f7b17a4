#include "kv/thread_pool.h"

#include <unistd.h>

namespace disco {
namespace kv {

ThreadPool::ThreadPool(int num_threads) : state_(new State), owner_pid_(getpid()) {
  State* s = state_.get();
  for (int i = 1; i < num_threads; ++i) s->helpers.emplace_back([s] { helper_main(s); });
}

ThreadPool::~ThreadPool() {
  if (getpid() != owner_pid_) {  // a forked child: see State
    state_.release();
    return;
  }
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->stop = true;
  }
  state_->wake.notify_all();
  for (auto& t : state_->helpers) t.join();
}

void ThreadPool::run_items(State* s) {
  for (int64_t i = s->next.fetch_add(1, std::memory_order_relaxed); i < s->n;
       i = s->next.fetch_add(1, std::memory_order_relaxed)) {
    (*s->fn)(i);
  }
}

void ThreadPool::helper_main(State* s) {
  uint64_t seen = 0;
  std::unique_lock<std::mutex> lock(s->mu);
  for (;;) {
    s->wake.wait(lock, [&] { return s->stop || s->generation != seen; });
    if (s->stop) return;
    seen = s->generation;
    lock.unlock();
    run_items(s);
    lock.lock();
    if (--s->pending == 0) s->done.notify_one();
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
  State* s = state_.get();
  if (s->helpers.empty() || n <= 1 || getpid() != owner_pid_) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(s->mu);
    s->fn = &fn;
    s->n = n;
    s->next.store(0, std::memory_order_relaxed);
    s->pending = s->helpers.size();
    ++s->generation;
  }
  s->wake.notify_all();
  run_items(s);
  std::unique_lock<std::mutex> lock(s->mu);
  s->done.wait(lock, [&] { return s->pending == 0; });
  s->fn = nullptr;
}

}  // namespace kv
}  // namespace disco
