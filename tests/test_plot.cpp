// SVG charts (eval/plot.h): nice ticks in closed form, well-formed documents, escaping, pixel
// positions of a known line, NaN gaps, negative bars, "no data", and atomic writes.
#include <doctest/doctest.h>

#include <cmath>
#include <regex>
#include <string>
#include <vector>

#include "engine/error.h"
#include "eval/plot.h"
#include "test_util.h"

using namespace stitch;

namespace {

// A tiny XML checker: tags balance and nest, one root <svg>, attributes are quoted, and text
// holds no raw '<' and only known entities. Returns "" when well formed, else the problem.
std::string xml_problem(const std::string& s) {
    std::vector<std::string> open;
    int roots = 0;
    auto check_text = [](std::string_view t) -> std::string {
        static const std::regex entity("^&(amp|lt|gt|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);");
        for (size_t i = 0; i < t.size(); ++i)
            if (t[i] == '&' && !std::regex_search(std::string(t.substr(i, 12)), entity))
                return "bad entity near " + std::string(t.substr(i, 20));
        return "";
    };
    size_t i = 0;
    while (i < s.size()) {
        size_t lt = s.find('<', i);
        if (auto p = check_text(std::string_view(s).substr(i, lt == std::string::npos ? s.npos : lt - i)); !p.empty())
            return p;
        if (lt == std::string::npos) break;
        if (open.empty() && roots > 0) return "content after the root element";
        size_t gt = lt;
        for (char quote = 0; ++gt < s.size();) {  // the '>' outside quoted attribute values
            if (quote) quote = s[gt] == quote ? 0 : quote;
            else if (s[gt] == '"' || s[gt] == '\'') quote = s[gt];
            else if (s[gt] == '<') return "'<' inside a tag at " + std::to_string(gt);
            else if (s[gt] == '>') break;
        }
        if (gt >= s.size()) return "unterminated tag";
        std::string tag = s.substr(lt + 1, gt - lt - 1);
        static const std::regex open_re(R"(^([A-Za-z][\w:.-]*)(\s+[\w:.-]+="[^"<]*")*\s*/?$)");
        if (tag.starts_with("/")) {
            if (open.empty() || open.back() != tag.substr(1)) return "mismatched </" + tag.substr(1) + ">";
            open.pop_back();
        } else if (!std::regex_match(tag, open_re)) {
            return "malformed tag <" + tag + ">";
        } else {
            std::string name = tag.substr(0, tag.find_first_of(" \t\n/"));
            if (open.empty() && roots++ == 0 && name != "svg") return "root is not <svg>";
            if (!tag.ends_with("/")) open.push_back(name);
            else if (open.empty()) return "self-closed root";
        }
        i = gt + 1;
    }
    if (!open.empty()) return "unclosed <" + open.back() + ">";
    return roots == 1 ? "" : "no root element";
}

// Every opening tag of element `name`, as its text.
std::vector<std::string> tags(const std::string& svg, const std::string& name) {
    std::vector<std::string> out;
    std::regex re("<" + name + R"((\s[^>]*)?>)");
    for (auto it = std::sregex_iterator(svg.begin(), svg.end(), re); it != std::sregex_iterator(); ++it)
        out.push_back(it->str());
    return out;
}

std::string attr(const std::string& tag, const std::string& name) {
    std::smatch m;
    REQUIRE_MESSAGE(std::regex_search(tag, m, std::regex("\\s" + name + "=\"([^\"]*)\"")), tag, " has no ", name);
    return m[1];
}
double num_attr(const std::string& tag, const std::string& name) { return std::stod(attr(tag, name)); }

std::vector<std::pair<double, double>> points(const std::string& polyline) {
    std::vector<std::pair<double, double>> out;
    std::string p = attr(polyline, "points");
    std::regex re(R"((-?[\d.]+),(-?[\d.]+))");
    for (auto it = std::sregex_iterator(p.begin(), p.end(), re); it != std::sregex_iterator(); ++it)
        out.emplace_back(std::stod((*it)[1]), std::stod((*it)[2]));
    return out;
}

struct Area {
    double x, y, w, h;
};
Area plot_area(const std::string& svg) {
    auto r = tags(svg, "rect class=\"plot-area\"");
    REQUIRE(r.size() == 1);
    return {num_attr(r[0], "x"), num_attr(r[0], "y"), num_attr(r[0], "width"), num_attr(r[0], "height")};
}

void check_ticks(std::vector<double> got, std::vector<double> want) {
    INFO("got ", doctest::toString(got.size()), " ticks");
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-12));
}

