#include "engine/cli_util.h"

#include <omp.h>
#include <sys/resource.h>

#include <filesystem>
#include <fstream>

#include "engine/device.h"
#include "engine/error.h"
#include "engine/finite.h"
#include "engine/interrupt.h"

namespace stitch {

void apply_run_options(const Args& a, bool device_notice) {
    if (a.get("--threads")) omp_set_num_threads(a.get_int("--threads", 1, 1, 4096));
    if (a.has("--check-finite")) set_check_finite(true);
    if (auto d = a.get("--device")) request_device(*d);
    // An explicit choice is checked (cuda without a GPU is an error) and a CPU fallback of an
    // explicit auto is said; the default is auto without a word, so GPU-less runs stay quiet.
    const auto req = requested_device();
    set_device(req ? resolve_device(*req, device_notice) : resolve_device("auto", false));
}

void write_file_atomic(const std::string& path, const std::string& text) {
    const std::string tmp = path + ".tmp";
    interrupt::TempFile guard(tmp);  // removed if the run is interrupted before the rename
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) fail(path, "cannot open for writing");
        out << text;
        out.flush();
        if (!out) {
            std::filesystem::remove(tmp);
            fail(path, "write failed");
        }
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
        std::error_code ignored;
        std::filesystem::remove(tmp, ignored);
        fail(path, "cannot move the finished file into place: {}", ec.message());
    }
}

double peak_rss_mb() {
    struct rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return double(ru.ru_maxrss) / 1024.0;
}

}  // namespace stitch
