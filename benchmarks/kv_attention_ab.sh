#!/bin/sh
# Usage: benchmarks/kv_attention_ab.sh OLD_attention.cc NEW_attention.cc (see kv_attention_ab.cc)
set -e
ROOT=$(cd "$(dirname "$0")/.." && pwd)
T=$(mktemp -d)
for v in old new; do
  f=$1; [ $v = new ] && f=$2
  sed -e "s/namespace kv {/namespace kv { namespace ver_$v {/" -e "s/^}  \/\/ namespace kv/}}  \/\/ namespace kv/" "$f" > "$T/$v.cc"
done
${CXX:-g++} -O3 -DNDEBUG -std=c++17 -I"$ROOT/csrc" "$ROOT/benchmarks/kv_attention_ab.cc" "$T/old.cc" "$T/new.cc" \
  "$ROOT/csrc/kv/thread_pool.cc" "$ROOT/csrc/ccl/dtypes.cc" -lpthread -o "$T/ab"
"$T/ab"
rm -rf "$T"
