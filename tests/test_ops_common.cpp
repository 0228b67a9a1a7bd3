// Kernel variants (engine/variants.h), without a device: the enum's values from its name function,
// and the one chosen through an environment variable (CLIPCU_GEMM, CLIPCU_ATTENTION,
// CLIPCU_CONV_KERNEL, CLIPCU_LAYERNORM all go through variant_from_env).
#include <cstdlib>
#include <vector>

#include "engine/variants.h"
#include "tests/support.h"

using namespace clipcu;

namespace {

enum class Flavour { Plain, Fast, Exotic };
const char* flavour_name(Flavour f) {
  switch (f) {
    case Flavour::Plain: return "plain";
    case Flavour::Fast: return "fast";
    case Flavour::Exotic: return "exotic";
  }
  return "?";
}

constexpr const char* kVar = "CLIPCU_TEST_FLAVOUR";

Flavour pick(Flavour fallback = Flavour::Fast) {
  return variant_from_env(kVar, fallback, flavour_name, {{"quick", Flavour::Fast}});
}

}  // namespace

TEST_CASE("named_values: every value up to the name function's \"?\", in order") {
  CHECK(named_values(flavour_name) == std::vector<Flavour>{Flavour::Plain, Flavour::Fast, Flavour::Exotic});
}

TEST_CASE("variant_from_env: default when unset or empty, every name and alias, a clear error otherwise") {
  unsetenv(kVar);
  CHECK(pick() == Flavour::Fast);
  CHECK(pick(Flavour::Exotic) == Flavour::Exotic);
  setenv(kVar, "", 1);
  CHECK(pick(Flavour::Plain) == Flavour::Plain);
  for (Flavour f : {Flavour::Plain, Flavour::Fast, Flavour::Exotic}) {
    setenv(kVar, flavour_name(f), 1);
    CHECK(pick() == f);
  }
  setenv(kVar, "quick", 1);
  CHECK(pick(Flavour::Plain) == Flavour::Fast);
  setenv(kVar, "Fast", 1);  // names are case-sensitive, like the documented values
  CHECK_THROWS_WITH_AS(
      pick(), doctest::Contains("CLIPCU_TEST_FLAVOUR='Fast': expected one of plain, fast (the default), exotic, quick (= fast)"),
      Error);
  setenv(kVar, "?", 1);  // the name functions' "unknown" answer is not a choice
  CHECK_THROWS_AS(pick(), Error);
  unsetenv(kVar);
}
