// Progress lines on stderr for long work: rate and ETA, at most a few updates a second.
#pragma once
#include <chrono>
#include <cstdio>
#include <string>
#include <unistd.h>

#include "engine/interrupt.h"

namespace stitch {

class Progress {
public:
    Progress(std::string what, long total, std::string unit)
        : what_(std::move(what)), unit_(std::move(unit)), total_(total), tty_(isatty(2)),
          start_(std::chrono::steady_clock::now()) {
        interrupt::set_progress(what_, total_, unit_);  // what an interrupted run reports
    }
    // done: units finished so far; tokens: tokens processed so far (for tok/s).
    void update(long done, long tokens, bool force = false) {
        interrupt::set_progress_done(done);
        auto now = std::chrono::steady_clock::now();
        double since = std::chrono::duration<double>(now - last_).count();
        if (!force && since < (tty_ ? 0.25 : 5.0)) return;
        last_ = now;
        double el = std::chrono::duration<double>(now - start_).count();
        double rate = el > 0 ? tokens / el : 0;
        double eta = done > 0 && total_ > done ? el * double(total_ - done) / double(done) : 0;
        std::fprintf(stderr, "%s%s: %ld/%ld %s, %.1f tok/s, %.1fs elapsed, ETA %.0fs%s", tty_ ? "\r" : "", what_.c_str(),
                     done, total_, unit_.c_str(), rate, el, eta, tty_ ? "\x1b[K" : "\n");
        std::fflush(stderr);
        printed_ = true;
    }
    void finish(long done, long tokens) {
        update(done, tokens, true);
        if (tty_ && printed_) std::fputc('\n', stderr);
    }

private:
    std::string what_, unit_;
    long total_;
    bool tty_;
    bool printed_ = false;
    std::chrono::steady_clock::time_point start_, last_{};
};

}  // namespace stitch
