#include "sim/svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "base/error.h"

namespace epserve::sim {

namespace {

const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"};

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string num(double v) {
  char buf[64];
  const double a = std::fabs(v);
  if (a == 0) return "0";
  if (a >= 1e9) std::snprintf(buf, sizeof buf, "%gB", v / 1e9);
  else if (a >= 1e6) std::snprintf(buf, sizeof buf, "%gM", v / 1e6);
  else if (a >= 1e3) std::snprintf(buf, sizeof buf, "%gk", v / 1e3);
  else std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!(hi > lo)) hi = lo + 1;
  const double raw = (hi - lo) / std::max(1, target);
  const double mag = std::pow(10, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  std::vector<double> t;
  for (double v = std::floor(lo / step) * step; v <= hi + step * 1e-6; v += step)
    if (v >= lo - step * 1e-6) t.push_back(std::fabs(v) < step * 1e-9 ? 0 : v);
  return t;
}

std::string render_svg(const std::vector<Panel>& panels, int width, int panel_height) {
  std::ostringstream o;
  const int height = panel_height * int(panels.size());
  o << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
    << "\" viewBox=\"0 0 " << width << " " << height << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  o << "<rect x=\"0\" y=\"0\" width=\"" << width << "\" height=\"" << height << "\" fill=\"white\"/>\n";
  for (size_t p = 0; p < panels.size(); ++p) {
    const Panel& P = panels[p];
    const double top = double(p) * panel_height;
    const double L = 80, R = width - 180, T = top + 40, B = top + panel_height - 55;
    double xlo = 1e300, xhi = -1e300, ylo = 1e300, yhi = -1e300;
    for (const auto& s : P.series)
      for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
        if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
        xlo = std::min(xlo, s.x[i]);
        xhi = std::max(xhi, s.x[i] + (s.step ? 1 : 0));
        ylo = std::min(ylo, s.y[i]);
        yhi = std::max(yhi, s.y[i]);
      }
    if (xlo > xhi) xlo = 0, xhi = 1, ylo = 0, yhi = 1;
    if (P.y_from_zero) ylo = std::min(0.0, ylo);
    if (yhi <= ylo) yhi = ylo + 1;
    yhi += (yhi - ylo) * 0.05;
    const auto xt = P.x_tick_labels.empty() ? nice_ticks(xlo, xhi, 8) : std::vector<double>{};
    const auto yt = nice_ticks(ylo, yhi, 6);
    if (!yt.empty()) ylo = std::min(ylo, yt.front()), yhi = std::max(yhi, yt.back());
    if (!xt.empty()) xlo = std::min(xlo, xt.front()), xhi = std::max(xhi, xt.back());
    auto X = [&](double v) { return L + (v - xlo) / (xhi - xlo) * (R - L); };
    auto Y = [&](double v) { return B - (v - ylo) / (yhi - ylo) * (B - T); };
    o << "<g class=\"panel\">\n";
    o << "<text x=\"" << fmt((L + R) / 2) << "\" y=\"" << fmt(top + 22) << "\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">"
      << esc(P.title) << "</text>\n";
    // grid and ticks
    for (double v : yt) {
      o << "<line x1=\"" << fmt(L) << "\" y1=\"" << fmt(Y(v)) << "\" x2=\"" << fmt(R) << "\" y2=\"" << fmt(Y(v))
        << "\" stroke=\"#e0e0e0\"/>\n";
      o << "<text x=\"" << fmt(L - 6) << "\" y=\"" << fmt(Y(v) + 4) << "\" text-anchor=\"end\">" << esc(num(v)) << "</text>\n";
    }
    if (!P.x_tick_labels.empty()) {
      for (size_t i = 0; i < P.x_tick_labels.size(); ++i) {
        const double v = double(i);
        if (v < xlo || v > xhi) continue;
        o << "<line x1=\"" << fmt(X(v)) << "\" y1=\"" << fmt(B) << "\" x2=\"" << fmt(X(v)) << "\" y2=\"" << fmt(B + 5)
          << "\" stroke=\"black\"/>\n";
        if (i % std::max<size_t>(1, P.x_tick_labels.size() / 12) == 0)
          o << "<text x=\"" << fmt(X(v)) << "\" y=\"" << fmt(B + 18) << "\" text-anchor=\"middle\">"
            << esc(P.x_tick_labels[i]) << "</text>\n";
      }
    } else {
      for (double v : xt) {
        o << "<line x1=\"" << fmt(X(v)) << "\" y1=\"" << fmt(B) << "\" x2=\"" << fmt(X(v)) << "\" y2=\"" << fmt(B + 5)
          << "\" stroke=\"black\"/>\n";
        o << "<text x=\"" << fmt(X(v)) << "\" y=\"" << fmt(B + 18) << "\" text-anchor=\"middle\">" << esc(num(v)) << "</text>\n";
      }
    }
    // axes
    o << "<line x1=\"" << fmt(L) << "\" y1=\"" << fmt(B) << "\" x2=\"" << fmt(R) << "\" y2=\"" << fmt(B)
      << "\" stroke=\"black\"/>\n";
    o << "<line x1=\"" << fmt(L) << "\" y1=\"" << fmt(T) << "\" x2=\"" << fmt(L) << "\" y2=\"" << fmt(B)
      << "\" stroke=\"black\"/>\n";
    o << "<text x=\"" << fmt((L + R) / 2) << "\" y=\"" << fmt(B + 40) << "\" text-anchor=\"middle\">" << esc(P.x_label)
      << "</text>\n";
    o << "<text x=\"" << fmt(L - 62) << "\" y=\"" << fmt((T + B) / 2) << "\" text-anchor=\"middle\" transform=\"rotate(-90 "
      << fmt(L - 62) << " " << fmt((T + B) / 2) << ")\">" << esc(P.y_label) << "</text>\n";
    // series
    for (size_t si = 0; si < P.series.size(); ++si) {
      const Series& s = P.series[si];
      const char* color = kColors[si % (sizeof kColors / sizeof *kColors)];
      o << "<g class=\"series\" data-name=\"" << esc(s.name) << "\">\n<polyline fill=\"none\" stroke=\"" << color
        << "\" stroke-width=\"2\"" << (s.dashed ? " stroke-dasharray=\"6 4\"" : "") << " points=\"";
      for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
        if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
        o << fmt(X(s.x[i])) << "," << fmt(Y(s.y[i])) << " ";
        if (s.step) o << fmt(X(s.x[i] + 1)) << "," << fmt(Y(s.y[i])) << " ";
      }
      o << "\"/>\n";
      if (!s.step)
        for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i)
          if (std::isfinite(s.x[i]) && std::isfinite(s.y[i]))
            o << "<circle cx=\"" << fmt(X(s.x[i])) << "\" cy=\"" << fmt(Y(s.y[i])) << "\" r=\"3\" fill=\"" << color
              << "\"/>\n";
      o << "</g>\n";
      // legend entry
      const double ly = T + 8 + 20 * double(si);
      o << "<line x1=\"" << fmt(R + 15) << "\" y1=\"" << fmt(ly) << "\" x2=\"" << fmt(R + 40) << "\" y2=\"" << fmt(ly)
        << "\" stroke=\"" << color << "\" stroke-width=\"2\"" << (s.dashed ? " stroke-dasharray=\"6 4\"" : "") << "/>\n";
      o << "<text x=\"" << fmt(R + 46) << "\" y=\"" << fmt(ly + 4) << "\">" << esc(s.name) << "</text>\n";
    }
    o << "</g>\n";
  }
  o << "</svg>\n";
  return o.str();
}

void write_svg(const std::string& path, const std::vector<Panel>& panels) {
  std::ofstream f(path);
  EPS_REQUIRE(bool(f), "cannot write the SVG file '" + path + "'");
  f << render_svg(panels);
  EPS_REQUIRE(bool(f), "failed writing the SVG file '" + path + "'");
}

}  // namespace epserve::sim
