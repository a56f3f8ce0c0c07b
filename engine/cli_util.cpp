#include "engine/cli_util.h"

#include <omp.h>
#include <sys/resource.h>

#include <filesystem>
#include <fstream>

#include "engine/error.h"

namespace stitch {

void set_threads(const Args& a) {
    if (a.get("--threads")) omp_set_num_threads(a.get_int("--threads", 1, 1, 4096));
}

void write_file_atomic(const std::string& path, const std::string& text) {
    const std::string tmp = path + ".tmp";
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
    std::filesystem::rename(tmp, path);
}

double peak_rss_mb() {
    struct rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return double(ru.ru_maxrss) / 1024.0;
}

}  // namespace stitch
