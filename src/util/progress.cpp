#include "llmctl/util/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace llmctl {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  long t = static_cast<long>(s + 0.5);
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else if (t >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%.1fs", s);
  return buf;
}

std::string format_count(double n) {
  char buf[32];
  if (n >= 1e9)
    std::snprintf(buf, sizeof buf, "%.2fG", n / 1e9);
  else if (n >= 1e6)
    std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
  else if (n >= 1e4)
    std::snprintf(buf, sizeof buf, "%.1fk", n / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.0f", n);
  return buf;
}

Progress::Progress(std::string label, std::uint64_t total, std::string unit, bool enabled)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      enabled_(enabled),
      tty_(::isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

Progress::~Progress() {
  if (!finished_) finish();
}

void Progress::set(std::uint64_t done, const std::string& extra) {
  done_ = done;
  if (!extra.empty()) extra_ = extra;
  auto now = std::chrono::steady_clock::now();
  double since = std::chrono::duration<double>(now - last_draw_).count();
  // Redraw at 10 Hz on a terminal; a log line every 5 s elsewhere.
  if (since >= (tty_ ? 0.1 : 5.0)) {
    last_draw_ = now;
    draw(false);
  }
}

void Progress::finish(const std::string& extra) {
  if (finished_) return;
  finished_ = true;
  if (!extra.empty()) extra_ = extra;
  draw(true);
}

namespace {
std::string singular(const std::string& unit) {
  return unit.size() > 1 && unit.back() == 's' ? unit.substr(0, unit.size() - 1) : unit;
}
}  // namespace

void Progress::draw(bool final) {
  if (!enabled_) return;
  double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double rate = el > 0 ? done_ / el : 0;
  std::string line = label_ + " ";
  // Slow units read better as time per unit ("3.2s/step") than as "0 steps/s".
  const std::string speed = rate >= 1 || rate <= 0 ? format_count(rate) + " " + unit_ + "/s"
                                                   : format_duration(1 / rate) + "/" + singular(unit_);
  char buf[200];
  if (total_ > 0) {
    double frac = std::min(1.0, static_cast<double>(done_) / total_);
    if (tty_) {
      const int width = 24;
      int fill = static_cast<int>(frac * width);
      line += "[" + std::string(fill, '#') + std::string(width - fill, '.') + "] ";
    }
    double eta = rate > 0 ? (total_ - std::min(done_, total_)) / rate : NAN;
    std::snprintf(buf, sizeof buf, "%5.1f%% %s/%s %s, %s, %s, ETA %s", 100 * frac, format_count(done_).c_str(),
                  format_count(total_).c_str(), unit_.c_str(), format_duration(el).c_str(), speed.c_str(),
                  final ? "0s" : format_duration(eta).c_str());
  } else {
    std::snprintf(buf, sizeof buf, "%s %s, %s, %s", format_count(done_).c_str(), unit_.c_str(),
                  format_duration(el).c_str(), speed.c_str());
  }
  line += buf;
  if (!extra_.empty()) line += " | " + extra_;
  if (tty_)
    std::fprintf(stderr, "\r\033[K%s%s", line.c_str(), final ? "\n" : "");
  else
    std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

}  // namespace llmctl
