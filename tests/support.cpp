#include "tests/support.h"

#include <sys/stat.h>
#include <sys/wait.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>

#include "engine/autograd.h"
#include "engine/rng.h"

namespace clipcu::test {

static std::string env_or(const char* var, const char* fallback) {
  const char* v = std::getenv(var);
  return v && *v ? std::string(v) : std::string(fallback);
}

std::string golden_path(const std::string& rel) {
  std::string p = env_or("CLIPCU_GOLDEN", CLIPCU_GOLDEN_DIR) + "/" + rel;
  struct stat sb {};
  if (stat(p.c_str(), &sb) != 0) {
    FAIL("golden file missing: " << p << " (set CLIPCU_GOLDEN to the folder of ../shared/golden)");
  }
  return p;
}

const st::File& golden(const std::string& rel) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<st::File>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[rel];
  if (!slot) slot = std::make_unique<st::File>(st::File::open(golden_path(rel)));
  return *slot;
}

std::string vocab_path() {
  std::string p = env_or("CLIPCU_VOCAB", CLIPCU_VOCAB_FILE);
  struct stat sb {};
  if (stat(p.c_str(), &sb) != 0) FAIL("vocabulary missing: " << p << " (set CLIPCU_VOCAB)");
  return p;
}

std::string temp_dir(const std::string& tag) {
  namespace fs = std::filesystem;
  fs::path p = fs::path(CLIPCU_BINARY_DIR) / "test_tmp" / (tag + "." + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

std::string clipcu_binary() { return std::string(CLIPCU_BINARY_DIR) + "/clipcu"; }

int run_command(const std::string& cmd, std::string* output) {
  std::string full = cmd + " 2>&1";
  FILE* p = popen(full.c_str(), "r");
  if (!p) return -1;
  std::array<char, 4096> buf;
  std::string out;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  int status = pclose(p);
  if (output) *output = out;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

double rel_err(const Tensor& a, const Tensor& ref) {
  std::vector<double> x = a.to_f64_vector(), y = ref.to_f64_vector();
  REQUIRE(x.size() == y.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    num += (x[i] - y[i]) * (x[i] - y[i]);
    den += y[i] * y[i];
  }
  if (std::isnan(num)) return INFINITY;
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

double max_abs_err(const Tensor& a, const Tensor& ref) {
  std::vector<double> x = a.to_f64_vector(), y = ref.to_f64_vector();
  REQUIRE(x.size() == y.size());
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::fabs(x[i] - y[i]));
  return m;
}

void check_close(const Tensor& a, const Tensor& ref, double tol, const std::string& label) {
  INFO(label);
  REQUIRE(a.defined());
  REQUIRE(ref.defined());
  CHECK_MESSAGE(a.shape() == ref.shape(), label << ": shape " << shape_str(a.shape()) << " vs reference "
                                                << shape_str(ref.shape()));
  if (a.shape() != ref.shape()) return;
  double e = rel_err(a, ref);
  MESSAGE(label << ": rel err " << e << " (tol " << tol << ")");
  CHECK_MESSAGE(e <= tol, label << ": rel err " << e << " > tol " << tol);
}

void WorstError::add(const std::string& name, double err) {
  if (!(err <= worst)) {  // NaN counts as worst
    worst = err;
    where = name;
  }
}
WorstError::~WorstError() { MESSAGE(group << ": worst rel err " << worst << " at " << where); }

double gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                 const std::string& label, double eps, double tol) {
  INFO("gradcheck " << label);
  for (Tensor& t : inputs) t.zero_grad();
  tape().clear();
  Tensor out = f(inputs);
  REQUIRE(out.requires_grad());
  Rng rng(12345);
  Tensor seed = Tensor::randn(out.shape(), rng, 0.0, 1.0, out.dtype());
  tape().backward(out, seed);
  std::vector<double> s = seed.to_f64_vector();
  auto contract = [&](const Tensor& y) {
    std::vector<double> v = y.to_f64_vector();
    double acc = 0;
    for (size_t i = 0; i < v.size(); ++i) acc += v[i] * s[i];
    return acc;
  };
  double worst = 0;
  NoGradGuard no_grad;
  for (size_t k = 0; k < inputs.size(); ++k) {
    Tensor& x = inputs[k];
    if (!x.requires_grad()) continue;
    REQUIRE_MESSAGE(x.dtype() == DType::F64, "gradcheck needs F64 inputs");
    Tensor analytic = x.has_grad() ? x.grad() : Tensor::zeros(x.shape(), DType::F64);
    Tensor numeric = Tensor::zeros(x.shape(), DType::F64);
    double* p = x.data<double>();
    double* g = numeric.data<double>();
    for (int64_t i = 0; i < x.numel(); ++i) {
      double orig = p[i];
      p[i] = orig + eps;
      double fp = contract(f(inputs));
      p[i] = orig - eps;
      double fm = contract(f(inputs));
      p[i] = orig;
      g[i] = (fp - fm) / (2 * eps);
    }
    double e = rel_err(analytic, numeric);
    MESSAGE(label << ": input " << k << " " << shape_str(x.shape()) << " gradcheck rel err " << e);
    CHECK_MESSAGE(e <= tol, label << ": input " << k << " gradient rel err " << e << " > " << tol);
    worst = std::max(worst, e);
  }
  return worst;
}

Tensor make_input(const Shape& shape, Fill fill, uint64_t seed, bool requires_grad, DType dtype) {
  Tensor t;
  switch (fill) {
    case Fill::Random: {
      Rng rng(seed);
      t = Tensor::randn(shape, rng, 0.0, 1.0, dtype);
      break;
    }
    case Fill::Ones: t = Tensor::ones(shape, dtype); break;
    case Fill::Arange: {
      int64_t n = shape_numel(shape);
      std::vector<double> v(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) v[size_t(i)] = (double(i) - 0.5 * double(n)) / std::max<double>(double(n), 1.0);
      t = Tensor::from_vector(v, shape, dtype);
      break;
    }
  }
  if (requires_grad) t.set_requires_grad(true);
  return t;
}

const char* fill_name(Fill f) { return f == Fill::Random ? "random" : f == Fill::Ones ? "ones" : "arange"; }

Tensor golden_input(const std::string& name, DType dt) {
  Tensor t = golden("ops.safetensors").get(name).to(DType::F32).clone();
  return dt == DType::F32 ? t : t.to(dt);
}

Tensor clip_tokens(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  Rng rng(seed);
  std::vector<int64_t> ids(size_t(B * T), 0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = b == B - 1 ? T - 1 : 1 + int64_t(rng.below(uint64_t(T - 1)));  // end position
    ids[size_t(b * T)] = V - 2;
    for (int64_t t = 1; t < n; ++t) ids[size_t(b * T + t)] = 1 + int64_t(rng.below(uint64_t(V - 3)));
    ids[size_t(b * T + n)] = V - 1;
  }
  return Tensor::from_ints(ids, {B, T});
}

bool gpu_available() {
  bool ok = cuda_available();
  static bool told = false;
  if (!ok && !told) {
    told = true;
    std::fprintf(stderr, "clipcu tests: NO GPU available: GPU tests are SKIPPED (not passed)\n");
  }
  return ok;
}

void exit_77_without_gpu(const char* program) {
  if (gpu_available()) return;
#ifdef CLIPCU_WITH_CUDA
  std::fprintf(stderr, "%s: no GPU answers: the GPU tests were SKIPPED (not passed)\n", program);
#else
  std::fprintf(stderr, "%s: this build has no CUDA backend: the GPU tests were SKIPPED\n", program);
#endif
  std::fflush(stderr);
  std::_Exit(77);
}

}  // namespace clipcu::test
