// What an interrupted run leaves behind (docs/hardening.md). On SIGINT or SIGTERM stitch prints
// where it stopped — the command, the stage, the last progress count — removes the temporary
// files of outputs still being written, and exits with 128 + the signal number. Outputs are
// only ever renamed into place when complete, so nothing partial appears under a requested name
// (SIGKILL included: then the temporary files stay, under names ending in .tmp).
#pragma once
#include <string>
#include <string_view>

namespace stitch::interrupt {

// Installs the SIGINT/SIGTERM handler; `command` is what the message names ("capture", ...).
void install(std::string_view command);

// The stage now running ("transfer stage 5 (steering)"), shown by the message. Empty clears it.
void set_activity(std::string_view what);

// The progress now counting (engine/progress.h calls these): label, total and unit once, then counts.
void set_progress(std::string_view what, long total, std::string_view unit);
void set_progress_done(long done);

// Registers a temporary file for removal if the process is interrupted; unregisters when it
// goes out of scope (after the rename, or after the writer removed the file itself).
class TempFile {
public:
    explicit TempFile(const std::string& path);
    ~TempFile();
    TempFile(const TempFile&) = delete;
    TempFile& operator=(const TempFile&) = delete;

private:
    int slot_ = -1;
};

// The "where it stopped" part of the handler's message, for tests and logs.
std::string message(std::string_view signal_name);

}  // namespace stitch::interrupt
