// A/B of two versions of csrc/kv/attention.cc in one process, interleaved step by step:
// the prefill steps of benchmarks/serve.py's workload (32 prompts of 16..256 tokens in
// 512-token steps; per worker of tp=2: 6 q heads, 2 kv heads, head_dim 64, pages of 16)
// over 12 layers, then decode steps of the 32 sequences; thread CPU time of each.
//
//   git show main:csrc/kv/attention.cc > /tmp/a.cc; cp csrc/kv/attention.cc /tmp/b.cc
//   benchmarks/kv_attention_ab.sh /tmp/a.cc /tmp/b.cc
#include <chrono>
#include <cstdio>
#include <random>
#include <algorithm>
#include <cmath>
#include <time.h>
#include "kv/attention.h"
using namespace disco::kv;
namespace disco { namespace kv { namespace ver_old { void attend(const AttentionArgs&, ThreadPool&); } } }
namespace disco { namespace kv { namespace ver_new { void attend(const AttentionArgs&, ThreadPool&); } } }
static double tt() { timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
int main() {
  const int H = 6, KV = 2, D = 64, S = 16;
  // the benchmark's prompts: 32 lengths 16..256 (linspace), chunked in steps of 512 tokens
  std::vector<int> lens; for (int i = 0; i < 32; ++i) lens.push_back(16 + (int)((256 - 16) * i / 31.0));
  std::mt19937 rng(1); std::shuffle(lens.begin(), lens.end(), rng);
  const int pages_per_seq = 17, P = 32 * pages_per_seq;
  std::vector<float> keys((size_t)P * KV * S * D), values(keys.size());
  std::normal_distribution<float> nd; for (auto& x : keys) x = nd(rng); for (auto& x : values) x = nd(rng);
  std::vector<std::vector<int32_t>> tables(32);
  for (int i = 0; i < 32; ++i) for (int p = 0; p < pages_per_seq; ++p) tables[i].push_back(p * 32 + i);  // interleaved
  // steps
  std::vector<std::vector<StepEntry>> steps; std::vector<std::vector<const int32_t*>> tabs;
  std::vector<int> pos(32, 0); int i = 0; long total = 0;
  while (i < 32) {
    std::vector<StepEntry> st; std::vector<const int32_t*> tb; int budget = 512, row = 0;
    while (i < 32 && budget > 0) {
      int k = std::min(lens[i] - pos[i], budget);
      st.push_back({i, pos[i], k, row}); tb.push_back(tables[i].data());
      row += k; budget -= k; pos[i] += k; if (pos[i] == lens[i]) ++i;
    }
    total += row; steps.push_back(st); tabs.push_back(tb);
  }
  std::vector<float> q(512 * H * D), out(q.size());
  for (auto& x : q) x = nd(rng);
  ThreadPool pool(1);
  double t_old = 0, t_new = 0; float diff = 0;
  std::vector<float> out2(q.size());
  for (int rep = 0; rep < 10; ++rep) {
    for (size_t s = 0; s < steps.size(); ++s) {
      AttentionArgs a{DType::kF32, DType::kF32, H, KV, D, S, keys.data(), values.data(), &steps[s], &tabs[s], q.data(), out.data(), 0.125f};
      double t0 = tt(); for (int l = 0; l < 12; ++l) ver_old::attend(a, pool); double t1 = tt();
      a.out = out2.data();
      for (int l = 0; l < 12; ++l) ver_new::attend(a, pool); double t2 = tt();
      if (rep % 2) { t_old += t1 - t0; t_new += t2 - t1; } else { t_old += t1 - t0; t_new += t2 - t1; }
      for (size_t k = 0; k < (size_t)steps[s].back().row * 0 + q.size(); ++k) diff = std::max(diff, std::abs(out[k] - out2[k]));
    }
  }
  printf("per token (12 layers): old %.1f us  new %.1f us  (max |diff| %.2g)\n", t_old / (10.0 * total) * 1e6, t_new / (10.0 * total) * 1e6, diff);

  {  // decode: one token for each of the 32 sequences after its prompt
    std::vector<StepEntry> st; std::vector<const int32_t*> tb;
    for (int j = 0; j < 32; ++j) { st.push_back({j, lens[j], 1, j}); tb.push_back(tables[j].data()); }
    double to = 0, tn = 0;
    for (int rep = 0; rep < 200; ++rep) {
      AttentionArgs a{DType::kF32, DType::kF32, H, KV, D, S, keys.data(), values.data(), &st, &tb, q.data(), out.data(), 0.125f};
      double t0 = tt(); for (int l = 0; l < 12; ++l) ver_old::attend(a, pool); double t1 = tt();
      a.out = out2.data();
      for (int l = 0; l < 12; ++l) ver_new::attend(a, pool); double t2 = tt();
      to += t1 - t0; tn += t2 - t1;
    }
    printf("decode step of 32 (12 layers): old %.1f us  new %.1f us\n", to / 200 * 1e6, tn / 200 * 1e6);
  }
  {  // decode of one sequence (engine.generate one request at a time)
    for (int len : {40, 200}) {
      std::vector<StepEntry> st{{0, len, 1, 0}}; std::vector<const int32_t*> tb{tables[0].data()};
      double to = 0, tn = 0;
      for (int rep = 0; rep < 3000; ++rep) {
        AttentionArgs a{DType::kF32, DType::kF32, H, KV, D, S, keys.data(), values.data(), &st, &tb, q.data(), out.data(), 0.125f};
        double t0 = tt(); for (int l = 0; l < 12; ++l) ver_old::attend(a, pool); double t1 = tt();
        a.out = out2.data();
        for (int l = 0; l < 12; ++l) ver_new::attend(a, pool); double t2 = tt();
        to += t1 - t0; tn += t2 - t1;
      }
      printf("decode of 1 sequence at position %d (12 layers): old %.2f us  new %.2f us\n", len, to / 3000 * 1e6, tn / 3000 * 1e6);
    }
  }
}
