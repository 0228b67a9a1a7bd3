// Writing files so that a crash never leaves a half-written one in place.
#pragma once
#include <string>

namespace clipcu {

// Writes bytes to a temporary file beside `path`, fsyncs it, renames it over `path` and fsyncs
// the folder. Throws clipcu::Error naming the file on any failure (the temporary is removed).
void write_file_atomic(const std::string& path, const std::string& bytes);

}  // namespace clipcu
