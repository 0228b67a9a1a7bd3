// `clipcu embed` on OpenAI-layout checkpoints of shapes the golden fixtures do not have (odd patch
// grids, other head counts and widths, depth 3, exact GELU, an MLP ratio, a ResNet with an odd
// 3 x 3 final feature map, single-head text, F16 and BF16 weights), against an independent float64
// reference: tests/data/unseen/*, made by tests/reference/make_unseen_fixtures.py with
// tests/reference/clip_reference.py (itself checked against the golden whole-model outputs).
// The reference computed from the weights as stored (after F16/BF16 rounding), so the float32
// engine must land within the golden forward tolerance whatever the weight dtype.
#include <doctest/doctest.h>

#include <string>

#include "tests/support.h"

using namespace clipcu;
using namespace clipcu::test;

namespace {

// Forward values, float32 against the float64 reference (golden README).
constexpr double kForwardTol = 1e-5;

std::string fixture(const std::string& file) { return std::string(CLIPCU_SOURCE_DIR) + "/tests/data/unseen/" + file; }

// Runs embed on fixture `name` (its io file holds both `pixels` and `tokens`) and compares every
// output with the reference.
void check_fixture(const std::string& name, DType weights_dtype) {
  const std::string io_path = fixture(name + ".io.safetensors");
  const std::string weights = fixture(name + ".weights.safetensors");
  const st::File io = st::File::open(io_path);
  // the fixture is what it claims: every floating tensor stored in the dtype under test
  const st::File stored = st::File::open(weights);
  for (const st::Entry& e : stored.entries())
    if (is_floating(e.dtype))
      CHECK_MESSAGE(e.dtype == weights_dtype, weights << ": " << e.name << " is " << dtype_name(e.dtype));

  const std::string dir = temp_dir("unseen_" + name);
  const std::string out_path = dir + "/out.safetensors";
  std::string output;
  const int status = run_command(clipcu_binary() + " embed --device cpu --config " + fixture(name + ".config.json") +
                                     " --weights " + weights + " --pixels " + io_path + " --tokens " + io_path +
                                     " --out " + out_path,
                                 &output);
  INFO(output);
  REQUIRE(status == 0);

  const st::File out = st::File::open(out_path);
  const int64_t N = io.get("pixels").size(0), M = io.get("tokens").size(0);
  REQUIRE(io.get("logits_per_image").shape() == Shape{N, M});
  WorstError worst{name, 0.0, {}};
  for (const char* key : {"image_features", "text_features", "logits_per_image"}) {
    INFO(name << ": " << key);
    REQUIRE(out.contains(key));
    const Tensor ours = out.get(key, DType::F32), ref = io.get(key);
    REQUIRE(ours.shape() == ref.shape());
    worst.add(key, rel_err(ours, ref));
    check_close(ours, ref, kForwardTol, name + ": " + key);
  }
}

}  // namespace

TEST_CASE("unseen shapes: ViT, 5x5 patch grid, 3 heads of 12, depth 3, F16 weights") {
  check_fixture("vit_g5_w36_h3_f16", DType::F16);
}

TEST_CASE("unseen shapes: ViT, exact GELU, 4 heads of 8, MLP ratio 2.5, embed 13, BF16 weights") {
  check_fixture("vit_gelu_w32_h4_bf16", DType::BF16);
}

TEST_CASE("unseen shapes: ResNet [1 1 2 1] width 4 at 96 px (3x3 map, 8 heads), 1-head text, F16 weights") {
  check_fixture("rn_1121_w4_px96_f16", DType::F16);
}