plot::LineChart ramp() {  // x 0..10, y = x/10 on a fixed 0..1 range
    plot::LineChart c;
    c.title = "ramp", c.x_label = "layer", c.y_label = "rate";
    c.y_min = 0, c.y_max = 1;
    plot::Series s{"ramp", {}, {}};
    for (int i = 0; i <= 10; ++i) s.x.push_back(i), s.y.push_back(i / 10.0);
    c.series.push_back(s);
    return c;
}

}  // namespace

TEST_CASE("plot: nice_ticks closed-form cases") {
    check_ticks(plot::nice_ticks(0, 1), {0, 0.2, 0.4, 0.6, 0.8, 1});
    check_ticks(plot::nice_ticks(0, 23), {0, 5, 10, 15, 20, 25});
    check_ticks(plot::nice_ticks(0, 100, 10), {0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100});
    check_ticks(plot::nice_ticks(-23, -1), {-25, -20, -15, -10, -5, 0});
    check_ticks(plot::nice_ticks(-1, 1), {-1, -0.5, 0, 0.5, 1});
    check_ticks(plot::nice_ticks(1, 0), {0, 0.2, 0.4, 0.6, 0.8, 1});  // reversed bounds
    check_ticks(plot::nice_ticks(0.013, 0.087), {0, 0.02, 0.04, 0.06, 0.08, 0.1});
    check_ticks(plot::nice_ticks(1200, 9800), {0, 2000, 4000, 6000, 8000, 10000});
    CHECK(plot::nice_ticks(0, 1)[3] == 0.6);  // exact decimals, not 0.6000000000000001

    for (double v : {0.0, 3.0, -7.5, 1e-9}) {  // lo == hi: widened around the value
        auto t = plot::nice_ticks(v, v);
        INFO("v = ", v);
        REQUIRE(t.size() >= 3);
        CHECK(t.front() < v);
        CHECK(t.back() > v);
        CHECK(std::is_sorted(t.begin(), t.end()));
    }
    for (auto [lo, hi] : {std::pair{1e20, 1e20}, {1e16, 1e16 + 2}, {-1e300, 1e300}, {0.0, 1e-310}}) {
        auto t = plot::nice_ticks(lo, hi);  // below double precision or past the range: still terminates
        CHECK(t.size() >= 2);
        CHECK(t.size() < 100);
    }
    CHECK(plot::nice_ticks(NAN, 1).empty());
    CHECK(plot::nice_ticks(0, INFINITY).empty());
}

TEST_CASE("plot: a line chart is well formed and names everything") {
    plot::LineChart c = ramp();
    c.series.push_back({"flat", {0, 5, 10}, {0.5, 0.5, 0.5}});
    c.x_marks = {4, 7}, c.x_mark_labels = {"chosen layer"};
    std::string svg = plot::render(c);
    CHECK(xml_problem(svg) == "");
    CHECK(svg.find("font-family=\"sans-serif\"") != std::string::npos);
    CHECK(svg.find("width=\"720\" height=\"420\"") != std::string::npos);
    for (auto s : {">ramp</text>", ">flat</text>", ">layer</text>", ">rate</text>", ">chosen layer</text>"})
        CHECK_MESSAGE(svg.find(s) != std::string::npos, s);
    CHECK(tags(svg, "polyline").size() == 2);
    CHECK(attr(tags(svg, "polyline")[0], "stroke") != attr(tags(svg, "polyline")[1], "stroke"));
    CHECK(tags(svg, "line").size() > 10);                                     // grid, ticks, markers
    CHECK(svg.find("stroke-dasharray=\"5 4\"") != std::string::npos);        // the marker lines
    CHECK(svg.find(">0.4</text>") != std::string::npos);                      // y tick labels
    CHECK(svg.find(">10</text>") != std::string::npos);                       // x tick labels
    CHECK(tags(svg, "circle").size() == 14);
    c.points = false;
    CHECK(tags(plot::render(c), "circle").empty());
}

