#include "engine/interrupt.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>

namespace stitch::interrupt {
namespace {

// Everything the handler reads lives in static storage and is published through atomics, so
// the handler only calls async-signal-safe functions (write, unlink, _exit).
constexpr size_t kText = 256, kSlots = 32, kPath = 4096;

// A text written by the main thread into the buffer the handler is not reading.
struct Text {
    char buf[2][kText] = {};
    std::atomic<int> cur{0};
    void set(std::string_view s) {
        const int next = 1 - cur.load(std::memory_order_relaxed);
        const size_t n = std::min(s.size(), kText - 1);
        std::memcpy(buf[next], s.data(), n);
        buf[next][n] = '\0';
        cur.store(next, std::memory_order_release);
    }
    const char* get() const { return buf[cur.load(std::memory_order_acquire)]; }
};

Text g_command, g_activity, g_progress_what, g_progress_unit;
std::atomic<long> g_done{-1}, g_total{0};

struct Slot {
    std::atomic<int> state{0};  // 0 free, 1 being filled, 2 holds a path
    char path[kPath];
};
Slot g_slots[kSlots];

// Appends text to a fixed buffer (no allocation: usable inside the handler).
struct Buf {
    char s[2048];
    size_t n = 0;
    void add(const char* t) {
        while (*t && n + 1 < sizeof s) s[n++] = *t++;
    }
    void add(long v) {
        char tmp[24];
        int k = 0;
        const bool neg = v < 0;
        unsigned long u = neg ? 0ul - static_cast<unsigned long>(v) : static_cast<unsigned long>(v);
        do tmp[k++] = char('0' + u % 10); while ((u /= 10) && k < 22);
        if (neg) tmp[k++] = '-';
        while (k > 0 && n + 1 < sizeof s) s[n++] = tmp[--k];
    }
};

// "stitch: interrupted by SIGINT during `capture`, <activity>; stopped at <what> 12/100 prompts"
void where(Buf& b, const char* signal_name) {
    b.add("stitch: interrupted by ");
    b.add(signal_name);
    if (*g_command.get()) b.add(" during `"), b.add(g_command.get()), b.add("`");
    if (*g_activity.get()) b.add(", "), b.add(g_activity.get());
    if (const long done = g_done.load(std::memory_order_relaxed); done >= 0 && *g_progress_what.get()) {
        b.add("; stopped at "), b.add(g_progress_what.get()), b.add(" "), b.add(done), b.add("/");
        b.add(g_total.load(std::memory_order_relaxed)), b.add(" "), b.add(g_progress_unit.get());
    }
}

void handler(int sig) {
    Buf b;
    where(b, sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal");
    int removed = 0;
    for (auto& slot : g_slots)
        if (slot.state.load(std::memory_order_acquire) == 2) removed += ::unlink(slot.path) == 0;
    b.add("; ");
    if (removed) b.add("removed "), b.add(long(removed)), b.add(" unfinished output file(s); ");
    b.add("nothing partial was written under an output name\n");
    ssize_t unused = ::write(2, b.s, b.n);
    (void)unused;
    ::_exit(128 + sig);
}

}  // namespace

void install(std::string_view command) {
    g_command.set(command);
    struct sigaction sa {};
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGINT, &sa, nullptr);
    ::sigaction(SIGTERM, &sa, nullptr);
}

void set_activity(std::string_view what) { g_activity.set(what); }

void set_progress(std::string_view what, long total, std::string_view unit) {
    g_done.store(-1, std::memory_order_relaxed);
    g_progress_what.set(what);
    g_progress_unit.set(unit);
    g_total.store(total, std::memory_order_relaxed);
    g_done.store(0, std::memory_order_relaxed);
}

void set_progress_done(long done) { g_done.store(done, std::memory_order_relaxed); }

TempFile::TempFile(const std::string& path) {
    if (path.size() >= kPath) return;  // not registered: at worst a .tmp file stays behind
    for (size_t i = 0; i < kSlots; ++i) {
        int expect = 0;
        if (g_slots[i].state.compare_exchange_strong(expect, 1)) {
            std::memcpy(g_slots[i].path, path.c_str(), path.size() + 1);
            g_slots[i].state.store(2, std::memory_order_release);
            slot_ = int(i);
            return;
        }
    }
}

TempFile::~TempFile() {
    if (slot_ >= 0) g_slots[slot_].state.store(0, std::memory_order_release);
}

std::string message(std::string_view signal_name) {
    Buf b;
    where(b, std::string(signal_name).c_str());
    return std::string(b.s, b.n);
}

}  // namespace stitch::interrupt
