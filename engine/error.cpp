#include "engine/error.h"

#include <cstring>

namespace clipcu::detail {

[[noreturn]] void throw_error(const char* file, int line, const std::string& msg) {
  // Keep only the path below the source root: "engine/tensor.cpp:42".
  const char* short_file = file;
  for (const char* root : {"/engine/", "/kernels/", "/weights/", "/tools/", "/tests/", "/bench/"}) {
    if (const char* p = std::strstr(file, root)) {
      short_file = p + 1;
      break;
    }
  }
  throw Error(msg + " [" + short_file + ":" + std::to_string(line) + "]");
}

}  // namespace clipcu::detail