TEST_CASE("plot: text is XML-escaped") {
    plot::LineChart c = ramp();
    c.title = "a<b & c>d \"q\"";
    c.series[0].name = "<script>";
    c.series.push_back({"x&y", {0, 1}, {0, 1}});
    std::string svg = plot::render(c);
    CHECK(xml_problem(svg) == "");
    CHECK(svg.find("a&lt;b &amp; c&gt;d &quot;q&quot;") != std::string::npos);
    CHECK(svg.find("&lt;script&gt;") != std::string::npos);
    CHECK(svg.find("x&amp;y") != std::string::npos);
    CHECK(svg.find("<script>") == std::string::npos);

    plot::BarChart b;
    b.title = "<&>", b.groups = {"g<1>"}, b.series = {"s&"}, b.values = {{1}};
    std::string bsvg = plot::render(b);
    CHECK(xml_problem(bsvg) == "");
    CHECK(bsvg.find("&lt;&amp;&gt;") != std::string::npos);
    CHECK(bsvg.find("g&lt;1&gt;") != std::string::npos);
}

TEST_CASE("plot: a line maps onto the plot area's corners") {
    std::string svg = plot::render(ramp());
    Area a = plot_area(svg);
    CHECK(a.x > 0);
    CHECK(a.y > 0);
    CHECK(a.x + a.w < 720);
    CHECK(a.y + a.h < 420);
    auto lines = tags(svg, "polyline");
    REQUIRE(lines.size() == 1);
    auto p = points(lines[0]);
    REQUIRE(p.size() == 11);
    CHECK(p.front().first == doctest::Approx(a.x).epsilon(1e-4));  // (0, 0): bottom left
    CHECK(p.front().second == doctest::Approx(a.y + a.h).epsilon(1e-4));
    CHECK(p.back().first == doctest::Approx(a.x + a.w).epsilon(1e-4));  // (10, 1): top right
    CHECK(p.back().second == doctest::Approx(a.y).epsilon(1e-4));
    CHECK(p[5].first == doctest::Approx(a.x + a.w / 2).epsilon(1e-4));  // (5, 0.5): the middle
    CHECK(p[5].second == doctest::Approx(a.y + a.h / 2).epsilon(1e-4));
    CHECK(svg.find(">ramp</title>") != std::string::npos);  // a lone series is still named
}

TEST_CASE("plot: NaN and Inf break a line into segments") {
    plot::LineChart c = ramp();
    c.series[0].y[3] = NAN;
    c.series[0].y[8] = INFINITY;
    c.series[0].y[9] = NAN;
    std::string svg = plot::render(c);
    CHECK(xml_problem(svg) == "");
    auto lines = tags(svg, "polyline");
    REQUIRE(lines.size() == 3);
    CHECK(points(lines[0]).size() == 3);  // 0, 1, 2
    CHECK(points(lines[1]).size() == 4);  // 4..7
    CHECK(points(lines[2]).size() == 1);  // 10
    CHECK(tags(svg, "circle").size() == 8);
    CHECK(svg.find("nan") == std::string::npos);
    CHECK(svg.find("inf") == std::string::npos);
}

