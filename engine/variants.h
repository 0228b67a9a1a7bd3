// Kernel variants: the enums of kernels/cuda/*.cuh (GemmBackend, AttentionKernel, ConvKernel,
// LayerNormKernel, ...) each come with a *_name function that answers "?" (or nullptr) past the
// last value. named_values() lists an enum's values from that convention (tests and benchmarks
// iterate over them, so a variant added to a header is tested and timed without touching them);
// variant_from_env() picks one by name from an environment variable (the engine's CLIPCU_GEMM,
// CLIPCU_ATTENTION, CLIPCU_CONV_KERNEL, CLIPCU_LAYERNORM). Plain C++: no CUDA needed.
#pragma once
#include <cstdlib>
#include <initializer_list>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "engine/error.h"

namespace clipcu {

// E(0), E(1), ... while name(E(i)) is a real name.
template <class E>
std::vector<E> named_values(const char* (*name)(E)) {
  std::vector<E> out;
  for (int i = 0; i < 64; ++i) {
    const char* n = name(E(i));
    if (!n || std::string(n) == "?") break;
    out.push_back(E(i));
  }
  return out;
}

// The variant named by the environment variable `var` (read at every call, cheap next to a
// launch, so that a test or a benchmark can switch it within one process): `fallback` when unset
// or empty, else the value whose name matches, or one of the `aliases`; anything else is a
// clipcu::Error that names the variable and lists the choices.
template <class E>
E variant_from_env(const char* var, E fallback, const char* (*name)(E),
                   std::initializer_list<std::pair<const char*, E>> aliases = {}) {
  const char* raw = std::getenv(var);
  if (!raw || !*raw) return fallback;
  const std::string want = raw;
  const std::vector<E> values = named_values(name);
  for (E v : values)
    if (want == name(v)) return v;
  for (const auto& [alias, value] : aliases)
    if (want == alias) return value;
  std::ostringstream choices;  // the error path only
  for (size_t i = 0; i < values.size(); ++i)
    choices << (i ? ", " : "") << name(values[i]) << (values[i] == fallback ? " (the default)" : "");
  for (const auto& [alias, value] : aliases) choices << ", " << alias << " (= " << name(value) << ")";
  CLIPCU_FAIL(var << "='" << want << "': expected one of " << choices.str());
}

}  // namespace clipcu
