#include "server/core/best_selector.h"

#include <cmath>

namespace ckptd::core {

bool MetricImproves(v1::Mode mode, double candidate, double current) {
  if (std::isnan(candidate)) return false;
  if (std::isnan(current)) return true;
  return mode == v1::MAX ? candidate > current : candidate < current;
}

bool MonitoredValue(const v1::VersionInfo& v, const std::string& metric,
                    double* value) {
  auto it = v.metrics().find(metric);
  if (it == v.metrics().end() || std::isnan(it->second)) return false;
  *value = it->second;
  return true;
}

uint64_t SelectBest(const std::vector<v1::VersionInfo>& versions,
                    const v1::Policy& policy) {
  if (policy.monitor().empty()) return 0;
  uint64_t best = 0;
  double best_value = 0;
  for (const v1::VersionInfo& v : versions) {
    double value;
    if (v.state() != v1::COMMITTED ||
        !MonitoredValue(v, policy.monitor(), &value)) {
      continue;
    }
    if (best == 0 || MetricImproves(policy.mode(), value, best_value)) {
      best = v.version();
      best_value = value;
    }
  }
  return best;
}

bool BecomesBest(const v1::VersionInfo& candidate,
                 const v1::VersionInfo* current, const v1::Policy& policy) {
  double value;
  if (policy.monitor().empty() ||
      !MonitoredValue(candidate, policy.monitor(), &value)) {
    return false;
  }
  double current_value;
  if (current == nullptr ||
      !MonitoredValue(*current, policy.monitor(), &current_value)) {
    return true;
  }
  return MetricImproves(policy.mode(), value, current_value);
}

}  // namespace ckptd::core
