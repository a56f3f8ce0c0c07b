// Dependency-free SVG charts for experiment reports: line charts (one polyline per series,
// broken at NaN/Inf) and grouped bar charts (negative values hang below the zero line).
// Every chart has a title, axes with "nice" ticks (1/2/5 × 10^k), axis labels, a legend when
// there is more than one series, and the Okabe–Ito colour-blind-safe palette. All text is
// XML-escaped. Empty or all-NaN input still gives a valid SVG with the title and "no data".
#pragma once
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace stitch::plot {

struct Series {  // line chart series (x, y same length; extra entries of the longer are ignored)
    std::string name;
    std::vector<double> x, y;
};

struct LineChart {
    std::string title, x_label, y_label;
    std::vector<Series> series;
    std::optional<double> y_min, y_max;      // fixed y range (e.g. 0..1 for rates); else from data with padding
    std::vector<double> x_marks;             // vertical dashed marker lines (e.g. the chosen layer)
    std::vector<std::string> x_mark_labels;  // label per marker (may be shorter than x_marks)
    bool points = true;                      // draw a small circle at every point
    int width = 720, height = 420;
};

struct BarChart {  // grouped bars: groups along x, one bar per series in each group
    std::string title, y_label;
    std::vector<std::string> groups;          // x categories
    std::vector<std::string> series;          // bar names (legend)
    std::vector<std::vector<double>> values;  // [series][group]; missing or NaN/Inf → "n/a"
    std::optional<double> y_min, y_max;
    bool value_labels = true;  // print the value above each bar (3 significant digits)
    int width = 720, height = 420;
};

std::string render(const LineChart& c);  // the SVG document text
std::string render(const BarChart& c);

// Writes the SVG to path atomically (write to path + ".tmp", then rename). Throws stitch::Error
// (engine/error.h) naming the path on failure.
void write(const std::filesystem::path& path, const std::string& svg);

// "Nice" ticks covering [lo, hi]: about `target` values at multiples of 1, 2 or 5 × 10^k.
// The first tick is <= lo and the last >= hi; lo == hi is widened around the value; a
// non-finite bound gives no ticks.
std::vector<double> nice_ticks(double lo, double hi, int target = 5);

}  // namespace stitch::plot
