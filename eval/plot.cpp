// SVG chart writer (see plot.h). Layout: title on top, y tick labels and the rotated y label on
// the left, x tick labels / group labels below, the legend (more than one series) to the right
// of the plot area. Text widths are estimated at 0.6 em per glyph, which suits sans-serif.
#include "eval/plot.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <string_view>

#include "engine/error.h"
#include "engine/interrupt.h"

namespace stitch::plot {
namespace {

// Okabe–Ito, ordered so the first colours contrast most on white (yellow last). Past the eighth
// series colours repeat, and lines are then told apart by dash pattern too.
constexpr const char* kPalette[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7",
                                    "#E69F00", "#56B4E9", "#000000", "#F0E442"};
const char* colour(size_t i) { return kPalette[i % 8]; }
std::string dash(size_t i) {
    static const char* d[] = {"", "6 3", "2 2", "8 3 2 3"};
    size_t k = (i / 8) % 4;
    return k ? fmt::format(R"( stroke-dasharray="{}")", d[k]) : "";
}

std::string esc(std::string_view s) {
    std::string o;
    o.reserve(s.size());
    for (char ch : s) switch (ch) {
            case '&': o += "&amp;"; break;
            case '<': o += "&lt;"; break;
            case '>': o += "&gt;"; break;
            case '"': o += "&quot;"; break;
            case '\'': o += "&apos;"; break;
            default: o += (unsigned char)ch < 0x20 ? ' ' : ch;  // control characters are not XML
        }
    return o;
}

size_t glyphs(std::string_view s) {
    size_t n = 0;
    for (unsigned char ch : s) n += (ch & 0xC0) != 0x80;
    return n;
}
double text_w(std::string_view s, double size) { return double(glyphs(s)) * size * 0.6; }
// At most `max` glyphs, ending in "…" when cut.
std::string shorten(const std::string& s, size_t max) {
    max = std::max<size_t>(max, 2);
    if (glyphs(s) <= max) return s;
    size_t n = 0, i = 0;
    for (; i < s.size(); ++i)
        if (((unsigned char)s[i] & 0xC0) != 0x80 && ++n > max - 1) break;
    return s.substr(0, i) + "…";
}

std::string px(double v) { return fmt::format("{:.2f}", v); }

// An empty or reversed range becomes a usable one.
void widen(double& lo, double& hi) {
    if (lo > hi) std::swap(lo, hi);
    if (hi > lo) return;
    double d = lo == 0 ? 1 : std::abs(lo) * 0.1;
    lo -= d, hi += d;
}

std::string tick_label(double v, double step) {
    if (std::abs(v) < step * 1e-6) v = 0;
    if (std::max(std::abs(v), step) >= 1e6 || step < 1e-4) return fmt::format("{:g}", v);
    int dec = std::max(0, -int(std::floor(std::log10(step) + 1e-9)));
    return fmt::format("{:.{}f}", v, dec);
}

std::string value_label(double v) {  // 3 significant digits, without exponents below a million
    std::string s = fmt::format("{:.3g}", v);
    double r = std::strtod(s.c_str(), nullptr);
    return std::abs(r) >= 1e3 && std::abs(r) < 1e6 ? fmt::format("{:.0f}", r) : s;
}

struct Axis {
    std::vector<double> ticks;
    std::vector<std::string> labels;
};
// The nice ticks inside [lo, hi]; `integral` keeps whole numbers only (e.g. layer indices).
Axis make_axis(double lo, double hi, int target, bool integral) {
    Axis a;
    auto t = nice_ticks(lo, hi, target);
    double step = t.size() > 1 ? t[1] - t[0] : 1, eps = (hi - lo) * 1e-9;
    if (integral) step = std::max(step, 1.0);
    for (double v : t)
        if (v >= lo - eps && v <= hi + eps && (!integral || v == std::floor(v))) {
            a.ticks.push_back(v);
            a.labels.push_back(tick_label(v, step));
        }
    return a;
}

struct Frame {
    double l = 0, t = 0, r = 0, b = 0;       // plot area in pixels
    double x0 = 0, x1 = 1, y0 = 0, y1 = 1;  // data range it shows
    double X(double x) const { return l + (x - x0) / (x1 - x0) * (r - l); }
    double Y(double y) const { return b - (y - y0) / (y1 - y0) * (b - t); }
};

std::string begin(int& w, int& h, const std::string& title) {
    w = std::clamp(w, 160, 20000), h = std::clamp(h, 120, 20000);
    std::string o = fmt::format(
        R"(<svg xmlns="http://www.w3.org/2000/svg" width="{0}" height="{1}" viewBox="0 0 {0} {1}" )"
        R"(font-family="sans-serif" font-size="12">)"
        "\n<title>{2}</title>\n<rect width=\"{0}\" height=\"{1}\" fill=\"white\"/>\n",
        w, h, esc(title));
    if (!title.empty())
        o += fmt::format(R"(<text x="{}" y="24" text-anchor="middle" font-size="16" font-weight="bold">{}</text>)"
                         "\n",
                         px(w / 2.0), esc(shorten(title, size_t((w - 20) / 9.6))));
    return o;
}

std::string no_data(std::string o, int w, int h) {
    return o + fmt::format(R"(<text x="{}" y="{}" text-anchor="middle" font-size="14" fill="#666">no data</text>)"
                           "\n</svg>\n",
                           px(w / 2.0), px(h / 2.0));
}

double left_margin(const Axis& y, const std::string& label) {
    double m = 0;
    for (auto& s : y.labels) m = std::max(m, text_w(s, 11));
    return std::max(40.0, m + 12 + (label.empty() ? 6 : 26));
}

double legend_width(const std::vector<std::string>& names) {
    if (names.size() < 2) return 0;
    double m = 0;
    for (auto& n : names) m = std::max(m, text_w(shorten(n, 28), 12));
    return m + 36;
}

// y grid, ticks, tick labels and the y label; then the plot-area frame.
void draw_y(std::string& o, const Frame& f, const Axis& a, const std::string& label) {
    for (size_t i = 0; i < a.ticks.size(); ++i) {
        std::string y = px(f.Y(a.ticks[i]));
        o += fmt::format(R"(<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="#e6e6e6"/>)"
                         R"(<line x1="{3}" y1="{1}" x2="{0}" y2="{1}" stroke="#444"/>)"
                         R"(<text x="{4}" y="{5}" text-anchor="end" font-size="11">{6}</text>)"
                         "\n",
                         px(f.l), y, px(f.r), px(f.l - 5), px(f.l - 8), px(f.Y(a.ticks[i]) + 4), esc(a.labels[i]));
    }
    if (!label.empty())
        o += fmt::format(R"~(<text transform="translate(16 {}) rotate(-90)" text-anchor="middle">{}</text>)~"
                         "\n",
                         px((f.t + f.b) / 2), esc(shorten(label, size_t((f.b - f.t) / 7.2))));
}

void draw_frame(std::string& o, const Frame& f) {
    o += fmt::format(R"(<rect class="plot-area" x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#888"/>)"
                     "\n",
                     px(f.l), px(f.t), px(f.r - f.l), px(f.b - f.t));
}

void draw_legend(std::string& o, const Frame& f, const std::vector<std::string>& names, bool bars) {
    if (names.size() < 2) return;
    double x = f.r + 14;
    for (size_t i = 0; i < names.size(); ++i) {
        double y = f.t + 10 + double(i) * 18;
        if (bars)
            o += fmt::format(R"(<rect x="{}" y="{}" width="14" height="10" fill="{}"/>)", px(x), px(y - 5), colour(i));
        else
            o += fmt::format(R"(<line x1="{0}" y1="{2}" x2="{1}" y2="{2}" stroke="{3}" stroke-width="2.5"{4}/>)", px(x),
                             px(x + 18), px(y), colour(i), dash(i));
        o += fmt::format(R"(<text x="{}" y="{}">{}</text>)"
                         "\n",
                         px(x + 24), px(y + 4), esc(shorten(names[i], 28)));
    }
}

// Plot area left, top and right edges: room for the title, the y tick labels and y label, the legend.
Frame layout(int w, const std::string& title, double y0, double y1, const Axis& ya,
             const std::string& y_label, const std::vector<std::string>& names) {
    Frame f;
    f.t = title.empty() ? 16 : 40;
    f.l = left_margin(ya, y_label);
    f.r = std::max(f.l + 40, w - 16 - legend_width(names));
    f.y0 = y0, f.y1 = y1;
    return f;
}

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int target) {
    if (!std::isfinite(lo) || !std::isfinite(hi)) return {};
    widen(lo, hi);
    double raw = (hi - lo) / std::max(1, target);
    if (!std::isfinite(raw) || raw <= 0) return {lo, hi};
    int e = int(std::floor(std::log10(raw)));
    if (std::abs(e) > 300) return {lo, hi};
    double f = raw / std::pow(10.0, e);
    int nice = f <= 1 + 1e-9 ? 1 : f <= 2 + 1e-9 ? 2 : f <= 5 + 1e-9 ? 5 : 10;
    if (nice == 10) nice = 1, ++e;
    // k × nice × 10^e, dividing by an exact power of ten for e < 0 so 0.6 prints as 0.6.
    double p = std::pow(10.0, std::abs(e)), step = e >= 0 ? nice * p : nice / p;
    auto at = [&](double k) { return e >= 0 ? k * nice * p : k * nice / p; };
    double k0 = std::floor(lo / step + 1e-9), k1 = std::ceil(hi / step - 1e-9);
    if (!(k1 - k0 <= 10000)) return {lo, hi};
    std::vector<double> out;
    for (int i = 0; i <= int(k1 - k0); ++i) {  // an int count: k0 + 1 may equal k0 for huge k0
        double v = at(k0 + i) == 0 ? 0.0 : at(k0 + i);  // no -0
        if (out.empty() || v > out.back()) out.push_back(v);
    }
    return out.size() >= 2 ? out : std::vector<double>{lo, hi};  // steps below double precision
}

