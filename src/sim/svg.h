// Line charts as standalone SVG: axes with ticks at round numbers, axis labels, a title, a legend.
// Several panels stack vertically in one file. No dependencies.
#pragma once
#include <string>
#include <vector>

namespace epserve::sim {

struct Series {
  std::string name;
  std::vector<double> x, y;
  bool step = false;    // draw as a staircase (values hold until the next x)
  bool dashed = false;
};

struct Panel {
  std::string title;
  std::string x_label, y_label;
  std::vector<Series> series;
  bool y_from_zero = true;
  std::vector<std::string> x_tick_labels;  // optional: labels for x = 0, 1, 2, ... instead of numbers
};

std::string render_svg(const std::vector<Panel>& panels, int width = 760, int panel_height = 360);
void write_svg(const std::string& path, const std::vector<Panel>& panels);

// Round tick positions covering [lo, hi] (about `target` of them).
std::vector<double> nice_ticks(double lo, double hi, int target = 6);

}  // namespace epserve::sim