TEST_CASE("plot: bars hang below the zero line for negative values") {
    plot::BarChart b;
    b.title = "effect", b.y_label = "delta";
    b.groups = {"a", "b", "c"}, b.series = {"base", "steered"};
    b.values = {{1.0, -0.5, 0.25}, {0.75, NAN, -1.0}};
    std::string svg = plot::render(b);
    CHECK(xml_problem(svg) == "");
    for (auto s : {">effect</text>", ">base</text>", ">steered</text>", ">delta</text>", ">a</text>"})
        CHECK_MESSAGE(svg.find(s) != std::string::npos, s);
    auto zero = tags(svg, "line class=\"zero\"");
    REQUIRE(zero.size() == 1);
    double z = num_attr(zero[0], "y1");
    Area a = plot_area(svg);
    CHECK(z > a.y);
    CHECK(z < a.y + a.h);
    auto bars = tags(svg, "rect class=\"bar\"");
    REQUIRE(bars.size() == 5);  // the NaN bar is omitted...
    CHECK(svg.find(">n/a</text>") != std::string::npos);  // ...and labelled
    // Order: group a (base, steered), group b (base), group c (base, steered).
    CHECK(num_attr(bars[0], "y") + num_attr(bars[0], "height") == doctest::Approx(z));  // 1.0 stands on zero
    CHECK(num_attr(bars[0], "y") < z);
    CHECK(num_attr(bars[2], "y") == doctest::Approx(z));  // -0.5 hangs from zero
    CHECK(num_attr(bars[2], "height") > 0);
    CHECK(num_attr(bars[4], "height") == doctest::Approx(2 * num_attr(bars[2], "height")).epsilon(1e-3));
    CHECK(attr(bars[0], "fill") != attr(bars[1], "fill"));
    const std::string value_label = "font-size=\"10.00\">-0.5</text>";  // not the y tick "-0.5"
    CHECK(svg.find(value_label) != std::string::npos);
    CHECK(svg.find("font-size=\"10.00\">0.25</text>") != std::string::npos);
    b.value_labels = false;
    CHECK(plot::render(b).find(value_label) == std::string::npos);
}

TEST_CASE("plot: long group labels are slanted") {
    plot::BarChart b;
    b.groups = {"short", "x"};
    b.values = {{1, 2}};
    CHECK(plot::render(b).find("rotate(-30") == std::string::npos);
    for (int i = 0; i < 12; ++i) b.groups.push_back("a rather long category name " + std::to_string(i));
    b.values[0].resize(b.groups.size(), 0.5);
    std::string svg = plot::render(b);
    CHECK(xml_problem(svg) == "");
    CHECK(svg.find("rotate(-30") != std::string::npos);
}

TEST_CASE("plot: empty or all-NaN input still gives a valid SVG saying no data") {
    plot::LineChart empty;
    empty.title = "nothing yet";
    plot::LineChart all_nan = empty;
    all_nan.series = {{"s", {0, 1, 2}, {NAN, NAN, NAN}}, {"t", {}, {}}};
    plot::BarChart no_bars;
    no_bars.title = "nothing yet";
    plot::BarChart nan_bars = no_bars;
    nan_bars.groups = {"a", "b"}, nan_bars.series = {"s"}, nan_bars.values = {{NAN, INFINITY}};
    plot::LineChart zero_size = empty;
    zero_size.width = 0, zero_size.height = -5;
    for (const std::string& svg : {plot::render(empty), plot::render(all_nan), plot::render(no_bars),
                                   plot::render(nan_bars), plot::render(zero_size)}) {
        CHECK(xml_problem(svg) == "");
        CHECK(svg.find(">nothing yet</text>") != std::string::npos);
        CHECK(svg.find(">no data</text>") != std::string::npos);
    }
    // One point, or a flat line: a range is made up around it.
    plot::LineChart one;
    one.series = {{"p", {3}, {2}}};
    std::string svg = plot::render(one);
    CHECK(xml_problem(svg) == "");
    CHECK(svg.find("no data") == std::string::npos);
    CHECK(svg.find("nan") == std::string::npos);
}

TEST_CASE("plot: write is atomic and names the path on failure") {
    test::TempDir dir;
    std::string svg = plot::render(ramp());
    auto path = dir / "chart.svg";
    plot::write(path, svg);
    CHECK(test::read_bytes(path) == svg);
    CHECK(!std::filesystem::exists(dir / "chart.svg.tmp"));
    plot::write(path, "<svg/>");  // replaces
    CHECK(test::read_bytes(path) == "<svg/>");

    auto bad = dir / "no-such-dir" / "chart.svg";
    try {
        plot::write(bad, svg);
        FAIL("write into a missing folder did not throw");
    } catch (const Error& e) {
        CHECK(e.file == bad.string());
        CHECK(std::string(e.what()).find(bad.string()) != std::string::npos);
    }
}
