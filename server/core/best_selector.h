// Best selection: which committed version is `best` under a run's policy.
// Pure functions over version records; no storage, no locks. Thread-safe.
//
// A version is a candidate only if it is COMMITTED and reports the monitored
// metric as a number (NaN never wins). Ties keep the earlier version.
#ifndef CKPTD_SERVER_CORE_BEST_SELECTOR_H_
#define CKPTD_SERVER_CORE_BEST_SELECTOR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "ckptd/v1/checkpoint.pb.h"

namespace ckptd::core {

// Whether `candidate` beats `current` under `mode` (strictly: ties keep the
// earlier version). NaN never wins; anything beats NaN.
bool MetricImproves(v1::Mode mode, double candidate, double current);

// The value of `metric` in `v`, if it reports a number (not NaN).
bool MonitoredValue(const v1::VersionInfo& v, const std::string& metric,
                    double* value);

// The version that should be `best` under `policy` among `versions`; 0 when
// the policy monitors nothing or no committed version reports the metric.
uint64_t SelectBest(const std::vector<v1::VersionInfo>& versions,
                    const v1::Policy& policy);

// Whether the newly committed `candidate` should become `best` when `best`
// is currently `current` (nullptr: no best yet).
bool BecomesBest(const v1::VersionInfo& candidate,
                 const v1::VersionInfo* current, const v1::Policy& policy);

}  // namespace ckptd::core

#endif  // CKPTD_SERVER_CORE_BEST_SELECTOR_H_
