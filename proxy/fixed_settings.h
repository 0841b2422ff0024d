// What a reload cannot change (SIGHUP, README "Configuration reference"): the
// settings a running process fixed at start, or when it first built a table,
// and the config keys of a newly loaded file that ask for something else.
// A reload applies everything else; these keys keep their running value until
// a restart, and the reload says so (a warning per key, and the config.reload
// audit record's `restart_required`), as nginx and HAProxy do.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "proxy/config.h"

namespace portcullis {

struct FixedSettings {
  // The config the process started with: listeners, workers and their
  // placement, the log files, the syslog copy and the alert webhook.
  std::shared_ptr<const Config> started;
  // The largest limits.max_header_bytes the workers' I/O buffers (sized at
  // start) hold; a larger value is capped to it until a restart.
  uint32_t max_header_bytes = 0;
  // The audit log runs (it starts only at start, and only with a keyring).
  bool audit_running = false;
  // rate_limit.max_keys of the config that created the shared rate-limit
  // table; unset until a config first needed one (that one sizes it).
  std::optional<uint64_t> rate_limit_keys;
  // The thresholds the detector was built with; unset until a config first
  // enabled detection (that one sets them). detect.enabled itself applies.
  std::optional<DetectConfig> detect;
};

// The keys whose value in `next` differs from what the running process keeps
// (`running`), named as in the config reference ("rate_limit.max_keys",
// "detect.forbidden", ...), in that reference's order, each once. Empty when a
// reload applies all of `next`. Settings that apply only under a condition
// are reported only when it holds: the rate-limit table's size when `next`
// uses the table, the detector's thresholds when `next` enables it, the audit
// log path when `next` has a keyring.
std::vector<std::string> keysNeedingRestart(const FixedSettings& running, const Config& next);

}  // namespace portcullis