std::string render(const LineChart& c) {
    int w = c.width, h = c.height;
    std::string o = begin(w, h, c.title);
    constexpr double inf = std::numeric_limits<double>::infinity();
    double xlo = inf, xhi = -inf, ylo = inf, yhi = -inf;
    bool integral = true;
    auto n_of = [](const Series& s) { return std::min(s.x.size(), s.y.size()); };
    for (auto& s : c.series)
        for (size_t i = 0; i < n_of(s); ++i)
            if (std::isfinite(s.x[i]) && std::isfinite(s.y[i])) {
                xlo = std::min(xlo, s.x[i]), xhi = std::max(xhi, s.x[i]);
                ylo = std::min(ylo, s.y[i]), yhi = std::max(yhi, s.y[i]);
                integral &= s.x[i] == std::floor(s.x[i]);
            }
    if (xlo > xhi) return no_data(o, w, h);
    for (double m : c.x_marks)
        if (std::isfinite(m)) xlo = std::min(xlo, m), xhi = std::max(xhi, m), integral &= m == std::floor(m);
    widen(xlo, xhi);
    double pad = (yhi - ylo) * 0.05;
    ylo -= pad, yhi += pad;
    if (c.y_min && std::isfinite(*c.y_min)) ylo = *c.y_min;
    if (c.y_max && std::isfinite(*c.y_max)) yhi = *c.y_max;
    widen(ylo, yhi);

    double bottom = c.x_label.empty() ? 30 : 48, top = c.title.empty() ? 16 : 40;
    Axis ya = make_axis(ylo, yhi, std::max(2, int((h - top - bottom) / 60)), false);
    std::vector<std::string> names;
    for (auto& s : c.series) names.push_back(s.name);
    Frame f = layout(w, c.title, ylo, yhi, ya, c.y_label, names);
    f.b = std::max(f.t + 40, h - bottom);
    f.x0 = xlo, f.x1 = xhi;
    Axis xa = make_axis(xlo, xhi, std::max(2, int((f.r - f.l) / 80)), integral);
    if (!xa.ticks.empty())  // keep the last x tick label on the canvas
        f.r -= std::max(0.0, f.X(xa.ticks.back()) + text_w(xa.labels.back(), 11) / 2 + 14 - w);

    draw_y(o, f, ya, c.y_label);
    for (size_t i = 0; i < xa.ticks.size(); ++i) {
        std::string x = px(f.X(xa.ticks[i]));
        o += fmt::format(R"(<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="#e6e6e6"/>)"
                         R"(<line x1="{0}" y1="{2}" x2="{0}" y2="{3}" stroke="#444"/>)"
                         R"(<text x="{0}" y="{4}" text-anchor="middle" font-size="11">{5}</text>)"
                         "\n",
                         x, px(f.t), px(f.b), px(f.b + 5), px(f.b + 18), esc(xa.labels[i]));
    }
    if (!c.x_label.empty())
        o += fmt::format(R"(<text x="{}" y="{}" text-anchor="middle">{}</text>)"
                         "\n",
                         px((f.l + f.r) / 2), px(f.b + 38), esc(shorten(c.x_label, size_t((f.r - f.l) / 7.2))));
    draw_frame(o, f);

    // Data, clipped to the plot area (a fixed y range may cut values off).
    o += fmt::format(R"(<clipPath id="plot-clip"><rect x="{}" y="{}" width="{}" height="{}"/></clipPath>)"
                     "\n<g clip-path=\"url(#plot-clip)\">\n",
                     px(f.l - 4), px(f.t - 4), px(f.r - f.l + 8), px(f.b - f.t + 8));
    for (size_t k = 0; k < c.series.size(); ++k) {
        const Series& s = c.series[k];
        o += fmt::format("<g><title>{}</title>\n", esc(s.name));
        std::string pts, dots;
        size_t n_pts = 0;
        double lx = 0, ly = 0;  // the last point
        auto flush = [&] {
            if (n_pts > 0)
                o += fmt::format(R"(<polyline fill="none" stroke="{}" stroke-width="2" stroke-linejoin="round"{} points="{}"/>)"
                                 "\n",
                                 colour(k), dash(k), pts);
            if (n_pts == 1 && !c.points)  // a lone point between gaps would otherwise be invisible
                dots += fmt::format(R"(<circle cx="{}" cy="{}" r="2.5" fill="{}"/>)", px(lx), px(ly), colour(k));
            pts.clear(), n_pts = 0;
        };
        for (size_t i = 0; i < n_of(s); ++i) {
            if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) {
                flush();
                continue;
            }
            double x = lx = f.X(s.x[i]), y = ly = f.Y(s.y[i]);
            pts += fmt::format("{}{},{}", n_pts++ ? " " : "", px(x), px(y));
            if (c.points) dots += fmt::format(R"(<circle cx="{}" cy="{}" r="2.5" fill="{}"/>)", px(x), px(y), colour(k));
        }
        flush();
        o += dots + (dots.empty() ? "" : "\n") + "</g>\n";
    }
    o += "</g>\n";

    for (size_t i = 0; i < c.x_marks.size(); ++i) {
        double m = c.x_marks[i];
        if (!std::isfinite(m)) continue;
        o += fmt::format(R"(<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="#555" stroke-width="1.5" stroke-dasharray="5 4"/>)",
                         px(f.X(m)), px(f.t), px(f.b));
        if (i < c.x_mark_labels.size() && !c.x_mark_labels[i].empty())
            o += fmt::format(R"(<text x="{}" y="{}" font-size="11" fill="#333">{}</text>)", px(f.X(m) + 4),
                             px(f.t + 13 + double(i % 2) * 13), esc(shorten(c.x_mark_labels[i], 32)));
        o += "\n";
    }
    draw_legend(o, f, names, false);
    return o + "</svg>\n";
}

