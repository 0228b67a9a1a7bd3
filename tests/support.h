// Shared test helpers: golden files, norm-wise relative error, finite-difference gradient checks,
// GPU detection for loud skips.
#pragma once
#include <doctest/doctest.h>

#include <functional>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "weights/safetensors.h"

namespace clipcu::test {

// A file under ../shared/golden (or $CLIPCU_GOLDEN). Fails the test, naming the path, when absent.
std::string golden_path(const std::string& rel);
// A golden safetensors file, opened once per process.
const st::File& golden(const std::string& rel);
// CLIP's BPE vocabulary ($CLIPCU_VOCAB or ../shared/vocab/bpe_simple_vocab_16e6.txt.gz).
std::string vocab_path();
// A fresh empty directory under the build tree for one test's files.
std::string temp_dir(const std::string& tag);
// The built `clipcu` command.
std::string clipcu_binary();
// Runs a shell command; returns its exit status and fills `output` with stdout+stderr.
int run_command(const std::string& cmd, std::string* output = nullptr);

// ||a - ref|| / ||ref|| computed in float64 (||a - ref|| when ref is all zeros).
double rel_err(const Tensor& a, const Tensor& ref);
double max_abs_err(const Tensor& a, const Tensor& ref);

// Checks shape equality and rel_err(a, ref) <= tol, printing the error with the label.
void check_close(const Tensor& a, const Tensor& ref, double tol, const std::string& label);

// Tracks the worst relative error over a group of tensors and prints it once.
struct WorstError {
  std::string group;
  double worst = 0.0;
  std::string where;
  void add(const std::string& name, double err);
  ~WorstError();
};

// Central finite differences in float64 against the tape's backward.
// `f` maps the inputs to one output; every input with requires_grad is checked (each element
// perturbed by +-eps). The output is contracted with a fixed random seed tensor so that every
// output element matters. Returns the worst relative error over inputs (norm-wise) and fails
// the test past tol.
double gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                 const std::string& label, double eps = 1e-6, double tol = 1e-6);

// F64 test inputs of three kinds: random normal, all ones, arange scaled into a modest range.
enum class Fill { Random, Ones, Arange };
Tensor make_input(const Shape& shape, Fill fill, uint64_t seed, bool requires_grad = true,
                  DType dtype = DType::F64);

// The three input kinds every op test runs, and their names for messages.
inline constexpr Fill kFills[] = {Fill::Random, Fill::Ones, Fill::Arange};
const char* fill_name(Fill f);
// An input of ops.safetensors as float32 (a copy), converted to dt.
Tensor golden_input(const std::string& name, DType dt);
// [B, T] I64 token rows as CLIP makes them, for a vocabulary of V: start (V-2), random ids in
// [1, V-3], end (V-1, the highest id, where the text tower pools), zero padding; the last row
// fills the context.
Tensor clip_tokens(int64_t B, int64_t T, int64_t V, uint64_t seed);

bool gpu_available();
// For the last test case of a GPU test program (doctest runs them in file order): without a GPU
// every CLIPCU_GPU_TEST was skipped, and exiting with 77 makes ctest report the program's run as
// Skipped instead of letting it pass. Returns when a GPU answers.
void exit_77_without_gpu(const char* program);

}  // namespace clipcu::test

// Marks a test case as GPU-only: skipped, and reported as skipped, when no GPU answers.
#define CLIPCU_GPU_TEST(name) TEST_CASE(name* doctest::skip(!::clipcu::test::gpu_available()))
