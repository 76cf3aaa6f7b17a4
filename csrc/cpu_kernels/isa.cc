// Which compiled variant of the kernels runs: the best one whose instructions the CPU
// has (asked of the CPU once, at first use), or the one DISCO_CPU_ISA names.
#include <omp.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

#include "cpu_kernels/kernels.h"

namespace disco {
namespace cpu {

const IsaKernels* isa_amx();     // nullptr where not built, or the OS refuses the tile state
const IsaKernels* isa_avx512();  // nullptr where the compiler could not build it
const IsaKernels* isa_avx2();
const IsaKernels* isa_generic();

namespace {

bool cpu_has(const char* isa) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  const std::string s = isa;
  if (s == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (s == "amx")
    return cpu_has("avx512") && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("amx-tile") &&
           __builtin_cpu_supports("amx-bf16");
  if (s == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
  return false;
}

const std::vector<const IsaKernels*>& available() {
  static const std::vector<const IsaKernels*> list = [] {
    std::vector<const IsaKernels*> l;
    if (cpu_has("amx") && isa_amx()) l.push_back(isa_amx());  // asks the OS: only on CPUs with AMX
    if (isa_avx512() && cpu_has("avx512")) l.push_back(isa_avx512());
    if (isa_avx2() && cpu_has("avx2")) l.push_back(isa_avx2());
    l.push_back(isa_generic());
    return l;
  }();
  return list;
}

std::atomic<int> team_pid{0};  // the process that last started an OpenMP team of > 1

}  // namespace

int num_isas() { return (int)available().size(); }

const IsaKernels& isa_kernels(int i) { return *available().at(i); }

const IsaKernels& find_isa(const char* name) {
  std::string names;
  for (const IsaKernels* k : available()) {
    if (std::string(k->name) == name) return *k;
    names += (names.empty() ? "" : ", ") + std::string(k->name);
  }
  throw KernelError(std::string("no CPU kernels for instruction set '") + name + "' in this build on this CPU; available: " +
                    names);
}

const IsaKernels& default_isa() {
  static const IsaKernels* chosen = [] {
    const char* env = std::getenv("DISCO_CPU_ISA");
    return env && *env ? &find_isa(env) : available().front();
  }();
  return *chosen;
}

int resolve_threads(int requested) {
  const int n = requested > 0 ? requested : omp_get_max_threads();
  if (n <= 1) return 1;  // no team: no pid to check (getpid is a system call per kernel call)
  const int pid = (int)getpid();
  const int owner = team_pid.load(std::memory_order_relaxed);
  if (owner != 0 && owner != pid) return 1;  // forked child of a process with a live team
  if (owner == 0) team_pid.store(pid, std::memory_order_relaxed);
  return n;
}

}  // namespace cpu
}  // namespace disco
