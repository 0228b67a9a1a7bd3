// libFuzzer target for the safetensors reader: any byte string must either parse into entries
// whose data lies inside the buffer, or be rejected with clipcu::Error. Crashes, sanitizer
// reports, other exceptions or hangs are findings.
#include <cstddef>
#include <cstdint>

#include "weights/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    clipcu::st::File f = clipcu::st::File::parse(data, size, "fuzz-input");
    double sink = 0;
    for (const auto& e : f.entries()) {
      clipcu::Tensor t = f.get(e.name);  // touches every byte range the header claims
      const unsigned char* p = static_cast<const unsigned char*>(t.raw());
      for (size_t i = 0; i < t.nbytes(); ++i) sink += p[i];
      if (clipcu::is_floating(e.dtype) && t.numel() < 4096) sink += f.get(e.name, clipcu::DType::F32).numel();
    }
    (void)sink;
  } catch (const clipcu::Error&) {
    // a clean rejection
  }
  return 0;
}
