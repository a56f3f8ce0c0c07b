// Errors that reach the user. Every bad-input path throws stitch::Error naming the file
// and what is wrong; the CLI prints "stitch: error: <file>: <what>" and exits with status 2.
#pragma once
#include <fmt/format.h>
#include <stdexcept>
#include <string>

namespace stitch {

struct Error : std::runtime_error {
    std::string file;  // the file (or argument) at fault; may be empty
    std::string what_wrong;
    Error(std::string file_, std::string msg)
        : std::runtime_error(file_.empty() ? msg : file_ + ": " + msg),
          file(std::move(file_)), what_wrong(std::move(msg)) {}
};

template <typename... Args>
[[noreturn]] inline void fail(const std::string& file, fmt::format_string<Args...> f, Args&&... args) {
    throw Error(file, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace stitch
