// Errors of the library: one exception type with context. Only tools/ turns them into exit codes.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace clipcu {

// Every failure the library reports: bad input (names the file and the reason), a shape
// mismatch (names the op and the shapes), a CUDA/cuBLAS/cuDNN failure (file:line and the call).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Out of memory on a device: the size asked for is part of the message.
class OutOfMemory : public Error {
 public:
  OutOfMemory(const std::string& what, size_t bytes) : Error(what), bytes_requested(bytes) {}
  size_t bytes_requested;
};

namespace detail {
[[noreturn]] void throw_error(const char* file, int line, const std::string& msg);
}  // namespace detail

}  // namespace clipcu

// CLIPCU_CHECK(cond, "what" << value << ...): throws clipcu::Error with file:line when cond is false.
#define CLIPCU_CHECK(cond, msg_stream)                                                   \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      std::ostringstream clipcu_msg_;                                                    \
      clipcu_msg_ << msg_stream;                                                         \
      ::clipcu::detail::throw_error(__FILE__, __LINE__, clipcu_msg_.str());              \
    }                                                                                    \
  } while (0)

// CLIPCU_FAIL("reason" << value): throws unconditionally (visibly so to the compiler, so it may
// end a function that returns a value).
#define CLIPCU_FAIL(msg_stream)                                                          \
  do {                                                                                   \
    std::ostringstream clipcu_msg_;                                                      \
    clipcu_msg_ << msg_stream;                                                           \
    ::clipcu::detail::throw_error(__FILE__, __LINE__, clipcu_msg_.str());                \
  } while (0)