std::string render(const BarChart& c) {
    int w = c.width, h = c.height;
    std::string o = begin(w, h, c.title);
    size_t ns = std::max(c.series.size(), c.values.size()), ng = c.groups.size();
    for (auto& v : c.values) ng = std::max(ng, v.size());
    auto val = [&](size_t s, size_t g) {
        return s < c.values.size() && g < c.values[s].size() ? c.values[s][g] : std::nan("");
    };
    double lo = 0, hi = 0;
    bool any = false;
    for (size_t s = 0; s < ns; ++s)
        for (size_t g = 0; g < ng; ++g)
            if (double v = val(s, g); std::isfinite(v)) any = true, lo = std::min(lo, v), hi = std::max(hi, v);
    if (!any) return no_data(o, w, h);
    double span = hi - lo;
    if (hi > 0) hi += 0.08 * span;
    if (lo < 0) lo -= 0.08 * span;
    if (c.y_min && std::isfinite(*c.y_min)) lo = *c.y_min;
    if (c.y_max && std::isfinite(*c.y_max)) hi = *c.y_max;
    widen(lo, hi);

    std::vector<std::string> names(ns);
    for (size_t s = 0; s < ns; ++s) names[s] = s < c.series.size() ? c.series[s] : fmt::format("series {}", s + 1);
    auto group = [&](size_t g) { return g < c.groups.size() ? c.groups[g] : std::string(); };
    double top = c.title.empty() ? 16 : 40;
    Axis ya = make_axis(lo, hi, std::max(2, int((h - top - 40) / 60)), false);
    Frame f = layout(w, c.title, lo, hi, ya, c.y_label, names);
    double band = (f.r - f.l) / double(ng), maxw = 0;
    for (size_t g = 0; g < ng; ++g) maxw = std::max(maxw, text_w(group(g), 12));
    bool rotate = maxw > band - 6;  // labels would touch their neighbours: slant them
    f.b = std::max(f.t + 40, h - (rotate ? std::min(std::min(maxw, 24 * 7.2) * 0.5 + 24, h * 0.4) : 28));

    draw_y(o, f, ya, c.y_label);
    draw_frame(o, f);
    double base = f.Y(std::clamp(0.0, f.y0, f.y1)), bw = band * 0.8 / double(ns);
    for (size_t g = 0; g < ng; ++g) {
        double cx = f.l + (double(g) + 0.5) * band;
        if (rotate)
            o += fmt::format(R"~(<text x="{0}" y="{1}" text-anchor="end" transform="rotate(-30 {0} {1})">{2}</text>)~"
                             "\n",
                             px(cx), px(f.b + 14), esc(shorten(group(g), size_t(std::clamp((cx - 4) / 6.2, 4.0, 24.0)))));
        else
            o += fmt::format(R"(<text x="{}" y="{}" text-anchor="middle">{}</text>)"
                             "\n",
                             px(cx), px(f.b + 17), esc(group(g)));
        for (size_t s = 0; s < ns; ++s) {
            double v = val(s, g), x = f.l + double(g) * band + band * 0.1 + double(s) * bw, mid = x + bw / 2;
            if (!std::isfinite(v)) {
                o += fmt::format(R"(<text x="{}" y="{}" text-anchor="middle" font-size="{}" fill="#888">n/a</text>)"
                                 "\n",
                                 px(mid), px(base - 4), px(std::clamp(bw / 1.9, 6.0, 10.0)));
                continue;
            }
            double y = std::clamp(f.Y(v), f.t, f.b), y_top = std::min(y, base), hgt = std::abs(y - base);
            o += fmt::format(R"(<rect class="bar" x="{}" y="{}" width="{}" height="{}" fill="{}">)"
                             "<title>{}: {}: {}</title></rect>\n",
                             px(x + bw * 0.05), px(y_top), px(bw * 0.9), px(hgt), colour(s), esc(names[s]),
                             esc(group(g)), value_label(v));
            std::string label = value_label(v);
            double fs = std::min(10.0, bw / (0.6 * double(glyphs(label))));
            if (c.value_labels && fs >= 6)
                o += fmt::format(R"(<text x="{}" y="{}" text-anchor="middle" font-size="{}">{}</text>)"
                                 "\n",
                                 px(mid), px(v >= 0 ? y_top - 3 : y_top + hgt + fs + 1), px(fs), esc(label));
        }
    }
    o += fmt::format(R"(<line class="zero" x1="{0}" y1="{2}" x2="{1}" y2="{2}" stroke="#444"/>)"
                     "\n",
                     px(f.l), px(f.r), px(base));
    draw_legend(o, f, names, true);
    return o + "</svg>\n";
}

void write(const std::filesystem::path& path, const std::string& svg) {
    std::filesystem::path tmp = path;
    tmp += ".tmp";
    interrupt::TempFile guard(tmp.string());  // removed if the run is interrupted before the rename
    std::error_code ec;
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) fail(path.string(), "cannot write SVG chart: {}", std::strerror(errno));
        out.write(svg.data(), std::streamsize(svg.size()));
        out.close();
        if (!out) {
            std::filesystem::remove(tmp, ec);
            fail(path.string(), "cannot write SVG chart to {}", tmp.string());
        }
    }
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
        std::error_code ignored;
        std::filesystem::remove(tmp, ignored);
        fail(path.string(), "cannot move {} into place: {}", tmp.string(), ec.message());
    }
}

}  // namespace stitch::plot
