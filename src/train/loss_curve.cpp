// A dependency-free SVG line chart of metrics.jsonl: train loss as a line, eval loss as
// dots, log-free linear axes with a few labelled ticks.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "llmctl/train/trainer.h"
#include "llmctl/util/fs.h"

namespace llmctl {

void write_loss_curve(const std::string& metrics_jsonl, const std::string& svg_path) {
  std::vector<std::pair<double, double>> train, eval;
  std::ifstream in(metrics_jsonl);
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("step")) continue;
    double step = j["step"].get<double>();
    if (j.contains("loss") && j["loss"].is_number()) train.emplace_back(step, j["loss"].get<double>());
    if (j.contains("eval_loss") && j["eval_loss"].is_number()) eval.emplace_back(step, j["eval_loss"].get<double>());
  }
  const double W = 720, H = 420, L = 70, R = 20, T = 40, B = 50;
  double x0 = 0, x1 = 1, y0 = 1e300, y1 = -1e300;
  for (const auto* s : {&train, &eval})
    for (auto [x, y] : *s) {
      if (!std::isfinite(y)) continue;
      x1 = std::max(x1, x);
      y0 = std::min(y0, y);
      y1 = std::max(y1, y);
    }
  if (y0 > y1) y0 = 0, y1 = 1;
  if (y1 - y0 < 1e-9) y1 = y0 + 1;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return H - B - (y - y0) / (y1 - y0) * (H - T - B); };
  std::ostringstream s;
  s.precision(5);
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">training loss</text>\n";
  for (int i = 0; i <= 4; ++i) {  // grid and tick labels
    double y = y0 + (y1 - y0) * i / 4, x = x0 + (x1 - x0) * i / 4;
    s << "<line x1=\"" << L << "\" x2=\"" << W - R << "\" y1=\"" << py(y) << "\" y2=\"" << py(y)
      << "\" stroke=\"#ddd\"/>\n<text x=\"" << L - 6 << "\" y=\"" << py(y) + 4 << "\" text-anchor=\"end\">" << y
      << "</text>\n<text x=\"" << px(x) << "\" y=\"" << H - B + 18 << "\" text-anchor=\"middle\">"
      << static_cast<long long>(std::llround(x)) << "</text>\n";
  }
  s << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 12 << "\" text-anchor=\"middle\">step</text>\n";
  if (!train.empty()) {
    s << "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"";
    for (auto [x, y] : train)
      if (std::isfinite(y)) s << px(x) << "," << py(y) << " ";
    s << "\"/>\n";
  }
  for (auto [x, y] : eval)
    if (std::isfinite(y)) s << "<circle cx=\"" << px(x) << "\" cy=\"" << py(y) << "\" r=\"3.5\" fill=\"#d62728\"/>\n";
  s << "<text x=\"" << W - R - 150 << "\" y=\"" << T + 4 << "\" fill=\"#1f77b4\">&#8212; train loss</text>\n";
  if (!eval.empty()) s << "<text x=\"" << W - R - 150 << "\" y=\"" << T + 20 << "\" fill=\"#d62728\">&#9679; eval loss</text>\n";
  s << "</svg>\n";
  write_file_atomic(svg_path, s.str());
}

}  // namespace llmctl
